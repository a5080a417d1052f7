"""Selective Mahalanobis scoring: the DCASE 2022-2025 AE baseline's second scoring mode.

As the baseline (nttcslab/dcase2023_task2_baseline_ae, networks/dcase2023t2_ae/dcase2023t2_ae.py
and networks/criterion/mahala.py) does: after training, the mean and covariance of the
reconstruction-error vectors of the training clips are fitted per domain (source, target);
a clip's score is the Mahalanobis distance of its error vector, the minimum over domains.

The error vector of a clip is the mean over its units (the frame windows of ``--arch frames``,
the whole clip for whole-clip models) of the signed error ``input - reconstruction`` in dB,
one value per unit dimension (C*M*context for frames). The baseline scores a clip's windows
in one matrix product whose mean is exactly this: the quadratic form of the window-mean
error. Differences from the baseline, on purpose: the distance is measured from the fitted
mean (the baseline fits the covariance around the mean but measures from zero), it is the
distance (the square root of the quadratic form, as scipy.spatial.distance.mahalanobis), and
the covariance (denominator n - 1, as the baseline) gets a small ridge before inversion,
``RIDGE`` times its mean variance on the diagonal, so a singular covariance (fewer clips than
dimensions) still inverts. A domain with fewer than 2 training clips is not fitted.
For ``--arch interp``, whose output is the window's centre frame, the vector is the mean of
``centre frame - prediction``: C*M values (``ClipModel.unit_target``).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from aekit.errors import InputError

LOG = logging.getLogger("aekit")

DOMAINS = ("source", "target")
ALL = "all"  # the one domain when the training labels name none
RIDGE = 1e-6  # times the mean variance, added to the covariance diagonal before inversion
MAX_DIM = 4096  # error vectors longer than this get no statistics (covariance too large)
VECTOR = "mean over the clip's units of input - reconstruction (dB)"


def vector_dim(model) -> int:
    """Length of a clip's error vector: the model's unit dimension (of its target:
    ``ClipModel.unit_target``, the centre frame for ``--arch interp``)."""
    c, m, t = model.input_shape
    u = model.take_units(torch.zeros(1, c, m, t, device="meta"),
                         torch.zeros(1, dtype=torch.int64, device="meta"))
    return int(model.unit_target(u).shape[1])


@torch.no_grad()
def error_vectors(model, norm, x: torch.Tensor) -> torch.Tensor:
    """Raw dB clips [B, C, M, T] -> error vectors float64 [B, D] (dB)."""
    xn = norm.transform(x)
    std = None if norm.mode == "none" else model.target_stats(norm.std)
    acc = None
    k = 1
    for k, u in model._all_units(xn):
        err = model.unit_target(u) - model(u)[0].float()  # [B, D'], normalized units
        if std is not None:
            err = err * std  # dB
        err = err.double()
        acc = err if acc is None else acc + err
    return acc / k


def fit(vectors: np.ndarray, domains: np.ndarray, quiet: bool = False) -> dict:
    """{domain: (mean float64 [D], inverse covariance float64 [D, D], n)} for each domain with
    at least 2 clips."""
    v = np.asarray(vectors, dtype=np.float64)
    out = {}
    for d in sorted(set(domains.tolist())):
        x = v[domains == d]
        if x.shape[0] < 2:
            if not quiet:
                LOG.warning("Mahalanobis statistics: domain %r has %d training clip(s); "
                            "not fitted", d, x.shape[0])
            continue
        mean = x.mean(0)
        cov = np.atleast_2d(np.cov(x, rowvar=False))  # denominator n - 1
        lam = RIDGE * max(float(np.trace(cov)) / cov.shape[0], 1e-12)
        icov = np.linalg.inv(cov + lam * np.eye(cov.shape[0]))
        out[d] = (mean, (icov + icov.T) / 2, int(x.shape[0]))
    return out


def distances(vectors: np.ndarray, stats: dict) -> np.ndarray:
    """Mahalanobis distance of each vector [N, D] to each domain's statistics, the minimum
    over domains: float64 [N]."""
    v = np.asarray(vectors, dtype=np.float64)
    best = None
    for mean, icov in stats.values():
        delta = v - np.asarray(mean, dtype=np.float64)
        q = np.einsum("nd,de,ne->n", delta, np.asarray(icov, dtype=np.float64), delta)
        d = np.sqrt(np.maximum(q, 0.0))
        best = d if best is None else np.minimum(best, d)
    return best


CROSSFIT_FOLDS = 5


def crossfit_distances(vectors: np.ndarray, domains: np.ndarray, stats: dict) -> np.ndarray:
    """The training clips' distances as a new clip's would be: out of sample, float64 [N].

    A clip's distance to statistics fitted on it is biased low, and far below any new
    clip's when there are fewer clips than dimensions (the covariance is then singular: the
    clips span a subspace, the ridge makes every other direction nearly infinitely
    unlikely, and every new clip has components there). Such distances would make the
    Mahalanobis threshold (their 90th percentile) flag every new clip, and make an ensemble's
    z-scores incomparable between members. So each clip is measured against statistics
    fitted without it: the clips are cut into ``CROSSFIT_FOLDS`` groups by position (clip i
    in group i mod 5), and the clips of each group are measured against the statistics of
    the other groups, the minimum over the domains fitted there. Where the other groups fit no
    domain (fewer than 2 clips left), the clip is measured against ``stats`` (all clips)."""
    v = np.asarray(vectors, dtype=np.float64)
    dom = np.asarray(domains, dtype=object)
    n = v.shape[0]
    full = {d: s[:2] for d, s in stats.items()}
    out = distances(v, full) if n else np.empty(0)
    k = min(CROSSFIT_FOLDS, n)
    if k < 2:
        return out
    group = np.arange(n) % k
    for g in range(k):
        held = group == g
        part = fit(v[~held], dom[~held], quiet=True)
        if part:
            out[held] = distances(v[held], {d: s[:2] for d, s in part.items()})
    return out


def model_stats(model) -> dict:
    """{domain: (mean, icov)} stored in a LoadedModel; InputError (one line) when none."""
    stats = getattr(model, "mahalanobis", None)
    if not stats:
        name = str(model.path) if getattr(model, "path", None) else "the model"
        raise InputError(f"{name}: model has no Mahalanobis statistics (retrain with this "
                         "aekit's ae-train, which stores them; or use the mse score)")
    return stats


def train_domains(ids, rows: np.ndarray, labels_path) -> np.ndarray:
    """The domain of each training row: the labels' ``domain`` column when every training
    row's value is source or target, else one domain 'all'."""
    rows = np.asarray(rows, dtype=np.int64)
    if labels_path:
        from aekit.data.selection import load_labels

        table = load_labels(labels_path, [ids[i] for i in rows])
        if "domain" in table.columns:
            dom = table["domain"].astype(str).str.strip().to_numpy()
            if np.isin(dom, DOMAINS).all():
                return dom.astype(object)
            LOG.warning("Mahalanobis statistics: the domain column has values other than "
                        "source/target; fitted on all training clips as one domain")
    return np.full(rows.size, ALL, dtype=object)
