"""Feature kinds (issue 21): one registry, a second real kind (linear-frequency log power) end to
end, and the README's "How to add a feature kind" followed literally with a throwaway kind."""

from __future__ import annotations

import csv
import importlib
import io
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import exe, invoke, one_error_line, write_tone

# linear kind on 2304-sample mono clips: n_fft 256 at 16 kHz is 62.5 Hz per bin; 500..2000 Hz
# keeps bins 8..32 (25 rows); 2304 // 128 + 1 = 19 frames
LINEAR = ["--kind", "linear", "--num-samples", "2304", "--n-fft", "256", "--hop-length", "128",
          "--f-min", "500", "--f-max", "2000", "--channels", "1", "--top-db", "60"]
LINEAR_SHAPE = (1, 25, 19)
TINY = ["--hidden", "16,8", "--latent", "4", "--epochs", "2", "--batch-size", "4", "-q"]
N_CLIPS = 8


def cli(name: str):
    return importlib.import_module(f"aekit.cmds.{name}").cli


def rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kinds") / "a"
    for i in range(N_CLIPS):
        write_tone(root / f"c{i}.wav", sr=16000 if i % 2 else 22050, seconds=0.2,
                   freq=600 + 90 * i, seed=i)
    return root


@pytest.fixture(scope="module")
def linear_features(audio) -> Path:
    out = audio.parent / "lin.h5"
    r = invoke(cli("featurize"), [audio, "-o", out, "-j", "1", "-q", *LINEAR])
    assert r.exit_code == 0, r.stderr
    return out


# --------------------------------------------------------------------------- the linear kind

def reference_linear_db(x: np.ndarray, sr: int, n_fft: int, hop: int, f_min: float, f_max: float,
                        top_db: float) -> np.ndarray:
    """numpy, float64, written from the definition: reflect-padded centred frames, periodic
    Hann window, |rfft|^2 of the bins within [f_min, f_max], 10 log10(max(p, 1e-10)), floor at
    the clip's maximum - top_db."""
    pad = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    frames = 1 + (pad.size - n_fft) // hop
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    spec = np.stack([np.fft.rfft(pad[t * hop:t * hop + n_fft] * win) for t in range(frames)], 1)
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    keep = (freqs >= f_min) & (freqs <= f_max)
    db = 10 * np.log10(np.maximum(np.abs(spec[keep]) ** 2, 1e-10))
    return np.maximum(db, db.max() - top_db)


def test_linear_features_equal_an_independent_stft(audio, linear_features):
    import soundfile as sf

    from aekit.data.store import FeatureFile

    with FeatureFile(linear_features) as ff:
        assert ff.kind == "linear" and ff.clip_shape == LINEAR_SHAPE
        assert ff.params["kind"] == "linear" and ff.params["f_max"] == 2000.0
        assert "n_mels" not in ff.params and "n_mels" not in ff.attrs
        got = ff.read(np.array([ff.ids.index("c1")]))[0, 0]  # a 16 kHz clip: no resampling
    x, sr = sf.read(str(audio / "c1.wav"), dtype="float32")
    want = reference_linear_db(x[:2304], sr, 256, 128, 500.0, 2000.0, 60.0)
    assert want.shape == LINEAR_SHAPE[1:]
    # float32 STFT against float64: within 1e-3 dB (measured: at most 1.7e-4) over a 60 dB range
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
    assert got.max() - got.min() == pytest.approx(60.0, abs=1e-4)  # the floor is in play


@pytest.fixture(scope="module")
def splits(linear_features) -> Path:
    out = linear_features.parent / "splits.csv"
    r = invoke(cli("split"), [linear_features, "--folds", "2", "--test-ratio", "0.25",
                              "-o", out, "-q"])
    assert r.exit_code == 0, r.stderr
    return out


def trained(linear_features, splits, arch: str) -> Path:
    model = linear_features.parent / f"{arch}.safetensors"
    if not model.exists():
        r = invoke(cli("train"), [linear_features, "-o", model, "--arch", arch,
                                  "--splits", splits, "--fold", "0", *TINY])
        assert r.exit_code == 0, r.stderr
    return model


@pytest.mark.parametrize("arch", ["baseline", "frames"])  # an MLP and the frames model
def test_linear_end_to_end_split_train_eval_score(audio, linear_features, splits, arch):
    from aekit.data.store import FeatureFile

    d = linear_features.parent
    with FeatureFile(linear_features) as ff:
        ids = list(ff.ids)
    model = trained(linear_features, splits, arch)
    scores = d / f"{arch}.scores.csv"
    r = invoke(cli("eval"), [model, linear_features, "--scores", scores,
                             "-o", d / f"{arch}.json", "-q"])
    assert r.exit_code == 0, r.stderr
    table = rows(scores.read_text())
    col = next(c for c in ("mse", "mahalanobis") if c in table[0])
    want = {row["id"]: float(row[col]) for row in table}
    assert sorted(want) == sorted(ids)
    # ae-score takes the kind (and every parameter) from the model file
    r = invoke(cli("score"), [model, audio, "-j", "1", "--score", col])
    assert r.exit_code == 0, r.stderr
    got = {row["id"]: float(row["score"]) for row in rows(r.stdout)}
    assert sorted(got) == sorted(ids)
    # ae-eval writes %.6g
    np.testing.assert_allclose([got[k] for k in ids], [want[k] for k in ids], rtol=1e-5)


def test_linear_shards_merge_and_other_kinds_shards_are_refused(audio, tmp_path):
    from aekit.data.store import FeatureFile

    for i in range(2):
        r = invoke(cli("featurize"), [audio, "-o", tmp_path / f"s{i}.h5", "-j", "1", "-q",
                                      "--shard", f"{i}/2", *LINEAR])
        assert r.exit_code == 0, r.stderr
    r = invoke(cli("merge"), [tmp_path / "s0.h5", tmp_path / "s1.h5", "-o", tmp_path / "m.h5"])
    assert r.exit_code == 0, r.stderr
    with FeatureFile(tmp_path / "m.h5") as ff:
        assert ff.kind == "linear" and len(ff) == N_CLIPS and ff.clip_shape == LINEAR_SHAPE
        assert ff.attrs["f_min"] == 500.0 and ff.attrs["n_fft"] == 256
    # the same run's shard 1 as log-Mel: the kinds differ
    mel = ["--num-samples", "2304", "--n-mels", "4", "--channels", "1"]
    r = invoke(cli("featurize"), [audio, "-o", tmp_path / "x1.h5", "-j", "1", "-q",
                                  "--shard", "1/2", *mel])
    assert r.exit_code == 0, r.stderr
    r = invoke(cli("merge"), [tmp_path / "s0.h5", tmp_path / "x1.h5", "-o", tmp_path / "n.h5"])
    assert "kind=linear vs logmel" in one_error_line(r)
    assert not (tmp_path / "n.h5").exists()


def test_options_of_another_kind_and_empty_bands_are_refused(audio, tmp_path):
    out = tmp_path / "f.h5"
    r = invoke(cli("featurize"), [audio, "-o", out, *LINEAR, "--n-mels", "8"])
    assert one_error_line(r) == ("ae-featurize: error: --n-mels is not a parameter of feature "
                                 "kind linear (--kind)")
    r = invoke(cli("featurize"), [audio, "-o", out, *LINEAR, "--preset", "dcase2020"])
    assert one_error_line(r) == ("ae-featurize: error: --preset dcase2020 is not a preset of "
                                 "feature kind linear (it has none)")
    r = invoke(cli("featurize"), [audio, "-o", out, *LINEAR[:-6], "--f-min", "510",
                                  "--f-max", "560"])  # between bins 8 (500 Hz) and 9 (562.5 Hz)
    assert one_error_line(r) == ("ae-featurize: error: --f-max: no FFT bin lies between f_min "
                                 "510 Hz and f_max 560 Hz at n_fft 256 and sample_rate 16000 "
                                 "(bins are 62.5 Hz apart)")
    assert not out.exists()


def test_bin_range_is_exact_at_the_edges():
    from aekit.audio.linear import LinearParams

    p = LinearParams(sample_rate=16000, num_samples=2304, n_fft=256, hop_length=128, f_min=500,
                     f_max=2000)
    assert p.bin_range == (8, 33) and p.clip_shape == (2, 25, 19)
    assert LinearParams(sample_rate=16000, num_samples=2304, n_fft=256).bin_range == (0, 129)
    q = LinearParams(sample_rate=22050, num_samples=4096, n_fft=1000, f_min=22.05, f_max=44.1)
    assert q.bin_range == (1, 3)  # 22.05 Hz = bin 1 and 44.1 Hz = bin 2 exactly, both kept
    assert LinearParams().to_attrs()["f_max"] == 8000.0  # the Nyquist default, resolved


def test_audio_is_conditioned_once_for_files_and_arrays(audio, linear_features, splits):
    """score_array's clips are exactly the files' (one conditioning function): same scores."""
    import soundfile as sf

    import aekit
    from aekit.audio.decode import condition, load_clip

    x, sr = sf.read(str(audio / "c0.wav"), dtype="float32")  # 22.05 kHz mono
    clip = load_clip(audio / "c0.wav", 16000, 2304, 2, "first")
    y, kept, cut = condition(x[:, None], sr, 16000, 2304, 2, "first")
    assert np.array_equal(clip.samples, y) and kept == 2304 and not cut
    model = trained(linear_features, splits, "baseline")
    want = next(aekit.score_files(model, [audio / "c0.wav"], jobs=1)).score
    got = aekit.score_array(model, x[None, None], sample_rate=sr)[0]
    assert got == pytest.approx(want, rel=1e-6)


# --------------------------------------------------------------------------- a throwaway kind

THROWAWAY = '''
"""A throwaway feature kind: the log energy of each frame in a few equal time slices."""

from dataclasses import dataclass
from typing import ClassVar

from aekit.audio.params import ClipParams, param


@dataclass(frozen=True, kw_only=True)
class SliceParams(ClipParams):
    kind: ClassVar[str] = "throwaway"

    slices: int = param(6, "Time slices per clip.", min=1)
    floor_db: float = param(-100.0, "Lowest level (dB).")

    @property
    def clip_shape(self):
        return (self.channels, 1, self.slices)

    def frontend(self, device="cpu"):
        return SliceFrontend(self)


class SliceFrontend:
    def __init__(self, params):
        self.params = params

    def warm_up(self):
        pass

    def __call__(self, wave):
        import torch

        p = self.params
        single = wave.dim() == 2
        x = wave.unsqueeze(0) if single else wave
        b, c, n = x.shape
        parts = x[..., : n - n % p.slices].reshape(b, c, p.slices, -1)
        db = 10 * torch.log10(parts.square().mean(-1) + 1e-10).clamp(min=p.floor_db)
        db = db.unsqueeze(2)  # [B, C, 1, slices]
        return db[0] if single else db
'''


def test_a_throwaway_kind_is_one_module_and_one_registration(audio, tmp_path, monkeypatch):
    from aekit.audio import kinds
    from aekit.data.store import FeatureFile

    (tmp_path / "throwaway_kind.py").write_text(textwrap.dedent(THROWAWAY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(kinds, "FEATURE_KINDS", dict(kinds.FEATURE_KINDS))  # undone afterwards
    module = importlib.import_module("throwaway_kind")  # the one new module
    kinds.register(module.SliceParams)  # the one registration
    try:
        feats = tmp_path / "t.h5"
        r = invoke(cli("featurize"), [audio, "-o", feats, "-j", "1", "-q", "--kind", "throwaway",
                                      "--num-samples", "2400", "--slices", "6", "--channels", "1"])
        assert r.exit_code == 0, r.stderr
        with FeatureFile(feats) as ff:
            assert ff.kind == "throwaway" and ff.clip_shape == (1, 1, 6)
            assert ff.params == {"kind": "throwaway", "sample_rate": 16000, "num_samples": 2400,
                                 "channels": 1, "channel_policy": "first", "slices": 6,
                                 "floor_db": -100.0}
            row = ff.read(np.array([ff.ids.index("c1")]))[0, 0, 0]
        import soundfile as sf

        x, _ = sf.read(str(audio / "c1.wav"), dtype="float64")
        want = 10 * np.log10((x[:2400].reshape(6, 400) ** 2).mean(1) + 1e-10)
        np.testing.assert_allclose(row, want, rtol=0, atol=1e-4)
        # another kind's option is refused for it
        r = invoke(cli("featurize"), [audio, "-o", tmp_path / "u.h5", "--kind", "throwaway",
                                      "--n-fft", "512"])
        assert "--n-fft is not a parameter of feature kind throwaway" in one_error_line(r)
        model = tmp_path / "m.safetensors"
        r = invoke(cli("train"), [feats, "-o", model, "--arch", "baseline", *TINY])
        assert r.exit_code == 0, r.stderr
        r = invoke(cli("score"), [model, audio, "-j", "1"])
        assert r.exit_code == 0, r.stderr
        got = rows(r.stdout)
        assert len(got) == N_CLIPS and all(float(row["score"]) >= 0 for row in got)
    finally:
        sys.modules.pop("throwaway_kind", None)


def test_a_linear_file_whose_parameters_disagree_with_its_data_is_refused(linear_features, tmp_path):
    import shutil

    import h5py

    from aekit.data.store import FeatureFile, meta_sha256
    from aekit.data.integrity import _StringsHash, _failed_digest
    from aekit.errors import InputError

    p = tmp_path / "bad.h5"
    shutil.copy(linear_features, p)
    with FeatureFile(p) as ff:
        ids, paths, fails = ff.ids, ff.paths, ff.failures()
    with h5py.File(p, "a") as f:  # f_max 1900 Hz keeps bins 8..30: 23 rows, the data has 25
        f.attrs["f_max"] = 1900.0
        f.attrs["meta_sha256"] = meta_sha256(f.attrs, _StringsHash().update(ids).digest(),
                                             _StringsHash().update(paths).digest(),
                                             _failed_digest([a for a, _ in fails],
                                                            [b for _, b in fails]))
    with pytest.raises(InputError, match=r"bad.h5: its linear parameters give clips 1x23x19 but "
                                         r"the data has 1x25x19; the file is damaged"):
        FeatureFile(p)


def test_an_installed_package_adds_a_kind_by_entry_point(audio, tmp_path):
    """The registration of a kind in another package is one entry point: the installed
    ae-featurize finds it (and logs, not fails on, a broken one)."""
    import os
    import subprocess

    site = tmp_path / "site"
    site.mkdir()
    (site / "throwaway_ep21.py").write_text(textwrap.dedent(THROWAWAY))
    dist = site / "throwaway_ep21-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: throwaway-ep21\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[aekit.feature_kinds]\nthrowaway = throwaway_ep21:SliceParams\n"
        "broken = no_such_module_21:Nothing\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    feats = tmp_path / "t.h5"
    p = subprocess.run([exe("ae-featurize"), str(audio), "-o", str(feats), "-j", "1",
                        "--kind", "throwaway", "--num-samples", "2400", "--slices", "3",
                        "--channels", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "entry point broken = no_such_module_21:Nothing not loaded" in p.stderr
    from aekit.data.store import FeatureFile

    with FeatureFile(feats) as ff:
        assert (ff.kind, ff.clip_shape) == ("throwaway", (1, 1, 3))
