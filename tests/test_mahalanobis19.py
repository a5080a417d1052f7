"""Issue 19, item 3: selective Mahalanobis scoring (the DCASE 2022-2025 AE baseline's second
mode), fitted by ae-train on the training clips' error vectors per domain and stored in the
model file; ae-eval / ae-score --score mahalanobis, score_features(score="mahalanobis")."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from conftest import (N_TONES as N, TINY_FRAMES as TINY, cli_of as cmd, invoke, one_error_line,
                      read_csv)

N_TARGET = 11  # both domains hold more clips than dimensions (8): invertible


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tones, tone_frames_model):
    """The session's tones and their features (conftest.tones), labels with a domain column
    (13 source, 11 target), a frames model trained with those labels (statistics per domain)
    and one without (one domain: conftest.tone_frames_model)."""
    root = tmp_path_factory.mktemp("maha")
    audio, feats, ids, x = tones["audio"], tones["feats"], tones["ids"], tones["x"].copy()
    labels = root / "labels.csv"
    labels.write_text("id,domain\n" + "".join(
        f"{i},{'target' if k >= N - N_TARGET else 'source'}\n" for k, i in enumerate(ids)))
    model = root / "dom.safetensors"
    r = invoke(cmd("train"), [feats, "-o", model, "--labels", labels, *TINY])
    assert r.exit_code == 0, r.stderr
    plain = tone_frames_model
    return {"root": root, "audio": audio, "feats": feats, "ids": ids, "x": x,
            "labels": labels, "model": model, "plain": plain}


def independent_vectors(lm, x: np.ndarray) -> np.ndarray:
    """Each clip's error vector computed here: per window (C x M x context, flattened),
    input - reconstruction in dB, averaged over the clip's windows."""
    ctx = lm.config.context
    mean = lm.normalizer.mean.reshape(1, *lm.normalizer.mean.shape[-3:]).numpy() \
        if lm.normalizer.mode != "none" else 0.0
    std = lm.normalizer.std.reshape(1, *lm.normalizer.std.shape[-3:]).numpy() \
        if lm.normalizer.mode != "none" else 1.0
    xn = (x - mean) / std
    n, c, m, t = x.shape
    out = np.zeros((n, c * m * ctx))
    stdw = np.broadcast_to(std, (1, c, m, ctx)).reshape(1, -1) if np.ndim(std) else std
    for o in range(t - ctx + 1):
        u = np.ascontiguousarray(xn[:, :, :, o:o + ctx].reshape(n, -1), dtype=np.float32)
        with torch.no_grad():
            rec = lm.model(torch.from_numpy(u))[0].numpy()
        out += (u - rec).astype(np.float64) * stdw
    return out / (t - ctx + 1)


def test_stored_statistics_and_distance_equal_scipy(setup):
    import aekit
    from aekit.models.mahalanobis import RIDGE
    from aekit.models.modelfile import load_model

    lm = load_model(setup["model"])
    d = 2 * 4 * 1
    assert sorted(lm.mahalanobis) == ["source", "target"]
    assert lm.info["mahalanobis"]["domains"] == ["source", "target"]
    assert lm.info["mahalanobis"]["n"] == {"source": N - N_TARGET, "target": N_TARGET}
    for mean, icov in lm.mahalanobis.values():
        assert mean.shape == (d,) and icov.shape == (d, d)
        assert mean.dtype == icov.dtype == np.float64
    x = setup["x"]
    v = independent_vectors(lm, x)
    # the statistics are the training vectors' mean and ridge-regularized inverse covariance
    dom = np.array(["target" if k >= N - N_TARGET else "source" for k in range(N)])
    for name in ("source", "target"):
        mean, icov = lm.mahalanobis[name]
        np.testing.assert_allclose(mean, v[dom == name].mean(0), rtol=1e-5, atol=1e-6)
        cov = np.cov(v[dom == name], rowvar=False)
        lam = RIDGE * np.trace(cov) / d
        np.testing.assert_allclose(icov @ (cov + lam * np.eye(d)), np.eye(d), atol=1e-4)  # n - 1: n gives 8 %
    got = aekit.score_features(lm, x, score="mahalanobis")
    want = np.array([min(scipy_mahalanobis(vi, *lm.mahalanobis[k]) for k in ("source", "target"))
                     for vi in v])
    assert got.shape == (N,)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # the MSE score is the model's clip MSE; the default (auto) for frames is the distance
    import torch

    np.testing.assert_allclose(aekit.score_features(lm, x, score="mse"),
                               lm.score(torch.from_numpy(x))[0].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(aekit.score_features(lm, x), got)


def test_minimum_over_domains():
    from aekit.models.mahalanobis import distances

    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 3))
    a = (np.zeros(3), np.eye(3))
    b = (np.full(3, 2.0), np.diag([4.0, 1.0, 0.25]))
    da = np.array([scipy_mahalanobis(r, *a) for r in v])
    db = np.array([scipy_mahalanobis(r, *b) for r in v])
    got = distances(v, {"source": a, "target": b})
    np.testing.assert_allclose(got, np.minimum(da, db), rtol=1e-12)
    assert (da < db).any() and (db < da).any()  # both domains win somewhere
    np.testing.assert_allclose(distances(v, {"source": a}), da, rtol=1e-12)


def test_eval_equals_score(setup):
    out = setup["root"] / "s.csv"
    r = invoke(cmd("eval"), [setup["model"], setup["feats"], "--score", "mahalanobis",
                             "--scores", out, "-o", setup["root"] / "r.json", "-q"])
    assert r.exit_code == 0, r.stderr
    ev = {row["id"]: float(row["mahalanobis"]) for row in read_csv(out.read_text())}
    r = invoke(cmd("score"), [setup["model"], setup["audio"], "--score", "mahalanobis",
                              "-j", "1", "--batch-size", "4"])
    assert r.exit_code == 0, r.stderr
    sc = {row["id"]: float(row["score"]) for row in read_csv(r.stdout)}
    assert sorted(sc) == sorted(ev) and len(sc) == N
    for k in sc:
        assert sc[k] == pytest.approx(ev[k], rel=1e-5), k
    # and the MSE scores of the same command differ (the option is not ignored)
    r = invoke(cmd("score"), [setup["model"], setup["audio"], "--score", "mse", "-j", "1"])
    mse = {row["id"]: float(row["score"]) for row in read_csv(r.stdout)}
    assert any(abs(mse[k] - sc[k]) > 1e-3 * abs(sc[k]) for k in sc)
    # --threshold model with the Mahalanobis score: the threshold of the training distances
    # (tests/test_autoscore20.py); a model without them is refused there


def test_one_domain_without_domain_labels(setup):
    from aekit.models.modelfile import load_model

    lm = load_model(setup["plain"])
    assert sorted(lm.mahalanobis) == ["all"]
    assert lm.info["mahalanobis"]["n"] == {"all": N}


def test_model_without_statistics_refused(setup, monkeypatch):
    import aekit
    from aekit.models import mahalanobis
    from aekit.errors import InputError

    monkeypatch.setattr(mahalanobis, "MAX_DIM", 1)  # statistics too long: none stored
    old = setup["root"] / "old.safetensors"
    r = invoke(cmd("train"), [setup["feats"], "-o", old, *TINY])
    assert r.exit_code == 0, r.stderr
    monkeypatch.undo()
    from aekit.models.modelfile import load_model

    lm = load_model(old)
    assert lm.mahalanobis is None and "mahalanobis" not in lm.info
    for name, args in (("score", [old, setup["audio"], "--score", "mahalanobis", "-j", "1"]),
                       ("eval", [old, setup["feats"], "--score", "mahalanobis", "-q"])):
        line = one_error_line(invoke(cmd(name), args))
        assert "model has no Mahalanobis statistics (retrain with" in line, line
    with pytest.raises(InputError, match="model has no Mahalanobis statistics"):
        aekit.score_features(lm, setup["x"], score="mahalanobis")
    with pytest.raises(InputError, match="model has no Mahalanobis statistics"):
        aekit.score_files(lm, [str(setup["audio"] / "m00.wav")], score="mahalanobis")
    assert aekit.score_features(lm, setup["x"]).shape == (N,)  # MSE still works


def test_tampered_statistics_refused(setup):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from aekit.errors import InputError
    from aekit.models.modelfile import load_model

    with safe_open(str(setup["model"]), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(setup["model"]))
    bad = dict(tensors)
    icov = bad["mahalanobis.target.icov"].clone()
    icov[0, 0] += 1e-9
    bad["mahalanobis.target.icov"] = icov
    p = setup["root"] / "tampered.safetensors"
    save_file(bad, str(p), metadata=meta)
    with pytest.raises(InputError, match="tensor checksum mismatch"):
        load_model(p)
    gone = {k: v for k, v in tensors.items() if k != "mahalanobis.source.mean"}
    save_file(gone, str(p), metadata=meta)
    with pytest.raises(InputError, match="'mahalanobis.source.mean' is missing"):
        load_model(p)
