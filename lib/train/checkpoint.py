"""Training checkpoints: where they live, how they are written and read, RNG states.

Checkpoints live in ``<output>.ckpt/`` (or ``checkpoint_dir``):
  last.pt  everything needed to continue bit for bit (``TrainState.to_checkpoint``):
           model, optimizer, schedule, normalizer, epoch, step-in-epoch, the epoch's
           permutation of units, torch/numpy RNG states, history, best-so-far, settings
           and data identity (shape, selection, ids, feature parameters, and the SHA-256
           of the features' values: ``data_content_id``). Written at the end of every
           epoch (``checkpoint_every``)
           and when a stop is requested.
  best.pt  the model of the epoch with the lowest validation loss.
Both are ``torch.save`` of plain tensors and primitives, written atomically and read
with ``torch.load(weights_only=True)``: loading one runs no code.
  .ae-train.lock  held (``fcntl.flock``) by the run that owns the directory, for its whole
           life: a second run on the same directory is refused (:class:`CheckpointBusy`,
           exit 1) instead of reading or overwriting the first one's checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

import numpy as np
import torch

from aekit.errors import DataError, InputError
from aekit.system.fileio import atomic_path
from aekit.train.settings import RESUME_MUST_MATCH, TrainSettings

LOG = logging.getLogger("aekit")

CHECKPOINT_FORMAT = "aekit-train-checkpoint"
CHECKPOINT_VERSION = 1

#: The lock file inside a checkpoint directory; checkpoint file names, for collision checks.
LOCK_NAME = ".ae-train.lock"
CHECKPOINT_FILES = ("last.pt", "best.pt", LOCK_NAME)


class CheckpointBusy(DataError):
    """Another live run holds the checkpoint directory (exit 1: try again when it is done)."""


_LOCKS: dict[Path, int] = {}  # checkpoint directory (resolved) -> descriptor of its held lock


def lock_checkpoint_dir(ckdir: str | os.PathLike) -> None:
    """Take the directory's lock for this process (until :func:`unlock_checkpoint_dir` or the
    process ends, however it ends): the file ``LOCK_NAME`` inside it, ``flock``ed exclusively
    without waiting. Raises :class:`CheckpointBusy` when another run holds it. The directory
    must exist. Where flock is unavailable (not POSIX), nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    key = Path(ckdir).resolve()
    if key in _LOCKS:
        return
    path = key / LOCK_NAME
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CheckpointBusy(f"checkpoint directory {ckdir} is in use by another ae-train "
                                 f"run (it holds {path}); wait for it to end, or give this run "
                                 "its own output or checkpoint directory") from None
        try:  # the file locked must still be the one in the directory (not one just removed)
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same = False
        if same:
            _LOCKS[key] = fd
            return
        os.close(fd)
    raise CheckpointBusy(f"checkpoint directory {ckdir}: cannot take its lock {path}")


def unlock_checkpoint_dirs() -> None:
    """Release every lock :func:`lock_checkpoint_dir` took, removing the lock files (while
    still held, so no other run is using them; one that opened a file just removed finds
    it gone and takes a new one)."""
    for key in list(_LOCKS):
        fd = _LOCKS.pop(key)
        try:
            with contextlib.suppress(OSError):
                os.unlink(key / LOCK_NAME)
        finally:
            os.close(fd)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
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
        raise InputError(f"no checkpoint at {p}")
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


def save_checkpoint(path: Path, ck: dict) -> None:
    """Write a checkpoint atomically (the training loop writes through
    ``aekit.train.loop.write_checkpoint``, its one place)."""
    with atomic_path(path) as tmp:
        torch.save(ck, tmp)


def resume_mismatch(ck: dict, settings: TrainSettings, data_id: dict) -> list[str]:
    """What differs between a checkpoint and this run ('' when it may resume)."""
    diffs = []
    old = ck["settings"]
    for k in RESUME_MUST_MATCH:
        a, b = old.get(k, {} if k == "model_options" else None), settings.to_dict().get(k)
        if a != b:
            diffs.append(f"{k}: checkpoint {a}, now {b}")
    for k, b in data_id.items():
        a = ck["data"].get(k)
        if k == CONTENT_KEY:
            if a is None:  # a checkpoint written before the values were hashed: ids only
                LOG.warning("the checkpoint records no hash of the features' values (an older "
                            "aekit): only their ids, shape and parameters are compared")
            elif a != b:
                diffs.append(f"the features' values differ (SHA-256 {str(a)[:12]}... in the "
                             f"checkpoint, {str(b)[:12]}... now): same ids, other data")
            continue
        if a != b:
            diffs.append(f"{k}: checkpoint {a}, now {b}")
    return diffs


#: The data identity's key for the SHA-256 of the features' values.
CONTENT_KEY = "features_sha256"


def data_content_id(ff, verify: bool) -> str:
    """The SHA-256 of a features file's values, for the checkpoint's data identity.

    A fresh run takes the hash the file stores (written with the rows: free); a file of
    format 1 has none and is hashed here (one pass over its values). A resumed run
    (``verify``) always hashes the values it is about to train on and compares them with the
    stored hash too, so a file whose rows were rewritten in place is refused even when its
    ids, shape, parameters and stored hash are unchanged: one pass over the file per resume,
    none per epoch.
    """
    from aekit.data.integrity import content_sha256

    stored = ff.content_sha256
    if stored is not None and not verify:
        return stored
    why = "to compare them with the checkpoint" if verify else "features format 1: no stored hash"
    LOG.info("hashing the values of %s (%s)", ff.path, why)
    return content_sha256(ff)


# --------------------------------------------------------------------------- the directory

_CREATED_DIRS: set[Path] = set()  # checkpoint directories this process made (removed if left empty)


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


def removes_empty_checkpoint_dir(fn):
    """On any error (NaN at the first step, a bad row found while streaming...), remove the
    checkpoint directories this process made and left empty; release the run's lock on its
    checkpoint directory however it ends."""

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
            unlock_checkpoint_dirs()

    return wrapper
