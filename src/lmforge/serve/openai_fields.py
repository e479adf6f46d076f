"""The OpenAI request fields lmforge serve takes only as metadata or refuses, so that no field is
silently ignored (docs/serve.md has the table). Each refused field is declared with its OpenAI
type and refused by a validator when it asks for something this server cannot do: values that
mean "nothing" (tools: [], tool_choice: "none", response_format text) are accepted.

The validators raise ValueError; the field's name becomes the error's `param` (see
serve/parsing.py), so a client learns which field to drop.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
"""JSON types as OpenAI documents them ("16" is no integer, 1 no boolean), no field unknown to
the API, and no infinity (1e309 parses to it)."""

MetadataKey = Annotated[str, StringConstraints(max_length=64)]  # OpenAI's limits
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
NO_TOOLS = "this server has no tool calling (no constrained decoding); send the request without it"


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text", "json_object", "json_schema"]


class ChatOnlyFields(BaseModel):
    """Chat fields: the metadata accepted, the rest refused unless they ask for nothing."""

    model_config = STRICT

    store: bool | None = None
    """Accepted when false: nothing is stored."""
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)
    """Accepted, unused: it tags stored completions at OpenAI, and nothing is stored here."""
    service_tier: Literal["auto", "default"] | None = None
    """Accepted: one tier here."""
    parallel_tool_calls: bool | None = None
    """Accepted: without tools there is nothing to call in parallel."""
    modalities: list[Literal["text", "audio"]] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: str | dict[str, Any] | None = None
    reasoning_effort: str | None = None
    prediction: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None

    @field_validator("store")
    @classmethod
    def _store(cls, store: bool | None) -> bool | None:
        if store:
            raise ValueError("this server stores no completions; send store false or leave it out")
        return store

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, modalities: list[str] | None) -> list[str] | None:
        if modalities and modalities != ["text"]:
            raise ValueError('only text is generated here; send ["text"] or leave it out')
        return modalities

    @field_validator("response_format")
    @classmethod
    def _format(cls, format: ResponseFormat | None) -> ResponseFormat | None:
        if format is not None and format.type != "text":
            raise ValueError(
                f"{format.type} needs constrained decoding, which this server does not do; "
                'send {"type": "text"} or leave it out'
            )
        return format

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, tools: list | None) -> list | None:
        if tools:
            raise ValueError(NO_TOOLS)
        return tools

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_choice(cls, choice: str | dict | None) -> str | dict | None:
        if choice not in (None, "none"):
            raise ValueError(f'{NO_TOOLS} (only "none" is accepted)')
        return choice

    @field_validator("reasoning_effort", "prediction", "audio", "web_search_options")
    @classmethod
    def _refused(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("not supported by this server; send the request without it")
        return value


class CompletionOnlyFields(BaseModel):
    model_config = STRICT

    suffix: str | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, suffix: str | None) -> str | None:
        if suffix:
            raise ValueError("fill-in-the-middle is not supported; put all the text in the prompt")
        return suffix
