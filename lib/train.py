"""Training the autoencoders: settings, the loop, checkpoints, resume, preemption, DDP.

The loop reads top to bottom: settings -> rows -> data -> normalizer -> model ->
optimizer -> (resume) -> epochs of steps -> checkpoints -> model file.

Checkpoints live in ``<output>.ckpt/`` (or ``checkpoint_dir``):
  last.pt  everything needed to continue bit for bit: model, optimizer, schedule,
           normalizer, epoch, step-in-epoch, the epoch's permutation, torch/numpy RNG
           states, history, best-so-far, settings and data identity. Written at the end
           of every epoch (``checkpoint_every``) and when a stop is requested.
  best.pt  the model and normalizer of the epoch with the lowest validation loss.
Both are ``torch.save`` of plain tensors and primitives, written atomically and read
with ``torch.load(weights_only=True)``: loading one runs no code.

Losses are always MSE in the features' own units (dB squared), whatever the input
normalization: the network sees normalized values, and the squared error of each
feature is weighted by its variance, which is exactly the MSE of the de-normalized
reconstruction. The optimized loss is therefore the reported loss.

Distributed: under torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or srun (SLURM_PROCID/
SLURM_NTASKS/SLURM_LOCALID with MASTER_ADDR/MASTER_PORT set) the model runs as
DistributedDataParallel (gloo on CPU, NCCL on CUDA). ``batch_size`` is per process.
BatchNorm stays per rank (statistics of each rank's own batch; running statistics are
rank 0's, broadcast by DDP every step): SyncBatchNorm needs CUDA and adds a collective
per layer per step, and the per-rank batch is the tutorial's 25 anyway. Rank 0 alone
writes logs, checkpoints and the model file.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import torch

from .data import STREAM_BLOCK_ROWS, batch_sizes, epoch_order, open_source, select_training_rows
from .device import resolve_device
from .errors import AekitError, DataError, InputError
from .fileio import atomic_path
from .modelfile import NORM_MODES, Normalizer, save_model
from .models import ARCHS, DEFAULT_HIDDEN, DEFAULT_LATENT, AEConfig, build_model, count_parameters
from .store import FeatureFile

LOG = logging.getLogger("aekit")

CHECKPOINT_FORMAT = "aekit-train-checkpoint"
CHECKPOINT_VERSION = 1
EXIT_PREEMPTED = 3
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16")
KEEP = ("best", "last")


@dataclass
class TrainSettings:
    """Everything that decides the trained weights. Defaults are the 'default' preset."""

    arch: str = "improved"
    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    latent: int = DEFAULT_LATENT
    epochs: int = 20  # the tutorial's
    batch_size: int = 25  # the tutorial's; per process under DDP
    lr: float = 1e-3  # the tutorial's Adam learning rate (peak of the schedule)
    normalize: str = "global"  # raw dB (std ~20-50) makes the first steps overshoot
    schedule: str = "cosine"  # decay to min_lr_ratio x lr: ends in a minimum, no late blow-up
    warmup: float = 1.0  # epochs of linear warm-up: Adam's first steps are the largest
    min_lr_ratio: float = 0.01
    balanced_batches: bool = True  # no tiny last batch under BatchNorm
    seed: int = 42
    precision: str = "fp32"
    early_stop: int | None = None  # epochs without a better validation loss
    keep: str = "best"  # weights written to the model file: best validation epoch, or last
    preset: str = "default"

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        checks = [
            (self.arch in ARCHS, f"unknown --arch {self.arch!r}: use {' or '.join(ARCHS)}"),
            (self.normalize in NORM_MODES,
             f"unknown --normalize {self.normalize!r}: use {', '.join(NORM_MODES)}"),
            (self.schedule in SCHEDULES,
             f"unknown --schedule {self.schedule!r}: use {', '.join(SCHEDULES)}"),
            (self.precision in PRECISIONS,
             f"unknown --precision {self.precision!r}: use {', '.join(PRECISIONS)}"),
            (self.keep in KEEP, f"unknown --keep {self.keep!r}: use best or last"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.arch != "improved" or self.batch_size >= 2,
             "--batch-size must be at least 2 for --arch improved (BatchNorm needs 2 rows)"),
            (self.lr > 0 and math.isfinite(self.lr), "--lr must be a positive number"),
            (self.warmup >= 0, "--warmup must be >= 0"),
            (len(self.hidden) >= 1 and all(h > 0 for h in self.hidden) and self.latent > 0,
             "layer widths (--hidden, --latent) must be positive"),
            (self.early_stop is None or self.early_stop >= 1, "--early-stop must be at least 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


#: --preset: 'tutorial' is the tutorial exactly (raw dB, constant lr, DataLoader batches).
PRESETS: dict[str, dict] = {
    "default": {},
    "tutorial": dict(normalize="none", schedule="constant", warmup=0.0, balanced_batches=False,
                     keep="last", epochs=20, batch_size=25, lr=1e-3, precision="fp32"),
}

#: Settings a resumed run must share with the checkpoint (others, e.g. early_stop, may change).
RESUME_MUST_MATCH = ("arch", "hidden", "latent", "epochs", "batch_size", "lr", "normalize",
                     "schedule", "warmup", "min_lr_ratio", "balanced_batches", "seed", "precision")


def make_settings(preset: str = "default", **overrides) -> TrainSettings:
    """Settings of a preset with the given (non-None) values overriding it."""
    if preset not in PRESETS:
        raise InputError(f"unknown --preset {preset!r}: use {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    names = {f.name for f in fields(TrainSettings)}
    unknown = set(values) - names
    if unknown:
        raise TypeError(f"unknown settings: {sorted(unknown)}")
    return TrainSettings(preset=preset, **values)


class Preempted(AekitError):
    """A stop was requested (SIGTERM/SIGUSR1); a resumable checkpoint has been written."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, checkpoint: Path, epoch: int, step: int):
        super().__init__(f"stopped at epoch {epoch} step {step}; checkpoint {checkpoint}; "
                         "run again with --resume to continue")
        self.checkpoint = checkpoint


# --------------------------------------------------------------------------- distributed

@dataclass
class Dist:
    """Process-group facts; world == 1 means a plain single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.enabled:
            red = torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM
            torch.distributed.all_reduce(t, op=red)
        return t


def distributed_env(environ: dict | None = None) -> Dist:
    """Rank and world size from torchrun's variables, else SLURM's (with MASTER_ADDR/PORT)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env and "RANK" in env:
        world, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
        local = int(env.get("LOCAL_RANK", 0))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    elif int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
        if not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
            raise InputError("SLURM_NTASKS > 1 but MASTER_ADDR/MASTER_PORT are not set: export "
                             "them in the job script before srun (or run a single task)")
        world, rank = int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"])
        local = int(env.get("SLURM_LOCALID", 0))
        per_node = (env.get("SLURM_NTASKS_PER_NODE") or "").split("(")[0]
        local_world = int(per_node) if per_node.isdigit() else world
    else:
        return Dist()
    return Dist(rank=rank, world=world, local_rank=local, local_world=max(1, local_world))


@contextlib.contextmanager
def distributed(device_spec: str = "auto"):
    """Yield (Dist, device); inside torchrun/srun, a process group for the block's duration."""
    dist = distributed_env()
    device = resolve_device(device_spec)
    if not dist.enabled:
        yield dist, device
        return
    import torch.distributed as tdist

    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        dist.backend = "nccl"
    else:
        dist.backend = "gloo"
        if device.type == "cpu":
            # Share the cores among the processes on this node.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.local_world))
    for k, v in (("RANK", dist.rank), ("WORLD_SIZE", dist.world), ("LOCAL_RANK", dist.local_rank)):
        os.environ.setdefault(k, str(v))
    tdist.init_process_group(backend=dist.backend, rank=dist.rank, world_size=dist.world,
                             **({"device_id": device} if device.type == "cuda" else {}))
    try:
        yield dist, device
    finally:
        # Free the DDP wrapper (kept alive by reference cycles) and its reducer while the
        # process group still exists: left to interpreter exit, its threads were destroyed
        # while joinable ("terminate called without an active exception", SIGABRT).
        gc.collect()
        # Without this barrier, destroy_process_group() right after the last collective
        # aborted the process ("terminate called without an active exception") in about
        # 1 run of 5 with torch 2.14.1; with it, none did.
        with contextlib.suppress(Exception):
            tdist.barrier()
        tdist.destroy_process_group()


# --------------------------------------------------------------------------- pieces

def lr_at(step: int, total: int, steps_per_epoch: int, s: TrainSettings) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total``: a pure function."""
    if s.schedule == "constant":
        return s.lr
    warm = int(round(s.warmup * steps_per_epoch))
    if step < warm:
        return s.lr * (step + 1) / warm
    span = max(1, total - warm)
    t = min(1.0, (step - warm) / span)
    lo = s.lr * s.min_lr_ratio
    return lo + (s.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_optimizer(params, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam as in the tutorial, with the fused kernel where this torch has one (measured
    fastest on CPU in bench/bench_train.py), else the multi-tensor one."""
    params = list(params)
    with contextlib.suppress(RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr, foreach=True)


def autocast_for(device: torch.device, precision: str) -> ContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("--precision bf16: this CUDA device has no bfloat16 support")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--precision bf16 is not supported on {device.type}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _loss_weight(norm: Normalizer) -> torch.Tensor | None:
    """Per-feature weight turning squared error in normalized units into dB squared."""
    return None if norm.mode == "none" else norm.loss_scale()


def _mse_db(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    out = out.float()
    if weight is None:
        return torch.nn.functional.mse_loss(out, x)
    err = out - x
    return (err * err * weight).mean()


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor,
               weight: torch.Tensor | None, amp: ContextManager) -> torch.Tensor:
    """One optimizer step on a normalized batch xb [B, D]; returns the loss (dB^2), unsynced."""
    with amp:
        out, _ = net(xb)  # [B, D]
    loss = _mse_db(out, xb, weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir_for(output: str | os.PathLike) -> Path:
    return Path(str(output) + ".ckpt")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint safely (weights_only: tensors and primitives, no code)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"--resume: no checkpoint at {p}; start without --resume")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            # torch's message ends in advice to turn the safe loading off: never that.
            first = "it holds Python objects, which are never loaded (ae-train writes none)"
        else:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"{p}: not a readable checkpoint ({first})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{p}: not an ae-train checkpoint")
    return ck


def _save_checkpoint(path: Path, ck: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(ck, tmp)


def _resume_mismatch(ck: dict, settings: TrainSettings, data_id: dict) -> list[str]:
    diffs = []
    old = ck["settings"]
    for k in RESUME_MUST_MATCH:
        a, b = old.get(k), settings.to_dict().get(k)
        if a != b:
            diffs.append(f"{k}: checkpoint {a}, now {b}")
    for k, b in data_id.items():
        a = ck["data"].get(k)
        if a != b:
            diffs.append(f"{k}: checkpoint {a}, now {b}")
    return diffs


def _write_log(path: str, history: list[dict]) -> None:
    cols = ["epoch", "train_loss", "val_loss", "lr", "seconds", "samples_per_s"]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for h in history:
            w.writerow(["" if h.get(c) is None
                        else (f"{h[c]:.6g}" if isinstance(h[c], float) else h[c]) for c in cols])


def _null_progress(total, description, unit="items"):
    return contextlib.nullcontext(lambda n=1: None)


# --------------------------------------------------------------------------- the loop

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
                    "(no val loss; --keep best keeps the last epoch)", fold,
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
            for d in list(_CREATED_DIRS):
                remove_if_empty(d)
            raise

    return wrapper


@removes_empty_checkpoint_dir
def train(features: str | os.PathLike, output: str | os.PathLike, settings: TrainSettings, *,
          splits: str | None = None, fold: int | None = None, labels: str | None = None,
          where: str | None = None, device: torch.device | None = None, dist: Dist | None = None,
          resume: bool = False, log: str | None = None,
          checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 1,
          data_mode: str = "auto", workers: int = 2,
          stop_requested: Callable[[], bool] | None = None,
          on_step: Callable[[int], None] | None = None,
          progress: Callable = _null_progress, meta: dict | None = None) -> TrainResult:
    """Train an autoencoder on a features file and write the model file ``output``.

    Raises InputError (bad input, resume mismatch), DataError (NaN/Inf loss) or Preempted
    (stop requested: a checkpoint was written; run again with resume=True).
    """
    s = settings
    dist = dist or Dist()
    device = device or resolve_device("auto")
    ckdir = Path(checkpoint_dir) if checkpoint_dir else checkpoint_dir_for(output)
    last_path, best_path = ckdir / "last.pt", ckdir / "best.pt"
    if s.early_stop is not None and fold is None:
        raise InputError("--early-stop needs a validation set: give --splits and --fold")
    if checkpoint_every < 1:
        raise InputError("--checkpoint-every must be at least 1")
    ck = load_checkpoint(last_path) if resume else None
    if not resume and last_path.exists() and dist.is_main:
        LOG.warning("%s exists; starting afresh (use --resume to continue it)", last_path)
    amp = autocast_for(device, s.precision)  # checked before any work

    # -- rows and data
    ff = FeatureFile(features)
    try:
        rows = select_training_rows(ff.ids, splits, fold, labels, where)
        warn_empty_validation(rows.n_val, fold, where)
        config = AEConfig(arch=s.arch, input_shape=ff.clip_shape, hidden=s.hidden, latent=s.latent)
        data_id = {"input_shape": list(ff.clip_shape), "fold": fold, "where": where,
                   "n_train": rows.n_train, "n_val": rows.n_val,
                   "rows": rows.ids_digest, "world_size": dist.world,
                   "feature_params": ff.params}
        if ck is not None:
            diffs = _resume_mismatch(ck, s, data_id)
            if diffs:
                raise InputError(f"--resume: settings differ from the checkpoint {last_path}: "
                                 + "; ".join(diffs))
        norm = Normalizer(s.normalize, dim=ff.width)
        copies = dist.local_world
        train_src = open_source(ff, rows.train, norm, device, data_mode, workers, copies)
        val_src = (open_source(ff, rows.val, norm, device, data_mode, workers, copies)
                   if rows.n_val else None)
        feature_params = ff.params
    finally:
        ff.close()

    if ck is not None:
        norm.mean, norm.std = ck["normalizer"]["mean"].clone(), ck["normalizer"]["std"].clone()
    else:
        norm.fit(train_src.fit_blocks())  # training rows only, never validation or test
    norm.to(device)
    train_src.prepare()
    if val_src is not None:
        val_src.prepare()
    weight = _loss_weight(norm)

    # -- model and optimizer
    torch.manual_seed(s.seed)
    np.random.seed(s.seed % 2**32)
    model = build_model(config, device)
    opt = make_optimizer(model.parameters(), s.lr, device)
    LOG.info("%s model: %d parameters, input %s = %d values; %d training rows, %d validation rows; "
             "device %s%s", s.arch, count_parameters(model), "x".join(map(str, config.input_shape)),
             config.input_dim, rows.n_train, rows.n_val, device,
             f" x {dist.world} processes ({dist.backend})" if dist.enabled else "")

    n_local = len(epoch_order(rows.n_train, s.seed, 0, dist.rank, dist.world))
    sizes = batch_sizes(n_local, s.batch_size, s.balanced_batches)
    if s.arch == "improved" and len(sizes) and sizes[-1] == 1:
        # BatchNorm cannot normalize a batch of one row in training mode.
        LOG.warning("dropping the last batch of each epoch: 1 row cannot go through BatchNorm "
                    "(choose another --batch-size to use it)")
        sizes = sizes[:-1]
        if not sizes:
            raise InputError("empty training set: a single training row cannot train "
                             "a BatchNorm model")
    steps_per_epoch = len(sizes)
    total_steps = steps_per_epoch * s.epochs

    history: list[dict] = []
    best_val, best_epoch, bad_epochs, start_epoch, start_step = None, None, 0, 0, 0
    saved_sums = (0.0, 0, 0.0)
    perm_saved: torch.Tensor | None = None
    stopped_early = False
    if ck is not None:
        try:
            model.load_state_dict(ck["model"])
        except RuntimeError:
            from .modelfile import state_mismatch

            raise InputError(f"{last_path}: checkpoint does not match the model being trained: "
                             f"{state_mismatch(model, ck['model'])}") from None
        opt.load_state_dict(ck["optimizer"])
        history = list(ck["history"])
        best_val, best_epoch, bad_epochs = ck["best_val"], ck["best_epoch"], ck["bad_epochs"]
        start_epoch, start_step = int(ck["epoch"]), int(ck["step"])
        stopped_early = bool(ck.get("stopped_early", False))
        saved_sums = (float(ck["epoch_loss_sum"]), int(ck["epoch_rows"]),
                      float(ck["epoch_seconds"]))
        if start_step:
            perm_saved = ck["perm"]
        _set_rng_state(ck["rng"])
        LOG.info("resuming from %s at epoch %d step %d", last_path, start_epoch + 1, start_step)

    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Buffers (BatchNorm running statistics) are rank 0's, synced at every forward.
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if dist.is_main:
        make_checkpoint_dir(ckdir)

    def checkpoint(epoch: int, step: int, perm: torch.Tensor | None, loss_sum: float,
                   rows_seen: int, seconds: float) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "schedule": {"name": s.schedule, "step": epoch * steps_per_epoch + step,
                         "total": total_steps,
                         "lr": lr_at(min(epoch * steps_per_epoch + step, total_steps - 1),
                                     total_steps, steps_per_epoch, s)},
            "normalizer": {"mode": norm.mode, "mean": norm.mean.cpu(), "std": norm.std.cpu()},
            "epoch": epoch, "step": step,
            "perm": perm if perm is not None else torch.zeros(0, dtype=torch.int64),
            "epoch_loss_sum": loss_sum, "epoch_rows": rows_seen, "epoch_seconds": seconds,
            "rng": _rng_state(), "history": history, "best_val": best_val, "best_epoch": best_epoch,
            "bad_epochs": bad_epochs, "stopped_early": stopped_early,
            "settings": s.to_dict(), "data": data_id, "config": config.to_dict(),
            "args": {"features": str(features), "output": str(output), "splits": _str(splits),
                     "fold": fold, "labels": _str(labels), "where": where,
                     "checkpoint_every": checkpoint_every, "data_mode": data_mode},
            "feature_params": feature_params,
        }

    check_every = 1 if device.type == "cpu" else 20  # a finiteness check syncs the device
    flags = torch.zeros(2, device=device)

    epoch = start_epoch
    while epoch < s.epochs and not stopped_early:
        first = epoch == start_epoch and start_step > 0
        # This rank's order is a pure function of (seed, epoch, rank, world); a single
        # process resumed mid-epoch replays the saved permutation (the same values).
        order = perm_saved if first and not dist.enabled else epoch_order(
            rows.n_train, s.seed, epoch, dist.rank, dist.world,
            block=STREAM_BLOCK_ROWS if train_src.streaming else None)
        step0 = start_step if first else 0
        prev_sum, prev_rows, prev_sec = saved_sums if first else (0.0, 0, 0.0)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        rows_seen = 0
        t0 = time.monotonic()
        net.train()
        desc = f"epoch {epoch + 1}/{s.epochs}"
        with progress(steps_per_epoch - step0, desc, "batches") as advance:
            step = step0
            for xb in train_src.batches(order, sizes, step0):  # xb: [b, C*M*T], normalized
                for g in opt.param_groups:
                    g["lr"] = lr_at(epoch * steps_per_epoch + step, total_steps, steps_per_epoch, s)
                loss = train_step(net, opt, xb, weight, amp)
                loss_sum += loss.detach().double() * xb.shape[0]
                rows_seen += int(xb.shape[0])
                step += 1
                if on_step is not None:
                    on_step(epoch * steps_per_epoch + step)
                stop = bool(stop_requested()) if stop_requested is not None else False
                if dist.enabled or step % check_every == 0 or step == steps_per_epoch:
                    flags[0] = float(stop)
                    flags[1] = float(not torch.isfinite(loss_sum).item())
                    dist.all_reduce(flags, "max")
                    stop, bad = bool(flags[0].item()), bool(flags[1].item())
                    if bad:
                        _raise_nonfinite(epoch, step, last_path, dist)
                elif stop and not bool(torch.isfinite(loss_sum).item()):
                    _raise_nonfinite(epoch, step, last_path, dist)
                advance(1)
                if stop:
                    sums = _reduced_sums(loss_sum, rows_seen, dist)
                    if dist.is_main:
                        _save_checkpoint(last_path, checkpoint(
                            epoch, step, order,
                            prev_sum + sums[0], prev_rows + sums[1],
                            prev_sec + time.monotonic() - t0))
                    dist.barrier()
                    raise Preempted(last_path, epoch + 1, step)
        # -- end of epoch: losses in dB squared, averaged over the epoch's rows (all ranks)
        s_sum, s_rows = _reduced_sums(loss_sum, rows_seen, dist)
        train_loss = (prev_sum + s_sum) / max(1, prev_rows + s_rows)
        if not math.isfinite(train_loss):
            _raise_nonfinite(epoch, steps_per_epoch, last_path, dist)
        val_loss = evaluate(model, val_src, weight, amp, dist) if val_src is not None else None
        if val_loss is not None and not math.isfinite(val_loss):
            _raise_nonfinite(epoch, steps_per_epoch, last_path, dist, what="validation loss")
        seconds = prev_sec + time.monotonic() - t0
        lr_now = opt.param_groups[0]["lr"]
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                        "lr": lr_now, "seconds": round(seconds, 3),
                        "samples_per_s": round((prev_rows + s_rows) / max(seconds, 1e-9), 2)})
        warn_implausible_loss(epoch + 1, train_loss, val_loss)
        improved = val_loss is not None and (best_val is None or val_loss < best_val)
        if improved:
            best_val, best_epoch, bad_epochs = val_loss, epoch + 1, 0
        elif val_loss is not None:
            bad_epochs += 1
        if s.early_stop is not None and bad_epochs >= s.early_stop:
            stopped_early = True
        LOG.info("epoch %d/%d: train loss %.4g%s dB^2, lr %.3g, %.1f s (%.0f samples/s)%s",
                 epoch + 1, s.epochs, train_loss,
                 "" if val_loss is None else f", val loss {val_loss:.4g}", lr_now, seconds,
                 history[-1]["samples_per_s"], " *" if improved else "")
        epoch += 1
        if dist.is_main:
            if improved:
                _save_checkpoint(best_path, {
                    "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                    "kind": "best", "model": model.state_dict(), "epoch": epoch,
                    "val_loss": val_loss})
            if epoch % checkpoint_every == 0 or epoch == s.epochs or stopped_early:
                _save_checkpoint(last_path, checkpoint(epoch, 0, None, 0.0, 0, 0.0))
            if log:
                _write_log(log, history)
        if stopped_early:
            LOG.info("early stop: no better validation loss for %d epochs (best %.4g at epoch %d)",
                     bad_epochs, best_val, best_epoch)
        stop = bool(stop_requested()) if stop_requested is not None else False
        if dist.enabled:
            flags[0], flags[1] = float(stop), 0.0
            stop = bool(dist.all_reduce(flags, "max")[0].item())
        if stop and epoch < s.epochs and not stopped_early:
            if dist.is_main and epoch % checkpoint_every != 0:
                _save_checkpoint(last_path, checkpoint(epoch, 0, None, 0.0, 0, 0.0))
            dist.barrier()
            raise Preempted(last_path, epoch, 0)

    # -- the model file
    weights = "last"
    if s.keep == "best" and best_epoch is not None:
        weights = "best"
    if dist.is_main:
        if weights == "best" and best_epoch != len(history):
            model.load_state_dict(load_checkpoint(best_path)["model"])
        if log and history:
            _write_log(log, history)
        save_model(output, model, norm, feature_params, history,
                   seed=s.seed, preset=s.preset, settings=s.to_dict(), fold=fold,
                   splits=None if splits is None else str(splits), where=where,
                   n_train=rows.n_train, n_val=rows.n_val, best_epoch=best_epoch,
                   best_val_loss=best_val, weights=weights, epochs_run=len(history),
                   stopped_early=stopped_early, world_size=dist.world, device=str(device),
                   loss_units="dB^2", **(meta or {}))
    dist.barrier()
    return TrainResult(history=history, best_epoch=best_epoch, best_val_loss=best_val,
                       stopped_early=stopped_early, weights=weights,
                       n_train=rows.n_train, n_val=rows.n_val)


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
    """MSE in dB squared over a source's rows (eval mode; shards across ranks under DDP)."""
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
        err = out.float() - xb
        sq = err * err if weight is None else err * err * weight
        part = sq.sum(dtype=torch.float64)
        total = part if total is None else total + part
        n += xb.numel()
    model.train(was_training)
    dev = next(model.parameters()).device
    if total is None:
        total = torch.zeros((), dtype=torch.float64, device=dev)
    t = torch.stack([total.to(dev), torch.tensor(float(n), dtype=torch.float64, device=dev)])
    dist.all_reduce(t)
    return float(t[0].item() / max(1.0, t[1].item()))
