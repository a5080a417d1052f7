"""The model registry: a kind registered here, unknown to every command, trains (memory and
stream, with resume), scores and encodes through them. Its units are the two halves of a
clip's frames and its per-feature statistics are per (channel, mel band), as a model of
frame windows would have."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import write_features, write_splits
from safetensors.torch import load_file
from torch import nn

from aekit.models import registry as models
from aekit.models.base import ClipModel
from aekit.train import loop as tr
from aekit.train.settings import make_settings
from aekit.cmds.encode import cli as encode_cli
from aekit.cmds.eval import cli as eval_cli
from aekit.cmds.train import cli as train_cli
from aekit.data.latents import LatentsFile
from aekit.models.modelfile import load_model

KIND = "test-halves"


@dataclass
class HalvesConfig:
    arch: str = KIND
    input_shape: tuple = (2, 4, 10)
    hidden: tuple = (8,)
    latent: int = 4


class Halves(ClipModel):
    """Two units per clip: frames [0, T/2) and [T/2, T), each flattened to C*M*T/2."""

    def __init__(self, config: HalvesConfig):
        super().__init__()
        self.config = config
        c, m, t = config.input_shape
        d, h = c * m * (t // 2), config.hidden[0]
        self.enc = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, config.latent))
        self.dec = nn.Sequential(nn.Linear(config.latent, h), nn.ReLU(), nn.Linear(h, d))

    def units_per_clip(self, frames: int) -> int:
        return 2

    def take_units(self, clips, offsets):
        h = clips.shape[-1] // 2
        idx = offsets[:, None] * h + torch.arange(h, device=clips.device)  # [B, h]
        idx = idx[:, None, None, :].expand(*clips.shape[:3], h)
        return torch.gather(clips, 3, idx).flatten(1)  # [B, C*M*h]

    def forward(self, units):
        z = self.enc(units)
        return self.dec(z), z

    def norm_shape(self):
        c, m, _ = self.input_shape
        return (c, m, 1)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    torch.set_num_threads(1)
    models.register(KIND, HalvesConfig, Halves)
    yield
    models._REGISTRY.pop(KIND, None)


def halves(x: np.ndarray) -> np.ndarray:
    """The units of clips x [N, C, M, T], independently of the model: [2N, C*M*T/2]."""
    h = x.shape[-1] // 2
    return np.concatenate([x[..., :h].reshape(len(x), -1), x[..., h:].reshape(len(x), -1)])


def sort_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.parametrize("data", ["memory", "stream"])
def test_trains_on_every_unit_once_per_epoch(tmp_path, monkeypatch, data):
    ids, x = write_features(tmp_path / "f.h5", n=20)
    write_splits(tmp_path / "s.csv", ids)
    seen = []
    real = tr.train_step

    def spy(net, opt, xb, weight, amp):
        seen.append(xb.detach().numpy().copy())
        return real(net, opt, xb, weight, amp)

    monkeypatch.setattr(tr, "train_step", spy)
    res = CliRunner().invoke(train_cli, [
        str(tmp_path / "f.h5"), "-o", str(tmp_path / "m.safetensors"), "--arch", KIND,
        "--hidden", "8", "--latent", "4", "--epochs", "1", "--batch-size", "5", "--splits",
        str(tmp_path / "s.csv"), "--fold", "0", "--normalize", "per-feature", "--data", data,
        "--workers", "0", "--seed", "3"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    split = pd.read_csv(tmp_path / "s.csv")
    train = x[((split["split"] == "train") & (split["fold"] != 0)).to_numpy()]
    # Statistics per (channel, mel band), over clips and frames of the training clips only.
    t = load_file(str(tmp_path / "m.safetensors"))
    assert t["norm.mean"].shape == (2 * 4,)
    mean = train.astype(np.float64).mean(axis=(0, 3)).reshape(-1)
    std = train.astype(np.float64).std(axis=(0, 3)).reshape(-1)
    np.testing.assert_allclose(t["norm.mean"].numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(t["norm.std"].numpy(), std, rtol=1e-4)
    # One epoch = each half of each training clip exactly once, normalized.
    xn = (train - mean.reshape(1, 2, 4, 1)) / std.reshape(1, 2, 4, 1)
    got = np.concatenate(seen)
    assert got.shape == (2 * len(train), 2 * 4 * 5)
    assert len(train) == 8 and [len(b) for b in seen] == [4, 4, 4, 4]  # 16 units, balanced
    np.testing.assert_allclose(sort_rows(got), sort_rows(halves(xn)), atol=1e-4)


def test_scores_and_codes_are_means_over_units(tmp_path):
    ids, x = write_features(tmp_path / "f.h5", n=12)
    settings = make_settings(arch=KIND, hidden=(8,), latent=4, epochs=2, batch_size=4,
                                normalize="per-feature", seed=1)
    tr.train(tmp_path / "f.h5", tmp_path / "m.safetensors", settings, data_mode="memory")
    r = CliRunner().invoke(eval_cli, [str(tmp_path / "m.safetensors"), str(tmp_path / "f.h5"),
                                      "--scores", str(tmp_path / "scores.csv")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(encode_cli, [str(tmp_path / "m.safetensors"), str(tmp_path / "f.h5"),
                                        "-o", str(tmp_path / "z.h5")])
    assert r.exit_code == 0, r.output

    # Oracle: the network applied by hand to the two halves, errors de-normalized to dB.
    lm = load_model(tmp_path / "m.safetensors")
    mean = lm.normalizer.mean.numpy().reshape(1, 2, 4, 1)
    std = lm.normalizer.std.numpy().reshape(1, 2, 4, 1)
    u = torch.from_numpy(halves((x - mean) / std))  # [2N, D]
    std_u = halves(np.broadcast_to(std, (1, *x.shape[1:])).copy())[0]
    with torch.no_grad():
        rec, z = lm.model.dec(lm.model.enc(u)), lm.model.enc(u)
    err = (rec - u).numpy() * std_u  # dB
    n = len(x)
    mse = ((err ** 2).mean(1)[:n] + (err ** 2).mean(1)[n:]) / 2
    mae = (np.abs(err).mean(1)[:n] + np.abs(err).mean(1)[n:]) / 2
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert scores["id"].tolist() == ids
    np.testing.assert_allclose(scores["mse"], mse, rtol=1e-4)
    np.testing.assert_allclose(scores["mae"], mae, rtol=1e-4)
    codes = (z.numpy()[:n] + z.numpy()[n:]) / 2
    np.testing.assert_allclose(LatentsFile(tmp_path / "z.h5").latents, codes, rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("data", ["memory", "stream"])
def test_resume_mid_epoch_counts_units(tmp_path, data):
    ids, x = write_features(tmp_path / "f.h5", n=15)
    s = make_settings(arch=KIND, hidden=(8,), latent=4, epochs=2, batch_size=4, seed=5)
    kw = dict(data_mode=data, workers=0)
    tr.train(tmp_path / "f.h5", tmp_path / "a.safetensors", s, **kw)
    steps = []
    with pytest.raises(tr.Preempted):
        tr.train(tmp_path / "f.h5", tmp_path / "b.safetensors", s, on_step=steps.append,
                 stop_requested=lambda: len(steps) == 5, **kw)  # step 5 of 8 (30 units / 4)
    ck = tr.load_checkpoint(tmp_path / "b.safetensors.ckpt" / "last.pt")
    assert (ck["epoch"], ck["step"], ck["epoch_rows"]) == (0, 5, 20)
    assert sorted(ck["perm"].tolist()) == list(range(30))  # a permutation of units
    tr.train(tmp_path / "f.h5", tmp_path / "b.safetensors", s, resume=True, **kw)
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
