"""The serving engine: one background thread that batches rows continuously.

Each step of the engine thread:
1. drops rows whose client left and stops rows past their deadline;
2. admits waiting rows while the batch has room, taking the longest cached prefix of each
   prompt from the prefix cache;
3. prefills the admitted rows in chunks, within the step's token budget (`max_step_tokens`
   minus one token per decoding row), so that a long prompt never stalls the running rows for
   more than one chunk; a row whose prompt is done gets its first token and joins the decode;
4. decodes one token for every running row in one forward pass, and retires finished rows.

Each row keeps its own sampling settings and random generator, so a greedy or seeded row yields
the same tokens alone or in any batch. The rows' keys/values live in a `SlotStore`, each row at
its own length (see slot_cache.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import torch

from lmforge.models.transformer import Transformer
from lmforge.serve.metrics import EngineMetrics
from lmforge.serve.prefix_cache import PrefixCache
from lmforge.serve.rows import Row, Sequence, TokenLogprob, pick_tokens, score_prompt_chunk
from lmforge.serve.rows import top_logprobs as top_logprobs
from lmforge.serve.slot_cache import SlotStore
from lmforge.tokenizer import Tokenizer

log = logging.getLogger("lmforge.serve")


@dataclass
class EngineSettings:
    max_batch_size: int = 16
    """Most rows decoded together."""
    max_step_tokens: int = 512
    """Tokens one step may process: one per decoding row, the rest for prefill chunks."""
    prefill_rows: int = 4
    """Rows being prefilled at once (their prompts are processed in arrival order)."""
    max_queue: int = 256
    """Rows that may wait for a batch slot; more get 429."""
    request_timeout: float | None = None
    """Seconds from arrival after which a row is stopped (504); None: no limit."""
    kv_cache_memory: int = 2**30
    """Bytes of keys/values the prefix cache keeps; 0 turns it off."""
    prefix_block: int = 16
    """Tokens per prefix-cache block: a prefix is reused in whole blocks."""
    prefill_logits_budget: int = 2**26
    """Most logits (elements) one prefill chunk may produce when the prompt is scored (echo)."""


class QueueFull(Exception):
    pass


class Engine:
    """Owns the model; `submit` is thread-safe, decoding happens on the engine thread."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, **settings):
        self.settings = s = EngineSettings(**settings)
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.context_length = model.config.context_length
        self.stop_ids = set(tokenizer.stop_ids)
        self.metrics = EngineMetrics()
        self.largest_batch = 0  # reported by /health: shows that concurrent requests batch
        dtype = model.token_embedding.weight.dtype
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            dtype = torch.float32
        self.store = SlotStore(model.config, s.max_batch_size + s.prefill_rows, self.device, dtype)
        self.prefix = PrefixCache(s.prefix_block, s.kv_cache_memory)
        self.waiting: deque[Row] = deque()
        self.prefilling: list[Sequence] = []
        self.decoding: list[Sequence] = []  # decoding[i] lives in slot i
        self.free_prefill_slots = list(range(s.max_batch_size, self.store.slots))
        self._incoming: queue.Queue[Row | None] = queue.Queue()
        self._queued = 0  # rows submitted and not yet admitted (or dropped)
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="lmforge-engine", daemon=True)

    def start(self) -> None:
        """Run the engine on a thread of its own (`run` runs it on the calling thread)."""
        self._thread.start()

    def run(self) -> None:
        """The engine loop on this thread, until `request_stop` and the rows already submitted
        are done."""
        self._loop()

    def request_stop(self) -> None:
        self._incoming.put(None)

    def stop(self) -> None:
        """Finish the rows already submitted, then end the engine thread."""
        self.request_stop()
        self._thread.join()

    def submit(self, rows: list[Row]) -> None:
        """Queue rows (all or none); QueueFull when the queue would pass `max_queue`."""
        with self._lock:
            if self._queued + len(rows) > self.settings.max_queue:
                self.metrics.rejected.inc()
                raise QueueFull(f"{self._queued} rows are waiting (--max_queue)")
            self._queued += len(rows)
        if self.settings.request_timeout is not None:
            for row in rows:
                row.deadline = row.arrived + self.settings.request_timeout
        for row in rows:
            self._incoming.put(row)

    # --- the engine thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            idle = not (self.waiting or self.prefilling or self.decoding)
            if idle:
                if self._stopping:
                    return
                self._release_memory()
            self._take_incoming(block=idle)
            try:
                with torch.inference_mode():
                    self._step()
            except Exception as error:  # one bad step must not take the server down
                log.exception("engine step failed")
                self._fail_running(f"{type(error).__name__}: {error}")

    def _release_memory(self) -> None:
        for slot in range(self.store.slots):
            self.store.lengths[slot] = 0
        if self.store.capacity > 256:
            self.store.reset()

    def _take_incoming(self, block: bool) -> None:
        while True:
            try:
                item = self._incoming.get(block=block)
            except queue.Empty:
                return
            block = False
            if item is None:
                self._stopping = True
            else:
                self.waiting.append(item)

    def _dequeued(self, count: int = 1) -> None:
        with self._lock:
            self._queued -= count

    def _step(self) -> None:
        self._drop_stale(time.monotonic())
        self._admit()
        self._prefill(max(self.settings.max_step_tokens - len(self.decoding), 1))
        if self.decoding:
            self._decode()
        self.metrics.queue_depth.set(self._queued)
        self.metrics.running.set(len(self.prefilling) + len(self.decoding))
        self.metrics.cache_bytes.set(self.prefix.bytes)

    def _drop_stale(self, now: float) -> None:
        """Rows whose client left, and rows past their deadline (504)."""
        for row in list(self.waiting):
            if row.cancelled or _late(row, now):
                self.waiting.remove(row)
                self._dequeued()
                self._end_unstarted(row)
        for seq in self.prefilling + self.decoding:
            if seq.row.cancelled:
                self._finish(seq, "cancelled")
            elif _late(seq.row, now):
                self._finish(seq, None)

    def _end_unstarted(self, row: Row) -> None:
        if row.cancelled:
            row.emit(("done", row.index, "cancelled", 0, None, 0))
            self.metrics.requests.labels("cancelled").inc()
        else:
            row.emit(("error", row.index, _timeout_message(self.settings), 504))
            self.metrics.requests.labels("timeout").inc()

    def _admit(self) -> None:
        limit = self.settings.max_batch_size
        while (
            self.waiting
            and self.free_prefill_slots
            and len(self.decoding) + len(self.prefilling) < limit
        ):
            row = self.waiting.popleft()
            self._dequeued()
            seq = Sequence(row, self.tokenizer, self.device)
            seq.slot = self.free_prefill_slots.pop()
            cached, parts = 0, None
            if not row.echo_logprobs:  # echo needs the logits of every prompt token
                cached, parts = self.prefix.lookup(row.prompt_ids, len(row.prompt_ids) - 1)
            if parts is not None:
                self.store.write(seq.slot, 0, parts)
            self.store.lengths[seq.slot] = cached
            seq.prefilled = seq.cached = cached
            if row.echo_logprobs:
                seq.prompt_scores = []
            self.metrics.count_prompt(len(row.prompt_ids), cached)
            self.prefilling.append(seq)

    def _prefill(self, budget: int) -> None:
        """Prompt chunks, oldest row first, until the budget is spent (at least one token).

        Rows that score their prompt (echo) run alone, since they need every position's logits;
        the others run together in one forward pass, right-padded, so that the pass's fixed
        costs (a weight-only layer dequantizes its weights for a long chunk) are paid once."""
        chunks: list[tuple[Sequence, int]] = []
        for seq in list(self.prefilling):  # _first_token takes finished rows out
            if budget <= 0:
                break
            chunk = min(len(seq.row.prompt_ids) - seq.prefilled, budget)
            if seq.row.echo_logprobs:
                vocab = self.model.config.vocab_size
                chunk = min(chunk, max(1, self.settings.prefill_logits_budget // vocab))
                self._prefill_scored(seq, chunk)
            else:
                chunks.append((seq, chunk))
            budget -= chunk
        if chunks:
            self._prefill_together(chunks)

    def _prefill_together(self, chunks: list[tuple[Sequence, int]]) -> None:
        rows = [seq for seq, _ in chunks]
        view = self.store.view([seq.slot for seq in rows], [count for _, count in chunks])
        width = view.num_new
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        for i, (seq, count) in enumerate(chunks):
            part = seq.row.prompt_ids[seq.prefilled : seq.prefilled + count]
            tokens[i, :count] = torch.tensor(part)
        tokens = tokens.to(self.device)
        at = view.last_positions()
        logits = self.model(tokens, cache=view, positions=view.positions(), logits_at=at)
        for i, (seq, count) in enumerate(chunks):
            seq.prefilled += count
            if seq.prefilled == len(seq.row.prompt_ids):
                self._first_token(seq, logits[i, -1])

    def _prefill_scored(self, seq: Sequence, chunk: int) -> None:
        prompt, start = seq.row.prompt_ids, seq.prefilled
        view = self.store.view([seq.slot], [chunk])
        tokens = torch.tensor([prompt[start : start + chunk]], device=self.device)
        logits = self.model(tokens, cache=view, positions=view.positions())
        seq.prompt_scores += score_prompt_chunk(logits[0], prompt, start, seq.row.logprobs or 0)
        seq.prefilled += chunk
        if seq.prefilled == len(prompt):
            self._first_token(seq, logits[0, -1])

    def _first_token(self, seq: Sequence, logits: torch.Tensor) -> None:
        self.prefilling.remove(seq)
        self.prefix.insert(seq.row.prompt_ids, lambda a, b: self.store.read(seq.slot, a, b))
        token = int(pick_tokens(logits[None], [seq])[0])
        finish = self._advance(seq, token, logits)
        if finish is not None:
            self.free_prefill_slots.append(seq.slot)
            self._report(seq, finish)
            return
        target = len(self.decoding)
        self.store.move(seq.slot, target)
        self.free_prefill_slots.append(seq.slot)
        seq.slot, seq.pending = target, token
        self.decoding.append(seq)
        self.largest_batch = max(self.largest_batch, len(self.decoding))

    def _decode(self) -> None:
        rows = self.decoding
        view = self.store.view(list(range(len(rows))), [1] * len(rows))
        tokens = torch.tensor([[seq.pending] for seq in rows], device=self.device)
        logits = self.model(tokens, cache=view, positions=view.positions(), last_only=True)
        logits = logits[:, -1]
        chosen = pick_tokens(logits, rows).tolist()
        for i, (seq, token) in reversed(list(enumerate(zip(rows, chosen, strict=True)))):
            finish = self._advance(seq, token, logits[i])
            if finish is None:
                seq.pending = token
            else:
                self._finish(seq, finish)

    def _advance(self, seq: Sequence, token: int, logits: torch.Tensor) -> str | None:
        """Hand a row its new token; the finish reason when the row is done, else None."""
        row = seq.row
        seq.generated.append(token)
        self._time_token(seq)
        if row.cancelled:
            return "cancelled"
        if token in self.stop_ids:
            row.emit(("text", row.index, seq.text.flush(), []))
            return "stop"
        scores = []
        if row.logprobs is not None:
            logprobs = logits.float().log_softmax(dim=-1)
            top = top_logprobs(logprobs, row.logprobs)
            scores = [TokenLogprob(token, float(logprobs[token]), top)]
        piece, stopped = seq.text.push(token)
        if stopped:
            row.emit(("text", row.index, piece, scores))
            return "stop"
        if len(seq.generated) >= row.max_tokens:
            row.emit(("text", row.index, piece + seq.text.flush(), scores))
            return "length"
        if piece or scores:
            row.emit(("text", row.index, piece, scores))
        return None

    def _time_token(self, seq: Sequence) -> None:
        now = time.monotonic()
        if seq.last_token_time is None:
            self.metrics.ttft.observe(now - seq.row.arrived)
        else:
            self.metrics.inter_token.observe(now - seq.last_token_time)
        seq.last_token_time = now
        self.metrics.generated_tokens.inc()

    def _finish(self, seq: Sequence, finish: str | None) -> None:
        """Take a running row out of the batch (finish None: it timed out) and report it."""
        if seq in self.prefilling:
            self.prefilling.remove(seq)
            self.free_prefill_slots.append(seq.slot)
        else:
            i, last = self.decoding.index(seq), len(self.decoding) - 1
            tokens = seq.tokens_in_cache(self.store.lengths[i])
            self.prefix.insert(tokens, lambda a, b: self.store.read(i, a, b))
            if i != last:  # keep the running rows in slots [0, D)
                self.store.move(last, i)
                self.decoding[i] = self.decoding[last]
                self.decoding[i].slot = i
            self.decoding.pop()
        if finish is None:
            seq.row.emit(("error", seq.row.index, _timeout_message(self.settings), 504))
            self.metrics.requests.labels("timeout").inc()
        else:
            self._report(seq, finish)

    def _report(self, seq: Sequence, finish: str) -> None:
        row = seq.row
        row.emit(("done", row.index, finish, len(seq.generated), seq.prompt_scores, seq.cached))
        self.metrics.requests.labels(finish).inc()
        self.metrics.duration.observe(time.monotonic() - row.arrived)

    def _fail_running(self, message: str) -> None:
        for seq in self.prefilling + self.decoding:
            seq.row.emit(("error", seq.row.index, message, 500))
            self.metrics.requests.labels("error").inc()
        self.prefilling, self.decoding = [], []
        self.free_prefill_slots = list(range(self.settings.max_batch_size, self.store.slots))
        self._release_memory()


def _late(row: Row, now: float) -> bool:
    return row.deadline is not None and now > row.deadline


def _timeout_message(settings: EngineSettings) -> str:
    return (
        f"the request ran past this server's {settings.request_timeout:g} s limit "
        "(--request_timeout); ask for fewer tokens or retry when the server is less busy"
    )
