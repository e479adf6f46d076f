"""SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized) on the HellaSwag validation set: acc, acc_norm,
examples/s.

    .venv/bin/python benchmarks/hellaswag.py [--limit N] [--dtype fp32|bf16] [--batch-size 8]
        [--gguf PATH] [--data PATH] [--append]

Scoring as `lmforge eval hellaswag` (Karpathy's rule: summed / mean loss of each ending). Data:
--data, else $LMFORGE_SHARED_DATA (or ../shared/data)/hellaswag/hellaswag_val_full.txt (10,042
examples, llama.cpp format). Prints a table; --append adds it to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import REPO, machine  # noqa: E402
from smollm2_decode import DEFAULT  # noqa: E402

from lmforge.evals.hellaswag import evaluate_hellaswag, load_hellaswag  # noqa: E402
from lmforge.formats.gguf import load_gguf  # noqa: E402

SHARED = Path(os.environ.get("LMFORGE_SHARED_DATA") or REPO.parent / "shared" / "data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--gguf", type=Path, default=Path(os.environ.get("LMFORGE_SMOLLM2_GGUF", DEFAULT))
    )
    parser.add_argument(
        "--data", type=Path, default=SHARED / "hellaswag" / "hellaswag_val_full.txt"
    )
    parser.add_argument("--limit", type=int, default=None, help="first N examples (default: all)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per forward pass")
    parser.add_argument("--append", action="store_true")
    args = parser.parse_args()
    if not args.gguf.is_file():
        sys.exit(f"{args.gguf} not found; run `pytest tests/interop/test_gguf.py` once to fetch it")

    examples = load_hellaswag(args.data, args.limit)
    start = time.perf_counter()
    model, tokenizer = load_gguf(args.gguf)
    import_s = time.perf_counter() - start
    result = evaluate_hellaswag(model, tokenizer, examples, args.batch_size, "cpu", args.dtype)
    rows = [
        ("date", datetime.date.today().isoformat()),
        ("machine", machine()),
        ("dtype / batch (examples x 4 endings)", f"{args.dtype} / {args.batch_size}"),
        ("examples", f"{result['n']:,}" + ("" if args.limit is None else " (--limit)")),
        ("acc (summed loss)", f"{result['acc']:.4f}"),
        ("acc_norm (mean loss per token)", f"{result['acc_norm']:.4f}"),
        ("examples/s", f"{result['examples_per_s']:.2f}"),
        ("GGUF import s", f"{import_s:.1f}"),
    ]
    table = "| SmolLM2-135M HellaSwag | value |\n|---|---|\n" + "\n".join(
        f"| {k} | {v} |" for k, v in rows
    )
    print(table)
    if args.append:
        with open(REPO / "BENCHMARKS.md", "a") as out:
            out.write(
                "\n## SmolLM2-135M-Instruct HellaSwag\n\n`.venv/bin/python benchmarks/hellaswag.py "
                f"--dtype {args.dtype} --append`: SmolLM2-135M-Instruct Q4_1 GGUF dequantized to "
                f"fp32, validation set from {args.data.name}, scored like Karpathy's hellaswag.py "
                f"(context + ' ' + ending, loss on the ending tokens only).\n\n{table}\n"
            )


if __name__ == "__main__":
    main()
