"""OpenAI request models (pydantic) and the error shape.

A sampling option is checked twice in `SamplingRequest`: by OpenAI's own limits (field
constraints, e.g. temperature <= 2) and by the validator `sample` and `chat` share
(`check_sampling_options`), so the three commands accept the same values. Checks that need the
model or the tokenizer are in `check_lengths`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from lmforge.errors import ConfigError
from lmforge.sampling_validation import check_sampling_options
from lmforge.serve.openai_fields import STRICT, ChatOnlyFields, CompletionOnlyFields

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1000
MAX_LOGPROBS = 20
MAX_CHOICES = 128  # OpenAI's own cap on n
MAX_LOGIT_BIAS = 300


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
    model_config = STRICT
    include_usage: bool = False
    include_obfuscation: bool = True
    """Accepted; no obfuscation padding is added (it hides chunk sizes on shared networks)."""


class SamplingRequest(BaseModel):
    """The fields completions and chat share. A field OpenAI's API does not have is a 400 (none
    is silently ignored); vLLM's top_k is the one extension taken."""

    model_config = STRICT

    model: str = Field(max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1)
    """vLLM's extension; -1 or 0 turn it off."""
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    """Choices per prompt: prompt i's choice j has index i * n + j."""
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    """Token id (a decimal string) -> bias in [-100, 100], added to that token's logit."""
    user: str | None = Field(None, max_length=256)
    """Accepted, unused: OpenAI uses it to trace abuse."""

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data: Any) -> Any:
        # OpenAI's fields are "type or null", null meaning the default (a required field sent as
        # null is then missing, and refused as such).
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop string has at most {MAX_STOP_CHARS} characters")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if bias is None:
            return None
        if len(bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens may be biased, got {len(bias)}")
        for token, value in bias.items():
            if not (token.isascii() and token.isdigit() and len(token) <= 12):
                raise ValueError(
                    f'keys are token ids written as strings, e.g. "50256"; got {token!r}'
                )
            if not -100 <= value <= 100:
                raise ValueError(f"biases are in [-100, 100]; token {token} has {value}")
        return bias

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

    def cross_checks(self) -> None:
        """The rules between fields, as 400s naming the field to change."""
        if self.stream_options is not None and not self.stream:
            raise APIError(
                400, "stream_options needs stream true; drop it or stream", "stream_options"
            )

    def stop_strings(self) -> list[str]:
        return list(self.stop or [])

    def top_k_or_none(self) -> int | None:
        return self.top_k if self.top_k and self.top_k > 0 else None

    def top_p_or_none(self) -> float | None:
        return self.top_p if self.top_p < 1.0 else None

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def token_bias(self) -> dict[int, float] | None:
        return {int(t): v for t, v in self.logit_bias.items()} if self.logit_bias else None


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(CompletionOnlyFields, SamplingRequest):
    prompt: Prompt
    """A string, a list of strings, a list of token ids, or a list of token-id lists."""
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)
    """Candidates per prompt; the n with the highest mean token logprob are returned."""

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a string, or token ids used as they are."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(p, int) for p in prompt):
            return [list(prompt)]
        return list(prompt)

    def candidates(self) -> int:
        """Rows generated per prompt: best_of, else n."""
        return self.best_of or self.n

    def cross_checks(self) -> None:
        super().cross_checks()
        if self.best_of is not None and self.best_of < self.n:
            message = f"best_of ({self.best_of}) must be at least n ({self.n})"
            raise APIError(400, message, "best_of")
        if self.stream and self.echo:
            message = "echo cannot stream on this server; drop stream or echo"
            raise APIError(400, message, "echo")
        if self.stream and self.candidates() > self.n:
            message = "best_of above n cannot stream (the best are known at the end); drop one"
            raise APIError(400, message, "best_of")


class ContentPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None
    refusal: str | None = None
    audio: dict[str, Any] | None = None

    @field_validator("name", "tool_calls", "tool_call_id", "function_call", "refusal", "audio")
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        # The chat template renders role and content only: any of these would be dropped.
        if value:
            raise ValueError(
                "not supported by this server (the chat template renders role and content only)"
            )
        return value

    def as_dict(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class ChatCompletionRequest(ChatOnlyFields, SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def cross_checks(self) -> None:
        super().cross_checks()
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs true", "top_logprobs")


def check_lengths(
    prompt_ids: list[int],
    max_tokens: int,
    context_length: int,
    token_cap: int,
    param: str,
    limit: str = "max_tokens",
) -> None:
    """The limits that need the tokenized prompt and the model: 400 when one is broken.
    limit: the field the client set max_tokens with (chat's max_completion_tokens)."""
    if not prompt_ids:
        raise APIError(400, "the prompt is empty; send at least one token of text", param)
    if max_tokens > token_cap:
        raise APIError(
            400,
            f"{limit} is {max_tokens}, above this server's cap of {token_cap} tokens per "
            "request; ask for fewer",
            limit,
        )
    if max_tokens >= context_length:
        raise APIError(
            400,
            f"{limit} is {max_tokens}, but the model's context is {context_length} tokens "
            "including the prompt; ask for fewer",
            limit,
        )
    if len(prompt_ids) + max_tokens > context_length:
        raise APIError(
            400,
            f"This model's maximum context length is {context_length} tokens. However, you "
            f"requested {len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the prompt, "
            f"{max_tokens} for the completion); shorten the prompt or lower {limit}",
            param,
            "context_length_exceeded",
        )
