"""Stage 5: decoding speed with random weights of two real shapes (SmolLM2-135M, Llama-3.2-1B),
through lmforge's own generate(): bf16 weights (as `lmforge sample` casts them on a GPU), the
static KV cache and the compiled one-token step, at batch 1 and 32. Time to first token is
prefill plus the first sampled token; decode tokens/s counts every row's tokens after it."""

from __future__ import annotations

import time

from gpu_stages.common import StageContext

GPU = {"batches": (1, 32), "prompt": 128, "new_tokens": 128, "dtype": "bf16", "compile": True}
DRY = {"batches": (1, 4), "prompt": 16, "new_tokens": 8, "dtype": "fp32", "compile": False}
# Dry run: the same head layout at a width a CPU decodes in milliseconds.
DRY_SHAPE = {"num_layers": 2, "vocab_size": 512, "ffn_dim": 128, "context_length": 512}


def run_smollm2(ctx: StageContext) -> None:
    measure(ctx, "smollm2-135m")


def run_llama(ctx: StageContext) -> None:
    measure(ctx, "llama3.2-1b")


class FirstToken:
    """An on_tokens callback that notes when the first new token is ready."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, token) -> None:
        if self.at is None:
            token.tolist()  # waits for the GPU
            self.at = time.perf_counter()


def build(ctx: StageContext, preset: str, dtype: str):
    import torch

    from lmforge.inference.decoding import prepare_for_decoding
    from lmforge.models.presets import model_preset
    from lmforge.models.transformer import Transformer

    overrides = {}
    if ctx.dry_run:
        heads = model_preset(preset).num_heads
        overrides = DRY_SHAPE | {"dim": 8 * heads}
    config = model_preset(preset, **overrides)
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = Transformer(config).eval()
    # The directory only tells prepare_for_decoding about a GGUF's quantization: there is none.
    model, description = prepare_for_decoding(model, ctx.work, dtype, "none")
    return model, description


def measure(ctx: StageContext, preset: str) -> None:
    import torch

    from lmforge.inference.generate import SamplingConfig, generate

    settings = DRY if ctx.dry_run else GPU
    model, description = build(ctx, preset, settings["dtype"])
    ctx.record("weights", f"random, {description}, static cache, compile {settings['compile']}")
    config = SamplingConfig(max_new_tokens=settings["new_tokens"], temperature=0)
    vocab = model.config.vocab_size
    for batch in settings["batches"]:
        prompts = torch.randint(0, vocab, (batch, settings["prompt"])).tolist()
        start = time.perf_counter()
        generate(model, prompts, config, compile=settings["compile"])  # compiles these shapes
        warm_up = time.perf_counter() - start
        first_token = FirstToken()
        start = time.perf_counter()
        generate(model, prompts, config, first_token, compile=settings["compile"])
        end = time.perf_counter()
        decoded = batch * (settings["new_tokens"] - 1)
        ctx.record(f"batch {batch}: decode tokens/s", round(decoded / (end - first_token.at), 1))
        ctx.record(
            f"batch {batch}: time to first token ms", round(1000 * (first_token.at - start), 1)
        )
        ctx.record(f"batch {batch}: first call (compile) s", round(warm_up, 1))
