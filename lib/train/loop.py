"""Training an autoencoder: the loop, top to bottom.

``train`` reads in order: ``setup`` (checks -> checkpoint directory -> rows -> model config
-> the model, built once -> data -> normalizer -> optimizer and its step -> resume) ->
epochs (``run_epoch``, ``end_epoch``) -> the model file. Everything that changes while
training is one ``TrainState`` (aekit.train.state), which a checkpoint holds; checkpoints
are written in one place (``write_checkpoint``). The learning rate is a pure function of
the step (aekit.train.schedule.lr_at). Settings and their defaults live in
aekit.train.settings (no torch), checkpoint files in aekit.train.checkpoint, process
groups in aekit.train.distributed, the fast step (optimizer in backward, blocked GEMM,
host memory) in aekit.train.faststep: the loop calls ``train_step`` either way.

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
import logging
import math
import time
from pathlib import Path
from typing import ContextManager

import numpy as np
import torch

from aekit.data.store import FeatureFile
from aekit.errors import AekitError, DataError, InputError
from aekit.models.modelfile import make_normalizer, save_model
from aekit.models.base import ClipModel, count_parameters, unit_target
from aekit.models.registry import build_model, config_to_dict, kind, make_config
from aekit.system.device import resolve_device
from aekit.system.fileio import LOG_STAMP, elapsed_text
from aekit.train import faststep
from aekit.train.batches import (STREAM_BLOCK_ROWS, batch_sizes, epoch_order, open_source,
                                 select_training_rows)
from aekit.train.checkpoint import (CONTENT_KEY, checkpoint_dir_for, data_content_id,
                                    load_checkpoint, lock_checkpoint_dir, make_checkpoint_dir,
                                    removes_empty_checkpoint_dir, resume_mismatch, save_checkpoint)
from aekit.train.distributed import Dist
from aekit.train.losses import _loss_weight, evaluate, weighted_mse  # noqa: F401 (_loss_weight)
from aekit.train.schedule import lr_at
from aekit.train.settings import EXIT_PREEMPTED, TrainSettings
from aekit.train.state import Run, TrainData, TrainJob, TrainResult, TrainState, write_log

LOG = logging.getLogger("aekit")

#: A loss (MSE in dB squared) above this is no training: dB features span ~100 dB, so even a
#: model that outputs garbage stays near 1e4; anything this large is numeric blow-up.
IMPLAUSIBLE_LOSS = 1e10


class Preempted(AekitError):
    """A stop was requested (SIGTERM/SIGUSR1); a resumable checkpoint has been written."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, checkpoint: Path, epoch: int, step: int):
        super().__init__(f"stopped at epoch {epoch} step {step}; checkpoint {checkpoint}; "
                         "train again with resume=True to continue")
        self.checkpoint, self.epoch, self.step = checkpoint, epoch, step


# --------------------------------------------------------------------------- the loop

@removes_empty_checkpoint_dir
def train(features, output, settings: TrainSettings, **job) -> TrainResult:
    """Train an autoencoder on a features file and write the model file ``output``.

    ``job``: the keyword fields of :class:`aekit.train.state.TrainJob` (splits, fold,
    labels, where, device, dist, resume, log, checkpoint_dir, checkpoint_every, data_mode,
    workers, stop_requested, on_step, progress, meta). Raises InputError (bad input, resume
    mismatch), DataError (NaN/Inf loss) or Preempted (stop requested: a checkpoint was
    written; train again with resume=True).
    """
    job = TrainJob(features, output, **job)
    job.device = job.device or resolve_device("auto")
    job.dist = job.dist or Dist()
    s, dist = settings, job.dist
    run, state, rows, feature_params = setup(job, s)

    while state.epoch < s.epochs and not state.stopped_early:
        train_loss, units, seconds = run_epoch(run, state)
        end_epoch(run, state, train_loss, units, seconds)
        _stop_between_epochs(run, state)

    weights = "best" if s.keep == "best" and state.best_epoch is not None else "last"
    if dist.is_main:
        if weights == "best" and state.best_epoch != len(state.history):
            state.model.load_state_dict(load_checkpoint(run.best_path)["model"])
        threshold, mahalanobis, training_scores = _training_fit(job, state, rows)
        if job.log and state.history:
            write_log(job.log, state.history, final=True)
        save_model(output, state.model, state.normalizer, feature_params, state.history,
                   seed=s.seed, preset=s.preset, settings=s.to_dict(), fold=job.fold,
                   splits=job.args()["splits"], where=job.where, n_train=rows.n_train,
                   n_val=rows.n_val, best_epoch=state.best_epoch, best_val_loss=state.best_val,
                   weights=weights, epochs_run=len(state.history),
                   stopped_early=state.stopped_early, world_size=dist.world,
                   device=str(job.device), loss_units="dB^2", threshold=threshold,
                   mahalanobis_stats=mahalanobis,
                   **({"training_scores": training_scores} if training_scores else {}),
                   **(job.meta or {}))
    dist.barrier()
    return TrainResult(history=state.history, best_epoch=state.best_epoch,
                       best_val_loss=state.best_val, stopped_early=state.stopped_early,
                       weights=weights, n_train=rows.n_train, n_val=rows.n_val)


def setup(job: TrainJob, s: TrainSettings) -> tuple[Run, TrainState, object, dict]:
    """Checkpoint directory -> rows -> model -> data -> normalizer -> optimizer -> (resume)
    -> DDP -> the step (fast or plain). ``job.device`` and ``job.dist`` are set.

    Returns (run, state, the selected rows, the features' parameters).
    """
    device, dist = job.device, job.dist
    ckdir, ck = _claim_checkpoint_dir(job, s)
    amp = autocast_for(device, s.precision)  # checked before any work
    faststep.before_allocation(device)  # before the data and the model are allocated
    model, data = _model_and_data(job, s, ck, ckdir)
    state = TrainState(model, make_optimizer(model.parameters(), s.lr), data.normalizer)
    sizes = _epoch_batches(len(data.train), s, dist)
    LOG.info("%s model: %d parameters, input %s; %d training clips (%d units), %d validation "
             "clips; device %s%s", s.arch, count_parameters(model),
             "x".join(map(str, data.config.input_shape)), data.rows.n_train, len(data.train),
             data.rows.n_val, device,
             f" x {dist.world} processes ({dist.backend})" if dist.enabled else "")
    if ck is not None:
        _resume(state, ck, ckdir / "last.pt")
    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Buffers (BatchNorm running statistics) are rank 0's, synced at every forward.
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if dist.is_main:
        make_checkpoint_dir(ckdir)
    identity = {"settings": s.to_dict(), "data": data.identity,
                "config": config_to_dict(data.config), "args": job.args(),
                "feature_params": data.feature_params}
    run = Run(s, dist, device, net, data.train, data.val, _loss_weight(data.normalizer, model),
              amp, sizes, ckdir / "last.pt", ckdir / "best.pt", identity, job.checkpoint_every,
              job.log, job.stop_requested, job.on_step, job.progress,
              torch.zeros(2, device=device),
              "clips" if model.units_per_clip(data.config.input_shape[-1]) == 1 else "windows")
    # The one switch between the fast step and the plain one (aekit.train.faststep).
    faststep.attach(model, state.optimizer, faststep.applies(dist.enabled, model))
    return run, state, data.rows, data.feature_params


def _claim_checkpoint_dir(job: TrainJob, s: TrainSettings) -> tuple[Path, dict | None]:
    """Check the job, take the checkpoint directory (rank 0), read last.pt when resuming."""
    ckdir = Path(job.checkpoint_dir) if job.checkpoint_dir else checkpoint_dir_for(job.output)
    if s.early_stop is not None and job.fold is None:
        raise InputError("needs a validation set: give the splits and a fold",
                         param="early_stop")
    if job.checkpoint_every < 1:
        raise InputError("must be at least 1", param="checkpoint_every")
    if job.dist.is_main:  # the run owns its checkpoint directory (rank 0 alone writes it)
        make_checkpoint_dir(ckdir)
        lock_checkpoint_dir(ckdir)
    last = ckdir / "last.pt"
    if job.resume:
        if not last.exists():
            raise InputError(f"no checkpoint at {last}; start without resuming", param="resume")
        return ckdir, load_checkpoint(last)
    if last.exists() and job.dist.is_main:
        LOG.warning("%s exists; starting afresh (resume to continue it)", last)
    return ckdir, None


def _model_and_data(job: TrainJob, s: TrainSettings, ck: dict | None,
                    ckdir: Path) -> tuple[ClipModel, TrainData]:
    """Rows -> model config -> the model, built once and seeded here (the weights depend on
    the seed alone; it decides the training units and the statistics' shape) -> the data
    sources -> the normalizer fitted on the training clips (or restored) -> the data
    normalized once."""
    dist, device = job.dist, job.device
    with FeatureFile(job.features) as ff:
        rows = select_training_rows(ff.ids, job.splits, job.fold, job.labels, job.where)
        warn_empty_validation(rows.n_val, job.fold, job.where)
        config = make_config(s.arch, ff.clip_shape, hidden=s.hidden, latent=s.latent,
                             **s.model_options)
        data_id = {"input_shape": list(ff.clip_shape), "fold": job.fold, "where": job.where,
                   "n_train": rows.n_train, "n_val": rows.n_val, "rows": rows.ids_digest,
                   "world_size": dist.world, "feature_params": ff.params,
                   CONTENT_KEY: data_content_id(ff, verify=ck is not None)}
        if ck is not None and (diffs := resume_mismatch(ck, s, data_id)):
            raise InputError(f"settings differ from the checkpoint {ckdir / 'last.pt'}: "
                             + "; ".join(diffs), param="resume")
        torch.manual_seed(s.seed)
        np.random.seed(s.seed % 2**32)
        model = build_model(config, device)
        norm = make_normalizer(model, s.normalize)
        train_src, val_src = (
            open_source(ff, r, norm, device, job.data_mode, job.workers, dist.local_world,
                        model=model) if len(r) else None for r in (rows.train, rows.val))
        data = TrainData(rows, config, ff.params, data_id, norm, train_src, val_src)
    if ck is not None:
        norm.load(ck["normalizer"]["mean"], ck["normalizer"]["std"])
    else:
        norm.fit(train_src.fit_blocks())
    norm.to(device)
    for src in (train_src, val_src):
        if src is not None:
            src.prepare()
    return model, data


def _resume(state: TrainState, ck: dict, path: Path) -> None:
    try:
        state.load_checkpoint(ck)
    except RuntimeError:  # the weights' names or shapes differ from the model built now
        from aekit.models.modelfile import state_mismatch

        raise InputError(f"{path}: checkpoint does not match the model being trained: "
                         f"{state_mismatch(state.model, ck['model'])}") from None
    LOG.info("resuming from %s at epoch %d step %d", path, state.epoch + 1, state.step)


def _epoch_batches(n_units: int, s: TrainSettings, dist: Dist) -> list[int]:
    """Batch sizes of one epoch on this rank."""
    n_local = len(epoch_order(n_units, s.seed, 0, dist.rank, dist.world))
    sizes = batch_sizes(n_local, s.batch_size, s.balanced_batches)
    if kind(s.arch).batch_norm and len(sizes) and sizes[-1] == 1:
        # BatchNorm cannot normalize a batch of one row in training mode.
        LOG.warning("dropping the last batch of each epoch: 1 row cannot go through BatchNorm "
                    "(choose another batch size to use it)")
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
                write_checkpoint(run, state, "last")
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
    if improved:
        write_checkpoint(run, state, "best", barrier=False)
    if epoch % run.checkpoint_every == 0 or epoch == s.epochs or state.stopped_early:
        write_checkpoint(run, state, "last", barrier=False)
    if dist.is_main and run.log:
        write_log(run.log, state.history)
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
        if state.epoch % run.checkpoint_every != 0:
            write_checkpoint(run, state, "last", barrier=False)
        dist.barrier()
        raise Preempted(run.last_path, state.epoch, 0)


def write_checkpoint(run: Run, state: TrainState, kind: str, barrier: bool = True) -> None:
    """The one place a training checkpoint is written (rank 0 alone): ``last`` (to continue
    bit for bit: ``TrainState.to_checkpoint``) or ``best`` (the model of the best validation
    epoch, the one just completed). ``barrier``: the other ranks wait for the write."""
    if run.dist.is_main:
        if kind == "last":
            save_checkpoint(run.last_path, state.to_checkpoint(run))
        else:
            save_checkpoint(run.best_path, state.to_best_checkpoint())
    if barrier:
        run.dist.barrier()


def _training_fit(job: TrainJob, state: TrainState, rows) -> tuple:
    """The suggested decision threshold, the Mahalanobis statistics (per domain when the
    labels name source/target) and the training clips' score statistics (for ensembles),
    from all training clips scored with the weights kept (rank 0 scores them all):
    (threshold, mahalanobis, training_scores); no threshold where one cannot be fitted (the
    log says why)."""
    from aekit.evaluate.trainingscores import training_stats
    from aekit.models.mahalanobis import train_domains
    from aekit.evaluate.thresholds import training_fit

    mahalanobis = training_scores = None
    try:
        try:
            with FeatureFile(job.features) as ff:
                domains = train_domains(ff.ids, rows.train, job.labels)
        except AekitError as exc:
            LOG.warning("Mahalanobis statistics fitted as one domain: %s", exc)
            domains = None
        fitted: dict = {}  # the training clips' scores, for ensembles (aekit.evaluate.ensemble)
        threshold, mahalanobis = training_fit(state.model, state.normalizer, job.features,
                                              rows.train, domains, job.device,
                                              scores_out=fitted)
        training_scores = training_stats(fitted["ids"], fitted)
    except AekitError as exc:  # the model is still worth writing: say why none is stored
        LOG.warning("no decision threshold stored in the model: %s", exc)
        threshold = None
    return threshold, mahalanobis, training_scores


# --------------------------------------------------------------------------- one step

def make_optimizer(params, lr: float) -> torch.optim.Optimizer:
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
        raise InputError("bf16: this CUDA device has no bfloat16 support", param="precision")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"bf16 is not supported on {device.type}", param="precision")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _mse_db(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    out = out.float()
    if weight is None:
        return torch.nn.functional.mse_loss(out, x)
    return weighted_mse(out, x, weight)


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor,
               weight: torch.Tensor | None, amp: ContextManager) -> torch.Tensor:
    """One optimizer step on a normalized batch of units xb [B, D]; returns the loss (dB^2),
    unsynced. The step itself is aekit.train.faststep's (fast or plain, as attached)."""
    with amp:
        out, _ = net(xb)  # [B, D'] (D' = D but for a model predicting part of its unit)
    loss = _mse_db(out, unit_target(net, xb), weight)
    faststep.backward_and_step(opt, loss)
    return loss


# --------------------------------------------------------------------------- checks, sums

def warn_empty_validation(n_val: int, fold: int | None, where: str | None = None) -> None:
    """A validation fold that is empty trains with nothing to validate on: say so."""
    if fold is not None and n_val == 0:
        LOG.warning("fold %d selects no validation rows%s: training without validation "
                    "(no val loss; keeping the best weights keeps the last epoch; no early "
                    "stop: every epoch runs)", fold,
                    f" (after the query {where!r})" if where else "")


def warn_implausible_loss(epoch: int, train_loss: float, val_loss: float | None) -> None:
    """A finite loss beyond any plausible value (numeric blow-up) is written, but not silently."""
    for what, v in (("train", train_loss), ("validation", val_loss)):
        if v is not None and math.isfinite(v) and v > IMPLAUSIBLE_LOSS:
            LOG.warning("epoch %d: %s loss %.3g dB^2 is above any plausible value (> %.0e): the "
                        "training has diverged; try a smaller learning rate or global "
                        "normalization", epoch, what, v, IMPLAUSIBLE_LOSS)


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
                    "Try a smaller learning rate, global normalization, or check the features "
                    "for extreme values")
