"""How much of a data-parallel step the gradient all-reduce costs: GPT-2 124M at 8 GPUs.

    .venv/bin/python benchmarks/allreduce_estimate.py [--preset gpt2] [--gpus 8]
        [--mfu 0.4] [--peak-tflops 989.4] [--tokens-per-s MEASURED_ON_ONE_GPU]

A ring all-reduce sends and receives 2 (N - 1) / N times the gradient bytes per GPU (reduce-
scatter, then all-gather), so its time is that volume over the bus bandwidth NCCL reaches
(nccl-tests' "busbw"). lmforge keeps fp32 weights, so DDP reduces fp32 gradients: 4 bytes a
parameter. Compute time per step is the step's FLOPs (lmforge's own count, 6N + attention) at
the stated MFU, or the tokens/s measured on one GPU (benchmarks/gpu_check.py). The overhead is
the all-reduce's share of a step if nothing overlapped it; DDP starts reducing 25 MB buckets
while the backward pass still runs, so the exposed part is smaller (roughly the last bucket).
"""

from __future__ import annotations

import argparse

# (setup, nodes, bus bandwidth in GB/s that NCCL all-reduce reaches on large messages).
# NVLink 4 on H100/H200 SXM is 450 GB/s each way; nccl-tests reach ~360 without NVLink SHARP.
# Across nodes NCCL stripes its rings over every NIC, so the bus bandwidth is about the node's
# total network bandwidth: eight 400 Gb/s InfiniBand NICs (DGX/HGX H100) are 400 GB/s, of which
# we assume 75% is reached; one 100 Gb/s Ethernet NIC per node is 12.5 GB/s, ~11 reached.
SETUPS = (
    ("one node, NVLink 4 (~360 GB/s)", 1, 360.0),
    ("two nodes, 8 x 400 Gb/s InfiniBand each (~300 GB/s)", 2, 300.0),
    ("two nodes, 1 x 100 Gb/s Ethernet each (~11 GB/s)", 2, 11.0),
)
GRADIENT_BYTES = 4
TOKENS_PER_GPU = (16_384, 65_536)
"""One 16 x 1024 micro-batch per GPU per step; and nanoGPT's 0.5M-token batch over 8 GPUs."""


def allreduce_seconds(parameters: int, gpus: int, bus_gb_s: float) -> float:
    """Ring all-reduce of fp32 gradients: 2 (N - 1) / N x bytes over the bus bandwidth."""
    return 2 * (gpus - 1) / gpus * parameters * GRADIENT_BYTES / (bus_gb_s * 1e9)


def model_numbers(preset: str, seq_len: int, vocab_size: int | None) -> tuple[int, float]:
    """(parameters, training FLOPs per token) of a preset, from lmforge's own counting."""
    from lmforge.models.counting import build_on_meta, count_parameters, flops_per_token
    from lmforge.models.presets import model_preset

    config = model_preset(preset, **({"vocab_size": vocab_size} if vocab_size else {}))
    model = build_on_meta(config)
    return count_parameters(model), flops_per_token(model, min(seq_len, config.context_length))


def overhead_rows(parameters: int, gpus_per_node: int, tokens_per_s: float) -> list[tuple]:
    """(setup, GPUs, tokens per GPU per step, compute ms, all-reduce ms, overhead share)."""
    rows = []
    for setup, nodes, bandwidth in SETUPS:
        world = gpus_per_node * nodes
        reduce_s = allreduce_seconds(parameters, world, bandwidth)
        for tokens in TOKENS_PER_GPU:
            compute_s = tokens / tokens_per_s
            share = reduce_s / (compute_s + reduce_s)
            rows.append((setup, world, tokens, 1000 * compute_s, 1000 * reduce_s, share))
    return rows


def table(parameters: int, gpus_per_node: int, tokens_per_s: float) -> str:
    lines = [
        "| setup (all-reduce bus bandwidth) | GPUs | tokens per GPU per step | compute ms "
        "| all-reduce ms | overhead if not overlapped |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for setup, world, tokens, compute_ms, reduce_ms, share in overhead_rows(
        parameters, gpus_per_node, tokens_per_s
    ):
        lines.append(
            f"| {setup} | {world} | {tokens:,} | {compute_ms:.1f} | {reduce_ms:.2f} | {share:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--vocab_size", type=int, default=50304)
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--gpus", type=int, default=8, help="per node")
    parser.add_argument("--mfu", type=float, default=0.4)
    parser.add_argument("--peak-tflops", type=float, default=989.4, help="H100 SXM dense bf16")
    parser.add_argument("--tokens-per-s", type=float, help="measured on one GPU (overrides MFU)")
    args = parser.parse_args()
    parameters, flops_token = model_numbers(args.preset, args.seq_len, args.vocab_size)
    tokens_per_s = args.tokens_per_s or args.mfu * args.peak_tflops * 1e12 / flops_token
    source = (
        "measured" if args.tokens_per_s else f"{args.mfu:.0%} MFU of {args.peak_tflops} TFLOP/s"
    )
    print(
        f"{args.preset}: {parameters:,} parameters, {flops_token / 1e9:.3f} GFLOPs/token, "
        f"{tokens_per_s:,.0f} tokens/s per GPU ({source})\n"
    )
    print(table(parameters, args.gpus, tokens_per_s))


if __name__ == "__main__":
    main()
