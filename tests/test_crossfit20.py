"""The training clips' Mahalanobis distances stored for the threshold and for ensembles are
out of sample (aekit.models.mahalanobis.crossfit_distances): measured in sample, with fewer clips
than dimensions, they were far below any new clip's, and the Mahalanobis threshold flagged
every new clip (measured: 36 of 36 normal test clips of a type)."""

from __future__ import annotations

import numpy as np
import pytest


def _fit(x):
    mean = x.mean(0)
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    lam = 1e-6 * max(np.trace(cov) / cov.shape[0], 1e-12)
    icov = np.linalg.inv(cov + lam * np.eye(cov.shape[0]))
    return mean, (icov + icov.T) / 2


def _dist(v, mean, icov):
    d = v - mean
    return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, icov, d), 0))


def test_crossfit_distances_are_each_clip_against_the_other_groups():
    from aekit.models import mahalanobis as mh

    rng = np.random.default_rng(0)
    n, dim = 23, 40  # fewer clips than dimensions
    v = rng.normal(size=(n, dim))
    dom = np.array(["source"] * 20 + ["target"] * 3, dtype=object)
    stats = mh.fit(v, dom)
    got = mh.crossfit_distances(v, dom, stats)
    want = np.empty(n)
    for g in range(5):
        held = np.arange(n) % 5 == g
        best = None
        for d in ("source", "target"):
            rest = ~held & (dom == d)
            if rest.sum() < 2:
                continue
            dist = _dist(v[held], *_fit(v[rest]))
            best = dist if best is None else np.minimum(best, dist)
        want[held] = best
    np.testing.assert_allclose(got, want, rtol=1e-9)
    insample = mh.distances(v, {d: s[:2] for d, s in stats.items()})
    new = rng.normal(size=(200, dim))
    fresh = mh.distances(new, {d: s[:2] for d, s in stats.items()})
    # in sample: every training clip far below every new clip; out of sample: comparable
    assert insample.max() < fresh.min() / 50
    assert np.median(got) > np.median(fresh) / 3


def test_in_sample_training_distances_are_refused(tmp_path):
    from aekit.evaluate.ensemble import member_stats
    from aekit.evaluate.trainingscores import OUT_OF_SAMPLE, training_stats
    from aekit.errors import InputError
    from types import SimpleNamespace

    ts = training_stats(["a", "b", "c"], {"mse": np.array([1.0, 2.0, 4.0]),
                                          "mahalanobis": np.array([3.0, 5.0, 9.0])})
    assert ts["scorers"]["mahalanobis"]["sample"] == OUT_OF_SAMPLE
    assert "sample" not in ts["scorers"]["mse"]
    m = SimpleNamespace(path="m.safetensors", info={"training_scores": ts})
    assert member_stats(m, "mahalanobis")["values"].tolist() == [3.0, 5.0, 9.0]
    del ts["scorers"]["mahalanobis"]["sample"]  # as written before the fix
    with pytest.raises(InputError, match="in-sample"):
        member_stats(m, "mahalanobis")
    assert member_stats(m, "mse")["mean"] == pytest.approx(7 / 3)
