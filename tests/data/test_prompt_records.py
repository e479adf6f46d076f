"""GRPO prompt records: every field against every wrong JSON type, and encoding with the chat
template's generation prompt."""

from __future__ import annotations

import gzip
import json

import pytest

from lmforge.data.prompt_records import check_prompt_record, encode_prompts, load_prompts
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import ByteTokenizer, encode_chat

USER = {"role": "user", "content": "What is 2+2?"}
# every JSON type; each field below refuses all but its own
JSON_VALUES = {
    "string": "text",
    "number": 3,
    "float": 2.5,
    "boolean": True,
    "null": None,
    "list": ["text"],
    "object": {"text": "x"},
}
KIND = {"float": "a number", "number": "a number", "boolean": "a boolean", "null": "null"}
KIND |= {"string": "a string", "list": "a list", "object": "an object"}


def with_field(field: str, value: object) -> dict:
    """A valid record with `field` (a path like messages[0].role) set to value."""
    if field == "prompt":
        return {"prompt": value, "answer": 4}
    if field == "answer":
        return {"prompt": "What is 2+2?", "answer": value}
    if field == "messages":
        return {"messages": value, "answer": 4}
    if field == "messages[0]":
        return {"messages": [value], "answer": 4}
    key = field.split(".")[1]
    return {"messages": [{**USER, key: value}], "answer": 4}


FIELDS = {
    # field: (the JSON types it takes, message pattern for a wrong one)
    "prompt": ({"string"}, "prompt must be a string, got {kind}"),
    "messages": ({"list"}, "messages must be a list, got {kind}"),
    "messages[0]": ({"object"}, r"messages\[0\] must be an object, got {kind}"),
    "messages[0].role": (set(), r"messages\[0\].role .* is not a role"),
    "messages[0].content": ({"string"}, r"messages\[0\].content must be a string, got {kind}"),
    "answer": ({"string", "number", "float"}, "answer must be a string or a number .*got {kind}"),
}
GRID = [(f, k) for f, (ok, _) in FIELDS.items() for k in JSON_VALUES if k not in ok]


@pytest.mark.parametrize(("field", "kind"), GRID)
def test_wrong_json_type_is_one_line_naming_record_and_field(tmp_path, field, kind):
    records = [{"prompt": "fine", "answer": 1}, with_field(field, JSON_VALUES[kind])]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    message = FIELDS[field][1].format(kind=KIND[kind])
    with pytest.raises(DataError, match=f"prompts.jsonl record 1: {message}") as caught:
        load_prompts(path, required=["answer"])
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"answer": 4},
            "a prompt record needs exactly one of 'prompt' or 'messages' .*keys: answer",
        ),
        (
            {"prompt": "a", "messages": [USER]},
            "a prompt record needs exactly one of 'prompt' or 'messages'",
        ),
        ({"prompt": "  \n", "answer": 4}, "prompt is empty"),
        ({"messages": [], "answer": 4}, "messages is empty"),
        ({"messages": [{**USER, "content": ""}], "answer": 4}, r"messages\[0\].content is empty"),
        (
            {"messages": [{**USER, "role": "robot"}], "answer": 4},
            r"messages\[0\].role 'robot' is not a role",
        ),
        ({"messages": [{"content": "hi"}], "answer": 4}, r"messages\[0\].role None is not"),
        (
            {"messages": [{"role": "user"}], "answer": 4},
            r"messages\[0\].content must be a string, got null",
        ),
        (
            {"messages": [USER, {"role": "gpt", "content": "4"}]},
            "the last message is the assistant's",
        ),
        ({"prompt": "What?"}, "answer must be a string or a number .*got missing"),
    ],
)
def test_bad_records(record, message):
    with pytest.raises(DataError, match=f"f.jsonl record 7: {message}"):
        check_prompt_record(record, "f.jsonl record 7", required=["answer"])


def test_answer_only_checked_when_required():
    assert check_prompt_record({"prompt": "hi"}, "x").record == {"prompt": "hi"}


def test_load_gz_json_and_roles(tmp_path):
    records = [
        {"prompt": "What is 2+2?", "answer": 4, "id": "a"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"from": "x"} | USER]},
        {"messages": [{"role": "human", "content": "hi"}], "answer": "hello"},
    ]
    records[1]["answer"] = 2.5
    path = tmp_path / "prompts.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump(records, handle)
    prompts = load_prompts(path, required=["answer"])
    assert prompts[0].messages == [USER] and prompts[0].record == records[0]
    assert [m["role"] for m in prompts[1].messages] == ["system", "user"]
    assert prompts[2].messages == [{"role": "user", "content": "hi"}]  # human -> user
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(tmp_path / "missing.jsonl")


def test_encode_prompts_ends_in_the_generation_prompt():
    tokenizer = ByteTokenizer()
    prompts = load_prompts_from([{"prompt": "What is 2+2?"}])
    ids = encode_prompts(tokenizer, prompts, "chatml")
    text = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(ids[0], skip_special=False) == text
    assert ids[0] == encode_chat(tokenizer, [USER], "chatml", add_generation_prompt=True)
    with pytest.raises(ConfigError, match="no chat template; set finetune.template"):
        encode_prompts(tokenizer, prompts)


def load_prompts_from(records: list[dict]):
    return [check_prompt_record(r, f"record {i}") for i, r in enumerate(records)]
