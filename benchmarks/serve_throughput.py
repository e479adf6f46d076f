"""`lmforge serve` throughput and latency on SmolLM2-135M-Instruct, against `sample` run sequentially.

    .venv/bin/python benchmarks/serve_throughput.py [--append] [--gguf PATH] [--requests 16]
        [--max_tokens 32]

The Q4_1 GGUF ($LMFORGE_SMOLLM2_GGUF or ~/.cache/lmforge/; `pytest tests/interop/test_gguf.py`
fetches it) is converted with `lmforge convert`. Then:
  - `sample`, sequential: the same requests one after another through `generate` on the model
    as `lmforge sample` prepares it (same weights and decode settings, model loaded once);
  - `serve` at 1, 4 and 16 concurrent clients: `lmforge serve` in a subprocess, each client
    sending its share of the same requests back to back with the `openai` client.
Every request is greedy, `--max_tokens` new tokens at most (end-of-turn stops a row early; the
tokens/s count what was generated). tokens/s = completion tokens of all requests / wall time;
latency = one request's wall time, send to last byte. Prints a table; --append adds it to
BENCHMARKS.md.

Both sides run with OMP_NUM_THREADS (default 1; set it to override): on a CPU shared with other
busy processes, 2 OpenMP threads that spin-wait for each other made every decode step 10-20x
slower than 1 thread, for `sample` and `serve` alike.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads (see the docstring)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import LMFORGE, REPO, append_to_benchmarks, machine  # noqa: E402

DEFAULT = Path.home() / ".cache" / "lmforge" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TOPICS = [
    "the history of the printing press", "how bees make honey", "why the sky is blue",
    "the rules of chess", "how a steam engine works", "the water cycle",
    "the life of a lighthouse keeper", "how to bake bread", "the planets of the solar system",
    "why leaves change colour in autumn", "how a bicycle stays upright", "the first telephone",
    "what volcanoes are", "how rainbows form", "the invention of paper", "how owls hunt at night",
]  # fmt: skip
CONCURRENCY = (1, 4, 16)


def prompts(count: int) -> list[str]:
    return [f"Here is a short explanation of {TOPICS[i % len(TOPICS)]}:" for i in range(count)]


def bf16_capability() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = [name for name in ("amx_bf16", "avx512_bf16") if name in flags]
    return "/".join(found) or "none"


def summary(name: str, latencies: list[float], tokens: int, seconds: float) -> dict:
    quantiles = statistics.quantiles(latencies, n=20, method="inclusive")
    return {
        "name": name, "requests": len(latencies), "tokens": tokens, "tok_s": tokens / seconds,
        "p50": statistics.median(latencies), "p95": quantiles[18],
    }  # fmt: skip


def run_sample_sequentially(checkpoint: Path, texts: list[str], max_tokens: int) -> dict:
    """What `lmforge sample` does per prompt, one request at a time, model loaded once."""
    import torch

    from lmforge.checkpoint.directory import load_model
    from lmforge.inference.decoding import prepare_for_decoding
    from lmforge.inference.generate import SamplingConfig, generate
    from lmforge.inference.sample import encode_prompt

    model, tokenizer, directory = load_model(checkpoint, "cpu")
    model, _ = prepare_for_decoding(model, directory, "auto", "auto")
    config = SamplingConfig(
        max_new_tokens=max_tokens, temperature=0, stop_tokens=tokenizer.stop_ids
    )
    with torch.inference_mode():
        generate(model, [encode_prompt(tokenizer, texts[0])], config)  # warm-up
        latencies, tokens = [], 0
        start = time.perf_counter()
        for text in texts:
            began = time.perf_counter()
            tokens += len(generate(model, [encode_prompt(tokenizer, text)], config)[0])
            latencies.append(time.perf_counter() - began)
        seconds = time.perf_counter() - start
    return summary("`sample`, sequential", latencies, tokens, seconds)


def run_serve(url: str, texts: list[str], max_tokens: int, clients: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    lock, latencies, tokens = threading.Lock(), [], [0]

    def one(text: str) -> None:
        began = time.perf_counter()
        response = client.completions.create(
            model="smollm2", prompt=text, max_tokens=max_tokens, temperature=0
        )
        with lock:
            latencies.append(time.perf_counter() - began)
            tokens[0] += response.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, texts))
    seconds = time.perf_counter() - start
    return summary(f"`serve`, {clients} concurrent clients", latencies, tokens[0], seconds)


def start_server(checkpoint: Path, port: int) -> subprocess.Popen:
    import httpx

    command = [*LMFORGE, "serve", "--checkpoint", str(checkpoint), "--port", str(port)]
    command += ["--model_name", "smollm2", "--log_level", "warning", "--device", "cpu"]
    process = subprocess.Popen(command, cwd=REPO)
    for _ in range(1200):
        if process.poll() is not None:
            sys.exit("lmforge serve exited before answering")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    sys.exit("lmforge serve did not come up")


def serve_rows(checkpoint: Path, texts: list[str], max_tokens: int) -> list[dict]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = start_server(checkpoint, port)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        run_serve(url, texts[:2], max_tokens, 2)  # warm-up
        return [run_serve(url, texts, max_tokens, clients) for clients in CONCURRENCY]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)


def table(rows: list[dict], requests: int, max_tokens: int) -> str:
    lines = [
        f"### Serving throughput: SmolLM2-135M-Instruct (Q4_1 GGUF -> int4 + int8 head), "
        f"{requests} greedy requests of <= {max_tokens} new tokens",
        "",
        f"Machine: {machine()}; {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} "
        f"at the end: shared with other jobs); bf16: {bf16_capability()}. "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}. Made by "
        "`benchmarks/serve_throughput.py`.",
        "",
        "| run | requests | completion tokens | tokens/s | p50 latency (s) | p95 latency (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['requests']} | {row['tokens']} | {row['tok_s']:.1f} | "
            f"{row['p50']:.2f} | {row['p95']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=DEFAULT)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--append", action="store_true")
    args = parser.parse_args()
    if not args.gguf.is_file():
        sys.exit(f"{args.gguf} not found; run pytest tests/interop/test_gguf.py to fetch it")
    texts = prompts(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "smollm2"
        command = [*LMFORGE, "convert", str(args.gguf), "--out", str(checkpoint)]
        subprocess.run(command, check=True, cwd=REPO, capture_output=True)
        rows = [run_sample_sequentially(checkpoint, texts, args.max_tokens)]
        rows += serve_rows(checkpoint, texts, args.max_tokens)
    text = table(rows, args.requests, args.max_tokens)
    print(text)
    if args.append:
        append_to_benchmarks(text)


if __name__ == "__main__":
    main()
