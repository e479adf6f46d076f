"""KV-cache decoding equals full recomputation; left-padded batches; rolling context; sampling."""

from __future__ import annotations

import pytest
import torch
from conftest import build, tiny_model

import lmforge.inference.generate as generation
from lmforge.inference.generate import SamplingConfig, filter_logits, generate, next_tokens
from lmforge.models.kv_cache import KVCache

V = 101
FAMILIES = {
    "llama": dict(preset="tiny-llama"),
    "gpt2": dict(preset="tiny-gpt2"),
    "mqa-qkv-bias": dict(preset="tiny-llama", num_kv_heads=1, qkv_bias=True),
}
GREEDY = dict(temperature=0.0)


def peaked_model(name: str, **overrides):
    """A random model with a larger init, so greedy choices are not near-ties."""
    fields = dict(FAMILIES[name])
    config = tiny_model(fields.pop("preset"), vocab_size=V, init_std=0.15, **fields, **overrides)
    return build(config, seed=7)


def greedy_by_recomputation(model, prompt: list[int], steps: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(steps):
        logits = model(torch.tensor([tokens]))[0, -1]
        tokens.append(int(logits.argmax()))
    return tokens[len(prompt) :]


def prompts(lengths, seed=0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("name", FAMILIES)
def test_incremental_logits_match_full_forward(name):
    model = peaked_model(name)
    tokens = torch.tensor(prompts([30], seed=1))
    full = model(tokens)
    cache = KVCache(model.config, 1, model.config.context_length, "cpu", torch.float32)
    steps = [model(tokens[:, :10], cache=cache)]  # prefill
    for t in range(10, 30):
        steps.append(model(tokens[:, t : t + 1], cache=cache))
    assert cache.length == 30
    incremental = torch.cat(steps, dim=1)
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_generation_equals_recomputation(name):
    model = peaked_model(name)
    prompt = prompts([9], seed=2)[0]
    out = generate(model, [prompt], SamplingConfig(max_new_tokens=25, **GREEDY))
    assert out[0] == greedy_by_recomputation(model, prompt, 25)
    assert len(set(out[0])) > 1  # a degenerate constant output would prove little


@pytest.mark.parametrize("name", FAMILIES)
def test_left_padded_batch_matches_each_prompt_alone(name):
    model = peaked_model(name)
    batch = prompts([3, 11, 1, 7], seed=3)
    config = SamplingConfig(max_new_tokens=12, **GREEDY)
    together = generate(model, batch, config)
    alone = [generate(model, [p], config)[0] for p in batch]
    assert together == alone
    assert together[1] == greedy_by_recomputation(model, batch[1], 12)


@pytest.mark.parametrize("name", FAMILIES)
def test_repeated_prompts_share_one_prefill_and_decode_as_if_apart(name, monkeypatch):
    model = peaked_model(name)
    a, b = prompts([5, 9], seed=6)
    batch = [a, b, a, a, b]  # GRPO's groups: completions of one prompt
    calls = []
    forward = model.forward
    monkeypatch.setattr(
        model, "forward", lambda *x, **k: calls.append(x[0].shape) or forward(*x, **k)
    )
    greedy = generate(model, batch, SamplingConfig(max_new_tokens=8, **GREEDY))
    assert calls[0][0] == 2  # the prefill ran the 2 distinct prompts, not 5 rows
    assert greedy == [
        generate(model, [p], SamplingConfig(max_new_tokens=8, **GREEDY))[0] for p in batch
    ]
    sampled = SamplingConfig(max_new_tokens=8, temperature=1.0, seed=3)
    shared = generate(model, batch, sampled)
    every_row = lambda rows, device: (rows, torch.arange(len(rows), device=device))  # noqa: E731
    monkeypatch.setattr(generation, "_distinct_rows", every_row)
    assert shared == generate(model, batch, sampled)  # the same draws as a prefill per row
    assert shared[0] != shared[2] or shared[2] != shared[3]  # one prompt, different samples


def test_padded_prefill_logits_match_unpadded():
    model = peaked_model("llama")
    short, long = prompts([4, 10], seed=4)
    cache = KVCache(model.config, 2, 32, "cpu", torch.float32)
    cache.set_padding(torch.tensor([6, 0]))
    tokens = torch.tensor([[0] * 6 + short, long])
    positions = torch.tensor([[0] * 6 + list(range(4)), list(range(10))])
    logits = model(tokens, cache=cache, positions=positions)
    torch.testing.assert_close(logits[0, 6:], model(torch.tensor([short]))[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[1], model(torch.tensor([long]))[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_rolling_context_past_context_length(name):
    context, prompt_len, new = 32, 10, 60
    model = peaked_model(name, context_length=context)
    prompt = prompts([prompt_len], seed=5)[0]
    out = generate(model, [prompt], SamplingConfig(max_new_tokens=new, **GREEDY))[0]
    assert len(out) == new  # ran well past the context length
    # Until the cache is full, the rolling run is an ordinary run.
    before_roll = context - prompt_len + 1
    assert out[:before_roll] == greedy_by_recomputation(model, prompt, before_roll)
    if name == "llama":  # RoPE tables do not depend on the context length: same weights, longer
        roomy = build(tiny_model(context_length=128, vocab_size=V, init_std=0.15), seed=7)
        roomy.load_state_dict(model.state_dict())
        long_run = generate(roomy, [prompt], SamplingConfig(max_new_tokens=new, **GREEDY))[0]
        assert out[:before_roll] == long_run[:before_roll]
    # The next token comes from the most recent half-context.
    history = prompt + out[:before_roll]
    window = history[-(context // 2) :]
    assert out[before_roll] == int(model(torch.tensor([window]))[0, -1].argmax())


def test_prompt_longer_than_context_is_truncated():
    model = peaked_model("gpt2", context_length=16)
    prompt = prompts([40], seed=6)[0]
    out = generate(model, [prompt], SamplingConfig(max_new_tokens=5, **GREEDY))[0]
    assert len(out) == 5
    assert out[0] == int(model(torch.tensor([prompt[-16:]]))[0, -1].argmax())


def test_stop_tokens_end_each_row_separately():
    model = peaked_model("llama")
    batch = prompts([5, 8], seed=8)
    free = generate(model, batch, SamplingConfig(max_new_tokens=20, **GREEDY))

    def cut(row: list[int], stops: tuple[int, ...]) -> list[int]:
        ends = [i for i, t in enumerate(row) if t in stops]
        return row[: ends[0] + 1] if ends else row

    # One stop token (row 0 at its 4th token), then two: a row ends on whichever comes first.
    for stops in ((free[0][3],), (free[0][3], free[1][2])):
        config = SamplingConfig(max_new_tokens=20, stop_tokens=stops, **GREEDY)
        stopped = generate(model, batch, config)
        assert stopped == [cut(row, stops) for row in free]
        assert stopped[0][-1] in stops and len(stopped[0]) <= 4
    assert len(stopped[1]) <= 3


def test_on_tokens_streams_every_step():
    model = peaked_model("llama")
    seen = []
    out = generate(
        model, prompts([4, 6]), SamplingConfig(max_new_tokens=7, **GREEDY), on_tokens=seen.append
    )
    assert len(seen) == 7 and seen[0].shape == (2,)
    assert [int(t[0]) for t in seen] == out[0]


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    model = peaked_model("llama")
    batch = prompts([5, 5])

    def sample(seed):
        config = SamplingConfig(max_new_tokens=30, temperature=1.0, top_k=50, seed=seed)
        return generate(model, batch, config)

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    top2 = filter_logits(logits, top_k=2, top_p=None)
    assert torch.isinf(top2[0, 2:]).all() and torch.isfinite(top2[0, :2]).all()
    nucleus = filter_logits(logits, top_k=None, top_p=0.8)  # 0.5 + 0.2 < 0.8 <= 0.85
    assert torch.isfinite(nucleus[0, :3]).all() and torch.isinf(nucleus[0, 3:]).all()
    only_top = filter_logits(logits, top_k=None, top_p=0.1)
    assert torch.isfinite(only_top[0, 0]) and torch.isinf(only_top[0, 1:]).all()
    assert torch.equal(filter_logits(logits, None, None), logits)
    assert torch.equal(filter_logits(logits, 0, 1.0), logits)


def test_filter_logits_top_p_with_unsorted_logits():
    probs = torch.tensor([[0.05, 0.5, 0.1, 0.2, 0.15]])
    kept = torch.isfinite(filter_logits(probs.log(), top_k=None, top_p=0.8))
    assert kept.tolist() == [[False, True, False, True, True]]


def test_next_tokens_greedy_and_top_k_1():
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 1.9]])
    assert next_tokens(logits, SamplingConfig(temperature=0), None).tolist() == [1, 0]
    generator = torch.Generator().manual_seed(0)
    config = SamplingConfig(temperature=5.0, top_k=1)
    for _ in range(5):
        assert next_tokens(logits, config, generator).tolist() == [1, 0]


def test_draw_follows_the_distribution_and_never_picks_a_zero():
    from lmforge.inference.generate import draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.2, 0.3, 0.0]]).repeat(20000, 1)
    chosen = draw(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(chosen, minlength=6).float() / len(chosen)
    assert counts[[0, 2, 5]].sum() == 0
    torch.testing.assert_close(counts, probs[0], atol=0.015, rtol=0)
    repeat = draw(probs[:5], torch.Generator().manual_seed(3))
    assert torch.equal(repeat, draw(probs[:5], torch.Generator().manual_seed(3)))
