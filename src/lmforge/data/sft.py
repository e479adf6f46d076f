"""Conversations -> token ids with labels on the assistant's tokens only, and packing.

A conversation is rendered through the chat template piece by piece: the template applied to the
messages before each assistant turn (with the generation prompt) is a prefix of the template
applied through that turn, so the text splits into prompt pieces and reply pieces. Each piece is
tokenized on its own (their markers, e.g. <|im_start|>, are special tokens, so this matches
tokenizing the whole), and a reply piece is labelled up to and including its end-of-turn token
(the model must learn to stop); the template's text after it (a newline) is not. Every other
token gets the label IGNORE (-100).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.chat import BUILTIN_TEMPLATES, render_chat

IGNORE = -100


@dataclass
class Example:
    ids: list[int]
    labels: list[int]
    """ids where the loss applies, IGNORE elsewhere (same length as ids)."""


def _token_text(tokenizer: Tokenizer, token_id: int | None) -> str:
    return "" if token_id is None else tokenizer.decode([token_id], skip_special=False)


def resolve_chat_template(tokenizer: Tokenizer, template: str | None) -> str:
    template = template or tokenizer.chat_template
    if not template:
        raise ConfigError(
            f"the {tokenizer.kind} tokenizer has no chat template; set finetune.template to a "
            f"Jinja template or a built-in one ({', '.join(BUILTIN_TEMPLATES)})"
        )
    return template


def tokenize_conversation(
    tokenizer: Tokenizer, messages: list[dict], template: str, where: str, last_only: bool = False
) -> Example:
    """ids and labels of a conversation; labels on every assistant turn (or only the last)."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise DataError(
            f"{where} has no assistant turn, so there is nothing to learn; drop it or add a reply"
        )
    if last_only:
        turns = turns[-1:]
    bos, eos = _token_text(tokenizer, tokenizer.bos_id), _token_text(tokenizer, tokenizer.eot_id)

    def render(upto: int, prompt: bool) -> str:
        return render_chat(template, messages[:upto], prompt, bos, eos)

    pieces: list[tuple[str, bool]] = []  # (text, is a reply)
    done = ""
    for i in turns:
        before, through = render(i, True), render(i + 1, False)
        if not (before.startswith(done) and through.startswith(before)):
            raise DataError(
                f"{where}: the chat template does not render this conversation turn by turn "
                "(an earlier rendering is not a prefix of a later one); use another template"
            )
        pieces += [(before[len(done) :], False), (through[len(before) :], True)]
        done = through
    whole = render(len(messages), False)
    if not whole.startswith(done):
        raise DataError(
            f"{where}: the chat template does not render this conversation turn by turn"
        )
    pieces.append((whole[len(done) :], False))

    ids: list[int] = []
    labels: list[int] = []
    if tokenizer.add_bos and tokenizer.bos_id is not None and not (bos and whole.startswith(bos)):
        ids, labels = [tokenizer.bos_id], [IGNORE]
    stops = set(tokenizer.stop_ids)
    for text, is_reply in pieces:
        piece = tokenizer.encode(text, allow_special=True) if text else []
        keep = 0
        if is_reply:
            ends = [j for j, t in enumerate(piece) if t in stops]
            keep = ends[-1] + 1 if ends else len(piece)
        ids += piece
        labels += piece[:keep] + [IGNORE] * (len(piece) - keep)
    return Example(ids, labels)


@dataclass
class Row:
    """One training row: inputs and targets (next-token labels), with the document layout."""

    inputs: list[int]
    targets: list[int]
    document_ids: list[int]
    positions: list[int]


def fit(example: Example, seq_len: int) -> Example | None:
    """Cut to seq_len + 1 tokens (seq_len positions); None when no label is left to predict."""
    ids, labels = example.ids[: seq_len + 1], example.labels[: seq_len + 1]
    if all(label == IGNORE for label in labels[1:]):
        return None
    return Example(ids, labels)


def shift(example: Example, document: int = 0) -> Row:
    n = len(example.ids) - 1
    return Row(example.ids[:-1], example.labels[1:], [document] * n, list(range(n)))


def pack(examples: list[Example], seq_len: int, pad_id: int) -> list[Row]:
    """Greedy in-order packing into rows of exactly seq_len positions; each example is its own
    document (attends only to itself, positions from 0), targets never cross examples."""
    rows: list[Row] = []
    current = Row([], [], [], [])
    for example in examples:
        row = shift(example, document=len(set(current.document_ids)))
        if current.inputs and len(current.inputs) + len(row.inputs) > seq_len:
            rows.append(current)
            row = shift(example, document=0)
            current = Row([], [], [], [])
        current.inputs += row.inputs
        current.targets += row.targets
        current.document_ids += row.document_ids
        current.positions += row.positions
    if current.inputs:
        rows.append(current)
    for row in rows:  # the padding is a document of its own, with nothing to predict
        missing = seq_len - len(row.inputs)
        pad_document = row.document_ids[-1] + 1
        row.inputs += [pad_id] * missing
        row.targets += [IGNORE] * missing
        row.document_ids += [pad_document] * missing
        row.positions += list(range(missing))
    return rows
