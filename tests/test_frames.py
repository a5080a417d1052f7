"""--arch frames: windows cut as plain slicing would, every window once per epoch (memory and
stream), scores and codes equal to a per-window loop, per-kind defaults and options, resume
bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import write_features, write_splits
from safetensors.torch import load_file

from aekit.models import frames
from aekit.models import registry as models
from aekit.train import settings as S
from aekit.train import loop as tr
from aekit.cmds.encode import cli as encode_cli
from aekit.cmds.eval import cli as eval_cli
from aekit.cmds.train import cli as train_cli
from aekit.data.latents import LatentsFile
from aekit.models.modelfile import Normalizer, load_model

SHAPE = (2, 4, 12)
TINY = dict(hidden=(16, 8), latent=3)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


def windows_np(x: np.ndarray, context: int) -> np.ndarray:
    """Every window of clips x [N, C, M, T], by slicing: [N, W, C*M*context]."""
    t = x.shape[-1]
    return np.stack([np.stack([c[:, :, o:o + context].reshape(-1) for o in range(t - context + 1)])
                     for c in x])


def model(context=3, seed=0, shape=SHAPE):
    torch.manual_seed(seed)
    m = models.build_model(models.make_config("frames", shape, context=context, **TINY))
    return m


def test_units_are_windows():
    x = torch.randn(5, *SHAPE)
    m = model(context=4)
    assert m.units_per_clip(12) == 9 and m.norm_shape() == (2, 4, 1)
    clip, off = torch.tensor([4, 0, 4, 2]), torch.tensor([8, 0, 3, 5])
    want = windows_np(x.numpy(), 4)[clip.numpy(), off.numpy()]
    store = m.unit_store(x)  # frame-major: [N, T, C*M], one copy
    assert store.shape == (5, 12, 8) and store.is_contiguous()
    assert torch.equal(store[3, 7], x[3, :, :, 7].reshape(-1))
    np.testing.assert_array_equal(m.gather_units(store, clip, off).numpy(), want)
    # Clip by clip: a block of clips laid out alone is the same rows (the sources lay out
    # blocks of clips).
    assert torch.equal(m.unit_store(x[2:4]), store[2:4])
    none = torch.zeros(0, dtype=torch.int64)
    assert m.gather_units(store, none, none).shape == (0, 2 * 4 * 4)  # an empty batch
    np.testing.assert_array_equal(m.take_units(x[clip], off).numpy(), want)
    # Per-(channel, band) statistics laid out like a window.
    stats = torch.arange(8.0).reshape(2, 4, 1)
    np.testing.assert_array_equal(m.unit_stats(stats).numpy(),
                                  np.repeat(np.arange(8.0), 4))


@pytest.mark.parametrize("mode", ["none", "global", "per-feature"])
def test_scores_and_codes_equal_a_per_window_loop(monkeypatch, mode):
    monkeypatch.setattr(frames, "CHUNK_VALUES", 2 * 10 * 24)  # chunks of 2 clips
    x = torch.from_numpy(np.random.default_rng(1).normal(-40, 20, (5, *SHAPE)).astype(np.float32))
    m = model(context=3).eval()
    norm = Normalizer(mode, shape=m.norm_shape()).fit([x.numpy()[:3]])
    with torch.no_grad():
        mse, mae, z = m.errors_and_codes(x, norm)
        codes = m.clip_codes(x, norm)
        # Oracle: one window at a time, the error de-normalized to dB by hand.
        mu, sd = norm.mean.numpy(), norm.std.numpy()  # [1] or [2, 4, 1]; 0 and 1 for 'none'
        xn = (x.numpy() - mu) / sd
        std = np.broadcast_to(sd, (2, 4, 3)).reshape(-1)  # per value of a window
        for b in range(len(x)):
            errs, zs = [], []
            for w in windows_np(xn[b:b + 1], 3)[0]:
                rec, zw = m(torch.from_numpy(w.copy())[None])
                errs.append((rec[0].numpy() - w) * std)
                zs.append(zw[0].numpy())
            errs = np.stack(errs)
            np.testing.assert_allclose(mse[b], (errs ** 2).mean(1).mean(), rtol=1e-5)
            np.testing.assert_allclose(mae[b], np.abs(errs).mean(1).mean(), rtol=1e-5)
            np.testing.assert_allclose(z[b], np.mean(zs, 0), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(codes[b], np.mean(zs, 0), rtol=1e-5, atol=1e-6)
        # The reconstruction for plots: each frame the mean of its windows' reconstructions.
        rec, _ = m.reconstruct_and_codes(x[:1], norm)
        r = m(torch.from_numpy(windows_np(xn[:1], 3)[0]))[0].numpy().reshape(10, 2, 4, 3)
        want = np.zeros((2, 4, 12))
        cover = np.zeros(12)
        for o in range(10):
            want[:, :, o:o + 3] += r[o]
            cover[o:o + 3] += 1
        want = want / cover * sd + mu
        np.testing.assert_allclose(rec[0].numpy(), want, rtol=1e-4, atol=1e-3)


def test_kind_defaults_sit_under_preset_and_options():
    s = S.make_settings(arch="frames")
    assert (s.hidden, s.latent, s.batch_size, s.lr, s.model_options) == (
        (128, 128, 128, 128), 8, 512, 1e-3, {"context": 5})
    assert s.epochs == 20  # the value, not the constant it comes from
    assert S.make_settings(arch="improved").hidden == (8224, 2056, 1024, 512)  # others unchanged
    t = S.make_settings("tutorial", arch="frames", model_options={"context": 7})
    assert (t.batch_size, t.hidden, t.model_options) == (25, (128,) * 4, {"context": 7})
    assert S.make_settings(arch="frames", batch_size=64, hidden=(32,)).batch_size == 64


@pytest.mark.parametrize("args, msg", [
    (["--arch", "improved", "--context", "3"], "--context: does not apply to model kind 'improved'"),
    (["--arch", "frames", "--context", "13"], "--context: 13 must be between 1 and the clips' 12 frames"),
])
def test_context_errors(tmp_path, args, msg):
    write_features(tmp_path / "f.h5", n=6, shape=SHAPE)
    out = tmp_path / "m.safetensors"
    r = CliRunner().invoke(train_cli, [str(tmp_path / "f.h5"), "-o", str(out), *args,
                                       "--epochs", "1"])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines()[-1] == f"ae-train: error: {msg}"
    assert not out.exists()


@pytest.mark.parametrize("data", ["memory", "stream"])
def test_an_epoch_is_every_window_once(tmp_path, monkeypatch, data):
    ids, x = write_features(tmp_path / "f.h5", n=10, shape=SHAPE)
    write_splits(tmp_path / "s.csv", ids)
    seen = []
    real = tr.train_step

    def spy(net, opt, xb, weight, amp):
        seen.append(xb.detach().cpu().numpy().copy())
        return real(net, opt, xb, weight, amp)

    monkeypatch.setattr(tr, "train_step", spy)
    r = CliRunner().invoke(train_cli, [
        str(tmp_path / "f.h5"), "-o", str(tmp_path / "m.safetensors"), "--arch", "frames",
        "--hidden", "16,8", "--latent", "3", "--context", "3", "--epochs", "1",
        "--splits", str(tmp_path / "s.csv"), "--fold", "0", "--normalize", "none",
        "--data", data, "--workers", "0", "--batch-size", "7"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    split = pd.read_csv(tmp_path / "s.csv")
    train = x[((split["split"] == "train") & (split["fold"] != 0)).to_numpy()]
    want = windows_np(train, 3).reshape(-1, 24)
    got = np.concatenate(seen)
    assert got.shape == want.shape == (4 * 10, 24)
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(key(got), key(want))


def test_cli_scores_and_codes(tmp_path):
    ids, x = write_features(tmp_path / "f.h5", n=8, shape=SHAPE)
    m = tmp_path / "m.safetensors"
    r = CliRunner().invoke(train_cli, [str(tmp_path / "f.h5"), "-o", str(m), "--arch", "frames",
                                       "--hidden", "16,8", "--latent", "3", "--context", "2",
                                       "--epochs", "2", "--normalize", "per-feature"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(eval_cli, [str(m), str(tmp_path / "f.h5"),
                                      "--scores", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(encode_cli, [str(m), str(tmp_path / "f.h5"), "-o", str(tmp_path / "z.h5")])
    assert r.exit_code == 0, r.output
    lm = load_model(m)
    assert lm.model.config.context == 2 and lm.normalizer.mean.numel() == 8
    mean = lm.normalizer.mean.numpy().reshape(1, 2, 4, 1)
    std = lm.normalizer.std.numpy().reshape(1, 2, 4, 1)
    u = windows_np((x - mean) / std, 2)  # [N, 11, 16]
    std_u = np.repeat(std.reshape(-1), 2)
    with torch.no_grad():
        rec, z = lm.model(torch.from_numpy(u.reshape(-1, 16)))
    err = (rec.numpy().reshape(u.shape) - u) * std_u
    scores = pd.read_csv(tmp_path / "s.csv")
    np.testing.assert_allclose(scores["mse"], (err ** 2).mean((1, 2)), rtol=1e-4)
    np.testing.assert_allclose(LatentsFile(tmp_path / "z.h5").latents,
                               z.numpy().reshape(8, 11, 3).mean(1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("data", ["memory", "stream"])
def test_resume_mid_epoch_is_bit_exact(tmp_path, data):
    write_features(tmp_path / "f.h5", n=6, shape=SHAPE)
    s = S.make_settings(arch="frames", hidden=(16, 8), latent=3, epochs=2, batch_size=8,
                        model_options={"context": 3}, seed=4)
    kw = dict(data_mode=data, workers=0)
    tr.train(tmp_path / "f.h5", tmp_path / "a.safetensors", s, **kw)
    steps = []
    with pytest.raises(tr.Preempted):
        tr.train(tmp_path / "f.h5", tmp_path / "b.safetensors", s, on_step=steps.append,
                 stop_requested=lambda: len(steps) == 5, **kw)  # step 5 of 8 (60 windows / 8)
    ck = tr.load_checkpoint(tmp_path / "b.safetensors.ckpt" / "last.pt")
    assert (ck["epoch"], ck["step"], ck["epoch_rows"]) == (0, 5, 39)  # balanced: 4x8 + 4x7
    assert sorted(ck["perm"].tolist()) == list(range(60))  # a permutation of windows
    other = S.make_settings(arch="frames", hidden=(16, 8), latent=3, epochs=2, batch_size=8,
                            model_options={"context": 4}, seed=4)
    with pytest.raises(Exception, match="model_options"):
        tr.train(tmp_path / "f.h5", tmp_path / "b.safetensors", other, resume=True, **kw)
    tr.train(tmp_path / "f.h5", tmp_path / "b.safetensors", s, resume=True, **kw)
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
