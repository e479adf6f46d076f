"""A loaded model and its tokenizer, ready to generate and score text: `lmforge.load` and the
`LanguageModel` it returns (the Python API's inference half; see api.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.checkpoint.directory import load_model
from lmforge.checkpoint.pretrained import load_pretrained
from lmforge.errors import ConfigError
from lmforge.formats.gguf import gguf_quantization_plan, model_from_state
from lmforge.inference.decoding import prepare_for_decoding
from lmforge.inference.generate import SamplingConfig
from lmforge.inference.generate import generate as generate_ids
from lmforge.inference.loglikelihood import rolling_windows, score_continuations
from lmforge.models.footprint import refuse_if_too_large
from lmforge.models.transformer import Transformer
from lmforge.runtime import pick_device
from lmforge.tokenizer import END_OF_TEXT, Tokenizer
from lmforge.tokenizer.chat import encode_chat


@dataclass
class LanguageModel:
    """A loaded model and its tokenizer, ready to generate and score text. Make one with `load`."""

    model: Transformer
    tokenizer: Tokenizer
    source: Path
    """The checkpoint directory or file the weights came from."""
    batch_size: int = 16
    """Rows per forward pass when scoring (loglikelihood, loglikelihood_rolling)."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    def start_ids(self) -> list[int]:
        """The token a document starts from: BOS where the tokenizer uses one, else end-of-text
        (lmforge's pretraining and GPT-2 put it between documents)."""
        use_bos = self.tokenizer.add_bos and self.tokenizer.bos_id is not None
        return [self.tokenizer.bos_id if use_bos else self.tokenizer.eot_id]

    def encode_prompt(self, text: str) -> list[int]:
        """Prompt ids as `lmforge sample` builds them (with BOS / end-of-text where due)."""

        return encode_prompt(self.tokenizer, text)

    def generate_ids(
        self,
        prompts: list[list[int]],
        config: SamplingConfig,
        on_tokens: Callable[[torch.Tensor], None] | None = None,
        compile: bool = False,
        stop_check: Callable[[int, list[int]], bool] | None = None,
    ) -> list[list[int]]:
        """Token-level generation (all rows in one batch); returns only the new ids per row."""
        return generate_ids(self.model, prompts, config, on_tokens, compile, stop_check)

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float | None = None,
        top_k: int | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[str]:
        """Continue each prompt; returns only the new text of each, in order.

        All prompts decode as one batch. temperature 0 is greedy (the default); otherwise tokens
        are sampled after top_k / top_p filtering, reproducibly for a given `seed`. A row ends at
        max_new_tokens, at the tokenizer's end-of-text / end-of-turn tokens, or at the first
        occurrence of a `stop` string, which is cut off (it is not part of the returned text).
        """
        if isinstance(prompts, str):
            raise TypeError("prompts is a list of strings; wrap a single prompt in a list")
        if not prompts:
            return []
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        stops = [s for s in (stop or ()) if s]
        config = SamplingConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop_tokens=tuple(self.tokenizer.stop_ids),
        )

        def produced_stop(_row: int, ids: list[int]) -> bool:
            text = self.tokenizer.decode(ids)
            return any(s in text for s in stops)

        rows = [self.encode_prompt(p) for p in prompts]
        outputs = self.generate_ids(rows, config, stop_check=produced_stop if stops else None)
        texts = [self.tokenizer.decode(ids) for ids in outputs]
        return [_cut_at_stop(text, stops) for text in texts]

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """For each (context, continuation): the summed natural-log probability of the
        continuation's tokens given the context, and whether greedy decoding would produce
        exactly those tokens.

        Context and continuation are tokenized separately (the continuation carries its own
        leading space, e.g. " Paris"), with BOS before the context where the tokenizer uses one,
        as `lmforge eval hellaswag` scores endings. An empty context starts from `start_ids()`.
        Contexts too long for the model lose tokens on the left.
        """
        rows = []
        for context, continuation in pairs:
            context_ids = self.tokenizer.encode(context) if context else []
            if (self.tokenizer.add_bos and self.tokenizer.bos_id is not None) or not context_ids:
                context_ids = self.start_ids() + context_ids
            continuation_ids = self.tokenizer.encode(continuation)
            if not continuation_ids:
                raise ConfigError(f"continuation {continuation!r} encodes to no tokens")
            rows.append((context_ids + continuation_ids, len(continuation_ids)))
        return score_continuations(self.model, rows, self.batch_size)

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Summed natural-log probability of every token of each text, predicted from
        `start_ids()` and the text before it; texts longer than the context are scored in
        windows that give each token as much preceding text as fits (perplexity evaluation)."""
        rows, owners = [], []
        for index, text in enumerate(texts):
            windows = rolling_windows(
                self.start_ids() + self.tokenizer.encode(text), self.context_length
            )
            rows += windows
            owners += [index] * len(windows)
        totals = [0.0] * len(texts)
        for owner, (logprob, _) in zip(
            owners, score_continuations(self.model, rows, self.batch_size), strict=True
        ):
            totals[owner] += logprob
        return totals


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cuts = [text.find(s) for s in stops if s in text]
    return text[: min(cuts)] if cuts else text


def load(
    path: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str = "none",
    batch_size: int = 16,
) -> LanguageModel:
    """Load a model for generation and scoring.

    path: an lmforge checkpoint directory, a run directory (its last checkpoint), a .gguf file or
    a Hugging Face model directory. device: auto (CUDA if present), cpu, cuda, cuda:1...
    dtype: auto (bf16 on a GPU, fp32 on a CPU), fp32 or bf16. quantize: none (default), int8,
    int4, or auto (a GGUF's own precision on CPU); quantized weights change scores slightly.
    """
    model, tokenizer, source, _ = open_for_decoding(path, device, dtype, quantize)
    return LanguageModel(model, tokenizer, source, batch_size)


def open_for_decoding(
    path: str | Path, device: str, dtype: str, quantize: str
) -> tuple[Transformer, Tokenizer, Path, str]:
    """The model ready to decode, its tokenizer, the checkpoint directory or file it came from,
    and a short description of its precision. What `load`, `sample`, `chat` and `serve` all open,
    so the four accept the same sources (see `load`)."""
    torch_device = pick_device(device)
    source = Path(path).expanduser()
    if not (source.is_file() or _is_hf_dir(source)):  # an lmforge checkpoint or run dir
        model, tokenizer, source = load_model(source, torch_device)
    else:
        config, state, tokenizer = load_pretrained(source)  # checked against host memory
        if torch_device.type != "cpu":
            refuse_if_too_large(config, str(source), device=torch_device)
        model = model_from_state(config, state).to(torch_device)
        if quantize == "auto":
            quantize = _gguf_plan(source) if source.suffix == ".gguf" else "none"
    model, weights = prepare_for_decoding(model, source, dtype, quantize)
    return model.eval(), tokenizer, source, weights


def _is_hf_dir(path: Path) -> bool:
    """A Hugging Face model dir: its config.json names a model_type (lmforge's does not)."""
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text())
    except (ValueError, OSError):
        return False


def _gguf_plan(path: Path) -> Any:
    return gguf_quantization_plan(path)


def encode_prompt(
    tokenizer: Tokenizer, prompt: str, chat: bool = False, template=None
) -> list[int]:
    """Prompt ids with the model's start marker.

    BOS where the tokenizer asks for one (Llama); else <|endoftext|> where that is the
    tokenizer's end-of-text (lmforge's pretraining and GPT-2 put it before every document); with
    `chat`, the prompt becomes a user message in the chat template.
    """
    if chat:
        return encode_chat(tokenizer, [{"role": "user", "content": prompt}], template)
    ids = tokenizer.encode(prompt)
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        return [tokenizer.bos_id, *ids]
    if not ids or tokenizer.decode([tokenizer.eot_id], skip_special=False) == END_OF_TEXT:
        return [tokenizer.eot_id, *ids]
    return ids
