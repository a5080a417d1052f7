"""Issue 19, item 1: the DCASE feature presets compute what the official baselines compute.

The reference below is an independent numpy reimplementation of the baselines' front end
(librosa.feature.melspectrogram with its defaults, then 20/power * log10 guarded by
sys.float_info.epsilon), written from librosa's documented algorithm, not copied:
- librosa.filters.mel: Slaney Mel scale (htk=False: linear below 1 kHz, logarithmic above),
  triangles over the FFT bin frequencies, norm='slaney' (each divided by its width / 2);
- librosa.stft: centred frames (n_fft // 2 of padding each side: 'reflect' in librosa 0.6.0,
  zeros from 0.9.0 on), periodic Hann window, rfft, |X| ** power.
"""

import math
import sys
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from aekit.data import store
from aekit.cmds.featurize import cli as featurize_cli
from aekit.audio.features import MelParams
from aekit.evaluate.scoring import model_params
from conftest import PARAMS

SR = 16000


def slaney_hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = math.log(6.4) / 27.0
    return np.where(f >= min_log_hz,
                    min_log_hz / f_sp + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep,
                    f / f_sp)


def slaney_mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def baseline_log_mel(y, n_fft, hop, n_mels, pad_mode, guard):
    """[n] float32 samples -> [n_mels, frames] dB, as the DCASE baselines' common.py does."""
    freqs = np.linspace(0.0, SR / 2, 1 + n_fft // 2)
    mel_f = slaney_mel_to_hz(np.linspace(slaney_hz_to_mel(0.0), slaney_hz_to_mel(SR / 2),
                                         n_mels + 2))
    widths = np.diff(mel_f)
    ramps = mel_f[:, None] - freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]  # Slaney area normalization
    padded = np.pad(y.astype(np.float64), n_fft // 2, mode=pad_mode)
    n_frames = 1 + (len(padded) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = padded[np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]]
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # [T, F]
    mel = weights @ power.T  # [M, T]
    eps = sys.float_info.epsilon
    guarded = mel + eps if guard == "add" else np.maximum(mel, eps)
    return 20.0 / 2.0 * np.log10(guarded)


# The official baselines (README "DCASE feature presets"): n_mels, centre padding, guard.
OFFICIAL = {"dcase2020": (64, "reflect", "add"),       # 2020 baseline, librosa 0.6.0
            "dcase2021": (128, "reflect", "clamp"),    # 2021 AE baseline, librosa 0.6.0
            "dcase2022": (128, "constant", "clamp")}   # 2022 AE baseline, librosa 0.9.1


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two 10 s 16-bit clips: tones over noise loud to both ends (the centre padding shows in
    the first and last frames), and one with 1.5 s of digital silence inside (the log guard:
    -156.5 dB in the baselines, not -100)."""
    root = tmp_path_factory.mktemp("dcase")
    rng = np.random.default_rng(19)
    t = np.arange(10 * SR) / SR
    a = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t) \
        + 0.05 * rng.standard_normal(t.size)
    b = 0.3 * rng.standard_normal(t.size) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
    b[4 * SR:int(5.5 * SR)] = 0.0
    for name, y in (("a", a), ("b", b)):
        sf.write(str(root / f"{name}.wav"), np.clip(y, -1, 1).astype(np.float32), SR,
                 subtype="PCM_16")
    return root


def featurize(args):
    return CliRunner().invoke(featurize_cli, args, catch_exceptions=False)


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_preset_equals_the_official_front_end(preset, clips, tmp_path):
    out = tmp_path / "f.h5"
    r = featurize([str(clips), "-o", str(out), "--preset", preset, "-j", "1", "-q"])
    assert r.exit_code == 0, r.output
    n_mels, pad_mode, guard = OFFICIAL[preset]
    with h5py.File(out) as f:
        ids = [s.decode() for s in f["ids"][()]]
        x = f["features"][()]
        attrs = dict(f.attrs)
    assert ids == ["a", "b"] and x.shape == (2, 1, n_mels, 10 * SR // 512 + 1)
    assert (attrs["mel_scale"], attrs["mel_norm"], attrs["pad_mode"], attrs["amin"],
            attrs["amin_mode"], attrs["top_db"]) == ("slaney", "slaney", pad_mode,
                                                     sys.float_info.epsilon, guard, "none")
    for k, name in enumerate(ids):
        y, sr = sf.read(str(clips / f"{name}.wav"), dtype="float32")
        assert sr == SR
        ref = baseline_log_mel(y, 1024, 512, n_mels, pad_mode, guard)
        assert np.abs(x[k, 0] - ref).max() < 1e-3, (preset, name)
    # digital silence is the baselines' guard, 10 log10(eps) = -156.5 dB, in every band
    assert np.abs(x[1, 0].min() - 10 * math.log10(sys.float_info.epsilon)) < 1e-3
    # and the other padding mode is visibly not the baseline's (the first and last frames)
    other = baseline_log_mel(np.asarray(sf.read(str(clips / "a.wav"), dtype="float32")[0]),
                             1024, 512, n_mels, "constant" if pad_mode == "reflect" else "reflect",
                             guard)
    assert np.abs(x[0, 0] - other).max() > 1.0


def test_later_years_and_the_default_front_end(clips, tmp_path):
    """2023-2025 share one baseline (same yaml and loader as 2022's front end); aekit's own
    default front end (HTK, no norm, -100 dB guard) is not the baseline's."""
    for year in (2023, 2024, 2025):
        assert MelParams.PRESETS[f"dcase{year}"] == MelParams.PRESETS["dcase2022"]
    assert MelParams.from_preset("dcase2020").n_mels == 64
    out = tmp_path / "d.h5"
    r = featurize([str(clips), "-o", str(out), "--preset", "dcase2020", "--mel-scale", "htk",
                   "--mel-norm", "none", "--amin", "1e-10", "--amin-mode", "clamp", "-j", "1",
                   "-q"])
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        x = f["features"][0, 0]
        assert (f.attrs["mel_scale"], f.attrs["mel_norm"], f.attrs["amin"]) == (
            "htk", "none", 1e-10)
    y = sf.read(str(clips / "a.wav"), dtype="float32")[0]
    assert np.abs(x - baseline_log_mel(y, 1024, 512, 64, "reflect", "add")).mean() > 10
    for bad in (["--mel-norm", "area"], ["--pad-mode", "edge"], ["--amin-mode", "max"],
                ["--amin", "1e-300"], ["--amin", "0"], ["--amin", "2"]):
        # a guard below float32's smallest normal number is 0 in float32: silence = -inf dB
        r = featurize([str(clips), "-o", str(tmp_path / "bad.h5"), *bad])
        assert r.exit_code == 2 and not (tmp_path / "bad.h5").exists(), bad


def test_files_without_the_new_attributes_read_as_before(tmp_path):
    """A features file (or a model) written before mel_norm, pad_mode, amin and amin_mode
    existed was computed with HTK, no norm, reflect padding and max(power, 1e-10): it stays
    compatible with today's default parameters and incompatible with a DCASE preset's."""
    path = tmp_path / "old.h5"
    old = {**PARAMS, "channels": 2, "n_mels": 4, "num_samples": 9 * 256, "f_max": 8000.0}
    assert "mel_norm" not in old and "pad_mode" not in old and "amin" not in old
    w = store.FeatureWriter(path, dict(old), (2, 4, 10))
    w.append(np.full((1, 2, 4, 10), -40, np.float32), ["c"], ["c.wav"],
             {k: np.zeros(1) for k in store.PER_CLIP})
    w.close()
    ff = store.FeatureFile(path)
    try:
        got = ff.params
    finally:
        ff.close()
    now = MelParams(sample_rate=16000, num_samples=9 * 256, n_fft=1024, hop_length=256,
                    n_mels=4, channels=2)
    assert store.params_mismatch(got, now.to_attrs()) == []
    slaney = MelParams.from_preset(None, **{**{k: getattr(now, k) for k in
                                               ("sample_rate", "num_samples", "n_fft",
                                                "hop_length", "n_mels", "channels")},
                                            "mel_norm": "slaney", "pad_mode": "constant"})
    assert store.params_mismatch(got, slaney.to_attrs()) == ["pad_mode=reflect vs constant",
                                                             "mel_norm=None vs slaney"]
    # a guard of 2.2e-16 is not 1e-10 (no absolute tolerance hides it)
    eps = MelParams(**{**{k: getattr(now, k) for k in ("sample_rate", "num_samples", "n_fft",
                                                      "hop_length", "n_mels", "channels")},
                       "amin": sys.float_info.epsilon})
    assert store.params_mismatch(got, eps.to_attrs()) == [
        f"amin=1e-10 vs {sys.float_info.epsilon}"]
    # a model recording the old parameter set gives the old front end back
    model = SimpleNamespace(info={}, path=None, feature_params=dict(got),
                            input_shape=(2, 4, 10))
    p = model_params(model)
    assert (p.mel_scale, p.mel_norm, p.pad_mode, p.amin, p.amin_mode) == (
        "htk", None, "reflect", 1e-10, "clamp")


def test_featurize_warns_with_the_padded_share(tmp_path):
    """Clips shorter than --num-samples are zero-padded: ae-featurize says how many and what
    share of all samples written is padding; a run without short clips says nothing."""
    d = tmp_path / "a"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("long", 12_000), ("full", 8_000), ("short", 5_000), ("tiny", 2_000)):
        sf.write(str(d / f"{name}.wav"), (0.1 * rng.standard_normal(n)).astype(np.float32), SR)
    r = featurize([str(d), "-o", str(tmp_path / "f.h5"), "--num-samples", "8000", "-j", "1",
                   "-q"])
    assert r.exit_code == 0, r.output
    share = (3_000 + 6_000) / (4 * 8_000)  # 28.1 %
    assert (f"2 of 4 clip(s) are shorter than --num-samples 8000 (0.5 s) and were zero-padded "
            f"to it: padding is {100 * share:.1f}% of all samples written") in r.stderr
    with h5py.File(tmp_path / "f.h5") as f:
        assert sorted(f["valid_samples"][()].tolist()) == [2_000, 5_000, 8_000, 8_000]
    (d / "short.wav").unlink()
    (d / "tiny.wav").unlink()
    r = featurize([str(d), "-o", str(tmp_path / "g.h5"), "--num-samples", "8000", "-j", "1",
                   "-q"])
    assert r.exit_code == 0 and "zero-padded" not in r.stderr
