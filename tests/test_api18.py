"""Issue 18, the API part: values never altered silently (integer PCM, huge features, non-finite
scores), missing listed paths as per-file failures, one-line errors for absurd options, memory
bombs refused before allocation, and a Python API that refuses what it cannot mean."""

from __future__ import annotations

import csv
import io
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import exe, invoke, write_tone

MEL = ["--num-samples", "2304", "--n-mels", "4"]  # clips 2 x 4 x 10 (conftest.SHAPE)
TINY = ["--hidden", "16,8", "--latent", "4", "--epochs", "1", "--batch-size", "8", "-q"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """audio/: six short PCM_16 tones (mono and stereo); features.h5: them featurized with MEL;
    model.safetensors: a tiny model trained on it."""
    root = tmp_path_factory.mktemp("api18")
    for i in range(6):
        write_tone(root / "audio" / f"t{i}.wav", seconds=0.2, channels=1 + i % 2,
                   freq=300 + 50 * i, subtype="PCM_16", seed=i)
    r = invoke("featurize", [root / "audio", "-o", root / "features.h5", "-j", "1", "-q", *MEL])
    assert r.exit_code == 0, r.stderr
    r = invoke("train", [root / "features.h5", "-o", root / "model.safetensors", *TINY])
    assert r.exit_code == 0, r.stderr
    return root


@pytest.fixture(scope="module")
def model(work):
    import aekit

    return aekit.load_model(work / "model.safetensors")


# ------------------------------------------------------------------ values never altered

def test_score_array_scales_integer_pcm_as_soundfile(work, model):
    """An int16 (or int32) array scores as the WAV file holding it, not 32768x louder."""
    import soundfile as sf

    import aekit

    path = work / "audio" / "t1.wav"  # stereo PCM_16
    want = next(iter(aekit.score_files(model, [path], jobs=1))).score
    for dtype in ("int16", "int32", "float32"):
        data, sr = sf.read(str(path), dtype=dtype, always_2d=True)
        got = aekit.score_array(model, data.T, sample_rate=sr)
        np.testing.assert_allclose(got, [want], rtol=1e-6, err_msg=dtype)
    from aekit.evaluate.scoring import _as_float_waves

    assert _as_float_waves(np.array([0, 128, 255], np.uint8)).tolist() == [-1.0, 0.0, 127 / 128]
    assert _as_float_waves(np.array([-128, 64], np.int8)).tolist() == [-1.0, 0.5]
    from aekit.errors import InputError

    for bad in (np.zeros((2, 3000), np.int64), np.zeros((2, 3000), bool)):
        with pytest.raises(InputError, match="dtype"):
            aekit.score_array(model, bad, sample_rate=16000)


def test_loaded_model_score_takes_numpy_and_path_functions_take_paths(work, model):
    import aekit

    with aekit.open_features(work / "features.h5") as ff:
        x = ff.read([0, 1, 2])
    e2, e1 = model.score(x)
    assert isinstance(e2, np.ndarray) and e2.shape == (3,) and e1.shape == (3,)
    np.testing.assert_array_equal(e2, aekit.score_features(model, x))
    assert model.score(x[0])[0].shape == (1,)  # one clip [C, M, T]
    path = work / "model.safetensors"
    assert aekit.stored_threshold(str(path)) == aekit.stored_threshold(model)
    assert aekit.model_params(path) == aekit.model_params(model)
    with pytest.raises(TypeError, match="LoadedModel or a model file path"):
        aekit.model_params(42)


def _huge(work: Path) -> Path:
    """features.h5 again, but clip t5 holds one finite value of 3e38 (its square is Inf)."""
    from aekit.data import store

    out = work / "huge.h5"
    with store.FeatureFile(work / "features.h5") as ff:
        x, ids, paths, params = ff.read(), ff.ids, ff.paths, ff.params
    x[5, 0, 0, 0] = 3e38
    w = store.FeatureWriter(out, params, x.shape[1:])
    w.append(x, ids, paths, {k: np.zeros(len(ids)) for k in store.PER_CLIP})
    w.close()
    return out


def test_huge_finite_features_are_refused_like_nan(work, model):
    import aekit
    from aekit.errors import InputError

    huge = _huge(work)
    r = invoke("eval", [work / "model.safetensors", huge, "-o", work / "r.json", "-q"])
    assert r.exit_code == 2, r.stderr
    assert ("huge.h5: 1 clip(s) contain values beyond +-1e+06 (not log-Mel dB: corrupt?): t5"
            in r.stderr)
    assert not (work / "r.json").exists()
    x = np.full((1, *model.input_shape), -40.0, np.float32)
    x[0, 1, 2, 3] = 3e38
    with pytest.raises(InputError, match=r"beyond \+-1e\+06"):
        aekit.score_features(model, x)


def test_non_finite_scores_are_an_error_never_null(work, model, monkeypatch):
    import torch

    import aekit
    from aekit.errors import DataError

    x = np.full((3, *model.input_shape), -40.0, np.float32)
    real = model.model.clip_errors

    def overflow(xb, norm):
        e2, e1 = real(xb, norm)
        return e2 * torch.tensor([1.0, float("inf"), 1.0]), e1

    monkeypatch.setattr(model.model, "clip_errors", overflow)
    with pytest.raises(DataError, match=r"1 score\(s\) are not finite \(first at clip 1\)"):
        aekit.score_features(model, x)


# ------------------------------------------------------------------ one failure policy

def test_missing_listed_path_is_a_failed_row_not_an_abort(work):
    audio = work / "audio"
    listing = f"{audio / 't0.wav'}\n{audio / 'gone.wav'}\n{audio / 't2.wav'}\n"
    model = work / "model.safetensors"
    r = invoke("score", [model, "-", "--max-fail-frac", "0.5", "-j", "1"], input=listing)
    assert r.exit_code == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    # ids of a list on stdin: the paths as listed, without extension (the list is streamed,
    # not held to find a common root; issue 22)
    assert [row["id"] for row in rows] == [str(audio / n) for n in ("t0", "gone", "t2")]
    assert rows[1]["score"] == "" and rows[0]["score"] and rows[2]["score"]
    assert "gone.wav: cannot read: No such file or directory (empty score)" in r.stderr
    r = invoke("score", [model, "-", "-j", "1"], input=listing)  # 1 of 3 > 5%
    assert r.exit_code == 1 and "1 of 3 inputs failed" in r.stderr
    out = work / "f_missing.h5"  # ae-featurize: the same policy
    r = invoke("featurize", ["-", "-o", out, "-j", "1", "--max-fail-frac", "0.5", "-q", *MEL],
               input=listing)
    assert r.exit_code == 0, r.stderr
    import aekit

    with aekit.open_features(out) as ff:
        assert ff.ids == ["t0", "t2"]
        assert ff.failures() == [(str(audio / "gone.wav"),
                                  "cannot read: No such file or directory")]
    r = invoke("featurize", ["-", "-o", work / "f2.h5", "-q", *MEL], input=listing)
    assert r.exit_code == 1 and "1 of 3 inputs failed" in r.stderr
    r = invoke("score", [model, audio / "nope.wav"])  # an argument: a usage error, as before
    assert r.exit_code == 2 and "nope.wav: no such file or directory" in r.stderr


# ------------------------------------------------------------------ one line, right status

@pytest.mark.parametrize("cmd,seed", [("train", "4294967296"), ("train", "-1"),
                                      ("eval", "18446744073709551616")])
def test_seed_outside_numpys_range_is_a_usage_error(work, cmd, seed):
    args = ([work / "features.h5", "-o", work / "m2.safetensors", *TINY] if cmd == "train" else
            [work / "model.safetensors", work / "features.h5", "-o", work / "r2.json", "-q"])
    r = invoke(cmd, [*args, "--seed", seed])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"ae-{cmd}: error: Invalid value for '--seed'")
    assert "0<=x<=4294967295" in r.stderr and len(r.stderr.splitlines()) == 1


def test_absurd_shard_count_is_refused_without_allocating(work):
    from aekit.errors import InputError
    from aekit.audio.featurize import parse_shard, shard_indices

    r = invoke("featurize", [work / "audio", "-o", work / "s.h5", "-q", "--shard",
                                "0/99999999999999"])
    assert r.exit_code == 2
    assert r.stderr == ("ae-featurize: error: bad shard '0/99999999999999': at most 1,000,000 "
                        "shards\n")
    assert parse_shard("3/1000000") == (3, 1000000)
    with pytest.raises(InputError):
        parse_shard("0/1000001")
    for n_items, n in [(0, 3), (7, 3), (10, 4), (5, 9)]:
        for i in range(n):
            assert shard_indices(n_items, (i, n)).tolist() == \
                np.array_split(np.arange(n_items), n)[i].tolist()
    big = shard_indices(10**12 + 3, (2, 1_000_000))  # arithmetic: no 8 TB index array first
    assert big[0] == 2 * (10**6 + 1) and big.size == 10**6 + 1 and big[-1] == 3 * 10**6 + 2


def test_stdout_write_errors_name_stdout(tmp_path):
    (tmp_path / "l.csv").write_text("id\n" + "".join(f"a{i}\n" for i in range(20)))
    with open("/dev/full", "w") as full:
        p = subprocess.run([exe("ae-score"), "--version"], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=60)
        assert p.returncode == 1
        assert p.stderr == "ae-score: error: cannot write <stdout>: No space left on device\n"
        p = subprocess.run([exe("ae-split"), str(tmp_path / "l.csv"), "-o", "-", "-q"],
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
        assert p.returncode == 1
        assert p.stderr == "ae-split: error: cannot write <stdout>: No space left on device\n"


# ------------------------------------------------------------------ memory bombs

def _sparse_wav(path: Path, sr: int, ch: int, data_bytes: int) -> Path:
    """A 16-bit PCM WAV header claiming ``data_bytes`` of samples, the body a hole (sparse)."""
    ba = 2 * ch
    hdr = (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt "
           + struct.pack("<IHHIIHH", 16, 1, ch, sr, (sr * ba) & 0xFFFFFFFF, ba, 16)
           + b"data" + struct.pack("<I", data_bytes))
    with open(path, "wb") as f:
        f.write(hdr)
        f.truncate(len(hdr) + data_bytes)
    return path


def test_header_claims_are_checked_before_decoding(work, tmp_path):
    import aekit

    bombs = [_sparse_wav(tmp_path / "ghz.wav", 2_000_000_000, 1024, 4_000_000_000),
             _sparse_wav(tmp_path / "wide.wav", 8_000_000, 1024, 4_000_000_000),
             _sparse_wav(tmp_path / "slow.wav", 1, 1024, 8_000_000)]  # 16000x when resampled
    paths = [work / "audio" / "t0.wav", *bombs, work / "audio" / "t1.wav"]
    recs = list(aekit.featurize_files(paths, aekit.model_params(work / "model.safetensors"),
                                      jobs=1))
    assert [r.error is None for r in recs] == [True, False, False, False, True]
    assert recs[3].error == ("header claims 1 Hz and 1024 channel(s): a clip would decode "
                             "125.1 GiB of samples (limit 1 GiB)")
    assert recs[1].error == ("header claims 2000000000 Hz and 1024 channel(s): more than this "
                             "aekit decodes (10,000,000 Hz, 1024 channels)")
    assert recs[2].error == ("header claims 8000000 Hz and 1024 channel(s): a clip would decode "
                             "4.4 GiB of samples (limit 1 GiB)")


def test_out_of_memory_on_one_file_fails_that_file_only(work, monkeypatch):
    import aekit
    from aekit.audio import decode as audio

    real = audio.resample

    def resample(x, sr_in, sr_out):
        if x.shape[1] == 2:  # the stereo file
            raise MemoryError
        return real(x, sr_in, sr_out)

    monkeypatch.setattr(audio, "resample", resample)
    paths = sorted((work / "audio").iterdir())[:3]  # mono, stereo, mono
    recs = list(aekit.featurize_files(paths, {"num_samples": 2304, "n_mels": 4,
                                              "sample_rate": 8000}, jobs=1))
    assert [r.error for r in recs] == [None, "out of memory resampling it", None]


@pytest.mark.parametrize("option,value,msg", [
    ("f_min", float("nan"), "f_min: must be a finite number, got nan"),
    ("f_min", float("inf"), "f_min: must be a finite number, got inf"),
    ("top_db", float("inf"), "top_db: must be a finite number, got inf"),
    ("n_mels", 10**9, "n_mels: 1000000000 is above the limit 16,384"),
    ("n_fft", 2**40, "n_fft: 1099511627776 is above the limit 1,048,576"),
    ("num_samples", 10**15, "these feature parameters need 53,172,698.2 GiB per clip"),
    ("hop_length", 10**20, "hop_length: 100000000000000000000 is longer than the clip"),
    ("sample_rate", 10**12, "sample_rate: 1000000000000 is above the 10,000,000 Hz"),
    ("sample_rate", True, "sample_rate: must be an integer, got True"),
    ("n_mels", 4.0, "n_mels: must be an integer, got 4.0"),
])
def test_mel_params_refuse_non_finite_and_huge_values(option, value, msg):
    from aekit.errors import InputError
    from aekit.audio.features import MelParams

    kw = {"num_samples": 2 ** 41} if option == "n_fft" else {}
    with pytest.raises(InputError) as exc:
        MelParams(**{**kw, option: value})
    assert str(exc.value).startswith(msg)


def test_mel_options_refuse_nan(work):
    r = invoke("featurize", [work / "audio", "-o", work / "n.h5", "--f-min", "nan"])
    assert r.exit_code == 2
    assert r.stderr == ("ae-featurize: error: Invalid value for '--f-min': 'nan' is not a finite "
                        "number\n")


# ------------------------------------------------------------------ the Python API refuses

def test_api_refuses_what_it_cannot_mean(work, model):
    import aekit
    from aekit.errors import InputError

    wav = str(work / "audio" / "t0.wav")
    with pytest.raises(TypeError, match=r"paths must be a sequence of paths, not one str"):
        aekit.score_files(model, wav)
    with pytest.raises(TypeError, match="not one PosixPath"):
        aekit.featurize_files(Path(wav))
    for bad in ({"bogus": 1}, {"nmels": 4}):
        key = next(iter(bad))
        with pytest.raises(InputError, match=rf"unknown feature parameter\(s\) '{key}'; "
                                             r"valid: sample_rate, num_samples, channels"):
            aekit.featurize_files([wav], params=bad)
    with pytest.raises(InputError, match="feature parameter window must be 'hann'"):
        aekit.featurize_files([wav], params={"window": "hamming"})
    wave = np.zeros((2, 3000), np.float32)
    for sr in (0, -16000, 16000.5, True):
        with pytest.raises(InputError, match="sample rate must be an integer"):
            aekit.score_array(model, wave, sample_rate=sr)
    with pytest.raises(InputError, match=r"at 1 Hz with 64 channel\(s\): a clip would resample "
                                         r"to 7.8 GiB \(limit 1 GiB\)"):
        aekit.score_array(model, np.zeros((1, 64, 5000), np.float32), sample_rate=1)
    with pytest.raises(InputError, match="need at least one channel"):
        aekit.score_array(model, np.zeros((1, 0, 3000), np.float32))
    assert aekit.score_array(model, np.zeros((0, 2, 3000), np.float32)).shape == (0,)
    from aekit.audio.decode import fix_channels

    with pytest.raises(InputError, match=r"cannot make 2 channel\(s\) from 0"):
        fix_channels(np.zeros((0, 100), np.float32), 2)
    with pytest.raises(InputError, match="jobs must be a positive integer"):
        aekit.score_files(model, [wav], jobs=0)


def test_row_indices_and_block_sizes_are_checked(work):
    import aekit
    from aekit.errors import InputError

    with aekit.open_features(work / "features.h5") as ff:
        for rows, msg in [([6], "row index 6 out of range: the file has 6 rows (0 to 5)"),
                          ([3, -1], "row index -1 out of range: the file has 6 rows (0 to 5)"),
                          ([1.5], "row indices must be a 1-D sequence of integers, got float64"),
                          (np.ones(6, bool), "row indices must be a 1-D sequence of integers")]:
            with pytest.raises(IndexError) as exc:
                ff.read(rows)
            assert str(exc.value).startswith(msg) and isinstance(exc.value, InputError)
        with pytest.raises(IndexError, match="row index 30 out of range"):
            list(ff.iter_blocks([0, 30]))
        for block in (-1, 0):
            with pytest.raises(InputError, match="block size must be a positive integer"):
                list(ff.iter_blocks(block=block))
        assert [len(i) for i, _ in ff.iter_blocks(block=4)] == [4, 2]
        assert ff.read([]).shape == (0, 2, 4, 10)
