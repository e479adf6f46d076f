"""SFT data: record formats (detection, override, errors), labels on assistant tokens only
(exact ids), multi-turn conversations, packing with per-example documents, the example loader."""

from __future__ import annotations

import gzip
import json

import pytest
from finetune_fixtures import tiny_tokenizer, write_json, write_jsonl

from lmforge.data.chat_records import load_conversations, load_pairs, parse_transcript
from lmforge.data.example_loader import ExampleLoader
from lmforge.data.sft import IGNORE, Example, fit, pack, tokenize_conversation
from lmforge.errors import DataError

CHATML = "chatml"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def labelled(example: Example) -> list[int]:
    return [label for label in example.labels if label != IGNORE]


def test_labels_are_exactly_the_reply_and_its_end_of_turn(tokenizer):
    messages = [{"role": "user", "content": "hi fox"}, {"role": "assistant", "content": "the dog"}]
    example = tokenize_conversation(tokenizer, messages, CHATML, "example")
    prompt = tokenizer.encode("<|im_start|>user\nhi fox<|im_end|>\n<|im_start|>assistant\n", True)
    reply = tokenizer.encode("the dog", True)
    end, newline = tokenizer.encode("<|im_end|>", True), tokenizer.encode("\n", True)
    assert end == [tokenizer.eot_id]
    assert example.ids == prompt + reply + end + newline
    assert example.labels == [IGNORE] * len(prompt) + reply + end + [IGNORE] * len(newline)
    # Tokenizing piece by piece gives the same ids as tokenizing the whole rendering.
    whole = "<|im_start|>user\nhi fox<|im_end|>\n<|im_start|>assistant\nthe dog<|im_end|>\n"
    assert example.ids == tokenizer.encode(whole, allow_special=True)
    assert tokenizer.decode(labelled(example), skip_special=False) == "the dog<|im_end|>"


def test_multi_turn_labels_every_assistant_turn_and_no_user_turn(tokenizer):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "fox"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "dog"},
        {"role": "user", "content": "three"},  # a trailing question without a reply: no loss
    ]
    example = tokenize_conversation(tokenizer, messages, CHATML, "example")
    text = tokenizer.decode(labelled(example), skip_special=False)
    assert text == "fox<|im_end|>dog<|im_end|>"
    last = tokenize_conversation(tokenizer, messages, CHATML, "example", last_only=True)
    assert tokenizer.decode(labelled(last), skip_special=False) == "dog<|im_end|>"


def test_alpaca_template_labels_response_and_eos(tokenizer):
    messages = [{"role": "user", "content": "name a fox"}, {"role": "assistant", "content": "red"}]
    example = tokenize_conversation(tokenizer, messages, "alpaca", "example")
    assert tokenizer.decode(labelled(example), skip_special=False) == "red<|im_end|>"
    assert "### Instruction" in tokenizer.decode(example.ids, skip_special=False)


def test_formats_are_detected_and_agree(tmp_path):
    expected = [
        {"role": "user", "content": "Say hi.\n\nto me"},
        {"role": "assistant", "content": "hi"},
    ]
    alpaca = write_json(
        tmp_path / "a.json", [{"instruction": "Say hi.", "input": "to me", "output": "hi"}]
    )
    parts = [{"type": "text", "value": "Say hi.\n\nto me"}]
    messages = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": parts},
                    {"role": "assistant", "content": "hi"},
                ]
            }
        ],
    )
    sharegpt = write_json(
        tmp_path / "s.json",
        [
            {
                "conversations": [
                    {"from": "human", "value": "Say hi.\n\nto me"},
                    {"from": "gpt", "value": "hi"},
                ]
            }
        ],
    )
    for path in (alpaca, messages, sharegpt):
        assert load_conversations(str(path), "auto") == [expected]
    assert load_conversations(str(alpaca), "alpaca") == [expected]


def test_preference_formats(tmp_path):
    hh = tmp_path / "hh.jsonl.gz"
    with gzip.open(hh, "wt") as handle:
        handle.write(json.dumps({
            "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: bye!",
            "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: no",
        }) + "\n")  # fmt: skip
    ((chosen, rejected),) = load_pairs(str(hh), "auto")
    assert [m["role"] for m in chosen] == ["user", "assistant", "user", "assistant"]
    assert chosen[-1]["content"] == "bye!" and rejected[-1]["content"] == "no"
    assert chosen[:-1] == rejected[:-1]
    pairs = write_json(
        tmp_path / "p.json",
        [{"conversations": [{"from": "human", "value": "q"}],
          "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}],
    )  # fmt: skip
    ((chosen, rejected),) = load_pairs(str(pairs), "auto")
    assert chosen == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}]
    assert rejected[-1] == {"role": "assistant", "content": "bad"}
    messages = write_jsonl(
        tmp_path / "mp.jsonl",
        [{"chosen_messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
          "rejected_messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}],
    )  # fmt: skip
    assert load_pairs(str(messages), "auto")[0][1][-1]["content"] == "b"
    assert parse_transcript("\n\nHuman: a\n\nAssistant: b", "x")[1] == {
        "role": "assistant",
        "content": "b",
    }


def test_unknown_format_names_the_supported_ones(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(DataError, match="unknown data format.*alpaca.*messages.*sharegpt"):
        load_conversations(str(path), "auto")


def test_conversation_without_assistant_turn_is_an_error(tokenizer):
    with pytest.raises(DataError, match="record 3 has no assistant turn"):
        tokenize_conversation(tokenizer, [{"role": "user", "content": "hi"}], CHATML, "f record 3")


def test_fit_truncates_and_drops_examples_without_labels():
    example = Example(list(range(10)), [IGNORE] * 6 + [6, 7, 8, 9])
    assert fit(example, 8).ids == list(range(9))
    assert fit(example, 5) is None  # the reply starts after the window


def test_packing_keeps_examples_apart():
    a = Example([1, 2, 3, 4], [IGNORE, IGNORE, 3, 4])
    b = Example([5, 6, 7], [IGNORE, 6, 7])
    c = Example([8, 9, 10, 11, 12], [IGNORE, IGNORE, IGNORE, 11, 12])
    rows = pack([a, b, c], seq_len=6, pad_id=0)
    assert len(rows) == 2
    first = rows[0]
    assert first.inputs == [1, 2, 3, 5, 6, 0]
    # No target crosses from one example into the next; padding predicts nothing.
    assert first.targets == [IGNORE, 3, 4, 6, 7, IGNORE]
    assert first.document_ids == [0, 0, 0, 1, 1, 2]
    assert first.positions == [0, 1, 2, 0, 1, 0]
    assert rows[1].inputs == [8, 9, 10, 11, 0, 0]
    assert rows[1].targets == [IGNORE, IGNORE, 11, 12, IGNORE, IGNORE]


def test_example_loader_ranks_partition_the_global_batch():
    def collate(items):
        import torch

        return (torch.tensor(items),)

    items = list(range(10))
    single = ExampleLoader(items, collate, batch_size=2, seed=3)
    ranks = [ExampleLoader(items, collate, 2, 3, rank=r, world_size=2) for r in range(2)]
    for _ in range(7):  # crosses epochs (reshuffled per epoch)
        expected = single.next()[0].tolist() + single.next()[0].tolist()
        assert ranks[0].next()[0].tolist() + ranks[1].next()[0].tolist() == expected
    resumed = ExampleLoader(items, collate, 2, 3)
    resumed.load_state_dict(single.state_dict())
    assert resumed.next()[0].tolist() == single.next()[0].tolist()
    val = ExampleLoader(items, collate, 4, 3, shuffle=False)
    assert val.num_batches == 3 and val.batch_at(2)[0].tolist() == [8, 9]
