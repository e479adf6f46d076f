"""A 4xx or 5xx never breaks the keep-alive connection: over a real socket (`lmforge serve` in a
subprocess), one HTTP/1.1 client sends each hostile request and then a good one, and the good one
is answered on the same connection (the client's local port stays the same); the server prints
no traceback."""

from __future__ import annotations

import httpx
import pytest
from serve_fixtures import API_KEY, Server, serve_checkpoint  # noqa: F401 (fixture)

GOOD = b'{"model": "tiny-chat", "prompt": "the fox", "max_tokens": 2}'
HOSTILE = {
    "100,000 nested arrays": b'{"model": "tiny-chat", "prompt": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}",
    "100,000 nested objects": b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
    "NaN": b'{"model": "tiny-chat", "prompt": "a", "temperature": NaN}',
    "1e309": b'{"model": "tiny-chat", "prompt": "a", "temperature": 1e309}',
    "an integer of 5,000 digits": b'{"model": "tiny-chat", "prompt": "a", "seed": 1'
    + b"0" * 5000
    + b"}",
    "invalid UTF-8": b'{"model": "tiny-chat", "prompt": "\xff\xfe"}',
    "truncated": b'{"model": "tiny-chat", "prompt": ',
    "wrong type": b'{"model": "tiny-chat", "prompt": "a", "max_tokens": "16"}',
    "unknown field": b'{"model": "tiny-chat", "prompt": "a", "min_p": 0.1}',
    "too large": b'{"model": "tiny-chat", "prompt": "' + b"x" * 70_000 + b'"}',
    "unknown model": b'{"model": "gpt-4", "prompt": "a"}',
}


@pytest.fixture(scope="module")
def server(serve_checkpoint):  # noqa: F811
    running = Server(serve_checkpoint, "--api_key", API_KEY, "--max_body_bytes", "65536")
    yield running
    running.terminate()
    output = running.stop()
    assert "Traceback" not in output, output
    assert running.process.returncode == 0, output


def local_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_hostile_requests_keep_the_connection(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        port = local_port(client.post("/completions", content=GOOD))
        for case, body in HOSTILE.items():
            bad = client.post("/completions", content=body)
            assert 400 <= bad.status_code < 500, (case, bad.text)
            assert set(bad.json()["error"]) == {"message", "type", "param", "code"}, case
            good = client.post("/completions", content=GOOD)
            assert good.status_code == 200, (case, good.text)
            assert local_port(bad) == local_port(good) == port, case


@pytest.mark.parametrize("answered", [True, False], ids=["after-its-500", "before-answering"])
def test_the_gate_keeps_an_app_error_from_the_server(answered, caplog):
    """Starlette answers an unhandled error with a 500 and then re-raises it, and uvicorn closes
    the connection of an app that raises after answering: the gate catches it, logs it once,
    and answers a 500 itself when nothing was sent yet."""
    import asyncio

    from lmforge.serve.gate import Gate, ServerState

    async def crashing_app(scope, receive, send) -> None:
        if answered:
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
        raise RuntimeError("boom")

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {"type": "http", "path": "/v1/completions", "method": "POST", "headers": []}
    asyncio.run(Gate(crashing_app, ServerState(), None, 1024)(scope, receive, send))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [500]  # exactly one answer
    assert "boom" in caplog.text
