"""The checks every scoring path shares (scoring, inference, thresholds, autoscore): a model
given as a file path or a LoadedModel, path lists, job and batch counts, finite scores.
Imports nothing else of aekit.evaluate, so any module of it may use it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from aekit.errors import DataError, InputError

if TYPE_CHECKING:
    from aekit.models.modelfile import LoadedModel


def as_model(model) -> "LoadedModel":
    """A LoadedModel (or an object with its attributes) as given, or loaded from a model file
    path; TypeError for anything else (a number, a dict, ...)."""
    if isinstance(model, (str, os.PathLike)):
        from aekit.models.modelfile import load_model

        return load_model(model)
    if not (hasattr(model, "info") and hasattr(model, "path")):
        raise TypeError(f"expected a LoadedModel or a model file path, got {type(model).__name__}")
    return model


def path_list(paths, what: str = "paths") -> list[str]:
    """A sequence of paths as strings. One str, bytes or PathLike is refused (TypeError): a
    string is a sequence of characters, and scoring each of them is never what was meant."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(f"{what} must be a sequence of paths, not one {type(paths).__name__} "
                        f"({os.fsdecode(paths)!r}); give [path] for a single file")
    try:
        return [os.fsdecode(p) if isinstance(p, bytes) else str(os.fspath(p)) for p in paths]
    except TypeError:
        raise TypeError(f"{what} must be a sequence of str or os.PathLike") from None


def check_jobs(jobs) -> None:
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer))
                             or jobs < 1):
        raise InputError(f"jobs must be a positive integer or None (all cores), got {jobs!r}")


def check_batch(batch_size) -> None:
    if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
            or batch_size < 1):
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")


def check_scores(scores: np.ndarray, what: str = "the model") -> np.ndarray:
    """Scores as given, or DataError when one is NaN or Inf: never a silent null."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise DataError(f"{bad.size} score(s) are not finite (first at clip {int(bad[0])}): "
                        f"{what} overflows on these clips")
    return scores
