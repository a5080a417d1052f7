"""The learning rate: ``lr_at``, a pure function of the step, and the state the plateau
schedule keeps between epochs (no torch).

After the warm-up, the plateau schedule's learning rate is the peak (the settings' ``lr``)
times a scale that starts at 1 and is halved (``PLATEAU_FACTOR``) each time the monitored
loss (the validation loss, or the training loss when there is no validation set) has not
reached a new best for ``PLATEAU_PATIENCE`` epochs in a row, down to ``min_lr_ratio`` x the peak. Unlike a cosine
decay to a fixed number of epochs, it needs no horizon, so it ends where early stopping
ends the run. The state (scale, best, epochs since the best) is saved in every checkpoint,
so a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aekit.train.settings import TrainSettings

PLATEAU_FACTOR = 0.5  # the scale's factor at each reduction
PLATEAU_PATIENCE = 3  # epochs without a new best loss before a reduction


@dataclass
class Plateau:
    """Reduce-on-plateau: ``scale`` multiplies the peak learning rate."""

    scale: float = 1.0
    best: float | None = None
    bad: int = 0  # epochs since the best (or since the last reduction)

    def update(self, loss: float, min_scale: float) -> bool:
        """Take one epoch's monitored loss; True when the scale was reduced."""
        if self.best is None or loss < self.best:
            self.best, self.bad = loss, 0
            return False
        self.bad += 1
        if self.bad < PLATEAU_PATIENCE or self.scale <= min_scale:
            return False
        self.scale, self.bad = max(min_scale, self.scale * PLATEAU_FACTOR), 0
        return True

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict | None) -> "Plateau":
        """From ``state_dict()``'s dict (a checkpoint without one: the initial state)."""
        if not state:
            return cls()
        best = state.get("best")
        return cls(scale=float(state["scale"]), best=None if best is None else float(best),
                   bad=int(state["bad"]))


def lr_at(step: int, total: int, steps_per_epoch: int, s: "TrainSettings",
          scale: float = 1.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total``: a pure function (of
    the step and, for ``plateau``, of the scale that ``Plateau`` keeps)."""
    if s.schedule == "constant":
        return s.lr
    warm = int(round(s.warmup * steps_per_epoch))
    if step < warm:
        return s.lr * (step + 1) / warm * (scale if s.schedule == "plateau" else 1.0)
    if s.schedule == "plateau":
        return s.lr * scale
    span = max(1, total - warm)
    t = min(1.0, (step - warm) / span)
    lo = s.lr * s.min_lr_ratio
    return lo + (s.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * t))
