"""Prompts for GRPO: records with a `prompt` or `messages`, plus the fields the rewards read.

    {"prompt": "Sam has 12 apples...", "answer": 19}
    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
     "answer": "19"}

Files: .json (an array) or .jsonl, optionally gzipped (read by chat_records.read_records). Every
record is checked before any work starts; a refusal is one line naming the file, the record
number (from 0, as for SFT data) and the field. A prompt is rendered through the chat template
with the generation prompt added, so the model's reply follows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.chat_records import ROLES, read_records
from lmforge.data.sft import resolve_chat_template
from lmforge.errors import DataError
from lmforge.tokenizer import Tokenizer, encode_chat


@dataclass
class Prompt:
    messages: list[dict]
    """The conversation to answer ({"role", "content"}; roles normalised), ending in the user's
    turn (or a system message)."""
    record: dict
    """The whole record, for the rewards (e.g. its `answer`)."""


def _kind(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else "a value")


def _text(value: object, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {field} must be a string, got {_kind(value)}; fix the record")
    if not value.strip():
        raise DataError(f"{where}: {field} is empty; give the text or drop the record")
    return value


def _messages(value: object, where: str) -> list[dict]:
    if not isinstance(value, list):
        raise DataError(f"{where}: messages must be a list, got {_kind(value)}; fix the record")
    if not value:
        raise DataError(f"{where}: messages is empty; give at least the user's message")
    messages = []
    for i, message in enumerate(value):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"{where}: {field} must be an object, got {_kind(message)}")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise DataError(
                f"{where}: {field}.role {role!r} is not a role; use one of {', '.join(ROLES)}"
            )
        content = _text(message.get("content"), where, f"{field}.content")
        messages.append({"role": ROLES[role], "content": content})
    if messages[-1]["role"] == "assistant":
        raise DataError(
            f"{where}: the last message is the assistant's; a prompt ends with the user's turn"
        )
    return messages


def check_prompt_record(record: dict, where: str, required: Sequence[str] = ()) -> Prompt:
    """One record as a Prompt; `required` names fields the rewards read (e.g. `answer`), which
    must be present and a string or a number."""
    if ("prompt" in record) == ("messages" in record):
        keys = ", ".join(sorted(record)) or "none"
        raise DataError(
            f"{where}: a prompt record needs exactly one of 'prompt' or 'messages' (its keys: "
            f"{keys}); fix the record"
        )
    if "prompt" in record:
        messages = [{"role": "user", "content": _text(record["prompt"], where, "prompt")}]
    else:
        messages = _messages(record["messages"], where)
    for field in required:
        value = record.get(field)
        if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
            shown = "missing" if field not in record else _kind(value)
            raise DataError(
                f"{where}: {field} must be a string or a number (the rewards read it), got "
                f"{shown}; fix the record"
            )
    return Prompt(messages, record)


def load_prompts(path: str | Path, required: Sequence[str] = ()) -> list[Prompt]:
    """Every record of a prompts file, checked."""
    return [
        check_prompt_record(record, f"{path} record {i}", required)
        for i, record in enumerate(read_records(path))
    ]


def encode_prompts(
    tokenizer: Tokenizer, prompts: Sequence[Prompt], template: str | None = None
) -> list[list[int]]:
    """Token ids of each prompt through the chat template (`template`, else the tokenizer's own),
    ending in the generation prompt (e.g. `<|im_start|>assistant\\n`)."""
    template = resolve_chat_template(tokenizer, template)
    return [
        encode_chat(tokenizer, p.messages, template, add_generation_prompt=True) for p in prompts
    ]
