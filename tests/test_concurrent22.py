"""Issue 22 item 4: N training processes on one machine share its cores (threads chosen per
process from AEKIT_THREADS, SLURM_CPUS_PER_TASK, the CPU affinity and make's -jN), and the
SLURM array pattern trains one model per task."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import invoke, one_error_line, write_features

from aekit.errors import InputError
from aekit.system.threads import auto_threads, available_cores, make_jobs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flags,jobs", [
    ("", None), (" -j1", None), ("s -j4 --jobserver-auth=3,4", 4), (" -j", 0),
    ("k --jobs=3", 3), ("-j2 -j6", 6), ("s --jobserver-auth=fifo:/tmp/x", None),
    ("w -- X=-j9", None),
])
def test_make_jobs(flags, jobs):
    assert make_jobs(flags) == jobs


def test_auto_threads_divides_the_available_cores():
    cores = len(os.sched_getaffinity(0))
    assert available_cores({}) == cores
    assert auto_threads({}) == (cores, f"{cores} available cores")
    assert auto_threads({"AEKIT_THREADS": "3"}) == (3, "AEKIT_THREADS")
    assert auto_threads({"AEKIT_THREADS": "3", "MAKEFLAGS": "-j8"})[0] == 3
    assert auto_threads({"SLURM_CPUS_PER_TASK": "1"})[0] == 1
    assert auto_threads({"SLURM_CPUS_PER_TASK": "999"})[0] == cores  # affinity bounds it
    assert auto_threads({"MAKEFLAGS": " -j64 --jobserver-auth=3,4"})[0] == 1
    assert auto_threads({"MAKEFLAGS": " -j"})[0] == 1  # no limit: one each
    assert auto_threads({"AEKIT_JOBS": "64", "MAKEFLAGS": "-j1"})[0] == 1
    n, why = auto_threads({"MAKEFLAGS": " -j2"})
    assert n == max(1, cores // 2) and why == f"{cores} available cores / 2 jobs (make -j)"
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(InputError, match="AEKIT_THREADS"):
            auto_threads({"AEKIT_THREADS": bad})
    with pytest.raises(InputError, match="AEKIT_JOBS"):
        auto_threads({"AEKIT_JOBS": "0"})


@pytest.fixture
def threads_restored():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_ae_train_sets_its_threads(tmp_path, monkeypatch, threads_restored):
    from aekit.cmds.train import cli

    f = tmp_path / "f.h5"
    write_features(f, n=6, shape=(1, 4, 10))
    monkeypatch.delenv("AEKIT_THREADS", raising=False)
    monkeypatch.delenv("AEKIT_JOBS", raising=False)
    monkeypatch.setenv("MAKEFLAGS", " -j64")  # as under make -j64: one thread
    torch.set_num_threads(2)
    args = [f, "--arch", "frames", "--hidden", "4", "--latent", "2", "--context", "3",
            "--epochs", "1", "--device", "cpu"]
    r = invoke(cli, [*args, "-o", tmp_path / "a.pt"])
    assert r.exit_code == 0, r.stderr
    assert "1 torch thread(s) (" in r.stderr and "/ 64 jobs (make -j))" in r.stderr
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)  # (1 thread again: 2 on a busy machine make the run crawl)
    r = invoke(cli, [*args, "-o", tmp_path / "b.pt", "--threads", "1"])
    assert r.exit_code == 0, r.stderr
    assert "1 torch thread(s) (--threads)" in r.stderr and torch.get_num_threads() == 1
    monkeypatch.setenv("AEKIT_THREADS", "zero")
    r = invoke(cli, [*args, "-o", tmp_path / "c.pt"])
    assert "AEKIT_THREADS='zero': must be a positive integer" in one_error_line(r)
    assert not (tmp_path / "c.pt").exists()


def test_slurm_array_trains_one_model_per_task(tmp_path):
    """train-array.sbatch run as task 1 of TYPES: the second type's model, its --where."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ae-train"
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FEATURES": "f.h5",
           "LABELS": "l.csv", "SPLITS": "s.csv", "TYPES": "fan pump valve",
           "SLURM_ARRAY_TASK_ID": "1", "OUTDIR": str(tmp_path / "m"),
           "ARGS_OUT": str(tmp_path / "args"), "TRAIN_OPTS": "--epochs 3"}
    script = ROOT / "examples" / "slurm" / "train-array.sbatch"
    subprocess.run(["bash", str(script)], env=env, check=True, cwd=tmp_path)
    got = (tmp_path / "args").read_text().splitlines()
    model = str(tmp_path / "m" / "frames.pump.safetensors")
    assert got == ["f.h5", "-o", model, "--arch", "frames", "--log",
                   str(tmp_path / "m" / "frames.pump.log.csv"), "--splits", "s.csv",
                   "--fold", "0", "--labels", "l.csv", "--where",
                   "machine_type == 'pump' and anomaly == 0", "--epochs", "3"]
    r = subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": "3"},
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and "TYPES has 3 machine types" in r.stderr


def test_apply_threads_stays_within_torchs_default(monkeypatch, threads_restored):
    """Automatic threads never exceed torch's own default (one per physical core);
    AEKIT_THREADS and --threads are taken as given."""
    from aekit.system import threads

    for name in ("AEKIT_THREADS", "AEKIT_JOBS", "MAKEFLAGS", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_TORCH_DEFAULT", [1])
    monkeypatch.setattr(threads, "available_cores", lambda env=None: 4)
    assert threads.apply_threads() == (1, "one per physical core, at most 4 available cores")
    monkeypatch.setenv("MAKEFLAGS", " -j4")
    assert threads.apply_threads() == (1, "4 available cores / 4 jobs (make -j)")
    assert threads.apply_threads(3) == (3, "given") and torch.get_num_threads() == 3
    torch.set_num_threads(1)
    monkeypatch.setenv("AEKIT_THREADS", "2")
    assert threads.apply_threads() == (2, "AEKIT_THREADS") and torch.get_num_threads() == 2
    with pytest.raises(InputError, match=r"^threads: must be at least 1, got 0$"):
        threads.apply_threads(0)
