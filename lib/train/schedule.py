"""The learning rate of ``--schedule plateau``: its state between epochs (no torch).

After the warm-up, the learning rate is the peak (``--lr``) times a scale that starts at 1
and is halved (``PLATEAU_FACTOR``) each time the monitored loss (the validation loss, or the
training loss when there is no validation set) has not reached a new best for
``PLATEAU_PATIENCE`` epochs in a row, down to ``min_lr_ratio`` x the peak. Unlike a cosine
decay to a fixed number of epochs, it needs no horizon, so it ends where early stopping
ends the run. The state (scale, best, epochs since the best) is saved in every checkpoint,
so a resumed run continues bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
