"""CPU training throughput: a plain fp32 PyTorch GPT against `lmforge train`, same shapes.

    .venv/bin/python benchmarks/cpu_train_speed.py [--append] [--steps N] [extra `lmforge train` flags]

Shapes (nanoGPT's shakespeare-char): 6 layers, 6 heads, width 384, context 256, batch 64,
char-level Tiny Shakespeare. The baseline is the minimal nanoGPT-like model of tiny_gpt.py
(LayerNorm, GELU MLP, learned positions, tied embeddings, SDPA) trained in fp32 with torch's
default AdamW; lmforge runs as a fresh `lmforge train` process with its defaults and a
GPT-2-style model of the same size. Both report the median tokens/s over the steps after
warm-up, each in its own process, so peak RSS is per side. Prints a table; --append adds it to
BENCHMARKS.md.
"""

from __future__ import annotations

import datetime
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import append_to_benchmarks, key_value_table, machine  # noqa: E402
from tiny_gpt import TinyGPT  # noqa: E402

from lmforge.models.config import ModelConfig  # noqa: E402
from lmforge.models.counting import build_on_meta, flops_per_token  # noqa: E402
from lmforge.runtime import format_flops, measure_peak_flops  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
LAYERS, HEADS, DIM, CONTEXT, BATCH = 6, 6, 384, 256, 64
WARMUP = 2


def baseline(steps: int) -> dict:
    """Train TinyGPT in fp32 for WARMUP + steps steps; median tokens/s of the measured ones."""
    torch.manual_seed(0)
    text = DATA.read_text()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([lookup[c] for c in text[: int(0.9 * len(text))]], dtype=torch.long)
    model = TinyGPT(len(chars), LAYERS, HEADS, DIM, CONTEXT)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    times = []
    for _ in range(WARMUP + steps):
        start = time.perf_counter()
        offsets = torch.randint(len(data) - CONTEXT - 1, (BATCH,))
        x = torch.stack([data[i : i + CONTEXT] for i in offsets])
        y = torch.stack([data[i + 1 : i + CONTEXT + 1] for i in offsets])
        loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {
        "tokens_per_s": BATCH * CONTEXT / statistics.median(times[WARMUP:]),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "loss": loss.item(),
    }


def lmforge(steps: int, extra: list[str]) -> dict:
    """`lmforge train` as a fresh process; median tokens/s of its per-step logs after warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            sys.executable, "-m", "lmforge", "train",
            "--data.source", str(DATA), "--data.tokenizer", "char", "--data.val_fraction", "0.1",
            "--model.num_layers", str(LAYERS), "--model.num_heads", str(HEADS),
            "--model.dim", str(DIM), "--model.context_length", str(CONTEXT),
            "--model.mlp", "gelu", "--model.norm", "layernorm", "--model.position", "learned",
            "--model.bias", "--model.tie_embeddings",
            "--train.micro_batch_size", str(BATCH), "--train.batch_tokens", str(BATCH * CONTEXT),
            "--train.max_steps", str(WARMUP + steps), "--train.log_interval", "1",
            "--train.eval_interval", "100000", "--train.eval_batches", "1",
            "--train.checkpoint_interval", "100000", "--train.out_dir", f"{tmp}/run",
            "--data.dir", f"{tmp}/data", "--logging.no_progress_bar", *extra,
        ]  # fmt: skip
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{' '.join(args)} failed:\n{done.stderr}")
        records = [json.loads(x) for x in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
        dtype = tomllib.loads(Path(f"{tmp}/run/config.toml").read_text())["train"]["dtype"]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][WARMUP:]
    rss = max(r["peak_memory_gib"] for r in records if "peak_memory_gib" in r)
    loss = [r["loss"] for r in records if "loss" in r][-1]
    return {
        "tokens_per_s": statistics.median(speeds),
        "peak_rss_gib": rss,
        "loss": loss,
        "dtype": dtype,
    }


def model_flops_per_token() -> float:
    """PaLM's training FLOPs per token of the benchmark shape (lmforge's GPT-2-style model)."""
    config = ModelConfig(
        vocab_size=65, context_length=CONTEXT, dim=DIM, num_layers=LAYERS, num_heads=HEADS,
        mlp="gelu", norm="layernorm", position="learned", bias=True, tie_embeddings=True,
    )  # fmt: skip
    return flops_per_token(build_on_meta(config), CONTEXT)


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--baseline-only"]:  # the child process that runs the baseline
        print(json.dumps(baseline(int(args[1]))))
        return
    append = "--append" in args
    args = [a for a in args if a != "--append"]
    steps = 6
    if "--steps" in args:
        i = args.index("--steps")
        steps, args = int(args[i + 1]), args[:i] + args[i + 2 :]
    child = [sys.executable, __file__, "--baseline-only", str(steps)]
    base = json.loads(subprocess.run(child, capture_output=True, text=True, check=True).stdout)
    ours = lmforge(steps, args)
    flops = model_flops_per_token()
    peak = {d: measure_peak_flops(torch.device("cpu"), d) for d in ("fp32", "bf16")}
    mfu_base = flops * base["tokens_per_s"] / peak["fp32"]
    mfu_ours = flops * ours["tokens_per_s"] / peak[ours["dtype"]]
    rows = [
        ("date", datetime.date.today().isoformat()),
        ("machine", machine()),
        ("config", f"{LAYERS} layers, {HEADS} heads, dim {DIM}, context {CONTEXT}, batch {BATCH}, char Tiny Shakespeare"),
        (f"measured steps (after {WARMUP} warm-up)", str(steps)),
        ("lmforge extra flags", " ".join(args) or "none (defaults)"),
        ("baseline fp32 PyTorch tokens/s (median)", f"{base['tokens_per_s']:,.0f}"),
        ("lmforge train tokens/s (median)", f"{ours['tokens_per_s']:,.0f}"),
        ("ratio lmforge / baseline", f"{ours['tokens_per_s'] / base['tokens_per_s']:.2f}x"),
        ("peak RSS baseline / lmforge GiB", f"{base['peak_rss_gib']:.2f} / {ours['peak_rss_gib']:.2f}"),
        ("model FLOPs per token (PaLM: 6N + 12 L H Q T)", f"{flops / 1e6:.1f} M"),
        ("lmforge dtype (auto picks from the machine)", ours["dtype"]),
        ("peak measured (cached matmul; bf16 probed small where slow): fp32 / bf16", f"{format_flops(peak['fp32'])} / {format_flops(peak['bf16'])}"),
        (f"MFU baseline (of fp32 peak) / lmforge (of {ours['dtype']} peak)", f"{100 * mfu_base:.1f}% / {100 * mfu_ours:.1f}%"),
    ]  # fmt: skip
    table = key_value_table("CPU training throughput", rows)
    print(table)
    if append:
        append_to_benchmarks(table)


if __name__ == "__main__":
    main()
