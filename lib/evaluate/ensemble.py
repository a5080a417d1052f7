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

import os
from typing import Sequence

import numpy as np

from aekit.errors import InputError
from aekit.evaluate.trainingscores import MAX_VALUES, member_stats

THRESHOLD_QUANTILE = 0.9  # as aekit.evaluate.scoring: the DCASE baselines' 90th percentile
COMBINATION = "mean over members of (score - training mean) / training std"


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
                                 "threshold; give the threshold as a number")
            if s["ids_sha256"] != st[0]["ids_sha256"]:
                raise InputError(f"{self.names[k]} was trained on other clips than "
                                 f"{self.names[0]}: the ensemble has no threshold of its own; "
                                 "give the threshold as a number")
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
