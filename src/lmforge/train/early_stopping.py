"""Early stopping: patience, counted in evaluations, on the val loss."""

from __future__ import annotations

import math


class EarlyStopping:
    """`update(val_loss)` is True once `patience` evaluations in a row brought no new best.
    patience 0 never stops. Its state goes into the checkpoint, so a resumed run counts on."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = math.inf
        self.evaluations_without_improvement = 0

    def update(self, val_loss: float) -> bool:
        if val_loss < self.best:
            self.best, self.evaluations_without_improvement = val_loss, 0
        else:
            self.evaluations_without_improvement += 1
        return 0 < self.patience <= self.evaluations_without_improvement

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.evaluations_without_improvement}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.evaluations_without_improvement = state["best"], state["bad"]
