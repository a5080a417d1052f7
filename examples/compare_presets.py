"""Print the loss per epoch of `make presets`: baseline vs improved, tutorial vs default.

Usage: python compare_presets.py presets/baseline.tutorial.log.csv ...
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

EPOCHS = (1, 5, 10, 15, 20)


def main(paths: list[str]) -> None:
    rows = [("model", "preset", *(f"epoch {e}" for e in EPOCHS), "min (epoch)")]
    for path in paths:
        arch, preset = Path(path).name.split(".")[:2]
        with open(path, newline="") as fh:
            hist = {int(r["epoch"]): float(r["train_loss"]) for r in csv.DictReader(fh)}
        best = min(hist, key=hist.get)
        rows.append((arch, preset, *(f"{hist[e]:.0f}" if e in hist else "-" for e in EPOCHS),
                     f"{hist[best]:.0f} ({best})"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("training loss (MSE, dB²) per epoch")
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main(sys.argv[1:])
