"""ae-eval: reconstruction scores, anomaly AUC/pAUC, linear probe, plots, --summarize, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from aekit.data import store
from aekit.evaluate import evaluation
from aekit.cmds.eval import cli
from aekit.system.fileio import file_sha256
from aekit.models.modelfile import load_model, save_model

from conftest import (BIN, C0, C1, MAGMA_HIGH, MAGMA_LOW, PARAMS, SHAPE, invoke, one_error_line,
                      pixels_of, png_rgb, write_features, write_model)

N = 36


def make_dataset(d: Path, params=PARAMS, seed=0):
    """Features where every 4th clip is 'anomalous' (3x the deviation), a model, splits, labels."""
    rng = np.random.default_rng(seed)
    anomaly = (np.arange(N) % 4 == 0).astype(int)
    x = (-40 + rng.normal(0, 4, (N, *SHAPE)) * np.where(anomaly, 3.0, 1.0)[:, None, None, None])
    x = x.astype(np.float32)
    ids, _ = write_features(d / "f.h5", params=params, x=x)
    hist = [{"epoch": e, "train_loss": 100.0 / e, "val_loss": 110.0 / e, "lr": 1e-3}
            for e in range(1, 6)]
    write_model(d / "m.safetensors", x, seed=seed, history=hist)  # its features: PARAMS
    # 6 test rows (clip000..clip005), then 3 folds over the rest
    split = ["test" if i < 6 else "train" for i in range(N)]
    fold = ["" if i < 6 else (i - 6) % 3 for i in range(N)]
    pd.DataFrame({"id": ids, "split": split, "fold": fold}).to_csv(d / "splits.csv", index=False)
    machine = np.array(["fan", "pump", "valve"])[np.arange(N) % 3]
    kind = np.where(anomaly == 1, "loud", "quiet")
    pd.DataFrame({"id": ids, "anomaly": anomaly, "machine": machine, "kind": kind}).to_csv(
        d / "labels.csv", index=False)
    return x, ids, anomaly


@pytest.fixture()
def data(tmp_path):
    x, ids, anomaly = make_dataset(tmp_path)
    return tmp_path, x, ids, anomaly


def run(*args):
    return invoke(cli, args, prog_name="ae-eval")


def mse_by_hand(d: Path, x: np.ndarray) -> np.ndarray:
    """Each clip's reconstruction MSE (dB^2), computed here from the model's forward pass."""
    recon, _ = load_model(d / "m.safetensors").reconstruct(torch.from_numpy(x))
    return (recon - torch.from_numpy(x)).flatten(1).square().mean(1).numpy()


def test_report_and_scores_csv(data):
    d, x, ids, _ = data
    r = run(d / "m.safetensors", d / "f.h5", "--scores", d / "s.csv")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["format"] == "aekit-eval"
    assert rep["model"]["sha256"] == file_sha256(d / "m.safetensors")
    assert rep["features"]["sha256"] == file_sha256(d / "f.h5")
    rec = rep["reconstruction"]
    assert rec["count"] == N and "per_split" not in rec
    assert set(rec["mse"]) >= {"count", "mean", "median", "p5", "p25", "p75", "p95", "min", "max"}
    df = pd.read_csv(d / "s.csv")
    assert list(df.columns) == ["id", "split", "mse", "mae"]
    assert df["id"].tolist() == ids and set(df["split"]) == {"all"}
    lm = load_model(d / "m.safetensors")
    recon, _ = lm.reconstruct(torch.from_numpy(x))
    diff = (recon - torch.from_numpy(x)).flatten(1)
    np.testing.assert_allclose(df["mse"], diff.square().mean(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(df["mae"], diff.abs().mean(1).numpy(), rtol=1e-5)
    assert rec["mse"]["mean"] == pytest.approx(df["mse"].mean(), rel=1e-5)
    assert rec["mse"]["median"] == pytest.approx(df["mse"].median(), rel=1e-5)
    again = run(d / "m.safetensors", d / "f.h5", "--scores", d / "s.csv", "--batch-size", "256")
    rep2 = json.loads(again.stdout)
    rep2["command"] = rep["command"]
    assert rep2 == rep  # deterministic


def test_per_split_summary(data):
    d, *_ = data
    r = run(d / "m.safetensors", d / "f.h5", "--splits", d / "splits.csv", "--fold", "1")
    assert r.exit_code == 0, r.stderr
    per = json.loads(r.stdout)["reconstruction"]["per_split"]
    assert {k: v["count"] for k, v in per.items()} == {"test": 6, "train": 20, "val": 10}
    r = run(d / "m.safetensors", d / "f.h5", "--splits", d / "splits.csv", "--split", "val",
            "--fold", "1")
    rep = json.loads(r.stdout)
    assert rep["reconstruction"]["count"] == 10 and "per_split" not in rep["reconstruction"]
    assert rep["selection"] == {"splits": str(d / "splits.csv"), "split": "val", "fold": 1,
                                "splits_sha256": file_sha256(d / "splits.csv")}


def test_anomaly_auc_matches_sklearn(data):
    d, x, _, anomaly = data
    r = run(d / "m.safetensors", d / "f.h5", "--labels", d / "labels.csv", "--anomaly-column",
            "anomaly", "--group-by", "machine", "--scores", d / "s.csv", "-o", d / "r.json")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    a = json.loads((d / "r.json").read_text())["anomaly"]
    df = pd.read_csv(d / "s.csv")
    assert list(df.columns) == ["id", "split", "mse", "mae", "anomaly", "machine", "kind"]
    assert a["auc"] == pytest.approx(roc_auc_score(df["anomaly"], df["mse"]))
    assert a["auc"] == roc_auc_score(anomaly, mse_by_hand(d, x))  # from scores computed here
    assert a["max_fpr"] == 0.1 and "dcase" in a["pauc_definition"]
    mcclish = roc_auc_score(df["anomaly"], df["mse"], max_fpr=0.1)
    assert a["pauc"] == pytest.approx(mcclish)  # the official DCASE pAUC (issue 19)
    # pauc_raw = raw partial area / p; scikit-learn's McClish value is that raw area
    # standardized to 0.5 + 0.5 (A - p^2/2) / (p - p^2/2): undo it.
    p = 0.1
    raw = p * p / 2 + (2 * mcclish - 1) * (p - p * p / 2)
    assert a["pauc_raw"] == pytest.approx(raw / p)
    assert set(a["groups"]) == {"fan", "pump", "valve"}
    for g, v in a["groups"].items():
        m = df["machine"] == g
        assert v["auc"] == pytest.approx(roc_auc_score(df.loc[m, "anomaly"], df.loc[m, "mse"]))
    aucs = [v["auc"] for v in a["groups"].values()]
    assert a["group_mean"]["auc_arithmetic"] == pytest.approx(np.mean(aucs))
    assert a["group_mean"]["auc_harmonic"] == pytest.approx(len(aucs) / sum(1 / v for v in aucs))
    r = run(d / "m.safetensors", d / "f.h5", "--labels", d / "labels.csv", "--anomaly-column",
            "anomaly", "--score", "mae")
    auc_mae = json.loads(r.stdout)["anomaly"]["auc"]
    assert auc_mae == pytest.approx(roc_auc_score(df["anomaly"], df["mae"]))


def test_where_restricts_the_evaluated_rows(data):
    # A per-machine-type verdict without a hand-made splits file per type.
    d, *_ = data
    full = run(d / "m.safetensors", d / "f.h5", "--labels", d / "labels.csv", "--splits",
               d / "splits.csv", "--split", "train", "--scores", d / "all.csv")
    assert full.exit_code == 0, full.stderr
    r = run(d / "m.safetensors", d / "f.h5", "--labels", d / "labels.csv", "--splits",
            d / "splits.csv", "--split", "train", "--where", "machine == 'fan'",
            "--anomaly-column", "anomaly", "--scores", d / "fan.csv", "-o", d / "fan.json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads((d / "fan.json").read_text())
    every = pd.read_csv(d / "all.csv")
    want = every[every["machine"] == "fan"]
    fan = pd.read_csv(d / "fan.csv")
    assert fan["id"].tolist() == want["id"].tolist() and len(fan) == 10
    np.testing.assert_allclose(fan["mse"], want["mse"])
    assert rep["reconstruction"]["count"] == 10
    assert rep["selection"]["where"] == "machine == 'fan'"
    assert rep["anomaly"]["auc"] == pytest.approx(roc_auc_score(fan["anomaly"], fan["mse"]))
    assert "where" not in json.loads(full.stdout)["selection"]


@pytest.mark.parametrize("args,msg", [
    (["--where", "anomaly == 1"], "--where: needs labels"),
    (["--labels", "LABELS", "--where", "machine == 'drill'"], "--where: no selected row matches"),
    (["--labels", "LABELS", "--where", "open('x')"], "function calls not allowed"),
    (["--labels", "LABELS", "--where", "nope == 1"], "unknown column"),
])
def test_where_refusals(data, args, msg):
    d, *_ = data
    args = [d / "labels.csv" if a == "LABELS" else a for a in args]
    r = run(d / "m.safetensors", d / "f.h5", *args)
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert msg in one_error_line(r)
    r = run("a.json", "b.json", "--summarize", "--where", "anomaly == 1")
    assert r.exit_code == 2 and "--where cannot be used with --summarize" in r.stderr


def test_linear_probe(data):
    d, *_ = data
    args = [d / "m.safetensors", d / "f.h5", "--splits", d / "splits.csv", "--split", "val",
            "--fold", "0", "--labels", d / "labels.csv", "--probe-column", "kind"]
    r1, r2 = run(*args), run(*args)
    assert r1.exit_code == 0, r1.stderr
    p1, p2 = json.loads(r1.stdout)["probe"], json.loads(r2.stdout)["probe"]
    assert p1 == p2  # deterministic
    assert p1["train_count"] == 20 and p1["count"] == 10
    assert p1["classes"] == ["loud", "quiet"]
    # Oracle: scikit-learn on the codes of the fold's rows, picked from the CSVs here.
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sp, lab = pd.read_csv(d / "splits.csv"), pd.read_csv(d / "labels.csv")
    tr = ((sp["split"] == "train") & (sp["fold"] != 0)).to_numpy()
    va = ((sp["split"] == "train") & (sp["fold"] == 0)).to_numpy()
    x = store.FeatureFile(d / "f.h5").read(None)
    z = load_model(d / "m.safetensors").encode(torch.from_numpy(x)).numpy().astype(np.float64)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=42))
    pred = clf.fit(z[tr], lab["kind"][tr]).predict(z[va])
    assert p1["accuracy"] == pytest.approx(accuracy_score(lab["kind"][va], pred))
    assert p1["macro_f1"] == pytest.approx(f1_score(lab["kind"][va], pred, average="macro"))


def test_plots(data):
    d, *_ = data
    r = run(d / "m.safetensors", d / "f.h5", "--labels", d / "labels.csv", "--anomaly-column",
            "anomaly", "--group-by", "machine", "--plots", d / "plots")
    assert r.exit_code == 0, r.stderr
    plots = json.loads(r.stdout)["plots"]
    names = {"loss.png", "spectrograms_best.png", "spectrograms_worst.png", "scores.png", "roc.png"}
    assert {Path(p).name for p in plots.values()} == names
    # decoded: the size of each figure (tests/test_plots.py) and what it must show
    rgb = {name: png_rgb(d / "plots" / name, size) for name, size in (
        ("loss.png", (704, 440)), ("scores.png", (704, 440)), ("roc.png", (616, 550)),
        ("spectrograms_best.png", (1100, 946)), ("spectrograms_worst.png", (1100, 946)))}
    assert pixels_of(rgb["loss.png"], C0) > 200 and pixels_of(rgb["loss.png"], C1) > 200
    for name in ("spectrograms_best.png", "spectrograms_worst.png"):  # 2 clips x 2 channels
        assert pixels_of(rgb[name], MAGMA_LOW, tol=1) > 1000
        assert pixels_of(rgb[name], MAGMA_HIGH, tol=1) > 1000
    for colour in (C0, C1):  # anomaly 0 and 1, overlaid
        assert pixels_of(rgb["scores.png"], colour, tol=2, alpha=0.55) > 2000
    assert pixels_of(rgb["roc.png"], C0) > 500
    # an ae-train --log CSV replaces the model's history; no labels: no ROC
    (d / "log.csv").write_text("epoch,train_loss,val_loss,lr\n1,9.0,,0.001\n2,4.0,,0.001\n")
    r = run(d / "m.safetensors", d / "f.h5", "--plots", d / "p2", "--log", d / "log.csv")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (d / "p2").iterdir()) == sorted(names - {"roc.png"})


def test_summarize_folds(data):
    d, *_ = data
    reports = []
    for k in range(3):
        out = d / f"fold{k}.json"
        r = run(d / "m.safetensors", d / "f.h5", "--splits", d / "splits.csv", "--split", "val",
                "--fold", k, "--labels", d / "labels.csv", "--anomaly-column", "anomaly", "-o", out)
        assert r.exit_code == 0, r.stderr
        reports.append(json.loads(out.read_text()))
    r = run("--summarize", *(d / f"fold{k}.json" for k in range(3)))
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["format"] == "aekit-eval-summary" and s["count"] == 3 and s["folds"] == [0, 1, 2]
    aucs = [rep["anomaly"]["auc"] for rep in reports]
    assert s["metrics"]["anomaly.auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert s["metrics"]["anomaly.auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
    mses = [rep["reconstruction"]["mse"]["mean"] for rep in reports]
    assert s["metrics"]["reconstruction.mse.mean"]["values"] == pytest.approx(mses)
    r = run("--summarize", "--table", "-o", d / "summary.json",
            *(d / f"fold{k}.json" for k in range(3)))
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0].split() == ["metric", "mean", "std", "min", "max", "n"]
    assert "anomaly.auc" in r.stdout
    assert json.loads((d / "summary.json").read_text())["count"] == 3
    # refusals
    r = run("--summarize", "--labels", d / "labels.csv", d / "fold0.json")
    assert r.exit_code == 2 and "--labels cannot be used with --summarize" in one_error_line(r)
    r = run("--summarize", d / "labels.csv")
    assert r.exit_code == 2 and "not valid JSON" in one_error_line(r)
    (d / "other.json").write_text('{"a": 1}')
    r = run("--summarize", d / "other.json")
    assert r.exit_code == 2 and "not an ae-eval report" in one_error_line(r)
    r = run(d / "fold0.json", d / "fold1.json", d / "fold2.json")
    assert r.exit_code == 2 and "--summarize" in one_error_line(r)


def _labels_where(lab, d, **columns):
    lab.assign(**columns).to_csv(d / "l.csv", index=False)
    return ["--labels", d / "l.csv"]


ANOMALY = ["--anomaly-column", "anomaly"]
VAL0 = ["--split", "val", "--fold", "0"]

# case: (labels and arguments after MODEL FEATURES, given the labels table and the folder;
#        the message expected in the one error line)
REFUSALS = {
    "missing_ids": (lambda lab, d: [*_labels_where(lab.iloc[:-2], d), *ANOMALY],
                    "labels missing for 2 id(s)"),
    "not_binary": (lambda lab, d: [*_labels_where(lab, d, anomaly=lab["anomaly"] * 2), *ANOMALY],
                   "must hold 0 (normal) or 1"),
    "single_class": (lambda lab, d: [*_labels_where(lab, d, anomaly=0), *ANOMALY],
                     "AUC needs both"),
    "empty_cells": (lambda lab, d: [*_labels_where(lab, d, anomaly=lab["anomaly"].astype(object)
                                                   .where(lab.index > 0, "")), *ANOMALY],
                    "is empty for 1 id(s): clip000"),
    "group_one_class": (lambda lab, d: [*_labels_where(lab, d, anomaly=np.where(
                        lab["machine"] == "valve", 0, lab["anomaly"])), *ANOMALY,
                        "--group-by", "machine"],
                        "group 'valve' of 'machine' has only normal (0) clips"),
    "no_column": (lambda lab, d: ["--labels", d / "labels.csv", "--anomaly-column", "nope"],
                  "column 'nope' not found"),
    "group_needs_anomaly": (lambda lab, d: ["--labels", d / "labels.csv", "--group-by", "machine"],
                            "--group-by: needs an anomaly column"),
    "column_needs_labels": (lambda lab, d: ANOMALY, "--anomaly-column: needs a label file"),
    "probe_needs_splits": (lambda lab, d: ["--labels", d / "labels.csv", "--probe-column", "kind"],
                           "--probe-column: needs a split file"),
    "probe_one_class": (lambda lab, d: ["--splits", d / "splits.csv", *VAL0,
                                        *_labels_where(lab, d, kind="same"),
                                        "--probe-column", "kind"],
                        "at least two classes"),
    "stdout_twice": (lambda lab, d: ["--scores", "-"], "would both go to stdout"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals(data, case):
    d, *_ = data
    make_args, msg = REFUSALS[case]
    r = run(d / "m.safetensors", d / "f.h5", *make_args(pd.read_csv(d / "labels.csv"), d))
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert msg in one_error_line(r)
    assert r.stdout == ""


def test_refuses_other_feature_params(tmp_path):
    make_dataset(tmp_path, params={**PARAMS, "n_fft": 512})  # the model keeps PARAMS
    r = run(tmp_path / "m.safetensors", tmp_path / "f.h5")
    assert r.exit_code == 2
    line = one_error_line(r)
    assert "n_fft=512 vs 1024" in line and "f.h5" in line and "m.safetensors" in line


def test_installed_executable_in_a_pipe(data):
    d, x, _, anomaly = data
    exe = str(BIN / "ae-eval")
    reader = "import json, sys; print(json.load(sys.stdin)['anomaly']['auc'])"
    p = subprocess.run(f"'{exe}' m.safetensors f.h5 --labels labels.csv --anomaly-column anomaly "
                       f"| '{sys.executable}' -c \"{reader}\"",
                       shell=True, cwd=d, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert float(p.stdout) == roc_auc_score(anomaly, mse_by_hand(d, x))  # scores computed here
    assert "ae-eval: INFO: Done: 36 clips" in p.stderr
    p = subprocess.run([exe, "m.safetensors", "f.h5", "--splits", "splits.csv", "--split", "test",
                        "--labels", "labels.csv", "--anomaly-column", "nope"], cwd=d,
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("ae-eval: error: anomaly column 'nope' not found")


def test_library_entry_point(data):
    """The notebook path: aekit.evaluate.evaluation.evaluate_file gives the same report as the command."""
    d, *_ = data
    opts = evaluation.EvalOptions(labels_path=str(d / "labels.csv"), anomaly_column="anomaly")
    report, per_clip = evaluation.evaluate_file(d / "m.safetensors", d / "f.h5", opts)
    r = run(d / "m.safetensors", d / "f.h5", "--labels", d / "labels.csv", *ANOMALY)
    assert report["anomaly"] == json.loads(r.stdout)["anomaly"]
    assert len(per_clip) == N and {"id", "split", "mse", "mae", "anomaly"} <= set(per_clip.columns)


def test_fold_defaults_to_the_models_and_a_different_fold_is_refused(data):
    d, x, ids, anomaly = data
    lm = load_model(d / "m.safetensors")
    save_model(d / "m1.safetensors", lm.model, lm.normalizer, PARAMS, history=lm.history, fold=1)
    r = run(d / "m1.safetensors", d / "f.h5", "--splits", d / "splits.csv", "--split", "val")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["selection"]["fold"] == 1
    assert report["reconstruction"]["count"] == sum(1 for i in range(6, len(ids)) if (i - 6) % 3 == 1)
    r = run(d / "m1.safetensors", d / "f.h5", "--splits", d / "splits.csv", "--split", "val",
            "--fold", "2")
    assert r.exit_code == 2
    assert "--fold: the model was trained with fold 1" in one_error_line(r)
