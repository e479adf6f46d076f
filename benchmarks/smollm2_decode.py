"""SmolLM2-135M-Instruct (Q4_1 GGUF): import time, and CPU greedy decode speed, lmforge vs transformers.

    .venv/bin/python benchmarks/smollm2_decode.py [--append] [--gguf PATH] [--new-tokens 256]

Both models are dequantized from the same file to fp32 (and cast to bf16 for the bf16 rows) and
decode in the same process, batch 1, greedy, after a ~30-token prompt; each configuration runs
--repeats times, alternating lmforge and transformers, and the best run counts (the CPU may be
shared). Tokens/s = new tokens / wall time of the whole generate call (prefill included).
The file: $LMFORGE_SMOLLM2_GGUF or ~/.cache/lmforge/ (`pytest tests/interop/test_gguf.py` fetches it).
Prints a table; --append adds it to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import REPO, machine  # noqa: E402

from lmforge.generate import SamplingConfig, generate  # noqa: E402
from lmforge.interop.gguf import model_from_state, read_gguf  # noqa: E402

DEFAULT = Path.home() / ".cache" / "lmforge" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = (
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "
    "clockmaker who repaired every clock in the valley, and"
)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--gguf", type=Path, default=Path(os.environ.get("LMFORGE_SMOLLM2_GGUF", DEFAULT))
    )
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--append", action="store_true")
    args = parser.parse_args()
    if not args.gguf.is_file():
        sys.exit(f"{args.gguf} not found; run `pytest tests/interop/test_gguf.py` once to fetch it")
    import transformers

    torch.manual_seed(0)
    read_s, (config, state, tokenizer) = timed(lambda: read_gguf(args.gguf))
    build_s, ours = timed(lambda: model_from_state(config, state))
    hf_s, hf = timed(
        lambda: transformers.AutoModelForCausalLM.from_pretrained(
            args.gguf.parent, gguf_file=args.gguf.name, dtype=torch.float32
        ).eval()
    )
    hf.generation_config.eos_token_id = None  # always generate exactly --new-tokens
    prompt = tokenizer.encode(PROMPT)
    n = args.new_tokens

    def run_ours(model, new: int) -> list[int]:
        return generate(model, [prompt], SamplingConfig(max_new_tokens=new, temperature=0))[0]

    @torch.no_grad()
    def run_hf(model, new: int) -> list[int]:
        ids = torch.tensor([prompt])
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
            min_new_tokens=new, pad_token_id=0,
        )  # fmt: skip
        return out[0, len(prompt) :].tolist()

    models = {
        ("lmforge", "fp32"): (run_ours, ours),
        ("transformers", "fp32"): (run_hf, hf),
        ("lmforge", "bf16"): (run_ours, copy.deepcopy(ours).to(torch.bfloat16)),
        ("transformers", "bf16"): (run_hf, copy.deepcopy(hf).to(torch.bfloat16)),
    }
    best: dict[tuple[str, str], float] = {}
    outputs: dict[tuple[str, str], list[int]] = {}
    for run, model in models.values():  # warm-up: first calls allocate and pick kernels
        run(model, 8)
    for _ in range(args.repeats):
        for key, (run, model) in models.items():
            seconds, outputs[key] = timed(lambda run=run, model=model: run(model, n))
            best[key] = min(best.get(key, float("inf")), seconds)
    same = {d: outputs[("lmforge", d)] == outputs[("transformers", d)] for d in ("fp32", "bf16")}
    rows = [
        ("date", datetime.date.today().isoformat()),
        ("machine", machine()),
        ("file", f"{args.gguf.name} ({args.gguf.stat().st_size / 2**20:.0f} MiB)"),
        ("lmforge import s (read_gguf + build model)", f"{read_s:.1f} + {build_s:.1f}"),
        ("transformers import s (from_pretrained gguf_file)", f"{hf_s:.1f}"),
        ("prompt tokens / new tokens", f"{len(prompt)} / {n}"),
    ]
    for dtype in ("fp32", "bf16"):
        ours_tps = n / best[("lmforge", dtype)]
        hf_tps = n / best[("transformers", dtype)]
        rows.append((f"{dtype} tokens/s lmforge / transformers", f"{ours_tps:.1f} / {hf_tps:.1f}"))
        rows.append((f"{dtype} same greedy tokens", "yes" if same[dtype] else "no"))
    table = "| SmolLM2-135M decode | value |\n|---|---|\n" + "\n".join(
        f"| {k} | {v} |" for k, v in rows
    )
    print(table)
    print(
        "\nlmforge fp32 continuation:", repr(tokenizer.decode(outputs[("lmforge", "fp32")])[:200])
    )
    if args.append:
        with open(REPO / "BENCHMARKS.md", "a") as out:
            out.write(
                "\n## SmolLM2-135M GGUF decode\n\n`.venv/bin/python benchmarks/smollm2_decode.py "
                "--append`: batch 1, greedy, best of "
                f"{args.repeats} alternating runs, both dequantized from the same file.\n\n{table}\n"
            )


if __name__ == "__main__":
    main()
