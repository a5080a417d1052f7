"""Issue 20, part 1: ``--arch interp`` (IDNN, Suefusa et al. 2020): the centre frame of a
window of --context frames predicted from the others. Shapes, which frames enter the input,
the loss and scores on the centre frame only, resume bit for bit, ae-eval == ae-score (MSE
and Mahalanobis), ae-encode, the stored threshold, bad --context refused."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from conftest import (N_TONES as N, cli_of as cmd, invoke, one_error_line, read_csv as rows,
                      write_features, write_splits)

SHAPE = (2, 4, 12)
TINY = dict(hidden=(16, 8), latent=3)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def build(context=5, seed=0, shape=SHAPE):
    from aekit.models import registry as models

    torch.manual_seed(seed)
    return models.build_model(models.make_config("interp", shape, context=context, **TINY))


def test_shapes_and_the_input_is_the_window_without_its_centre():
    from torch import nn

    m = build(context=5).eval()
    lin = [x for x in m.modules() if isinstance(x, nn.Linear)]
    # 4 neighbour frames of 2 x 4 values in, the 2 x 4 centre frame out
    assert (lin[0].in_features, lin[-1].out_features) == (2 * 4 * 4, 2 * 4)
    assert [x.out_features for x in lin] == [16, 8, 3, 8, 16, 8]
    assert m.units_per_clip(12) == 8 and m.norm_shape() == (2, 4, 1)
    x = torch.arange(3 * 2 * 4 * 12, dtype=torch.float32).reshape(3, 2, 4, 12)
    clip, off = torch.tensor([2, 0, 1]), torch.tensor([7, 0, 3])
    u = m.gather_units(m.unit_store(x), clip, off)  # the frames model's window: [3, 2*4*5]
    assert u.shape == (3, 40)
    for b in range(3):
        w = x[clip[b], :, :, off[b]:off[b] + 5]  # [2, 4, 5] by hand
        want_in = w[:, :, [0, 1, 3, 4]].reshape(-1)
        assert torch.equal(m.neighbours(u)[b], want_in)
        assert torch.equal(m.unit_target(u)[b], w[:, :, 2].reshape(-1))
    with torch.no_grad():
        pred, z = m(u)
        assert pred.shape == (3, 8) and z.shape == (3, 3)
        # the centre frame does not enter the prediction; each other frame does
        v = u.reshape(3, 8, 5).clone()
        v[..., 2] += 100.0
        assert torch.equal(m(v.reshape(3, 40))[0], pred)
        for j in (0, 1, 3, 4):
            v = u.reshape(3, 8, 5).clone()
            v[..., j] += 100.0
            assert not torch.allclose(m(v.reshape(3, 40))[0], pred)
    # statistics laid out like the centre frame (per channel and band)
    stats = torch.arange(8.0).reshape(2, 4, 1)
    assert torch.equal(m.target_stats(stats), torch.arange(8.0))
    assert torch.equal(m.target_stats(torch.tensor([3.0])), torch.tensor([3.0]))


def test_training_loss_is_the_centre_frame_error_in_db():
    import contextlib

    from aekit.train import loop as tr
    from aekit.models.modelfile import Normalizer

    m = build(context=3)
    x = torch.from_numpy(np.random.default_rng(0).normal(-40, 20, (4, *SHAPE)).astype(np.float32))
    norm = Normalizer("per-feature", shape=m.norm_shape()).fit([x.numpy()])
    weight = tr._loss_weight(norm, m)
    assert weight.shape == (8,)
    xb = m.take_units(norm.transform(x), torch.tensor([0, 3, 9, 5]))
    with torch.no_grad():
        pred = m(xb)[0]
    centre = xb.reshape(4, 8, 3)[..., 1]
    want = ((pred - centre) ** 2 * norm.std.reshape(-1) ** 2).mean()
    opt = tr.make_optimizer(m.parameters(), 1e-3)
    loss = tr.train_step(m, opt, xb, weight, contextlib.nullcontext())
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("data", ["memory", "stream"])
def test_resume_mid_epoch_is_bit_exact(tmp_path, data):
    from aekit.train import settings as S
    from aekit.train import loop as tr

    write_features(tmp_path / "f.h5", n=6, shape=SHAPE)
    s = S.make_settings(arch="interp", hidden=(16, 8), latent=3, epochs=2, batch_size=8,
                        model_options={"context": 3}, seed=4)
    kw = dict(data_mode=data, workers=0)
    tr.train(tmp_path / "f.h5", tmp_path / "a.safetensors", s, **kw)
    steps = []
    with pytest.raises(tr.Preempted):
        tr.train(tmp_path / "f.h5", tmp_path / "b.safetensors", s, on_step=steps.append,
                 stop_requested=lambda: len(steps) == 5, **kw)  # step 5 of 8 (60 windows / 8)
    ck = tr.load_checkpoint(tmp_path / "b.safetensors.ckpt" / "last.pt")
    assert (ck["epoch"], ck["step"]) == (0, 5)
    tr.train(tmp_path / "f.h5", tmp_path / "b.safetensors", s, resume=True, **kw)
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["model.decoder.6.weight"].shape == (8, 16)  # the output layer predicts one frame


def test_validation_loss_is_the_mean_centre_frame_score(tmp_path):
    import aekit
    from aekit.train import settings as S
    from aekit.train import loop as tr

    ids, x = write_features(tmp_path / "f.h5", n=10, shape=SHAPE)
    write_splits(tmp_path / "s.csv", ids)
    s = S.make_settings(arch="interp", hidden=(16, 8), latent=3, epochs=1, batch_size=8,
                        model_options={"context": 3}, keep="last", normalize="per-feature")
    tr.train(tmp_path / "f.h5", tmp_path / "m.safetensors", s, splits=tmp_path / "s.csv",
             fold=0, data_mode="memory", workers=0)
    lm = aekit.load_model(tmp_path / "m.safetensors")
    val = [i for i in range(10) if i % 5 != 4 and i % 2 == 0]  # train rows of fold 0
    mse = aekit.score_features(lm, x[val], score="mse")  # every clip has the same number of windows
    assert lm.info["history"][-1]["val_loss"] == pytest.approx(float(np.mean(mse)), rel=1e-5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tones):
    """The session's tones and their features (conftest.tones) and an interp model (context 3)
    trained on them."""
    root = tmp_path_factory.mktemp("interp")
    audio, feats, ids, x = tones["audio"], tones["feats"], tones["ids"], tones["x"].copy()
    model = root / "m.safetensors"
    r = invoke(cmd("train"), [feats, "-o", model, "--arch", "interp", "--context", "3",
                              "--hidden", "16,8", "--latent", "4", "--epochs", "2",
                              "--batch-size", "8", "--normalize", "per-feature", "-q"])
    assert r.exit_code == 0, r.stderr
    return {"root": root, "audio": audio, "feats": feats, "ids": ids, "x": x, "model": model}


def oracle(lm, x):
    """Per clip, by hand: each window's centre frame t (t = 1 .. T-2) predicted from frames
    t-1 and t+1; (MSE dB^2, MAE dB, mean code, mean signed error centre - prediction in dB,
    the predictions in dB [N, C, M, T-2])."""
    mean = lm.normalizer.mean.numpy().reshape(1, 2, 4, 1)
    std = lm.normalizer.std.numpy().reshape(1, 2, 4, 1)
    xn = (x - mean) / std
    n, t = x.shape[0], x.shape[-1]
    errs, codes, preds = [], [], []
    for c in range(1, t - 1):
        win = np.ascontiguousarray(xn[..., c - 1:c + 2].reshape(n, -1))  # [n, 2*4*3]
        with torch.no_grad():
            pred, z = lm.model(torch.from_numpy(win))
        errs.append((xn[..., c] - pred.numpy().reshape(n, 2, 4)) * std[..., 0])  # dB
        codes.append(z.numpy())
        preds.append(pred.numpy().reshape(n, 2, 4) * std[..., 0] + mean[..., 0])
    e = np.stack(errs, 1).reshape(n, t - 2, 8).astype(np.float64)
    return ((e ** 2).mean((1, 2)), np.abs(e).mean((1, 2)), np.mean(codes, 0), e.mean(1),
            np.stack(preds, -1))


def test_eval_score_encode_and_threshold(setup):
    from aekit.data.latents import LatentsFile
    from aekit.models.modelfile import load_model
    from aekit.evaluate.thresholds import fit_threshold

    root, lm = setup["root"], load_model(setup["model"])
    x = setup["x"]
    mse, mae, code, _, pred = oracle(lm, x)
    r = invoke(cmd("eval"), [setup["model"], setup["feats"], "--scores", root / "e.csv",
                             "-o", root / "e.json", "-q"])
    assert r.exit_code == 0, r.stderr
    ev = rows((root / "e.csv").read_text())
    assert [row["id"] for row in ev] == setup["ids"]
    np.testing.assert_allclose([float(row["mse"]) for row in ev], mse, rtol=1e-5)
    np.testing.assert_allclose([float(row["mae"]) for row in ev], mae, rtol=1e-5)
    r = invoke(cmd("score"), [setup["model"], setup["audio"], "-j", "1", "--batch-size", "3",
                              "--threshold", "model", "--score", "mse"])
    assert r.exit_code == 0, r.stderr
    sc = {row["id"]: row for row in rows(r.stdout)}
    thr = lm.info["threshold"]
    # from the training clips' centre-frame scores (the gamma fit itself is float-sensitive)
    assert thr["n"] == N and thr["method"] in ("gamma", "empirical")
    assert thr["empirical"] == pytest.approx(fit_threshold(mse)["empirical"], rel=1e-5)
    for row in ev:
        assert float(sc[row["id"]]["score"]) == pytest.approx(float(row["mse"]), rel=1e-5)
        assert sc[row["id"]]["decision"] == str(int(float(row["mse"]) > thr["value"]))
    r = invoke(cmd("encode"), [setup["model"], setup["feats"], "-o", root / "z.h5", "-q"])
    assert r.exit_code == 0, r.stderr
    np.testing.assert_allclose(LatentsFile(root / "z.h5").latents, code, rtol=1e-4, atol=1e-5)
    # for plots: frame t predicted from its window; the 2 edge frames (no window) the input's
    rec, z = lm.reconstruct(torch.from_numpy(x))
    np.testing.assert_allclose(rec[..., 1:-1].numpy(), pred, rtol=1e-4, atol=1e-3)
    assert np.array_equal(rec[..., [0, -1]].numpy(), x[..., [0, -1]])
    np.testing.assert_allclose(z.numpy(), code, rtol=1e-4, atol=1e-5)


def test_mahalanobis_on_centre_frame_errors(setup):
    import aekit
    from aekit.models.modelfile import load_model

    lm = load_model(setup["model"])
    _, _, _, v, _ = oracle(lm, setup["x"])
    assert sorted(lm.mahalanobis) == ["all"]
    mean, icov = lm.mahalanobis["all"]
    assert mean.shape == (8,) and icov.shape == (8, 8)  # C x M: the centre frame's values
    np.testing.assert_allclose(mean, v.mean(0), rtol=1e-4, atol=1e-5)
    want = np.array([scipy_mahalanobis(vi, mean, icov) for vi in v])
    np.testing.assert_allclose(aekit.score_features(lm, setup["x"], score="mahalanobis"), want,
                               rtol=1e-4)
    root = setup["root"]
    r = invoke(cmd("eval"), [setup["model"], setup["feats"], "--score", "mahalanobis",
                             "--scores", root / "m.csv", "-o", root / "m.json", "-q"])
    assert r.exit_code == 0, r.stderr
    ev = {row["id"]: float(row["mahalanobis"]) for row in rows((root / "m.csv").read_text())}
    r = invoke(cmd("score"), [setup["model"], setup["audio"], "--score", "mahalanobis",
                              "-j", "1", "--batch-size", "7"])
    assert r.exit_code == 0, r.stderr
    sc = {row["id"]: float(row["score"]) for row in rows(r.stdout)}
    assert sorted(sc) == sorted(ev) and len(sc) == N
    for k in sc:
        assert sc[k] == pytest.approx(ev[k], rel=1e-5), k


@pytest.mark.parametrize("context, msg", [
    ("4", "--context: 4 must be odd for model kind 'interp' (a window around a centre frame)"),
    ("2", "--context: must be at least 3"),
    ("1", "--context: must be at least 3"),
    ("13", "--context: 13 must be between 1 and the clips' 12 frames"),
])
def test_bad_context_refused(tmp_path, context, msg):
    write_features(tmp_path / "f.h5", n=6, shape=SHAPE)
    out = tmp_path / "m.safetensors"
    r = invoke(cmd("train"), [tmp_path / "f.h5", "-o", out, "--arch", "interp",
                              "--context", context, "--epochs", "1"])
    assert one_error_line(r) == f"ae-train: error: {msg}"
    assert not out.exists() and not (tmp_path / "m.safetensors.ckpt").exists()


def test_bad_context_refused_by_the_library():
    from aekit.errors import InputError
    from aekit.models.interp import InterpConfig

    for c in (0, 1, 2, 4, 6):
        with pytest.raises(InputError, match=f"^context: {c} "):
            InterpConfig(input_shape=SHAPE, context=c)
    assert InterpConfig(input_shape=SHAPE, context=7).neighbour_dim == 2 * 4 * 6
