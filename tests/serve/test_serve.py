"""`lmforge serve` through the official `openai` client: one server for the whole module, on a
tiny random-weight checkpoint; served tokens and logprobs are checked against the same model
run in this process (`generate`, as `lmforge sample` runs it, and a plain forward pass)."""

from __future__ import annotations

import asyncio
import sys
import threading

import httpx
import openai
import pytest
import torch
from conftest import assert_one_line_error
from serve_fixtures import (
    API_KEY,
    CONTEXT,
    Server,
    greedy_reference,
    reference,  # noqa: F401 (fixture)
    serve_checkpoint,  # noqa: F401 (fixture)
)

from lmforge.cli import main
from lmforge.inference.sample import encode_prompt
from lmforge.tokenizer.chat import encode_chat

MODEL = "tiny-chat"
PROMPTS = [
    "the quick brown fox",
    "def model",
    "alpha beta gamma delta while the lazy dog",
    "import",
    "self print for in if else return class the model tokens train loss step value",
    "a",
    "over the",
    "jumps over a lazy dog while",
]


@pytest.fixture(scope="module")
def server(serve_checkpoint):  # noqa: F811
    flags = ["--api_key", API_KEY, "--max_tokens_cap", "300", "--max_body_bytes", "65536"]
    running = Server(serve_checkpoint, *flags)
    yield running
    if running.process.poll() is None:  # the SIGTERM test (last in the module) did not run
        running.terminate()
    output = running.stop()
    assert "Traceback" not in output, output
    assert running.process.returncode == 0, output


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=60)


def raw_post(server, path: str, content: bytes, key: str | None = API_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=60)


def test_models_and_health(server, client):
    assert [model.id for model in client.models.list()] == [MODEL]
    assert httpx.get(f"{server.base}/health").json()["status"] == "ok"


def test_greedy_completion_matches_sample(client, reference):  # noqa: F811
    model, tokenizer = reference
    prompt_ids = encode_prompt(tokenizer, PROMPTS[0])
    response = client.completions.create(
        model=MODEL, prompt=PROMPTS[0], max_tokens=20, temperature=0
    )
    choice = response.choices[0]
    assert choice.text == greedy_reference(model, tokenizer, prompt_ids, 20)
    assert response.object == "text_completion"
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.total_tokens == len(prompt_ids) + response.usage.completion_tokens
    assert choice.finish_reason == ("length" if response.usage.completion_tokens == 20 else "stop")


def test_echo_logprobs_score_the_prompt(client, reference):  # noqa: F811
    """What lm-eval's local-completions sends to score a multiple-choice ending."""
    model, tokenizer = reference
    ids = encode_prompt(tokenizer, PROMPTS[2])
    response = client.completions.create(
        model=MODEL, prompt=[ids], max_tokens=1, temperature=0, logprobs=1, echo=True
    )
    logprobs = response.choices[0].logprobs
    with torch.no_grad():
        expected = model(torch.tensor([ids]))[0].log_softmax(-1)
    want = [float(expected[i, token]) for i, token in enumerate(ids[1:])]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert logprobs.token_logprobs[1 : len(ids)] == pytest.approx(want, abs=1e-4)
    assert len(logprobs.tokens) == len(ids) + 1  # the prompt, then the one generated token
    # lm-eval's is_greedy: the generated (greedy) token is its position's top alternative.
    assert max(logprobs.top_logprobs[-1].values()) == logprobs.token_logprobs[-1]
    assert response.choices[0].text.startswith(tokenizer.decode(ids))


def test_list_of_prompts_and_token_prompts(client, reference):  # noqa: F811
    _, tokenizer = reference
    texts = client.completions.create(model=MODEL, prompt=PROMPTS[:3], max_tokens=8, temperature=0)
    assert [c.index for c in texts.choices] == [0, 1, 2]
    ids = [encode_prompt(tokenizer, p) for p in PROMPTS[:3]]
    tokens = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    assert [c.text for c in tokens.choices] == [c.text for c in texts.choices]


def test_tokenizer_endpoints_use_the_served_tokenizer(server, reference):  # noqa: F811
    """vLLM's /tokenize, /detokenize and /tokenizer_info, which lm-eval's local-completions
    uses to tokenize with the server's own tokenizer."""
    _, tokenizer = reference
    headers = {"Authorization": f"Bearer {API_KEY}"}
    text = PROMPTS[2]
    plain = httpx.post(
        f"{server.base}/tokenize", json={"prompt": text, "add_special_tokens": False},
        headers=headers,
    ).json()  # fmt: skip
    assert plain["tokens"] == tokenizer.encode(text) and plain["max_model_len"] == CONTEXT
    marked = httpx.post(f"{server.base}/tokenize", json={"prompt": text}, headers=headers).json()
    assert marked["tokens"] == encode_prompt(tokenizer, text)
    special = httpx.post(
        f"{server.base}/tokenize", json={"prompt": "<|im_end|>", "add_special_tokens": False},
        headers=headers,
    ).json()  # fmt: skip
    assert special["tokens"] == [tokenizer.eot_id]
    back = httpx.post(
        f"{server.base}/detokenize", json={"tokens": plain["tokens"]}, headers=headers
    )
    assert back.json()["prompt"] == text
    info = httpx.get(f"{server.base}/tokenizer_info", headers=headers).json()
    assert info["eos_token"] == "<|im_end|>" and "<|im_start|>" in info["chat_template"]
    assert_openai_error(httpx.get(f"{server.base}/tokenizer_info"), 401)


def test_lm_eval_local_completions_is_a_client(server, reference, monkeypatch):  # noqa: F811
    """lm-evaluation-harness's own `local-completions` backend against the server (tokenizing
    through its /tokenize): loglikelihoods and greedy flags equal a forward pass here, and
    generate_until equals `sample`'s greedy text cut at the stop string."""
    pytest.importorskip(
        "lm_eval", reason="lm-eval is in the eval extra: pip install 'lmforge[eval]'"
    )
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    model, tokenizer = reference
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)  # what local-completions sends as Bearer
    lm = LocalCompletionsAPI(
        base_url=f"{server.url}/completions", model=MODEL, auth_token=API_KEY, batch_size=4,
        max_length=CONTEXT, max_retries=1,
    )  # fmt: skip
    assert lm.tokenizer_backend == "remote"
    pairs = [("the quick brown", " fox jumps"), ("def model", "(tokens): return"), ("a", " b")]
    requests = [
        Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(pairs)
    ]  # fmt: skip
    scores = lm.loglikelihood(requests, disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(pairs, scores, strict=True):
        whole = tokenizer.encode(context + continuation)
        start = len(tokenizer.encode(context))
        with torch.no_grad():
            logits = model(torch.tensor([whole]))[0].log_softmax(-1)
        targets = whole[start:]
        expected = sum(float(logits[start - 1 + i, t]) for i, t in enumerate(targets))
        assert logprob == pytest.approx(expected, abs=1e-3)
        assert greedy == all(
            int(logits[start - 1 + i].argmax()) == t for i, t in enumerate(targets)
        )
    context = PROMPTS[0]
    gen_kwargs = {"until": ["zzz"], "max_gen_toks": 12, "do_sample": False}
    (text,) = lm.generate_until([Instance("generate_until", {}, (context, gen_kwargs), 0)], True)
    assert text == greedy_reference(model, tokenizer, tokenizer.encode(context), 12)


def test_stop_string_cuts_the_text(client):
    full = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=24, temperature=0)
    text = full.choices[0].text
    stop = text[5:8]
    assert len(stop) == 3 and stop.strip(), text  # the test needs a visible stop string
    cut = client.completions.create(
        model=MODEL, prompt=PROMPTS[1], max_tokens=24, temperature=0, stop=[stop, "zzzz"]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_differs_by_seed(client):
    def sampled(seed: int) -> str:
        response = client.completions.create(
            model=MODEL, prompt=PROMPTS[0], max_tokens=16, temperature=1.0, top_p=0.9,
            seed=seed, extra_body={"top_k": 50},
        )  # fmt: skip
        return response.choices[0].text

    assert sampled(7) == sampled(7)
    assert len({sampled(seed) for seed in (1, 2, 3)}) > 1


def test_chat_plain_and_streamed(server, client, reference):  # noqa: F811
    model, tokenizer = reference
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the fox"}]
    expected = greedy_reference(model, tokenizer, encode_chat(tokenizer, messages), 24)
    plain = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=24, temperature=0
    )
    assert plain.choices[0].message.content == expected
    assert plain.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_stream_ends_with_done(server):
    body = b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], '
    body += b'"max_tokens": 4, "stream": true}'
    response = raw_post(server, "/chat/completions", body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_sixteen_concurrent_greedy_requests_match_alone(server):
    """Each greedy request returns the same tokens alone and batched with 15 others (prompts of
    different lengths, so rows are padded; different max_tokens, so rows leave the batch)."""
    prompts = [PROMPTS[i % len(PROMPTS)] + " the" * (i // len(PROMPTS)) for i in range(16)]
    lengths = [6 + (i % 5) * 4 for i in range(16)]
    client = openai.AsyncOpenAI(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120)

    async def one(prompt: str, max_tokens: int) -> str:
        response = await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0
        )
        return response.choices[0].text

    async def run() -> tuple[list[str], list[str]]:
        alone = [await one(p, n) for p, n in zip(prompts, lengths, strict=True)]
        together = await asyncio.gather(*(one(p, n) for p, n in zip(prompts, lengths, strict=True)))
        await client.close()
        return alone, list(together)

    alone, together = asyncio.run(run())
    assert together == alone
    assert httpx.get(f"{server.base}/health").json()["largest_batch"] > 4


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error


BAD_COMPLETIONS = {
    "malformed JSON": (b'{"model": "tiny-chat", "prompt": ', 400, None),
    "not an object": (b'["tiny-chat"]', 400, None),
    "missing prompt": (b'{"model": "tiny-chat"}', 400, "prompt"),
    "missing model": (b'{"prompt": "hi"}', 400, "model"),
    "unknown model": (b'{"model": "gpt-4", "prompt": "hi"}', 404, "model"),
    "max_tokens 0": (b'{"model": "tiny-chat", "prompt": "hi", "max_tokens": 0}', 400, "max_tokens"),
    "max_tokens over context": (
        b'{"model": "tiny-chat", "prompt": "hi", "max_tokens": %d}' % (CONTEXT + 1),
        400,
        "max_tokens",
    ),
    "max_tokens over the cap": (
        b'{"model": "tiny-chat", "prompt": "hi", "max_tokens": 301}',
        400,
        "max_tokens",
    ),
    "empty prompt": (b'{"model": "tiny-chat", "prompt": ""}', 400, "prompt"),
    "empty prompt list": (b'{"model": "tiny-chat", "prompt": []}', 400, "prompt"),
    "top_p above 1": (b'{"model": "tiny-chat", "prompt": "hi", "top_p": 1.5}', 400, "top_p"),
    "top_p 0": (b'{"model": "tiny-chat", "prompt": "hi", "top_p": 0}', 400, "top_p"),
    "negative temperature": (
        b'{"model": "tiny-chat", "prompt": "hi", "temperature": -1}',
        400,
        "temperature",
    ),
    "prompt too long": (
        b'{"model": "tiny-chat", "prompt": "%s", "max_tokens": 16}' % (b"fox " * CONTEXT),
        400,
        "prompt",
    ),
    "token id out of vocab": (b'{"model": "tiny-chat", "prompt": [5, 99999]}', 400, "prompt"),
    "body too large": (b'{"model": "tiny-chat", "prompt": "%s"}' % (b"x" * 70000), 413, None),
}


@pytest.mark.parametrize("case", BAD_COMPLETIONS)
def test_bad_completion_requests_get_openai_errors(server, case):
    body, status, param = BAD_COMPLETIONS[case]
    assert_openai_error(raw_post(server, "/completions", body), status, param)


BAD_CHATS = {
    "no messages": (b'{"model": "tiny-chat", "messages": []}', "messages"),
    "unknown role": (
        b'{"model": "tiny-chat", "messages": [{"role": "x", "content": "a"}]}',
        "messages",
    ),
    "max_tokens 0": (
        b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "a"}], "max_tokens": 0}',
        "max_tokens",
    ),
}


@pytest.mark.parametrize("case", BAD_CHATS)
def test_bad_chat_requests_get_openai_errors(server, case):
    body, param = BAD_CHATS[case]
    assert_openai_error(raw_post(server, "/chat/completions", body), 400, param)


def test_client_raises_typed_errors_and_server_stays_up(server, client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model=MODEL, prompt="fox " * CONTEXT, max_tokens=4)
    assert client.completions.create(model=MODEL, prompt="hi", max_tokens=2).choices[0].text


def test_api_key_is_required_on_v1(server):
    wrong = openai.OpenAI(base_url=server.url, api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert_openai_error(httpx.get(f"{server.url}/models"), 401)
    assert_openai_error(raw_post(server, "/completions", b"{}", key=None), 401)
    assert httpx.get(f"{server.base}/health").status_code == 200  # health checks need no key


def test_public_host_needs_an_api_key(serve_checkpoint, capsys, monkeypatch):  # noqa: F811
    monkeypatch.delenv("LMFORGE_API_KEY", raising=False)
    code = main(["serve", "--checkpoint", str(serve_checkpoint), "--host", "0.0.0.0"])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "--host 0.0.0.0", "--api_key")


def test_missing_extra_is_one_line(serve_checkpoint, capsys, monkeypatch):  # noqa: F811
    monkeypatch.delitem(sys.modules, "lmforge.serve.server", raising=False)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if lmforge[serve] were not installed
    code = main(["serve", "--checkpoint", str(serve_checkpoint)])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "uvicorn", "pip install 'lmforge[serve]'")


# Keep this test last: it shuts the module's server down.
def test_sigterm_finishes_in_flight_requests_then_exits_0(server, client):
    stream = client.completions.create(
        model=MODEL, prompt=[[5, 6, 7]] * 4, max_tokens=290, temperature=0,
        stream=True,
    )  # fmt: skip
    chunks = iter(stream)
    first = next(chunks)  # the request is being decoded
    finished = threading.Event()
    rest: list = []

    def drain() -> None:
        rest.extend(chunks)
        finished.set()

    reader = threading.Thread(target=drain)
    reader.start()
    server.terminate()
    refused = None
    for _ in range(100):  # the signal lands asynchronously; wait for the drain to start
        refused = httpx.get(f"{server.base}/health", timeout=10)
        if refused.status_code == 503:
            break
    in_flight_when_refused = not finished.is_set()
    reader.join(timeout=120)
    output = server.stop(timeout=60)
    assert refused is not None and refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "shutting_down"
    assert in_flight_when_refused, "the stream ended before the 503 (make it longer)"
    reasons = [c.choices[0].finish_reason for c in [first, *rest] if c.choices]
    assert sum(r is not None for r in reasons) == 4  # every row of the request finished
    assert server.process.returncode == 0, output
    assert "Traceback" not in output, output
