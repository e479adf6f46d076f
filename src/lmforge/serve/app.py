"""The HTTP routes: /health, /v1/models, /v1/completions and /v1/chat/completions."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from lmforge.errors import LmforgeError
from lmforge.serve.chat_page import add_chat_page
from lmforge.serve.engine import Engine, Row
from lmforge.serve.gate import Gate, ServerState
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
    envelope,
    new_id,
    sse,
    usage,
)
from lmforge.serve.tokenizer_routes import add_tokenizer_routes, start_marker
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

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": settings.model_name, "object": "model", "created": created}
        return {"object": "list", "data": [card | {"owned_by": "lmforge"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request, CompletionRequest, settings)
        max_tokens = body.max_tokens or 16
        texts, prompts = [], []
        for prompt in body.prompts() or [""]:
            ids = encode_completion_prompt(engine, prompt)
            check_lengths(ids, max_tokens, engine.context_length, settings.max_tokens_cap, "prompt")
            texts.append(prompt if isinstance(prompt, str) else engine.tokenizer.decode(ids))
            prompts.append(ids)
        logprobs = body.logprobs is not None
        collector = start_rows(engine, body, prompts, max_tokens, logprobs, body.echo)
        request_id = new_id("cmpl")
        if body.stream:
            chunks = stream_completion(collector, body, request_id)
            return StreamingResponse(guard(chunks, collector), media_type="text/event-stream")
        results = await wait_for(collector)
        choices = [
            completion_choice(engine.tokenizer, i, r, texts[i], body.echo, logprobs)
            for i, r in enumerate(results)
        ]
        tokens = usage(sum(map(len, prompts)), sum(r.completion_tokens for r in results))
        return envelope("text_completion", request_id, body.model, choices, usage=tokens)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse(request, ChatCompletionRequest, settings)
        if body.logprobs:
            raise APIError(
                400, "logprobs are not supported for chat; use /v1/completions", "logprobs"
            )
        messages = [message.as_dict() for message in body.messages]
        try:
            ids = encode_chat(engine.tokenizer, messages, settings.template)
        except LmforgeError as error:
            raise APIError(400, str(error), "messages") from None
        cap = settings.max_tokens_cap
        max_tokens = body.token_limit() or max(min(cap, engine.context_length - len(ids)), 1)
        check_lengths(ids, max_tokens, engine.context_length, cap, "messages")
        collector = start_rows(engine, body, [ids], max_tokens, False, False)
        request_id = new_id("chatcmpl")
        if body.stream:
            chunks = stream_chat(collector, body, request_id, len(ids))
            return StreamingResponse(guard(chunks, collector), media_type="text/event-stream")
        (result,) = await wait_for(collector)
        message = {"role": "assistant", "content": result.text}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": result.finish_reason,
        }
        tokens = usage(len(ids), result.completion_tokens)
        return envelope("chat.completion", request_id, body.model, [choice], usage=tokens)

    return Gate(app, state, settings.api_key, settings.max_body_bytes)


async def parse(
    request: Request, model: type[RequestModel], settings: ServeSettings
) -> RequestModel:
    """The body as `model`, whatever the content type says (curl -d sends a form type);
    400 for bad JSON or a bad field, 404 for a model this server does not serve."""
    try:
        data = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "the request body is not valid JSON; send a JSON object") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        body = model.model_validate(data)
    except ValidationError as error:
        raise invalid_field(error.errors()[0]) from None
    check_model(body, settings)
    return body


def invalid_field(first: dict) -> APIError:
    location = [str(part) for part in first.get("loc", ())]
    field = ".".join(location)
    if first.get("type") == "missing":
        return APIError(400, f"'{field}' is a required field", location[0])
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return APIError(400, f"{field}: {message}", location[0] if location else None)


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


def start_rows(
    engine: Engine,
    body: SamplingRequest,
    prompts: list[list[int]],
    max_tokens: int,
    logprobs: bool,
    echo: bool,
) -> Collector:
    collector = Collector(len(prompts))
    top = getattr(body, "logprobs", None) if logprobs else None
    collector.rows = [
        Row(
            index=i,
            prompt_ids=ids,
            max_tokens=max_tokens,
            emit=collector.emit,
            temperature=body.temperature,
            top_k=body.top_k_or_none(),
            top_p=body.top_p_or_none(),
            seed=body.seed,
            stop=body.stop_strings(),
            logprobs=top,
            echo_logprobs=echo and logprobs,
        )  # fmt: skip
        for i, ids in enumerate(prompts)
    ]
    engine.submit(collector.rows)
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


async def stream_completion(collector: Collector, body: CompletionRequest, request_id: str):
    completion_tokens = 0
    async for event in collector.events():
        kind, index = event[0], event[1]
        text = event[2] if kind == "text" else ""
        finish = event[2] if kind == "done" else None
        if kind == "done":
            completion_tokens += event[3]
        if text or finish:
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
            yield sse(envelope("text_completion", request_id, body.model, [choice]))
    if body.include_usage():
        prompt_tokens = sum(len(row.prompt_ids) for row in collector.rows)
        tokens = usage(prompt_tokens, completion_tokens)
        yield sse(envelope("text_completion", request_id, body.model, [], usage=tokens))
    yield sse("[DONE]")


async def stream_chat(
    collector: Collector, body: ChatCompletionRequest, request_id: str, prompt_tokens: int
):
    def chunk(delta: dict, finish: str | None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse(envelope("chat.completion.chunk", request_id, body.model, [choice]))

    yield chunk({"role": "assistant", "content": ""}, None)
    completion_tokens = 0
    async for event in collector.events():
        if event[0] == "text" and event[2]:
            yield chunk({"content": event[2]}, None)
        elif event[0] == "done":
            completion_tokens = event[3]
            yield chunk({}, event[2])
    if body.include_usage():
        tokens = usage(prompt_tokens, completion_tokens)
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
