"""Text sources: the built-in offline corpus and local text files, as lists of documents.

A document is one file's text. Documents are split deterministically into train and val by a
hash of their name, so adding files never moves existing ones between splits.
"""

from __future__ import annotations

import glob
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


def source_files(source: str) -> list[Path]:
    """Resolve a corpus name, file, directory or glob to a sorted list of files."""
    if source == "python-stdlib":
        return python_stdlib_files()
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".py", ".md")
        )
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise DataError(
            f"data source '{source}' matches no files; give an existing text file, directory or "
            f"glob, or a built-in corpus ({', '.join(BUILTIN_CORPORA)})"
        )
    return files


def read_text_file(path: Path) -> str:
    """UTF-8 text of a file; binary or non-UTF-8 content is a DataError naming the file."""
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise DataError(f"{path} looks binary (it contains NUL bytes); give UTF-8 text files")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not valid UTF-8 (byte {error.start}); convert it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name}`"
        ) from None


def load_documents(source: str) -> list[Document]:
    files = source_files(source)
    # Built-in corpora are named relative to their root so the split is the same on every machine.
    root = Path(sysconfig.get_paths()["stdlib"]) if source == "python-stdlib" else None
    lenient = source in BUILTIN_CORPORA  # a stray non-UTF-8 stdlib file is skipped, not fatal
    documents = []
    for path in files:
        try:
            text = read_text_file(path)
        except DataError:
            if lenient:
                continue
            raise
        if text.strip():
            name = str(path.relative_to(root)) if root else str(path)
            documents.append(Document(name, text))
    if not documents:
        raise DataError(f"data source '{source}' contains no text (all files are empty)")
    return documents


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
