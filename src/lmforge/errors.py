"""User-facing errors. The CLI prints these as one line and exits non-zero, without a traceback.

Raise a subclass of LmforgeError for anything the user can fix (bad config, missing file, shape
mismatch) and say how to fix it in the message. Use `assert` for internal invariants.
"""


class LmforgeError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class ConfigError(LmforgeError):
    """Bad configuration: unknown key, wrong type, impossible shape."""


class DataError(LmforgeError):
    """Missing, empty, binary or otherwise unusable data."""


class CheckpointError(LmforgeError):
    """Missing, incomplete or incompatible checkpoint."""


class TrainingError(LmforgeError):
    """Training cannot go on (e.g. the loss stayed non-finite); the message is the report."""
