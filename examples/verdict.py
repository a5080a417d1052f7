"""Print the demo's verdict: every model's K-fold figures, one AUC/pAUC table per machine
type, what an AUC below 0.5 means where one occurs, and one line per figure saying what it is.

Reads, for each model (a row: an --arch, or an ensemble), <work>/reports/<model>.summary.json
(`ae-eval --summarize` of the folds), <work>/reports/<model>.fold<k>.json and .scores.csv
(the per-clip scores, with the labels' anomaly_kind column: AUC per anomaly kind) and, where
it exists, the training history stored in <work>/models/<model>.fold<k>.safetensors.
Usage: python verdict.py --work work --models "baseline improved frames" --folds 3 [--note T]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

#: AUC of a random ranking: below it a model ranks anomalous clips under normal ones.
CHANCE = 0.5
#: Marks a mean AUC below CHANCE in the tables.
BELOW = "*"

LEGEND = (
    ("epochs", "the epoch whose weights were kept (lowest validation loss) of the epochs run, "
               "range over the folds; a kept epoch at or next to the last one means the validation "
               "loss was still falling: more epochs might help"),
    ("train loss (last)", "MSE (dB²) between the features and their reconstruction on the "
                          "training clips, last epoch (frames: over 5-frame windows)"),
    ("val loss (best)", "the same MSE on the held-out fold's normal clips, at the kept epoch"),
    ("test MSE", "mean reconstruction MSE (dB²) of the test clips, normal and anomalous"),
    ("AUC", "the probability that an anomalous clip gets a higher anomaly score (column "
            "score) than a normal clip of the same machine type: 1 perfect, 0.5 chance, below "
            "0.5 anomalies ranked below normals (marked *)"),
    ("pAUC", "the official DCASE partial AUC: the same ranking restricted to false-positive "
             "rates <= 0.1, McClish-standardized (0.5 chance, 1 perfect)"),
    ("(by type)", "computed per machine type, then the arithmetic mean over the types"),
    ("AUC (pooled)", "one AUC over all types' test clips together (needs error levels that "
                     "compare across types)"),
    ("probe acc (type)", "accuracy of a logistic regression predicting the machine type from "
                         "the latent code (chance: 1 / types); what the code holds, not "
                         "anomaly detection"),
    ("score", "the anomaly score the AUCs rank by (ae-eval's default --score auto, the model's "
              "choice): mse the reconstruction MSE (dB²); mahalanobis the Mahalanobis distance "
              "of the clip's reconstruction-error vector to its training clips' (the frame "
              "models); ensemble_z(...) the members' mean z-score"),
    ("bearing ... rattle", "AUC of the anomalous clips of one kind against all normal test "
                           "clips of the type (n: anomalous clips of that kind per fold)"),
    ("a ± b", "mean and sample standard deviation over the K folds: each fold's model trains "
              "on the other folds' normal clips; the test clips are the same"),
)

MEANING = ("it reconstructs them better than the normal sound, so its anomaly score "
           "ranks them as more normal: to this model the anomaly makes the clip easier to "
           "reconstruct (quieter or simpler than the normal sound, e.g. one steady component "
           "that dominates after the clip is brought to the same loudness). This is a failure "
           "on that type, not a detector with a flipped sign: reversing the score would be "
           "tuned on the test labels")


@dataclass
class Row:
    """One model's figures: the K-fold summary's metrics, per-fold AUCs per (type, kind)."""

    name: str
    metrics: dict
    folds: int
    best_epochs: list[int] = field(default_factory=list)
    epochs_run: list[int] = field(default_factory=list)
    train_last: list[float] = field(default_factory=list)
    val_best: list[float] = field(default_factory=list)
    #: (type, kind) -> one AUC per fold; counts: (type, kind) -> anomalous clips per fold
    kind_auc: dict = field(default_factory=dict)
    kind_count: dict = field(default_factory=dict)
    #: the anomaly score of the folds' reports (report anomaly.score), in fold order, unique
    scores: list[str] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        v = self.metrics.get(key)
        return [x for x in (v["values"] if v else []) if x is not None and math.isfinite(x)]


def mean_std(values: list[float], fraction: bool = True, mark: bool = False) -> str:
    """'mean ± std' (sample std): 3 decimals for fractions (AUC, accuracy), 4 digits otherwise;
    with ``mark``, a trailing * when the mean is below chance."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    text = f"{m:.3f} ± {s:.3f}" if fraction else f"{m:.4g} ± {s:.2g}"
    return text + (BELOW if mark and m < CHANCE else "")


def _roc_auc(labels: list[int], scores: list[float]) -> float | None:
    """Mann-Whitney AUC (ties count one half); None unless both classes are present."""
    pos = [s for y, s in zip(labels, scores) if y == 1]
    neg = [s for y, s in zip(labels, scores) if y == 0]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def kind_aucs(report: dict, scores_csv: Path) -> tuple[dict, dict]:
    """AUC per (machine type, anomaly kind): that kind's anomalous clips against all normal
    clips of the type, on the score the report ranked by; ({}, {}) without the kind column."""
    if not scores_csv.exists():
        return {}, {}
    anomaly = report.get("anomaly") or {}
    column = (report.get("ensemble") or {}).get("column") or anomaly.get("score", "mse")
    with scores_csv.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"machine_type", "anomaly", "anomaly_kind", column} <= rows[0].keys():
        return {}, {}
    by_type: dict[str, list[dict]] = {}
    for r in rows:
        by_type.setdefault(r["machine_type"], []).append(r)
    aucs, counts = {}, {}
    for mtype, rs in by_type.items():
        normal = [float(r[column]) for r in rs if r["anomaly"] == "0"]
        for kind in sorted({r["anomaly_kind"] for r in rs if r["anomaly"] == "1"}):
            bad = [float(r[column]) for r in rs if r["anomaly"] == "1" and r["anomaly_kind"] == kind]
            aucs[(mtype, kind)] = _roc_auc([0] * len(normal) + [1] * len(bad), normal + bad)
            counts[(mtype, kind)] = len(bad)
    return aucs, counts


def load_row(work: Path, name: str, folds: int) -> Row:
    summary = json.loads((work / "reports" / f"{name}.summary.json").read_text())
    row = Row(name, summary["metrics"], folds)
    for k in range(folds):
        model = work / "models" / f"{name}.fold{k}.safetensors"
        if model.exists():  # an ensemble has no model file of its own
            from aekit.models.modelfile import read_info

            info = read_info(model)
            hist = info.get("history", [])
            if hist:
                row.train_last.append(hist[-1].get("train_loss"))
                vals = [h["val_loss"] for h in hist if h.get("val_loss") is not None]
                if vals:
                    row.val_best.append(min(vals))
                row.epochs_run.append(len(hist))
                if info.get("best_epoch") is not None:
                    row.best_epochs.append(int(info["best_epoch"]))
        report_path = work / "reports" / f"{name}.fold{k}.json"
        if report_path.exists():
            report = json.loads(report_path.read_text())
            name_ = (report.get("anomaly") or {}).get("score")
            if name_ and name_ not in row.scores:
                row.scores.append(name_)
            aucs, counts = kind_aucs(report, work / "reports" / f"{name}.fold{k}.scores.csv")
            for key, auc in aucs.items():
                row.kind_auc.setdefault(key, []).append(auc)
                row.kind_count[key] = counts[key]
    return row


def _epochs(row: Row) -> str:
    if not row.best_epochs or not row.epochs_run:
        return "-"
    lo, hi = min(row.best_epochs), max(row.best_epochs)
    ran = max(row.epochs_run)
    return (f"{lo}" if lo == hi else f"{lo}-{hi}") + f" of {ran}"


def machine_types(rows: list[Row]) -> list[str]:
    types: set[str] = set()
    for r in rows:
        types |= {k.split(".")[2] for k in r.metrics
                  if k.startswith("anomaly.groups.") and k.endswith(".auc")}
    return sorted(types)


def findings(rows: list[Row], types: list[str]) -> list[str]:
    """The AUCs below chance, each with what it means: one sentence per model and machine
    type with a mean AUC below 0.5, per model with a pooled AUC below 0.5, and per model the
    anomaly kinds it ranks below the normal clips (mean AUC over the folds below 0.5)."""
    out = []
    for r in rows:
        for t in types:
            vals = r.values(f"anomaly.groups.{t}.auc")
            if vals and statistics.fmean(vals) < CHANCE:
                below = sum(v < CHANCE for v in vals)
                out.append(f"{r.name} ranks {t}'s anomalous clips BELOW its normal ones (AUC "
                           f"{mean_std(vals)}, below 0.5 in {below} of {len(vals)} folds): "
                           + MEANING + ".")
        pooled = r.values("anomaly.auc")
        if pooled and statistics.fmean(pooled) < CHANCE:
            out.append(f"{r.name}'s pooled AUC is below 0.5 ({mean_std(pooled)}): over all "
                       f"types together its anomalous clips score lower than the normal "
                       f"ones; the pooled figure also mixes the types' error levels, so the "
                       f"per-type AUCs are the ones that say what it detects.")
        kinds = []
        for (t, kind), aucs in sorted(r.kind_auc.items()):
            vals = [v for v in aucs if v is not None]
            if vals and statistics.fmean(vals) < CHANCE:
                kinds.append((t, kind, vals))
        if kinds:
            listed = ", ".join(f"{kind} on {t} ({statistics.fmean(v):.3f})"
                               for t, kind, v in kinds)
            out.append(f"{r.name} ranks these anomaly kinds below the normal clips of their "
                       f"type (mean AUC over the folds), so it does not detect them there: the "
                       f"anomaly makes those clips easier for it to reconstruct: {listed}.")
    return out


def best_lines(rows: list[Row], types: list[str]) -> list[str]:
    """The model with the highest mean AUC over the types, and per type."""
    def mean_of(r: Row, key: str) -> float:
        v = r.values(key)
        return statistics.fmean(v) if v else -math.inf

    lines = []
    scored = [r for r in rows if r.values("anomaly.group_mean.auc_arithmetic")]
    if scored:
        best = max(scored, key=lambda r: mean_of(r, "anomaly.group_mean.auc_arithmetic"))
        lines.append(f"Best model: {best.name}, mean AUC over the machine types "
                     f"{mean_std(best.values('anomaly.group_mean.auc_arithmetic'))}.")
    per = []
    for t in types:
        cands = [r for r in rows if r.values(f"anomaly.groups.{t}.auc")]
        if cands:
            b = max(cands, key=lambda r: mean_of(r, f"anomaly.groups.{t}.auc"))
            per.append(f"{t} {b.name} ({mean_of(b, f'anomaly.groups.{t}.auc'):.3f})")
    if per:
        lines.append("Best per type (AUC): " + ", ".join(per) + ".")
    return lines


def render(rows: list[Row], folds: int, note: str = "") -> str:
    types = machine_types(rows)
    out = [f"aekit demo verdict: mean ± std over {folds} folds" + (f" ({note})" if note else ""),
           ""]
    header = ("model", "epochs", "train loss (last)", "val loss (best)", "test MSE",
              "AUC (by type)", "pAUC (by type)", "AUC (pooled)", "probe acc (type)", "score")
    table = [header]
    for r in rows:
        table.append((r.name, _epochs(r), mean_std(r.train_last, False),
                      mean_std(r.val_best, False),
                      mean_std(r.values("reconstruction.mse.mean"), False),
                      mean_std(r.values("anomaly.group_mean.auc_arithmetic"), mark=True),
                      mean_std(r.values("anomaly.group_mean.pauc_arithmetic")),
                      mean_std(r.values("anomaly.auc"), mark=True),
                      mean_std(r.values("probe.accuracy")),
                      "/".join(r.scores) or "-"))
    out += ["All machine types:", _table(table)]
    for t in types:
        kinds = sorted({k for r in rows for (tt, k) in r.kind_auc if tt == t})
        ref = next((r for r in rows if r.values(f"anomaly.groups.{t}.count")), None)
        size = ""
        if ref is not None:
            n = ref.values(f"anomaly.groups.{t}.normal")
            a = ref.values(f"anomaly.groups.{t}.anomalous")
            if n and a:
                size = f" ({int(n[0])} normal and {int(a[0])} anomalous test clips)"
        counts = {k: next((r.kind_count[(t, k)] for r in rows if (t, k) in r.kind_count), 0)
                  for k in kinds}
        table = [("model", "AUC", "pAUC", *(f"{k} (n={counts[k]})" for k in kinds))]
        for r in rows:
            table.append((r.name, mean_std(r.values(f"anomaly.groups.{t}.auc"), mark=True),
                          mean_std(r.values(f"anomaly.groups.{t}.pauc")),
                          *(mean_std([v for v in r.kind_auc.get((t, k), []) if v is not None],
                                     mark=True) for k in kinds)))
        out += ["", f"{t}{size}:", _table(table)]
    found = findings(rows, types)
    out += ["", *best_lines(rows, types)]
    if found:
        out += ["", "Below chance (*):", *(f"- {s}" for s in found)]
    else:
        out += ["", "No AUC below 0.5: every model ranks every machine type's and every "
                    "anomaly kind's clips above the normal ones on average."]
    out += ["", "What the figures are:", *(f"- {name}: {text}" for name, text in LEGEND)]
    return "\n".join(out) + "\n"


def _table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--models", "--archs", dest="models", required=True,
                    help="Row names: <work>/reports/<name>.summary.json each.")
    ap.add_argument("--folds", type=int, required=True)
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    rows = [load_row(args.work, name, args.folds) for name in args.models.split()]
    print(render(rows, args.folds, args.note), end="")


if __name__ == "__main__":
    main()
