"""Training an autoencoder: the loop, one epoch, the training state.

The loop reads top to bottom (``train``): settings -> rows -> data -> normalizer ->
model -> optimizer -> (resume) -> epochs (``run_epoch``) -> checkpoints -> model file.
Everything that changes while training is one ``TrainState`` (model, optimizer,
normalizer, epoch, step and the epoch's order of units, running sums, history, best
score), which ``to_checkpoint``/``from_checkpoint`` turn into a checkpoint and back; the
learning rate schedule is a pure function of the step (``lr_at``), and the RNG states
are saved with it. Settings and their defaults live in ``aekit.train.settings`` (no torch),
checkpoint files in ``aekit.train.checkpoint``, process groups in ``aekit.train.distributed``.

Training counts *units*, not clips: a model declares how many training examples a clip
holds (``ClipModel.units_per_clip``); for the whole-clip models a unit is a clip.

Losses are always MSE in the features' own units (dB squared), whatever the input
normalization: the network sees normalized values, and the squared error of each
feature is weighted by its variance, which is exactly the MSE of the de-normalized
reconstruction. The optimized loss is therefore the reported loss.

Distributed: ``batch_size`` is per process. BatchNorm stays per rank (statistics of each
rank's own batch; running statistics are rank 0's, broadcast by DDP every step):
SyncBatchNorm needs CUDA and adds a collective per layer per step, and the per-rank batch
is the tutorial's 25 anyway. Rank 0 alone writes logs, checkpoints and the model file.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import torch

from aekit.system import hostmem
from aekit.train.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, checkpoint_dir_for,  # noqa: F401
                         lock_checkpoint_dir, unlock_checkpoint_dirs,
                         load_checkpoint, resume_mismatch, rng_state, save_checkpoint,
                         set_rng_state)
from aekit.train.checkpoint import CONTENT_KEY, data_content_id
from aekit.train.batches import STREAM_BLOCK_ROWS, batch_sizes, epoch_order, open_source, select_training_rows
from aekit.system.device import resolve_device
from aekit.train.distributed import Dist, distributed, distributed_env  # noqa: F401 (public here too)
from aekit.errors import AekitError, DataError, InputError
from aekit.system.fileio import LOG_STAMP, atomic_path, elapsed_text, null_progress
from aekit.models.modelfile import Normalizer, make_normalizer, save_model
from aekit.models.registry import (ClipModel, build_model, config_to_dict, count_parameters, make_config,
                     kind, unit_target)
from aekit.train.settings import (EXIT_PREEMPTED, KEEP, PRECISIONS, PRESETS,  # noqa: F401
                       RESUME_MUST_MATCH, SCHEDULES, TrainSettings, make_settings)
from aekit.train.schedule import Plateau
from aekit.data.store import FeatureFile

LOG = logging.getLogger("aekit")


class Preempted(AekitError):
    """A stop was requested (SIGTERM/SIGUSR1); a resumable checkpoint has been written."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, checkpoint: Path, epoch: int, step: int):
        super().__init__(f"stopped at epoch {epoch} step {step}; checkpoint {checkpoint}; "
                         "run again with --resume to continue")
        self.checkpoint = checkpoint


# --------------------------------------------------------------------------- pieces

def lr_at(step: int, total: int, steps_per_epoch: int, s: TrainSettings,
          scale: float = 1.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total``: a pure function (of
    the step and, for ``plateau``, of the scale that aekit.train.schedule.Plateau keeps)."""
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


def make_optimizer(params, lr: float) -> torch.optim.Optimizer:
    """Adam as in the tutorial, with the fused kernel where this torch has one (measured
    fastest on CPU in bench/bench_train.py), else the multi-tensor one."""
    params = list(params)
    with contextlib.suppress(RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr, foreach=True)


@functools.lru_cache(maxsize=1)
def _adam_keywords() -> frozenset:
    import inspect

    from torch.optim.adam import adam

    return frozenset(inspect.signature(adam).parameters)


class StepInBackward:
    """Adam's step for each parameter run inside backward, as soon as that parameter's
    gradient is complete, its gradient dropped at once: the whole model's gradients are
    never held together (measured at full widths, batch 25, on a 2-core CPU: 0.9 GB less
    peak memory than a full backward then ``opt.step()``).

    Two ways in, one update. A ``nn.Linear`` called on a batch of rows [B, D] in float32
    outside autocast goes through ``_LinearStep``: its backward computes the input's
    gradient, then the weight's gradient into one scratch buffer the size of the largest
    weight (allocated once, reused by every layer and step: no gradient is allocated, so
    none is faulted in and zeroed by the kernel, 1.8 GB a step at full widths), and steps
    weight and bias there. Every other parameter (BatchNorm's, any other module's, any
    Linear under bf16 autocast) is stepped by a ``register_post_accumulate_grad_hook``.

    The state is the optimizer's own (``opt.state``, ``opt.param_groups``, looked up at
    each call, so load_state_dict and the lr schedule work as before) and the update is
    the same per-tensor kernel on the same gradient (the same matrix products autograd
    runs for F.linear): the weights and the optimizer state are bit-identical to
    ``opt.step()`` after a full backward (tests/test_train.py checks it), except that on
    the CPU the forward of a large layer at a small batch runs by row blocks
    (``_skinny_linear``: 1.25x faster steps at full widths), which may round an output
    differently in the last bit; a run is as deterministic as before. Not for DDP: the
    step would run before the gradient is all-reduced. A parameter used twice in one
    forward (tied weights) would be updated between its uses: refused with an error.
    """

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer):
        self.opt = opt
        self.group_of = {p: gi for gi, g in enumerate(opt.param_groups) for p in g["params"]}
        self.handles = [p.register_post_accumulate_grad_hook(self._step)
                        for p in model.parameters() if p.requires_grad]
        self.linears = [m for m in model.modules() if type(m) is torch.nn.Linear
                        and m.weight.requires_grad and m.weight in self.group_of
                        and (m.bias is None or (m.bias.requires_grad
                                                and m.bias in self.group_of))]
        for m in self.linears:
            m.forward = functools.partial(_linear_forward, m, self)  # this instance only
        self._scratch: torch.Tensor | None = None
        self.steps: dict[torch.Tensor, int] = {}  # steps made by _LinearStep, per weight
        opt.aekit_step_in_backward = True  # train_step then skips zero_grad and step

    def grad_buffer(self, p: torch.Tensor) -> torch.Tensor:
        """A [p.shape] view of the scratch buffer, for p's gradient until its step."""
        buf = self._scratch
        if buf is None or buf.device != p.device or buf.dtype != p.dtype:
            n = max(m.weight.numel() for m in self.linears)
            buf = self._scratch = torch.empty(n, device=p.device, dtype=p.dtype)
        return buf[:p.numel()].view(p.shape)

    def step_with(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        p.grad = grad
        self._step(p)

    @torch.no_grad()
    def _step(self, p: torch.Tensor) -> None:
        from torch.optim.adam import adam

        group = self.opt.param_groups[self.group_of[p]]
        one = {**group, "params": [p]}
        params, grads, avgs, sqs, maxs, steps = [], [], [], [], [], []
        has_complex = self.opt._init_group(one, params, grads, avgs, sqs, maxs, steps)
        beta1, beta2 = group["betas"]
        options = dict(amsgrad=group["amsgrad"], has_complex=has_complex, beta1=beta1,
                       beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                       eps=group["eps"], maximize=group["maximize"], foreach=group["foreach"],
                       capturable=group["capturable"], differentiable=group["differentiable"],
                       fused=group["fused"],
                       decoupled_weight_decay=group.get("decoupled_weight_decay", False))
        # Only what this torch's functional Adam takes (decoupled_weight_decay is 2.7+;
        # it is False for Adam, as the weight_decay of the older versions was).
        adam(params, grads, avgs, sqs, maxs, steps,
             **{k: v for k, v in options.items() if k in _adam_keywords()})
        p.grad = None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        for m in self.linears:
            del m.forward  # the class's forward again
        self.linears, self._scratch, self.steps = [], None, {}
        self.opt.aekit_step_in_backward = False


def _linear_forward(m: torch.nn.Linear, stepper: StepInBackward, x: torch.Tensor) -> torch.Tensor:
    w = m.weight
    if (x.dim() == 2 and x.dtype == w.dtype == torch.float32 and torch.is_grad_enabled()
            and not torch.is_autocast_enabled(x.device.type)):
        return _LinearStep.apply(x, w, m.bias, stepper)
    return torch.nn.functional.linear(x, w, m.bias)  # hooks step it, if it is trained here


#: On the CPU, x [B, K] @ W.T with few rows B and a large W runs as products of row blocks
#: of W (MKL's kernel for the whole skinny product reaches a fraction of what the blocks do).
SKINNY_ROWS, SKINNY_BLOCK, SKINNY_MIN_OUT = 64, 512, 2048


def _skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear, computed by blocks of SKINNY_BLOCK output features when the batch is small
    and the layer large, on the CPU. Measured at full widths (451 M parameters, batch 25, 2
    cores): the 25024 -> 8224 product 1.8x faster, a whole training step 1.25x (six
    interleaved pairs of steps: 1.55 s against 1.94 s on average). Each output is the same
    dot product; it may round differently in the last bit than the one large call."""
    n = weight.shape[0]
    if x.device.type != "cpu" or x.shape[0] > SKINNY_ROWS or n < SKINNY_MIN_OUT:
        return torch.nn.functional.linear(x, weight, bias)
    return torch.cat([torch.nn.functional.linear(x, weight[i:i + SKINNY_BLOCK],
                                                 None if bias is None else bias[i:i + SKINNY_BLOCK])
                      for i in range(0, n, SKINNY_BLOCK)], dim=1)


class _LinearStep(torch.autograd.Function):
    """F.linear whose backward steps its weight and bias (see StepInBackward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stepper):
        ctx.save_for_backward(x)
        ctx.params = (weight, bias, stepper, stepper.steps.get(weight, 0))
        return _skinny_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        weight, bias, stepper, steps = ctx.params
        if stepper.steps.get(weight, 0) != steps:
            raise RuntimeError("a Linear layer was used twice in one forward pass: its weight "
                               "was stepped before its first use was differentiated")
        # The products autograd runs for F.linear (addmm's backward), in the same layouts.
        gx = g.mm(weight) if ctx.needs_input_grad[0] else None  # before the step moves it
        with torch.no_grad():
            stepper.step_with(weight, torch.mm(g.t(), x, out=stepper.grad_buffer(weight)))
            stepper.steps[weight] = steps + 1
            if bias is not None:
                stepper.step_with(bias, g.sum(0))
        return gx, None, None, None


def autocast_for(device: torch.device, precision: str) -> ContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("--precision bf16: this CUDA device has no bfloat16 support")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--precision bf16 is not supported on {device.type}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _loss_weight(norm: Normalizer, model: ClipModel) -> torch.Tensor | None:
    """Per-feature weight (in the model's unit layout) turning squared error in normalized
    units into dB squared."""
    return None if norm.mode == "none" else model.target_stats(norm.loss_scale())


def _mse_db(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    out = out.float()
    if weight is None:
        return torch.nn.functional.mse_loss(out, x)
    err = out - x
    return (err * err * weight).mean()


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor,
               weight: torch.Tensor | None, amp: ContextManager) -> torch.Tensor:
    """One optimizer step on a normalized batch of units xb [B, D]; returns the loss (dB^2), unsynced.

    With a ``StepInBackward`` attached to ``opt``, backward is the step."""
    with amp:
        out, _ = net(xb)  # [B, D'] (D' = D but for a model predicting part of its unit)
    loss = _mse_db(out, unit_target(net, xb), weight)
    if getattr(opt, "aekit_step_in_backward", False):
        loss.backward()  # each parameter stepped as its gradient completes
        return loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def _write_log(path: str, history: list[dict], final: bool = False) -> None:
    """Write the whole log; a regular file is replaced atomically after every epoch, an output
    written in place (a device, a FIFO, /dev/stdout) only once, at the end (``final``): it
    cannot be rewritten, and appending every epoch would repeat the header and rows."""
    from aekit.system.fileio import output_target

    if not final and output_target(path)[1]:
        return
    cols = ["epoch", "train_loss", "val_loss", "lr", "seconds", "samples_per_s"]
    with atomic_path(path, special_ok=True) as tmp, \
            open(tmp, "a" if tmp == Path(path) else "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for h in history:
            w.writerow(["" if h.get(c) is None
                        else (f"{h[c]:.6g}" if isinstance(h[c], float) else h[c]) for c in cols])



# --------------------------------------------------------------------------- state

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
    plateau: Plateau = field(default_factory=Plateau)  # --schedule plateau's state

    def to_checkpoint(self, run: "Run") -> dict:
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
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float | None = None
    stopped_early: bool = False
    weights: str = "last"
    n_train: int = 0
    n_val: int = 0


#: A loss (MSE in dB squared) above this is no training: dB features span ~100 dB, so even a
#: model that outputs garbage stays near 1e4; anything this large is numeric blow-up.
IMPLAUSIBLE_LOSS = 1e10

_CREATED_DIRS: set[Path] = set()  # checkpoint directories this process made (removed if left empty)


def warn_empty_validation(n_val: int, fold: int | None, where: str | None = None) -> None:
    """A --fold whose validation set is empty trains with nothing to validate on: say so."""
    if fold is not None and n_val == 0:
        LOG.warning("--fold %d selects no validation rows%s: training without validation "
                    "(no val loss; --keep best keeps the last epoch; no early stop: every "
                    "one of --epochs runs)", fold,
                    f" (after --where {where!r})" if where else "")


def warn_implausible_loss(epoch: int, train_loss: float, val_loss: float | None) -> None:
    """A finite loss beyond any plausible value (numeric blow-up) is written, but not silently."""
    for what, v in (("train", train_loss), ("validation", val_loss)):
        if v is not None and math.isfinite(v) and v > IMPLAUSIBLE_LOSS:
            LOG.warning("epoch %d: %s loss %.3g dB^2 is above any plausible value (> %.0e): the "
                        "training has diverged; try a smaller --lr or --normalize global",
                        epoch, what, v, IMPLAUSIBLE_LOSS)


def make_checkpoint_dir(ckdir: Path) -> None:
    """mkdir -p, remembering whether we made it, so a run that dies before its first
    checkpoint leaves no empty MODEL.ckpt/ behind."""
    if not ckdir.exists():
        ckdir.mkdir(parents=True, exist_ok=True)
        _CREATED_DIRS.add(ckdir.resolve())


def remove_if_empty(ckdir: Path) -> None:
    """Remove a checkpoint directory this process made and never wrote to."""
    d = ckdir.resolve()
    if d in _CREATED_DIRS and d.is_dir() and not any(d.iterdir()):
        d.rmdir()
        _CREATED_DIRS.discard(d)


def removes_empty_checkpoint_dir(fn: Callable) -> Callable:
    """On any error (NaN at the first step, a bad row found while streaming...), remove the
    checkpoint directories this process made and left empty."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BaseException:
            unlock_checkpoint_dirs()
            for d in list(_CREATED_DIRS):
                remove_if_empty(d)
            raise
        finally:
            unlock_checkpoint_dirs()  # the run's lock on its checkpoint directory

    return wrapper


# --------------------------------------------------------------------------- the loop

@removes_empty_checkpoint_dir
def train(features: str | os.PathLike, output: str | os.PathLike, settings: TrainSettings, *,
          splits: str | None = None, fold: int | None = None, labels: str | None = None,
          where: str | None = None, device: torch.device | None = None, dist: Dist | None = None,
          resume: bool = False, log: str | None = None,
          checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 1,
          data_mode: str = "auto", workers: int = 2,
          stop_requested: Callable[[], bool] | None = None,
          on_step: Callable[[int], None] | None = None,
          progress: Callable = null_progress, meta: dict | None = None) -> TrainResult:
    """Train an autoencoder on a features file and write the model file ``output``.

    Raises InputError (bad input, resume mismatch), DataError (NaN/Inf loss) or Preempted
    (stop requested: a checkpoint was written; run again with resume=True).
    """
    s, dist = settings, dist or Dist()
    run, state, rows, feature_params = setup(
        features, output, s, splits=splits, fold=fold, labels=labels, where=where,
        device=device or resolve_device("auto"), dist=dist, resume=resume, log=log,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, data_mode=data_mode,
        workers=workers, stop_requested=stop_requested, on_step=on_step, progress=progress)
    model, norm, device = state.model, state.normalizer, run.device

    # -- epochs
    while state.epoch < s.epochs and not state.stopped_early:
        train_loss, units, seconds = run_epoch(run, state)
        end_epoch(run, state, train_loss, units, seconds)
        _stop_between_epochs(run, state)

    # -- the model file
    weights = "best" if s.keep == "best" and state.best_epoch is not None else "last"
    if dist.is_main:
        if weights == "best" and state.best_epoch != len(state.history):
            model.load_state_dict(load_checkpoint(run.best_path)["model"])
        # The suggested decision threshold, from all training clips' scores (rank 0 scores
        # them all) with the weights kept: aekit.evaluate.scoring.fit_threshold.
        # In the same pass: the Mahalanobis statistics of the training clips' error vectors,
        # per domain when the labels name source/target (aekit.evaluate.mahalanobis).
        from aekit.evaluate.mahalanobis import train_domains
        from aekit.evaluate.scoring import training_fit

        mahalanobis = training_scores = None
        try:
            try:
                with FeatureFile(features) as ff:
                    domains = train_domains(ff.ids, rows.train, labels)
            except AekitError as exc:
                LOG.warning("Mahalanobis statistics fitted as one domain: %s", exc)
                domains = None
            fitted: dict = {}  # the training clips' scores, for ensembles (aekit.evaluate.ensemble)
            threshold, mahalanobis = training_fit(model, norm, features, rows.train, domains,
                                                  device, scores_out=fitted)
            from aekit.evaluate.ensemble import training_stats

            training_scores = training_stats(fitted["ids"], fitted)
        except AekitError as exc:  # the model is still worth writing: say why none is stored
            LOG.warning("no decision threshold stored in the model: %s", exc)
            threshold = None
        if log and state.history:
            _write_log(log, state.history, final=True)
        save_model(output, model, norm, feature_params, state.history,
                   seed=s.seed, preset=s.preset, settings=s.to_dict(), fold=fold,
                   splits=_str(splits), where=where, n_train=rows.n_train, n_val=rows.n_val,
                   best_epoch=state.best_epoch, best_val_loss=state.best_val, weights=weights,
                   epochs_run=len(state.history), stopped_early=state.stopped_early,
                   world_size=dist.world, device=str(device), loss_units="dB^2",
                   threshold=threshold, mahalanobis_stats=mahalanobis,
                   **({"training_scores": training_scores} if training_scores else {}),
                   **(meta or {}))
    dist.barrier()
    return TrainResult(history=state.history, best_epoch=state.best_epoch,
                       best_val_loss=state.best_val, stopped_early=state.stopped_early,
                       weights=weights, n_train=rows.n_train, n_val=rows.n_val)


def setup(features, output, s: TrainSettings, *, splits, fold, labels, where,
          device: torch.device, dist: Dist, resume: bool, log, checkpoint_dir,
          checkpoint_every: int, data_mode: str, workers: int, stop_requested, on_step,
          progress) -> tuple[Run, TrainState, object, dict]:
    """Rows -> model config -> data -> normalizer -> model -> optimizer -> (resume) -> DDP.

    Returns (run, state, the selected rows, the features' parameters).
    """
    ckdir = Path(checkpoint_dir) if checkpoint_dir else checkpoint_dir_for(output)
    if s.early_stop is not None and fold is None:
        raise InputError("--early-stop needs a validation set: give --splits and --fold")
    if checkpoint_every < 1:
        raise InputError("--checkpoint-every must be at least 1")
    if dist.is_main:  # the run owns its checkpoint directory (rank 0 alone writes it)
        make_checkpoint_dir(ckdir)
        lock_checkpoint_dir(ckdir)
    ck = load_checkpoint(ckdir / "last.pt") if resume else None
    if not resume and (ckdir / "last.pt").exists() and dist.is_main:
        LOG.warning("%s exists; starting afresh (use --resume to continue it)", ckdir / "last.pt")
    amp = autocast_for(device, s.precision)  # checked before any work
    if device.type == "cpu":  # before the data and the model are allocated
        hostmem.for_cpu_training()

    # -- rows, model config, data (the model decides the training units and the statistics)
    with FeatureFile(features) as ff:
        rows = select_training_rows(ff.ids, splits, fold, labels, where)
        warn_empty_validation(rows.n_val, fold, where)
        config = make_config(s.arch, ff.clip_shape, hidden=s.hidden, latent=s.latent,
                             **s.model_options)
        shape_model = build_model(config, "meta")  # units and statistics' shape, no memory
        data_id = {"input_shape": list(ff.clip_shape), "fold": fold, "where": where,
                   "n_train": rows.n_train, "n_val": rows.n_val, "rows": rows.ids_digest,
                   "world_size": dist.world, "feature_params": ff.params,
                   CONTENT_KEY: data_content_id(ff, verify=ck is not None)}
        if ck is not None and (diffs := resume_mismatch(ck, s, data_id)):
            raise InputError(f"--resume: settings differ from the checkpoint "
                             f"{ckdir / 'last.pt'}: " + "; ".join(diffs))
        norm = make_normalizer(shape_model, s.normalize)
        open_ = lambda r: open_source(ff, r, norm, device, data_mode, workers,  # noqa: E731
                                      dist.local_world, model=shape_model)
        train_src = open_(rows.train)
        val_src = open_(rows.val) if rows.n_val else None
        feature_params = ff.params

    # -- normalizer: fitted on training clips only (or restored), then the data normalized once
    if ck is not None:
        norm.load(ck["normalizer"]["mean"], ck["normalizer"]["std"])
    else:
        norm.fit(train_src.fit_blocks())
    norm.to(device)
    for src in (train_src, val_src):
        if src is not None:
            src.prepare()

    # -- model and optimizer (seeded here: the weights depend on the seed alone)
    torch.manual_seed(s.seed)
    np.random.seed(s.seed % 2**32)
    model = build_model(config, device)
    for src in (train_src, val_src):
        if src is not None:
            src.model = model
    state = TrainState(model, make_optimizer(model.parameters(), s.lr), norm)
    sizes = _epoch_batches(len(train_src), s, dist)
    LOG.info("%s model: %d parameters, input %s; %d training clips (%d units), %d validation "
             "clips; device %s%s", s.arch, count_parameters(model),
             "x".join(map(str, config.input_shape)), rows.n_train, len(train_src), rows.n_val,
             device, f" x {dist.world} processes ({dist.backend})" if dist.enabled else "")
    if ck is not None:
        try:
            state.load_checkpoint(ck)
        except RuntimeError:  # the weights' names or shapes differ from the model built now
            from aekit.models.modelfile import state_mismatch

            raise InputError(f"{ckdir / 'last.pt'}: checkpoint does not match the model being "
                             f"trained: {state_mismatch(model, ck['model'])}") from None
        LOG.info("resuming from %s at epoch %d step %d", ckdir / "last.pt", state.epoch + 1,
                 state.step)
    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Buffers (BatchNorm running statistics) are rank 0's, synced at every forward.
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if dist.is_main:
        make_checkpoint_dir(ckdir)
    identity = {"settings": s.to_dict(), "data": data_id, "config": config_to_dict(config),
                "args": {"features": str(features), "output": str(output),
                         "splits": _str(splits), "fold": fold, "labels": _str(labels),
                         "where": where, "checkpoint_every": checkpoint_every,
                         "data_mode": data_mode},
                "feature_params": feature_params}
    run = Run(s, dist, device, net, train_src, val_src, _loss_weight(norm, model), amp, sizes,
              ckdir / "last.pt", ckdir / "best.pt", identity, checkpoint_every, log,
              stop_requested, on_step, progress, torch.zeros(2, device=device),
              "clips" if model.units_per_clip(config.input_shape[-1]) == 1 else "windows")
    if not dist.enabled:  # under DDP a gradient is final only after its all-reduce
        StepInBackward(model, state.optimizer)

    return run, state, rows, feature_params


def _epoch_batches(n_units: int, s: TrainSettings, dist: Dist) -> list[int]:
    """Batch sizes of one epoch on this rank."""
    n_local = len(epoch_order(n_units, s.seed, 0, dist.rank, dist.world))
    sizes = batch_sizes(n_local, s.batch_size, s.balanced_batches)
    if kind(s.arch).batch_norm and len(sizes) and sizes[-1] == 1:
        # BatchNorm cannot normalize a batch of one row in training mode.
        LOG.warning("dropping the last batch of each epoch: 1 row cannot go through BatchNorm "
                    "(choose another --batch-size to use it)")
        sizes = sizes[:-1]
        if not sizes:
            raise InputError("empty training set: a single training row cannot train "
                             "a BatchNorm model")
    return sizes


def run_epoch(run: Run, state: TrainState) -> tuple[float, int, float]:
    """One epoch of optimizer steps (from ``state.step`` when resumed mid-epoch).

    Returns (train loss in dB^2 over the epoch's units on all ranks, units, seconds).
    A stop request writes a checkpoint and raises Preempted.
    """
    s, dist, src = run.settings, run.dist, run.train_src
    spe, epoch, step0 = run.steps_per_epoch, state.epoch, state.step
    # This rank's order is a pure function of (seed, epoch, rank, world); a single
    # process resumed mid-epoch replays the saved permutation (the same values).
    order = state.perm if step0 and not dist.enabled else epoch_order(
        len(src), s.seed, epoch, dist.rank, dist.world,
        block=STREAM_BLOCK_ROWS * src.k if src.streaming else None)
    check_every = 1 if run.device.type == "cpu" else 20  # a finiteness check syncs the device
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    seen, t0 = 0, time.monotonic()
    run.net.train()
    with run.progress(spe - step0, f"epoch {epoch + 1}/{s.epochs}", "batches") as advance:
        step = step0
        for xb in src.batches(order, run.sizes, step0):  # xb: [b, D] normalized units
            for g in state.optimizer.param_groups:
                g["lr"] = lr_at(epoch * spe + step, run.total_steps, spe, s, state.plateau.scale)
            loss = train_step(run.net, state.optimizer, xb, run.weight, run.amp)
            loss_sum += loss.detach().double() * xb.shape[0]
            seen += int(xb.shape[0])
            step += 1
            if run.on_step is not None:
                run.on_step(epoch * spe + step)
            stop = run.stop()
            if dist.enabled or step % check_every == 0 or step == spe:
                run.flags[0] = float(stop)
                run.flags[1] = float(not torch.isfinite(loss_sum).item())
                dist.all_reduce(run.flags, "max")
                stop, bad = bool(run.flags[0].item()), bool(run.flags[1].item())
                if bad:
                    _raise_nonfinite(epoch, step, run.last_path, dist)
            elif stop and not bool(torch.isfinite(loss_sum).item()):
                _raise_nonfinite(epoch, step, run.last_path, dist)
            advance(1)
            if stop:
                total, n = _reduced_sums(loss_sum, seen, dist)
                state.step, state.perm = step, order
                state.loss_sum += total
                state.units += n
                state.seconds += time.monotonic() - t0
                if dist.is_main:
                    save_checkpoint(run.last_path, state.to_checkpoint(run))
                dist.barrier()
                raise Preempted(run.last_path, epoch + 1, step)
    total, n = _reduced_sums(loss_sum, seen, dist)
    train_loss = (state.loss_sum + total) / max(1, state.units + n)
    if not math.isfinite(train_loss):
        _raise_nonfinite(epoch, spe, run.last_path, dist)
    units, seconds = state.units + n, state.seconds + time.monotonic() - t0
    state.step, state.perm, state.loss_sum, state.units, state.seconds = 0, None, 0.0, 0, 0.0
    return train_loss, units, seconds


def end_epoch(run: Run, state: TrainState, train_loss: float, units: int, seconds: float) -> None:
    """Validation, history, best epoch, early stop, checkpoints and the log of one epoch."""
    s, dist, epoch = run.settings, run.dist, state.epoch
    val_loss = (evaluate(state.model, run.val_src, run.weight, run.amp, dist)
                if run.val_src is not None else None)
    if val_loss is not None and not math.isfinite(val_loss):
        _raise_nonfinite(epoch, run.steps_per_epoch, run.last_path, dist, what="validation loss")
    lr_now = state.optimizer.param_groups[0]["lr"]
    state.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                          "lr": lr_now, "seconds": round(seconds, 3),
                          "samples_per_s": round(units / max(seconds, 1e-9), 2)})
    warn_implausible_loss(epoch + 1, train_loss, val_loss)
    improved = val_loss is not None and (state.best_val is None or val_loss < state.best_val)
    if improved:
        state.best_val, state.best_epoch, state.bad_epochs = val_loss, epoch + 1, 0
    elif val_loss is not None:
        state.bad_epochs += 1
    if s.early_stop is not None and state.bad_epochs >= s.early_stop:
        state.stopped_early = True
    reduced = s.schedule == "plateau" and state.plateau.update(
        train_loss if val_loss is None else val_loss, s.min_lr_ratio)
    # One line per epoch (a batch log has no per-step lines): the date and time go in front.
    LOG.info("epoch %d/%d: train loss %.4g%s dB^2, lr %.3g%s, %d steps, %.0f %s/s, %.1f s, "
             "elapsed %s%s", epoch + 1, s.epochs, train_loss,
             "" if val_loss is None else f", val loss {val_loss:.4g}", lr_now,
             f" (next {s.lr * state.plateau.scale:.3g})" if reduced else "",
             run.steps_per_epoch, state.history[-1]["samples_per_s"], run.unit, seconds,
             elapsed_text(time.monotonic() - run.started), " *" if improved else "",
             extra=LOG_STAMP)
    state.epoch = epoch = epoch + 1
    if dist.is_main:
        if improved:
            save_checkpoint(run.best_path, {
                "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                "kind": "best", "model": state.model.state_dict(), "epoch": epoch,
                "val_loss": val_loss})
        if epoch % run.checkpoint_every == 0 or epoch == s.epochs or state.stopped_early:
            save_checkpoint(run.last_path, state.to_checkpoint(run))
        if run.log:
            _write_log(run.log, state.history)
    if state.stopped_early:
        LOG.info("early stop: no better validation loss for %d epochs (best %.4g at epoch %d)",
                 state.bad_epochs, state.best_val, state.best_epoch)


def _stop_between_epochs(run: Run, state: TrainState) -> None:
    """A stop requested during the epoch's end: checkpoint (if not just written) and raise."""
    stop, dist = run.stop(), run.dist
    if dist.enabled:
        run.flags[0], run.flags[1] = float(stop), 0.0
        stop = bool(dist.all_reduce(run.flags, "max")[0].item())
    if stop and state.epoch < run.settings.epochs and not state.stopped_early:
        if dist.is_main and state.epoch % run.checkpoint_every != 0:
            save_checkpoint(run.last_path, state.to_checkpoint(run))
        dist.barrier()
        raise Preempted(run.last_path, state.epoch, 0)


def _str(path) -> str | None:
    return None if path is None else str(path)


def _reduced_sums(loss_sum: torch.Tensor, rows_seen: int, dist: Dist) -> tuple[float, int]:
    t = torch.stack([loss_sum.double(), torch.tensor(float(rows_seen), dtype=torch.float64,
                                                     device=loss_sum.device)])
    dist.all_reduce(t)
    return float(t[0].item()), int(t[1].item())


def _raise_nonfinite(epoch: int, step: int, last_path: Path, dist: Dist, what: str = "loss"):
    dist.barrier()
    keep = (f"the last good checkpoint {last_path} is kept" if last_path.exists()
            else "no checkpoint was written yet")
    raise DataError(f"{what} became NaN or Inf at epoch {epoch + 1} step {step}; stopped; {keep}. "
                    "Try a smaller --lr, --normalize global, or check the features for "
                    "extreme values")


@torch.no_grad()
def evaluate(model: torch.nn.Module, source, weight: torch.Tensor | None, amp: ContextManager,
             dist: Dist | None = None, block: int = 256) -> float:
    """MSE in dB squared over a source's units (eval mode; shards across ranks under DDP)."""
    dist = dist or Dist()
    if dist.enabled:
        # Running BatchNorm statistics drift apart per rank between DDP's broadcasts:
        # evaluate (and save) with rank 0's everywhere.
        for b in model.buffers():
            torch.distributed.broadcast(b, 0)
    was_training = model.training
    model.eval()
    total = None
    n = 0
    for i, xb in enumerate(source.blocks(block)):
        if i % dist.world != dist.rank:
            continue
        with amp:
            out, _ = model(xb)
        err = out.float() - unit_target(model, xb)
        sq = err * err if weight is None else err * err * weight
        part = sq.sum(dtype=torch.float64)
        total = part if total is None else total + part
        n += err.numel()
    model.train(was_training)
    dev = next(model.parameters()).device
    if total is None:
        total = torch.zeros((), dtype=torch.float64, device=dev)
    t = torch.stack([total.to(dev), torch.tensor(float(n), dtype=torch.float64, device=dev)])
    dist.all_reduce(t)
    return float(t[0].item() / max(1.0, t[1].item()))
