"""The HTTP routes: /health, /v1/models, /v1/completions and /v1/chat/completions."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from lmforge.errors import LmforgeError
from lmforge.serve.chat_page import add_chat_page
from lmforge.serve.choices import best_rows, chat_choices, chat_logprobs, make_rows
from lmforge.serve.engine import Engine, QueueFull
from lmforge.serve.gate import Gate, ServerState
from lmforge.serve.parsing import read_json, validate
from lmforge.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingRequest,
    check_lengths,
    error_body,
)
from lmforge.serve.responses import (
    Collector,
    completion_choice,
    completion_logprobs,
    envelope,
    new_id,
    sse,
    usage,
)
from lmforge.serve.tokenizer_routes import add_tokenizer_routes, start_marker
from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.chat import encode_chat

RequestModel = TypeVar("RequestModel", bound=SamplingRequest)


@dataclass
class ServeSettings:
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 4 * 2**20
    max_tokens_cap: int = 4096
    """The most tokens one request (each of its prompts) may ask to generate."""
    template: str | None = None


def create_app(engine: Engine, settings: ServeSettings, state: ServerState | None = None) -> Gate:
    """The ASGI app: the routes behind the gate (drain, API key, body limit)."""
    state = state or ServerState()
    app = FastAPI(title="lmforge", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    add_error_handlers(app)
    add_tokenizer_routes(app, engine, settings.template)
    add_chat_page(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "in_flight": state.in_flight, "largest_batch": engine.largest_batch}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": settings.model_name, "object": "model", "created": created}
        return {"object": "list", "data": [card | {"owned_by": "lmforge"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request, CompletionRequest, settings)
        check_logit_bias(engine, body)
        max_tokens = body.max_tokens or 16
        texts, prompts = [], []
        for prompt in body.prompts() or [""]:
            ids = encode_completion_prompt(engine, prompt)
            check_lengths(ids, max_tokens, engine.context_length, settings.max_tokens_cap, "prompt")
            texts.append(prompt if isinstance(prompt, str) else engine.tokenizer.decode(ids))
            prompts.append(ids)
        logprobs = body.logprobs is not None
        k = body.candidates()
        # best_of ranks candidates by their logprobs, so they are computed even when not asked.
        top = body.logprobs if logprobs else (0 if k > body.n else None)
        collector = start_rows(engine, body, prompts, k, max_tokens, top, body.echo and logprobs)
        request_id = new_id("cmpl")
        if body.stream:
            chunks = stream_completion(collector, body, request_id, engine.tokenizer, texts)
            return StreamingResponse(guard(chunks, collector), media_type="text/event-stream")
        results = await wait_for(collector)
        choices = [
            completion_choice(
                engine.tokenizer, index, results[row], texts[row // k], body.echo, logprobs
            )
            for index, row in enumerate(best_rows(results, len(prompts), k, body.n))
        ]
        cached = sum(r.cached_tokens for r in results[::k])
        tokens = usage(sum(map(len, prompts)), sum(r.completion_tokens for r in results), cached)
        return envelope("text_completion", request_id, body.model, choices, usage=tokens)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse(request, ChatCompletionRequest, settings)
        check_logit_bias(engine, body)
        messages = [message.as_dict() for message in body.messages]
        try:
            ids = encode_chat(engine.tokenizer, messages, settings.template)
        except LmforgeError as error:
            raise APIError(400, str(error), "messages") from None
        cap = settings.max_tokens_cap
        max_tokens = body.token_limit() or max(min(cap, engine.context_length - len(ids)), 1)
        limit = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        check_lengths(ids, max_tokens, engine.context_length, cap, "messages", limit)
        top = (body.top_logprobs or 0) if body.logprobs else None
        collector = start_rows(engine, body, [ids], body.n, max_tokens, top, False)
        request_id = new_id("chatcmpl")
        if body.stream:
            chunks = stream_chat(collector, body, request_id, len(ids), engine.tokenizer)
            return StreamingResponse(guard(chunks, collector), media_type="text/event-stream")
        results = await wait_for(collector)
        choices = chat_choices(engine.tokenizer, results, bool(body.logprobs))
        completion_tokens = sum(r.completion_tokens for r in results)
        tokens = usage(len(ids), completion_tokens, results[0].cached_tokens)
        return envelope("chat.completion", request_id, body.model, choices, usage=tokens)

    return Gate(app, state, settings.api_key, settings.max_body_bytes)


async def parse(
    request: Request, model: type[RequestModel], settings: ServeSettings
) -> RequestModel:
    """The body as `model`, whatever the content type says (curl -d sends a form type);
    400 for bad JSON or a bad field, 404 for a model this server does not serve."""
    body = validate(read_json(await request.body()), model)
    body.cross_checks()
    check_model(body, settings)
    return body


def check_model(body: SamplingRequest, settings: ServeSettings) -> None:
    if body.model != settings.model_name:
        message = (
            f"the model '{body.model}' does not exist; this server serves '{settings.model_name}'"
        )
        raise APIError(404, message, "model", "model_not_found")


def encode_completion_prompt(engine: Engine, prompt: str | list[int]) -> list[int]:
    """A text prompt gets the model's start marker, as `lmforge sample` encodes it (the tests
    check the two agree); token ids are used as they are (lm-eval sends its own tokenization)."""
    if isinstance(prompt, str):
        return start_marker(engine.tokenizer) + engine.tokenizer.encode(prompt) if prompt else []
    vocab = engine.model.config.vocab_size
    if any(not 0 <= token < vocab for token in prompt):
        raise APIError(400, f"prompt token ids must be in [0, {vocab})", "prompt")
    return prompt


def check_logit_bias(engine: Engine, body: SamplingRequest) -> None:
    vocab = engine.model.config.vocab_size
    for token in body.token_bias() or {}:
        if token >= vocab:
            raise APIError(
                400, f"logit_bias: token id {token} is not in [0, {vocab})", "logit_bias"
            )


def start_rows(
    engine: Engine,
    body: SamplingRequest,
    prompts: list[list[int]],
    candidates: int,
    max_tokens: int,
    top: int | None,
    echo_logprobs: bool,
) -> Collector:
    """Submit `candidates` rows per prompt; top: alternatives per token (None: no logprobs)."""
    collector = Collector(len(prompts) * candidates)
    rows = make_rows(body, prompts, candidates, max_tokens, collector.emit, top, echo_logprobs)
    collector.rows = rows
    try:
        engine.submit(rows)
    except QueueFull:
        message = (
            f"the server is busy: more than {engine.settings.max_queue} prompts are waiting "
            "(--max_queue); retry after a moment"
        )
        raise APIError(429, message, None, "queue_full", type="rate_limit_error") from None
    return collector


async def wait_for(collector: Collector):
    try:
        return await collector.wait()
    finally:  # the client left (or the request failed): free the batch slots
        collector.cancel()


async def guard(chunks: AsyncIterator[str], collector: Collector) -> AsyncIterator[str]:
    """Stop the rows when the stream ends early (client gone); report a failure in-stream."""
    try:
        async for chunk in chunks:
            yield chunk
    except APIError as error:
        yield sse(error.body())
    finally:
        collector.cancel()


async def stream_completion(
    collector: Collector,
    body: CompletionRequest,
    request_id: str,
    tokenizer: Tokenizer,
    texts: list[str],
):
    completion_tokens = cached = 0
    # logprobs' text_offset counts from the prompt's start, as without streaming.
    offsets = {i: len(texts[i // body.n]) for i in range(len(collector.rows))}
    async for event in collector.events():
        kind, index = event[0], event[1]
        text = event[2] if kind == "text" else ""
        finish = event[2] if kind == "done" else None
        if kind == "done":
            completion_tokens += event[3]
            cached += event[5] if index % body.n == 0 else 0  # once per prompt
        logprobs = None
        if kind == "text" and body.logprobs is not None and event[3]:
            logprobs = completion_logprobs(tokenizer, event[3], offsets[index])
            offsets[index] = logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
        if text or finish or logprobs:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
            yield sse(envelope("text_completion", request_id, body.model, [choice]))
    if body.include_usage():
        prompt_tokens = sum(len(row.prompt_ids) for row in collector.rows[:: body.n])
        tokens = usage(prompt_tokens, completion_tokens, cached)
        yield sse(envelope("text_completion", request_id, body.model, [], usage=tokens))
    yield sse("[DONE]")


async def stream_chat(
    collector: Collector,
    body: ChatCompletionRequest,
    request_id: str,
    prompt_tokens: int,
    tokenizer: Tokenizer,
):
    def chunk(index: int, delta: dict, finish: str | None, logprobs=None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return sse(envelope("chat.completion.chunk", request_id, body.model, [choice]))

    for index in range(body.n):
        yield chunk(index, {"role": "assistant", "content": ""}, None)
    completion_tokens = cached = 0
    async for event in collector.events():
        index = event[1]
        logprobs = chat_logprobs(tokenizer, event[3]) if event[0] == "text" and event[3] else None
        if event[0] == "text" and (event[2] or logprobs):
            yield chunk(index, {"content": event[2]}, None, logprobs)
        elif event[0] == "done":
            completion_tokens += event[3]
            cached = event[5] if index == 0 else cached
            yield chunk(index, {}, event[2])
    if body.include_usage():
        tokens = usage(prompt_tokens, completion_tokens, cached)
        yield sse(envelope("chat.completion.chunk", request_id, body.model, [], usage=tokens))
    yield sse("[DONE]")


def add_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape; none takes the server down."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        body = error_body(str(error.detail), "invalid_request_error", None, None)
        return JSONResponse(body, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def crash(request: Request, error: Exception) -> JSONResponse:
        body = error_body(f"internal error: {type(error).__name__}: {error}", "server_error")
        return JSONResponse(body, status_code=500)
