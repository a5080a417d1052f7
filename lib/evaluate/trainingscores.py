"""The training clips' score statistics a model file stores (metadata ``training_scores``):
written by ``ae-train`` (``training_stats``), read back with every field checked
(``member_stats``) by ensembles (``aekit.evaluate.ensemble``) and by the Mahalanobis
threshold (``aekit.evaluate.autoscore``)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Sequence

import numpy as np

from aekit.errors import InputError

KEY = "training_scores"  # the model file metadata key
SCORERS = ("mse", "mae", "mahalanobis")  # scorers whose training statistics are stored
MAX_VALUES = 100_000  # per-clip training scores are stored up to this many clips
#: How the training clips' Mahalanobis distances are measured (``sample`` of that scorer's
#: entry): each against statistics fitted without it (aekit.models.mahalanobis.crossfit_distances).
#: Entries without it (in-sample distances, biased far low) are refused.
OUT_OF_SAMPLE = "crossfit-5"


def ids_sha256(ids: Sequence[str]) -> str:
    """SHA-256 of a list of clip ids in their order (as JSON, so no separator is ambiguous)."""
    text = json.dumps([str(i) for i in ids], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(b"aekit-ids\n" + text.encode("ascii")).hexdigest()


def training_stats(ids: Sequence[str], scores: dict) -> dict:
    """The ``training_scores`` metadata of a model: ``ids`` the training clips' ids in row
    order, ``scores`` {scorer: float [N]} their scores (a scorer absent or None is skipped).
    Returns {"n", "ids_sha256", "ddof": 0, "scorers": {name: {"mean", "std", "values"}}}:
    ``values`` (the per-clip scores) only when N <= MAX_VALUES; a scorer whose scores are
    not all finite is left out."""
    n = len(ids)
    out = {"n": n, "ids_sha256": ids_sha256(ids), "ddof": 0, "scorers": {}}
    for name in SCORERS:
        s = scores.get(name)
        if s is None:
            continue
        s = np.asarray(s, dtype=np.float64)
        if s.shape != (n,) or not n or not np.isfinite(s).all():
            continue
        entry = {"mean": float(s.mean()), "std": float(s.std())}
        if name == "mahalanobis":  # aekit.models.mahalanobis.crossfit_distances: as a new clip's
            entry["sample"] = OUT_OF_SAMPLE
        if n <= MAX_VALUES:
            entry["values"] = [float(v) for v in s]
        out["scorers"][name] = entry
    return out


def _num(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def member_stats(model, score: str) -> dict:
    """{"mean", "std", "values" (float64 [n] or None), "n", "ids_sha256"} of a LoadedModel's
    stored training scores for ``score``, every field checked (InputError, one line naming
    the file): present, finite, std > 0, values of length n consistent with mean and std."""
    name = str(model.path) if getattr(model, "path", None) else "the model"
    ts = (getattr(model, "info", None) or {}).get(KEY)
    if ts is None:
        raise InputError(f"{name}: stores no training score statistics (written before "
                         "ae-train stored them); retrain it with this aekit to use it in an "
                         "ensemble")
    bad = f"{name}: bad model metadata: {KEY}"
    if not isinstance(ts, dict):
        raise InputError(f"{bad} is not a JSON object")
    n, h, scorers = ts.get("n"), ts.get("ids_sha256"), ts.get("scorers")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"{bad}.n is not a positive integer")
    if not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
        raise InputError(f"{bad}.ids_sha256 is not a SHA-256")
    if not isinstance(scorers, dict):
        raise InputError(f"{bad}.scorers is not a JSON object")
    e = scorers.get(score)
    if e is None:
        raise InputError(f"{name}: stores no training statistics of the {score} score "
                         + ("(no Mahalanobis statistics); use the mse score, or retrain"
                            if score == "mahalanobis" else "; retrain it with this aekit"))
    if not isinstance(e, dict) or not _num(e.get("mean")) or not _num(e.get("std")):
        raise InputError(f"{bad}.scorers.{score}: mean and std must be finite numbers")
    if score == "mahalanobis" and e.get("sample") != OUT_OF_SAMPLE:
        raise InputError(f"{name}: its stored Mahalanobis training distances are in-sample "
                         "(written by an earlier aekit; far below a new clip's): no "
                         "Mahalanobis threshold or ensemble from them; retrain it, use "
                         "the mse score, or give the threshold as a number")
    mean, std = float(e["mean"]), float(e["std"])
    if std <= 0:
        raise InputError(f"{name}: its training {score} scores have no spread (std {std:g}): "
                         "they cannot standardize its scores")
    values = e.get("values")
    if values is not None:
        if (not isinstance(values, list) or len(values) != n
                or not all(_num(v) for v in values)):
            raise InputError(f"{bad}.scorers.{score}.values: expected {n} finite numbers")
        values = np.asarray(values, dtype=np.float64)
        if (not math.isclose(float(values.mean()), mean, rel_tol=1e-9, abs_tol=1e-12)
                or not math.isclose(float(values.std()), std, rel_tol=1e-9, abs_tol=1e-12)):
            raise InputError(f"{bad}.scorers.{score}: mean and std differ from its values")
    return {"mean": mean, "std": std, "values": values, "n": n, "ids_sha256": h}
