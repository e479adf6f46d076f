"""The ASGI layer in front of the routes: draining on shutdown, the API key, the body size limit,
and the count of requests in flight that a graceful shutdown waits for."""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass

from lmforge.serve.chat_page import PAGE_PATHS
from lmforge.serve.protocol import error_body

log = logging.getLogger("lmforge.serve")


@dataclass
class ServerState:
    draining: bool = False
    in_flight: int = 0


async def send_error(send, status: int, message: str, type: str, code: str) -> None:
    body = json.dumps(error_body(message, type, None, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Gate:
    """Wraps the app: answers 503 while draining, 401 without the key (on all but /health and
    the chat page's files), 413 for a body over `max_body_bytes` (read fully here, then replayed
    to the app)."""

    def __init__(self, app, state: ServerState, api_key: str | None, max_body_bytes: int):
        self.app, self.state = app, state
        self.api_key, self.max_body_bytes = api_key, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.state.draining:
            message = "the server is shutting down; retry against another instance"
            await send_error(send, 503, message, "server_error", "shutting_down")
            return
        if not _is_open(scope) and not self._authorized(scope):
            message = "missing or wrong API key; send the header 'Authorization: Bearer KEY'"
            await send_error(send, 401, message, "invalid_request_error", "invalid_api_key")
            return
        body = await self._read_body(receive)
        if body is None:
            message = f"the request body is larger than this server's {self.max_body_bytes} bytes"
            await send_error(send, 413, message, "invalid_request_error", "request_too_large")
            return
        self.state.in_flight += 1
        started = False

        async def tracked_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, _replay(body, receive), tracked_send)
        except Exception:
            # Starlette re-raises an error after answering it with a 500; uvicorn would then
            # close the connection (the client's next request on it is reset). Log it once here.
            log.exception("%s %s failed", scope.get("method"), scope["path"])
            if not started:
                await send_error(send, 500, "internal error", "server_error", "internal_error")
        finally:
            self.state.in_flight -= 1

    def _authorized(self, scope) -> bool:
        if self.api_key is None:
            return True
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        expected = self.api_key.encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)

    async def _read_body(self, receive) -> bytes | None:
        """The whole body, or None once it passes the limit (also when Content-Length says so)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _is_open(scope) -> bool:
    """/health (for load balancers), and GET of the chat page's files: they hold no data, and
    the user types the key into the page once it has loaded."""
    path = scope["path"]
    return path == "/health" or (path in PAGE_PATHS and scope["method"] == "GET")


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as the server's would

    return replay
