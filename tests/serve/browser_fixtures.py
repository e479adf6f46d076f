"""Headless Chromium for the chat page's tests: Debian's `chromium` driven by Playwright's sync API
(Playwright's own browser download is not used). Without chromium or playwright the tests skip,
or fail where LMFORGE_REQUIRE_BROWSER=1 (CI must not pass by skipping).
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


def chromium_or_skip() -> str:
    path = shutil.which("chromium")
    missing = []
    if path is None:
        missing.append("the chromium browser (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright (pip install playwright; no `playwright install` needed)")
    if missing:
        message = "the chat page tests need " + " and ".join(missing)
        if os.environ.get("LMFORGE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def browser():
    path = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        launched = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh browser context (no stored key) whose console must stay free of CSP violations."""
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    opened = context.new_page()
    problems: list[str] = []  # a CSP violation, or an exception the page's script did not catch
    opened.on("console", lambda m: "Content Security Policy" in m.text and problems.append(m.text))
    opened.on("pageerror", lambda error: problems.append(str(error)))
    yield opened
    context.close()
    assert not problems, problems
