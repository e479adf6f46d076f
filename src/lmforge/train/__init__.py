"""Pretraining: the loop, optimizers, checkpoints, health checks and metrics.

Calling this package runs `lmforge.api.train` (so `from lmforge import train; train("tiny")`
works; see lmforge/_callable_package.py).
"""

from lmforge._callable_package import make_callable

make_callable(__name__)
