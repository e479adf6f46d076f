"""The chat page at `/`, in headless Chromium against a real `lmforge serve` with an API key.

The served checkpoint is the tiny random model with its end-of-turn logits zeroed: greedy
decoding then never ends a reply early, so a reply runs to max_tokens, long enough to stop.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
import torch
from browser_fixtures import browser, page  # noqa: F401 (fixtures)
from serve_fixtures import API_KEY, Server, random_model, tiny_tokenizer

from lmforge.checkpoint.directory import save_checkpoint

MODEL = "tiny-chat"
REPLIES = ".msg.assistant:not(.streaming)"
# Records the last reply's length at each DOM change: the proof that it grew chunk by chunk.
WATCH_GROWTH = """() => {
    window.lengths = [];
    new MutationObserver(() => {
        const replies = document.querySelectorAll('.msg.assistant');
        if (replies.length) window.lengths.push(replies[replies.length - 1].textContent.length);
    }).observe(document.getElementById('transcript'),
               {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tokenizer = tiny_tokenizer()
    model = random_model(tokenizer.vocab_size, context_length=2048)
    with torch.no_grad():
        model.lm_head.weight[list(tokenizer.stop_ids)] = 0
    directory = save_checkpoint(
        tmp_path_factory.mktemp("chat-page") / MODEL, model, tokenizer, {"step": 0}
    )
    running = Server(directory, "--api_key", API_KEY)
    yield running
    running.terminate()
    output = running.stop()
    assert "Traceback" not in output, output


def open_chat(page, server, key: str | None = API_KEY, temperature=0, max_tokens=16) -> None:  # noqa: F811
    page.goto(f"{server.base}/")
    if key is not None:
        page.fill("#api-key", key)
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector(f"#model:has-text('{MODEL}')")
    page.fill("#temperature", str(temperature))
    page.fill("#max-tokens", str(max_tokens))


def send(page, text: str) -> None:  # noqa: F811
    """Type a message, press Enter, and wait for the reply to finish (or be stopped)."""
    done = page.locator(REPLIES).count() + 1
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    # arrow functions: a bare expression would be eval'd, which the page's CSP forbids
    page.wait_for_function(
        f"() => document.querySelectorAll('{REPLIES}').length === {done}"
        " && document.body.dataset.state === 'ready'"
    )


def chat_bodies(page) -> list[dict]:  # noqa: F811
    """The JSON bodies (and Authorization headers) the page posts to /v1/chat/completions."""
    bodies: list[dict] = []

    def record(request) -> None:
        if request.url.endswith("/v1/chat/completions"):
            bodies.append(
                json.loads(request.post_data) | {"auth": request.headers.get("authorization")}
            )

    page.on("request", record)
    return bodies


def in_flight(server) -> int:
    return httpx.get(f"{server.base}/health").json()["in_flight"]


def test_page_loads_without_the_key_and_the_api_still_needs_it(server):
    html = httpx.get(f"{server.base}/")
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    policy = html.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "connect-src 'self'" in policy and "default-src 'none'" in policy
    script = httpx.get(f"{server.base}/chat.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert httpx.get(f"{server.base}/chat.css").status_code == 200
    assert httpx.get(f"{server.url}/models").status_code == 401
    assert httpx.post(f"{server.base}/", content=b"{}").status_code == 401  # only GET is open
    headers = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(f"{server.url}/models", headers=headers).status_code == 200


def test_without_the_key_the_page_asks_for_it(page, server):  # noqa: F811
    open_chat(page, server, key=None)
    page.wait_for_selector("#status.error:has-text('API key')")
    page.fill("#api-key", "wrong-key")
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#status.error:has-text('API key')")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector(f"#model:has-text('{MODEL}')")
    assert page.inner_text("#status") == "ready"


def test_reply_streams_in_chunk_by_chunk(page, server):  # noqa: F811
    open_chat(page, server, max_tokens=120)
    page.evaluate(WATCH_GROWTH)
    send(page, "hello there")
    lengths = [n for n in page.evaluate("() => window.lengths") if n > 0]
    assert len(set(lengths)) >= 3, lengths  # it grew over several reads, not all at once
    assert lengths == sorted(lengths), lengths
    assert page.locator(".msg.user").inner_text() == "hello there"
    assert "(cut at max tokens)" in page.locator(".msg.assistant").inner_text()


def test_multi_turn_sends_the_history_the_system_prompt_and_the_key(page, server):  # noqa: F811
    open_chat(page, server, max_tokens=12)
    page.fill("#system", "You are terse.")
    bodies = chat_bodies(page)
    send(page, "first question")
    send(page, "and a second one")
    first, second = bodies
    assert first["auth"] == second["auth"] == f"Bearer {API_KEY}"
    assert first["model"] == MODEL and first["stream"] is True
    assert first["temperature"] == 0 and first["max_tokens"] == 12
    system = {"role": "system", "content": "You are terse."}
    assert first["messages"] == [system, {"role": "user", "content": "first question"}]
    # The earlier reply goes back exactly as the server streamed it: greedy decoding repeats it.
    replay = {k: first[k] for k in ("model", "messages", "temperature", "max_tokens")}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    answer = httpx.post(f"{server.url}/chat/completions", json=replay, headers=headers)
    reply = answer.json()["choices"][0]["message"]["content"]
    assert second["messages"] == [
        *first["messages"],
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "and a second one"},
    ]
    assert page.locator(".msg.assistant").count() == 2


def test_stop_ends_a_generation_midway(page, server):  # noqa: F811
    open_chat(page, server, max_tokens=1900)
    page.fill("#prompt", "tell me a long story")
    page.press("#prompt", "Enter")
    page.wait_for_function(
        "() => (document.querySelector('.msg.assistant')?.textContent.length ?? 0) > 20"
    )
    page.click("#stop")
    page.wait_for_function("() => document.body.dataset.state === 'ready'")
    reply = page.locator(".msg.assistant")
    stopped = reply.inner_text()
    assert stopped.endswith("(stopped)"), stopped[-80:]
    time.sleep(0.5)
    assert reply.inner_text() == stopped  # it stopped growing
    assert len(stopped) < 1900  # far from the reply's max_tokens
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    # The server noticed the closed connection and ended the request: the only request in
    # flight is then the /health request itself (the gate counts it too).
    deadline = time.monotonic() + 10
    while in_flight(server) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_flight(server) == 1
    page.fill("#max-tokens", "8")
    send(page, "a short one now")
    assert "(cut at max tokens)" in page.locator(".msg.assistant").nth(1).inner_text()


HOSTILE = [
    "Here is **bold**, *italic* and `x < y`.\n",
    "<script>window.pwned=1</script>\n",
    '<img src=x onerror="window.pwned=1">\n',
    "[click](javascript:window.pwned=1) [docs](https://example.com/a?b=1)\n",
    "```\n<b>not bold</b>\n```\n",
]


def sse_reply(pieces: list[str]) -> str:
    def chunk(delta: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return "data: " + json.dumps({"object": "chat.completion.chunk", "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in pieces] + [chunk({}, "stop"), "data: [DONE]"]
    return "".join(event + "\n\n" for event in events)


def test_model_output_is_shown_as_text_never_run(page, server):  # noqa: F811
    open_chat(page, server)
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(
            status=200, content_type="text/event-stream", body=sse_reply(HOSTILE)
        ),
    )
    send(page, '<img src=y onerror="window.pwned=2">')
    transcript = page.locator("#transcript")
    text = transcript.inner_text()
    assert "<script>window.pwned=1</script>" in text
    assert '<img src=x onerror="window.pwned=1">' in text
    assert '<img src=y onerror="window.pwned=2">' in text  # the user's own message too
    assert "<b>not bold</b>" in transcript.locator("pre code").inner_text()
    assert transcript.locator("script, img, b, [onerror]").count() == 0
    assert page.evaluate("() => typeof window.pwned") == "undefined"
    reply = transcript.locator(".msg.assistant")
    assert reply.locator("strong").inner_text() == "bold"
    assert reply.locator("em").inner_text() == "italic"
    assert reply.locator("p code").inner_text() == "x < y"
    links = reply.locator("a")
    assert links.count() == 1  # the javascript: link stays text
    assert links.get_attribute("href") == "https://example.com/a?b=1"
    assert links.get_attribute("rel") == "noopener noreferrer"
    assert "[click](javascript:window.pwned=1)" in text
