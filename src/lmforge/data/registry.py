"""Named datasets and `hf:<dataset id>[:config][:split]` sources, resolved to remote files.

A resolved file carries the split it belongs to ("train", "val") when the dataset defines one,
or None when lmforge should split its documents by hash. Files are downloaded lazily (through
download.fetch) as the reader reaches them, so preparing can start before everything is local.

Base URLs are overridable, for mirrors and for tests:
    LMFORGE_HF_ENDPOINT           default https://huggingface.co
    LMFORGE_HF_DATASETS_SERVER    default https://datasets-server.huggingface.co
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.download import fetch
from lmforge.errors import DataError

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_SIZE = 1115394

# name -> (description, how it resolves); "python-stdlib" is read from disk by readers.py.
DATASETS = {
    "python-stdlib": "the running Python's standard library (built in, offline)",
    "shakespeare": "Tiny Shakespeare, 1.1 MB (karpathy/char-rnn)",
    "tinystories": "TinyStoriesV2-GPT4 train/valid .txt (HF roneneldan/TinyStories), ~2.2 GB",
    "wikitext-103": "WikiText-103 raw (HF Salesforce/wikitext, wikitext-103-raw-v1 parquet)",
    "fineweb-edu-10b": "FineWeb-Edu 10B-token sample (HF HuggingFaceFW/fineweb-edu), ~28 GB",
}
VAL_SPLITS = ("validation", "valid", "val")


@dataclass(frozen=True)
class RemoteFile:
    url: str
    split: str | None = None
    """'train' or 'val' where the dataset defines the split; None: split documents by hash."""
    sha256: str | None = None
    size: int | None = None

    @property
    def name(self) -> str:
        return urllib.parse.unquote(self.url.split("?")[0].rsplit("/", 1)[-1])

    def local(self, progress: bool = True) -> Path:
        return fetch(self.url, self.sha256, self.size, progress=progress)


def hf_endpoint() -> str:
    return os.environ.get("LMFORGE_HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def datasets_server() -> str:
    default = "https://datasets-server.huggingface.co"
    return os.environ.get("LMFORGE_HF_DATASETS_SERVER", default).rstrip("/")


def is_remote(source: str) -> bool:
    return source.startswith("hf:") or (source in DATASETS and source != "python-stdlib")


def _get_json(url: str) -> object:
    """JSON from url, through the download cache so a listing works offline once fetched."""
    return json.loads(fetch(url, progress=False).read_text())


def hf_repo_files(repo: str, folder: str, names: dict[str, str | None]) -> list[RemoteFile]:
    """Files of a HF dataset repo folder (tree API: sizes and LFS sha256 come with it).

    names maps a file name (or "*.ext" for all files with that suffix) to its split.
    """
    tree = _get_json(f"{hf_endpoint()}/api/datasets/{repo}/tree/main/{folder}".rstrip("/"))
    files = []
    for entry in sorted(tree, key=lambda e: e.get("path", "")):  # type: ignore[union-attr]
        path = entry.get("path", "")
        base = path.rsplit("/", 1)[-1]
        suffix_key = "*" + Path(base).suffix
        if entry.get("type") != "file" or (base not in names and suffix_key not in names):
            continue
        lfs = entry.get("lfs") or {}
        url = f"{hf_endpoint()}/datasets/{repo}/resolve/main/{urllib.parse.quote(path)}"
        split = names.get(base, names.get(suffix_key))
        files.append(RemoteFile(url, split, lfs.get("oid"), entry.get("size")))
    if not files:
        raise DataError(f"HF dataset {repo} has no files {sorted(names)} under '{folder}'")
    return files


def hf_parquet_files(dataset: str, config: str | None, split: str | None) -> list[RemoteFile]:
    """Parquet files of any HF dataset, from the datasets-server listing of its conversion.

    Without a split: train is train, validation is val, other splits (test) are left out; a
    dataset with no such splits gives all its files, split by hash. A named split is split by hash.
    """
    query = urllib.parse.urlencode({"dataset": dataset})
    listing = _get_json(f"{datasets_server()}/parquet?{query}")
    entries = listing.get("parquet_files", []) if isinstance(listing, dict) else []
    configs = sorted({e["config"] for e in entries})
    if config is None and len(configs) > 1:
        raise DataError(
            f"HF dataset {dataset} has several configs ({', '.join(configs)}); name one: "
            f"data.source=hf:{dataset}:{configs[0]}"
        )
    chosen = [e for e in entries if config is None or e["config"] == config]
    if split is not None:
        chosen = [e for e in chosen if e["split"] == split]
        files = [RemoteFile(e["url"], None, None, e.get("size")) for e in chosen]
    else:
        named = {"train": "train", **{v: "val" for v in VAL_SPLITS}}
        files = [
            RemoteFile(e["url"], named[e["split"]], None, e.get("size"))
            for e in chosen
            if e["split"] in named
        ]
        if not files:
            files = [RemoteFile(e["url"], None, None, e.get("size")) for e in chosen]
    if not files:
        raise DataError(
            f"HF dataset {dataset} has no parquet files for config={config} split={split} "
            f"(configs: {', '.join(configs) or 'none'}); check the id at "
            f"https://huggingface.co/datasets/{dataset}"
        )
    return files


def parse_hf(source: str) -> tuple[str, str | None, str | None]:
    parts = source[len("hf:") :].split(":")
    if not parts[0] or len(parts) > 3:
        raise DataError(f"bad source '{source}'; write hf:<dataset id>[:config][:split]")
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1] or None, parts[2] or None


def resolve(source: str) -> list[RemoteFile]:
    """The remote files of a named dataset or an hf: source."""
    if source == "shakespeare":
        return [RemoteFile(SHAKESPEARE_URL, None, SHAKESPEARE_SHA256, SHAKESPEARE_SIZE)]
    if source == "tinystories":
        names = {"TinyStoriesV2-GPT4-train.txt": "train", "TinyStoriesV2-GPT4-valid.txt": "val"}
        return hf_repo_files("roneneldan/TinyStories", "", names)
    if source == "wikitext-103":
        return hf_parquet_files("Salesforce/wikitext", "wikitext-103-raw-v1", None)
    if source == "fineweb-edu-10b":
        return hf_repo_files("HuggingFaceFW/fineweb-edu", "sample/10BT", {"*.parquet": None})
    if source.startswith("hf:"):
        return hf_parquet_files(*parse_hf(source))
    raise DataError(f"unknown dataset '{source}'; known: {', '.join(DATASETS)}, or hf:<id>")
