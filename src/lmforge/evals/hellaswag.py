"""HellaSwag: pick the most likely of 4 endings, scored as in Karpathy's build-nanogpt hellaswag.py.

For each ending, tokens = [bos] + context + encode(" " + ending); the model's cross-entropy on the
ending tokens only gives `acc` (argmin of the summed loss) and `acc_norm` (argmin of the mean loss
per ending token). Data: the original jsonl (ctx, endings, label; ctx used as given) or the
llama.cpp text format (6 lines an example: context, gold label 0-3, 4 endings), detected by content.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lmforge.data.download import fetch
from lmforge.errors import DataError
from lmforge.runtime import autocast_context, choose_precision
from lmforge.tokenizer import Tokenizer

DEFAULT_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"


@dataclass(frozen=True)
class Example:
    context: str
    endings: tuple[str, ...]
    label: int


def _label(value: object, where: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3:
        raise DataError(f"{where}: gold label must be 0-3, got {value!r}; is this HellaSwag data?")
    return value


def _parse_jsonl(lines: list[str], source: str) -> list[Example]:
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{where}: not valid JSON ({error.msg}); fix or remove the line"
            ) from None
        endings = row.get("endings") if isinstance(row, dict) else None
        if not isinstance(row, dict) or not isinstance(row.get("ctx"), str):
            raise DataError(f"{where}: needs a string field 'ctx' (HellaSwag jsonl)")
        if not (
            isinstance(endings, list)
            and len(endings) == 4
            and all(isinstance(e, str) for e in endings)
        ):
            raise DataError(f"{where}: 'endings' must be a list of 4 strings")
        examples.append(Example(row["ctx"], tuple(endings), _label(row.get("label"), where)))
    return examples


def _parse_text(lines: list[str], source: str) -> list[Example]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]  # trailing blank lines are not an incomplete example
    examples = []
    complete = len(lines) - len(lines) % 6
    for start in range(0, complete, 6):  # a misaligned file fails at its first non-label
        label = _label(lines[start + 1], f"{source} line {start + 2}")
        examples.append(Example(lines[start], tuple(lines[start + 2 : start + 6]), label))
    if complete < len(lines):
        raise DataError(
            f"{source} line {complete + 1}: incomplete example ({len(lines) - complete} of 6 lines: "
            "context, label, 4 endings); the file is truncated or misaligned"
        )
    return examples


def parse_hellaswag(text: str, source: str = "<text>") -> list[Example]:
    """Examples of either format: jsonl if the first non-blank character is '{'."""
    lines = [line.rstrip("\r") for line in text.split("\n")]
    parse = _parse_jsonl if text.lstrip().startswith("{") else _parse_text
    examples = parse(lines, source)
    if not examples:
        raise DataError(
            f"{source} holds no HellaSwag examples; point --data at the validation file"
        )
    return examples


def load_hellaswag(path: str | Path | None = None, limit: int | None = None) -> list[Example]:
    """The first `limit` examples of a file; without a path, the validation jsonl (downloaded once)."""
    if path is None:
        path = fetch(DEFAULT_URL)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"HellaSwag file {path} does not exist; check --data")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; point --data at a HellaSwag file") from None
    examples = parse_hellaswag(text, str(path))
    return examples[:limit] if limit is not None else examples


def encode_example(tokenizer: Tokenizer, example: Example) -> list[tuple[list[int], int]]:
    """Per ending: (full token sequence, number of ending tokens at its end)."""
    prefix = [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []
    context = prefix + tokenizer.encode(example.context)
    rows = []
    for ending in example.endings:
        ending_ids = tokenizer.encode(" " + ending)
        rows.append((context + ending_ids, len(ending_ids)))
    return rows


@torch.no_grad()
def score_rows(
    model: nn.Module, rows: list[tuple[list[int], int]], device: torch.device | str, autocast
) -> list[tuple[float, float]]:
    """(summed, mean) ending loss per row, all rows in one right-padded batch.

    Right padding is safe for a causal model: real tokens never attend to the pads after them.
    Rows longer than the context lose tokens on the left (the ending is kept as far as possible).
    """
    limit = model.config.context_length
    clipped = []
    for ids, n_end in rows:
        ids = ids[-limit:]
        clipped.append((ids, min(n_end, len(ids) - 1)))  # the first token has nothing to predict it
    width = max(len(ids) for ids, _ in clipped)
    tokens = torch.zeros(len(clipped), width, dtype=torch.long)
    mask = torch.zeros(len(clipped), width, dtype=torch.bool)  # True where a target is scored
    for i, (ids, n_end) in enumerate(clipped):
        tokens[i, : len(ids)] = torch.tensor(ids)
        mask[i, len(ids) - n_end : len(ids)] = True
    tokens, mask = tokens.to(device), mask.to(device)
    with autocast:
        logits = model(tokens)
    losses = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none"
    )  # (B, T-1): loss of predicting token t+1
    losses = (losses.double() * mask[:, 1:]).sum(1)
    counts = mask[:, 1:].sum(1).clamp(min=1)
    return [(s, s / n) for s, n in zip(losses.tolist(), counts.tolist(), strict=True)]


def evaluate_hellaswag(
    model: nn.Module,
    tokenizer: Tokenizer,
    examples: list[Example],
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    dtype: str = "fp32",
    progress: bool = True,
) -> dict:
    """acc, acc_norm, n, examples_per_s and per-example predictions; batch_size counts examples
    (each is 4 rows). The model must already be on `device`; it is left in its original mode."""
    if batch_size <= 0:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device)
    precision = choose_precision(dtype, device)
    autocast = autocast_context(device, precision.name)
    was_training = model.training
    model.eval()
    predictions = []
    start = time.perf_counter()
    bar = tqdm(total=len(examples), desc="hellaswag", disable=not progress, dynamic_ncols=True)
    for first in range(0, len(examples), batch_size):
        batch = examples[first : first + batch_size]
        rows = [row for example in batch for row in encode_example(tokenizer, example)]
        scores = score_rows(model, rows, device, autocast)
        for offset, example in enumerate(batch):
            own = scores[4 * offset : 4 * offset + 4]
            sums, means = [s for s, _ in own], [m for _, m in own]
            predictions.append(
                {
                    "index": first + offset,
                    "label": example.label,
                    "pred": min(range(4), key=sums.__getitem__),
                    "pred_norm": min(range(4), key=means.__getitem__),
                    "losses_sum": sums,
                    "losses_mean": means,
                }
            )
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    elapsed = time.perf_counter() - start
    n = len(predictions)
    return {
        "acc": sum(p["pred"] == p["label"] for p in predictions) / max(n, 1),
        "acc_norm": sum(p["pred_norm"] == p["label"] for p in predictions) / max(n, 1),
        "n": n,
        "dtype": precision.name,
        "examples_per_s": n / elapsed if elapsed > 0 else math.inf,
        "predictions": predictions,
    }
