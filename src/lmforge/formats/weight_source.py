"""Weights to read a slice at a time: an lmforge model.safetensors, an HF directory (one file or
sharded safetensors), or any state dict already in memory (GGUF, .bin, the rarer HF layouts).

A source knows every tensor's full shape from the file headers alone and reads only the block a
rank asks for (safetensors `get_slice` on a memory map), so N ranks loading their shards read
about 1/N of the bytes each. `bytes_read` counts what was read, for the tests and benchmarks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import torch
from torch import Tensor

from lmforge.errors import CheckpointError
from lmforge.formats.hf_tokenizer import read_json
from lmforge.formats.hf_weights import (
    WEIGHT_FILES,
    layout,
    read_hf_weights,
    state_dict_from_hf,
)
from lmforge.formats.hf_zoo import DEEPSEEK, ZOO
from lmforge.models.config import ModelConfig

Index = tuple[slice, ...]


@dataclass
class Part:
    """One stored tensor that makes up (a dim-0 block of) one of our tensors."""

    file: str
    key: str
    rows: int  # its extent along our dim 0
    transposed: bool = False  # GPT-2's Conv1D stores (in, out), the transpose of nn.Linear


@dataclass
class SafetensorsSource:
    """Our tensors as lists of stored parts, concatenated along dim 0 (q/k/v, gate/up)."""

    shapes: dict[str, tuple[int, ...]]
    parts: dict[str, list[Part]]
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    handles: dict[str, object] = field(default_factory=dict)
    bytes_read: int = 0

    def _handle(self, file: str):
        if file not in self.handles:
            self.handles[file] = self.stack.enter_context(
                safetensors.safe_open(file, framework="pt")
            )
        return self.handles[file]

    def read(self, name: str, index: Index) -> Tensor:
        rows, rest = index[0] if index else slice(None), index[1:]
        start, stop = rows.start or 0, self.shapes[name][0] if rows.stop is None else rows.stop
        blocks, offset = [], 0
        for part in self.parts[name]:
            lo, hi = max(start, offset), min(stop, offset + part.rows)
            if lo < hi:
                blocks.append(self._read_part(part, slice(lo - offset, hi - offset), rest))
            offset += part.rows
        block = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
        self.bytes_read += block.numel() * block.element_size()
        return block.float() if block.is_floating_point() else block

    def _read_part(self, part: Part, rows: slice, rest: Index) -> Tensor:
        handle = self._handle(part.file).get_slice(part.key)
        try:
            if part.transposed:  # our [rows, cols] is their [cols, rows]
                return handle[(rest[0] if rest else slice(None), rows)].t().contiguous()
            return handle[(rows, *rest)]
        except Exception as error:  # safetensors raises its own types for a truncated file
            raise CheckpointError(
                f"cannot read {part.key} from {part.file} ({' '.join(str(error).split())}); the "
                "file is corrupt or truncated"
            ) from None

    def close(self) -> None:
        self.stack.close()


@dataclass
class StateDictSource:
    """A state dict in memory, served through the same interface."""

    state: dict[str, Tensor]
    bytes_read: int = 0
    shapes: dict[str, tuple[int, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.shapes = {name: tuple(tensor.shape) for name, tensor in self.state.items()}

    def read(self, name: str, index: Index) -> Tensor:
        block = self.state[name][index]
        self.bytes_read += block.numel() * block.element_size()
        return block

    def close(self) -> None:
        self.state = {}


def _headers(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (safetensors.SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({' '.join(str(error).split())}); it may "
            "be truncated: use another copy"
        ) from None


def safetensors_file_source(path: Path) -> SafetensorsSource:
    """An lmforge model.safetensors: our names, stored as they are."""
    shapes = _headers(path)
    parts = {key: [Part(str(path), key, shape[0] if shape else 1)] for key, shape in shapes.items()}
    return SafetensorsSource(shapes, parts)


def _hf_files(directory: Path) -> list[Path] | None:
    """The safetensors files of an HF directory, or None if its weights are in another format."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if name.endswith(".safetensors"):
            return [path]
        if name == "model.safetensors.index.json":
            weight_map = read_json(path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{path} has no weight_map; the index is corrupt")
            shards = sorted({str(v) for v in weight_map.values()})
            if any(Path(shard).name != shard for shard in shards):
                raise CheckpointError(f"{path} names a shard outside its directory; refused")
            return [directory / shard for shard in shards]
        return None
    return None


def hf_source(directory: Path, hf_config: dict, config: ModelConfig):
    """An HF directory read lazily where its layout is a plain rename/fuse (Llama, Qwen2,
    Mistral, SmolLM2, GPT-2); the zoo layouts (MoE, DeepSeek) are converted in memory."""
    model_type = hf_config["model_type"]
    files = _hf_files(directory)
    lazy = files is not None and model_type not in ZOO and model_type not in DEEPSEEK
    if not lazy or config.sliding_window or config.layers:
        weights = read_hf_weights(directory)
        return StateDictSource(
            state_dict_from_hf(weights, config, model_type, hf_config.get("rope_interleave"))
        )
    prefix = "transformer." if model_type == "gpt2" else "model."
    stored: dict[str, tuple[str, str, tuple[int, ...]]] = {}  # prefixed name -> file, key, shape
    for path in files:
        if not path.is_file():
            raise CheckpointError(f"weight file {path} is missing; download it again")
        for key, shape in _headers(path).items():
            full = key if key == "lm_head.weight" or key.startswith(prefix) else prefix + key
            stored[full] = (str(path), key, shape)
    # The in-memory converter run on shape-only tensors: every name and shape check, no reads.
    meta = {k: torch.empty(shape, device="meta") for k, (_, _, shape) in stored.items()}
    shapes = state_dict_from_hf(meta, config, model_type)
    parts: dict[str, list[Part]] = {}
    for ours, names, conv1d, _ in layout(config, "gpt2" if model_type == "gpt2" else "llama"):
        parts[ours] = []
        for name in names:
            file, key, shape = stored[name]
            transposed = conv1d and len(shape) == 2
            parts[ours].append(Part(file, key, shape[1] if transposed else shape[0], transposed))
    if config.tie_embeddings:  # the converter lists the tied head under both names
        parts["lm_head.weight"] = parts["token_embedding.weight"]
    return SafetensorsSource({k: tuple(v.shape) for k, v in shapes.items()}, parts)
