"""Wrong data never passes silently: damaged features files, NaN/Inf rows, damaged model files,
shards of another input list, degenerate Mel settings, truncated audio, dangling symlinks,
and ae-train runs that look fine but are not (tiny inputs only)."""

import os
import subprocess

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from aekit.data import merge, store
from aekit.train import loop as tr
from aekit.cmds.encode import cli as encode_cli
from aekit.cmds.eval import cli as eval_cli
from aekit.cmds.featurize import cli as featurize_cli
from aekit.cmds.merge import cli as merge_cli
from aekit.cmds.train import cli as train_cli
from aekit.errors import InputError
from aekit.audio.features import MelParams, empty_mel_filters, max_mel_bands, min_n_fft
from aekit.models.modelfile import Normalizer, load_model, save_model
from aekit.models.mlp import AEConfig
from aekit.models.registry import build_model
from conftest import (PARAMS, SHAPE, exe, invoke, noise_clips, one_error_line, write_features,
                      write_model as _write_model, write_tone)

SMALL = ["--num-samples", "8000", "--jobs", "1"]


def write_model(path, x):
    """conftest.write_model: a 16-8-4 model without a training history."""
    _write_model(path, x, hidden=(16, 8), latent=4, history=None)




# --------------------------------------------------------------------------- NaN / Inf rows

def test_nan_and_inf_rows_are_refused_by_encode_and_eval(tmp_path):
    x = np.random.default_rng(0).normal(-40, 6, (24, *SHAPE)).astype(np.float32)
    write_model(tmp_path / "m.safetensors", x)  # a model fitted on clean data
    x[5, 0, 1, 2] = np.nan
    x[9, 1, 0, 0] = np.inf
    write_features(tmp_path / "f.h5", x=x)
    r = invoke(encode_cli, [tmp_path / "m.safetensors", tmp_path / "f.h5", "-o", tmp_path / "z.h5"])
    line = one_error_line(r)
    assert "2 clip(s) contain NaN or Inf" in line and "clip005, clip009" in line, line
    assert not (tmp_path / "z.h5").exists()
    r = invoke(eval_cli, [tmp_path / "m.safetensors", tmp_path / "f.h5", "-o", tmp_path / "r.json"])
    assert "clip005" in one_error_line(r)
    assert not (tmp_path / "r.json").exists()


def test_latents_are_checksummed(tmp_path):
    _, x = write_features(tmp_path / "f.h5", x=noise_clips(24))
    write_model(tmp_path / "m.safetensors", x)
    r = invoke(encode_cli, [tmp_path / "m.safetensors", tmp_path / "f.h5", "-o", tmp_path / "z.h5"])
    assert r.exit_code == 0, r.stderr
    with h5py.File(tmp_path / "z.h5") as f:
        assert f["latents"].fletcher32 and f["latents"].shape == (24, 4)


def test_only_rows_read_are_checked(tmp_path):
    x = np.random.default_rng(0).normal(-40, 6, (24, *SHAPE)).astype(np.float32)
    x[7, 0, 0, 0] = -np.inf
    write_features(tmp_path / "f.h5", x=x)
    with store.FeatureFile(tmp_path / "f.h5") as ff:
        np.testing.assert_array_equal(ff.read([3, 1, 20]), x[[3, 1, 20]])
        with pytest.raises(InputError, match="clip007"):
            ff.read([20, 7])
        with pytest.raises(InputError, match="1 clip"):
            list(ff.iter_blocks(block=5))


def test_huge_finite_values_are_not_mistaken_for_inf(tmp_path):
    from aekit.errors import InputError

    x = np.full((3, *SHAPE), 1e6, dtype=np.float32)  # each row's float32 sum is finite
    x[1] = 3e38  # finite but huge (issue 18): refused as values beyond the limit, not as Inf
    write_features(tmp_path / "f.h5", x=x)
    with store.FeatureFile(tmp_path / "f.h5") as ff:
        np.testing.assert_array_equal(ff.read([0, 2]), x[[0, 2]])  # at the limit: kept
        with pytest.raises(InputError, match=r"1 clip\(s\) contain values beyond \+-1e\+06 "
                                             r"\(not log-Mel dB: corrupt\?\): clip001"):
            ff.read()


# --------------------------------------------------------------------------- file consistency

def _dup_ids(f):
    ids = f["ids"][()]
    ids[3] = ids[1]
    f["ids"][:] = ids


def _short_ids(f):
    f["ids"].resize((20,))


def _long_per_clip(f):
    f["valid_samples"].resize((30,))


def _version(f):
    f.attrs["format_version"] = 99


def _n_mels(f):
    f.attrs["n_mels"] = 64


def _frames(f):
    f.attrs["hop_length"] = 128


def _failed(f):
    del f["failed/reasons"]
    f["failed"].create_dataset("reasons", data=np.array(["x"], dtype=object), dtype=store.STR)


@pytest.mark.parametrize("damage,msg", [
    (_dup_ids, "duplicate ids: clip001"),
    (_short_ids, "/ids has shape (20,) but /features has 24 rows"),
    (_long_per_clip, "/valid_samples has shape (30,)"),
    (_version, "unknown features format_version 99"),
    (_n_mels, "n_mels=64 disagrees with the data's shape 2x4x10"),
    (_frames, "give 19 frames but the data has 10"),
    (_failed, "/failed/paths and /failed/reasons differ"),
])
def test_inconsistent_files_are_refused_on_open(tmp_path, damage, msg):
    write_features(tmp_path / "f.h5", x=noise_clips(24))
    with h5py.File(tmp_path / "f.h5", "a") as f:
        damage(f)
    with pytest.raises(InputError, match=None) as exc:
        store.FeatureFile(tmp_path / "f.h5")
    assert msg in str(exc.value), str(exc.value)


def test_duplicate_ids_are_one_line_in_eval_with_anomaly_column(tmp_path):
    ids, x = write_features(tmp_path / "f.h5", ids=[f"c{i % 12}" for i in range(24)],
                            x=noise_clips(24))
    write_model(tmp_path / "m.safetensors", x)
    pd.DataFrame({"id": [f"c{i}" for i in range(12)], "anomaly": [0, 1] * 6}).to_csv(
        tmp_path / "labels.csv", index=False)
    r = invoke(eval_cli, [tmp_path / "m.safetensors", tmp_path / "f.h5", "--labels",
                          tmp_path / "labels.csv", "--anomaly-column", "anomaly"])
    assert "duplicate ids: c0, c1, c2 (and 9 more)" in one_error_line(r)


def test_fletcher32_detects_a_flipped_bit(tmp_path):
    _, x = write_features(tmp_path / "f.h5", x=noise_clips(24))
    with h5py.File(tmp_path / "f.h5") as f:
        assert all(f[name].fletcher32 for name in ("features", *store.PER_CLIP))
        info = f["features"].id.get_chunk_info(5)  # the chunk of clip 5 (one clip per chunk)
    with open(tmp_path / "f.h5", "r+b") as fh:
        fh.seek(info.byte_offset + 100)
        b = fh.read(1)
        fh.seek(info.byte_offset + 100)
        fh.write(bytes([b[0] ^ 0x04]))
    with store.FeatureFile(tmp_path / "f.h5") as ff:
        np.testing.assert_array_equal(ff.read([0, 4, 6]), x[[0, 4, 6]])
        with pytest.raises(InputError, match="corrupt .*Fletcher-32"):
            ff.read([5])


def test_files_without_truncated_flag_still_read_and_merge(tmp_path):
    """Version-1 files written before /truncated existed."""
    _, x = write_features(tmp_path / "f.h5", x=noise_clips(24))
    with h5py.File(tmp_path / "f.h5", "a") as f:
        del f["truncated"]
    with store.FeatureFile(tmp_path / "f.h5") as ff:
        assert ff.column("truncated").tolist() == [0] * 24
    assert merge.merge_shards([tmp_path / "f.h5"], tmp_path / "m.h5") == 24
    with store.FeatureFile(tmp_path / "m.h5") as ff:
        np.testing.assert_array_equal(ff.read(), x)


# --------------------------------------------------------------------------- model files

def _model_tensors(tmp_path):
    x = np.random.default_rng(0).normal(-40, 6, (8, *SHAPE)).astype(np.float32)
    write_model(tmp_path / "m.safetensors", x)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta = f.metadata()
    return load_file(str(tmp_path / "m.safetensors")), meta


def test_model_bit_rot_is_detected(tmp_path):
    _model_tensors(tmp_path)
    p = tmp_path / "m.safetensors"
    data = bytearray(p.read_bytes())
    data[-7] ^= 0x10  # a bit inside the last tensor's bytes
    p.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum mismatch"):
        load_model(p)


def test_model_without_hash_still_loads(tmp_path):
    import json

    tensors, meta = _model_tensors(tmp_path)
    info = json.loads(meta["aekit"])
    assert len(info.pop("tensors_sha256")) == 64
    assert len(info.pop("sha256")) == 64 and info["format_version"] == 2  # as format 1 files
    info["format_version"] = 1
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"aekit": json.dumps(info)})
    load_model(tmp_path / "old.safetensors")


@pytest.mark.parametrize("key,value,msg", [
    ("model.encoder.0.weight", float("nan"), "non-finite values .* in model.encoder.0.weight"),
    ("norm.mean", float("inf"), "non-finite values .* in norm.mean"),
    ("norm.std", 0.0, "normalizer std has 1 value"),
])
def test_unusable_weights_are_refused(tmp_path, key, value, msg):
    torch.manual_seed(0)
    model = build_model(AEConfig(input_shape=SHAPE, hidden=(16, 8), latent=4)).eval()
    norm = Normalizer("global", dim=80)
    if key.startswith("model."):
        with torch.no_grad():
            dict(model.named_parameters())[key[len("model."):]][0, 0] = value
    else:
        getattr(norm, key.split(".")[1]).fill_(value)
    save_model(tmp_path / "m.safetensors", model, norm, PARAMS)  # hash matches: refused anyway
    with pytest.raises(InputError, match=msg):
        load_model(tmp_path / "m.safetensors")


# --------------------------------------------------------------------------- ae-merge

def test_merge_refuses_shards_of_another_input_list(tmp_path):
    d = tmp_path / "audio"
    files = [write_tone(d / f"{n}.wav", seconds=0.3, freq=200 + 100 * i, seed=i)
             for i, n in enumerate("abcdef")]
    list1 = [str(p) for p in files[:4]]  # a b c d
    list2 = [str(p) for p in files[:2] + files[4:]]  # a b e f: same count, other files
    s0, s1 = tmp_path / "s0.h5", tmp_path / "s1.h5"
    assert invoke(featurize_cli, ["-", "-o", s0, *SMALL, "--shard", "0/2"],
                  input="\n".join(list1)).exit_code == 0  # a b
    assert invoke(featurize_cli, ["-", "-o", s1, *SMALL, "--shard", "1/2"],
                  input="\n".join(list2)).exit_code == 0  # e f: no id shared with s0
    r = invoke(merge_cli, [s0, s1, "-o", tmp_path / "m.h5"])
    line = one_error_line(r)
    assert f"{s1} was made from a different input list than {s0}" in line, line
    assert not (tmp_path / "m.h5").exists()
    with h5py.File(s0) as f:
        assert len(f.attrs["inputs_sha256"]) == 64 and f.attrs["num_inputs"] == 4


# --------------------------------------------------------------------------- Mel settings

def test_largest_working_n_mels_is_exact():
    p = MelParams(n_fft=256, n_mels=64)
    best = max_mel_bands(p)
    assert best == max(n for n in range(1, 65) if not empty_mel_filters(p, n)) == 57
    assert empty_mel_filters(p, 58) and not empty_mel_filters(p, 57)
    assert min_n_fft(p) == 284
    assert not empty_mel_filters(p, n_fft=284) and all(empty_mel_filters(p, n_fft=n)
                                                       for n in range(256, 284))


@pytest.mark.parametrize("args,msg", [
    (["--n-mels", "1000"], "--n-mels: 1000 bands are too many for n_fft 1024 at sample_rate 16000 "
                           "(f_min 0 Hz, f_max 8000 Hz): 284 Mel filter(s) contain no FFT bin; "
                           "at most 227 work here (the smallest n_fft for 1000 "
                           "bands is 4530)"),
    (["--n-fft", "2", "--hop-length", "2"], "no Mel filter contains an FFT bin with n_fft 2"),
    (["--sample-rate", "1"], "no Mel filter contains an FFT bin with n_fft 1024 at sample_rate 1 "
                             "(f_min 0 Hz, f_max 0.5 Hz) (no n_fft gives 32 bands at this "
                             "sample rate; raise sample_rate)"),
])
def test_degenerate_mel_settings_are_refused(tmp_path, args, msg):
    write_tone(tmp_path / "a.wav", seconds=0.3)
    r = invoke(featurize_cli, [tmp_path / "a.wav", "-o", tmp_path / "f.h5", "--jobs", "1", *args])
    assert msg in one_error_line(r)
    assert "Warning" not in r.stderr and not (tmp_path / "f.h5").exists()


def test_no_raw_library_warning_in_a_real_process(tmp_path, env_bin):
    write_tone(tmp_path / "a.wav", seconds=0.3)
    r = subprocess.run([exe("ae-featurize"), str(tmp_path / "a.wav"), "-o", str(tmp_path / "f.h5"),
                        "--n-mels", "300", "-q"], capture_output=True, text=True, env=env_bin)
    assert r.returncode == 2
    assert r.stderr.startswith("ae-featurize: error: --n-mels: 300 bands are too many"), r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr


# --------------------------------------------------------------------------- audio inputs

def test_truncated_wav_is_flagged_and_warned(tmp_path):
    d = tmp_path / "audio"
    write_tone(d / "a.wav", seconds=0.5, subtype="PCM_16")
    b = write_tone(d / "b.wav", seconds=0.5, subtype="PCM_16", seed=1)
    data = b.read_bytes()
    b.write_bytes(data[: len(data) // 2])  # header still declares 0.5 s
    r = invoke(featurize_cli, [d, "-o", tmp_path / "f.h5", *SMALL])
    assert r.exit_code == 0, r.stderr
    assert "1 file(s) end before their header says" in r.stderr and "b.wav" in r.stderr
    with store.FeatureFile(tmp_path / "f.h5") as ff:
        assert ff.ids == ["a", "b"]
        assert ff.column("truncated").tolist() == [0, 1]
        assert ff.column("valid_samples")[1] < 4000  # only the samples present count as valid


def test_dangling_symlink_is_a_failed_input(tmp_path):
    d = tmp_path / "audio"
    for i in range(3):
        write_tone(d / f"{i}.wav", seconds=0.3, seed=i)
    os.symlink(tmp_path / "gone.wav", d / "link.wav")
    r = invoke(featurize_cli, [d, "-o", tmp_path / "f.h5", *SMALL, "--max-fail-frac", "0.5"])
    assert r.exit_code == 0, r.stderr
    assert "link.wav: dangling symbolic link" in r.stderr
    with store.FeatureFile(tmp_path / "f.h5") as ff:
        (path, reason), = ff.failures()
        assert path.endswith("link.wav") and "dangling symbolic link" in reason
        assert len(ff) == 3


# --------------------------------------------------------------------------- ae-train

@pytest.fixture()
def train_data(tmp_path):
    x = -40 + np.random.default_rng(0).normal(0, 5, (20, *SHAPE)).astype(np.float32)
    ids, _ = write_features(tmp_path / "f.h5", x=x)
    return tmp_path / "f.h5", ids


TRAIN = ["--hidden", "16,8", "--latent", "4", "--batch-size", "5", "-q"]


def test_empty_validation_fold_is_warned(tmp_path, train_data):
    f, ids = train_data
    folds = [0, 2] * (len(ids) // 2)  # a hand-edited split file: fold 1 has no rows
    pd.DataFrame({"id": ids, "split": "train", "fold": folds}).to_csv(tmp_path / "s.csv", index=False)
    r = invoke(train_cli, [f, "--splits", tmp_path / "s.csv", "--fold", "1", "--epochs", "1",
                           *TRAIN, "-o", tmp_path / "m.safetensors"])
    assert r.exit_code == 0, r.stderr
    assert "fold 1 selects no validation rows" in r.stderr and "--fold" not in r.stderr


def test_implausible_loss_is_warned(tmp_path, train_data, monkeypatch):
    f, _ = train_data
    real = tr._mse_db
    # the same gradients, but a loss value of 2e10 dB^2
    monkeypatch.setattr(tr, "_mse_db", lambda *a: (lambda v: v - v.detach() + 2e10)(real(*a)))
    r = invoke(train_cli, [f, "--epochs", "1", *TRAIN, "-o", tmp_path / "m.safetensors"])
    assert r.exit_code == 0, r.stderr
    assert "epoch 1: train loss 2e+10 dB^2 is above any plausible value" in r.stderr


def test_nan_at_first_step_leaves_no_empty_checkpoint_dir(tmp_path, train_data, monkeypatch):
    f, _ = train_data
    monkeypatch.setattr(tr, "_mse_db", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    r = invoke(train_cli, [f, "--epochs", "2", *TRAIN, "-o", tmp_path / "m.safetensors"])
    assert r.exit_code == 1 and "NaN or Inf" in r.stderr
    assert not (tmp_path / "m.safetensors.ckpt").exists()
    # a directory the user made is theirs: it stays
    (tmp_path / "m2.safetensors.ckpt").mkdir()
    r = invoke(train_cli, [f, "--epochs", "2", *TRAIN, "-o", tmp_path / "m2.safetensors"])
    assert r.exit_code == 1 and (tmp_path / "m2.safetensors.ckpt").is_dir()


def test_nan_row_met_while_streaming_is_one_line_and_leaves_no_checkpoint_dir(tmp_path):
    x = -40 + np.random.default_rng(0).normal(0, 5, (20, *SHAPE)).astype(np.float32)
    x[1, 0, 0, 0] = np.nan  # a validation row of fold 1: read only at the end of epoch 1
    ids, _ = write_features(tmp_path / "f.h5", x=x)
    pd.DataFrame({"id": ids, "split": "train", "fold": [0, 1] * 10}).to_csv(tmp_path / "s.csv",
                                                                          index=False)
    r = invoke(train_cli, [tmp_path / "f.h5", "--splits", tmp_path / "s.csv", "--fold", "1",
                           "--data", "stream", "--workers", "1", "--epochs", "1", *TRAIN,
                           "-o", tmp_path / "m.safetensors"])
    line = one_error_line(r)
    assert line.endswith("f.h5: 1 clip(s) contain NaN or Inf values: clip001"), line
    assert not (tmp_path / "m.safetensors.ckpt").exists()
