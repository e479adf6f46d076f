"""Meta-device construction and sharded loading: every rank allocates only its share, starts
from the weights one process gets (seeded init or a file), and reads only its slices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from hf_fixtures import HF_CASES, ZOO_CASES, save_hf_dir  # noqa: E402

from lmforge.checkpoint.pretrained import load_pretrained, open_weights
from lmforge.formats.weight_source import SafetensorsSource, StateDictSource
from lmforge.models.transformer import Transformer
from lmforge.parallel.materialize import load_local

HERE = Path(__file__).parent


def sharded_hf_dir(case: str, directory: Path) -> Path:
    """An HF dir split into several safetensors shards (save_pretrained's max_shard_size)."""
    model = save_hf_dir(case, directory)
    model.save_pretrained(directory, max_shard_size="20KB")
    return directory


@pytest.mark.parametrize("case", [*HF_CASES, "mixtral"])
def test_slices_read_from_an_hf_dir_equal_the_in_memory_conversion(case, tmp_path):
    directory = sharded_hf_dir(case, tmp_path / case)
    assert len(list(directory.glob("model-*.safetensors"))) > 1 or case == "mixtral"
    config, source = open_weights(directory)
    _, expected, _ = load_pretrained(directory)
    lazy = case not in ZOO_CASES
    assert isinstance(source, SafetensorsSource if lazy else StateDictSource)
    assert source.shapes == {k: tuple(v.shape) for k, v in expected.items()}
    for name, tensor in expected.items():  # whole, and row blocks that straddle q|k|v, gate|up
        rows = tensor.shape[0]
        for block in [slice(0, rows), slice(rows // 3, rows - rows // 5), slice(rows - 1, rows)]:
            index = (block, *(slice(0, n) for n in tensor.shape[1:]))
            assert torch.equal(source.read(name, index), tensor[index]), (name, block)
        if tensor.dim() == 2:  # a column block too (what a row-wise tensor-parallel shard reads)
            cols = slice(1, tensor.shape[1] - 1)
            assert torch.equal(source.read(name, (slice(0, rows), cols)), tensor[:, cols])
    model = Transformer(config)
    load_local(model, source, str(directory))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_a_source_that_does_not_fit_the_model_is_one_checkpoint_error(tmp_path):
    directory = sharded_hf_dir("llama-gqa-untied", tmp_path / "hf")
    config, source = open_weights(directory)
    other = Transformer(type(config)(**{**config.__dict__, "num_layers": config.num_layers + 1}))
    with pytest.raises(Exception, match="does not fit this model") as caught:
        load_local(other, source, str(directory))
    assert type(caught.value).__name__ == "CheckpointError"


@pytest.mark.parametrize("ranks", [2, 4])
def test_ranks_materialise_their_share_from_init_and_from_an_hf_dir(tmp_path, ranks):
    directory = sharded_hf_dir("llama-gqa-untied", tmp_path / "hf")
    out = tmp_path / "reports"
    out.mkdir()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={ranks}", str(HERE / "sharded_start_ranks.py"), str(directory), str(out),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]
    for report in reports:
        mismatched = {key: names for key, names in report.items() if isinstance(names, list)}
        assert all(not names for names in mismatched.values()), mismatched
    total = reports[0]["total_bytes"]
    assert sum(r["bytes_read"] for r in reports) == total  # FSDP: each byte read once, by its owner
    # 2-way TP x FSDP over the rest: the norms are whole on both TP ranks (read twice, 0.3%)
    assert total <= sum(r["tp bytes_read"] for r in reports) <= 1.01 * total
    for report in reports:
        assert report["bytes_read"] <= 1.2 * total / ranks, report
        assert report["tp bytes_read"] <= 1.2 * total / ranks, report
