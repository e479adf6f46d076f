"""Regenerate docs/images/chat-page.png: the chat page of `lmforge serve` mid-conversation.

The page, its script and its style are the package's own files, served with the server's
headers; the /v1 answers are canned (page.route), so no model or server is needed and the
picture does not change from run to run. Needs playwright and Debian's chromium:

    .venv/bin/python scripts/chat_page_screenshot.py
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from PIL import Image
from playwright.sync_api import Route, sync_playwright

from lmforge.serve.chat_page import ASSETS, HEADERS, asset_bytes

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "chat-page.png"
BASE = "http://127.0.0.1:8000"
MODEL = "smollm2-360m-instruct"
TURNS = [
    (
        "How do I read a file line by line in Python?",
        "Open it with a **`with`** block and loop over the file object:\n\n"
        '```\nwith open("notes.txt") as f:\n    for line in f:\n        print(line.rstrip())\n```\n'
        "The file is closed when the block ends, *even on an error*.",
    ),
    (
        "And skip blank lines?",
        "Test the stripped line first:\n\n"
        "- `if not line.strip(): continue` skips it\n"
        "- or filter: `lines = [l for l in f if l.strip()]`",
    ),
]


def sse(text: str) -> str:
    pieces = [text[i : i + 12] for i in range(0, len(text), 12)]
    chunks = [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def answer(route: Route, replies: list[str]) -> None:
    path = route.request.url.removeprefix(BASE).split("?")[0]
    if path == "/v1/models":
        route.fulfill(json={"object": "list", "data": [{"id": MODEL, "object": "model"}]})
    elif path == "/v1/chat/completions":
        route.fulfill(content_type="text/event-stream", body=sse(replies.pop(0)))
    elif path in ASSETS:
        name, media_type = ASSETS[path]
        route.fulfill(body=asset_bytes(name), content_type=media_type, headers=HEADERS)
    else:
        route.fulfill(status=404)


def main() -> None:
    replies = [reply for _, reply in TURNS]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        page.route(f"{BASE}/**", lambda route: answer(route, replies))
        page.goto(f"{BASE}/")
        page.wait_for_selector(f"#model:has-text('{MODEL}')")
        page.fill("#api-key", "sk-local-example")
        page.fill("#system", "You are a concise programming assistant.")
        for done, (question, _) in enumerate(TURNS, start=1):
            page.fill("#prompt", question)
            page.press("#prompt", "Enter")
            page.wait_for_function(
                f"() => document.querySelectorAll('.msg.assistant:not(.streaming)').length"
                f" === {done}"
            )
        page.fill("#prompt", "What about very large files?")
        png = page.screenshot()
        browser.close()
    # a 64-colour palette: the flat UI loses nothing visible, and the PNG shrinks several-fold
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=64)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    image.save(OUT, optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
