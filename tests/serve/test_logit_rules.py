"""OpenAI's presence and frequency penalties and logit_bias (serve/logit_rules.py): against a
hand computation, and served greedily against the same rules applied in a plain decoding loop."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from serve_fixtures import (
    app_client,  # noqa: F401 (fixture)
    reference,  # noqa: F401 (fixture)
    serve_checkpoint,  # noqa: F401 (fixture)
)

from lmforge.inference.sample import encode_prompt
from lmforge.serve.logit_rules import adjust_logits, needs_adjusting


@dataclass
class Rules:
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None


def test_penalties_and_bias_by_hand():
    logits = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    rules = Rules(presence_penalty=0.5, frequency_penalty=0.25, logit_bias={0: 10.0, 4: -100.0})
    generated = [2, 2, 3, 2]  # token 2 three times, token 3 once
    # token 2: 3 - 0.5 - 0.25 * 3 = 1.75; token 3: 4 - 0.5 - 0.25 = 3.25; biases on 0 and 4.
    expected = torch.tensor([11.0, 2.0, 1.75, 3.25, -95.0])
    adjusted = adjust_logits(logits, rules, generated)
    assert torch.allclose(adjusted, expected)
    assert torch.equal(logits, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))  # the input is untouched


def test_negative_penalties_favour_repeats_and_nothing_set_is_a_no_op():
    logits = torch.zeros(4)
    adjusted = adjust_logits(logits, Rules(presence_penalty=-1, frequency_penalty=-2), [1, 1])
    assert adjusted.tolist() == [0.0, 5.0, 0.0, 0.0]
    assert not needs_adjusting(Rules())
    assert adjust_logits(logits, Rules(), [1, 2]) is logits  # the fast path allocates nothing


def greedy_with_rules(model, prompt: list[int], steps: int, rules: Rules) -> list[int]:
    """A plain decoding loop (full forward pass each step) applying the rules by hand."""
    ids: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([prompt + ids]))[0, -1].float()
            ids.append(int(adjust_logits(logits, rules, ids).argmax()))
    return ids


def until_stop(ids: list[int], tokenizer) -> list[int]:
    stops = [i for i, token in enumerate(ids) if token in tokenizer.stop_ids]
    return ids[: stops[0]] if stops else ids


@pytest.mark.parametrize(
    "rules",
    [Rules(frequency_penalty=2.0), Rules(presence_penalty=1.5), Rules(logit_bias={7: 6.0})],
    ids=["frequency", "presence", "bias"],
)
def test_served_greedy_tokens_follow_the_rules(app_client, reference, rules):  # noqa: F811
    model, tokenizer = reference
    prompt = encode_prompt(tokenizer, "the quick brown fox")
    expected = greedy_with_rules(model, prompt, 24, rules)
    plain = greedy_with_rules(model, prompt, 24, Rules())
    # the rules change the served text (else the test proves nothing)
    assert until_stop(expected, tokenizer) != until_stop(plain, tokenizer)
    body = {
        "model": "tiny-chat", "prompt": [prompt], "max_tokens": 24, "temperature": 0,
        "logprobs": 0, "presence_penalty": rules.presence_penalty,
        "frequency_penalty": rules.frequency_penalty,
        "logit_bias": {str(t): b for t, b in (rules.logit_bias or {}).items()},
    }  # fmt: skip
    choice = app_client.post("/v1/completions", json=body).json()["choices"][0]
    assert choice["text"] == tokenizer.decode(until_stop(expected, tokenizer))
    # The logprobs are the model's own, not the adjusted ones.
    with torch.no_grad():
        raw = model(torch.tensor([prompt + expected[:1]]))[0].float().log_softmax(-1)
    assert choice["logprobs"]["token_logprobs"][0] == pytest.approx(
        float(raw[len(prompt) - 1, expected[0]]), abs=1e-4
    )
