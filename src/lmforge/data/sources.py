"""Documents, the built-in offline corpus, and the deterministic train/val split.

Reading files and datasets lives in readers.py. Documents are split deterministically into train and val by a
hash of their name, so adding files never moves existing ones between splits.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import DataError

BUILTIN_CORPORA = ("python-stdlib",)


@dataclass
class Document:
    name: str
    text: str
    split: str | None = None
    """'train' or 'val' where the dataset defines its split; None: split by a hash of name."""


def python_stdlib_files() -> list[Path]:
    """The running Python's standard-library sources, without tests and installed packages.

    `encodings` (codec tables) and `pydoc_data` (one giant docs string) are generated data, not
    code; left in, they are 2 MB of repetitive tables the model would spend its capacity on.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    skipped = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    skipped |= {"encodings", "pydoc_data"}
    files = [
        p
        for p in root.rglob("*.py")
        if not skipped.intersection(p.relative_to(root).parts) and not p.name.startswith("test_")
    ]
    return sorted(files)


def is_val_document(name: str, val_fraction: float) -> bool:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def split_documents(documents: list[Document], val_fraction: float):
    """(train, val) documents. A single document is split by characters: the tail is val."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if len(documents) == 1:
        doc = documents[0]
        cut = int(len(doc.text) * (1 - val_fraction))
        return [Document(doc.name, doc.text[:cut])], [Document(doc.name + ":val", doc.text[cut:])]
    train = [d for d in documents if not is_val_document(d.name, val_fraction)]
    val = [d for d in documents if is_val_document(d.name, val_fraction)]
    if not val:  # tiny corpora: guarantee a validation set
        train, val = train[:-1], train[-1:]
    if not train:
        train, val = val[:-1], val[-1:]
    return train, val
