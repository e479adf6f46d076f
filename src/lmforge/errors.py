"""User-facing errors. The CLI prints these as one line and exits non-zero, without a traceback.

Raise a subclass of LmforgeError for anything the user can fix (bad config, missing file, shape
mismatch) and say how to fix it in the message. Use `assert` for internal invariants.

Messages often quote a library's own words (safetensors, torch.load, DCP, gguf, json), which can
span lines and carry terminal colour codes (torch's "Weights only load failed" is bold). Every
LmforgeError is flattened by `one_line` when it is made, so the CLI and the Python API both get
one plain line whatever the library said.
"""

from __future__ import annotations

import re

# CSI sequences (colours, cursor moves: ESC [ ... final byte), OSC sequences (ESC ] ... BEL or
# ESC \) and the other escapes (ESC, intermediate bytes, a final byte: ESC c resets the terminal),
# then any other control character except the whitespace we turn into spaces.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]?")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def one_line(message: object, limit: int | None = None) -> str:
    """`message` (a string or an exception) as one plain line: escape codes removed, lines joined
    with spaces, runs of whitespace collapsed; cut to `limit` characters (with '...') if given.
    An exception with an empty message gives its type name."""
    text = str(message)
    if isinstance(message, BaseException) and not text.strip():
        text = type(message).__name__
    text = _CONTROL.sub("", _ANSI.sub("", text))
    text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)].rstrip() + "..."
    return text


class LmforgeError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(one_line(message), *args)


class ConfigError(LmforgeError):
    """Bad configuration: unknown key, wrong type, impossible shape."""


class DataError(LmforgeError):
    """Missing, empty, binary or otherwise unusable data."""


class CheckpointError(LmforgeError):
    """Missing, incomplete or incompatible checkpoint."""


class ResourceError(LmforgeError):
    """The machine lacks what the work needs (e.g. the memory for a model's weights)."""


class TrainingError(LmforgeError):
    """Training cannot go on (e.g. the loss stayed non-finite); the message is the report."""
