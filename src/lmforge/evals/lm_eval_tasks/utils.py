"""Loaders for the shipped lm-eval task configs: local files only (no hub download).

lm-eval calls these with the task metadata as keyword arguments; `data_files` maps a task name to
its file (set by `lmforge eval lm-eval --data TASK=PATH`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import datasets
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer

from lmforge.errors import DataError
from lmforge.evals.hellaswag import load_hellaswag

__all__ = ["hellaswag_dataset", "wikitext2_dataset", "wikitext_detokenizer", "wikitext_results"]
wikitext_results = process_results  # word/byte perplexity counted on the original page
_HEADING = re.compile(r"^ = [^=].* = $")


def _data_file(task: str, data_files: dict | None, default: str) -> Path:
    path = (data_files or {}).get(task)
    if path is None:
        shared = os.environ.get("LMFORGE_SHARED_DATA")
        if not shared:
            raise DataError(
                f"{task} needs a local file: pass --data {task}=PATH (or set LMFORGE_SHARED_DATA)"
            )
        path = Path(shared) / default
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{task}: data file {path} does not exist; pass --data {task}=PATH")
    return path


def hellaswag_dataset(data_files: dict | None = None, **_: object) -> dict[str, datasets.Dataset]:
    """Either HellaSwag format, parsed as `lmforge eval hellaswag` parses it."""
    path = _data_file("lmforge_hellaswag", data_files, "hellaswag/hellaswag_val_full.txt")
    docs = [
        {"query": e.context, "choices": list(e.endings), "gold": e.label}
        for e in load_hellaswag(path)
    ]
    return {"validation": datasets.Dataset.from_list(docs)}


def wikitext_articles(text: str) -> list[str]:
    """The articles of a raw WikiText file, each from its ' = Title = ' line to the next."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _HEADING.match(line.rstrip("\n"))]
    if not starts:
        return [text] if text.strip() else []
    # The blank line before a heading belongs to the article it opens (as in the page dataset).
    starts = [max(0, s - 1) if s and not lines[s - 1].strip() else s for s in starts]
    bounds = [*starts, len(lines)]
    return ["".join(lines[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def wikitext2_dataset(data_files: dict | None = None, **_: object) -> dict[str, datasets.Dataset]:
    path = _data_file("lmforge_wikitext2", data_files, "wikitext-2/test.txt")
    pages = wikitext_articles(path.read_text(encoding="utf-8"))
    if not pages:
        raise DataError(f"{path} holds no text; point --data lmforge_wikitext2 at wiki.test.raw")
    return {"test": datasets.Dataset.from_list([{"page": page} for page in pages])}
