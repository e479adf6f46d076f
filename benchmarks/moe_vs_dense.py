"""Training-step throughput, MoE vs dense at equal active parameters, side by side.

Dense: SwiGLU of width H. MoE: 8 experts of width H/2, top-2 (so the same active FFN parameters
per token), plus the router. bf16 autocast on CPU, AdamW, median of repeats.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/moe_vs_dense.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from lmforge.models.counting import active_parameters, count_parameters
from lmforge.models.moe import moe_aux_loss, update_router_biases
from lmforge.models.presets import model_preset
from lmforge.models.transformer import Transformer

VOCAB, SEQ, BATCH, HIDDEN = 512, 128, 8, 512
SHAPE = dict(
    vocab_size=VOCAB, context_length=SEQ, dim=256, num_layers=4, num_heads=4, ffn_dim=HIDDEN
)
MODELS = {
    "dense": dict(),
    "moe 8x top-2": dict(ffn="moe", num_experts=8, experts_per_token=2, moe_ffn_dim=HIDDEN // 2),
    "moe 8x top-2 aux-free": dict(
        ffn="moe",
        num_experts=8,
        experts_per_token=2,
        moe_ffn_dim=HIDDEN // 2,
        moe_bias_balancing=True,
    ),
}
WARMUP, REPEATS, STEPS = 2, 5, 3


def tokens_per_second(fields: dict) -> tuple[float, int, int]:
    torch.manual_seed(0)
    model = Transformer(model_preset("tiny-llama", **SHAPE, **fields)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.randint(0, VOCAB, (BATCH, SEQ + 1))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(data[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), data[:, 1:].reshape(-1))
        aux = moe_aux_loss(model)
        (loss if aux is None else loss + aux).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_router_biases(model)

    for _ in range(WARMUP):
        step()
    rates = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(STEPS):
            step()
        rates.append(STEPS * BATCH * SEQ / (time.perf_counter() - start))
    return statistics.median(rates), count_parameters(model), active_parameters(model)


def main() -> None:
    print(
        f"threads={torch.get_num_threads()} batch={BATCH}x{SEQ} bf16 autocast, median of {REPEATS}"
    )
    print(f"{'model':<24}{'params':>10}{'active':>10}{'tokens/s':>10}{'vs dense':>10}")
    dense = None
    for name, fields in MODELS.items():
        rate, total, active = tokens_per_second(fields)
        dense = dense or rate
        print(
            f"{name:<24}{total / 1e6:>9.2f}M{active / 1e6:>9.2f}M{rate:>10.0f}{rate / dense:>10.2f}"
        )


if __name__ == "__main__":
    main()
