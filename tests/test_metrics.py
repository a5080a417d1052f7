"""aekit.evaluate.metrics: summaries, AUC and DCASE pAUC against scikit-learn, probe, K-fold summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from aekit.evaluate import metrics
from aekit.errors import InputError


def _pauc_by_sklearn_curve(y, s, p):
    """Reference DCASE pAUC: sklearn's ROC points, cut at FPR = p by interpolation, area / p."""
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    stop = np.searchsorted(fpr, p, side="right")
    t = np.interp(p, fpr[stop - 1:stop + 1], tpr[stop - 1:stop + 1])
    x = np.r_[fpr[:stop], p]
    yv = np.r_[tpr[:stop], t]
    return float(np.sum(np.diff(x) * (yv[1:] + yv[:-1]) / 2)) / p


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + 0.8 * y, 1)  # rounding makes many ties
    assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("p", [0.1, 0.05, 0.3, 1.0])
def test_dcase_pauc_matches_roc_curve_integration(seed, p):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + 1.0 * y, 2)
    assert metrics.dcase_pauc(y, s, p) == pytest.approx(_pauc_by_sklearn_curve(y, s, p), abs=1e-12)
    if p == 1.0:
        assert metrics.dcase_pauc(y, s, p) == pytest.approx(roc_auc_score(y, s))


def test_dcase_pauc_is_not_mcclish_and_known_values():
    y = np.array([0, 0, 0, 0, 1, 1])
    perfect = np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9])
    assert metrics.dcase_pauc(y, perfect) == pytest.approx(1.0)
    assert metrics.dcase_pauc(y, -perfect) == pytest.approx(0.0)
    # Hand-computed: one negative scores above every positive -> the ROC has FPR 0.25 before
    # any TPR: the raw area over [0, 0.1] is 0.
    s = np.array([0.95, 0.2, 0.3, 0.4, 0.8, 0.9])
    assert metrics.dcase_pauc(y, s) == pytest.approx(0.0)
    # scikit-learn's standardized pAUC gives 0.5 for the same curve; ours is the raw one.
    assert metrics.mcclish_pauc(y, s) == pytest.approx(roc_auc_score(y, s, max_fpr=0.1))
    assert metrics.mcclish_pauc(y, s) != pytest.approx(metrics.dcase_pauc(y, s))
    # Interpolation inside the first FPR step: 2 negatives, positive ties a negative at the top.
    y2 = np.array([1, 0, 0])
    s2 = np.array([0.5, 0.5, 0.1])  # ROC: (0,0) -> (0.5,1) -> (1,1)
    # on [0, 0.1] the segment is tpr = 2 * fpr: area = 0.01, / 0.1 = 0.1
    assert metrics.dcase_pauc(y2, s2) == pytest.approx(0.1)


def test_single_class_and_bad_labels_refused():
    with pytest.raises(InputError, match="both normal"):
        metrics.roc_auc([0, 0, 0], [1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="0 \\(normal\\) or 1"):
        metrics.anomaly_labels(pd.Series(["0", "1", "2"], index=["a", "b", "c"]), "anomaly")
    with pytest.raises(InputError, match="found: yes"):
        metrics.anomaly_labels(pd.Series(["0", "yes"], index=["a", "b"]), "anomaly")
    with pytest.raises(InputError, match="empty for 1 id"):
        metrics.anomaly_labels(pd.Series([0, None], index=["a", "b"]), "anomaly")
    ok = metrics.anomaly_labels(pd.Series([0, 1, 1.0], index=list("abc")), "a")
    assert ok.tolist() == [0, 1, 1]


def test_anomaly_report_groups_and_means():
    rng = np.random.default_rng(5)
    n = 400
    y = rng.integers(0, 2, n)
    g = np.where(np.arange(n) % 2 == 0, "fan", "pump")
    s = rng.normal(size=n) + y * np.where(g == "fan", 2.0, 0.5)
    rep = metrics.anomaly_report(y, s, g)
    assert rep["auc"] == pytest.approx(roc_auc_score(y, s))
    aucs = []
    for name in ("fan", "pump"):
        m = g == name
        assert rep["groups"][name]["auc"] == pytest.approx(roc_auc_score(y[m], s[m]))
        assert rep["groups"][name]["pauc_raw"] == pytest.approx(
            _pauc_by_sklearn_curve(y[m], s[m], 0.1))
        assert rep["groups"][name]["pauc"] == pytest.approx(
            roc_auc_score(y[m], s[m], max_fpr=0.1))  # official DCASE pAUC (issue 19)
        aucs.append(roc_auc_score(y[m], s[m]))
    assert rep["group_mean"]["auc_arithmetic"] == pytest.approx(np.mean(aucs))
    assert rep["group_mean"]["auc_harmonic"] == pytest.approx(2 / (1 / aucs[0] + 1 / aucs[1]))
    # a group with one class is refused, naming the group
    y2 = y.copy()
    y2[g == "pump"] = 0
    with pytest.raises(InputError, match="group 'pump'"):
        metrics.anomaly_report(y2, s, g)


def test_harmonic_mean():
    assert metrics.harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3)
    assert metrics.harmonic_mean([0.0, 1.0]) == 0.0
    assert metrics.harmonic_mean([]) is None


def test_describe_matches_numpy():
    v = np.random.default_rng(0).normal(size=101)
    d = metrics.describe(v)
    assert d["count"] == 101
    assert d["median"] == pytest.approx(np.median(v))
    assert d["p95"] == pytest.approx(np.percentile(v, 95))
    assert d["mean"] == pytest.approx(v.mean())
    assert metrics.describe([])["mean"] is None


def test_probe_separable_data_is_perfect_and_deterministic():
    rng = np.random.default_rng(0)
    centers = {"cat": np.r_[5.0, 0, 0, 0], "dog": np.r_[0, 5.0, 0, 0], "owl": np.r_[0, 0, 5.0, 0]}

    def draw(n):
        lab = rng.choice(list(centers), n)
        z = np.stack([centers[c] for c in lab]) + 0.3 * rng.normal(size=(n, 4))
        return z * 100 + 7, lab  # large offset and scale: standardization must handle it

    ztr, ytr = draw(90)
    zev, yev = draw(60)
    a = metrics.linear_probe(ztr, ytr, zev, yev)
    b = metrics.linear_probe(ztr, ytr, zev, yev)
    assert a == b
    assert a["accuracy"] == 1.0 and a["macro_f1"] == 1.0
    assert a["classes"] == ["cat", "dog", "owl"]
    assert a["train_count"] == 90 and a["count"] == 60
    # random labels hold nothing: near chance
    c = metrics.linear_probe(ztr, rng.permutation(ytr), zev, yev)
    assert c["accuracy"] < 0.8
    with pytest.raises(InputError, match="two classes"):
        metrics.linear_probe(ztr, ["cat"] * 90, zev, yev)


def _report(fold, auc, mse, groups=True):
    r = {"format": "aekit-eval", "selection": {"fold": fold}, "model": {"sha256": f"m{fold}"},
         "reconstruction": {"count": 10, "mse": {"mean": mse}},
         "anomaly": {"auc": auc, "pauc": auc / 2, "column": "anomaly", "converged": True}}
    if groups:
        r["anomaly"]["groups"] = {"fan": {"auc": auc}}
    return r


def test_summarize_reports_mean_std():
    reps = [_report(0, 0.8, 10.0), _report(1, 0.9, 12.0), _report(2, 0.7, 14.0, groups=False)]
    s = metrics.summarize_reports(reps, ["a.json", "b.json", "c.json"])
    m = s["metrics"]
    assert s["count"] == 3 and s["folds"] == [0, 1, 2]
    assert m["anomaly.auc"]["mean"] == pytest.approx(0.8)
    assert m["anomaly.auc"]["std"] == pytest.approx(np.std([0.8, 0.9, 0.7], ddof=1))
    assert m["reconstruction.mse.mean"]["values"] == [10.0, 12.0, 14.0]
    assert m["anomaly.groups.fan.auc"]["n"] == 2
    assert "anomaly.column" not in m and "anomaly.converged" not in m  # text and bools skipped
    assert "selection.fold" not in m
    table = metrics.format_table(s)
    assert table.splitlines()[0].split() == ["metric", "mean", "std", "min", "max", "n"]
    assert any(line.startswith("anomaly.auc ") for line in table.splitlines())
    assert "reconstruction.count" not in table  # counts only with all_metrics
    assert "reconstruction.count" in metrics.format_table(s, all_metrics=True)
    one = metrics.summarize_reports(reps[:1])
    assert one["metrics"]["anomaly.auc"]["std"] is None
    with pytest.raises(InputError):
        metrics.summarize_reports([])
    with pytest.raises(InputError, match="no metrics"):
        metrics.summarize_reports([{"format": "aekit-eval"}])
