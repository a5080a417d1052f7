"""Issue 18, "no hang, ever": the featurize worker processes (used by ae-featurize, ae-score,
aekit.featurize_files/score_files) always finish or fail in one line, and never outlive the
call. The 200-run stress loop of the commands is bench/stress_batch.py (`make stress`); this
is its short version, in-process (process starts are the expensive part of it)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_tone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc")


def _children() -> list[int]:
    """Live (non-zombie) child processes of this process."""
    me, found = str(os.getpid()), []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                found.append(int(d.name))
    return found


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("stress")
    return [write_tone(root / f"c{i:02d}.wav", sr=16000, seconds=0.25, channels=1 + i % 2,
                       freq=200 + 30 * i, seed=i) for i in range(10)]


PARAMS = dict(num_samples=4000, n_mels=8)


def test_iterating_with_workers_again_and_again_never_hangs_nor_leaves_workers(clips):
    """25 runs of iter_features with 2 workers, each to the end or closed after a random
    number of results: every complete run equals the in-process one, every run ends within
    its timeout, and no worker process is left after any run."""
    from aekit.audio.features import MelParams
    from aekit.audio.featurize import iter_features

    params = MelParams(**PARAMS)
    ref = [it.features for it in iter_features(clips, params, jobs=1)]
    rng = random.Random(0)
    before = set(_children())  # other tests' processes, if any
    for run in range(25):
        stop_after = rng.choice([None, None, 0, 1, 3, 7, 9])
        got, t0 = [], time.monotonic()
        gen = iter_features(clips, params, jobs=2)
        for item in gen:
            got.append(item.features)
            if stop_after is not None and len(got) > stop_after:
                break
        gen.close()
        assert time.monotonic() - t0 < 30, f"run {run} took {time.monotonic() - t0:.1f} s"
        assert set(_children()) <= before, f"run {run}: workers left after the iterator ended"
        n = len(got)
        assert n == (len(clips) if stop_after is None else stop_after + 1)
        for a, b in zip(got, ref[:n]):
            np.testing.assert_array_equal(a, b)


def test_a_worker_making_no_progress_fails_the_run_naming_its_input(clips, tmp_path,
                                                                    monkeypatch):
    """A decoder that never returns (a damaged file, a stuck mount): after
    $AEKIT_STALL_TIMEOUT seconds without progress the run fails with one line naming that
    input, the workers are stopped and no output is left."""
    from aekit.audio import decode as audio
    from aekit.audio.decode import make_ids
    from aekit.errors import DataError
    from aekit.audio.features import MelParams
    from aekit.data.ingest import featurize

    stuck = clips[6]
    real = audio.ClipReader.read

    def read(self, path, *a, **k):
        if str(path) == str(stuck):
            time.sleep(3600)
        return real(self, path, *a, **k)

    monkeypatch.setattr(audio.ClipReader, "read", read)  # inherited by the forked workers
    monkeypatch.setenv("AEKIT_STALL_TIMEOUT", "1.5")
    out, got = tmp_path / "f.h5", []
    before = set(_children())

    def call():
        try:
            featurize(clips, make_ids(clips), out, MelParams(**PARAMS), jobs=2)
        except DataError as exc:
            got.append(str(exc))

    t0 = time.monotonic()
    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "featurize waits forever for the stuck worker"
    assert got == [f"{stuck}: no progress for 1.5 s on this input (a stuck decoder?); stopped "
                   "($AEKIT_STALL_TIMEOUT sets the limit in seconds)"]
    assert 1.5 <= time.monotonic() - t0 < 30
    assert set(_children()) <= before
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_bad_stall_timeout_is_refused():
    from aekit.errors import InputError
    from aekit.audio.featurize import stall_limit

    assert stall_limit(2) == 2.0
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(InputError, match="AEKIT_STALL_TIMEOUT"):
            stall_limit(bad)


WORKER_WITH_A_THREAD = r"""
import signal, sys, threading, time
import aekit.audio.featurize as fz
real_init = fz._init_worker
def _init_worker(*a, **k):
    # A worker with a second thread that takes SIGTERM (a decoder's helper thread): the
    # main thread, waiting for work, never sees the signal; Pool.terminate() then joined
    # that worker forever.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    threading.Thread(target=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
                     or time.sleep(3600), daemon=True).start()
    real_init(*a, **k)
fz._init_worker = _init_worker
from aekit.cmds import featurize
sys.argv[0] = "ae-featurize"
featurize.main()
"""


def test_workers_that_cannot_take_sigterm_do_not_hang_the_end_of_a_run(clips, tmp_path):
    """The end of a complete run no longer depends on a worker acting on SIGTERM: each
    worker is told to stop and joined (killed after a grace period if need be)."""
    out = tmp_path / "f.h5"
    p = subprocess.run([sys.executable, "-c", WORKER_WITH_A_THREAD, str(clips[0].parent), "-j",
                        "2", "-q", "-o", str(out), "--num-samples", "4000", "--n-mels", "8"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr == "" and out.exists()
