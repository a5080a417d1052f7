"""MelFrontend against the tutorial's torchaudio pipeline; shapes; per-clip top_db."""

import pytest
import torch

from aekit.errors import InputError
from aekit.audio.features import MelFrontend, MelParams, tutorial_features


def test_default_shape_is_the_tutorials():
    p = MelParams()
    assert p.clip_shape == (2, 32, 391)
    assert p.frames == 391
    assert MelFrontend(p)(torch.zeros(2, 100_000)).shape == (2, 32, 391)


@pytest.mark.parametrize("scale", [1e-4, 0.1, 1.0])
def test_equals_tutorial_pipeline(scale):
    p = MelParams()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, p.num_samples, generator=g) * scale
    ours = MelFrontend(p)(x)
    ref = tutorial_features(x, p.sample_rate, p)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 0.01


def test_top_db_is_per_clip_in_a_batch():
    """A quiet clip next to a loud one must get the floor of its own maximum."""
    p = MelParams(num_samples=8000)
    g = torch.Generator().manual_seed(1)
    loud = torch.randn(2, p.num_samples, generator=g)
    quiet = torch.randn(2, p.num_samples, generator=g) * 1e-5
    fe = MelFrontend(p)
    batch = fe(torch.stack([loud, quiet]))
    for i, clip in enumerate((loud, quiet)):
        ref = tutorial_features(clip, p.sample_rate, p)
        assert (batch[i] - ref).abs().max().item() < 0.01
        assert batch[i].max() - batch[i].min() <= p.top_db + 1e-4


def test_floor_spans_channels_of_one_clip():
    """AmplitudeToDB on one [C, M, T] clip takes one floor across channels."""
    p = MelParams(num_samples=8000)
    x = torch.stack([torch.randn(p.num_samples), torch.randn(p.num_samples) * 1e-6])
    db = MelFrontend(p)(x)
    assert db[1].min() == pytest.approx(db.max().item() - 80.0, abs=1e-3)
    assert (db - tutorial_features(x, p.sample_rate, p)).abs().max().item() < 0.01


def test_other_parameters_match_tutorial_transforms():
    p = MelParams(sample_rate=22050, num_samples=30000, n_fft=512, hop_length=128, n_mels=64, channels=1)
    x = torch.randn(1, p.num_samples) * 0.3
    assert (MelFrontend(p)(x) - tutorial_features(x, p.sample_rate, p)).abs().max().item() < 0.01
    assert MelFrontend(p)(x).shape == p.clip_shape


@pytest.mark.parametrize("kwargs", [
    {"n_mels": 0}, {"hop_length": 0}, {"num_samples": 100}, {"top_db": -1.0},
    {"f_max": 9000.0}, {"channel_policy": "average"},
])
def test_bad_parameters_are_input_errors(kwargs):
    with pytest.raises(InputError):
        MelParams(**kwargs)


def test_attrs_roundtrip():
    p = MelParams(sample_rate=8000, num_samples=20000)
    a = p.to_attrs()
    assert a["f_max"] == 4000.0 and a["window"] == "hann" and a["mel_scale"] == "htk"
    assert MelParams.from_attrs(a).clip_shape == p.clip_shape


# --------------------------------------------------------------------------- one list of parameters

def test_parameter_dataclass_is_the_one_list():
    from dataclasses import fields

    from aekit.data import store
    from aekit.cmds.featurize import cli

    names = [f.name for f in fields(MelParams)]
    assert set(store.FEATURE_PARAM_KEYS) == {*names, *MelParams.FIXED}
    from aekit.cmds.common import feature_params_from
    from aekit.audio.params import UNSET

    opts = {p.name: p for p in cli.params}
    for f in fields(MelParams):  # every parameter is an option showing the dataclass default
        # (the option's own default is UNSET, so that --preset wins over an untyped default)
        assert opts[f.name].default is UNSET, f.name
        shown = "none" if f.default is None else f"{f.default:g}" if isinstance(
            f.default, float) else str(f.default)
        assert f"[default: {f.metadata['default_help'] or shown}]" in opts[f.name].help, f.name
    # no option given, no preset: exactly the dataclass defaults
    untyped = {f.name: UNSET for f in fields(MelParams)}
    assert feature_params_from({**untyped, "feature_preset": None}) == MelParams()
    assert set(MelParams().to_attrs()) == set(store.FEATURE_PARAM_KEYS)


def test_files_record_their_kind_and_old_files_read_as_logmel(tmp_path):
    import h5py
    from conftest import write_features

    from aekit.data import store

    write_features(tmp_path / "f.h5", n=3)
    with store.FeatureFile(tmp_path / "f.h5") as ff:
        assert ff.kind == "logmel" and "kind" not in ff.params
        params = ff.params
    with h5py.File(tmp_path / "f.h5", "a") as f:
        del f.attrs["kind"]  # as written before kinds existed (format 1, without hashes)
        f.attrs["format_version"] = 1
        del f.attrs["meta_sha256"], f.attrs["features_sha256"]
    with store.FeatureFile(tmp_path / "f.h5") as ff:
        assert ff.kind == "logmel" and ff.params == params


def test_a_second_kind_is_a_registration_and_is_checked(tmp_path, monkeypatch):
    from dataclasses import dataclass
    from typing import ClassVar

    from conftest import write_features

    from aekit.audio import kinds
    from aekit.data import store

    @dataclass(frozen=True)
    class ToyParams:
        kind: ClassVar[str] = "toy"
        FIXED: ClassVar[dict] = {}
        bands: int = 4

        @classmethod
        def keys(cls):
            return ("bands",)

    monkeypatch.setitem(kinds.FEATURE_KINDS, "toy", ToyParams)
    write_features(tmp_path / "f.h5", n=3, params={"kind": "toy", "bands": 4})
    with store.FeatureFile(tmp_path / "f.h5") as ff:
        assert ff.kind == "toy"
        assert ff.params == {"kind": "toy", "bands": 4}
        logmel = dict(MelParams().to_attrs())
        diffs = store.params_mismatch(ff.params, logmel)
    assert "kind=toy vs logmel" in diffs and "bands=4 vs None" in diffs
    assert "n_mels=None vs 32" in diffs  # a key only one side has is a difference


def test_unknown_kind_is_refused(tmp_path):
    from conftest import write_features

    from aekit.data import store
    from aekit.errors import InputError

    write_features(tmp_path / "f.h5", n=3, params={"kind": "nope"})
    with store.FeatureFile(tmp_path / "f.h5") as ff, pytest.raises(InputError, match="unknown feature kind"):
        ff.params
