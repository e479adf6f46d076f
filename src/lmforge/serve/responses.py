"""Collecting a request's row events, and writing OpenAI's response and SSE chunk shapes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from lmforge.serve.protocol import APIError
from lmforge.serve.rows import Row, TokenLogprob
from lmforge.tokenizer import Tokenizer


@dataclass
class RowResult:
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None
    cached_tokens: int = 0


class Collector:
    """Receives the engine's events for one request's rows on the event loop's thread."""

    def __init__(self, rows: int):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple] = asyncio.Queue()
        self.results = [RowResult() for _ in range(rows)]
        self.rows: list[Row] = []

    def emit(self, event: tuple) -> None:
        """Called on the engine thread."""
        # RuntimeError: the loop is closed (the server is gone), so nobody waits for the event.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def cancel(self) -> None:
        for row in self.rows:
            row.cancelled = True

    async def events(self) -> AsyncIterator[tuple]:
        """Each event, applied to `results` first, until every row is done."""
        remaining = len(self.results)
        while remaining:
            event = await self.queue.get()
            kind, index = event[0], event[1]
            result = self.results[index]
            if kind == "error":
                status = event[3]
                if status == 504:
                    raise APIError(504, event[2], None, "timeout", type="server_error")
                raise APIError(status, f"decoding failed: {event[2]}", type="server_error")
            if kind == "text":
                result.text += event[2]
                result.logprobs.extend(event[3])
            else:
                (
                    result.finish_reason,
                    result.completion_tokens,
                    result.prompt_logprobs,
                    result.cached_tokens,
                ) = event[2:]
                remaining -= 1
            yield event

    async def wait(self) -> list[RowResult]:
        async for _ in self.events():
            pass
        return self.results


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage object; cached_tokens: prompt tokens the prefix cache served."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion_logprobs(tokenizer: Tokenizer, entries: list[TokenLogprob], start: int) -> dict:
    """OpenAI's legacy logprobs object; text offsets count from `start` characters."""

    def text(token_id: int) -> str:
        return tokenizer.decode([token_id], skip_special=False)

    tokens, offsets, offset = [], [], start
    for entry in entries:
        tokens.append(text(entry.token_id))
        offsets.append(offset)
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [entry.logprob for entry in entries],
        "top_logprobs": [
            None if entry.logprob is None else {text(i): value for i, value in entry.top}
            for entry in entries
        ],
        "text_offset": offsets,
    }


def completion_choice(
    tokenizer: Tokenizer,
    index: int,
    result: RowResult,
    prompt_text: str,
    echo: bool,
    logprobs: bool,
) -> dict:
    entries = (result.prompt_logprobs or []) + result.logprobs if echo else result.logprobs
    start = 0 if echo else len(prompt_text)
    return {
        "index": index,
        "text": (prompt_text if echo else "") + result.text,
        "logprobs": completion_logprobs(tokenizer, entries, start) if logprobs else None,
        "finish_reason": result.finish_reason,
    }


def envelope(kind: str, request_id: str, model: str, choices: list[dict], **extra) -> dict:
    return {
        "id": request_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"
