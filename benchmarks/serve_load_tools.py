"""Helpers for serve_load.py: the machine's description, starting and stopping a server in a
subprocess, and one streamed OpenAI request timed from its SSE chunks."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import httpx

MODEL = "bench"  # the model id both servers are started with, so one payload fits both


def machine_info() -> dict:
    """What every result needs next to it: the CPU, its bf16 units, cores, torch, the load."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    names = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line]
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    return {
        "cpu": names[0] if names else platform.processor(),
        "amx": sorted(flag for flag in flags if flag.startswith("amx")),
        "avx512_bf16": "avx512_bf16" in flags,
        "cores": os.cpu_count(),
        "torch": metadata.version("torch"),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg()[0],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerExited(RuntimeError):
    """The server process ended before it answered /v1/models."""


@contextlib.contextmanager
def running(command: list[str], env: dict, timeout: float = 300) -> Iterator[str]:
    """Start `command` (which must listen on the port it was given), wait until GET /v1/models
    answers 200, yield the /v1 base URL, and stop it with SIGTERM (SIGKILL if it lingers)."""
    port = command[command.index("--port") + 1]
    base = f"http://127.0.0.1:{port}/v1"
    # Output goes to a file, not a pipe: a pipe nobody reads blocks a chatty server.
    with tempfile.NamedTemporaryFile("w+", prefix="serve-load-", suffix=".log") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_until_up(process, base, Path(log.name), timeout)
            yield base
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_up(process: subprocess.Popen, base: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ServerExited(f"{process.args[:4]} exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.args[:4]} did not come up in {timeout:.0f} s")
        time.sleep(0.2)


def lmforge_command(checkpoint: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "lmforge", "serve", "--checkpoint", str(checkpoint),
        "--port", str(port), "--model_name", MODEL, "--device", "cpu", "--log_level", "warning",
    ]  # fmt: skip


@contextlib.contextmanager
def lmforge_server(checkpoint: Path, threads: int, settings: dict) -> Iterator[str]:
    """`lmforge serve` on a checkpoint directory or a GGUF file. A GGUF is served directly if
    this lmforge can; otherwise it is converted (once per run) and the directory served.
    `settings` receives what was run."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    settings.update(threads=threads, OMP_NUM_THREADS=threads, max_batch_size="default (16)")
    with contextlib.ExitStack() as stack:
        base = None
        if checkpoint.suffix == ".gguf":
            command = lmforge_command(checkpoint, free_port())
            with contextlib.suppress(ServerExited):
                base = stack.enter_context(running(command, env))
                settings.update(command=command, served_from="the GGUF file directly")
            if base is None:
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "converted"
                convert = [sys.executable, "-m", "lmforge", "convert", str(checkpoint)]
                subprocess.run([*convert, "--out", str(tmp)], check=True, capture_output=True)
                settings["served_from"] = f"`lmforge convert {checkpoint.name}` (a checkpoint dir)"
                checkpoint = tmp
        if base is None:
            command = lmforge_command(checkpoint, free_port())
            settings.update(command=command, served_from=settings.get("served_from", "directory"))
            base = stack.enter_context(running(command, env))
        yield base


def llama_command(python: str, gguf: Path, threads: int, port: int) -> list[str]:
    # interrupt_requests defaults to True in llama-cpp-python: a new request then cuts short
    # the stream in progress, which would hide the queueing this benchmark is there to show.
    return [
        python, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL,
        "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "4096",
        "--interrupt_requests", "False", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


INPROCESS = """
import json, sys, time
from llama_cpp import Llama
gguf, threads, tokens, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
llm = Llama(model_path=gguf, n_threads=threads, n_threads_batch=threads, n_ctx=4096, verbose=False)
llm.create_completion("Hello", max_tokens=4)  # warm-up
times = [time.perf_counter() for chunk in llm.create_completion(
    prompt, max_tokens=tokens, temperature=0, stream=True) if chunk["choices"][0]["text"]]
print(json.dumps({"decode_tok_s": (len(times) - 1) / (times[-1] - times[0]), "tokens": len(times)}))
"""


def inprocess_decode(python: str, gguf: Path, threads: int, tokens: int, prompt: str) -> dict:
    """llama_cpp.Llama in its own process: the decode speed without any server around it."""
    args = [python, "-c", INPROCESS, str(gguf), str(threads), str(tokens), prompt]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def llama_build(python: str) -> str:
    """llama-cpp-python's version and the CPU features its llama.cpp was built with."""
    probe = "import llama_cpp as l; print(l.__version__, l.llama_print_system_info().decode())"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _chunk_text(chunk: dict) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "delta" in choice:
        return (choice["delta"] or {}).get("content") or ""
    return choice.get("text") or ""


async def stream(
    client: httpx.AsyncClient,
    path: str,
    payload: dict,
    on_first: Callable[[], None] | None = None,
) -> dict:
    """POST `payload` with stream=True; time to first text, inter-token timing, usage.

    A server may put several tokens in one SSE chunk (lmforge holds text back until it is valid
    UTF-8 and clear of stop strings), so the token count is the streamed usage's when the
    server sends one, else the number of chunks with text."""
    body = {"model": MODEL, **payload, "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    arrivals: list[float] = []
    pieces: list[str] = []
    usage = None
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code}: {await response.aread()!r}")
        async for line in response.aiter_lines():
            data = line.removeprefix("data:").strip()
            if not line.startswith("data:") or data == "[DONE]":
                continue
            chunk = json.loads(data)
            usage = chunk.get("usage") or usage
            if text := _chunk_text(chunk):
                if not arrivals and on_first:
                    on_first()
                arrivals.append(time.perf_counter() - sent)
                pieces.append(text)
    return _timings(arrivals, time.perf_counter() - sent, "".join(pieces), usage)


def _timings(arrivals: list[float], total: float, text: str, usage: dict | None) -> dict:
    tokens = (usage or {}).get("completion_tokens") or len(arrivals)
    details = (usage or {}).get("prompt_tokens_details") or {}
    decode = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    return {
        "ttft_s": arrivals[0] if arrivals else None,
        "latency_s": total,
        "completion_tokens": tokens,
        "tokens_counted_from": "usage" if usage else "chunks",
        "chunks": len(arrivals),
        "prompt_tokens": (usage or {}).get("prompt_tokens"),
        "cached_tokens": details.get("cached_tokens"),
        # tokens after the first over the time after the first: decode speed, prefill excluded
        "decode_tok_s": (tokens - 1) / decode if decode > 0 else None,
        "text": text,
    }
