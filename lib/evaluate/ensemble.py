"""Ensembles of trained models: several model files vote on one anomaly score.

Each member scores a clip with the same scorer (``mse``, ``mae`` or ``mahalanobis``); the
ensemble's score is the mean over members of the member's z-score, its score standardized
on its own training clips' scores::

    z(clip) = 1/K * sum_k (s_k(clip) - mean_k) / std_k

``mean_k``/``std_k`` (population std, ddof 0) are what ``ae-train`` stores in the model
file's metadata ``training_scores`` (see ``training_stats``): per scorer, the mean, the
standard deviation and (up to ``MAX_VALUES`` clips) the per-clip scores of the training
clips, with the SHA-256 of the training clips' ids in row order. When every member stores
the per-clip scores of the same training clips (same ids hash), the ensemble's decision
threshold is exact: the ``THRESHOLD_QUANTILE`` (90th) empirical percentile of the training
clips' combined z-scores (``Ensemble.threshold``); otherwise there is none (InputError:
give an explicit number). Model files written before the statistics existed still load
for single-model use; an ensemble refuses them with one line telling to retrain.

An ``Ensemble`` is accepted wherever ``aekit.evaluate.scoring`` takes a model (``score_features``,
``score_files``, ``score_array``, ``model_params``): the members must take the same clips
(same feature parameters and clip shape); their architectures may differ.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Sequence

import numpy as np

from aekit.errors import InputError

KEY = "training_scores"  # the model file metadata key
SCORERS = ("mse", "mae", "mahalanobis")  # scorers whose training statistics are stored
MAX_VALUES = 100_000  # per-clip training scores are stored up to this many clips
THRESHOLD_QUANTILE = 0.9  # as aekit.evaluate.scoring: the DCASE baselines' 90th percentile
COMBINATION = "mean over members of (score - training mean) / training std"
#: How the training clips' Mahalanobis distances are measured (``sample`` of that scorer's
#: entry): each against statistics fitted without it (aekit.evaluate.mahalanobis.crossfit_distances).
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
        if name == "mahalanobis":  # aekit.evaluate.mahalanobis.crossfit_distances: as a new clip's
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
                         + ("(no Mahalanobis statistics); use --score mse, or retrain"
                            if score == "mahalanobis" else "; retrain it with this aekit"))
    if not isinstance(e, dict) or not _num(e.get("mean")) or not _num(e.get("std")):
        raise InputError(f"{bad}.scorers.{score}: mean and std must be finite numbers")
    if score == "mahalanobis" and e.get("sample") != OUT_OF_SAMPLE:
        raise InputError(f"{name}: its stored Mahalanobis training distances are in-sample "
                         "(written by an earlier aekit; far below a new clip's): no "
                         "Mahalanobis threshold or ensemble from them; retrain it, use "
                         "--score mse, or give the threshold as a number")
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


def combine(scores: Sequence[np.ndarray], stats: Sequence[tuple[float, float]]) -> np.ndarray:
    """Mean over members of (scores_k - mean_k) / std_k: float64 [N]. ``scores``: one array
    [N] per member; ``stats``: (mean, std) per member, in the same order."""
    if not scores or len(scores) != len(stats):
        raise ValueError("one (mean, std) per member's scores")
    total = None
    for s, (mean, std) in zip(scores, stats):
        z = (np.asarray(s, dtype=np.float64) - mean) / std
        total = z if total is None else total + z
    return total / len(scores)


class Ensemble:
    """Several loaded models (or model file paths) scoring the same clips: see the module.

    ``path``, ``info``, ``feature_params`` and ``input_shape`` are the first member's, so the
    ensemble goes wherever ``aekit.evaluate.scoring`` takes a model."""

    is_ensemble = True

    def __init__(self, members: Sequence, device="cpu"):
        from aekit.models.modelfile import load_model
        from aekit.data.store import params_mismatch

        if isinstance(members, (str, bytes, os.PathLike)):
            raise TypeError("members must be a sequence of models or model file paths")
        loaded = [load_model(m, device) if isinstance(m, (str, os.PathLike)) else m
                  for m in members]
        if len(loaded) < 2:
            raise InputError("an ensemble needs at least two models")
        first = loaded[0]
        names = [str(m.path) if m.path else f"member {k + 1}" for k, m in enumerate(loaded)]
        seen = {}
        for k, m in enumerate(loaded):
            if tuple(m.input_shape) != tuple(first.input_shape):
                raise InputError(f"{names[k]}: takes clips {list(m.input_shape)}, {names[0]} "
                                 f"takes {list(first.input_shape)}: not one ensemble")
            diffs = params_mismatch(first.feature_params or {}, m.feature_params or {})
            if diffs:
                raise InputError(f"{names[k]}: feature parameters differ from {names[0]}'s: "
                                 f"{', '.join(diffs)}")
            digest = (m.info or {}).get("tensors_sha256")
            if digest is not None and digest in seen:
                raise InputError(f"{names[k]}: the same model as {names[seen[digest]]} "
                                 "(identical weights); give each member once")
            if digest is not None:
                seen.setdefault(digest, k)
        self.members = loaded
        self.names = names
        self._stats: dict = {}  # score -> checked member statistics (read once)

    # what aekit.evaluate.scoring reads from a model
    @property
    def path(self):
        return self.members[0].path

    @property
    def info(self) -> dict:
        return self.members[0].info

    @property
    def feature_params(self) -> dict:
        return self.members[0].feature_params

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.members[0].input_shape

    def stats(self, score: str) -> list[dict]:
        """Each member's checked ``member_stats`` for ``score`` (InputError on the first bad)."""
        if score not in self._stats:
            self._stats[score] = [member_stats(m, score) for m in self.members]
        return self._stats[score]

    def check(self, score: str) -> None:
        """InputError (one line) unless every member can give ``score`` and stores its
        training statistics."""
        from aekit.evaluate.scoring import check_score

        for m in self.members:
            if score != "mae":
                check_score(m, score)  # mahalanobis: the member stores its statistics
        self.stats(score)

    def combine(self, member_scores: Sequence[np.ndarray], score: str) -> np.ndarray:
        """The ensemble z-scores [N] from each member's ``score`` scores [N] (member order)."""
        return combine(member_scores, [(s["mean"], s["std"]) for s in self.stats(score)])

    def score_features(self, x, batch_size: int, score: str = "mse") -> np.ndarray:
        """As ``aekit.evaluate.scoring.score_features``, the ensemble's z-scores [N]."""
        from aekit.evaluate.scoring import score_features

        return self.combine([score_features(m, x, batch_size, score) for m in self.members],
                            score)

    def threshold(self, score: str, quantile: float = THRESHOLD_QUANTILE) -> dict:
        """{"method": "empirical", "quantile", "n", "value"}: the ``quantile`` (numpy's
        linear interpolation) of the training clips' ensemble z-scores, from the per-clip
        training scores the members store. InputError (one line) when a member stores none
        or the members were trained on different clips (their ids hashes differ)."""
        st = self.stats(score)
        for k, s in enumerate(st):
            if s["values"] is None:
                raise InputError(f"{self.names[k]}: stores no per-clip training scores (more "
                                 f"than {MAX_VALUES:,} training clips): the ensemble has no "
                                 "threshold; give --threshold a number")
            if s["ids_sha256"] != st[0]["ids_sha256"]:
                raise InputError(f"{self.names[k]} was trained on other clips than "
                                 f"{self.names[0]}: the ensemble has no threshold of its own; "
                                 "give --threshold a number")
        z = combine([s["values"] for s in st], [(s["mean"], s["std"]) for s in st])
        return {"method": "empirical", "quantile": quantile, "n": int(z.size),
                "value": float(np.quantile(z, quantile))}

    def describe(self, score: str) -> dict:
        """The report's ``ensemble`` section (without the threshold)."""
        from aekit.system.fileio import file_sha256

        st = self.stats(score)
        return {"score": score, "combination": COMBINATION, "column": "ensemble_z",
                "members": [{"path": str(m.path) if m.path else None,
                             "sha256": file_sha256(m.path) if m.path else None,
                             "arch": m.config.arch, "train_mean": s["mean"],
                             "train_std": s["std"], "train_n": s["n"]}
                            for m, s in zip(self.members, st)]}
