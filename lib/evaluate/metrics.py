"""Metrics of a trained autoencoder: reconstruction scores, anomaly AUC/pAUC, probe, K-fold verdict.

Anomaly detection follows the DCASE Task 2 convention: the anomaly score of a clip is its
reconstruction error, and detection is measured with the area under the ROC curve (AUC)
and the *partial* AUC over false-positive rates in [0, p], p = 0.1.

The pAUC reported (``pauc``) is the official DCASE one: scikit-learn's
``roc_auc_score(y, s, max_fpr=p)``, the McClish-standardized partial AUC (0.5 for a random
detector, 1 for a perfect one), computed per machine id / section as the DCASE 2020 baseline's
``01_test.py`` and the 2021-2025 evaluators do. ``pauc_raw`` (``dcase_pauc``) is the
non-standardized area under the ROC curve for FPR in [0, p] divided by p (p/2 = 0.05 for a
random detector), kept for comparison only. The DCASE 2021-2025 domain protocols are in
``aekit.evaluate.dcase``.

The linear probe answers "how much of a label does the code z hold?": a standardized
logistic regression fitted on the training rows' codes, scored on the evaluated rows.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from aekit.errors import InputError, preview
from aekit.evaluate import sections as _sections

LOG = logging.getLogger("aekit")

MAX_FPR = 0.1  # DCASE Task 2: pAUC over FPR in [0, 0.1]
PERCENTILES = (5, 25, 50, 75, 95)


def _num(x) -> float | None:
    """A JSON-safe float: None for NaN/inf."""
    x = float(x)
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------- score summaries

def describe(values: Sequence[float] | np.ndarray) -> dict:
    """count, mean, std (population), min, p5, p25, median, p75, p95, max of a 1-D array."""
    v = np.asarray(values, dtype=np.float64)
    out: dict = {"count": int(v.size)}
    if v.size == 0:
        for k in ("mean", "std", "min", "p5", "p25", "median", "p75", "p95", "max"):
            out[k] = None
        return out
    out["mean"] = _num(v.mean())
    out["std"] = _num(v.std())
    out["min"] = _num(v.min())
    for p, q in zip(PERCENTILES, np.percentile(v, PERCENTILES)):
        out["median" if p == 50 else f"p{p}"] = _num(q)
    out["max"] = _num(v.max())
    return out


def score_summary(mse: np.ndarray, mae: np.ndarray, splits: Sequence[str] | None = None) -> dict:
    """{"count", "mse": describe, "mae": describe}, plus "per_split" when several splits occur."""
    out = {"count": int(len(mse)), "mse": describe(mse), "mae": describe(mae)}
    if splits is not None:
        sp = np.asarray(splits, dtype=object)
        names = sorted(set(sp.tolist()))
        if len(names) > 1:
            out["per_split"] = {
                name: {"count": int((sp == name).sum()), "mse": describe(mse[sp == name]),
                       "mae": describe(mae[sp == name])}
                for name in names
            }
    return out


# --------------------------------------------------------------------------- ROC, AUC, pAUC

def _check_binary(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("y_true and scores must be 1-D arrays of the same length")
    if not np.isin(y, (0, 1)).all():
        raise InputError("anomaly labels must be 0 (normal) or 1 (anomalous)")
    if not np.isfinite(s).all():
        raise InputError("anomaly scores contain NaN or infinite values")
    y = y.astype(np.int64)
    if y.min(initial=1) == y.max(initial=0):
        which = "anomalous (1)" if y.size and y[0] == 1 else "normal (0)"
        raise InputError(f"AUC needs both normal (0) and anomalous (1) clips; "
                         f"all {y.size} are {which}")
    return y, s


def roc_points(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve (fpr, tpr, thresholds), higher score = more anomalous; tied scores are one point.

    Starts at (0, 0) with threshold +inf, ends at (1, 1).
    """
    y, s = _check_binary(y_true, scores)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last index of each run of ties
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1) - tps
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return fpr, tpr, np.r_[np.inf, s[last]]


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve (ties count one half)."""
    fpr, tpr, _ = roc_points(y_true, scores)
    return _trapezoid(tpr, fpr)


def partial_area(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """Raw area under a ROC curve for FPR in [0, max_fpr], the curve cut by linear interpolation."""
    stop = int(np.searchsorted(fpr, max_fpr, side="right"))
    if stop >= fpr.size:
        return _trapezoid(tpr, fpr)
    t = np.interp(max_fpr, fpr[stop - 1:stop + 1], tpr[stop - 1:stop + 1])
    return _trapezoid(np.r_[tpr[:stop], t], np.r_[fpr[:stop], max_fpr])


def dcase_pauc(y_true, scores, max_fpr: float = MAX_FPR) -> float:
    """The raw ('pauc_raw') partial AUC: area under the ROC curve for FPR in [0, p], divided by p.

    1 for a perfect detector, p/2 for a random one. Not McClish-standardized, so NOT the
    official DCASE pAUC (that is ``mcclish_pauc``; see module doc).
    """
    if not 0 < max_fpr <= 1:
        raise InputError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, tpr, _ = roc_points(y_true, scores)
    return partial_area(fpr, tpr, max_fpr) / max_fpr


def mcclish_pauc(y_true, scores, max_fpr: float = MAX_FPR) -> float:
    """The official DCASE pAUC: scikit-learn's roc_auc_score(max_fpr=p), McClish-standardized."""
    from sklearn.metrics import roc_auc_score

    y, s = _check_binary(y_true, scores)
    return float(roc_auc_score(y, s, max_fpr=max_fpr))


def harmonic_mean(values: Iterable[float]) -> float | None:
    v = [float(x) for x in values]
    if not v:
        return None
    if any(x <= 0 for x in v):
        return 0.0
    return len(v) / sum(1.0 / x for x in v)


def anomaly_labels(column: pd.Series, name: str) -> np.ndarray:
    """Validate a label column as 0/1 integers (1 = anomalous); InputError names the bad values."""
    missing = column.isna()
    if missing.any():
        ids = column.index[missing]
        raise InputError(f"anomaly column '{name}' is empty for {len(ids)} id(s): {preview(ids)}")
    vals = pd.to_numeric(column.astype(str).str.strip(), errors="coerce")
    bad = vals.isna() | ~vals.isin([0, 1])
    if bad.any():
        found = sorted(set(column[bad].astype(str)))[:5]
        raise InputError(f"anomaly column '{name}' must hold 0 (normal) or 1 (anomalous); "
                         f"found: {', '.join(found)}")
    return vals.to_numpy(dtype=np.int64)


def decision_report(y_true, scores, threshold: float) -> dict:
    """Decisions score > threshold against 0/1 labels: the confusion counts and precision,
    recall and F1 of the anomalous class (0 where undefined, as scikit-learn's
    zero_division=0), as the DCASE 2023+ Task 2 results report them."""
    y, s = np.asarray(y_true).astype(int), np.asarray(scores, dtype=np.float64)
    pred = s > threshold
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    fn, tn = int((~pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"value": float(threshold), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": precision, "recall": recall, "f1": f1}


def anomaly_report(y_true, scores, groups: Sequence | None = None,
                   max_fpr: float = MAX_FPR) -> dict:
    """AUC and the official pAUC (McClish, ``roc_auc_score(max_fpr=p)``) overall and per group,
    with arithmetic and harmonic means over groups; ``pauc_raw`` is the non-standardized one."""
    y, s = _check_binary(y_true, scores)
    out: dict = {
        "count": int(y.size), "normal": int((y == 0).sum()), "anomalous": int((y == 1).sum()),
        "max_fpr": max_fpr,
        "auc": _num(roc_auc(y, s)),
        "pauc": _num(mcclish_pauc(y, s, max_fpr)),
        "pauc_raw": _num(dcase_pauc(y, s, max_fpr)),
    }
    if groups is not None:
        g = np.asarray([str(x) for x in groups], dtype=object)
        per: dict = {}
        for name in sorted(set(g.tolist())):
            m = g == name
            try:
                auc, pauc = roc_auc(y[m], s[m]), mcclish_pauc(y[m], s[m], max_fpr)
                pauc_raw = dcase_pauc(y[m], s[m], max_fpr)
            except InputError as exc:
                raise InputError(f"group '{name}': {exc}") from None
            per[name] = {"count": int(m.sum()), "normal": int((y[m] == 0).sum()),
                         "anomalous": int((y[m] == 1).sum()), "auc": _num(auc), "pauc": _num(pauc),
                         "pauc_raw": _num(pauc_raw)}
        aucs = [v["auc"] for v in per.values()]
        paucs = [v["pauc"] for v in per.values()]
        raws = [v["pauc_raw"] for v in per.values()]
        out["groups"] = per
        out["group_mean"] = {
            "auc_arithmetic": _num(np.mean(aucs)), "pauc_arithmetic": _num(np.mean(paucs)),
            "auc_harmonic": harmonic_mean(aucs), "pauc_harmonic": harmonic_mean(paucs),
            "pauc_raw_arithmetic": _num(np.mean(raws)), "pauc_raw_harmonic": harmonic_mean(raws),
        }
    return out


# --------------------------------------------------------------------------- linear probe

def linear_probe(z_train: np.ndarray, y_train: Sequence, z_eval: np.ndarray, y_eval: Sequence,
                 seed: int = 0, max_iter: int = 1000) -> dict:
    """Fit a standardized logistic regression on (z_train, y_train); score it on (z_eval, y_eval).

    Labels are compared as text. Deterministic (lbfgs, fixed seed). Returns accuracy, macro F1,
    the majority-class accuracy as a baseline, and the class counts.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ytr = np.asarray([str(v) for v in y_train], dtype=object)
    yev = np.asarray([str(v) for v in y_eval], dtype=object)
    if ytr.size == 0:
        raise InputError("linear probe: no training rows")
    if yev.size == 0:
        raise InputError("linear probe: no rows to score")
    classes = sorted(set(ytr.tolist()))
    if len(classes) < 2:
        raise InputError(f"linear probe needs at least two classes in the training rows; "
                         f"found only '{classes[0]}'")
    unseen = sorted(set(yev.tolist()) - set(classes))
    if unseen:
        LOG.warning("linear probe: %d class(es) in the evaluated rows never seen in training: %s",
                    len(unseen), ", ".join(unseen[:5]))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(np.asarray(z_train, dtype=np.float64), ytr)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    if not converged:
        LOG.warning("linear probe: logistic regression did not converge in %d iterations", max_iter)
    pred = clf.predict(np.asarray(z_eval, dtype=np.float64))
    counts = pd.Series(ytr).value_counts()
    majority = counts.index[0]
    return {
        "train_count": int(ytr.size), "count": int(yev.size),
        "classes": classes,
        "accuracy": _num(accuracy_score(yev, pred)),
        "macro_f1": _num(f1_score(yev, pred, average="macro", zero_division=0)),
        "majority_accuracy": _num(np.mean(yev == majority)),
        "converged": converged,
    }


# --------------------------------------------------------------------------- K-fold verdict

def flatten_metrics(report: dict, sections: Sequence[str] | None = None) -> dict[str, float]:
    """Numeric leaves under the metric sections (default: every registered section that is
    summarized), keyed by dotted path ('anomaly.auc'); each section's settings left out."""
    out: dict[str, float] = {}

    def walk(prefix: str, node, settings) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k not in settings:
                    walk(f"{prefix}.{k}", v, settings)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            if math.isfinite(float(node)):
                out[prefix] = float(node)

    entries = {s.name: s for s in _sections.registered()}
    for sec in (_sections.summarized() if sections is None else sections):
        if sec in report:
            entry = entries.get(sec)
            walk(sec, report[sec], entry.settings if entry is not None else frozenset())
    return out


def summarize_reports(reports: Sequence[dict], names: Sequence[str] | None = None) -> dict:
    """Mean +- std over K per-fold reports of every numeric metric: the model's real strength.

    std is the sample standard deviation (ddof=1; None for a single report). A metric missing
    from some reports is averaged over those that have it (its ``n`` says how many).
    """
    if not reports:
        raise InputError("nothing to summarize: no reports given")
    names = list(names) if names is not None else [f"report{i}" for i in range(len(reports))]
    flat = [flatten_metrics(r) for r in reports]
    keys: list[str] = []
    for f in flat:
        keys.extend(k for k in f if k not in keys)
    if not keys:
        raise InputError("the reports hold no metrics (expected ae-eval JSON reports)")
    metrics: dict = {}
    for k in keys:
        vals = np.array([f[k] for f in flat if k in f], dtype=np.float64)
        metrics[k] = {
            "mean": _num(vals.mean()),
            "std": _num(vals.std(ddof=1)) if vals.size > 1 else None,
            "min": _num(vals.min()), "max": _num(vals.max()),
            "n": int(vals.size),
            "values": [_num(x) for x in vals],
        }
    partial = sorted(k for k, v in metrics.items() if v["n"] < len(reports))
    if partial:
        LOG.warning("%d metric(s) missing from some reports (e.g. %s)", len(partial), partial[0])
    folds = [r.get("selection", {}).get("fold") for r in reports]
    known = [f for f in folds if f is not None]
    if len(set(known)) < len(known):
        LOG.warning("several reports are for the same fold: %s", folds)
    models = {r.get("model", {}).get("sha256") for r in reports} - {None}
    if len(reports) > 1 and len(models) == 1:
        LOG.warning("all reports come from the same model file; K-fold reports normally come "
                    "from K models, one per fold")
    return {
        "format": "aekit-eval-summary",
        "format_version": 1,
        "count": len(reports),
        "reports": names,
        "folds": folds,
        "std": "sample standard deviation over reports (ddof=1)",
        "metrics": metrics,
    }


def is_headline(key: str) -> bool:
    """Whether a dotted metric key is a headline result (AUC, pAUC, mean MSE, accuracy...):
    its last part is not one of its section's ``detail`` keys (counts, spread statistics)."""
    entry = _sections.get(key.split(".", 1)[0])
    detail = entry.detail if entry is not None else _sections.DETAIL
    return key.rsplit(".", 1)[-1] not in detail


def format_table(summary: dict, all_metrics: bool = False) -> str:
    """A plain-text table of a summary: metric, mean, std, min, max, n (headline metrics only,
    unless all_metrics)."""
    rows = [("metric", "mean", "std", "min", "max", "n")]
    fmt = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731
    for k, v in summary["metrics"].items():
        if not (all_metrics or is_headline(k)):
            continue
        rows.append((k, fmt(v["mean"]), fmt(v["std"]), fmt(v["min"]), fmt(v["max"]), str(v["n"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"
