"""HellaSwag: both file formats and their errors, batched scoring against a one-ending-at-a-time
float64 reference, SmolLM2-135M-Instruct predictions against transformers, and `lmforge eval`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error

# The GGUF fixtures live beside the interop tests (not a conftest.py, so import them by path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from gguf_fixtures import (  # noqa: E402
    random_model,
    smollm2_gguf,  # noqa: F401 (fixture)
    smollm2_lmforge,
    smollm2_transformers,
    tiny_checkpoint,
    tiny_llama,
    tiny_tokenizer,
)

from lmforge.cli import main  # noqa: E402
from lmforge.errors import DataError  # noqa: E402
from lmforge.evals.hellaswag import (  # noqa: E402
    Example,
    encode_example,
    evaluate_hellaswag,
    load_hellaswag,
    parse_hellaswag,
)

TEXT_FORMAT = (
    "Roof shingle removal: A man is sitting on a roof. he\n3\n"
    "is using wrap to wrap a pair of skis.\nis ripping level tiles off.\n"
    "is holding a rubik's cube.\nstarts pulling up roofing on a roof.\n"
    "Clean and jerk: A lady walks to a barbell. the lady\n0\na\nb\nc\nd\n"
)
JSONL = (
    json.dumps(
        {"ctx": "A man is sitting on a roof. he", "endings": ["w", "x", "y", "z"], "label": 3}
    )
    + "\n\n"
    + json.dumps({"ctx": "The lady", "endings": ["a", "b", "c", "d"], "label": "1", "ind": 7})
    + "\n"
)


def hellaswag_file(shared_data: Path) -> Path:
    path = shared_data / "hellaswag" / "hellaswag_val_full.txt"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def test_both_formats_parse():
    first, second = parse_hellaswag(TEXT_FORMAT)
    assert first.context == "Roof shingle removal: A man is sitting on a roof. he"
    assert first.endings[3] == "starts pulling up roofing on a roof." and first.label == 3
    assert second.endings == ("a", "b", "c", "d") and second.label == 0
    rows = parse_hellaswag(JSONL)
    assert rows == [
        Example("A man is sitting on a roof. he", ("w", "x", "y", "z"), 3),
        Example("The lady", ("a", "b", "c", "d"), 1),
    ]


@pytest.mark.parametrize(
    "text, fragments",
    [
        (TEXT_FORMAT.replace("\n0\n", "\nzero\n"), ["line 8", "0-3", "'zero'"]),
        (TEXT_FORMAT + "more context\n4\na\nb\nc\nd\n", ["line 14", "0-3", "4"]),
        (TEXT_FORMAT + "extra context\n1\nonly one ending\n", ["line 13", "incomplete"]),
        (JSONL + "{not json\n", ["line 4", "not valid JSON"]),
        (JSONL.replace('"b", ', ""), ["line 3", "4 strings"]),
        (JSONL.replace('"label": 3', '"label": 5'), ["line 1", "0-3"]),
        ("\n\n", ["no HellaSwag examples"]),
    ],
    ids=["label", "label-range", "incomplete", "json", "endings", "json-label", "empty"],
)
def test_malformed_data_is_a_one_line_error_naming_the_line(text, fragments):
    with pytest.raises(DataError) as error:
        parse_hellaswag(text, "data.txt")
    message = str(error.value)
    assert "\n" not in message and message.startswith("data.txt")
    for fragment in fragments:
        assert fragment in message, message


def test_shared_validation_file_parses(shared_data):
    examples = load_hellaswag(hellaswag_file(shared_data))
    assert len(examples) == 10042
    assert {e.label for e in examples} == {0, 1, 2, 3}
    assert all(len(e.endings) == 4 and e.context for e in examples)
    assert load_hellaswag(hellaswag_file(shared_data), limit=5) == examples[:5]


@torch.no_grad()
def reference_losses(model, rows) -> list[tuple[float, float]]:
    """One ending at a time, no padding, float64: the plainest reading of the scoring rule."""
    model = model.double()
    out = []
    for ids, n_end in rows:
        ids = ids[-model.config.context_length :]
        n_end = min(n_end, len(ids) - 1)
        logprobs = F.log_softmax(model(torch.tensor([ids]))[0], dim=-1)
        losses = [-logprobs[t - 1, ids[t]].item() for t in range(len(ids) - n_end, len(ids))]
        out.append((sum(losses), sum(losses) / len(losses)))
    model.float()
    return out


@pytest.mark.parametrize("add_bos", [False, True], ids=["no-bos", "bos"])
def test_batched_scoring_equals_the_one_ending_reference(add_bos):
    tokenizer = tiny_tokenizer()
    tokenizer.add_bos = add_bos
    model = random_model(tiny_llama(tokenizer.vocab_size, tied=True))  # context_length 64
    # Endings of different lengths pad differently; the long context is truncated on the left.
    examples = [
        Example("the quick brown fox", ("jumps", "jumps over the lazy dog", "a", "model loss"), 1),
        Example("def model(tokens):", ("return loss", "print", "self.value = 123", "x"), 2),
        Example(" ".join(["alpha beta gamma"] * 30), ("delta", "tokens train", "if", "else"), 0),
    ]
    result = evaluate_hellaswag(model, tokenizer, examples, batch_size=2, progress=False)
    assert result["n"] == 3 and len(result["predictions"]) == 3
    first_rows = encode_example(tokenizer, examples[0])
    assert (first_rows[0][0][0] == tokenizer.bos_id) == add_bos
    assert len(encode_example(tokenizer, examples[2])[0][0]) > 64  # truncation is exercised
    for example, prediction in zip(examples, result["predictions"], strict=True):
        expected = reference_losses(model, encode_example(tokenizer, example))
        sums, means = [s for s, _ in expected], [m for _, m in expected]
        assert prediction["losses_sum"] == pytest.approx(sums, rel=1e-4, abs=1e-4)
        assert prediction["losses_mean"] == pytest.approx(means, rel=1e-4, abs=1e-4)
        assert prediction["pred"] == min(range(4), key=sums.__getitem__)
        assert prediction["pred_norm"] == min(range(4), key=means.__getitem__)
    labels = [e.label for e in examples]
    assert (
        result["acc"]
        == sum(p["pred"] == y for p, y in zip(result["predictions"], labels, strict=True)) / 3
    )


SMOLLM2_EXAMPLES = 12  # each is 4 rows through both 135M models in fp32: seconds, not minutes


@torch.no_grad()
def transformers_predictions(path: Path, examples: list[Example]) -> list[dict]:
    """The same scoring with transformers' own GGUF loader and tokenizer, fp32, one example (4
    right-padded endings with an attention mask) at a time."""
    transformers = pytest.importorskip("transformers")
    model = smollm2_transformers(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    out = []
    for example in examples:
        context = tokenizer.encode(example.context, add_special_tokens=False)
        endings = [tokenizer.encode(" " + e, add_special_tokens=False) for e in example.endings]
        width = max(len(context) + len(e) for e in endings)
        tokens = torch.zeros(4, width, dtype=torch.long)
        attention = torch.zeros(4, width, dtype=torch.long)
        for i, ending in enumerate(endings):
            ids = context + ending
            tokens[i, : len(ids)], attention[i, : len(ids)] = torch.tensor(ids), 1
        logprobs = F.log_softmax(model(tokens, attention_mask=attention).logits.double(), dim=-1)
        sums, means = [], []
        for i, ending in enumerate(endings):
            positions = range(len(context), len(context) + len(ending))
            losses = [-logprobs[i, t - 1, tokens[i, t]].item() for t in positions]
            sums.append(sum(losses))
            means.append(sum(losses) / len(losses))
        out.append({"sums": sums, "means": means})
    return out


def _agrees(ours: int, losses: list[float], theirs: int) -> bool:
    """Same choice, or a near-tie (within 1e-4) between the two choices."""
    return ours == theirs or abs(losses[ours] - losses[theirs]) <= 1e-4


@pytest.mark.slow
def test_smollm2_predictions_match_transformers(smollm2_gguf, shared_data):  # noqa: F811
    examples = load_hellaswag(hellaswag_file(shared_data), limit=SMOLLM2_EXAMPLES)
    model, tokenizer = smollm2_lmforge(smollm2_gguf)
    assert not tokenizer.add_bos  # SmolLM2 has no BOS, so neither side adds one
    ours = evaluate_hellaswag(model, tokenizer, examples, 4, "cpu", "fp32", progress=False)
    theirs = transformers_predictions(smollm2_gguf, examples)
    exact = agree = 0
    for mine, reference in zip(ours["predictions"], theirs, strict=True):
        pred = min(range(4), key=reference["sums"].__getitem__)
        pred_norm = min(range(4), key=reference["means"].__getitem__)
        exact += (mine["pred"], mine["pred_norm"]) == (pred, pred_norm)
        agree += _agrees(mine["pred"], reference["sums"], pred) and _agrees(
            mine["pred_norm"], reference["means"], pred_norm
        )
        assert mine["losses_sum"] == pytest.approx(reference["sums"], rel=1e-3, abs=1e-3)
    n = len(examples)
    print(f"\nSmolLM2 vs transformers on {n} examples: {exact}/{n} exact, {agree}/{n} within ties; "
          f"ours acc {ours['acc']:.3f} acc_norm {ours['acc_norm']:.3f}")  # fmt: skip
    assert agree >= 0.99 * n


def test_cli_writes_predictions_and_fails_in_one_line(tmp_path, shared_data, capsys):
    _, checkpoint = tiny_checkpoint(tmp_path / "ckpt", tied=True)
    data = hellaswag_file(shared_data)
    args = ["eval", "hellaswag", "--checkpoint", str(checkpoint), "--data", str(data)]
    assert main([*args, "--limit", "5", "--out", "x.json", "--device", "cpu"]) == 0
    assert "acc_norm" in capsys.readouterr().out
    result = json.loads(Path("x.json").read_text())
    assert result["n"] == 5 and len(result["predictions"]) == 5
    assert {"acc", "acc_norm", "examples_per_s"} <= result.keys()

    bad = tmp_path / "bad.txt"
    bad.write_text(TEXT_FORMAT.replace("\n0\n", "\nzero\n"))
    args = ["eval", "hellaswag", "--checkpoint", str(checkpoint), "--data", str(bad)]
    assert main(args) == 2
    assert_one_line_error(capsys.readouterr().err, "line 8", "bad.txt")


def test_training_logs_hellaswag_periodically(tmp_path, shared_data, corpus_file, byte_data_dir):
    from conftest import tiny_run

    from lmforge.train.loop import train

    data = str(hellaswag_file(shared_data))
    train_overrides = {"hellaswag_interval": 3, "hellaswag_limit": 4, "hellaswag_data": data}
    run = tiny_run(tmp_path / "run", corpus_file, byte_data_dir, train=train_overrides)
    train(run)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    logged = {r["step"]: r for r in records if "hellaswag_acc" in r}
    assert sorted(logged) == [3, 4]  # every 3 steps and at the end (max_steps 4)
    assert all(
        0 <= r["hellaswag_acc"] <= 1 and 0 <= r["hellaswag_acc_norm"] <= 1 for r in logged.values()
    )


def test_cli_eval_loss(trained_run, byte_data_dir, capsys):
    args = ["eval", "loss", "--checkpoint", str(trained_run), "--data", str(byte_data_dir)]
    assert main([*args, "--batches", "2", "--batch_size", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("val loss ") and "perplexity" in out
    assert main([*args, "--split", "nope"]) == 2
    assert_one_line_error(capsys.readouterr().err, "nope")
