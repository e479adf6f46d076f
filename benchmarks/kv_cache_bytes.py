"""KV-cache bytes per token for MHA / GQA / MQA / MLA at comparable sizes (bf16), checked against
the tensors a real KVCache allocates.

    PYTHONPATH=src python benchmarks/kv_cache_bytes.py
"""

from __future__ import annotations

import torch

from lmforge.models.kv_cache import KVCache, kv_cache_bytes_per_token
from lmforge.models.presets import model_preset

# A 2048-wide, 16-head, 24-layer model with each attention kind (MLA: DeepSeek-V2-Lite's widths).
BASE = dict(vocab_size=1024, dim=2048, num_layers=24, num_heads=16, context_length=4096)
KINDS = {
    "MHA (16 kv heads)": dict(num_kv_heads=16),
    "GQA (4 kv heads)": dict(num_kv_heads=4),
    "MQA (1 kv head)": dict(num_kv_heads=1),
    "MLA (r=512, rope=64)": dict(
        attention="mla", kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128
    ),
}


def main() -> None:
    rows = []
    for name, fields in KINDS.items():
        config = model_preset("tiny-llama", **BASE, **fields)
        predicted = kv_cache_bytes_per_token(config, bytes_per_element=2)
        with torch.device("meta"):  # shapes only: a real allocation of this size is not needed
            cache = KVCache(config, batch_size=1, max_len=8, device="meta", dtype=torch.bfloat16)
        measured = cache.bytes_per_token()
        assert measured == predicted, (name, measured, predicted)
        rows.append((name, predicted, predicted * 32768 / 2**30))
    mha = rows[0][1]
    print(f"{'attention':<24}{'bytes/token':>12}{'vs MHA':>9}{'GiB @ 32k ctx':>15}")
    for name, per_token, gib in rows:
        print(f"{name:<24}{per_token:>12,}{per_token / mha:>9.3f}{gib:>15.2f}")
    print("(bf16, 24 layers, batch 1; measured from KVCache tensors == predicted)")


if __name__ == "__main__":
    main()
