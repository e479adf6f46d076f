"""The hostile-request grid: every request field of both endpoints, sent each JSON type it does
not take, out-of-range and huge values, gets a 4xx in OpenAI's error shape whose `param` names
the field; the values a field does take get a 200. In-process (the app on a TestClient): the
connection-level half (a good request on the same socket after each bad one) is in
test_keep_alive.py."""

from __future__ import annotations

import pytest
from serve_fixtures import (
    app_client,  # noqa: F401 (fixture)
    reference,  # noqa: F401 (fixture)
    serve_checkpoint,  # noqa: F401 (fixture)
)

MODEL = "tiny-chat"
COMPLETION = {"model": MODEL, "prompt": "the fox", "max_tokens": 2}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

# Raw JSON text for each kind of value, so that 1e309 (infinity once parsed) goes as sent.
KINDS = {
    "list": "[1]",
    "dict": '{"a": 1}',
    "int": "7",
    "float": "0.5",
    "string": '"x"',
    "null": "null",
    "bool": "true",
    "negative": "-1",
    "huge number": "1" + "0" * 30,
    "1e309": "1e309",
    "long string": '"' + "x" * 50_000 + '"',
    "huge list": "[" + ",".join(["1"] * 20_000) + "]",
}

# Per field, the kinds it takes (a 200); every other kind must be a 4xx naming the field.
SHARED = {
    "model": set(),
    "max_tokens": {"int", "null"},
    "temperature": {"float", "null"},
    "top_p": {"float", "null"},
    "top_k": {"int", "negative", "null"},
    "stop": {"string", "null"},
    "seed": {"int", "negative", "null"},
    "n": {"int", "null"},
    "stream": {"bool", "null"},
    "stream_options": {"null"},  # a dict here lacks stream true or has an unknown key
    "presence_penalty": {"float", "negative", "null"},
    "frequency_penalty": {"float", "negative", "null"},
    "logit_bias": {"null"},
    "user": {"string", "null"},
}
COMPLETION_FIELDS = SHARED | {
    "prompt": {"string", "list"},
    "suffix": {"null"},
    "echo": {"bool", "null"},
    "logprobs": {"int", "null"},
    "best_of": {"int", "null"},
}
CHAT_FIELDS = SHARED | {
    "messages": set(),
    "max_completion_tokens": {"int", "null"},
    "logprobs": {"bool", "null"},
    "top_logprobs": {"null"},  # needs logprobs true
    "store": {"null"},  # true asks to store
    "metadata": {"null"},
    "service_tier": {"null"},
    "parallel_tool_calls": {"bool", "null"},
    "modalities": {"null"},
    "response_format": {"null"},
    "tools": {"null"},
    "tool_choice": {"null"},
    "functions": {"null"},
    "function_call": {"null"},
    "reasoning_effort": {"null"},
    "prediction": {"null"},
    "audio": {"null"},
    "web_search_options": {"null"},
}
CASES = [("/v1/completions", f) for f in COMPLETION_FIELDS] + [
    ("/v1/chat/completions", f) for f in CHAT_FIELDS
]


def with_field(base: dict, field: str, raw_value: str) -> bytes:
    """`base` as JSON with `field` set to the raw JSON text `raw_value`."""
    import json

    rest = {k: v for k, v in base.items() if k != field}
    return json.dumps(rest)[:-1].encode() + f', "{field}": {raw_value}}}'.encode()


@pytest.mark.parametrize("path, field", CASES, ids=[f"{p.split('/')[-2]}-{f}" for p, f in CASES])
def test_every_field_refuses_what_it_does_not_take(app_client, path, field):  # noqa: F811
    base = CHAT if "chat" in path else COMPLETION
    takes = (CHAT_FIELDS if "chat" in path else COMPLETION_FIELDS)[field]
    wrong = []
    for kind, raw in KINDS.items():
        response = app_client.post(path, content=with_field(base, field, raw))
        if kind in takes:
            if response.status_code != 200:
                wrong.append(f"{kind}: {response.status_code} {response.text[:200]}")
            continue
        error = response.json().get("error") if response.status_code != 200 else None
        ok = 400 <= response.status_code < 500 and error is not None
        if not ok or set(error) != {"message", "type", "param", "code"} or error["param"] != field:
            wrong.append(f"{kind}: {response.status_code} {response.text[:200]}")
    assert not wrong, "\n".join(wrong)
    assert app_client.post(path, json=base).status_code == 200  # and the server still answers


def test_the_grid_covers_every_field_of_the_request_models():
    from lmforge.serve.protocol import ChatCompletionRequest, CompletionRequest

    assert set(COMPLETION_FIELDS) == set(CompletionRequest.model_fields)
    assert set(CHAT_FIELDS) == set(ChatCompletionRequest.model_fields)
