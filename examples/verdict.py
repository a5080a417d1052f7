"""Print the demo's verdict: baseline vs improved, mean +- std over the K folds.

Reads <work>/reports/<arch>.summary.json (from `ae-eval --summarize`) and the training
history stored in each <work>/models/<arch>.fold<k>.safetensors.
Usage: python verdict.py --work work --archs "baseline improved" --folds 5 [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from aekit.modelfile import read_info


def mean_std(values: list[float], fraction: bool = False) -> str:
    """'mean ± std' (sample std): 3 decimals for fractions (AUC, accuracy), 4 digits otherwise."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.3f} ± {s:.3f}" if fraction else f"{m:.4g} ± {s:.2g}"


def summary_cell(summary: dict, key: str, fraction: bool = True) -> str:
    v = summary["metrics"].get(key)
    if v is None:
        return "-"
    return mean_std(v["values"], fraction)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--archs", required=True)
    ap.add_argument("--folds", type=int, required=True)
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    archs = args.archs.split()
    rows = []
    groups: set[str] = set()
    summaries = {}
    for arch in archs:
        summary = json.loads((args.work / "reports" / f"{arch}.summary.json").read_text())
        summaries[arch] = summary
        train_last, val_best = [], []
        for k in range(args.folds):
            info = read_info(args.work / "models" / f"{arch}.fold{k}.safetensors")
            hist = info.get("history", [])
            if hist:
                train_last.append(hist[-1].get("train_loss"))
                vals = [h.get("val_loss") for h in hist if h.get("val_loss") is not None]
                val_best.append(min(vals) if vals else None)
        groups |= {key.split(".")[2] for key in summary["metrics"]
                   if key.startswith("anomaly.groups.") and key.endswith(".auc")}
        rows.append((arch, mean_std(train_last), mean_std(val_best),
                     summary_cell(summary, "reconstruction.mse.mean", fraction=False),
                     summary_cell(summary, "anomaly.group_mean.auc_arithmetic"),
                     summary_cell(summary, "anomaly.group_mean.pauc_arithmetic"),
                     summary_cell(summary, "anomaly.auc"),
                     summary_cell(summary, "probe.accuracy")))
    header = ("model", "train loss (last)", "val loss (best)", "test MSE",
              "AUC (by type)", "pAUC (by type)", "AUC (pooled)", "probe acc (type)")
    print(f"aekit demo verdict: mean ± std over {args.folds} folds"
          + (f" ({args.note})" if args.note else ""))
    print("losses: MSE in dB²; AUC/pAUC: anomaly detection by reconstruction error on the locked "
          "test set, per machine type then averaged (DCASE Task 2; pAUC for FPR <= 0.1), and "
          "pooled over all types; probe: logistic regression on the latent code")
    print(_table([header, *rows]))
    if groups:
        print("\nAUC per machine type (test set):")
        grows = [("model", *sorted(groups))]
        for arch in archs:
            grows.append((arch, *(summary_cell(summaries[arch], f"anomaly.groups.{g}.auc")
                                  for g in sorted(groups))))
        print(_table(grows))


def _table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


if __name__ == "__main__":
    main()
