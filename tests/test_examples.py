"""The example pipeline (examples/Makefile) and the SLURM scripts, run locally at small sizes."""

import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SMALL = ["FOLDS=2", "EPOCHS=2", "FRAMES_EPOCHS=2", "CLIPS=5", "IDS=2", "DURATION=1",
         "HIDDEN=32,16", "LATENT=8", "ARCHS=improved frames"]


def make(args, env, cwd=EXAMPLES, check=True):
    p = subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=900)
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


@pytest.mark.slow
def test_example_makefile_pipeline(tmp_path, env_bin):
    w = tmp_path / "work"
    p = make(["demo", f"W={w}", *SMALL], env_bin)  # -j2 by default (JOBS)
    assert "aekit demo verdict" in p.stdout
    # One table for all types, then one per machine type with AUC and pAUC of every model.
    for mtype in ("fan", "pump", "slider", "valve"):
        assert f"\n{mtype} (" in p.stdout, mtype
    tables = p.stdout.split("\n\n")
    fan = next(t for t in tables if t.startswith("fan ("))
    head, rule, *rows = fan.splitlines()[1:]
    assert head.split()[:3] == ["model", "AUC", "pAUC"]
    assert [r.split()[0] for r in rows] == ["improved", "frames"]
    assert "What the figures are:" in p.stdout and "- pAUC: the official DCASE" in p.stdout
    # Progress: one line per step on stderr.
    assert "] train frames fold 1 of 2" in p.stderr and "] verdict" in p.stderr
    for f in ("features.h5", "splits.csv", "labels.csv", "categories.json",
              "models/improved.fold1.safetensors", "latents/frames.fold0.h5",
              "reports/frames.summary.json", "reports/frames.fold1.scores.csv",
              "plots/improved.fold0/roc.png"):
        assert (w / f).stat().st_size > 0, f
    assert (w / "verdict.txt").read_text() in p.stdout
    # A second run does nothing.
    assert make(["-q", "all", f"W={w}", *SMALL], env_bin, check=False).returncode == 0
    # Touching the splits re-runs training and what follows, not featurization.
    time.sleep(1.1)
    (w / "splits.csv").touch()
    plan = make(["-n", "all", f"W={w}", *SMALL], env_bin).stdout
    assert "ae-train" in plan and "ae-eval" in plan
    assert "ae-featurize" not in plan and "ae-synth" not in plan and "ae-split" not in plan


@pytest.mark.slow
def test_slurm_featurize_array_and_merge(tmp_path, env_bin):
    data = tmp_path / "data"
    subprocess.run(["ae-synth", str(data), "--ids-per-type", "1", "--clips-per-machine", "3",
                    "--duration", "1", "-q"], env=env_bin, check=True)
    env = dict(env_bin, DATA=str(data), OUT=str(tmp_path / "shards"),
               FEATURES=str(tmp_path / "merged.h5"), FEATURIZE_OPTS="--num-samples 16000 -q")
    for i in range(3):
        subprocess.run(["bash", str(EXAMPLES / "slurm" / "featurize-array.sbatch")], check=True,
                       env=dict(env, SLURM_ARRAY_TASK_ID=str(i), SLURM_ARRAY_TASK_COUNT="3"))
    subprocess.run(["bash", str(EXAMPLES / "slurm" / "merge.sbatch")], env=env, check=True)
    single = tmp_path / "single.h5"
    subprocess.run(["ae-featurize", str(data), "--num-samples", "16000", "-q", "-o", str(single)],
                   env=env_bin, check=True)
    with h5py.File(single) as a, h5py.File(tmp_path / "merged.h5") as b:
        assert a["ids"][()].tolist() == b["ids"][()].tolist()
        np.testing.assert_array_equal(a["features"][()], b["features"][()])


def _train_env(tmp_path, env_bin, epochs):
    from aekit.data.store import FeatureWriter, PER_CLIP

    feats = tmp_path / "f.h5"
    rng = np.random.default_rng(0)
    params = {"sample_rate": 16000, "num_samples": 2560, "n_fft": 64, "hop_length": 256,
              "n_mels": 4, "top_db": 80.0, "f_min": 0.0, "f_max": 8000.0, "window": "hann",
              "power": 2.0, "mel_scale": "htk", "channels": 2, "channel_policy": "first"}
    w = FeatureWriter(feats, params, (2, 4, 11))
    n = 60
    w.append(rng.normal(-40, 10, (n, 2, 4, 11)).astype(np.float32), [f"c{i}" for i in range(n)],
             [f"c{i}.wav" for i in range(n)], {k: np.zeros(n) for k in PER_CLIP})
    w.close()
    model = tmp_path / "m.safetensors"
    return model, dict(env_bin, FEATURES=str(feats), MODEL=str(model), NPROC="1",
                       TRAIN_OPTS=f"--hidden 16,8 --latent 4 --epochs {epochs} --batch-size 4 -q")


@pytest.mark.slow
def test_slurm_train_script_checkpoints_on_usr1_and_resumes(tmp_path, env_bin):
    model, env = _train_env(tmp_path, env_bin, epochs=400)
    script = EXAMPLES / "slurm" / "train.sbatch"
    proc = subprocess.Popen(["bash", str(script)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = Path(str(model).removesuffix(".safetensors") + ".log.csv")
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) > 2):
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before the preemption signal"
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "preemption signal" in err
    assert (Path(str(model) + ".ckpt") / "last.pt").exists()
    assert not model.exists() or len(log.read_text().splitlines()) < 401
    # The requeued job: same script, finds the checkpoint, resumes to the end.
    p = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    from aekit.models.modelfile import read_info

    assert len(read_info(model)["history"]) == 400


@pytest.mark.slow
def test_dcase_example_on_tiny_synthetic_data(tmp_path, env_bin):
    """examples/dcase without DATA: ae-synth --layout dcase2020, one model per type and arch,
    the DCASE-shaped table; its AUCs are scikit-learn's on the per-clip scores, its means the
    arithmetic and harmonic means of the rows above."""
    from statistics import harmonic_mean, mean

    import pandas as pd
    from sklearn.metrics import roc_auc_score

    w = tmp_path / "work"
    tiny = "--hidden 16 --latent 4 --epochs 2 --batch-size 8"
    p = make([f"W={w}", "TYPES=fan pump", "IDS=2", "CLIPS=8", "DURATION=1", "FOLDS=2", "JOBS=1",
              "ARCHS=frames improved", "FEATURE_OPTS=--preset dcase2020 --num-samples 16000",
              f"OPTS_frames={tiny}", f"OPTS_improved={tiny}"], env_bin, cwd=EXAMPLES / "dcase")
    assert p.stdout.endswith((w / "table.md").read_text())
    rows = [r.strip("|").split("|") for r in (w / "table.md").read_text().splitlines()[2:]]
    rows = [[c.strip().strip("*") for c in r] for r in rows]
    assert [r[:2] for r in rows] == [["fan", "00"], ["fan", "01"], ["fan", "mean"],
                                     ["pump", "00"], ["pump", "01"], ["pump", "mean"],
                                     ["all types", "arithmetic mean"],
                                     ["all types", "harmonic mean"]]
    labels = pd.read_csv(w / "labels.csv", dtype={"machine_id": str})
    assert set(pd.read_csv(w / "splits.csv").merge(labels, on="id").query("split_x == 'test'")
               ["split_y"]) == {"test"}  # the data set's folders decide the test set
    # a column group per architecture and scorer (SCORES: mse mahalanobis; the whole-clip
    # models: mse), ae-table
    assert (w / "table.md").read_text().splitlines()[0] == (
        "| machine type | id | frames-mse AUC | frames-mse pAUC | frames-mahalanobis AUC | "
        "frames-mahalanobis pAUC | improved-mse AUC | improved-mse pAUC |")
    for j, (arch, score) in enumerate([("frames", "mse"), ("frames", "mahalanobis"),
                                       ("improved", "mse")]):
        col = 2 + 2 * j
        for k, mtype in enumerate(["fan", "pump"]):
            s = pd.read_csv(w / "reports" / f"{arch}-{score}.{mtype}.scores.csv",
                            dtype={"machine": str})
            assert set(s["machine_type"]) == {mtype} and set(s["split"]) == {"test"}
            for i, mid in enumerate(["00", "01"]):
                g = s[s["machine"] == f"{mtype}_id_{mid}"]
                assert float(rows[3 * k + i][col]) == pytest.approx(
                    roc_auc_score(g["anomaly"], g[score]), abs=6e-4)
            assert float(rows[3 * k + 2][col]) == pytest.approx(
                mean(float(rows[3 * k + i][col]) for i in range(2)), abs=1.1e-3)
        per_type = [float(rows[r][col]) for r in (2, 5)]
        assert float(rows[6][col]) == pytest.approx(mean(per_type), abs=1.1e-3)
        assert float(rows[7][col]) == pytest.approx(harmonic_mean(per_type), abs=1.1e-3)
    # A second run has nothing left to do but show the table.
    again = make(["-n", f"W={w}", "TYPES=fan pump", "ARCHS=frames improved"], env_bin,
                 cwd=EXAMPLES / "dcase")
    assert again.stdout.strip() == f"cat {w}/table.md", again.stdout
