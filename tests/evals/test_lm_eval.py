"""lm-evaluation-harness through the in-process adapter: HellaSwag per example equals
`lmforge eval hellaswag` on SmolLM2-135M (first 8 examples), WikiText word perplexity equals the
one from lmforge's eval loss on the same tokens, generate_until, and the CLI's errors."""

from __future__ import annotations

import json
import math
import re
import sys
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_one_line_error

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from gguf_fixtures import smollm2_gguf, tiny_checkpoint  # noqa: E402, F401

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the `eval` extra")

from lmforge import load  # noqa: E402
from lmforge.cli import main  # noqa: E402
from lmforge.evals.hellaswag import evaluate_hellaswag, load_hellaswag  # noqa: E402
from lmforge.evals.lm_eval_adapter import LmforgeLM, run_lm_eval  # noqa: E402
from lmforge.evals.lm_eval_tasks.utils import wikitext_articles  # noqa: E402
from lmforge.evals.loss import batch_loss  # noqa: E402

EXAMPLES = 8


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):  # noqa: F811
    return load(smollm2_gguf, device="cpu", dtype="fp32", batch_size=8)


def hellaswag_file(shared_data: Path) -> Path:
    path = shared_data / "hellaswag" / "hellaswag_val_full.txt"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.mark.slow
def test_hellaswag_per_example_equals_lmforge_eval(smollm2, shared_data):
    data = hellaswag_file(shared_data)
    results = run_lm_eval(
        "unused", ["lmforge_hellaswag"], limit=EXAMPLES, model=smollm2, log_samples=True,
        data_files={"lmforge_hellaswag": str(data)},
    )  # fmt: skip
    samples = sorted(results["samples"]["lmforge_hellaswag"], key=lambda s: s["doc_id"])
    examples = load_hellaswag(data, EXAMPLES)
    ours = evaluate_hellaswag(smollm2.model, smollm2.tokenizer, examples, progress=False)
    assert len(samples) == EXAMPLES
    for sample, example, mine in zip(samples, examples, ours["predictions"], strict=True):
        lls = [ll for ll, _ in sample["filtered_resps"]]
        assert [-ll for ll in lls] == pytest.approx(mine["losses_sum"], rel=1e-4, abs=1e-4)
        assert sample["acc"] == float(mine["pred"] == example.label)
        # lm-eval's acc_norm divides by the ending's length in characters; lmforge's acc_norm by
        # its token count (build-nanogpt). From lmforge's own sums, lm-eval's rule gives lm-eval's.
        by_chars = [-s / len(e) for s, e in zip(mine["losses_sum"], example.endings, strict=True)]
        assert sample["acc_norm"] == float(by_chars.index(max(by_chars)) == example.label)
    summary = results["results"]["lmforge_hellaswag"]
    assert summary["acc,none"] == pytest.approx(ours["acc"])


@pytest.mark.slow
def test_wikitext_word_perplexity_equals_eval_loss_on_the_same_tokens(
    smollm2, shared_data, tmp_path
):
    source = shared_data / "wikitext-2" / "test.txt"
    if not source.is_file():
        pytest.skip(f"{source} is missing")
    first = wikitext_articles(source.read_text(encoding="utf-8"))[0]
    page = "".join(first.splitlines(keepends=True)[:6])  # heading and the first paragraph
    small = tmp_path / "wiki.test.raw"
    small.write_text(page)
    results = run_lm_eval("unused", ["lmforge_wikitext2"], model=smollm2,
                          data_files={"lmforge_wikitext2": str(small)})  # fmt: skip
    word_perplexity = results["results"]["lmforge_wikitext2"]["word_perplexity,none"]

    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    tokens = smollm2.start_ids() + smollm2.tokenizer.encode(wikitext_detokenizer({"page": page}))
    assert 50 < len(tokens) < smollm2.context_length  # one window: the very same predictions
    batch = (torch.tensor([tokens[:-1]]), torch.tensor([tokens[1:]]))
    with torch.no_grad():
        mean = batch_loss(smollm2.model, batch, nullcontext()).item()  # `lmforge eval loss`'s
    words = len(re.split(r"\s+", page))
    assert word_perplexity == pytest.approx(math.exp(mean * (len(tokens) - 1) / words), rel=1e-4)


def test_generate_until_batches_by_settings_and_stops(tmp_path):
    _, checkpoint = tiny_checkpoint(tmp_path / "ckpt", tied=True)
    model = load(checkpoint, device="cpu")
    adapter = LmforgeLM(model=model, batch_size=4)
    greedy = model.generate(["the quick", "def model"], max_new_tokens=6)
    stop = greedy[0][2:4]

    def request(context, **settings):
        return SimpleNamespace(args=(context, settings))

    requests = [
        request("the quick", until=[stop], max_gen_toks=6),
        request("def model", max_gen_toks=6),
        request("the quick", until=stop, max_gen_toks=6),
    ]
    cut = greedy[0][: greedy[0].find(stop)]
    assert adapter.generate_until(requests) == [cut, greedy[1], cut]


def test_cli_runs_a_shipped_task_and_fails_in_one_line(tmp_path, shared_data, capsys):
    _, checkpoint = tiny_checkpoint(tmp_path / "ckpt", tied=True)
    data = f"lmforge_hellaswag={hellaswag_file(shared_data)}"
    args = ["eval", "lm-eval", "--checkpoint", str(checkpoint), "--device", "cpu"]
    assert main([*args, "--tasks", "lmforge_hellaswag", "--data", data, "--limit", "2",
                 "--out", "r.json"]) == 0  # fmt: skip
    assert "lmforge_hellaswag: acc " in capsys.readouterr().out
    written = json.loads(Path("r.json").read_text())
    assert len(written["samples"]["lmforge_hellaswag"]) == 2
    assert main([*args, "--tasks", "lmforge_hellaswag", "--data", "nonsense"]) == 2
    assert_one_line_error(capsys.readouterr().err, "TASK=PATH")
