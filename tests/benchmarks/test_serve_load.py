"""benchmarks/serve_load.py in its tiny mode against `lmforge serve` on a tiny random-weight
checkpoint: every scenario runs and the JSON report keeps its shape. llama.cpp is not needed
(no --llama_python: the peer is skipped). Times are not checked, only that they are there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS.parent / "benchmarks"))
sys.path.insert(0, str(TESTS / "serve"))
import serve_load  # noqa: E402
from serve_fixtures import serve_checkpoint  # noqa: E402, F401 (fixture)
from serve_load_tools import _timings, percentile  # noqa: E402


def test_percentile_interpolates_like_numpy():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None


def test_tokens_come_from_usage_when_the_server_sends_it():
    usage = {"completion_tokens": 5, "prompt_tokens": 9, "prompt_tokens_details": None}
    timed = _timings([0.5, 1.0, 1.5], 1.6, "abc", usage)
    assert (timed["completion_tokens"], timed["tokens_counted_from"]) == (5, "usage")
    assert timed["decode_tok_s"] == pytest.approx(4.0)  # 4 tokens after the first in 1 s
    assert _timings([0.5, 1.0], 1.1, "ab", None)["completion_tokens"] == 2


@pytest.mark.slow
def test_tiny_run_reports_every_scenario(serve_checkpoint, tmp_path):  # noqa: F811
    out = tmp_path / "report.json"
    flags = ["--checkpoint", str(serve_checkpoint), "--threads", "1", "--tiny"]
    serve_load.main([*flags, "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report) == {"machine", "sizes", "scenarios", "servers", "results", "summary"}
    assert {"cpu", "amx", "avx512_bf16", "torch", "cores"} <= set(report["machine"])
    assert list(report["results"]) == ["lmforge"]  # no llama.cpp without --llama_python
    assert report["servers"]["lmforge"]["threads"] == 1
    result = report["results"]["lmforge"]
    assert list(result) == list(serve_load.SCENARIOS)
    concurrency = result["concurrency"]
    assert concurrency["many_clients"]["clients"] == serve_load.TINY.clients
    assert concurrency["one_client"]["completion_tokens"] > 0 and concurrency["ratio"] > 0
    ttft = result["ttft_under_load"]
    assert len(ttft["ttft_s"]) == serve_load.TINY.short_requests
    assert ttft["ttft_p99_s"] >= ttft["ttft_p50_s"] > 0
    turns = result["multiturn"]["turns"]
    assert [t["turn"] for t in turns] == list(range(1, serve_load.TINY.turns + 1))
    assert turns[-1]["prompt_tokens"] > turns[0]["prompt_tokens"]  # the chat grows
    assert result["decode"]["decode_tok_s"] > 0
    assert {row["metric"] for row in report["summary"]} >= {"batch-1 decode tokens/s"}
