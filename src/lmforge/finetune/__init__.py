"""Post-training over the one training loop: SFT, DPO and distillation objectives, LoRA.

Calling this package runs `lmforge.api.finetune` (so `from lmforge import finetune;
finetune(...)` works; see lmforge/_callable_package.py).
"""

from lmforge._callable_package import make_callable

make_callable(__name__)
