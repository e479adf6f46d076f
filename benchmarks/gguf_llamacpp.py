"""llama.cpp itself on lmforge's GGUF exports: greedy tokens, file size, decode speed, WikiText NLL.

    .venv/bin/python benchmarks/gguf_llamacpp.py --checkpoint DIR [--dtypes f16 q8_0 q4_0 q4_1]
        [--tokens 32] [--wikitext ../shared/data/wikitext-2/test.txt] [--append]

For each type, the checkpoint is exported with `lmforge export --format gguf` (the library call).
llama.cpp (through llama-cpp-python) then loads the file and greedy-decodes `--tokens` tokens from
a fixed prompt, and `lmforge sample`'s generator decodes the same prompt from the same file at the
same precision (`load(file, quantize="auto")`: Q4 as int4, Q8_0 as int8, floats unquantized).
The table shows how many leading tokens agree, each side's decode tokens/s, the file size and
the mean NLL per token of the first 512 tokens of WikiText-2 under llama.cpp and under lmforge's
dequantized (fp32) model. lmforge's int4/int8 layers are not llama.cpp's kernels, so the token
columns may part ways after a near-tie; the NLL columns compare the same weights.

For SmolLM2-135M, first convert the Q4_1 file: `lmforge convert SmolLM2-135M-Instruct.Q4_1.gguf
--out smollm2` and pass --checkpoint smollm2.

llama-cpp-python compiles llama.cpp from the PyPI source distribution. On an AVX2-only CPU
(no AVX-512, and a binary that must not assume the build machine's extensions), build with:

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
      -DGGML_AVX512=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
      CMAKE_BUILD_PARALLEL_LEVEL=2 .venv/bin/pip install --no-cache-dir llama-cpp-python

(about 10-20 minutes on 2 cores). It is not a dependency of lmforge.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import append_to_benchmarks  # noqa: E402

PROMPT = "The history of the printing press begins in the fifteenth century, when"


def machine() -> str:
    """CPU model, bf16 capability, cores and torch version, as every table names them."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "")
    bf16 = [f for f in ("amx_bf16", "avx512_bf16") if f in flags] or ["none"]
    return (
        f"{fields.get('Model name', '?').strip()}, bf16: {'/'.join(bf16)}, "
        f"{fields.get('CPU(s)', '?').strip()} cores, torch {torch.__version__}"
    )


def llama_cpp_run(path: Path, prompt: list[int], tokens: int, text: list[int]) -> dict:
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=1024, logits_all=True, verbose=False, n_threads=None)
    start = time.perf_counter()
    out = []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, reset=True):
        out.append(int(token))
        if len(out) == tokens:
            break
    speed = tokens / (time.perf_counter() - start)
    llm.reset()
    llm.eval(text)
    logits = np.asarray(llm.scores[: len(text) - 1], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = -logprobs[np.arange(len(text) - 1), text[1:]].mean()
    return {"tokens": out, "tokens_per_s": speed, "nll": float(nll)}


def lmforge_run(path: Path, prompt: list[int], tokens: int, text: list[int]) -> dict:
    from lmforge import load
    from lmforge.inference.generate import SamplingConfig

    quantized = load(path, device="cpu", quantize="auto")
    config = SamplingConfig(max_new_tokens=tokens, temperature=0.0)
    start = time.perf_counter()
    (out,) = quantized.generate_ids([prompt], config)
    speed = len(out) / (time.perf_counter() - start)
    exact = load(path, device="cpu")  # dequantized fp32: the file's weights exactly
    with torch.no_grad():
        logits = exact.model(torch.tensor([text[:-1]]))[0].double()
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(text[1:])).item()
    return {"tokens": out, "tokens_per_s": speed, "nll": nll}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dtypes", nargs="+", default=["f16", "q8_0", "q4_0", "q4_1"])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument(
        "--wikitext",
        default=str(Path(__file__).resolve().parents[2] / "shared/data/wikitext-2/test.txt"),
    )
    parser.add_argument("--append", action="store_true")
    args = parser.parse_args()

    from lmforge import load
    from lmforge.interop.gguf_export import export_gguf

    base = load(args.checkpoint, device="cpu")
    prompt = base.encode_prompt(PROMPT)
    text = base.start_ids() + base.tokenizer.encode(Path(args.wikitext).read_text()[:20000])[:511]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes:
            path = export_gguf(args.checkpoint, Path(tmp) / f"model-{dtype}.gguf", dtype=dtype)
            theirs = llama_cpp_run(path, prompt, args.tokens, text)
            ours = lmforge_run(path, prompt, args.tokens, text)
            agree = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(theirs["tokens"], ours["tokens"], strict=False))
                    if a != b
                ),
                min(len(theirs["tokens"]), len(ours["tokens"])),
            )
            rows.append(
                f"| {dtype} | {path.stat().st_size / 2**20:.1f} | {agree}/{args.tokens} | "
                f"{theirs['tokens_per_s']:.1f} | {ours['tokens_per_s']:.1f} | "
                f"{theirs['nll']:.4f} | {ours['nll']:.4f} |"
            )
            print(rows[-1], flush=True)
    table = (
        f"### GGUF exports in llama.cpp ({Path(args.checkpoint).name}; {machine()})\n\n"
        f"Greedy decode of {args.tokens} tokens; NLL: mean per token over {len(text) - 1} "
        "WikiText-2 test tokens (`benchmarks/gguf_llamacpp.py`).\n\n"
        "| type | MiB | same greedy tokens | llama.cpp tok/s | lmforge tok/s | "
        "llama.cpp NLL | lmforge NLL (dequantized) |\n|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
    )
    print(table)
    if args.append:
        append_to_benchmarks(table)
    if any(math.isnan(float(r.split("|")[6])) for r in rows):
        sys.exit("llama.cpp returned NaN log-likelihoods")


if __name__ == "__main__":
    main()
