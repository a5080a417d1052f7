"""examples/dcase/Makefile: an architecture or scorer added to an existing work folder is
built (only the models are secondary files: a bare .SECONDARY made make skip the missing
reports of a new ARCHS/SCORES entry because their inputs were older than the table)."""

import os
import subprocess
import time
from pathlib import Path

DCASE = Path(__file__).resolve().parent.parent / "examples" / "dcase"
TYPES = ("fan", "pump")


def _plan(w: Path, archs: str) -> str:
    r = subprocess.run(["make", "-n", "-C", str(DCASE), f"W={w}", f"ARCHS={archs}",
                        "TYPES=" + " ".join(TYPES), "SCORES=mse"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_new_arch_in_an_existing_work_folder_is_built(tmp_path):
    w = tmp_path / "w"
    old = time.time() - 3600
    files = ["audio/labels.csv", "features.h5", "labels.csv", "splits.csv"]
    files += [f"models/frames.{t}.safetensors" for t in TYPES]
    files += [f"reports/frames-mse.{t}.json" for t in TYPES]
    for i, name in enumerate(files + ["table.md"]):  # each newer than the one before
        p = w / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
        os.utime(p, (old + i, old + i))
    assert "ae-train" not in _plan(w, "frames") and "ae-table" not in _plan(w, "frames")
    plan = _plan(w, "frames improved")
    for t in TYPES:
        assert f"{w}/models/improved.{t}.safetensors" in plan
        assert f"-o {w}/reports/improved-mse.{t}.json" in plan
    assert "frames.fan.safetensors -o" not in plan  # the existing models are kept
    assert plan.count("ae-train ") == len(TYPES) and "ae-table " in plan
