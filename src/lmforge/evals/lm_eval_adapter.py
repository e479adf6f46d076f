"""EleutherAI's lm-evaluation-harness on an lmforge model, in-process (`lmforge eval lm-eval`).

`LmforgeLM` is a native lm-eval model (registered as `lmforge`): its three request types go
straight to the Python API (lmforge.load and its LanguageModel), which batches them. The task configs
shipped in lm_eval_tasks/ read local files, so HellaSwag and WikiText-2 run offline; any other
lm-eval task config (for example one with `dataset_path: json` and local `data_files`) can be
added with --include_path. Needs the `eval` extra: pip install 'lmforge[eval]'.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lmforge.errors import ConfigError
from lmforge.inference.language_model import LanguageModel, load

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
SHIPPED_TASKS = ("lmforge_hellaswag", "lmforge_wikitext2")


@register_model("lmforge")
class LmforgeLM(LM):
    """lm-eval's LM interface over `lmforge.load(checkpoint)` (or an already loaded model)."""

    def __init__(
        self,
        checkpoint: str | None = None,
        model: LanguageModel | None = None,
        device: str = "auto",
        dtype: str = "fp32",
        batch_size: int | str = 16,
        max_gen_toks: int = 256,
        **_: Any,  # lm-eval passes its own extras (max_batch_size, ...)
    ):
        super().__init__()
        if (checkpoint is None) == (model is None):
            raise ConfigError("LmforgeLM needs exactly one of checkpoint= and model=")
        size = 16 if str(batch_size).startswith("auto") else int(batch_size)
        self.lm = model if model is not None else load(checkpoint, device, dtype, batch_size=size)
        self.lm.batch_size = size
        self.max_gen_toks = int(max_gen_toks)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self.lm.loglikelihood([tuple(r.args) for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return self.lm.loglikelihood_rolling([r.args[0] for r in requests])

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests that share generation settings decode as one batch (lm-eval's gen_kwargs:
        until, max_gen_toks, do_sample, temperature, top_p, top_k, seed)."""
        groups: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[repr(sorted(request.args[1].items()))].append(index)
        outputs: list[str] = [""] * len(requests)
        for indices in groups.values():
            settings = dict(requests[indices[0]].args[1])
            until = settings.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            sampled = settings.pop("do_sample", False)
            temperature = float(settings.pop("temperature", 1.0 if sampled else 0.0))
            texts = self.lm.generate(
                [requests[i].args[0] for i in indices],
                max_new_tokens=int(settings.pop("max_gen_toks", self.max_gen_toks)),
                temperature=temperature if sampled or temperature > 0 else 0.0,
                top_p=settings.pop("top_p", None),
                top_k=settings.pop("top_k", None),
                stop=until,
                seed=settings.pop("seed", None),
            )
            for i, text in zip(indices, texts, strict=True):
                outputs[i] = text
        return outputs


def run_lm_eval(
    checkpoint: str,
    tasks: list[str],
    limit: int | float | None = None,
    data_files: dict[str, str] | None = None,
    include_path: list[str] | None = None,
    batch_size: int = 16,
    device: str = "auto",
    dtype: str = "fp32",
    num_fewshot: int | None = None,
    log_samples: bool = False,
    model: LanguageModel | None = None,
) -> dict:
    """lm-eval's `simple_evaluate` on a checkpoint (or a loaded model); its results dict."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    def task_manager(include_defaults: bool) -> TaskManager:
        return TaskManager(
            include_path=[str(TASKS_DIR), *(include_path or [])],
            include_defaults=include_defaults,
            metadata={"data_files": dict(data_files or {})},
        )

    # Indexing lm-eval's own thousands of task configs takes a while; only do it when asked for
    # one of them (most need a hub download, which offline machines cannot do).
    manager = task_manager(include_defaults=False)
    if any(not manager.match_tasks([t]) for t in tasks):
        manager = task_manager(include_defaults=True)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise ConfigError(
            f"unknown lm-eval task {unknown[0]!r}; shipped offline tasks: "
            f"{', '.join(SHIPPED_TASKS)}, or add a task config directory with --include_path"
        )
    lm = LmforgeLM(
        checkpoint=None if model else checkpoint,
        model=model,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
    )
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        limit=limit,
        num_fewshot=num_fewshot,
        task_manager=manager,
        log_samples=log_samples,
        bootstrap_iters=0,
    )
