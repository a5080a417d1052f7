"""The DCASE-shaped results table of examples/dcase: reports/ARCH.TYPE.json from ae-eval
(--anomaly-column anomaly --group-by machine) -> one Markdown table per metric set:
a row per machine id and per machine type (its arithmetic mean over ids, as the DCASE
tables give), then the arithmetic and harmonic means over the machine types."""

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


def main(paths: list[str]) -> None:
    reports: dict[tuple[str, str], dict] = {}
    for p in paths:
        arch, mtype = Path(p).stem.split(".", 1)
        reports[(arch, mtype)] = json.loads(Path(p).read_text())["anomaly"]
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
