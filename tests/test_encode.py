"""ae-encode and aekit.evaluate.inference: latent shapes and ids, provenance, determinism, refusals."""

from __future__ import annotations

import subprocess

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from aekit.evaluate import inference
from aekit.data import latents, store
from aekit.cmds.encode import cli
from aekit.system.fileio import file_sha256
from aekit.models.modelfile import load_model
from conftest import BIN, PARAMS, invoke, noise_clips, write_features, write_model


def write_splits(path, ids, n_test=6, k=3):
    rows = [(i, "test", "") if j < n_test else (i, "train", (j - n_test) % k)
            for j, i in enumerate(ids)]
    pd.DataFrame(rows, columns=["id", "split", "fold"]).to_csv(path, index=False)


@pytest.fixture()
def data(tmp_path):
    ids, x = write_features(tmp_path / "f.h5", x=noise_clips(30))
    write_model(tmp_path / "m.safetensors", x)
    write_splits(tmp_path / "splits.csv", ids)
    return tmp_path, x, ids


def run(args):
    return invoke(cli, args, prog_name="ae-encode")


def read_latents(path):
    with h5py.File(path, "r") as f:
        return f["latents"][()], [s.decode() for s in f["ids"][()]], dict(f.attrs)


def test_latents_shape_ids_and_provenance(data):
    d, x, ids = data
    r = run([d / "m.safetensors", d / "f.h5", "-o", d / "z.h5"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    z, zids, attrs = read_latents(d / "z.h5")
    assert z.shape == (30, 8) and z.dtype == np.float32
    assert zids == ids
    assert attrs["format"] == "aekit-latents"
    assert attrs["model_sha256"] == file_sha256(d / "m.safetensors")
    assert attrs["features_sha256"] == file_sha256(d / "f.h5")
    assert attrs["command"]  # the command line is recorded
    # the codes are the model's encoder output
    lm = load_model(d / "m.safetensors")
    with torch.no_grad():
        ref = lm.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-5)
    lf = latents.LatentsFile(d / "z.h5")
    assert lf.ids == ids and lf.attrs["latent"] == 8


def test_selection_by_split_and_fold(data):
    d, x, ids = data
    r = run([d / "m.safetensors", d / "f.h5", "-o", d / "t.h5", "--splits", d / "splits.csv",
             "--split", "test"])
    assert r.exit_code == 0, r.stderr
    z, zids, attrs = read_latents(d / "t.h5")
    assert zids == ids[:6] and z.shape == (6, 8)
    assert attrs["split"] == "test" and attrs["splits_sha256"] == file_sha256(d / "splits.csv")
    r = run([d / "m.safetensors", d / "f.h5", "-o", d / "tr.h5", "--splits", d / "splits.csv",
             "--split", "train", "--fold", "1"])
    assert r.exit_code == 0, r.stderr
    _, zids, attrs = read_latents(d / "tr.h5")
    assert zids == [i for j, i in enumerate(ids) if j >= 6 and (j - 6) % 3 != 1]
    assert attrs["fold"] == 1


def test_where_restricts_rows_by_label(data):
    d, x, ids = data
    pd.DataFrame({"id": ids, "anomaly": [int(j % 3 == 0) for j in range(len(ids))],
                  "machine": ["fan", "pump"] * (len(ids) // 2)}).to_csv(d / "labels.csv",
                                                                     index=False)
    r = run([d / "m.safetensors", d / "f.h5", "-o", d / "w.h5", "--splits", d / "splits.csv",
             "--split", "test", "--labels", d / "labels.csv",
             "--where", "anomaly == 0 and machine in ['fan']"])
    assert r.exit_code == 0, r.stderr
    z, zids, _ = read_latents(d / "w.h5")
    want = [i for j, i in enumerate(ids[:6]) if j % 3 != 0 and j % 2 == 0]
    assert zids == want and z.shape == (len(want), 8)
    r = run([d / "m.safetensors", d / "f.h5", "-o", d / "n.h5", "--where", "anomaly == 0"])
    assert r.exit_code == 2 and "--where: needs labels" in r.stderr
    assert not (d / "n.h5").exists()


def test_deterministic_and_batch_independent(data):
    d, _, _ = data
    for name, bs in (("a.h5", "256"), ("b.h5", "256"), ("c.h5", "7")):
        r = run([d / "m.safetensors", d / "f.h5", "-o", d / name, "--batch-size", bs, "-q"])
        assert r.exit_code == 0 and r.stderr == ""
    a, b, c = (read_latents(d / n)[0] for n in ("a.h5", "b.h5", "c.h5"))
    assert np.array_equal(a, b)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_blocks_bound_memory(data, monkeypatch):
    d, _, _ = data
    seen = []
    orig = store.FeatureFile.read

    def spy(self, indices=None):
        seen.append(len(indices) if indices is not None else len(self))
        return orig(self, indices)

    monkeypatch.setattr(store.FeatureFile, "read", spy)
    lm = load_model(d / "m.safetensors")
    with store.FeatureFile(d / "f.h5") as ff:
        n = inference.write_latents(d / "z.h5", lm, ff, batch_size=4)
    assert n == 30 and max(seen) <= 4


def test_refuses_other_feature_params(tmp_path):
    _, x = write_features(tmp_path / "f.h5", x=noise_clips(30))
    write_model(tmp_path / "m.safetensors", x, params={**PARAMS, "top_db": 60.0})
    r = run([tmp_path / "m.safetensors", tmp_path / "f.h5", "-o", tmp_path / "z.h5"])
    assert r.exit_code == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("ae-encode: error: feature parameters differ: top_db=80.0 vs 60.0")
    assert "f.h5" in line and "m.safetensors" in line
    assert not (tmp_path / "z.h5").exists()


def test_refuses_other_clip_shape(tmp_path):
    _, x = write_features(tmp_path / "m.h5", x=noise_clips(30))
    write_model(tmp_path / "m.safetensors", x)
    write_features(tmp_path / "f.h5", params={**PARAMS, "num_samples": 2816},
                   x=noise_clips(30, (2, 4, 12)))
    r = run([tmp_path / "m.safetensors", tmp_path / "f.h5", "-o", tmp_path / "z.h5"])
    assert r.exit_code == 2
    assert "clip shape differs: 2x4x12 vs 2x4x10" in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if "error" in ln]) == 1


def test_missing_inputs_and_usage(data):
    d, _, _ = data
    r = run([d / "nope.safetensors", d / "f.h5", "-o", d / "z.h5"])
    assert r.exit_code == 2 and "no such" in r.stderr
    r = run([d / "m.safetensors", d / "nope.h5", "-o", d / "z.h5"])
    assert r.exit_code == 2 and "no such file" in r.stderr
    r = run([d / "m.safetensors", d / "f.h5"])  # -o is required
    assert r.exit_code == 2
    r = run([d / "m.safetensors", d / "f.h5", "-o", d / "z.h5", "--splits", d / "splits.csv",
             "--split", "val"])
    assert r.exit_code == 2 and "--fold" in r.stderr


def test_no_rows_selected(data):
    d, _, ids = data
    (d / "train_only.csv").write_text("id,split,fold\n" + "".join(f"{i},train,0\n" for i in ids))
    r = run([d / "m.safetensors", d / "f.h5", "-o", d / "z.h5", "--splits", d / "train_only.csv",
             "--split", "test"])
    assert r.exit_code == 2 and "no rows selected" in r.stderr
    assert not (d / "z.h5").exists()


def test_installed_executable(data):
    d, _, ids = data
    exe = BIN / "ae-encode"
    p = subprocess.run([str(exe), "m.safetensors", "f.h5", "-o", "z.h5", "--splits", "splits.csv",
                        "--split", "test"], cwd=d, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and "Done: 6 of 30" in p.stderr
    z, zids, attrs = read_latents(d / "z.h5")
    assert zids == ids[:6]
    assert attrs["command"].startswith("ae-encode m.safetensors f.h5 -o z.h5")
