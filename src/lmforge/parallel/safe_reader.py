"""Read torch.distributed.checkpoint directories without trusting their pickled metadata.

DCP stores tensor data raw (loaded with weights_only) but its `.metadata` index is a plain
pickle, and FileSystemReader unpickles it with `pickle.load`: a crafted checkpoint could run
code on resume. SafeReader unpickles it with an allow-list of the classes DCP's metadata is
made of; anything else is refused before it is constructed. An index that declares any entry
as pickled *bytes* is refused too (lmforge writes only tensors), and `read_data` refuses a bytes
read again, whatever planner asks for it (see safe_load.py for the planner).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner

from lmforge.errors import CheckpointError

_METADATA_CLASSES = {
    "Metadata",
    "MetadataIndex",
    "ChunkStorageMetadata",
    "TensorProperties",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "StorageMeta",
    "_MEM_FORMAT_ENCODING",
}
_ALLOWED = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib._local", "PosixPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            (module == "torch.distributed.checkpoint.metadata" and name in _METADATA_CLASSES)
            or (module, name) in _ALLOWED
            or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
        )
        if not allowed:
            raise CheckpointError(
                f"{self.path} references {module}.{name}, which a checkpoint index never "
                "contains; refusing to load it (it could run code). Use a checkpoint you made"
            )
        return super().find_class(module, name)


class SafeReader(FileSystemReader):
    def __init__(self, path: str | Path):
        super().__init__(str(path))
        self.directory = Path(path)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self.directory / ".metadata"
        if kwargs.get("rank") is not None:  # a per-rank index (not written by lmforge)
            path = self.directory / f"__{kwargs['rank']}.metadata"
        try:
            with open(path, "rb") as handle:
                metadata = _MetadataUnpickler(handle, path).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as error:
            raise CheckpointError(
                f"{path} is not a readable checkpoint index ({error}); resume from another "
                "checkpoint"
            ) from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path} is not a checkpoint index; resume from another one")
        for key, entry in metadata.state_dict_metadata.items():
            if isinstance(entry, BytesStorageMetadata):
                raise refuse_bytes_item(self.directory, key)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan: LoadPlan, planner: LoadPlanner):

        for item in plan.items:
            if item.type == LoadItemType.BYTE_IO:
                raise refuse_bytes_item(self.directory, item.dest_index.fqn)
        return super().read_data(plan, planner)


def refuse_bytes_item(directory: Path, key: str) -> CheckpointError:
    return CheckpointError(
        f"{directory}: entry '{key}' is stored as pickled bytes, which lmforge never writes and "
        "will not unpickle (it could run code); use a checkpoint you made"
    )
