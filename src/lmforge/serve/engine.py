"""The serving engine: one background thread that batches pending rows and decodes them together.

Requests are split into rows (one prompt each). The engine thread takes every pending row (up to
`max_batch_size`, after a short wait so that requests sent together land in one batch), prefills
them as one left-padded batch into a KV cache (a StaticKVCache where the model allows it, as
`generate` does) and decodes them in lockstep. Each row keeps its own sampling settings and
random generator, so a greedy or seeded row yields the same tokens alone or in any batch. Rows
leave the batch as they finish (their cache rows are dropped). Rows that arrive while a batch
decodes wait for the next batch (static batching: simple, and the cache stays one tensor).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lmforge.inference.generate import CACHE_ROUNDING, _left_pad, filter_logits
from lmforge.models.kv_cache import KVCache
from lmforge.models.static_kv_cache import StaticKVCache, static_cache_supported
from lmforge.models.transformer import Transformer
from lmforge.serve.text_stream import TextStream
from lmforge.tokenizer import Tokenizer

log = logging.getLogger("lmforge.serve")


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float | None  # None for a prompt's first token (nothing before it to predict it)
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Row:
    """One prompt to continue, with its own settings; results go to `emit` as events:
    ("text", index, text, [TokenLogprob]), ("done", index, finish_reason, completion_tokens,
    prompt_logprobs or None), ("error", index, message)."""

    index: int
    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[tuple], None]
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None
    """Top alternatives per token; None: no logprobs at all."""
    echo_logprobs: bool = False
    """Also score the prompt tokens (for `echo` with `logprobs`)."""
    cancelled: bool = False


class _Decoding:
    """A row's state inside a batch."""

    def __init__(self, row: Row, tokenizer: Tokenizer, device: torch.device):
        self.row = row
        self.text = TextStream(tokenizer, row.stop)
        self.generated = 0
        self.generator = None
        if row.temperature > 0 and row.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(row.seed)


def keep_cache_rows(cache: KVCache, index: torch.Tensor) -> None:
    """Drop the cache rows not in `index` (finished rows), in place."""
    cache.keys = [k.index_select(0, index) for k in cache.keys]
    cache.values = [v.index_select(0, index) for v in cache.values]
    cache.valid = cache.valid.index_select(0, index)


def join_caches(caches: list[KVCache]) -> KVCache:
    """One cache holding the rows of caches filled to the same slot, in order."""
    joined = caches[0]
    if len(caches) > 1:
        joined.keys = [torch.cat(parts) for parts in zip(*(c.keys for c in caches), strict=True)]
        joined.values = [
            torch.cat(parts) for parts in zip(*(c.values for c in caches), strict=True)
        ]
        joined.valid = torch.cat([c.valid for c in caches])
        joined.has_padding = any(c.has_padding for c in caches)
    return joined


def top_logprobs(logprobs: torch.Tensor, count: int) -> list[tuple[int, float]]:
    if count <= 0:
        return []
    values, ids = torch.topk(logprobs, min(count, logprobs.shape[-1]))
    return list(zip(ids.tolist(), values.tolist(), strict=True))


def prompt_logprobs(logits: torch.Tensor, ids: list[int], count: int) -> list[TokenLogprob]:
    """Logprob of each prompt token given the ones before it; logits (T, vocab) of the row."""
    logprobs = logits[:-1].float().log_softmax(dim=-1)
    out = [TokenLogprob(ids[0], None)]
    for position, token in enumerate(ids[1:]):
        scores = logprobs[position]
        out.append(TokenLogprob(token, float(scores[token]), top_logprobs(scores, count)))
    return out


class Engine:
    """Owns the model; `submit` is thread-safe, decoding happens on the engine thread."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        max_batch_size: int = 16,
        batch_wait_s: float = 0.01,
        prefill_logits_budget: int = 2**26,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.context_length = model.config.context_length
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_s
        self.prefill_logits_budget = prefill_logits_budget  # elements: 2**26 fp32 is 256 MiB
        self.stop_ids = set(tokenizer.stop_ids)
        self.largest_batch = 0  # reported by /health: shows that concurrent requests batch
        self._pending: queue.Queue[Row | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="lmforge-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the rows already submitted, then end the engine thread."""
        self._pending.put(None)
        self._thread.join()

    def submit(self, rows: list[Row]) -> None:
        for row in rows:
            self._pending.put(row)

    def _next_batch(self) -> list[Row] | None:
        first = self._pending.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch_size:
            try:
                row = self._pending.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if row is None:
                self._pending.put(None)  # stop after this batch
                break
            batch.append(row)
        return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            batch = [row for row in batch if not row.cancelled]
            if not batch:
                continue
            try:
                with torch.inference_mode():
                    self._decode(batch)
            except Exception as error:  # one bad batch must not take the server down
                log.exception("batch of %d rows failed", len(batch))
                for row in batch:
                    row.emit(("error", row.index, f"{type(error).__name__}: {error}"))

    def _decode(self, rows: list[Row]) -> None:
        model, device = self.model, self.device
        self.largest_batch = max(self.largest_batch, len(rows))
        tokens, pads, positions = _left_pad([r.prompt_ids for r in rows], device)
        cache, last, prompt_scores = self._prefill(rows, tokens, pads, positions)
        live = [_Decoding(row, self.tokenizer, device) for row in rows]
        next_position = positions[:, -1:] + 1
        origin = list(range(len(rows)))  # batch position -> index into `rows`
        while True:
            chosen = self._pick(last, live)
            keep = []
            for i, (state, token) in enumerate(zip(live, chosen.tolist(), strict=True)):
                finish = self._advance(state, token, last[i])
                if finish is None:
                    keep.append(i)
                else:
                    scores = prompt_scores.get(origin[i])
                    state.row.emit(("done", state.row.index, finish, state.generated, scores))
            if not keep:
                return
            if len(keep) < len(live):
                index = torch.tensor(keep, device=device)
                keep_cache_rows(cache, index)
                chosen, next_position = chosen[index], next_position[index]
                live, origin = [live[i] for i in keep], [origin[i] for i in keep]
            last = model(chosen[:, None], cache=cache, positions=next_position)[:, -1]
            next_position = next_position + 1

    def _prefill(self, rows: list[Row], tokens, pads, positions):
        """Fill one KV cache with the left-padded prompts (B, T); returns it, the last
        position's logits (B, vocab) and the echoed rows' prompt logprobs by row.

        The forward pass yields logits for every prompt position, B x T x vocab floats (16
        rows of 8k tokens of a 49k vocabulary would be 25 GB), so rows are prefilled in groups
        that keep it under `prefill_logits_budget` elements, and the caches joined after."""
        config, device = self.model.config, self.device
        needed = max(len(r.prompt_ids) + r.max_tokens for r in rows)
        cache_len = min(self.context_length, -(-needed // CACHE_ROUNDING) * CACHE_ROUNDING)
        cache_type = StaticKVCache if static_cache_supported(config) else KVCache
        dtype = self.model.token_embedding.weight.dtype
        group = max(1, self.prefill_logits_budget // (tokens.shape[1] * config.vocab_size))
        caches, lasts, scores = [], [], {}
        for start in range(0, len(rows), group):
            part = slice(start, start + group)
            cache = cache_type(config, len(rows[part]), cache_len, device, dtype)
            cache.set_padding(pads[part])
            logits = self.model(tokens[part], cache=cache, positions=positions[part])
            for i in range(start, start + len(rows[part])):
                if rows[i].echo_logprobs:
                    row_logits = logits[i - start, int(pads[i]) :]
                    scores[i] = prompt_logprobs(
                        row_logits, rows[i].prompt_ids, rows[i].logprobs or 0
                    )
            caches.append(cache)
            lasts.append(logits[:, -1])
        return join_caches(caches), torch.cat(lasts), scores

    @staticmethod
    def _pick(logits: torch.Tensor, live: list[_Decoding]) -> torch.Tensor:
        """One token per row (B,): argmax for greedy rows, each sampled row with its settings."""
        chosen = logits.argmax(dim=-1)
        for i, state in enumerate(live):
            row = state.row
            if row.temperature > 0:
                scaled = filter_logits(
                    logits[i : i + 1].float() / row.temperature, row.top_k, row.top_p
                )
                probs = scaled.softmax(dim=-1)
                chosen[i] = torch.multinomial(probs, 1, generator=state.generator)[0, 0]
        return chosen

    def _advance(self, state: _Decoding, token: int, logits: torch.Tensor) -> str | None:
        """Hand a row its new token; the finish reason when the row is done, else None."""
        row = state.row
        state.generated += 1
        if row.cancelled:
            return "cancelled"
        if token in self.stop_ids:
            row.emit(("text", row.index, state.text.flush(), []))
            return "stop"
        scores = []
        if row.logprobs is not None:
            logprobs = logits.float().log_softmax(dim=-1)
            top = top_logprobs(logprobs, row.logprobs)
            scores = [TokenLogprob(token, float(logprobs[token]), top)]
        piece, stopped = state.text.push(token)
        if stopped:
            row.emit(("text", row.index, piece, scores))
            return "stop"
        if state.generated >= row.max_tokens:
            row.emit(("text", row.index, piece + state.text.flush(), scores))
            return "length"
        if piece or scores:
            row.emit(("text", row.index, piece, scores))
        return None
