"""From a request to engine rows and back: `n` choices (and `best_of` candidates) per prompt,
each row's sampling settings, and the chat logprobs object.

Prompt i's candidate j is row i * k + j (k = best_of, else n), so with best_of unset a row's
index is its choice's index, as OpenAI numbers them. With a seed, candidate j samples with seed
+ j: the choices differ, and the same request returns the same choices again.
"""

from __future__ import annotations

from lmforge.serve.engine import Row, TokenLogprob
from lmforge.serve.protocol import SamplingRequest
from lmforge.serve.responses import RowResult
from lmforge.tokenizer import Tokenizer


def make_rows(
    body: SamplingRequest,
    prompts: list[list[int]],
    candidates: int,
    max_tokens: int,
    emit,
    logprobs: int | None,
    echo: bool,
) -> list[Row]:
    """`candidates` rows per prompt, with the request's sampling settings."""
    return [
        Row(
            index=i * candidates + j,
            prompt_ids=ids,
            max_tokens=max_tokens,
            emit=emit,
            temperature=body.temperature,
            top_k=body.top_k_or_none(),
            top_p=body.top_p_or_none(),
            seed=None if body.seed is None else body.seed + j,
            stop=body.stop_strings(),
            logprobs=logprobs,
            echo_logprobs=echo,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logit_bias=body.token_bias(),
        )  # fmt: skip
        for i, ids in enumerate(prompts)
        for j in range(candidates)
    ]


def mean_logprob(result: RowResult) -> float:
    """best_of's ranking: the mean logprob of the generated tokens (OpenAI's "highest log
    probability per token"), the model's own logprobs; no tokens ranks last."""
    scores = [entry.logprob for entry in result.logprobs if entry.logprob is not None]
    return sum(scores) / len(scores) if scores else float("-inf")


def best_rows(results: list[RowResult], prompts: int, candidates: int, n: int) -> list[int]:
    """Row numbers of the n best candidates of each prompt, prompt by prompt, best first; all
    rows in order when there is nothing to choose from (candidates == n)."""
    if candidates == n:
        return list(range(prompts * n))
    chosen = []
    for i in range(prompts):
        rows = range(i * candidates, (i + 1) * candidates)
        chosen += sorted(rows, key=lambda row: -mean_logprob(results[row]))[:n]
    return chosen


def chat_logprobs(tokenizer: Tokenizer, entries: list[TokenLogprob]) -> dict:
    """OpenAI's chat logprobs object: each generated token, its logprob, its UTF-8 bytes and
    its top alternatives."""

    def token(token_id: int, logprob: float) -> dict:
        text = tokenizer.decode([token_id], skip_special=False)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    content = [
        token(entry.token_id, entry.logprob) | {"top_logprobs": [token(*t) for t in entry.top]}
        for entry in entries
    ]
    return {"content": content, "refusal": None}


def chat_choices(tokenizer: Tokenizer, results: list[RowResult], logprobs: bool) -> list[dict]:
    return [
        {
            "index": index,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": chat_logprobs(tokenizer, result.logprobs) if logprobs else None,
            "finish_reason": result.finish_reason,
        }
        for index, result in enumerate(results)
    ]
