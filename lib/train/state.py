"""What a training run is made of: its job (inputs, outputs, hooks), what stays fixed while
it runs (``Run``), what changes (``TrainState``, which is what a checkpoint holds), and its
result. No training happens here (aekit.train.loop)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import torch

from aekit.models.modelfile import Normalizer
from aekit.models.base import ClipModel
from aekit.system.csvout import csv_line
from aekit.system.fileio import atomic_path, null_progress
from aekit.train.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, rng_state,
                                    set_rng_state)
from aekit.train.distributed import Dist
from aekit.train.schedule import Plateau, lr_at
from aekit.train.settings import TrainSettings


@dataclass
class TrainJob:
    """Everything ``aekit.train.loop.train`` takes besides the settings: where the data come
    from, where the results go, how the run is driven. The settings decide the weights; the
    job decides nothing about them but the rows (splits, fold, labels, where)."""

    features: str | os.PathLike  # the features file (HDF5)
    output: str | os.PathLike  # the model file written
    splits: str | os.PathLike | None = None  # a splits CSV (ae-split); with ``fold``
    fold: int | None = None  # the validation fold of ``splits``; the others train
    labels: str | os.PathLike | None = None  # a labels CSV, for ``where``
    where: str | None = None  # a query on the labels selecting the training rows
    device: torch.device | None = None  # None: the best available
    dist: Dist | None = None  # the process group (aekit.train.distributed); None: one process
    resume: bool = False  # continue from the checkpoint directory's last.pt
    log: str | None = None  # a CSV of the epochs, rewritten after each
    checkpoint_dir: str | os.PathLike | None = None  # None: OUTPUT.ckpt
    checkpoint_every: int = 1  # epochs between last.pt writes
    data_mode: str = "auto"  # auto, memory, stream (aekit.train.batches.open_source)
    workers: int = 2  # read-ahead threads when streaming
    stop_requested: Callable[[], bool] | None = None  # polled after every step
    on_step: Callable[[int], None] | None = None  # called with the global step after each
    progress: Callable = null_progress  # a progress-bar factory (aekit.system.fileio)
    meta: dict | None = None  # extra metadata stored in the model file

    def args(self) -> dict:
        """The job as a checkpoint records it."""
        return {"features": str(self.features), "output": str(self.output),
                "splits": _str(self.splits), "fold": self.fold, "labels": _str(self.labels),
                "where": self.where, "checkpoint_every": self.checkpoint_every,
                "data_mode": self.data_mode}


def _str(path) -> str | None:
    return None if path is None else str(path)


@dataclass
class TrainData:
    """What a run trains on: the rows selected, the model config, the features' parameters
    and identity (stored in checkpoints), the normalizer and the sources of units."""

    rows: object  # aekit.train.batches.RowSelection
    config: object  # the model's config (aekit.models.registry)
    feature_params: dict
    identity: dict  # shape, selection, ids digest, feature parameters, values' SHA-256
    normalizer: Normalizer
    train: object  # a source of training units (aekit.train.batches.open_source)
    val: object | None  # the validation units' source; None without a validation set


@dataclass
class Run:
    """What stays fixed during a run: settings, data, the network as called, paths, hooks."""

    settings: TrainSettings
    dist: Dist
    device: torch.device
    net: torch.nn.Module  # the model, or its DDP wrapper
    train_src: object
    val_src: object | None
    weight: torch.Tensor | None  # loss weight in the model's unit layout
    amp: ContextManager
    sizes: list[int]  # batch sizes of one epoch on this rank
    last_path: Path
    best_path: Path
    identity: dict  # settings, data, config, args, feature_params: stored in checkpoints
    checkpoint_every: int = 1
    log: str | None = None
    stop_requested: Callable[[], bool] | None = None
    on_step: Callable[[int], None] | None = None
    progress: Callable = null_progress
    flags: torch.Tensor | None = None  # [stop, non-finite], max-reduced over ranks
    unit: str = "units"  # what a training unit is, for the epoch lines ('clips', 'windows')
    started: float = field(default_factory=time.monotonic)  # for the epoch lines' elapsed time

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sizes)

    @property
    def total_steps(self) -> int:
        return len(self.sizes) * self.settings.epochs

    def stop(self) -> bool:
        return bool(self.stop_requested()) if self.stop_requested is not None else False


@dataclass
class TrainState:
    """Everything that changes while training. A checkpoint is this state plus the run's
    identity (settings, data, config), so resuming restores it and nothing else."""

    model: ClipModel
    optimizer: torch.optim.Optimizer
    normalizer: Normalizer
    epoch: int = 0  # epochs completed
    step: int = 0  # steps done in epoch ``epoch`` (0 at an epoch boundary)
    perm: torch.Tensor | None = None  # this rank's order of units in that epoch, mid-epoch only
    loss_sum: float = 0.0  # of that epoch so far, all ranks: sum of dB^2 x units
    units: int = 0  # units seen in that epoch so far, all ranks
    seconds: float = 0.0  # time spent in that epoch so far
    history: list[dict] = field(default_factory=list)
    best_val: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0  # epochs since the best validation loss
    stopped_early: bool = False
    plateau: Plateau = field(default_factory=Plateau)  # the plateau schedule's state

    def to_checkpoint(self, run: Run) -> dict:
        """last.pt: everything needed to continue bit for bit."""
        s, n, spe = run.settings, self.normalizer, run.steps_per_epoch
        done = self.epoch * spe + self.step
        return {
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": {"name": s.schedule, "step": done, "total": run.total_steps,
                         "lr": lr_at(min(done, run.total_steps - 1), run.total_steps, spe, s,
                                     self.plateau.scale)},
            "plateau": self.plateau.state_dict(),
            "normalizer": {"mode": n.mode, "mean": n.mean.cpu().reshape(-1),
                           "std": n.std.cpu().reshape(-1)},
            "epoch": self.epoch, "step": self.step,
            "perm": self.perm if self.perm is not None else torch.zeros(0, dtype=torch.int64),
            "epoch_loss_sum": self.loss_sum, "epoch_rows": self.units,
            "epoch_seconds": self.seconds, "rng": rng_state(), "history": self.history,
            "best_val": self.best_val, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "stopped_early": self.stopped_early,
            **run.identity,
        }

    def to_best_checkpoint(self) -> dict:
        """best.pt: the model of the best validation epoch (this one, just completed)."""
        return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                "kind": "best", "model": self.model.state_dict(), "epoch": self.epoch,
                "val_loss": self.best_val}

    def load_checkpoint(self, ck: dict) -> None:
        """Restore from ``to_checkpoint``'s dict (the normalizer was restored before the
        data were prepared; the RNG states last, as they were saved)."""
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.history = list(ck["history"])
        self.best_val, self.best_epoch, self.bad_epochs = (ck["best_val"], ck["best_epoch"],
                                                           ck["bad_epochs"])
        self.epoch, self.step = int(ck["epoch"]), int(ck["step"])
        self.stopped_early = bool(ck.get("stopped_early", False))
        self.plateau = Plateau.from_state(ck.get("plateau"))
        self.loss_sum, self.units = float(ck["epoch_loss_sum"]), int(ck["epoch_rows"])
        self.seconds = float(ck["epoch_seconds"])
        self.perm = ck["perm"] if self.step else None
        set_rng_state(ck["rng"])

    @classmethod
    def from_checkpoint(cls, ck: dict, model: ClipModel, optimizer: torch.optim.Optimizer,
                        normalizer: Normalizer) -> "TrainState":
        state = cls(model, optimizer, normalizer)
        state.load_checkpoint(ck)
        return state


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float | None = None
    stopped_early: bool = False
    weights: str = "last"
    n_train: int = 0
    n_val: int = 0


def write_log(path: str, history: list[dict], final: bool = False) -> None:
    """Write the whole log; a regular file is replaced atomically after every epoch, an output
    written in place (a device, a FIFO, /dev/stdout) only once, at the end (``final``): it
    cannot be rewritten, and appending every epoch would repeat the header and rows."""
    from aekit.system.fileio import output_target

    if not final and output_target(path)[1]:
        return
    cols = ["epoch", "train_loss", "val_loss", "lr", "seconds", "samples_per_s"]
    with atomic_path(path, special_ok=True) as tmp, \
            open(tmp, "a" if tmp == Path(path) else "w", encoding="utf-8", newline="") as fh:
        fh.write(csv_line(cols))
        for h in history:
            fh.write(csv_line("" if h.get(c) is None
                              else (f"{h[c]:.6g}" if isinstance(h[c], float) else h[c])
                              for c in cols))
