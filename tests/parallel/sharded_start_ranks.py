"""Run under torchrun by test_sharded_start.py: each rank builds a model on the meta device,
shards it with FSDP2 and materialises only its share, (a) from the seeded init and (b) from an
HF directory; it checks its shards against one process's full tensors and writes what it read."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from lmforge.checkpoint.pretrained import load_pretrained, open_weights
from lmforge.config import ParallelConfig
from lmforge.models.counting import build_on_meta
from lmforge.models.presets import model_preset
from lmforge.models.row_layouts import current_rows
from lmforge.models.transformer import Transformer
from lmforge.parallel.dist import DistInfo
from lmforge.parallel.materialize import load_local, local_index, local_part, materialize
from lmforge.parallel.parallelize import parallelize


def check_shards(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> list[str]:
    """Names whose local shard differs from the same slice of the one-process tensor (in the
    tensor-parallel row order where the model uses it)."""
    rows = current_rows(model)
    wrong = []
    for name, tensor in model.state_dict().items():
        full = expected[name][rows[name]] if name in rows else expected[name]
        if not torch.equal(local_part(tensor), full[local_index(tensor)]):
            wrong.append(name)
    return wrong


def main(hf_dir: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    info = DistInfo(rank, rank, world, torch.device("cpu"), "gloo")
    report: dict = {"rank": rank}
    for preset in ("tiny-llama", "tiny-gpt2", "tiny-deepseek"):
        config = model_preset(preset, vocab_size=320)
        torch.manual_seed(7)
        expected = Transformer(config).state_dict()
        torch.manual_seed(7)
        model = build_on_meta(config)
        start = lambda m: materialize(m, info.device)  # noqa: E731
        parallelize(model, ParallelConfig(strategy="fsdp"), info, "fp32", False, start)
        report[f"init {preset}"] = check_shards(model, expected)
    config, source = open_weights(hf_dir)
    _, expected, _ = load_pretrained(hf_dir)
    model = build_on_meta(config)

    def start(m):
        materialize(m, info.device)
        report["bytes_read"] = load_local(m, source, hf_dir)

    parallelize(model, ParallelConfig(strategy="fsdp"), info, "fp32", False, start)
    report["load"] = check_shards(model, expected)
    # The same directory into a 2-way tensor-parallel model (x FSDP over the rest).
    tp_info = DistInfo(rank, rank, world, torch.device("cpu"), "gloo", tensor_parallel=2)
    model = build_on_meta(config)

    def start_tp(m):
        materialize(m, info.device)
        report["tp bytes_read"] = load_local(m, source, hf_dir)

    layout = ParallelConfig(strategy="fsdp", tensor_parallel=2)
    parallelize(model, layout, tp_info, "fp32", False, start_tp)
    report["tp load"] = check_shards(model, expected)
    report["total_bytes"] = sum(t.numel() * t.element_size() for t in expected.values())
    report["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
