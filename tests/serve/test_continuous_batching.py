"""The engine batches continuously: rows join and leave a running batch, long prompts are prefilled
in chunks between decode steps, and every row's tokens stay those of `generate` alone, for every
attention and position variant (each row at its own cache length needs its own mask)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from serve_fixtures import CONTEXT, greedy_reference, tiny_tokenizer

from lmforge.models.config import ModelConfig
from lmforge.models.transformer import Transformer
from lmforge.serve.engine import Engine, QueueFull
from lmforge.serve.rows import Row

VARIANTS = {
    "llama-gqa": {},
    "learned-positions": dict(position="learned"),
    "alibi": dict(position="alibi"),
    "sliding-window": dict(sliding_window=6),
    "window-alibi-mla": dict(
        position="alibi", sliding_window=7, attention="mla", kv_lora_rank=24,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
    ),
    "moe": dict(ffn="moe", num_experts=4, experts_per_token=2, moe_ffn_dim=24),
}  # fmt: skip


@torch.no_grad()
def random_variant(vocab_size: int, **overrides) -> Transformer:
    config = ModelConfig(
        vocab_size=vocab_size, context_length=CONTEXT, dim=64, num_layers=2, num_heads=4,
        num_kv_heads=2, ffn_dim=96, **overrides,
    )  # fmt: skip
    model = Transformer(config).eval()
    generator = torch.Generator().manual_seed(0)
    for param in model.parameters():
        noise = torch.randn(param.shape, generator=generator)
        param.copy_(0.2 * noise if param.ndim >= 2 else 1.0 + 0.1 * noise)
    return model


class Recorder:
    """Collects every row's events, in the order the engine emitted them."""

    def __init__(self):
        self.log: list[tuple] = []
        self.text: dict[int, str] = {}
        self.done: dict[int, tuple] = {}
        self.finished = threading.Condition()
        self.triggers: dict[tuple[int, int], object] = {}

    def on_token(self, index: int, count: int, action) -> None:
        """Run `action` on the engine thread when row `index` emits its `count`-th text event:
        what arrives then arrives at a known step, however busy the host is."""
        self.triggers[index, count] = action

    def emit(self, event: tuple) -> None:
        with self.finished:
            self.log.append(event)
            if event[0] == "text":
                self.text[event[1]] = self.text.get(event[1], "") + event[2]
            else:
                self.done[event[1]] = event
                self.finished.notify_all()
        if event[0] == "text":
            seen = sum(1 for e in self.log if e[0] == "text" and e[1] == event[1])
            action = self.triggers.pop((event[1], seen), None)
            if action is not None:
                action()

    def row(self, index: int, ids: list[int], max_tokens: int, **options) -> Row:
        return Row(index=index, prompt_ids=ids, max_tokens=max_tokens, emit=self.emit,
                   temperature=options.pop("temperature", 0.0), **options)  # fmt: skip

    def wait(self, indices, timeout: float = 120) -> None:
        with self.finished:
            assert self.finished.wait_for(lambda: all(i in self.done for i in indices), timeout)

    def tokens_seen(self, index: int) -> int:
        with self.finished:
            return sum(1 for e in self.log if e[0] == "text" and e[1] == index)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def never_stop(tokenizer) -> dict[int, float]:
    """logit_bias that keeps a row from its stop tokens: it runs to max_tokens."""
    return {token: -100.0 for token in tokenizer.stop_ids}


def prompts(tokenizer) -> list[list[int]]:
    texts = ["the quick brown fox", "a", "alpha beta gamma delta " * 6, "def f(x): return x"]
    return [tokenizer.encode(text) for text in texts]


@pytest.mark.parametrize("variant", VARIANTS)
def test_staggered_chunked_and_cached_rows_match_generate(tokenizer, variant):
    model = random_variant(tokenizer.vocab_size, **VARIANTS[variant])
    # 5 tokens a step: prompts are prefilled in chunks of 1 to 5 across decode steps; blocks of 4
    # let the repeated prompts start from the prefix cache mid-prompt
    engine = Engine(model, tokenizer, max_step_tokens=5, prefix_block=4, max_batch_size=3)
    engine.start()
    recorder, expected = Recorder(), {}
    try:
        for index, ids in enumerate(prompts(tokenizer) * 2):
            max_tokens = 5 + 4 * (index % 3)
            expected[index] = greedy_reference(model, tokenizer, ids, max_tokens)
            engine.submit([recorder.row(index, ids, max_tokens)])
            time.sleep(0.01 * (index % 2))  # some arrive mid-decode, some together
        recorder.wait(expected)
    finally:
        engine.stop()
    assert {i: recorder.text.get(i, "") for i in expected} == expected
    cached = [recorder.done[i][5] for i in expected]
    assert sum(cached[4:]) > 0, cached  # the second round found its prompts' blocks
    assert all(c % 4 == 0 for c in cached)


@pytest.mark.parametrize("variant", VARIANTS)
def test_prompts_prefilled_together_right_padded_match_generate(tokenizer, variant):
    model = random_variant(tokenizer.vocab_size, **VARIANTS[variant])
    engine = Engine(model, tokenizer, kv_cache_memory=0)
    recorder, expected = Recorder(), {}
    lengths = [1, 3, 17, 9]  # queued before the start: the first step prefills all 4 in one pass
    for index, ids in enumerate(prompts(tokenizer)):
        ids = (ids * 20)[: lengths[index]]
        expected[index] = greedy_reference(model, tokenizer, ids, 6)
        engine.submit([recorder.row(index, ids, 6)])
    engine.start()
    try:
        recorder.wait(expected)
    finally:
        engine.stop()
    assert {i: recorder.text.get(i, "") for i in expected} == expected


def test_a_short_request_finishes_while_a_long_one_runs(tokenizer):
    model = random_variant(tokenizer.vocab_size)
    engine = Engine(model, tokenizer)
    engine.start()
    recorder = Recorder()
    try:
        long_ids = tokenizer.encode("once upon a time")
        short = recorder.row(1, tokenizer.encode("hi"), 3)
        recorder.on_token(0, 3, lambda: engine.submit([short]))
        engine.submit([recorder.row(0, long_ids, 400, logit_bias=never_stop(tokenizer))])
        recorder.wait([1, 0])
    finally:
        engine.stop()
    assert recorder.done[0][3] == 400  # the long row ran to its end
    finished = [e[1] for e in recorder.log if e[0] == "done"]
    assert finished == [1, 0]  # static batching would have made the short row wait


def test_long_prompt_is_prefilled_in_chunks_while_rows_decode(tokenizer):
    model = random_variant(tokenizer.vocab_size)
    engine = Engine(model, tokenizer, max_step_tokens=8, kv_cache_memory=0)
    engine.start()
    recorder = Recorder()
    try:
        long_prompt = tokenizer.encode("alpha beta gamma delta epsilon " * 12)[:150]
        assert len(long_prompt) == 150
        recorder.on_token(0, 2, lambda: engine.submit([recorder.row(1, long_prompt, 2)]))
        going = recorder.row(
            0, tokenizer.encode("go"), 300, logit_bias=never_stop(tokenizer), logprobs=0
        )  # logprobs: an event for every token, even one whose text is held back
        engine.submit([going])
        recorder.wait([1, 0])
    finally:
        engine.stop()
    order = [e[1] for e in recorder.log if e[0] == "text"]
    # row 1 arrived after row 0's 2nd token; its 150 prompt tokens at 7 a step (8 minus row 0's
    # one) take 22 steps, and every one of them gave row 0 a token
    assert order[2 : order.index(1)].count(0) >= 21


def test_a_cancelled_row_leaves_the_batch_at_once(tokenizer):
    model = random_variant(tokenizer.vocab_size)
    engine = Engine(model, tokenizer)
    engine.start()
    recorder = Recorder()
    try:
        row = recorder.row(
            0, tokenizer.encode("the"), 450, logit_bias=never_stop(tokenizer), logprobs=0
        )
        recorder.on_token(0, 2, lambda: setattr(row, "cancelled", True))  # as a client leaving
        engine.submit([row])
        recorder.wait([0], timeout=30)
    finally:
        engine.stop()
    # the next step reads the flag first: no token is computed after the client left
    assert recorder.done[0][2] == "cancelled" and recorder.done[0][3] == 2


def test_queue_limit_and_timeout(tokenizer):
    model = random_variant(tokenizer.vocab_size)
    engine = Engine(model, tokenizer, max_queue=2, request_timeout=0.0)
    recorder = Recorder()
    with pytest.raises(QueueFull):  # all or none: three rows do not fit a queue of two
        engine.submit([recorder.row(i, [5, 6], 4) for i in range(3)])
    engine.submit([recorder.row(i, [5, 6], 4) for i in range(2)])
    engine.start()
    try:
        recorder.wait([0, 1])
    finally:
        engine.stop()
    assert [recorder.done[i][0] for i in (0, 1)] == ["error", "error"]
    assert recorder.done[0][3] == 504 and "--request_timeout" in recorder.done[0][2]
