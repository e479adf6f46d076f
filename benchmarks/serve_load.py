"""Serving under load, side by side: `lmforge serve` against llama.cpp's server (llama-cpp-python)
on the same GGUF, through the OpenAI API with streaming.

    python benchmarks/serve_load.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        [--checkpoint DIR_OR_GGUF] [--llama_python /path/to/llama-venv/bin/python] \
        [--scenarios concurrency,ttft_under_load,multiturn,decode] [--threads 2] [--tiny] \
        [--json report.json]

Each server runs alone in a subprocess on a free 127.0.0.1 port (never both at once). lmforge
serves --checkpoint (a directory, or a GGUF: served directly if this lmforge can, else
converted first; default --gguf). llama.cpp runs only when --llama_python names a Python with
llama-cpp-python[server]. Scenarios (greedy, streamed; times from the SSE chunks):
  concurrency      1 client, then N concurrent clients, 64-token completions of mixed prompts:
                   aggregate completion tokens/s, latency, and the N/1 ratio
  ttft_under_load  one 1,024-token generation, and meanwhile 20 short requests one after
                   another: their time to first token, p50/p99
  multiturn        a 10-turn chat with a ~500-token system prompt: time to first token per
                   turn (prefill), and cached_tokens where the server reports it
  decode           two 256-token generations: the better tokens/s after the first token
                   (and llama_cpp.Llama in-process with --llama_python)
Tokens are what the servers actually produced (their usage, else the chunks with text).
--tiny shrinks every scenario to seconds (the CI smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load_report import markdown, summary_rows  # noqa: E402
from serve_load_tools import (  # noqa: E402
    MODEL,
    free_port,
    inprocess_decode,
    llama_build,
    llama_command,
    lmforge_server,
    machine_info,
    percentile,
    running,
    stream,
)

DEFAULT_GGUF = Path.home() / ".cache" / "lmforge" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SCENARIOS = ("concurrency", "ttft_under_load", "multiturn", "decode")
TOPICS = [
    "a lighthouse keeper", "the printing press", "how bees make honey", "a steam engine",
    "the water cycle", "a journey across the desert", "the rules of chess", "baking bread",
]  # fmt: skip
SENTENCES = [
    "The assistant answers in plain English and explains each step of its reasoning.",
    "It prefers concrete examples, short paragraphs and numbers with their units.",
    "When a question is ambiguous it states the reading it chose before answering.",
    "It never invents citations, and says so when it does not know something.",
    "Lists are used for steps that must happen in order, prose for everything else.",
    "Code is shown in fenced blocks with the language named after the opening fence.",
    "The tone is friendly and direct, without filler or repeated apologies.",
    "Measurements are given in metric units, with imperial ones in brackets when useful.",
]
USER_TURNS = [
    "Tell me about the history of bread.", "How is sourdough different?",
    "What flour should I buy?", "How long should the dough rise?", "Why did my loaf collapse?",
    "Can I bake it in a pot?", "What temperature is best?", "How do I store it?",
    "Can I freeze the dough?", "Summarise what we discussed.",
]  # fmt: skip


@dataclass
class Sizes:
    clients: int = 16
    single_requests: int = 8  # the 1-client run: requests sent one after another
    rounds: int = 2  # requests per client in the N-client run
    max_tokens: int = 64
    medium_sentences: int = 12  # a medium prompt: about 200 tokens
    long_tokens: int = 1024
    short_requests: int = 20
    short_tokens: int = 8
    turns: int = 10
    system_sentences: int = 34  # about 500 tokens of system prompt
    reply_tokens: int = 48
    decode_tokens: int = 256
    decode_runs: int = 2


TINY = Sizes(
    clients=4,
    single_requests=2,
    rounds=1,
    max_tokens=8,
    medium_sentences=2,
    long_tokens=24,
    short_requests=3,
    short_tokens=4,
    turns=3,
    system_sentences=2,
    reply_tokens=8,
    decode_tokens=16,
    decode_runs=1,
)


def prompt(i: int, size: Sizes) -> str:
    """Even i: a short story opening (~15 tokens); odd i: notes of ~medium_sentences sentences.
    Both ask for a continuation, so they rarely end before max_tokens."""
    topic = TOPICS[i % len(TOPICS)]
    if i % 2 == 0:
        return f"Write a long story about {topic}. Once upon a time,"
    notes = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(size.medium_sentences))
    return f"Notes on {topic}. {notes} Now the long explanation of {topic} begins:"


def completion(i: int, max_tokens: int, size: Sizes) -> dict:
    return {"prompt": prompt(i, size), "max_tokens": max_tokens, "temperature": 0}


async def load(base: str, clients: int, requests: int, size: Sizes) -> dict:
    """`clients` concurrent clients share `requests` completions; each sends its next when its
    last one has ended."""
    pending = list(range(requests))
    results = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while pending:
            i = pending.pop(0)
            results.append(
                await stream(client, "/completions", completion(i, size.max_tokens, size))
            )

    async with httpx.AsyncClient(base_url=base, timeout=3600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    tokens = sum(r["completion_tokens"] for r in results)
    latencies = [r["latency_s"] for r in results]
    return {
        "clients": clients, "requests": requests, "completion_tokens": tokens,
        "mean_tokens_per_request": tokens / requests, "wall_s": wall, "tok_s": tokens / wall,
        "latency_p50_s": percentile(latencies, 50), "latency_max_s": max(latencies),
        "ttft_p50_s": percentile([r["ttft_s"] for r in results if r["ttft_s"]], 50),
    }  # fmt: skip


async def concurrency(base: str, size: Sizes) -> dict:
    one = await load(base, 1, size.single_requests, size)
    many = await load(base, size.clients, size.clients * size.rounds, size)
    return {"one_client": one, "many_clients": many, "ratio": many["tok_s"] / one["tok_s"]}


async def ttft_under_load(base: str, size: Sizes) -> dict:
    """Short requests while a long generation streams: do they wait for it to end?"""
    started = asyncio.Event()
    async with httpx.AsyncClient(base_url=base, timeout=3600) as client:
        payload = completion(0, size.long_tokens, size)
        long = asyncio.create_task(stream(client, "/completions", payload, started.set))
        await started.wait()
        began = time.perf_counter()
        shorts = []
        for i in range(size.short_requests):
            short = completion(2 * i, size.short_tokens, size)  # even i: a short prompt
            shorts.append(await stream(client, "/completions", short))
        overlapped = not long.done()  # the long one was still running when the shorts were done
        shorts_wall = time.perf_counter() - began
        long_result = await long
    ttfts = [r["ttft_s"] for r in shorts]
    return {
        "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99),
        "ttft_s": ttfts, "shorts_wall_s": shorts_wall, "long_still_running_after": overlapped,
        "long_tokens": long_result["completion_tokens"], "long_latency_s": long_result["latency_s"],
    }  # fmt: skip


async def multiturn(base: str, size: Sizes) -> dict:
    system = " ".join(SENTENCES[k % len(SENTENCES)] for k in range(size.system_sentences))
    messages = [{"role": "system", "content": system}]
    turns = []
    async with httpx.AsyncClient(base_url=base, timeout=3600) as client:
        for turn in range(size.turns):
            messages.append({"role": "user", "content": USER_TURNS[turn % len(USER_TURNS)]})
            payload = {"messages": messages, "max_tokens": size.reply_tokens, "temperature": 0}
            result = await stream(client, "/chat/completions", payload)
            messages.append({"role": "assistant", "content": result["text"]})
            keep = ("ttft_s", "prompt_tokens", "cached_tokens", "completion_tokens")
            turns.append({"turn": turn + 1, **{key: result[key] for key in keep}})
        # the same conversation once more, not streamed: some servers report usage only here
        probe = {"model": MODEL, "messages": messages, "max_tokens": 1, "temperature": 0}
        usage = (await client.post("/chat/completions", json=probe)).json().get("usage")
    first, last = turns[0]["ttft_s"], turns[-1]["ttft_s"]
    return {"turns": turns, "last_over_first_ttft": last / first, "probe_usage": usage}


async def decode(base: str, size: Sizes) -> dict:
    runs = []
    async with httpx.AsyncClient(base_url=base, timeout=3600) as client:
        for _ in range(size.decode_runs):
            result = await stream(client, "/completions", completion(0, size.decode_tokens, size))
            runs.append(
                {key: result[key] for key in ("decode_tok_s", "completion_tokens", "ttft_s")}
            )
    return {"decode_tok_s": max(r["decode_tok_s"] or 0 for r in runs), "runs": runs}


async def run_scenarios(base: str, scenarios: list[str], size: Sizes) -> dict:
    functions = {f.__name__: f for f in (concurrency, ttft_under_load, multiturn, decode)}
    async with httpx.AsyncClient(base_url=base, timeout=3600) as client:  # warm-up
        await stream(client, "/completions", completion(1, 4, size))
    return {name: await functions[name](base, size) for name in scenarios}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    parser.add_argument("--checkpoint", type=Path, help="for lmforge (default: --gguf)")
    parser.add_argument("--llama_python", help="a Python with llama-cpp-python[server]")
    parser.add_argument("--skip_lmforge", action="store_true")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--threads", type=int, default=2, help="compute threads, both servers")
    parser.add_argument("--tiny", action="store_true", help="every scenario in seconds")
    parser.add_argument("--json", type=Path, default=Path("serve_load.json"))
    args = parser.parse_args(argv)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    size = TINY if args.tiny else Sizes()
    report = {"machine": machine_info(), "sizes": asdict(size), "scenarios": args.scenarios}
    report["servers"], report["results"] = {}, {}
    if not args.skip_lmforge:
        settings = report["servers"]["lmforge"] = {"load_average_before": os.getloadavg()[0]}
        with lmforge_server(args.checkpoint or args.gguf, args.threads, settings) as base:
            report["results"]["lmforge"] = asyncio.run(run_scenarios(base, args.scenarios, size))
        settings["load_average_after"] = os.getloadavg()[0]
    if args.llama_python:
        command = llama_command(args.llama_python, args.gguf, args.threads, free_port())
        settings = report["servers"]["llama.cpp"] = {"command": command, "threads": args.threads}
        settings["build"] = llama_build(args.llama_python)
        settings["defaults"] = (
            "n_batch 512, n_ubatch 512, no --cache; one Llama (one sequence) behind a global lock: "
            "requests are served one at a time, the next reusing the KV of the previous prompt's "
            "longest common prefix"
        )
        settings["load_average_before"] = os.getloadavg()[0]
        with running(command, dict(os.environ)) as base:
            report["results"]["llama.cpp"] = asyncio.run(run_scenarios(base, args.scenarios, size))
        settings["load_average_after"] = os.getloadavg()[0]
        if "decode" in args.scenarios:
            tokens, text = size.decode_tokens, prompt(0, size)
            result = inprocess_decode(args.llama_python, args.gguf, args.threads, tokens, text)
            report["results"]["llama_cpp.Llama in-process"] = {"decode": result}
    report["machine"]["load_average_at_end"] = os.getloadavg()[0]
    report["summary"] = summary_rows(report)
    args.json.write_text(json.dumps(report, indent=1))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
