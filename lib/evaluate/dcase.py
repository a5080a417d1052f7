"""DCASE Task 2 (2021-2025) results, computed as the official evaluators compute them.

Reimplemented from reading (not copied):

- 2021: ``dcase2021_task2_evaluator.py`` of y-kawagu/dcase2021_task2_evaluator. Ground truth is
  split per machine type, section AND domain; each (type, section, domain) gets AUC and pAUC
  on the clips of that domain only (its normals and its anomalies), precision, recall and F1
  of its decisions; arithmetic and harmonic means over sections and domains per type and over
  all machine types, sections and domains.
- 2022-2025: ``dcase2023_task2_evaluator.py`` of nttcslab/dcase2023_task2_evaluator and
  ``dcase2022_task2_evaluator.py`` of Kota-Dohi/dcase2022_evaluator (the same selection; the
  2024 and 2025 evaluators' code was not available to read, their READMEs describe the same
  outputs, so they are taken to follow it). Per machine type and section:

  * AUC (source): the source-domain normal clips and ALL anomalous clips of the section
    (both domains); AUC (target): the target-domain normals and all anomalies;
  * pAUC: every clip of the section (both domains), ``roc_auc_score(max_fpr=0.1)``;
  * precision, recall, F1 (source/target): the decisions on the clips of that domain only.

  Per machine type: arithmetic and harmonic means over its sections. Over everything: the
  arithmetic and harmonic means over all machine types, sections and domains (AUC: the
  source and target AUCs together; pAUC counted once per domain, as the evaluator does), and
  the official score: the harmonic mean of every section's AUC (source), AUC (target) and
  pAUC together.

pAUC is always scikit-learn's ``roc_auc_score(y, s, max_fpr=0.1)`` (McClish-standardized).
Harmonic means floor each value at the machine epsilon first, as the evaluators do.
Precision is tp / max(tp + fp, eps), recall tp / max(tp + fn, eps), F1
2 P R / max(P + R, eps): 0 where undefined.
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

from aekit.errors import InputError

PROTOCOLS = ("dcase2021", "dcase2022", "dcase2023", "dcase2024", "dcase2025")
DOMAINS = ("source", "target")
EPS = sys.float_info.epsilon


def _hmean(values) -> float | None:
    v = np.maximum(np.asarray(values, dtype=np.float64), EPS)
    if v.size == 0:
        return None
    return float(v.size / np.sum(1.0 / v))


def _amean(values) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()) if v.size else None


def _auc(y: np.ndarray, s: np.ndarray, where: str, max_fpr: float | None = None) -> float:
    from sklearn.metrics import roc_auc_score

    if y.size == 0 or y.min() == y.max():
        have = "no clips" if y.size == 0 else ("only anomalous" if y[0] == 1 else "only normal")
        raise InputError(f"{where}: {have} clips; AUC needs both normal (0) and anomalous (1)")
    return float(roc_auc_score(y, s, max_fpr=max_fpr))


def _prf(y: np.ndarray, d: np.ndarray) -> dict:
    tp = int(np.sum((d == 1) & (y == 1)))
    fp = int(np.sum((d == 1) & (y == 0)))
    fn = int(np.sum((d == 0) & (y == 1)))
    p = tp / max(tp + fp, EPS)
    r = tp / max(tp + fn, EPS)
    return {"precision": p, "recall": r, "f1": 2.0 * p * r / max(p + r, EPS)}


def _text(values, name: str, n: int) -> np.ndarray:
    a = np.asarray([str(v) for v in values], dtype=object)
    if a.shape != (n,):
        raise ValueError(f"{name} must have one value per clip")
    return a


def dcase_results(machine_types: Sequence, sections: Sequence, domains: Sequence,
                  anomaly: Sequence, scores: Sequence, decisions: Sequence | None = None,
                  protocol: str = "dcase2023", max_fpr: float = 0.1) -> dict:
    """Per machine type and section AUC (source/target), pAUC, and P/R/F1 per domain when
    ``decisions`` (0/1 per clip) are given; per type and overall means; the official score.

    One row per clip: its machine type, section, domain ('source' or 'target'), anomaly label
    (0 normal, 1 anomalous) and score (higher = more anomalous). InputError on a bad domain,
    a label not 0/1, a non-finite score, or a set of clips without both classes.
    """
    t, sec, dom, y, s, d = _inputs(machine_types, sections, domains, anomaly, scores, decisions,
                                   protocol)
    n = s.size
    per_type: dict = {}
    # columns over all types, in evaluator order (type, then section)
    col: dict[str, list[float]] = {}

    def put(name: str, value: float) -> None:
        col.setdefault(name, []).append(value)

    for mt in sorted(set(t.tolist())):
        secs: dict = {}
        for sc in sorted(set(sec[t == mt].tolist())):
            m = (t == mt) & (sec == sc)
            secs[sc] = _section_row(m, y, s, dom, d, protocol, max_fpr, f"{mt} section {sc}",
                                    put)
        per_type[mt] = _type_means(secs, protocol)

    out: dict = {"protocol": protocol, "max_fpr": max_fpr, "count": int(n),
                 "normal": int((y == 0).sum()), "anomalous": int((y == 1).sum()),
                 "machine_types": per_type}
    out["arithmetic_mean"], out["harmonic_mean"], official = _overall(col, protocol,
                                                                      d is not None)
    out["official_score"] = _hmean(official)
    out["official_score_definition"] = (
        "harmonic mean of AUC and pAUC over all machine types, sections and domains"
        if protocol == "dcase2021" else
        "harmonic mean of AUC (source), AUC (target) and pAUC over all machine types and sections")
    return out


def _inputs(machine_types, sections, domains, anomaly, scores, decisions, protocol) -> tuple:
    """dcase_results' inputs checked: (types, sections, domains, labels, scores, decisions)."""
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    s = np.asarray(scores, dtype=np.float64)
    n = s.size
    if s.ndim != 1:
        raise ValueError("scores must be 1-D")
    if not np.isfinite(s).all():
        raise InputError("anomaly scores contain NaN or infinite values")
    y = np.asarray(anomaly)
    if y.shape != (n,) or not np.isin(y, (0, 1)).all():
        raise InputError("anomaly labels must be 0 (normal) or 1 (anomalous), one per clip")
    y = y.astype(np.int64)
    t = _text(machine_types, "machine_types", n)
    sec = _text(sections, "sections", n)
    dom = _text(domains, "domains", n)
    bad = sorted(set(dom.tolist()) - set(DOMAINS))
    if bad:
        raise InputError(f"domain must be 'source' or 'target' for {protocol}; found: "
                         f"{', '.join(repr(b) for b in bad[:5])}")
    d = None
    if decisions is not None:
        d = np.asarray(decisions)
        if d.shape != (n,) or not np.isin(d, (0, 1)).all():
            raise ValueError("decisions must be 0/1, one per clip")
        d = d.astype(np.int64)
    if n == 0:
        raise InputError("no clips to evaluate")
    return t, sec, dom, y, s, d


def _section_row(m, y, s, dom, d, protocol: str, max_fpr: float, where: str, put) -> dict:
    """The numbers of one section (rows ``m``); each also ``put`` into its overall column."""
    row: dict = {"count": int(m.sum())}
    if protocol == "dcase2021":
        for dm in DOMAINS:
            md = m & (dom == dm)
            row[f"auc_{dm}"] = _auc(y[md], s[md], f"{where} {dm}")
            row[f"pauc_{dm}"] = _auc(y[md], s[md], f"{where} {dm}", max_fpr)
            put("auc", row[f"auc_{dm}"])
            put("pauc", row[f"pauc_{dm}"])
    else:
        for dm in DOMAINS:
            # that domain's normals and every anomalous clip of the section
            sel = m & ((dom == dm) | (y == 1))
            row[f"auc_{dm}"] = _auc(y[sel], s[sel], f"{where} {dm}")
            put(f"auc_{dm}", row[f"auc_{dm}"])
        row["pauc"] = _auc(y[m], s[m], where, max_fpr)
        put("pauc", row["pauc"])
    if d is not None:
        for dm in DOMAINS:
            md = m & (dom == dm)
            for k, v in _prf(y[md], d[md]).items():
                row[f"{k}_{dm}"] = v
                put(f"{k}_{dm}", v)
    return row


def _type_means(secs: dict, protocol: str) -> dict:
    """One machine type: its sections, their means and the official score's rule on them."""
    keys = [k for k in next(iter(secs.values())) if k != "count"]
    rows = list(secs.values())
    both = [r["auc_source"] for r in rows] + [r["auc_target"] for r in rows]
    if protocol == "dcase2021":
        paucs = [r["pauc_source"] for r in rows] + [r["pauc_target"] for r in rows]
    else:
        paucs = [r["pauc"] for r in rows]
    return {
        "sections": secs,
        "arithmetic_mean": {**{k: _amean([r[k] for r in rows]) for k in keys},
                            "auc": _amean(both)},
        "harmonic_mean": {**{k: _hmean([r[k] for r in rows]) for k in keys},
                          "auc": _hmean(both)},
        # the official score's rule on this machine type's numbers alone
        "official_score": _hmean(both + paucs),
    }


def _overall(col: dict, protocol: str, decided: bool) -> tuple[dict, dict, list]:
    """(arithmetic means, harmonic means, the official score's values) over all types."""
    overall_a: dict = {}
    overall_h: dict = {}
    if protocol == "dcase2021":
        metric_cols = {"auc": col["auc"], "pauc": col["pauc"]}
        official = col["auc"] + col["pauc"]
    else:
        # the evaluator's rows: AUC = sources then targets; pAUC listed once per domain
        metric_cols = {"auc": col["auc_source"] + col["auc_target"],
                       "pauc": col["pauc"] + col["pauc"]}
        official = col["auc_source"] + col["auc_target"] + col["pauc"]
        overall_h["auc_source"] = _hmean(col["auc_source"])
        overall_h["auc_target"] = _hmean(col["auc_target"])
        overall_a["auc_source"] = _amean(col["auc_source"])
        overall_a["auc_target"] = _amean(col["auc_target"])
    if decided:
        for k in ("precision", "recall", "f1"):
            metric_cols[k] = col[f"{k}_source"] + col[f"{k}_target"]
    for k, v in metric_cols.items():
        overall_a[k] = _amean(v)
        overall_h[k] = _hmean(v)
    return overall_a, overall_h, official


# --------------------------------------------------------------------------- submission files

_SAFE_NAME = __import__("re").compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def submission_files(machine_types: Sequence, sections: Sequence, file_names: Sequence,
                     scores: Sequence, decisions: Sequence) -> dict[str, str]:
    """The challenge's submission files as {file name: text}: per machine type and section,
    ``anomaly_score_<type>_section_<sec>_test.csv`` (clip file name, score) and
    ``decision_result_<type>_section_<sec>_test.csv`` (clip file name, 1 anomalous / 0
    normal), no header, rows sorted by file name, as the DCASE 2021-2025 baselines write them
    and the evaluators read them (``csv.reader``, column 0 the name, column 1 the value)."""
    import csv
    import io

    s = np.asarray(scores, dtype=np.float64)
    n = s.size
    t = _text(machine_types, "machine_types", n)
    sec = _text(sections, "sections", n)
    names = _text(file_names, "file_names", n)
    d = np.asarray(decisions)
    if d.shape != (n,) or not np.isin(d, (0, 1)).all():
        raise ValueError("decisions must be 0/1, one per clip")
    if not np.isfinite(s).all():
        raise InputError("anomaly scores contain NaN or infinite values")
    for what, vals in (("machine type", t), ("section", sec)):
        bad = sorted(v for v in set(vals.tolist()) if not _SAFE_NAME.fullmatch(v))
        if bad:
            raise InputError(f"{what} {bad[0]!r} cannot be part of a submission file name "
                             "(letters, digits, '.', '_', '-' only)")
    out: dict[str, str] = {}
    for mt in sorted(set(t.tolist())):
        for sc in sorted(set(sec[t == mt].tolist())):
            idx = np.flatnonzero((t == mt) & (sec == sc))
            idx = idx[np.argsort(names[idx], kind="stable")]
            dup = [a for a, b in zip(names[idx][:-1], names[idx][1:]) if a == b]
            if dup:
                raise InputError(f"{mt} section {sc}: two clips share the file name {dup[0]!r}; "
                                 "the submission files identify clips by file name")
            for kind, col in (("anomaly_score", [repr(float(v)) for v in s[idx]]),
                              ("decision_result", [str(int(v)) for v in d[idx]])):
                buf = io.StringIO()
                w = csv.writer(buf, lineterminator="\n")
                w.writerows(zip(names[idx].tolist(), col))
                out[f"{kind}_{mt}_section_{sc}_test.csv"] = buf.getvalue()
    return out


# --------------------------------------------------------------------------- result table

_COLUMN_TITLES = {"auc_source": "AUC (source)", "auc_target": "AUC (target)", "pauc": "pAUC",
                  "pauc_source": "pAUC (source)", "pauc_target": "pAUC (target)",
                  "precision_source": "precision (source)",
                  "precision_target": "precision (target)",
                  "recall_source": "recall (source)", "recall_target": "recall (target)",
                  "f1_source": "F1 score (source)", "f1_target": "F1 score (target)"}


def result_table(results: dict):
    """The per-section result table of ``dcase_results`` (the evaluators' result.csv as a
    tidy table): a row per machine type and section, the type's arithmetic and harmonic
    means and official score, then the same over all machine types and sections. Columns:
    machine type, section, the metrics (titled as the evaluators title them), official score
    (on the official-score rows only). A pandas DataFrame; metrics absent stay empty."""
    import pandas as pd

    types = results["machine_types"]
    first = next(iter(next(iter(types.values()))["sections"].values()))
    cols = [k for k in _COLUMN_TITLES if k in first]
    rows: list[dict] = []
    every: list[dict] = []
    for mt, t in types.items():
        for sec, r in t["sections"].items():
            rows.append({"machine type": mt, "section": sec, **{c: r[c] for c in cols}})
            every.append(r)
        for name in ("arithmetic_mean", "harmonic_mean"):
            rows.append({"machine type": mt, "section": name.replace("_", " "),
                         **{c: t[name][c] for c in cols}})
        rows.append({"machine type": mt, "section": "official score",
                     "official score": t["official_score"]})
    for name, fn in (("arithmetic mean", _amean), ("harmonic mean", _hmean)):
        rows.append({"machine type": "all", "section": name,
                     **{c: fn([r[c] for r in every]) for c in cols}})
    rows.append({"machine type": "all", "section": "official score",
                 "official score": results["official_score"]})
    table = pd.DataFrame(rows, columns=["machine type", "section", *cols, "official score"])
    return table.rename(columns=_COLUMN_TITLES)
