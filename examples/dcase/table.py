"""The DCASE-shaped results table of examples/dcase: reports/ARCH.TYPE.json from ae-eval
(--anomaly-column anomaly --group-by machine) -> one Markdown table per metric set:
a row per machine id and per machine type (its arithmetic mean over ids, as the DCASE
tables give), then the arithmetic and harmonic means over the machine types. The pAUC is
the official one (scikit-learn's roc_auc_score(max_fpr=0.1), per machine id).

Reports made with ae-eval --protocol dcase2021..dcase2025 (a "dcase" section) give the
2021-2025 table instead: a row per machine type and section with AUC (source), AUC
(target) and pAUC (2021: AUC and pAUC per domain), the type's arithmetic mean, the
arithmetic and harmonic means over all types, sections and domains, and the official
score, all as ae-eval computed them (aekit.dcase)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import harmonic_mean, mean


def fmt(v) -> str:
    """A metric, or n/a where ae-eval could not compute it (a group with one class only)."""
    return "n/a" if v is None else f"{v:.3f}"


def means(fn, values) -> str:
    values = [v for v in values if v is not None]
    return fmt(fn(values)) if values else "n/a"


def main_dcase(reports: dict[tuple[str, str], dict]) -> None:
    """The DCASE 2021-2025 table from the reports' "dcase" sections (one type per report)."""
    archs = list(dict.fromkeys(a for a, _ in reports))
    types = list(dict.fromkeys(t for _, t in reports))
    first = next(iter(reports.values()))
    cols = (["auc_source", "pauc_source", "auc_target", "pauc_target"]
            if first["protocol"] == "dcase2021" else ["auc_source", "auc_target", "pauc"])
    title = {"auc_source": "AUC (source)", "auc_target": "AUC (target)", "pauc": "pAUC",
             "pauc_source": "pAUC (source)", "pauc_target": "pAUC (target)"}
    print("| machine type | section | " + " | ".join(f"{a} {title[c]}" for a in archs
                                                      for c in cols) + " |")
    print("|---|---|" + "---|" * (len(archs) * len(cols)))
    values: dict[str, list[float]] = {a: [] for a in archs}
    for t in types:
        secs = reports[(archs[0], t)]["machine_types"][t]["sections"]
        for sec in secs:
            cells = []
            for a in archs:
                row = reports[(a, t)]["machine_types"][t]["sections"][sec]
                cells += [fmt(row[c]) for c in cols]
                values[a] += [row[c] for c in cols]
            print(f"| {t} | {sec} | " + " | ".join(cells) + " |")
        cells = [f"**{fmt(reports[(a, t)]['machine_types'][t]['arithmetic_mean'][c])}**"
                 for a in archs for c in cols]
        print(f"| **{t}** | mean | " + " | ".join(cells) + " |")
    for name, fn in (("arithmetic mean", mean), ("harmonic mean", harmonic_mean)):
        cells = []
        for a in archs:
            per = {c: [] for c in cols}
            for t in types:
                for row in reports[(a, t)]["machine_types"][t]["sections"].values():
                    for c in cols:
                        per[c].append(row[c])
            cells += [means(fn, per[c]) for c in cols]
        print(f"| **all types** | {name} | " + " | ".join(cells) + " |")
    # the official score: harmonic mean of every section's numbers over all machine types
    cells = []
    for a in archs:
        cells += [means(harmonic_mean, values[a])] + [""] * (len(cols) - 1)
    print("| **all types** | official score | " + " | ".join(cells) + " |")


def main(paths: list[str]) -> None:
    reports: dict[tuple[str, str], dict] = {}
    full: dict[tuple[str, str], dict] = {}
    for p in paths:
        arch, mtype = Path(p).stem.split(".", 1)
        full[(arch, mtype)] = json.loads(Path(p).read_text())
        reports[(arch, mtype)] = full[(arch, mtype)].get("anomaly")
    if full and all("dcase" in r for r in full.values()):
        main_dcase({k: r["dcase"] for k, r in full.items()})
        return
    archs = list(dict.fromkeys(a for a, _ in reports))
    types = list(dict.fromkeys(t for _, t in reports))
    head = "| machine type | id | " + " | ".join(f"{a} AUC | {a} pAUC" for a in archs) + " |"
    print(head)
    print("|---|---|" + "---|---|" * len(archs))
    per_type: dict[str, dict[str, tuple[float, float]]] = {a: {} for a in archs}
    for t in types:
        ids = sorted(reports[(archs[0], t)]["groups"])
        for m in ids:
            cells = [f"{fmt(reports[(a, t)]['groups'][m]['auc'])} | "
                     f"{fmt(reports[(a, t)]['groups'][m]['pauc'])}" for a in archs]
            print(f"| {t} | {m.rsplit('_', 1)[-1]} | " + " | ".join(cells) + " |")
        cells = []
        for a in archs:
            g = reports[(a, t)]["group_mean"]
            per_type[a][t] = (g["auc_arithmetic"], g["pauc_arithmetic"])
            cells.append(f"**{fmt(g['auc_arithmetic'])}** | **{fmt(g['pauc_arithmetic'])}**")
        print(f"| **{t}** | mean | " + " | ".join(cells) + " |")
    for name, fn in (("arithmetic mean", mean), ("harmonic mean", harmonic_mean)):
        cells = [f"{means(fn, [v[0] for v in per_type[a].values()])} | "
                 f"{means(fn, [v[1] for v in per_type[a].values()])}" for a in archs]
        print(f"| **all types** | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
