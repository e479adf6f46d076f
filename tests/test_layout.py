"""Where things live, checked: short files and functions, and a CLI that starts without torch.

The import graph itself (layers, no cycles) is tests/test_import_graph.py.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "lmforge"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def _sources() -> list[Path]:
    """The package, its tests, the benchmarks and the scripts: the same limits for all."""
    folders = (PACKAGE, REPO / "tests", REPO / "benchmarks", REPO / "scripts")
    return sorted(path for folder in folders for path in folder.rglob("*.py"))


def test_no_file_is_long() -> None:
    long = {
        str(path.relative_to(REPO)): n
        for path in _sources()
        if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, f"split these files (over {MAX_FILE_LINES} lines): {long}"


def test_no_function_is_long() -> None:
    long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO)}:{node.name}"] = lines
    assert not long, f"split these functions (over {MAX_FUNCTION_LINES} lines): {long}"


def test_cli_starts_without_torch() -> None:
    """`lmforge --help` and a command's --help answer in about 0.1 s: the command table and the
    command dataclasses import no torch (the handlers import their packages when they run)."""
    probe = (
        "import sys, contextlib, io\n"
        "from lmforge.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "    try:\n"
        "        main(['sample', '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
