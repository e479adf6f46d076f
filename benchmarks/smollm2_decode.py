"""SmolLM2-135M-Instruct (Q4_1 GGUF) on CPU: decode and prefill speed, lmforge vs transformers.

    .venv/bin/python benchmarks/smollm2_decode.py [--append] [--gguf PATH] [--repeats 2]

Every configuration runs in its own fresh process (so each row's peak RSS is its own), the
processes run back to back and the whole sequence repeats --repeats times; the best run of each
counts (the CPU may be shared). Each row reports:
  - decode tok/s, batch 1: 256 new greedy tokens after a 32-token prompt, timed over the whole
    generate call after a warm-up call of the same shapes (so compilation is excluded; the
    compile time is its own column: the first run's process compiles with an empty Inductor
    cache, the second finds it filled, as a later `lmforge sample` run would);
  - decode tok/s, batch 8: 8 rows of that prompt, 128 new tokens each, counting all rows;
  - prefill tok/s: one forward pass over 512 tokens of WikiText-2 (best of 3);
  - NLL: mean next-token loss over 4 x 512 tokens of WikiText-2 test (quality of the weights);
  - agreement: how many of the 256 greedy tokens match transformers fp32 before the first
    difference.
Both libraries dequantize the same file; lmforge's `auto` is what `lmforge sample` picks for
a checkpoint imported from this file (Q4_1 linears -> int4, the Q8_0 tied embedding -> int8).
The file: $LMFORGE_SMOLLM2_GGUF or ~/.cache/lmforge/ (`pytest tests/interop/test_gguf.py`
fetches it). Prints a table; --append adds it to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import REPO, machine  # noqa: E402

DEFAULT = Path.home() / ".cache" / "lmforge" / "SmolLM2-135M-Instruct.Q4_1.gguf"
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2" / "test.txt"
PROMPT = (
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "
    "clockmaker who repaired every clock in the valley, and"
)
NEW_TOKENS, BATCH, BATCH_NEW_TOKENS, PREFILL, NLL_WINDOWS = 256, 8, 128, 512, 4
# name -> (library, weights, compile)
CONFIGS = {
    "transformers fp32": ("transformers", "fp32", False),
    "transformers bf16": ("transformers", "bf16", False),
    "lmforge fp32": ("lmforge", "none", False),
    "lmforge auto (int4 + int8 head)": ("lmforge", "auto", False),
    "lmforge auto, compiled": ("lmforge", "auto", True),
    "lmforge int4, compiled": ("lmforge", "int4", True),
}


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def load(library: str, weights: str, gguf: Path):
    """(model, generate(rows, new) -> new token lists, logits(ids) -> tensor, tokenizer)."""
    import torch

    from lmforge.formats.gguf import gguf_quantization_plan, load_gguf
    from lmforge.inference.generate import SamplingConfig, generate

    model, tokenizer = load_gguf(gguf)  # our tokenizer encodes for both (identical ids, tested)
    if library == "transformers":
        import transformers

        dtype = torch.float32 if weights == "fp32" else torch.bfloat16
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=dtype
        ).eval()
        hf.generation_config.eos_token_id = None  # always generate exactly max_new_tokens

        def run_hf(rows: list[list[int]], new: int, compile: bool = False) -> list[list[int]]:
            ids = torch.tensor(rows)
            out = hf.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                min_new_tokens=new, pad_token_id=0,
            )  # fmt: skip
            return out[:, ids.shape[1] :].tolist()

        return hf, run_hf, lambda ids: hf(ids).logits, tokenizer
    from lmforge.models.quantize import quantize_weights
    from lmforge.runtime import bf16_is_fast

    plan = gguf_quantization_plan(gguf) if weights == "auto" else weights
    # What `lmforge sample` does: quantized matmuls in bf16 only where this CPU runs it fast.
    quantize_weights(
        model, plan, torch.bfloat16 if bf16_is_fast(torch.device("cpu")) else torch.float32
    )

    def run_ours(rows: list[list[int]], new: int, compile: bool = False) -> list[list[int]]:
        config = SamplingConfig(max_new_tokens=new, temperature=0)
        return generate(model, rows, config, None, compile)

    return model, run_ours, model, tokenizer


def measure(name: str, gguf: Path) -> dict:
    """One configuration, in this process; returns its row as a dict."""
    import torch
    import torch.nn.functional as F

    library, weights, compile = CONFIGS[name]
    model, run, logits_of, tokenizer = load(library, weights, gguf)
    prompt = tokenizer.encode(PROMPT)
    row: dict = {"prompt_tokens": len(prompt)}
    with torch.no_grad():
        if compile:  # the first call compiles (or finds Inductor's on-disk cache filled)
            row["compile_s"], _ = timed(lambda: run([prompt], NEW_TOKENS, True))
        run([prompt], NEW_TOKENS, compile)  # warm-up at the timed shapes
        seconds, out = timed(lambda: run([prompt], NEW_TOKENS, compile))
        row["decode_tok_s"], row["tokens"] = NEW_TOKENS / seconds, out[0]
        if compile:
            row["compile_s"] -= seconds  # the first call, less its decoding
        batch = [prompt] * BATCH
        run(batch, BATCH_NEW_TOKENS, compile)
        seconds, _ = timed(lambda: run(batch, BATCH_NEW_TOKENS, compile))
        row["batch_decode_tok_s"] = BATCH * BATCH_NEW_TOKENS / seconds
        text = tokenizer.encode(WIKITEXT.read_text()[:200_000])
        windows = torch.tensor(text[: NLL_WINDOWS * PREFILL]).view(NLL_WINDOWS, PREFILL)
        prefill_s = min(timed(lambda: logits_of(windows[:1]))[0] for _ in range(3))
        row["prefill_tok_s"] = PREFILL / prefill_s
        losses = [
            F.cross_entropy(logits_of(w[None, :-1])[0].float(), w[1:]).item() for w in windows
        ]
        row["nll"] = sum(losses) / len(losses)
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def run_in_subprocess(name: str, gguf: Path, cache_dir: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
    command = [sys.executable, __file__, "--one", name, "--gguf", str(gguf)]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(best: dict[str, dict], compile_s: dict[str, list[float]]) -> str:
    reference = best["transformers fp32"]
    lines = [
        "| configuration | decode tok/s, batch 1 | x transformers fp32 | decode tok/s, batch 8 "
        "| prefill tok/s (512) | WikiText-2 NLL | greedy tokens equal to transformers fp32 "
        "| compile s, cold / cached | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in best.items():
        agree = next(
            (
                i
                for i, (a, b) in enumerate(zip(row["tokens"], reference["tokens"], strict=True))
                if a != b
            ),
            len(row["tokens"]),
        )
        times = compile_s.get(name, [])
        compile = " / ".join(f"{t:.0f}" for t in times[:2]) if times else "-"
        lines.append(
            f"| {name} | {row['decode_tok_s']:.1f} | "
            f"{row['decode_tok_s'] / reference['decode_tok_s']:.2f}x | "
            f"{row['batch_decode_tok_s']:.1f} | {row['prefill_tok_s']:.0f} | {row['nll']:.4f} | "
            f"{agree} of {len(row['tokens'])} | {compile} | {row['peak_rss_gib']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--gguf", type=Path, default=Path(os.environ.get("LMFORGE_SMOLLM2_GGUF", DEFAULT))
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--configs",
        default=";".join(CONFIGS),
        help="semicolon-separated subset of the configurations (e.g. leave out transformers bf16 on "
        "a CPU without native bf16, where it takes minutes per row)",
    )
    parser.add_argument("--append", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one configuration
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.gguf)))
        return
    if not args.gguf.is_file():
        sys.exit(f"{args.gguf} not found; run `pytest tests/interop/test_gguf.py` once to fetch it")
    if not WIKITEXT.is_file():
        sys.exit(f"{WIKITEXT} not found; the benchmark needs ../shared/data beside the repository")
    best: dict[str, dict] = {}
    compile_s: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as caches:
        for _ in range(args.repeats):
            for index, name in enumerate(args.configs.split(";")):
                # One Inductor cache per configuration: the first run compiles from nothing,
                # later runs find the cache a later `lmforge sample` would find.
                row = run_in_subprocess(name, args.gguf, f"{caches}/{index}")
                print(f"{name}: {row['decode_tok_s']:.1f} tok/s", file=sys.stderr, flush=True)
                if "compile_s" in row:
                    compile_s.setdefault(name, []).append(row["compile_s"])
                if name not in best or row["decode_tok_s"] > best[name]["decode_tok_s"]:
                    best[name] = row
    header = (
        f"{datetime.date.today().isoformat()}, {machine()}, {args.gguf.name}, prompt "
        f"{best['lmforge fp32']['prompt_tokens']} tokens, best of {args.repeats} runs"
    )
    result = f"{header}\n\n{table(best, compile_s)}"
    print(result)
    if args.append:
        with open(REPO / "BENCHMARKS.md", "a") as out:
            out.write(
                "\n## SmolLM2-135M decode on CPU\n\n"
                f"`.venv/bin/python benchmarks/smollm2_decode.py --append`: {result}\n"
            )


if __name__ == "__main__":
    main()
