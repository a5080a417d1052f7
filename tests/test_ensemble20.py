"""Issue 20, part 1: ensembles. ae-train stores its training clips' scores (mean, std, per-clip
values, ids hash) per scorer; ae-eval / ae-score --ensemble MODEL combine members' scores as
the mean of their z-scores; the ensemble threshold is the 90th percentile of the training
clips' combined z-scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import (N_TONES as N, TINY_FRAMES as TINY, cli_of as cmd, invoke, one_error_line,
                      read_csv)

@pytest.fixture(scope="module")
def setup(tmp_path_factory, tones, tone_frames_model):
    """The session's tones and their features (conftest.tones), labels (every 4th clip
    anomalous), three frames models of seeds 1-3 trained on the normal clips, and one trained
    on all clips (other clips: conftest.tone_frames_model)."""
    root = tmp_path_factory.mktemp("ens")
    audio, feats, ids, x = tones["audio"], tones["feats"], tones["ids"], tones["x"].copy()
    labels = root / "labels.csv"
    labels.write_text("id,anomaly\n" + "".join(f"{i},{int(k % 4 == 3)}\n"
                                               for k, i in enumerate(ids)))
    models = []
    for seed in (1, 2, 3):
        m = root / f"s{seed}.safetensors"
        r = invoke(cmd("train"), [feats, "-o", m, "--labels", labels, "--where", "anomaly == 0",
                                  "--seed", seed, *TINY])
        assert r.exit_code == 0, r.stderr
        models.append(m)
    other = tone_frames_model
    return {"root": root, "audio": audio, "feats": feats, "ids": ids, "x": x,
            "labels": labels, "models": models, "other": other}


def rewrite_info(src, dst, edit):
    """Copy a model file with its metadata edited by ``edit(info)`` and the metadata hash
    recomputed (as a buggy or old writer would have written it)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from aekit.models.modelfile import META_HASH, metadata_sha256

    with safe_open(str(src), framework="pt") as f:
        info = json.loads(f.metadata()["aekit"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(info)
    info[META_HASH] = metadata_sha256(info)
    save_file(tensors, str(dst), metadata={"aekit": json.dumps(info, sort_keys=True)})
    return dst


def test_stored_training_scores(setup):
    from aekit.evaluate import trainingscores
    from aekit.models.modelfile import load_model
    from aekit.evaluate.scoring import score_features

    normal = [k for k in range(N) if k % 4 != 3]
    lm = load_model(setup["models"][0])
    ts = lm.info["training_scores"]
    assert ts["n"] == len(normal) == 18 and ts["ddof"] == 0
    assert ts["ids_sha256"] == trainingscores.ids_sha256([setup["ids"][k] for k in normal])
    assert sorted(ts["scorers"]) == ["mae", "mahalanobis", "mse"]
    import torch

    from aekit.models import mahalanobis as mh

    for name in ("mse", "mahalanobis"):
        e = ts["scorers"][name]
        want = score_features(lm, setup["x"][normal], score=name)
        if name == "mahalanobis":  # out of sample (tests/test_crossfit20.py): each clip
            in_sample = want  # against statistics fitted without it
            vec = mh.error_vectors(lm.model, lm.normalizer,
                                   torch.from_numpy(setup["x"][normal])).numpy()
            stats = {d: (m, ic, 0) for d, (m, ic) in lm.mahalanobis.items()}
            want = mh.crossfit_distances(vec, np.full(len(normal), mh.ALL, dtype=object), stats)
            assert np.mean(want) > np.mean(in_sample)
        np.testing.assert_allclose(e["values"], want, rtol=1e-6)
        assert e["mean"] == pytest.approx(np.mean(e["values"]), rel=1e-12)
        assert e["std"] == pytest.approx(np.std(e["values"]), rel=1e-12)
    # the model trained on all clips hashes other ids
    assert load_model(setup["other"]).info["training_scores"]["ids_sha256"] != ts["ids_sha256"]


@pytest.mark.parametrize("score", ["mse", "mahalanobis"])
def test_ensemble_z_is_mean_of_member_z_and_eval_equals_score(setup, score):
    from aekit.models.modelfile import load_model

    from aekit.evaluate.scoring import score_features

    m1, m2, m3 = setup["models"]
    z = []  # each member's single-model scores, standardized here on its stored statistics
    for m in (m1, m2, m3):
        lm = load_model(m)
        e = lm.info["training_scores"]["scorers"][score]
        z.append((score_features(lm, setup["x"], score=score) - e["mean"]) / e["std"])
    want = np.mean(z, axis=0)

    out = setup["root"] / f"ens_{score}.csv"
    rep = setup["root"] / f"ens_{score}.json"
    r = invoke(cmd("eval"), [m1, setup["feats"], "--ensemble", m2, "--ensemble", m3,
                             "--score", score, "--scores", out, "-o", rep, "-q",
                             "--labels", setup["labels"], "--anomaly-column", "anomaly"])
    assert r.exit_code == 0, r.stderr
    rows = read_csv(out.read_text())
    ev = np.array([float(row["ensemble_z"]) for row in rows])
    np.testing.assert_allclose(ev, want, rtol=1e-5, atol=1e-6)
    report = json.loads(rep.read_text())
    assert report["anomaly"]["score"] == f"ensemble_z({score})"
    assert [m["path"] for m in report["ensemble"]["members"]] == [str(m1), str(m2), str(m3)]

    args = [m1, setup["audio"], "--ensemble", m2, "--ensemble", m3, "--score", score,
            "-j", "1", "--batch-size", "5"]
    r = invoke(cmd("score"), args)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == "id,path,ensemble_z,scorer"
    sc = {row["id"]: float(row["ensemble_z"]) for row in read_csv(r.stdout)}
    assert sorted(sc) == [row["id"] for row in rows] and len(sc) == N
    for row, v in zip(rows, ev):
        assert sc[row["id"]] == pytest.approx(v, rel=1e-5, abs=1e-6), row["id"]
    assert invoke(cmd("score"), args).stdout == r.stdout  # deterministic


def test_ensemble_threshold(setup):
    from aekit.models.modelfile import load_model

    m1, m2, m3 = setup["models"]
    es = [load_model(m).info["training_scores"]["scorers"]["mse"] for m in (m1, m2, m3)]
    zt = np.mean([(np.array(e["values"]) - e["mean"]) / e["std"] for e in es], axis=0)
    want = float(np.quantile(zt, 0.9))
    r = invoke(cmd("score"), [m1, setup["audio"], "--ensemble", m2, "--ensemble", m3,
                              "-j", "1", "--threshold", "model", "--score", "mse"])
    assert r.exit_code == 0, r.stderr
    rows = read_csv(r.stdout)
    assert [row["decision"] for row in rows] == [
        "1" if float(row["ensemble_z"]) > want else "0" for row in rows]
    assert {row["decision"] for row in rows} == {"0", "1"}
    rep = setup["root"] / "thr.json"
    r = invoke(cmd("eval"), [m1, setup["feats"], "--ensemble", m2, "--ensemble", m3,
                             "-o", rep, "-q", "--labels", setup["labels"],
                             "--anomaly-column", "anomaly", "--score", "mse"])
    assert r.exit_code == 0, r.stderr
    report = json.loads(rep.read_text())
    assert report["ensemble"]["threshold"]["value"] == pytest.approx(want, rel=1e-12)
    assert report["anomaly"]["threshold"]["method"] == "ensemble empirical quantile"

    # members trained on other clips: no threshold of its own; a number is accepted
    r = invoke(cmd("score"), [m1, setup["audio"], "--ensemble", setup["other"], "-j", "1",
                              "--threshold", "model"])
    assert "trained on other clips" in one_error_line(r)
    r = invoke(cmd("score"), [m1, setup["audio"], "--ensemble", setup["other"], "-j", "1",
                              "--threshold", "0.5"])
    assert r.exit_code == 0, r.stderr
    assert all(row["decision"] == ("1" if float(row["ensemble_z"]) > 0.5 else "0")
               for row in read_csv(r.stdout))


def test_old_model_refused_for_ensembles_only(setup):
    m1, m2, _ = setup["models"]
    old = rewrite_info(m2, setup["root"] / "old.safetensors",
                       lambda info: info.pop("training_scores"))
    r = invoke(cmd("score"), [old, setup["audio"], "-j", "1"])  # single model: fine
    assert r.exit_code == 0, r.stderr
    r = invoke(cmd("score"), [m1, setup["audio"], "--ensemble", old, "-j", "1"])
    line = one_error_line(r)
    assert "old.safetensors" in line and "retrain" in line
    r = invoke(cmd("eval"), [m1, setup["feats"], "--ensemble", old, "-q"])
    assert "retrain" in one_error_line(r)


@pytest.mark.parametrize("edit,msg", [
    (lambda s: s["scorers"]["mse"].update(std=0.0), "no spread"),
    (lambda s: s["scorers"]["mse"].update(mean=float("nan")), "finite"),
    (lambda s: s["scorers"]["mse"]["values"].pop(), "finite numbers"),
    (lambda s: s["scorers"]["mse"].update(mean=s["scorers"]["mse"]["mean"] + 1), "differ"),
    (lambda s: s.update(n=True), "positive integer"),
    (lambda s: s.update(ids_sha256="x"), "SHA-256"),
])
def test_bad_statistics_refused(setup, edit, msg):
    m1, m2, _ = setup["models"]
    bad = rewrite_info(m2, setup["root"] / "bad.safetensors",
                       lambda info: edit(info["training_scores"]))
    r = invoke(cmd("score"), [m1, setup["audio"], "--ensemble", bad, "-j", "1",
                              "--score", "mse"])
    line = one_error_line(r)
    assert msg in line and "bad.safetensors" in line


def test_incompatible_and_duplicate_members_refused(setup):
    m1, m2, _ = setup["models"]
    root = setup["root"]
    # a model of features computed with another --top-db (same clip shape)
    m8 = rewrite_info(m2, root / "m8.safetensors",
                      lambda info: info["feature_params"].update(top_db=60.0))
    r = invoke(cmd("score"), [m1, setup["audio"], "--ensemble", m8, "-j", "1"])
    line = one_error_line(r)
    assert "m8.safetensors" in line and "top_db" in line
    r = invoke(cmd("eval"), [m1, setup["feats"], "--ensemble", m8, "-q"])
    assert "m8.safetensors" in one_error_line(r)
    r = invoke(cmd("score"), [m1, setup["audio"], "--ensemble", m1, "-j", "1"])
    assert "same model" in one_error_line(r)
    r = invoke(cmd("eval"), ["--summarize", root / "x.json", "--ensemble", m2])
    assert "--ensemble" in one_error_line(r)
