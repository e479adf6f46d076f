"""Instruction and preference records -> conversations ({"role", "content"} message lists).

SFT formats (one conversation per record):
    alpaca     {"instruction", "input"?, "output", "system"?}
    messages   {"messages": [{"role", "content"}, ...]}   (content: text, or a list of text parts)
    sharegpt   {"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}
Preference formats (a chosen and a rejected conversation per record, each ending in the reply):
    hh              {"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected": "..."} (hh-rlhf)
    sharegpt-pairs  {"conversations": [...], "chosen": {"from", "value"}, "rejected": {...}}
    message-pairs   {"chosen_messages": [...], "rejected_messages": [...]}
Files: .json (an array), .jsonl, either optionally gzipped (.gz). Every record is checked
against its format's schema (record_schema.py) before it is converted, so the conversion below
can index fields without guarding against wrong JSON types.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from lmforge.data.record_schema import ROLES, SCHEMAS, check, json_type
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
    if not isinstance(records, list):
        raise DataError(
            f"{path} holds {json_type(records)}; a .json file must be an array of records"
        )
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(
                f"{path} record {i} is {json_type(record)}; each record must be a JSON object "
                "(a .json array of objects, or one object per .jsonl line)"
            )
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


def _text(content: str | list[dict]) -> str:
    """Checked content as text: a string, or the text of its parts ("text", else "value")."""
    if isinstance(content, str):
        return content
    return "".join(p["text"] if p.get("text") is not None else p["value"] for p in content)


def _messages(items: list[dict], role_key: str, content_key: str) -> Messages:
    return [{"role": ROLES[m[role_key]], "content": _text(m[content_key])} for m in items]


def _alpaca(record: dict) -> Messages:
    prompt = record["instruction"]
    if record.get("input"):
        prompt = f"{prompt}\n\n{record['input']}"
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    return messages + [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": record["output"]},
    ]


def to_conversation(record: dict, fmt: str, where: str) -> Messages:
    """One SFT record as a message list (a DataError naming the field if it is malformed)."""
    check(record, SCHEMAS[fmt], "", where)
    if fmt == "alpaca":
        return _alpaca(record)
    if fmt == "messages":
        return _messages(record["messages"], "role", "content")
    return _messages(record["conversations"], "from", "value")


_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_transcript(text: str, where: str) -> Messages:
    """hh-rlhf's "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript as messages."""
    parts = _TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise DataError(f"{where} is not a '\\n\\nHuman: ... \\n\\nAssistant: ...' transcript")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        {"role": roles[speaker], "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def to_pair(record: dict, fmt: str, where: str) -> tuple[Messages, Messages]:
    """One preference record as (chosen conversation, rejected conversation)."""
    check(record, SCHEMAS[fmt], "", where)
    if fmt == "hh":
        return (
            parse_transcript(record["chosen"], f"{where}: chosen"),
            parse_transcript(record["rejected"], f"{where}: rejected"),
        )
    if fmt == "message-pairs":
        return (
            _messages(record["chosen_messages"], "role", "content"),
            _messages(record["rejected_messages"], "role", "content"),
        )
    prompt = _messages(record["conversations"], "from", "value")
    return tuple(
        prompt + _messages([record[side]], "from", "value") for side in ("chosen", "rejected")
    )


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
