"""The baseline of time_to_loss.py: a plain fp32 PyTorch GPT trained with nanoGPT's CPU recipe.

    .venv/bin/python benchmarks/nanogpt_baseline.py DATA_FILE [--max-iters N] [--launched-at T]
        [--eval-batches N]

The recipe nanoGPT's README gives for shakespeare_char on a CPU (its config plus the README's
overrides): 4 layers, 4 heads, width 128, context 64, batch 12, no dropout, no biases, AdamW lr
1e-3 betas (0.9, 0.99) with weight decay 0.1 on the matrices only, warm-up 100 iters then cosine
to 1e-4 at 2,000, gradient clip 1.0, eager (no compile), train and val losses on 20 random
batches each every 250 iters. The model is tiny_gpt.py's; the data is the file's characters,
split 90/10. Training stops at the first evaluation with val loss <= 1.88. Prints one JSON line:
each evaluation with its wall time since T (the time.time() at which the caller launched this
process; default: when this module was imported) and the median training tokens/s. Imports
torch but not lmforge, so the baseline does not pay for lmforge's import. --max-iters and
--eval-batches shorten it for quick checks.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

IMPORTED = time.time()

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_gpt import TinyGPT  # noqa: E402

TARGET_LOSS = 1.88
LAYERS, HEADS, DIM, CONTEXT, BATCH = 4, 4, 128, 64, 12
LR, MIN_LR, WARMUP_ITERS, MAX_ITERS = 1e-3, 1e-4, 100, 2000
BETAS, WEIGHT_DECAY, GRAD_CLIP = (0.9, 0.99), 0.1, 1.0
EVAL_INTERVAL, EVAL_BATCHES, SEED = 250, 20, 1337


def recipe(max_iters: int = MAX_ITERS) -> str:
    """One line naming the recipe, for benchmark tables."""
    return (
        f"nanoGPT shakespeare_char CPU recipe: {LAYERS} x {DIM}, {HEADS} heads, batch {BATCH} x "
        f"{CONTEXT}, AdamW lr {LR:g} betas {BETAS} wd {WEIGHT_DECAY:g}, warmup {WARMUP_ITERS} + "
        f"cosine to {MIN_LR:g} at {max_iters}, clip {GRAD_CLIP:g}, fp32 eager, eval every "
        f"{EVAL_INTERVAL} iters on {EVAL_BATCHES} train + {EVAL_BATCHES} val batches"
    )


def nanogpt_lr(it: int, max_iters: int = MAX_ITERS) -> float:
    """nanoGPT's schedule: linear warm-up to LR, cosine to MIN_LR at max_iters, then flat."""
    if it < WARMUP_ITERS:
        return LR * (it + 1) / (WARMUP_ITERS + 1)
    if it > max_iters:
        return MIN_LR
    progress = (it - WARMUP_ITERS) / (max_iters - WARMUP_ITERS)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * progress)) * (LR - MIN_LR)


def char_splits(path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    """(vocabulary size, {"train": first 90% of the characters' ids, "val": the rest})."""
    text = path.read_text()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    cut = int(0.9 * len(ids))
    return len(chars), {"train": ids[:cut], "val": ids[cut:]}


def random_batch(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.randint(len(data) - CONTEXT, (BATCH,))
    x = torch.stack([data[i : i + CONTEXT] for i in offsets])
    return x, torch.stack([data[i + 1 : i + 1 + CONTEXT] for i in offsets])


@torch.no_grad()
def mean_losses(model: TinyGPT, splits: dict[str, torch.Tensor], batches: int) -> dict[str, float]:
    model.eval()
    out = {
        name: sum(model(*random_batch(data)).item() for _ in range(batches)) / batches
        for name, data in splits.items()
    }
    model.train()
    return out


def train(
    path: Path,
    max_iters: int = MAX_ITERS,
    launched_at: float = IMPORTED,
    eval_batches: int = EVAL_BATCHES,
) -> dict:
    """Train until the first evaluation with val loss <= TARGET_LOSS, or max_iters."""
    torch.manual_seed(SEED)
    vocab, splits = char_splits(path)
    model = TinyGPT(vocab, LAYERS, HEADS, DIM, CONTEXT, bias=False)
    matrices = [p for p in model.parameters() if p.dim() >= 2]  # nanoGPT decays only these
    others = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": WEIGHT_DECAY}, {"params": others}]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS, weight_decay=0.0)
    evals, step_s = [], []
    for it in range(max_iters + 1):
        if it % EVAL_INTERVAL == 0 or it == max_iters:
            losses = mean_losses(model, splits, eval_batches)
            evals.append({"iter": it, **losses, "wall_s": time.time() - launched_at})
            if losses["val"] <= TARGET_LOSS or it == max_iters:
                break
        for group in optimizer.param_groups:
            group["lr"] = nanogpt_lr(it, max_iters)
        tick = time.perf_counter()
        loss = model(*random_batch(splits["train"]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        step_s.append(time.perf_counter() - tick)
    speed = BATCH * CONTEXT / statistics.median(step_s) if step_s else 0.0
    return {"evals": evals, "max_iters": max_iters, "tokens_per_s": speed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("data", type=Path, help="Tiny Shakespeare's input.txt")
    parser.add_argument("--max-iters", type=int, default=MAX_ITERS)
    parser.add_argument("--launched-at", type=float, default=IMPORTED)
    parser.add_argument("--eval-batches", type=int, default=EVAL_BATCHES)
    args = parser.parse_args()
    print(json.dumps(train(args.data, args.max_iters, args.launched_at, args.eval_batches)))


if __name__ == "__main__":
    main()
