"""Issue 20 part 2: the demo's verdict (examples/verdict.py) on crafted reports, and the demo
Makefile's plan (frames per fold, EXTRA_ARCHS, ENSEMBLES)."""

import csv
import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TYPES = ("fan", "valve")


def _verdict():
    spec = importlib.util.spec_from_file_location("demo_verdict", EXAMPLES / "verdict.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


def _m(values):
    return {"values": list(values), "mean": statistics.fmean(values)}


def write_row(work: Path, name: str, auc: dict, pauc: dict, pooled, scores=None):
    """reports/NAME.summary.json as ae-eval --summarize writes it (the keys the verdict reads),
    and per fold reports/NAME.foldK.json and, given scores (fold -> rows), .scores.csv."""
    folds = len(pooled)
    metrics = {"anomaly.auc": _m(pooled),
               "anomaly.group_mean.auc_arithmetic":
                   _m([statistics.fmean(auc[t][k] for t in auc) for k in range(folds)]),
               "anomaly.group_mean.pauc_arithmetic":
                   _m([statistics.fmean(pauc[t][k] for t in pauc) for k in range(folds)]),
               "reconstruction.mse.mean": _m([10.0 + k for k in range(folds)]),
               "probe.accuracy": _m([1.0] * folds)}
    for t in auc:
        metrics[f"anomaly.groups.{t}.auc"] = _m(auc[t])
        metrics[f"anomaly.groups.{t}.pauc"] = _m(pauc[t])
        metrics[f"anomaly.groups.{t}.normal"] = _m([6.0] * folds)
        metrics[f"anomaly.groups.{t}.anomalous"] = _m([4.0] * folds)
        metrics[f"anomaly.groups.{t}.count"] = _m([10.0] * folds)
    (work / "reports").mkdir(parents=True, exist_ok=True)
    (work / "reports" / f"{name}.summary.json").write_text(json.dumps({"metrics": metrics}))
    for k in range(folds):
        (work / "reports" / f"{name}.fold{k}.json").write_text(
            json.dumps({"anomaly": {"score": "mse"}}))
        if scores is not None:
            with open(work / "reports" / f"{name}.fold{k}.scores.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", "split", "mse", "mae", "machine_type", "anomaly",
                            "anomaly_kind"])
                for i, (t, y, kind, s) in enumerate(scores[k]):
                    w.writerow([f"c{i}", "test", s, s, t, y, kind])


def test_verdict_says_when_a_model_ranks_anomalies_below_normals(tmp_path):
    v = _verdict()
    write_row(tmp_path, "baseline", {"fan": [0.7, 0.8, 0.9], "valve": [0.3, 0.4, 0.6]},
              {"fan": [0.6, 0.6, 0.6], "valve": [0.5, 0.5, 0.5]}, [0.6, 0.6, 0.7])
    write_row(tmp_path, "frames", {"fan": [0.9, 0.9, 0.9], "valve": [0.8, 0.85, 0.9]},
              {"fan": [0.8, 0.8, 0.8], "valve": [0.7, 0.7, 0.7]}, [0.8, 0.8, 0.8])
    rows = [v.load_row(tmp_path, n, 3) for n in ("baseline", "frames")]
    text = v.render(rows, 3)
    lines = text.splitlines()
    # The valve table: AUC and pAUC per model, the one below 0.5 marked.
    i = lines.index("valve (6 normal and 4 anomalous test clips):")
    assert lines[i + 1].split() == ["model", "AUC", "pAUC"]
    assert lines[i + 3].split() == ["baseline", "0.433", "±", "0.153*", "0.500", "±", "0.000"]
    assert lines[i + 4].split() == ["frames", "0.850", "±", "0.050", "0.700", "±", "0.000"]
    assert ("- baseline ranks valve's anomalous clips BELOW its normal ones (AUC 0.433 ± 0.153, "
            "below 0.5 in 2 of 3 folds): " + v.MEANING + ".") in lines
    assert "quieter or simpler than the normal sound" in v.MEANING
    assert sum("ranks" in s and "BELOW" in s for s in lines) == 1  # frames and fan: none
    assert "Best model: frames, mean AUC over the machine types 0.875 ± 0.025." in lines
    assert "Best per type (AUC): fan frames (0.900), valve frames (0.850)." in lines
    # The all-types table: group-mean AUC 0.617 (folds 0.5, 0.6, 0.75) is not below chance.
    header = next(x for x in lines if x.startswith("model") and "probe acc (type)" in x)
    assert "AUC (by type)" in header and "pAUC (by type)" in header and "epochs" in header
    base = next(x for x in lines if x.startswith("baseline ") and "1.000" in x)
    assert base.split()[:2] == ["baseline", "-"]  # no model files: no epochs, no losses
    assert "0.617 ± 0.126" in base and "*" not in base
    # Every figure is explained in one line.
    legend = lines[lines.index("What the figures are:") + 1:]
    assert [x.split(":")[0] for x in legend] == [
        "- epochs", "- train loss (last)", "- val loss (best)", "- test MSE", "- AUC", "- pAUC",
        "- (by type)", "- AUC (pooled)", "- probe acc (type)", "- score",
        "- bearing ... rattle", "- a ± b"]
    assert header.split()[-1] == "score" and base.split()[-1] == "mse"  # the reports' score


def test_verdict_without_auc_below_chance_says_so(tmp_path):
    v = _verdict()
    write_row(tmp_path, "frames", {"fan": [0.5, 0.6], "valve": [0.7, 0.8]},
              {"fan": [0.5, 0.5], "valve": [0.6, 0.6]}, [0.5, 0.55])
    text = v.render([v.load_row(tmp_path, "frames", 2)], 2)
    assert "No AUC below 0.5: every model ranks" in text
    assert "BELOW" not in text and "*" not in text.split("What the figures are:")[0]


def test_verdict_pooled_auc_below_chance_is_a_finding(tmp_path):
    v = _verdict()
    write_row(tmp_path, "improved", {"fan": [0.6, 0.6], "valve": [0.7, 0.7]},
              {"fan": [0.5, 0.5], "valve": [0.6, 0.6]}, [0.45, 0.47])
    text = v.render([v.load_row(tmp_path, "improved", 2)], 2)
    assert "- improved's pooled AUC is below 0.5 (0.460 ± 0.014): " in text
    assert "0.460 ± 0.014*" in text and "No AUC below 0.5" not in text


def test_verdict_auc_per_anomaly_kind_is_scikit_learns(tmp_path):
    """Per type and kind: that kind's anomalous clips against all normal clips of the type,
    on the report's score column, ties counting one half; mean over folds; below 0.5 named."""
    v = _verdict()
    scores = {
        0: [("valve", 0, "none", 1.0), ("valve", 0, "none", 2.0), ("valve", 0, "none", 3.0),
            ("valve", 1, "drift", 0.5), ("valve", 1, "drift", 2.0),
            ("valve", 1, "rattle", 9.0), ("fan", 0, "none", 1.0), ("fan", 1, "bearing", 5.0)],
        1: [("valve", 0, "none", 1.0), ("valve", 0, "none", 4.0), ("valve", 0, "none", 3.0),
            ("valve", 1, "drift", 3.0), ("valve", 1, "drift", 0.1),
            ("valve", 1, "rattle", 2.0), ("fan", 0, "none", 2.0), ("fan", 1, "bearing", 1.0)],
    }
    write_row(tmp_path, "frames", {"fan": [0.6, 0.6], "valve": [0.7, 0.7]},
              {"fan": [0.5, 0.5], "valve": [0.6, 0.6]}, [0.6, 0.6], scores)
    row = v.load_row(tmp_path, "frames", 2)
    for (t, kind), aucs in row.kind_auc.items():
        want = []
        for k in (0, 1):
            rs = [r for r in scores[k] if r[0] == t and (r[1] == 0 or r[2] == kind)]
            want.append(roc_auc_score([r[1] for r in rs], [r[3] for r in rs]))
        assert aucs == pytest.approx(want, abs=1e-12), (t, kind)
    assert set(row.kind_auc) == {("valve", "drift"), ("valve", "rattle"), ("fan", "bearing")}
    assert row.kind_auc[("valve", "drift")] == pytest.approx([1.5 / 6, 1.5 / 6])
    assert row.kind_auc[("fan", "bearing")] == [1.0, 0.0]
    text = v.render([row], 2)
    assert ("- frames ranks these anomaly kinds below the normal clips of their type (mean AUC "
            "over the folds), so it does not detect them there: the anomaly makes those clips "
            "easier for it to reconstruct: drift on valve (0.250).") in text  # fan bearing: 0.5, chance
    valve = text.splitlines()[text.splitlines().index(
        "valve (6 normal and 4 anomalous test clips):") + 1]
    assert valve.split() == ["model", "AUC", "pAUC", "drift", "(n=2)", "rattle", "(n=1)"]


def test_verdict_command_line(tmp_path):
    write_row(tmp_path, "baseline", {"fan": [0.4, 0.45], "valve": [0.6, 0.6]},
              {"fan": [0.5, 0.5], "valve": [0.5, 0.5]}, [0.5, 0.5])
    p = subprocess.run([sys.executable, str(EXAMPLES / "verdict.py"), "--work", str(tmp_path),
                        "--models", "baseline", "--folds", "2", "--note", "N"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("aekit demo verdict: mean ± std over 2 folds (N)\n")
    assert "- baseline ranks fan's anomalous clips BELOW its normal ones (AUC 0.425 ± 0.035, " \
           "below 0.5 in 2 of 2 folds)" in p.stdout


def _plan(*args, check=True):
    p = subprocess.run(["make", "--no-print-directory", "-n", "demo", "W=/tmp/aekit-plan-w",
                        *args], cwd=EXAMPLES, capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_demo_plan_trains_frames_per_fold_on_dcase_layout_data():
    plan = _plan("FOLDS=2").stdout
    assert "--layout dcase2020" in plan and "--split-column split" in plan
    for arch in ("baseline", "improved", "frames"):
        for k in (0, 1):
            assert f"--arch {arch} " in plan
            assert f"-o /tmp/aekit-plan-w/models/{arch}.fold{k}.safetensors" in plan
            assert f"/tmp/aekit-plan-w/reports/{arch}.fold{k}.json" in plan
    assert "--arch frames \\\n    --epochs 20 --seed 0" in plan  # the whole-clip widths not
    assert '--models "baseline improved frames"' in plan


def test_demo_plan_extra_archs_and_ensembles():
    plan = _plan("FOLDS=2", "ARCHS=frames", "EXTRA_ARCHS=interp", "OPTS_interp=--epochs 7",
                 "ENSEMBLES=vote", "ENSEMBLE_vote=frames interp").stdout
    assert "--arch interp \\\n    --epochs 7 --seed 0" in plan
    for k in (0, 1):
        assert (f"ae-eval /tmp/aekit-plan-w/models/frames.fold{k}.safetensors "
                f"/tmp/aekit-plan-w/features.h5 --ensemble "
                f"/tmp/aekit-plan-w/models/interp.fold{k}.safetensors --splits ") in plan
        assert f"-o /tmp/aekit-plan-w/reports/vote.fold{k}.json" in plan
    assert "ae-eval --summarize /tmp/aekit-plan-w/reports/vote.fold0.json " \
           "/tmp/aekit-plan-w/reports/vote.fold1.json" in plan
    assert '--models "frames interp vote"' in plan
    bad = _plan("ARCHS=frames", "ENSEMBLES=vote", "ENSEMBLE_vote=frames nope", check=False)
    assert bad.returncode == 2
    assert "ENSEMBLE_vote must name archs of 'frames', got 'frames nope'" in bad.stderr


def test_verdict_kind_auc_of_an_ensemble_row_uses_its_z_score_column(tmp_path):
    """An ensemble's report (ae-eval --ensemble) ranks by column ensemble_z, not mse."""
    v = _verdict()
    write_row(tmp_path, "vote", {"valve": [0.7]}, {"valve": [0.6]}, [0.6])
    (tmp_path / "reports" / "vote.fold0.json").write_text(json.dumps(
        {"anomaly": {"score": "ensemble_z(mse)"}, "ensemble": {"column": "ensemble_z"}}))
    with open(tmp_path / "reports" / "vote.fold0.scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "mse", "ensemble_z", "machine_type", "anomaly", "anomaly_kind"])
        w.writerows([["a", 1.0, 2.0, "valve", 0, "none"], ["b", 2.0, 1.0, "valve", 1, "drift"]])
    row = v.load_row(tmp_path, "vote", 1)
    assert row.kind_auc == {("valve", "drift"): [0.0]}  # by mse it would be 1.0
    first = next(x for x in v.render([row], 1).splitlines() if x.startswith("vote "))
    assert first.split()[:4] == ["vote", "-", "-", "-"]  # no model file: no epochs, no losses
