"""Over HTTP: prefix-cache hits in `usage`, Prometheus /metrics, --max_queue (429) and
--request_timeout (504), and bad engine flags refused in one line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import httpx
import pytest
from serve_fixtures import (
    Server,
    reference,  # noqa: F401 (fixture)
    serve_checkpoint,  # noqa: F401 (fixture)
)

from lmforge.errors import ConfigError
from lmforge.inference.generate import SamplingConfig, generate
from lmforge.serve.options import ServeCommand
from lmforge.serve.server import check_command, engine_settings

SYSTEM = "You are a terse assistant. Answer in one word. " * 8


@pytest.fixture(scope="module")
def server(serve_checkpoint):  # noqa: F811
    # one row at a time and one waiting: the third concurrent request is over the limit
    running = Server(serve_checkpoint, "--max_batch_size", "1", "--max_queue", "1")
    yield running
    running.terminate()
    running.stop()


def chat(client: httpx.Client, turns: list[dict], max_tokens: int = 4) -> dict:
    body = {"model": "tiny-chat", "messages": turns, "max_tokens": max_tokens, "temperature": 0}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_second_turn_reuses_the_first_turns_prefix_and_metrics_count_it(server):
    with httpx.Client(base_url=server.base, timeout=60) as client:
        turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}]
        first = chat(client, turns)
        reply = first["choices"][0]["message"]["content"]
        turns += [{"role": "assistant", "content": reply}, {"role": "user", "content": "more"}]
        second = chat(client, turns)
        metrics = client.get("/metrics").text
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= first["usage"]["prompt_tokens"] - 16 and cached % 16 == 0
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    assert values["lmforge_prefix_cache_hit_tokens_total"] >= cached
    assert values["lmforge_generation_tokens_total"] >= 2
    assert values["lmforge_time_to_first_token_seconds_count"] >= 2
    assert 0 < values["lmforge_prefix_cache_hit_rate"] < 1
    assert "lmforge_queue_depth" in values and "lmforge_running_rows" in values


def endless_prompt(model, tokenizer) -> str:
    """A prompt whose greedy continuation runs 500 tokens without a stop token (long enough that
    the request is still running when the third one arrives, even on a busy host)."""
    config = SamplingConfig(max_new_tokens=500, temperature=0, stop_tokens=tokenizer.stop_ids)
    for prompt in ("once", "the", "a b", "def", "hello there", "x"):
        if len(generate(model, [tokenizer.encode(prompt)], config)[0]) == 500:
            return prompt
    raise AssertionError("no prompt of this tiny model runs 500 tokens")


def test_requests_beyond_the_queue_get_429_and_the_connection_stays_usable(server, reference):  # noqa: F811
    prompt = endless_prompt(*reference)
    body = {"model": "tiny-chat", "prompt": prompt, "max_tokens": 500, "stream": True,
            "temperature": 0}  # fmt: skip
    with httpx.Client(base_url=server.base, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json=body) as running:
            lines = running.iter_lines()
            next(line for line in lines if line.startswith("data:"))  # it is decoding
            with (
                httpx.Client(base_url=server.base, timeout=60) as second,
                second.stream("POST", "/v1/completions", json=body) as waiting,
            ):
                refused = client_post(server)
                assert refused.status_code == 429, refused.text
                error = refused.json()["error"]
                assert error["code"] == "queue_full" and "--max_queue" in error["message"]
                waiting.close()
            running.close()
        assert client.get("/health").status_code == 200


def client_post(server) -> httpx.Response:
    with httpx.Client(base_url=server.base, timeout=60) as client:
        body = {"model": "tiny-chat", "prompt": "hi", "max_tokens": 2}
        return client.post("/v1/completions", content=json.dumps(body))


def test_request_timeout_is_504(serve_checkpoint):  # noqa: F811
    running = Server(serve_checkpoint, "--request_timeout", "0.000001")
    try:
        body = {"model": "tiny-chat", "prompt": "once", "max_tokens": 50}
        response = httpx.post(f"{running.url}/completions", json=body, timeout=60)
        assert response.status_code == 504
        assert "--request_timeout" in response.json()["error"]["message"]
    finally:
        running.terminate()
        running.stop()


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(max_step_tokens=0), "--max_step_tokens must be at least 1"),
        (dict(max_step_tokens=16), "leaves no room for prompts beside --max_batch_size 16"),
        (dict(threads=-1), "--threads must be 0"),
        (dict(max_queue=-1), "--max_queue must be 0 or more"),
        (dict(request_timeout=float("nan")), "--request_timeout must be"),
        (dict(request_timeout=float("inf")), "--request_timeout must be"),
        (dict(request_timeout=-1.0), "--request_timeout must be"),
        (dict(kv_cache_memory="lots"), "--kv_cache_memory='lots' is not a memory size"),
        (dict(kv_cache_memory="-1GiB"), "is not a memory size"),
    ],
)
def test_bad_engine_flags_are_refused(flags, message):
    command = ServeCommand(checkpoint="unused", **flags)
    with pytest.raises(ConfigError, match=message):
        check_command(command)
        engine_settings(command)


def test_engine_flags_reach_the_engine():
    command = ServeCommand(checkpoint="x", kv_cache_memory="512MiB", request_timeout=0)
    settings = engine_settings(command)
    assert settings["kv_cache_memory"] == 512 * 2**20 and settings["request_timeout"] is None
    assert (
        engine_settings(ServeCommand(checkpoint="x", kv_cache_memory="0"))["kv_cache_memory"] == 0
    )


def test_a_port_in_use_is_a_one_line_error(serve_checkpoint):  # noqa: F811
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "lmforge", "serve", "--checkpoint", str(serve_checkpoint)]
        result = subprocess.run(
            [*command, "--port", str(port), "--device", "cpu"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode != 0
    assert "pick another --port" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
