"""vLLM's tokenizer endpoints (/tokenizer_info, /tokenize, /detokenize). lm-evaluation-harness's
`local-completions` finds them and then tokenizes with the server's own tokenizer, so its
token-id prompts and context lengths match the model's tokenization exactly."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, ValidationError

from lmforge.serve.engine import Engine
from lmforge.serve.protocol import APIError
from lmforge.tokenizer import END_OF_TEXT, Tokenizer


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str
    add_special_tokens: bool = True
    """Add the model's start marker (BOS or end-of-text), as text prompts to /v1/completions get."""


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tokens: list[int]


async def _parse(request: Request, model: type[BaseModel]):
    try:
        return model.model_validate(json.loads(await request.body()))
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as error:
        raise APIError(400, f"bad {request.url.path} request: {error}".splitlines()[0]) from None


def start_marker(tokenizer: Tokenizer) -> list[int]:
    """What `encode_prompt` puts before a text prompt: BOS where the tokenizer asks for one,
    else <|endoftext|> where that is its end-of-text, else nothing."""
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        return [tokenizer.bos_id]
    if tokenizer.decode([tokenizer.eot_id], skip_special=False) == END_OF_TEXT:
        return [tokenizer.eot_id]
    return []


def add_tokenizer_routes(app: FastAPI, engine: Engine, template: str | None) -> None:
    tokenizer = engine.tokenizer

    def token_text(token_id: int | None) -> str | None:
        return None if token_id is None else tokenizer.decode([token_id], skip_special=False)

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        return {
            "tokenizer_class": type(tokenizer).__name__,
            "eos_token": token_text(tokenizer.eot_id),
            "bos_token": token_text(tokenizer.bos_id),
            "pad_token": None,
            "chat_template": template or tokenizer.chat_template,
            "model_max_length": engine.context_length,
        }

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        body = await _parse(request, TokenizeRequest)
        # Marker strings in the text become their special ids, as Hugging Face tokenizers do
        # (lm-eval finds the end-of-text id by tokenizing tokenizer_info's eos_token).
        ids = tokenizer.encode(body.prompt, allow_special=True)
        if body.add_special_tokens:
            ids = start_marker(tokenizer) + ids
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.context_length}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        body = await _parse(request, DetokenizeRequest)
        vocab = engine.model.config.vocab_size
        if any(not 0 <= token < vocab for token in body.tokens):
            raise APIError(400, f"token ids must be in [0, {vocab})", "tokens")
        return {"prompt": tokenizer.decode(body.tokens, skip_special=False)}
