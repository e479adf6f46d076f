"""The options of `lmforge serve` (the command line's dataclass). Kept apart from the server so
that the command line can list them without importing FastAPI or uvicorn (extra `serve`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.inference.options import Dtype, Quantize


@dataclass
class ServeCommand:
    """Serve a checkpoint over an OpenAI-compatible HTTP API (install lmforge[serve])."""

    checkpoint: str
    """An lmforge checkpoint or run directory (its last checkpoint), a .gguf file or a Hugging
    Face model directory."""
    host: str = "127.0.0.1"
    """Address to bind; any other than a loopback one needs --api_key."""
    port: int = 8000
    api_key: str | None = None
    """Clients must send 'Authorization: Bearer KEY' (default: $LMFORGE_API_KEY, else none)."""
    model_name: str | None = None
    """The model id clients name in requests; default: the checkpoint directory's name (a
    .gguf file's name without the suffix)."""
    max_batch_size: int = 16
    """Most prompts decoded together; more wait in the queue and join as rows finish."""
    max_step_tokens: int = 512
    """Tokens one engine step processes: one per decoding row, the rest for chunks of new
    prompts (a smaller value keeps running rows' inter-token time lower while long prompts
    are prefilled; a larger one prefills faster)."""
    max_queue: int = 256
    """Most prompts waiting for a batch slot; requests beyond it get 429."""
    request_timeout: float = 600.0
    """Seconds a request may take from arrival to its last token (504 after); 0: no limit."""
    kv_cache_memory: str = "1GiB"
    """Memory for the prefix cache (keys/values of recent prompts, reused by requests that
    start the same way), e.g. 512MiB or 2GB; 0 turns it off."""
    max_tokens_cap: int = 4096
    """Most tokens one prompt of a request may ask to generate."""
    max_body_bytes: int = 4 * 2**20
    """Largest request body accepted (413 above it)."""
    template: str | None = None
    """Chat template for /v1/chat/completions: a built-in name (chatml, llama3, llama2, alpaca)
    or Jinja source; default: the tokenizer's own."""
    threads: int = 0
    """Threads for the model's matmuls; 0: auto (OMP_NUM_THREADS when set, else one per
    physical core). On a 2-core machine, 1 decodes a single client faster (docs/serve.md)."""
    device: str = "auto"
    dtype: Dtype = "auto"
    """auto: bf16 on a GPU, fp32 on a CPU (quantized layers still multiply in bf16)."""
    quantize: Quantize = "auto"
    """Weight-only int8/int4 for CPU decoding; auto keeps an imported GGUF's precision."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
