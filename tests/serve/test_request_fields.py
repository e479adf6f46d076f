"""Every OpenAI request field has an answer (docs/serve.md's table): the implemented ones work,
the metadata ones are accepted, and the rest are a 400 whose `param` names the field. In-process
(the app on a TestClient), on the tiny random-weight checkpoint."""

from __future__ import annotations

import pytest
import torch
from serve_fixtures import (
    app_client,  # noqa: F401 (fixture)
    reference,  # noqa: F401 (fixture)
    serve_checkpoint,  # noqa: F401 (fixture)
)

from lmforge.inference.sample import encode_prompt

MODEL = "tiny-chat"
USER = [{"role": "user", "content": "the fox"}]


def complete(client, **fields) -> dict:
    response = client.post("/v1/completions", json={"model": MODEL, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def chat(client, **fields) -> dict:
    body = {"model": MODEL, "messages": USER, "max_tokens": 6, **fields}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_n_choices_are_indexed_like_openai_and_seeded_per_choice(app_client):  # noqa: F811
    fields = {"prompt": ["the quick", "def model"], "max_tokens": 8, "temperature": 1.0}
    first = complete(app_client, n=3, seed=11, **fields)
    assert [c["index"] for c in first["choices"]] == list(range(6))
    assert complete(app_client, n=3, seed=11, **fields)["choices"] == first["choices"]
    texts = [c["text"] for c in first["choices"]]
    assert len(set(texts[:3])) > 1  # one prompt's choices differ (seed + j)
    # Choice j of seed s is what a single request with seed s + j returns.
    alone = complete(app_client, prompt="def model", max_tokens=8, temperature=1.0, seed=12)
    assert alone["choices"][0]["text"] == texts[4]
    assert first["usage"]["completion_tokens"] <= 6 * 8


def test_best_of_returns_the_candidates_with_the_highest_mean_logprob(app_client):  # noqa: F811
    fields = {"prompt": "the quick", "max_tokens": 6, "temperature": 1.0, "logprobs": 0}
    candidates = complete(app_client, n=5, seed=3, **fields)["choices"]

    def mean(choice: dict) -> float:
        scores = choice["logprobs"]["token_logprobs"]
        return sum(scores) / len(scores)

    best = sorted(candidates, key=mean, reverse=True)[:2]
    chosen = complete(app_client, n=2, best_of=5, seed=3, **fields)
    assert [c["text"] for c in chosen["choices"]] == [c["text"] for c in best]
    assert [c["index"] for c in chosen["choices"]] == [0, 1]
    plain = complete(app_client, n=1, best_of=5, seed=3, **{**fields, "logprobs": None})
    assert plain["choices"][0]["logprobs"] is None  # ranked by logprobs, not shown unasked
    assert plain["choices"][0]["text"] == best[0]["text"]


def test_chat_n_and_logprobs(app_client, reference):  # noqa: F811
    model, tokenizer = reference
    response = chat(app_client, n=2, temperature=0, logprobs=True, top_logprobs=3)
    assert [c["index"] for c in response["choices"]] == [0, 1]
    first = response["choices"][0]
    entries = first["logprobs"]["content"]
    assert "".join(e["token"] for e in entries) == first["message"]["content"]
    assert all(len(e["top_logprobs"]) == 3 for e in entries)
    assert entries[0]["top_logprobs"][0]["logprob"] == pytest.approx(entries[0]["logprob"])
    from lmforge.tokenizer.chat import encode_chat

    ids = encode_chat(tokenizer, USER)
    with torch.no_grad():
        expected = model(torch.tensor([ids]))[0, -1].log_softmax(-1).max()
    assert entries[0]["logprob"] == pytest.approx(float(expected), abs=1e-4)


def test_streamed_logprobs_and_n(app_client):  # noqa: F811
    fields = {"prompt": "the quick", "max_tokens": 5, "temperature": 0, "logprobs": 1}
    plain = complete(app_client, **fields)["choices"][0]["logprobs"]
    body = {"model": MODEL, "stream": True, **fields}
    events = app_client.post("/v1/completions", json=body).text.split("\n\n")
    import json

    chunks = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    streamed = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]]
    assert sum((s["token_logprobs"] for s in streamed), []) == plain["token_logprobs"]
    assert sum((s["text_offset"] for s in streamed), []) == plain["text_offset"]
    body = {"model": MODEL, "messages": USER, "max_tokens": 3, "n": 2, "stream": True}
    text = app_client.post("/v1/chat/completions", json=body).text
    assert '"index": 1' in text and text.endswith("data: [DONE]\n\n")


def test_metadata_and_neutral_values_are_accepted(app_client):  # noqa: F811
    plain = chat(app_client, temperature=0)["choices"][0]["message"]["content"]
    with_metadata = chat(
        app_client, temperature=0, user="u-1", metadata={"team": "a"}, store=False,
        service_tier="auto", response_format={"type": "text"}, tools=[], tool_choice="none",
        parallel_tool_calls=False, functions=[], function_call="none", modalities=["text"],
        max_completion_tokens=6, presence_penalty=0, frequency_penalty=0, logit_bias={},
    )  # fmt: skip
    assert with_metadata["choices"][0]["message"]["content"] == plain
    complete(app_client, prompt="a", max_tokens=2, user="u", suffix="", best_of=1)


def test_lm_eval_payloads_are_accepted(app_client, reference):  # noqa: F811
    """What lm-eval's LocalCompletionsAPI and LocalChatCompletion send (their _create_payload):
    the strict field check must not refuse them."""
    _, tokenizer = reference
    ids = encode_prompt(tokenizer, "the quick brown")
    scoring = {"prompt": [ids], "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234}
    complete(app_client, echo=True, **scoring)
    generate = {"prompt": ["def model"], "max_tokens": 4, "temperature": 0, "stop": ["\n\n"]}
    complete(app_client, seed=1234, **generate)
    chat(app_client, temperature=0, stop=["<|im_end|>"], seed=1234)


REFUSED = {
    "/v1/completions": {
        "suffix": "x",
        "best_of": 0,
        "logit_bias": {"99999": 1},
        "presence_penalty": 2.5,
        "frequency_penalty": -3,
        "n": 129,
        "stream_options": {"include_usage": True},
        "top_k": 1.5,
        "repetition_penalty": 1.1,
        "min_p": 0.1,
    },
    "/v1/chat/completions": {
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto",
        "functions": [{"name": "f"}],
        "function_call": "auto",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
        "reasoning_effort": "low",
        "prediction": {"type": "content", "content": "x"},
        "audio": {"voice": "alloy", "format": "wav"},
        "modalities": ["text", "audio"],
        "web_search_options": {},
        "store": True,
        "service_tier": "flex",
        "top_logprobs": 2,
        "logprobs": "yes",
    },
}


@pytest.mark.parametrize(
    "path, field", [(path, field) for path, fields in REFUSED.items() for field in fields]
)
def test_refused_fields_are_400s_naming_the_field(app_client, path, field):  # noqa: F811
    base = {"model": MODEL, "prompt": "hi"} if "chat" not in path else {"model": MODEL}
    base |= {"messages": USER} if "chat" in path else {}
    response = app_client.post(path, json={**base, field: REFUSED[path][field]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_best_of_rules(app_client):  # noqa: F811
    for fields, param in [
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"n": 1, "best_of": 2, "stream": True}, "best_of"),
    ]:
        body = {"model": MODEL, "prompt": "hi", **fields}
        error = app_client.post("/v1/completions", json=body).json()["error"]
        assert error["param"] == param, error


def test_message_fields_the_template_cannot_render_are_refused(app_client):  # noqa: F811
    for extra in ({"name": "bob"}, {"tool_calls": [{"id": "1"}]}, {"tool_call_id": "1"}):
        messages = [{"role": "user", "content": "hi", **extra}]
        body = {"model": MODEL, "messages": messages}
        response = app_client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
        assert next(iter(extra)) in response.json()["error"]["message"]
