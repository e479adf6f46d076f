"""The finetune data grid: every field of every record format (nested ones included), given each
JSON type it does not take, is one DataError line naming the file, the record number and the
field path; so are a missing required field, an empty message list and an unknown role. The
fields come from walking a valid record per format (written here, not read from the schema), so
a field the schema forgets is caught. Two cases also go through the real CLI."""

from __future__ import annotations

import copy

import pytest
from conftest import assert_one_line_error, run_cli
from finetune_fixtures import tiny_base, write_jsonl  # noqa: F401

from lmforge.data.chat_records import PAIR_FORMATS, load_conversations, load_pairs
from lmforge.errors import DataError

PARTS = [{"type": "text", "text": "hi"}, {"type": "text", "value": " there"}]
# One valid record per format using every field (optional ones, text parts, both part keys).
BASE = {
    "alpaca": {"instruction": "Say hi.", "input": "to me", "output": "hi", "system": "be brief"},
    "messages": {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": PARTS},
            {"role": "assistant", "content": "hello"},
        ]
    },
    "sharegpt": {
        "conversations": [
            {"from": "human", "value": PARTS},
            {"from": "gpt", "value": "hello"},
        ]
    },
    "hh": {
        "chosen": "\n\nHuman: hi\n\nAssistant: yo",
        "rejected": "\n\nHuman: hi\n\nAssistant: no",
    },
    "sharegpt-pairs": {
        "conversations": [{"from": "human", "value": "hi"}],
        "chosen": {"from": "gpt", "value": "hello"},
        "rejected": {"from": "gpt", "value": PARTS},
    },
    "message-pairs": {
        "chosen_messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ],
        "rejected_messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": PARTS},
        ],
    },
}
# A value of each JSON type, and how the error names it.
KINDS = {
    "string": ("x", "a string"),
    "list": (["x"], "a list"),
    "dict": ({"a": 1}, "an object"),
    "int": (7, "a number"),
    "float": (0.5, "a number"),
    "null": (None, "null"),
    "bool": (True, "a boolean"),
}
OPTIONAL = {"input", "system", "type"}  # null counts as absent (HF's to_json writes null)
ROLE_KEYS = {"role", "from"}


def kind_of(value: object) -> str:
    return next(k for k, (v, _) in KINDS.items() if type(v) is type(value))


def walk(value: object, path: tuple = ()):
    """(path, value) for the record and every field under it."""
    yield path, value
    if isinstance(value, dict | list):
        for key, inner in value.items() if isinstance(value, dict) else enumerate(value):
            yield from walk(inner, (*path, key))


def show(path: tuple) -> str:
    """("messages", 1, "role") -> "messages[1].role"."""
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else f".{key}" if text else key
    return text


def takes(record: dict, path: tuple, value: object) -> set[str]:
    """The JSON types a field takes: its base value's, plus both for message content."""
    taken = {kind_of(value)}
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    name = path[-1] if path else None
    if name == "content" or (name == "value" and "from" in parent):
        taken |= {"string", "list"}
    if name in OPTIONAL:
        taken.add("null")
    return taken


def name(param: object) -> str | None:
    """Test ids: a field path as the error writes it ("record" for the record itself)."""
    return (show(param) or "record") if isinstance(param, tuple) else None


def replaced(record: dict, path: tuple, value: object) -> object:
    if not path:
        return value
    record = copy.deepcopy(record)
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return record


def grid() -> list[tuple[str, tuple, str]]:
    cases = []
    for fmt, record in BASE.items():
        for path, value in walk(record):
            wrong = sorted(set(KINDS) - takes(record, path, value))
            cases += [(fmt, path, kind) for kind in wrong]
    return cases


def load(path, fmt: str, data_format: str | None = None):
    loader = load_pairs if fmt in PAIR_FORMATS else load_conversations
    return loader(str(path), data_format or fmt)


def refused(tmp_path, fmt: str, broken: object, fragment: str) -> None:
    """A valid record, then the broken one (record 1): refused, auto-detected or named."""
    path = write_jsonl(tmp_path / "data.jsonl", [BASE[fmt], broken])
    for data_format in ("auto", fmt):
        with pytest.raises(DataError) as caught:
            load(path, fmt, data_format)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message, message
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("fmt", BASE)
def test_every_base_record_loads(tmp_path, fmt):
    assert load(write_jsonl(tmp_path / "ok.jsonl", [BASE[fmt]]), fmt)


@pytest.mark.parametrize(("fmt", "path", "kind"), grid(), ids=name)
def test_wrong_json_type_names_record_and_field(tmp_path, fmt, path, kind):
    value, words = KINDS[kind]
    field = f"record 1: {show(path)}" if path else "record 1"
    refused(tmp_path, fmt, replaced(BASE[fmt], path, value), f"{field} is {words}; ")


def required_fields() -> list[tuple[str, tuple]]:
    return [
        (fmt, path)
        for fmt, record in BASE.items()
        for path, _ in walk(record)
        if path and isinstance(path[-1], str) and path[-1] not in OPTIONAL
    ]


@pytest.mark.parametrize(("fmt", "path"), required_fields(), ids=name)
def test_missing_required_field_is_named(tmp_path, fmt, path):
    record = copy.deepcopy(BASE[fmt])
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    if "type" in parent:  # a text part: "text" or "value"; without both it lacks "text"
        path = (*path[:-1], "text")
    refused(tmp_path, fmt, record, f"record 1: {show(path)} is missing")


def test_role_that_is_a_list_from_the_report(tmp_path):
    broken = replaced(BASE["messages"], ("messages", 1, "role"), ["user"])
    refused(
        tmp_path,
        "messages",
        broken,
        "record 1: messages[1].role is a list; it must be a string (one of system, user,",
    )


@pytest.mark.parametrize(
    ("fmt", "path"),
    [
        ("messages", ("messages", 1, "role")),
        ("sharegpt", ("conversations", 0, "from")),
        ("sharegpt-pairs", ("conversations", 0, "from")),
        ("message-pairs", ("rejected_messages", 0, "role")),
    ],
    ids=name,
)
def test_unknown_role_is_named(tmp_path, fmt, path):
    broken = replaced(BASE[fmt], path, "wizard")
    refused(tmp_path, fmt, broken, f"record 1: {show(path)} is 'wizard'; it must be one of")


@pytest.mark.parametrize("side", ["chosen", "rejected"])
def test_preference_reply_must_come_from_the_assistant(tmp_path, side):
    broken = replaced(BASE["sharegpt-pairs"], (side, "from"), "human")
    refused(tmp_path, "sharegpt-pairs", broken, f"record 1: {side}.from is 'human'; it must be")


def test_content_part_of_another_type_is_named(tmp_path):
    broken = replaced(BASE["messages"], ("messages", 1, "content", 0, "type"), "image_url")
    refused(tmp_path, "messages", broken, "messages[1].content[0].type is 'image_url'")


@pytest.mark.parametrize(
    ("fmt", "field"),
    [
        ("messages", "messages"),
        ("sharegpt", "conversations"),
        ("sharegpt-pairs", "conversations"),
        ("message-pairs", "chosen_messages"),
        ("message-pairs", "rejected_messages"),
    ],
)
def test_empty_message_list_is_named(tmp_path, fmt, field):
    broken = replaced(BASE[fmt], (field,), [])
    refused(tmp_path, fmt, broken, f"record 1: {field} is an empty list; it must hold at least")


def test_record_that_is_not_an_object_in_a_json_array(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[{"instruction": "a", "output": "b"}, "just text"]')
    with pytest.raises(DataError, match=r"data.json record 1 is a string; each record must be"):
        load_conversations(str(path), "auto")


def test_hh_text_that_is_not_a_transcript_names_the_side(tmp_path):
    broken = replaced(BASE["hh"], ("rejected",), "no turns here")
    refused(tmp_path, "hh", broken, "record 1: rejected is not a")


def test_what_optional_and_alternative_fields_accept(tmp_path):
    alpaca = {"instruction": "Say hi.", "input": None, "output": "hi", "system": None}
    path = write_jsonl(tmp_path / "a.jsonl", [alpaca])
    assert load_conversations(str(path), "alpaca") == [
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]
    ]
    parts = [
        {"text": "a"},
        {"type": None, "text": None, "value": "b"},
        {"type": "text", "text": ""},
    ]
    messages = {"messages": [{"role": "user", "content": parts}, {"role": "bot", "content": []}]}
    path = write_jsonl(tmp_path / "m.jsonl", [messages])
    assert load_conversations(str(path), "messages") == [
        [{"role": "user", "content": "ab"}, {"role": "assistant", "content": ""}]
    ]


@pytest.mark.parametrize(
    ("method", "fmt", "path", "kind"),
    [
        ("sft", "messages", ("messages", 1, "role"), "list"),
        ("dpo", "sharegpt-pairs", ("chosen", "value"), "int"),
    ],
    ids=name,
)
def test_cli_exits_with_one_line(tmp_path, tiny_base, method, fmt, path, kind):  # noqa: F811
    records = [BASE[fmt], replaced(BASE[fmt], path, KINDS[kind][0]), BASE[fmt]]
    data = write_jsonl(tmp_path / "data.jsonl", records)
    result = run_cli(
        "finetune", method, "--init_from", str(tiny_base), "--finetune.data", str(data),
        "--finetune.template", "chatml", "--train.out_dir", "out", "--train.device", "cpu",
        "--train.max_steps", "1", "--logging.no_progress_bar", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    words = KINDS[kind][1]
    assert_one_line_error(result.stderr, str(data), f"record 1: {show(path)} is {words}; ")
    assert not (tmp_path / "out").exists()


def test_grid_size():
    """Quoted in docs/reliability.md: keep the two in step."""
    fields = sum(1 for record in BASE.values() for _ in walk(record))
    assert (fields, len(grid()), len(required_fields())) == (77, 440, 43)
