"""ae-featurize and ae-merge through the CLI: the features file is the contract."""

import subprocess

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from aekit.cmds.featurize import cli as featurize_cli
from aekit.cmds.merge import cli as merge_cli
from aekit.audio.features import MelParams, tutorial_features
from aekit.data.store import FeatureFile
from conftest import exe, invoke, write_tone

SMALL = ["--num-samples", "8000", "--jobs", "1"]


@pytest.fixture
def corpus(tmp_path):
    """Mixed rates, channel counts, bit depths and containers."""
    d = tmp_path / "audio"
    write_tone(d / "fan" / "a.wav", sr=16000, seconds=0.6, channels=1, subtype="PCM_16")
    write_tone(d / "fan" / "b.wav", sr=44100, seconds=0.3, channels=2, subtype="PCM_24", freq=300)
    write_tone(d / "pump" / "c.flac", sr=22050, seconds=0.7, channels=1, freq=800)
    write_tone(d / "pump" / "d.ogg", sr=16000, seconds=0.5, channels=2, freq=1200)
    write_tone(d / "valve" / "e.wav", sr=8000, seconds=0.4, channels=3, subtype="PCM_U8", freq=500)
    write_tone(d / "valve" / "f.wav", sr=48000, seconds=0.9, channels=1, subtype="FLOAT", freq=2000)
    return d


def run(args, **kw):
    return invoke(featurize_cli, args, **kw)


def test_file_layout_and_attributes(corpus, tmp_path):
    out = tmp_path / "f.h5"
    r = run([str(corpus), "-o", str(out), *SMALL])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""  # data goes to the file; logs to stderr
    assert "Done 6 of 6" in r.stderr
    with FeatureFile(out) as ff:
        assert ff.clip_shape == (2, 32, 8000 // 256 + 1)
        assert ff.features.dtype == np.float32
        assert ff.features.chunks == (1, *ff.clip_shape)
        assert ff.ids == ["fan/a", "fan/b", "pump/c", "pump/d", "valve/e", "valve/f"]
        assert ff.paths[0].endswith("fan/a.wav")
        assert ff.column("source_sample_rate").tolist() == [16000, 44100, 22050, 16000, 8000, 48000]
        assert ff.column("source_channels").tolist() == [1, 2, 1, 2, 3, 1]
        assert ff.column("valid_samples").tolist() == [8000, 4800, 8000, 8000, 6400, 8000]
        a = ff.attrs
        assert a["sample_rate"] == 16000 and a["n_mels"] == 32 and a["top_db"] == 80.0
        assert a["format"] == "aekit-features" and a["aekit_version"]
        assert "ae-featurize" in a["command"] and "--num-samples 8000" in a["command"]
        assert ff.failures() == []
        x = ff.read()
        assert np.isfinite(x).all()
        assert (x.reshape(6, -1).max(1) - x.reshape(6, -1).min(1) <= 80.0 + 1e-3).all()
    assert "more than 2 channel" in r.stderr  # the 3-channel file was cut, with a warning


@pytest.mark.parametrize("subtype,ext", [("PCM_16", "wav"), ("PCM_24", "flac"), (None, "ogg")])
def test_equals_tutorial_pipeline_at_target_rate(tmp_path, subtype, ext):
    f = write_tone(tmp_path / "in" / f"x.{ext}", sr=16000, seconds=7.0, channels=2, subtype=subtype)
    out = tmp_path / "f.h5"
    assert run([str(f), "-o", str(out), "--jobs", "1"]).exit_code == 0
    # The tutorial: load, truncate to 100,000 samples, MelSpectrogram + AmplitudeToDB(top_db=80).
    wav, sr = sf.read(str(f), dtype="float32", always_2d=True)
    ref = tutorial_features(torch.from_numpy(wav.T[:, :100_000].copy()), sr, MelParams())
    with FeatureFile(out) as ff:
        got = torch.from_numpy(ff.read()[0])
    assert got.shape == (2, 32, 391)
    assert (got - ref).abs().max().item() < 0.01


def test_parallel_equals_serial(corpus, tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert run([str(corpus), "-o", str(a), "--num-samples", "8000", "-j", "1"]).exit_code == 0
    assert run([str(corpus), "-o", str(b), "--num-samples", "8000", "-j", "2", "--block-size", "2"]).exit_code == 0
    with FeatureFile(a) as fa, FeatureFile(b) as fb:
        assert fa.ids == fb.ids
        np.testing.assert_array_equal(fa.read(), fb.read())


def test_failures_are_recorded_and_skipped(corpus, tmp_path):
    (corpus / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    (corpus / "empty.flac").write_bytes(b"")
    out = tmp_path / "f.h5"
    r = run([str(corpus), "-o", str(out), *SMALL, "--max-fail-frac", "0.5"])
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "skipped" in ln]
    assert len(lines) == 2 and any("broken.wav" in ln for ln in lines)
    assert any("empty.flac: empty file" in ln for ln in lines)
    with FeatureFile(out) as ff:
        assert len(ff) == 6
        fails = dict(ff.failures())
        assert set(p.rsplit("/", 1)[1] for p in fails) == {"broken.wav", "empty.flac"}
        assert all(reason for reason in fails.values())


def test_too_many_failures_write_nothing(corpus, tmp_path):
    (corpus / "broken.wav").write_bytes(b"not audio")
    out = tmp_path / "f.h5"
    r = run([str(corpus), "-o", str(out), *SMALL])  # 1 of 7 > 5%
    assert r.exit_code == 1
    assert "1 of 7 inputs failed" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    assert list(tmp_path.glob(".f.h5*")) == []  # no temporary left behind


def test_on_error_fail_stops_and_keeps_old_output(corpus, tmp_path):
    out = tmp_path / "f.h5"
    out.write_bytes(b"previous result")
    (corpus / "fan" / "aa_broken.wav").write_bytes(b"junk")
    r = run([str(corpus), "-o", str(out), *SMALL, "--on-error", "fail", "--max-fail-frac", "1"])
    assert r.exit_code == 1 and "aa_broken.wav" in r.stderr and "--on-error: " in r.stderr
    assert "stopped at the first failed input" in r.stderr
    assert out.read_bytes() == b"previous result"
    assert list(tmp_path.glob(".f.h5*")) == []


@pytest.mark.parametrize("args,code,msg", [
    (["nope/", "-o", "x.h5"], 2, "no such file or directory"),
    (["{d}", "-o", "missing_dir/x.h5"], 2, "does not exist"),
    (["{d}", "-o", "x.h5", "--n-mels", "0"], 2, "n-mels"),
    (["{d}", "-o", "x.h5", "--shard", "4/4"], 2, "bad shard"),
    (["{d}"], 2, "Missing option"),
])
def test_usage_errors(corpus, tmp_path, monkeypatch, args, code, msg):
    monkeypatch.chdir(tmp_path)
    r = run([a.format(d=corpus) for a in args])
    assert r.exit_code == code
    assert msg in r.stderr and "Traceback" not in r.stderr


def test_stdin_paths(corpus, tmp_path):
    files = sorted(str(p) for p in corpus.rglob("*.wav"))
    out = tmp_path / "f.h5"
    r = run(["-", "-o", str(out), *SMALL], input="\n".join(files) + "\n")
    assert r.exit_code == 0, r.stderr
    with FeatureFile(out) as ff:
        assert len(ff) == len(files)


def test_shards_merged_equal_one_run(corpus, tmp_path):
    whole = tmp_path / "whole.h5"
    assert run([str(corpus), "-o", str(whole), *SMALL]).exit_code == 0
    (corpus / "zz_bad.wav").write_bytes(b"junk")  # a failure must travel through the merge too
    whole2 = tmp_path / "whole2.h5"
    assert run([str(corpus), "-o", str(whole2), *SMALL, "--max-fail-frac", "1"]).exit_code == 0
    shards = []
    for i in range(3):
        s = tmp_path / f"s{i}.h5"
        r = run([str(corpus), "-o", str(s), *SMALL, "--shard", f"{i}/3", "--max-fail-frac", "1"])
        assert r.exit_code == 0, r.stderr
        shards.append(str(s))
    merged = tmp_path / "merged.h5"
    r = CliRunner().invoke(merge_cli, [shards[2], shards[0], shards[1], "-o", str(merged)])
    assert r.exit_code == 0, r.stderr
    with h5py.File(whole2) as a, h5py.File(merged) as b:
        for name in ("features", "ids", "paths", "source_sample_rate", "source_channels",
                     "source_frames", "valid_samples", "failed/paths", "failed/reasons"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        for k, v in a.attrs.items():
            if k not in ("command", "meta_sha256"):  # the hash covers the command line
                assert b.attrs[k] == v, k


def test_merge_refuses_mismatched_or_incomplete(corpus, tmp_path):
    s0, s1, other = tmp_path / "s0.h5", tmp_path / "s1.h5", tmp_path / "o1.h5"
    assert run([str(corpus), "-o", str(s0), *SMALL, "--shard", "0/2"]).exit_code == 0
    assert run([str(corpus), "-o", str(s1), *SMALL, "--shard", "1/2"]).exit_code == 0
    assert run([str(corpus), "-o", str(other), *SMALL, "--shard", "1/2", "--n-mels", "16"]).exit_code == 0
    r = CliRunner().invoke(merge_cli, [str(s0), str(other), "-o", str(tmp_path / "m.h5")])
    assert r.exit_code == 2 and "n_mels=32 vs 16" in r.stderr
    r = CliRunner().invoke(merge_cli, [str(s0), "-o", str(tmp_path / "m.h5")])
    assert r.exit_code == 2 and "missing 1/2" in r.stderr
    r = CliRunner().invoke(merge_cli, [str(s0), str(s0), str(s1), "-o", str(tmp_path / "m.h5")])
    assert r.exit_code == 2 and "given twice" in r.stderr
    assert not (tmp_path / "m.h5").exists()


def test_installed_executable_in_a_real_pipe(corpus, tmp_path, env_bin):
    out = tmp_path / "f.h5"
    cmd = f"find {corpus} -name '*.wav' | sort | ae-featurize - -o {out} --num-samples 8000 -q"
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env_bin, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    assert p.stderr.startswith("ae-featurize: WARNING: 1 clip(s) had more than 2 channel")  # -q: warnings only
    with FeatureFile(out) as ff:
        assert len(ff) == 4
    p = subprocess.run([exe("ae-featurize"), str(corpus / "nope"), "-o", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("ae-featurize: error:")


def test_root_sets_the_ids(corpus, tmp_path):
    out = tmp_path / "f.h5"
    r = run([str(corpus / "fan"), "-o", str(out), *SMALL, "--root", str(corpus)])
    assert r.exit_code == 0, r.stderr
    with FeatureFile(out) as ff:
        assert ff.ids == ["fan/a", "fan/b"]
    r = run([str(corpus / "fan"), "-o", str(out), *SMALL, "--root", str(corpus / "pump")])
    assert r.exit_code == 2 and "is not under the id root" in r.stderr


def test_preset_dcase2020_and_top_db_none(tmp_path):
    """--preset sets MelParams.PRESETS' values, an explicit option overrides it, and
    --top-db none keeps the whole dynamic range (a -120 dB tail survives an 80 dB floor's cut)."""
    audio = tmp_path / "a"
    write_tone(audio / "x.wav", seconds=1.0, channels=2)
    wav, sr = sf.read(str(audio / "x.wav"))
    sf.write(str(audio / "x.wav"), np.concatenate([wav, np.zeros((sr, 2))]) , sr)  # 1 s silence
    r = run([str(audio), "-o", str(tmp_path / "p.h5"), "--preset", "dcase2020", "--n-mels", "64",
             "-j", "1", "-q"])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "p.h5") as f:
        a = dict(f.attrs)
        assert f["features"].shape == (1, 1, 64, 160_000 // 512 + 1)
    assert (a["channels"], a["n_mels"], a["n_fft"], a["hop_length"], a["num_samples"],
            a["channel_policy"], a["top_db"]) == (1, 64, 1024, 512, 160_000, "mix", "none")
    for top_db, floor in (("none", False), ("80", True)):
        out = tmp_path / f"t{top_db}.h5"
        r = run([str(audio), "-o", str(out), "--top-db", top_db, "-j", "1", "-q"])
        assert r.exit_code == 0, r.output
        x = FeatureFile(out).read()[0]
        assert (x.max() - x.min() <= 80 + 1e-3) == floor
    assert MelParams.from_preset(None, top_db=None).top_db is None
    r = run([str(audio), "-o", str(tmp_path / "b.h5"), "--top-db", "-3"])
    assert r.exit_code == 2 and not (tmp_path / "b.h5").exists()
    r = run([str(audio), "-o", str(tmp_path / "b.h5"), "--preset", "dcase2019"])
    assert r.exit_code == 2 and not (tmp_path / "b.h5").exists()


def _all_datasets(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
        got = {name: (ds.dtype.str, ds.shape, ds.chunks, ds.fletcher32, ds[()].tobytes()
                      if ds.dtype.kind != "O" else list(ds[()])) for name, ds in out.items()}
        got["attrs"] = sorted((k, str(v)) for k, v in f.attrs.items())
    return got


def test_worker_pool_writes_the_same_bytes_as_one_process(corpus, tmp_path):
    """Workers (buffers reused, many small tasks, blocks of 3) against the single-process path:
    features, ids, per-clip columns, /truncated, failures and attributes, bit for bit."""
    from aekit.audio.decode import discover, make_ids
    from aekit.data.ingest import featurize

    (corpus / "fan" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    (corpus / "pump" / "empty.flac").write_bytes(b"")
    whole = write_tone(tmp_path / "whole.wav", sr=16000, seconds=0.8, channels=2).read_bytes()
    (corpus / "valve" / "cut.wav").write_bytes(whole[: len(whole) // 2])
    paths = discover([str(corpus)])
    ids = make_ids(paths)
    params = MelParams(num_samples=8000)
    one, pool = tmp_path / "one.h5", tmp_path / "pool.h5"
    r1 = featurize(paths, ids, one, params, jobs=1, max_fail_frac=0.5)
    threads = torch.get_num_threads()
    r2 = featurize(paths, ids, pool, params, jobs=2, block_size=3, max_fail_frac=0.5)
    assert torch.get_num_threads() == threads  # the parent's setting is given back
    assert r1.truncated == r2.truncated and len(r1.truncated) == 1
    assert r1.failures == r2.failures and len(r1.failures) == 2
    a, b = _all_datasets(one), _all_datasets(pool)
    assert a.keys() == b.keys() and "truncated" in a and "failed/reasons" in a
    for name in a:
        assert a[name] == b[name], name


def test_tasks_shrink_towards_the_end():
    from aekit.audio.featurize import make_tasks

    for n, jobs in [(1, 2), (7, 2), (96, 2), (800, 2), (10_000, 4)]:
        tasks = make_tasks(list(range(n)), jobs, most=32)
        assert [i for t in tasks for i in t] == list(range(n))  # every file once, in order
        sizes = [len(t) for t in tasks]
        assert all(1 <= k <= 32 for k in sizes) and sizes == sorted(sizes, reverse=True)
        assert sizes[-1] == 1
    assert [len(t) for t in make_tasks(list(range(800)), 2, most=32)][:3] == [32, 32, 32]


def test_a_dead_worker_is_an_error_not_a_hang(corpus, tmp_path, monkeypatch):
    """A worker killed mid-task (the OOM killer, a crash in a decoder): multiprocessing.Pool
    replaces it and never delivers its task; featurize must say so instead of waiting forever."""
    import os
    import signal
    import threading

    from aekit.audio import featurize as fz
    from aekit.audio.decode import discover, make_ids
    from aekit.data.ingest import featurize
    from aekit.errors import DataError

    real = fz._process

    def dying(task, *a):
        if any(i == 1 for i, _ in task):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(task, *a)

    dying.__module__, dying.__qualname__ = "aekit.audio.featurize", "_process"  # pickled by name
    monkeypatch.setattr(fz, "_process", dying)
    paths = discover([str(corpus)])
    out, got = tmp_path / "f.h5", []

    def call():
        try:
            featurize(paths, make_ids(paths), out, MelParams(num_samples=8000), jobs=2)
        except DataError as exc:
            got.append(str(exc))

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "featurize waits forever for the dead worker's task"
    assert len(got) == 1 and "worker process died (killed by SIGKILL" in got[0], got
    assert not out.exists()


def test_overflowing_samples_are_a_failed_input(corpus, tmp_path):
    """Finite float samples whose power overflows float32 give Inf features: a failure of
    that file, never Inf values in the output."""
    from aekit.audio.decode import discover, make_ids
    from aekit.data.ingest import featurize

    sf.write(str(corpus / "fan" / "huge.wav"), np.full((8000, 2), 1e30, np.float32), 16000,
             subtype="FLOAT")
    paths = discover([str(corpus)])
    rep = featurize(paths, make_ids(paths), tmp_path / "f.h5", MelParams(num_samples=8000),
                    jobs=1, max_fail_frac=0.5)
    assert [(p.rsplit("/", 1)[-1], r.split(" (")[0]) for p, r in rep.failures] == [
        ("huge.wav", "features are not finite")]
    with FeatureFile(tmp_path / "f.h5") as ff:
        assert np.isfinite(ff.read()).all() and len(ff.ids) == len(paths) - 1


def test_interleaved_in_process_iterators_keep_their_own_parameters(corpus):
    """jobs=1 runs in the caller's process: two iterators advanced in turn (e.g. two models'
    ae-score paths zipped) each keep their own front end and decode buffer."""
    from aekit.audio.decode import discover
    from aekit.audio.featurize import iter_features

    paths = discover([str(corpus)])
    pa, pb = MelParams(num_samples=8000), MelParams(num_samples=8000, top_db=20.0, n_mels=16)
    want_a = [r.features for r in iter_features(paths, pa, jobs=1)]
    want_b = [r.features for r in iter_features(paths, pb, jobs=1)]
    for ra, rb, a, b in zip(iter_features(paths, pa, jobs=1), iter_features(paths, pb, jobs=1),
                            want_a, want_b):
        assert np.array_equal(ra.features, a) and np.array_equal(rb.features, b)
