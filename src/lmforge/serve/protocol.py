"""OpenAI request models (pydantic) and the error shape.

A sampling option is checked twice in `SamplingRequest`: by OpenAI's own limits (field
constraints, e.g. temperature <= 2) and by the validator `sample` and `chat` share
(`check_sampling_options`), so the three commands accept the same values. Checks that need the
model or the tokenizer are in `check_lengths`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lmforge.errors import ConfigError
from lmforge.sampling_validation import check_sampling_options

MAX_STOP_STRINGS = 16
MAX_LOGPROBS = 20


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status,
            message,
            param,
            code,
            type,
        )

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """The fields completions and chat share. Unknown fields are ignored, as OpenAI's own
    clients and lm-eval send more than a local model can use."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    """vLLM's extension; -1 or 0 turn it off."""
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    """One choice per prompt (more are not supported)."""
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @model_validator(mode="after")
    def _shared_sampling_rules(self) -> SamplingRequest:
        try:
            check_sampling_options(
                self.max_tokens or 1,
                self.temperature,
                self.top_k_or_none(),
                self.top_p,
                flag=lambda name: "max_tokens" if name == "max_new_tokens" else name,
            )
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return self

    def stop_strings(self) -> list[str]:
        return list(self.stop or [])

    def top_k_or_none(self) -> int | None:
        return self.top_k if self.top_k and self.top_k > 0 else None

    def top_p_or_none(self) -> float | None:
        return self.top_p if self.top_p < 1.0 else None

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingRequest):
    prompt: Prompt
    """A string, a list of strings, a list of token ids, or a list of token-id lists."""
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a string, or token ids used as they are."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(p, int) for p in prompt):
            return [list(prompt)]
        return list(prompt)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def as_dict(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def check_lengths(
    prompt_ids: list[int], max_tokens: int, context_length: int, token_cap: int, param: str
) -> None:
    """The limits that need the tokenized prompt and the model: 400 when one is broken."""
    if not prompt_ids:
        raise APIError(400, "the prompt is empty; send at least one token of text", param)
    if max_tokens > token_cap:
        raise APIError(
            400,
            f"max_tokens is {max_tokens}, above this server's cap of {token_cap} tokens per "
            "request; ask for fewer",
            "max_tokens",
        )
    if max_tokens >= context_length:
        raise APIError(
            400,
            f"max_tokens is {max_tokens}, but the model's context is {context_length} tokens "
            "including the prompt; ask for fewer",
            "max_tokens",
        )
    if len(prompt_ids) + max_tokens > context_length:
        raise APIError(
            400,
            f"This model's maximum context length is {context_length} tokens. However, you "
            f"requested {len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the prompt, "
            f"{max_tokens} for the completion); shorten the prompt or lower max_tokens",
            param,
            "context_length_exceeded",
        )
