"""Reading the small JSON files of a checkpoint (config, tokenizer descriptor, checkpoint.json,
adapter config): a missing, non-UTF-8, invalid or non-object file is one CheckpointError that
names the file, never a JSONDecodeError traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.errors import CheckpointError, one_line


def read_json_object(path: str | Path, default: dict | None = None) -> dict[str, Any]:
    """The JSON object in `path`; `default` (when given) if the file does not exist."""
    path = Path(path)
    if default is not None and not path.exists():
        return default
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{path} is unreadable or not valid JSON ({one_line(error, 200)}); the checkpoint "
            "is corrupt: use another one"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path} holds a JSON {type(data).__name__}, not an object; the checkpoint is "
            "corrupt: use another one"
        )
    return data
