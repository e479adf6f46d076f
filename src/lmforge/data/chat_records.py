"""Instruction and preference records -> conversations ({"role", "content"} message lists).

SFT formats (one conversation per record):
    alpaca     {"instruction", "input"?, "output", "system"?}
    messages   {"messages": [{"role", "content"}, ...]}   (content: text, or a list of text parts)
    sharegpt   {"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}
Preference formats (a chosen and a rejected conversation per record, each ending in the reply):
    hh              {"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected": "..."} (hh-rlhf)
    sharegpt-pairs  {"conversations": [...], "chosen": {"from", "value"}, "rejected": {...}}
    message-pairs   {"chosen_messages": [...], "rejected_messages": [...]}
Files: .json (an array), .jsonl, either optionally gzipped (.gz).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from lmforge.errors import DataError

SFT_FORMATS = {
    "alpaca": "alpaca (instruction/input/output)",
    "messages": "messages (role/content)",
    "sharegpt": "sharegpt (conversations with from/value)",
}
PAIR_FORMATS = {
    "hh": "hh (chosen/rejected Human:/Assistant: transcripts)",
    "sharegpt-pairs": "sharegpt-pairs (conversations + chosen/rejected)",
    "message-pairs": "message-pairs (chosen_messages/rejected_messages)",
}
ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}
Messages = list[dict]


def read_records(path: str | Path) -> list[dict]:
    """All records of a .json array or a .jsonl file (optionally .gz)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"finetune data {path} does not exist; check finetune.data")
    opener = gzip.open if path.suffix == ".gz" else open
    suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(
            f"cannot read {path} ({error}); give a UTF-8 .json or .jsonl file"
        ) from None
    try:
        if suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error}); fix the file") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path} must hold JSON objects (a .json array or one per .jsonl line)")
    if not records:
        raise DataError(f"{path} holds no records; add some")
    return records


def detect_format(record: dict, path: str, pairs: bool) -> str:
    """The format name, from the keys of the first record."""
    keys = set(record)
    if pairs:
        if {"chosen_messages", "rejected_messages"} <= keys:
            return "message-pairs"
        if {"conversations", "chosen", "rejected"} <= keys:
            return "sharegpt-pairs"
        if {"chosen", "rejected"} <= keys and isinstance(record["chosen"], str):
            return "hh"
        supported = PAIR_FORMATS
    else:
        if "messages" in keys:
            return "messages"
        if "conversations" in keys:
            return "sharegpt"
        if {"instruction", "output"} <= keys:
            return "alpaca"
        supported = SFT_FORMATS
    raise DataError(
        f"{path}: unknown data format (record keys: {', '.join(sorted(keys))}); supported: "
        f"{'; '.join(supported.values())}; convert the data or set finetune.data_format"
    )


def _text(content: object, where: str) -> str:
    """Message content as text: a string, or a list of {"type": "text", "text"|"value"} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return "".join(str(p.get("text", p.get("value", ""))) for p in content)
    raise DataError(f"{where}: message content must be text or a list of text parts")


def _message(role: object, content: object, where: str) -> dict:
    if role not in ROLES:
        raise DataError(f"{where}: unknown role {role!r}; use one of {', '.join(sorted(ROLES))}")
    return {"role": ROLES[role], "content": _text(content, where)}


def _messages(items: object, where: str, role_key: str, content_key: str) -> Messages:
    if not isinstance(items, list) or not all(isinstance(m, dict) for m in items):
        raise DataError(f"{where}: expected a list of messages")
    try:
        return [_message(m[role_key], m[content_key], where) for m in items]
    except KeyError as error:
        raise DataError(
            f"{where}: a message lacks {error}; each needs {role_key!r} and {content_key!r}"
        ) from None


def _alpaca(record: dict, where: str) -> Messages:
    prompt = record["instruction"]
    if record.get("input"):
        prompt = f"{prompt}\n\n{record['input']}"
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    return messages + [
        {"role": "user", "content": _text(prompt, where)},
        {"role": "assistant", "content": _text(record["output"], where)},
    ]


def to_conversation(record: dict, fmt: str, where: str) -> Messages:
    """One SFT record as a message list."""
    try:
        if fmt == "alpaca":
            return _alpaca(record, where)
        if fmt == "messages":
            return _messages(record["messages"], where, "role", "content")
        return _messages(record["conversations"], where, "from", "value")
    except KeyError as error:
        raise DataError(f"{where}: missing field {error} for format {fmt}") from None


_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_transcript(text: str, where: str) -> Messages:
    """hh-rlhf's "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript as messages."""
    parts = _TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise DataError(f"{where}: not a '\\n\\nHuman: ... \\n\\nAssistant: ...' transcript")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        {"role": roles[speaker], "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def to_pair(record: dict, fmt: str, where: str) -> tuple[Messages, Messages]:
    """One preference record as (chosen conversation, rejected conversation)."""
    try:
        if fmt == "hh":
            return (
                parse_transcript(record["chosen"], where),
                parse_transcript(record["rejected"], where),
            )
        if fmt == "message-pairs":
            return (
                _messages(record["chosen_messages"], where, "role", "content"),
                _messages(record["rejected_messages"], where, "role", "content"),
            )
        prompt = _messages(record["conversations"], where, "from", "value")
        chosen, rejected = record["chosen"], record["rejected"]
        return (
            prompt + [_message(chosen["from"], chosen["value"], where)],
            prompt + [_message(rejected["from"], rejected["value"], where)],
        )
    except (KeyError, TypeError) as error:
        raise DataError(f"{where}: missing or malformed field {error} for format {fmt}") from None


def load_conversations(path: str, fmt: str) -> list[Messages]:
    records = read_records(path)
    fmt = detect_format(records[0], path, pairs=False) if fmt == "auto" else fmt
    if fmt not in SFT_FORMATS:
        raise DataError(
            f"finetune.data_format={fmt!r} is a preference format; SFT and distill take "
            f"{', '.join(SFT_FORMATS)}"
        )
    return [to_conversation(r, fmt, f"{path} record {i}") for i, r in enumerate(records)]


def load_pairs(path: str, fmt: str) -> list[tuple[Messages, Messages]]:
    records = read_records(path)
    fmt = detect_format(records[0], path, pairs=True) if fmt == "auto" else fmt
    if fmt not in PAIR_FORMATS:
        raise DataError(
            f"finetune.data_format={fmt!r} is not a preference format; DPO takes "
            f"{', '.join(PAIR_FORMATS)}"
        )
    return [to_pair(r, fmt, f"{path} record {i}") for i, r in enumerate(records)]
