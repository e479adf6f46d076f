"""The serving engine in-process: prefilling in row groups (to bound the logits' memory) and
batching leave every row's tokens and prompt logprobs as they are alone."""

from __future__ import annotations

import threading

import pytest
from serve_fixtures import (
    reference,  # noqa: F401 (fixture)
    serve_checkpoint,  # noqa: F401 (fixture)
)

from lmforge.serve.engine import Engine, Row

PROMPTS = ["the quick brown fox", "a", "def model(tokens): return loss", "alpha beta"]


def decode(engine: Engine, rows_spec: list[dict]) -> list[dict]:
    """Submit rows built from rows_spec and wait; each result: text pieces, finish, scores."""
    results = [{"text": "", "tokens": 0} for _ in rows_spec]
    done = threading.Semaphore(0)

    def emit(event: tuple) -> None:
        result = results[event[1]]
        if event[0] == "text":
            result["text"] += event[2]
        elif event[0] == "done":
            result["finish"], result["tokens"], result["prompt"], result["cached"] = event[2:]
            done.release()
        else:
            raise AssertionError(event)

    engine.submit([Row(index=i, emit=emit, **spec) for i, spec in enumerate(rows_spec)])
    for _ in rows_spec:
        assert done.acquire(timeout=120)
    return results


@pytest.fixture(scope="module")
def engines(reference):  # noqa: F811
    model, tokenizer = reference
    whole = Engine(model, tokenizer)
    one_row_groups = Engine(model, tokenizer, prefill_logits_budget=1)  # one row per prefill
    whole.start()
    one_row_groups.start()
    yield whole, one_row_groups, tokenizer
    whole.stop()
    one_row_groups.stop()


def test_grouped_prefill_and_batching_change_no_row(engines):
    whole, grouped, tokenizer = engines
    specs = [
        dict(prompt_ids=tokenizer.encode(p), max_tokens=6 + 3 * i, temperature=t, seed=11 + i,
             top_p=0.9 if t else None, logprobs=2, echo_logprobs=True)
        for i, p in enumerate(PROMPTS) for t in (0.0, 1.0)
    ]  # fmt: skip
    alone = [decode(whole, [spec])[0] for spec in specs]
    for engine in (whole, grouped):
        together = decode(engine, specs)
        for a, b in zip(alone, together, strict=True):
            assert (a["text"], a["finish"], a["tokens"]) == (b["text"], b["finish"], b["tokens"])
            assert [e.token_id for e in a["prompt"]] == [e.token_id for e in b["prompt"]]
            got = [e.logprob for e in b["prompt"][1:]]
            assert got == pytest.approx([e.logprob for e in a["prompt"][1:]], abs=1e-4)
    assert whole.largest_batch == len(specs)
