"""docs/python-api.md's Python blocks, run in order in one namespace (in a temporary directory),
so that the page cannot drift from the API."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", markdown, flags=re.DOTALL | re.MULTILINE)


def test_every_python_block_of_the_page_runs(tmp_path, capsys):
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) >= 5, "the page lost its examples"
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"{PAGE.name} block {number}", "exec")
        exec(code, namespace)  # noqa: S102 (our own documentation)
    assert (tmp_path / "runs" / "tiny-sft").is_dir()
    assert "perplexity" in capsys.readouterr().out
