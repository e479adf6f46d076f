"""The Python API (lmforge.api): scoring against a float64 one-row-at-a-time reference and
against `lmforge eval hellaswag`, rolling windows, generation against the token-level generator,
stop strings, and `from lmforge import train, finetune` despite the subpackages of those names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent / "interop"))
from gguf_fixtures import tiny_checkpoint  # noqa: E402

from lmforge import LanguageModel, finetune, load, train  # noqa: E402
from lmforge.evals.hellaswag import Example, evaluate_hellaswag  # noqa: E402
from lmforge.inference.generate import SamplingConfig, generate  # noqa: E402
from lmforge.inference.loglikelihood import rolling_windows, score_continuations  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog. def model(tokens): return loss\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> LanguageModel:
    """A random 2-layer Llama (context 64) with a BPE tokenizer; batch 3 so batches are split."""
    _, checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("api") / "ckpt", tied=True)
    return load(checkpoint, device="cpu", batch_size=3)


@torch.no_grad()
def reference_logprobs(model, ids: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= 1, float64, one unpadded row."""
    logprobs = F.log_softmax(model.double()(torch.tensor([ids[:-1]]))[0], dim=-1)
    model.float()
    return [logprobs[t - 1, ids[t]].item() for t in range(1, len(ids))]


def test_train_and_finetune_are_the_api_functions():
    import lmforge.train.loop  # noqa: F401 (the subpackages load and stay importable)
    from lmforge.checkpoint.directory import load_model  # noqa: F401

    assert callable(train) and callable(finetune)
    with pytest.raises(Exception, match="max_steps"):
        train("tiny", {"train.max_steps": 0})


@pytest.mark.parametrize("add_bos", [False, True], ids=["no-bos", "bos"])
def test_loglikelihood_matches_reference_and_hellaswag(tiny, add_bos, monkeypatch):
    monkeypatch.setattr(tiny.tokenizer, "add_bos", add_bos)
    tokenizer, model = tiny.tokenizer, tiny.model
    examples = [
        Example("the quick brown fox", ("jumps", "jumps over the lazy dog", "a", "model"), 1),
        Example("def model(tokens):", ("return loss", "print", "self.value = 123", "x"), 2),
    ]
    pairs = [(e.context, " " + ending) for e in examples for ending in e.endings]
    scores = tiny.loglikelihood(pairs)
    hellaswag = evaluate_hellaswag(model, tokenizer, examples, batch_size=1, progress=False)
    sums = [s for p in hellaswag["predictions"] for s in p["losses_sum"]]
    assert [-logprob for logprob, _ in scores] == pytest.approx(sums, rel=1e-5, abs=1e-5)
    for (context, continuation), (logprob, greedy) in zip(pairs, scores, strict=True):
        prefix = [tokenizer.bos_id] if add_bos else []
        context_ids = prefix + tokenizer.encode(context)
        continuation_ids = tokenizer.encode(continuation)
        expected = reference_logprobs(model, context_ids + continuation_ids)
        assert logprob == pytest.approx(sum(expected[-len(continuation_ids) :]), abs=1e-4)
        assert not greedy  # a random model does not predict these endings

    # The model's own greedy continuation is flagged greedy (scored at the token level).
    prompt = tiny.encode_prompt("the quick")
    (own,) = generate(model, [prompt], SamplingConfig(max_new_tokens=3, temperature=0))
    rows = [(prompt + own, len(own)), (prompt + own[:2] + [own[2] + 1], 3)]
    (_, greedy), (_, not_greedy) = score_continuations(model, rows)
    assert greedy and not not_greedy


def test_rolling_windows_score_every_token_once():
    tokens = list(range(50))
    for context in (4, 7, 49, 64):
        windows = rolling_windows(tokens, context)
        scored = [t for ids, n in windows for t in ids[-n:]]
        assert scored == tokens[1:]
        assert all(len(ids) <= context + 1 and n < len(ids) for ids, n in windows)
        # Every window after the first gives its tokens a full context.
        assert all(len(ids) == context + 1 for ids, _ in windows[1:])


def test_loglikelihood_rolling_matches_reference(tiny):
    model, tokenizer = tiny.model, tiny.tokenizer
    short, long = TEXT, TEXT * 4  # the long one spans several 64-token windows
    ids_long = tiny.start_ids() + tokenizer.encode(long)
    assert len(ids_long) > 2 * model.config.context_length
    totals = tiny.loglikelihood_rolling([short, long, "x"])
    assert totals[0] == pytest.approx(
        sum(reference_logprobs(model, tiny.start_ids() + tokenizer.encode(short))), abs=1e-4
    )
    expected = sum(
        sum(reference_logprobs(model, ids)[-n:])
        for ids, n in rolling_windows(ids_long, model.config.context_length)
    )
    assert totals[1] == pytest.approx(expected, abs=1e-3)
    assert totals[2] < 0


def test_generate_is_the_token_level_generator_plus_stops(tiny):
    prompts = ["the quick", "def model(tokens): return"]
    texts = tiny.generate(prompts, max_new_tokens=12)
    rows = [tiny.encode_prompt(p) for p in prompts]
    config = SamplingConfig(max_new_tokens=12, temperature=0, stop_tokens=tiny.tokenizer.stop_ids)
    expected = [tiny.tokenizer.decode(ids) for ids in generate(tiny.model, rows, config)]
    assert texts == expected
    # A stop string taken from the greedy output ends the text just before it.
    stop = expected[0][3:5]
    (cut,) = tiny.generate(prompts[:1], max_new_tokens=12, stop=[stop])
    assert cut == expected[0][: expected[0].find(stop)]
    sampled = tiny.generate(prompts, max_new_tokens=8, temperature=1.0, top_k=20, seed=3)
    assert sampled == tiny.generate(prompts, max_new_tokens=8, temperature=1.0, top_k=20, seed=3)
    with pytest.raises(TypeError):
        tiny.generate("not a list")


def test_load_reads_gguf_files_and_hf_dirs_alike(tiny, tmp_path):
    from lmforge.interop.gguf_export import export_gguf
    from lmforge.interop.hf_dir import export_hf

    pairs = [("the quick brown", " fox"), ("def model", "(tokens)")]
    expected = tiny.loglikelihood(pairs)
    for path in (
        export_gguf(tiny.source, tmp_path / "m.gguf", dtype="f32"),
        export_hf(tiny.source, tmp_path / "hf"),
    ):
        other = load(path, device="cpu")
        got = other.loglikelihood(pairs)
        assert [g for g, _ in got] == pytest.approx([e for e, _ in expected], abs=1e-4), path
