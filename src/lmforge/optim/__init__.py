"""Optimizers and learning-rate schedules: AdamW, Muon with AdamW, ZeRO-1 sharding of either.

Below `parallel/` and `checkpoint/`: the sharded checkpoint code saves and restores these
optimizers' state, and the training loop builds them.
"""
