"""One rank of the 2-process gloo check (run by torchrun; both ranks share GPU 0), and the
training both it and the one-process reference run: 3 AdamW steps of a tiny Llama on a fixed
global batch of 8 rows, each rank taking its half.

    python -m torch.distributed.run --standalone --nproc-per-node 2 gloo_worker.py \
        --strategies ddp,zero1,fsdp --device cuda --out DIR

writes DIR/<strategy>.safetensors (rank 0's weights), or DIR/<strategy>.error when the
strategy cannot run over gloo on these tensors.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmforge.config import OptimConfig, ParallelConfig
from lmforge.evals.loss import batch_loss
from lmforge.models.presets import model_preset
from lmforge.models.transformer import Transformer
from lmforge.optim.optimizers import build_optimizer
from lmforge.parallel.dist import DistInfo, init_distributed, shutdown
from lmforge.parallel.parallelize import clip_gradients, parallelize
from lmforge.parallel.sharded_state import full_model_state

ROWS, SEQ_LEN, STEPS = 8, 32, 3


def train_weights(strategy: str, info: DistInfo) -> dict[str, torch.Tensor]:
    """The weights after STEPS steps, on rank 0's CPU (empty on other ranks)."""
    torch.manual_seed(0)
    model = Transformer(model_preset("tiny-llama", vocab_size=256)).to(info.device)
    parallel = parallelize(model, ParallelConfig(strategy=strategy), info, "fp32", compile=False)
    optimizer = build_optimizer(
        model, OptimConfig(lr=1e-2), info.device, shard_over_ranks=strategy == "zero1"
    )
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        tokens = torch.randint(0, 256, (ROWS, SEQ_LEN + 1), generator=generator)
        rows = tokens.chunk(info.world_size)[info.rank].to(info.device)
        loss = batch_loss(parallel.forward, (rows[:, :-1], rows[:, 1:]), contextlib.nullcontext())
        loss.backward()
        clip_gradients(model, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    state = full_model_state(model, info, sharded=parallel.fsdp)
    # Clones: the tied embedding and head share storage, which safetensors will not save.
    return {name: tensor.detach().cpu().clone() for name, tensor in state.items()}


def reference_weights(device: str) -> dict[str, torch.Tensor]:
    """One process, the whole batch."""
    return train_weights("ddp", DistInfo(0, 0, 1, torch.device(device), None))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategies", required=True, help="comma-separated")
    parser.add_argument("--device", required=True)
    parser.add_argument("--out", type=Path, required=True, help="directory for the results")
    args = parser.parse_args()
    os.environ["LOCAL_RANK"] = "0"  # both ranks on GPU 0: NCCL refuses this, gloo may not
    info = init_distributed(args.device, "gloo", need_group=True)
    try:
        for strategy in args.strategies.split(","):
            try:
                weights = train_weights(strategy, info)
            except Exception as error:  # e.g. a collective gloo has no CUDA version of
                if info.is_main:
                    message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                    (args.out / f"{strategy}.error").write_text(message)
                continue
            if info.is_main:
                save_file(weights, str(args.out / f"{strategy}.safetensors"))
    finally:
        shutdown(info)


if __name__ == "__main__":
    main()
