"""The shape of every finetune record format, as data, and the one checker that walks it.

Each format is a schema (its fields, their JSON types, required or optional, the roles a
message may take). A record is checked against its schema before any field is used, so a wrong
type never reaches the conversion code (where a list role was `unhashable type: 'list'` deep in
a traceback); instead it is one DataError naming the file, the record and the field path, e.g.
`data.jsonl record 3: messages[1].role is a list; it must be a string (one of ...)`.

Extra keys are ignored (datasets carry ids, sources, scores). An optional field that is null
counts as absent: Hugging Face's `Dataset.to_json` writes null where a row lacks a column.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.errors import DataError

# Accepted role names (sharegpt's and OpenAI's spellings) -> the chat template's role.
ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}
REPLY_ROLES = tuple(name for name, role in ROLES.items() if role == "assistant")


@dataclass(frozen=True)
class Text:
    """A JSON string; when `choices` is given, only those values."""

    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    required: bool = True
    alias: str | None = None
    """Another key for the same field (text parts carry "text" or "value")."""


@dataclass(frozen=True)
class Obj:
    """A JSON object; `noun` names it in messages ("message", "text part")."""

    noun: str
    fields: tuple[Field, ...]


@dataclass(frozen=True)
class Items:
    """A JSON list of `item`, at least `min_items` long."""

    item: Obj
    min_items: int = 0


@dataclass(frozen=True)
class Either:
    """The first option whose JSON type the value has (content: a string or a list of parts)."""

    options: tuple[Text | Items, ...]


Kind = Text | Obj | Items | Either

_PART = Obj(
    "text part",
    (Field("type", Text(("text",)), required=False), Field("text", Text(), alias="value")),
)
CONTENT = Either((Text(), Items(_PART)))


def _conversation(role_key: str, content_key: str) -> Items:
    message = Obj("message", (Field(role_key, Text(tuple(ROLES))), Field(content_key, CONTENT)))
    return Items(message, min_items=1)


_MESSAGES, _SHAREGPT = _conversation("role", "content"), _conversation("from", "value")
_REPLY = Obj("reply", (Field("from", Text(REPLY_ROLES)), Field("value", CONTENT)))

SCHEMAS: dict[str, Obj] = {
    "alpaca": Obj(
        "alpaca record",
        (
            Field("instruction", Text()),
            Field("input", Text(), required=False),
            Field("output", Text()),
            Field("system", Text(), required=False),
        ),
    ),
    "messages": Obj("messages record", (Field("messages", _MESSAGES),)),
    "sharegpt": Obj("sharegpt record", (Field("conversations", _SHAREGPT),)),
    "hh": Obj("hh record", (Field("chosen", Text()), Field("rejected", Text()))),
    "sharegpt-pairs": Obj(
        "sharegpt-pairs record",
        (
            Field("conversations", _SHAREGPT),
            Field("chosen", _REPLY),
            Field("rejected", _REPLY),
        ),
    ),
    "message-pairs": Obj(
        "message-pairs record",
        (Field("chosen_messages", _MESSAGES), Field("rejected_messages", _MESSAGES)),
    ),
}


def json_type(value: object) -> str:
    """The JSON type of a parsed value, with its article ("a list", "null")."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: True is an int to Python, not to JSON
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    names = {str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), f"a {type(value).__name__}")


def _fits(value: object, kind: Kind) -> bool:
    if isinstance(kind, Either):
        return any(_fits(value, option) for option in kind.options)
    return isinstance(value, {Text: str, Items: list, Obj: dict}[type(kind)])


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _one_of(choices: tuple[str, ...]) -> str:
    return f"{choices[0]!r}" if len(choices) == 1 else f"one of {', '.join(choices)}"


def describe(kind: Kind) -> str:
    """What a field must be, in words: "a string (one of system, user, ...)"."""
    if isinstance(kind, Text):
        return f"a string ({_one_of(kind.choices)})" if kind.choices else "a string"
    if isinstance(kind, Obj):
        return f"{_article(kind.noun)} object ({', '.join(f.name for f in kind.fields)})"
    if isinstance(kind, Items):
        return f"{'a non-empty' if kind.min_items else 'a'} list of {kind.item.noun}s"
    return " or ".join(describe(option) for option in kind.options)


def _needs(obj: Obj) -> str:
    required = [f"{f.name} (or {f.alias})" if f.alias else f.name for f in obj.fields if f.required]
    optional = [f.name for f in obj.fields if not f.required]
    text = f"{_article(obj.noun)} needs {' and '.join(required)}"
    if optional:
        text += f"; {' and '.join(optional)} {'is' if len(optional) == 1 else 'are'} optional"
    return text


def _field(obj: dict, spec: Field) -> tuple[str | None, object]:
    """(the key used, its value): the name, else the alias; a null one only if both are."""
    present = [key for key in (spec.name, spec.alias) if key is not None and key in obj]
    key = next((k for k in present if obj[k] is not None), present[0] if present else None)
    return key, obj.get(key) if key is not None else None


def check(value: object, kind: Kind, path: str, where: str) -> None:
    """Raise a one-line DataError at the first place `value` (at `path`) departs from `kind`."""
    subject = f"{where}: {path}" if path else where
    if isinstance(kind, Either):
        kind = next((option for option in kind.options if _fits(value, option)), kind)
    if not _fits(value, kind):
        raise DataError(f"{subject} is {json_type(value)}; it must be {describe(kind)}")
    if isinstance(kind, Text) and kind.choices and value not in kind.choices:
        shown = repr(value) if len(value) <= 40 else repr(value[:40]) + "..."
        raise DataError(f"{subject} is {shown}; it must be {_one_of(kind.choices)}")
    if isinstance(kind, Items):
        if len(value) < kind.min_items:
            raise DataError(
                f"{subject} is an empty list; it must hold at least one {kind.item.noun}"
            )
        for i, item in enumerate(value):
            check(item, kind.item, f"{path}[{i}]", where)
    if isinstance(kind, Obj):
        for spec in kind.fields:
            key, field_value = _field(value, spec)
            inner = f"{path}.{key or spec.name}" if path else key or spec.name
            if field_value is None and (key is None or not spec.required):
                if spec.required:
                    raise DataError(f"{where}: {inner} is missing; {_needs(kind)}")
                continue
            check(field_value, spec.kind, inner, where)
