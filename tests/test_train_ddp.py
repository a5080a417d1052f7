"""ae-train under torchrun: two CPU processes (gloo), DistributedDataParallel."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import write_features

from aekit.models.modelfile import load_model, read_info

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SMALL = ["--hidden", "32,16", "--latent", "8"]


def torchrun(args, env=None, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "aekit.cmds.train", "--", *map(str, args)]
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=300)


@pytest.fixture()
def setup(tmp_path):
    p = tmp_path / "f.h5"
    ids, _ = write_features(p)
    sp = tmp_path / "splits.csv"
    sp.write_text("id,split,fold\n" + "".join(
        f"{i},test,\n" if k % 5 == 4 else f"{i},train,{k % 2}\n" for k, i in enumerate(ids)))
    return p, sp


def test_two_process_ddp_then_sigterm_resume(tmp_path, setup):
    p, sp = setup
    log = tmp_path / "log.csv"
    args = [p, *SMALL, "--epochs", "3", "--batch-size", "4", "--splits", sp, "--fold", "0"]
    full = tmp_path / "full.safetensors"
    r = torchrun([*args, "-o", full, "--log", log])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "terminate called" not in r.stderr
    info = read_info(full)
    assert info["world_size"] == 2 and info["n_train"] == 16 and info["n_val"] == 16
    assert len(info["history"]) == 3 and all(np.isfinite(h["val_loss"]) for h in info["history"])
    assert len(log.read_text().splitlines()) == 4  # one writer: rank 0
    assert r.stderr.count("epoch 3/3: train loss") == 1  # rank 0 alone reports
    model = load_model(full)
    # The stored threshold covers the training rows of both ranks (rank 0 scores them all).
    from aekit.evaluate.inference import score_rows
    from aekit.data.store import FeatureFile

    train_rows = [k for k in range(40) if k % 5 != 4 and k % 2 == 1]  # train, not fold 0
    with FeatureFile(p) as ff:
        scores = score_rows(model, ff, np.array(train_rows)).mse
    assert info["threshold"]["n"] == len(train_rows) == 16
    np.testing.assert_allclose(info["threshold"]["empirical"], np.quantile(scores, 0.9), rtol=1e-6)

    # Both ranks get SIGTERM at global step 3 of 6 (2 per epoch per rank): status 3, then resume.
    part = tmp_path / "part.safetensors"
    r = torchrun([*args, "-o", part], env={"AEKIT_TRAIN_SIGTERM_AT_STEP": "3"})
    assert r.returncode != 0 and not part.exists()
    # torchrun reports each worker's status: both ranks exited with 3 (preempted, resumable).
    assert len(re.findall(r"exitcode\s*:\s*3\b", r.stderr)) >= 1, r.stderr[-3000:]
    assert "run again with --resume" in r.stderr
    r = torchrun([*args, "-o", part, "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(str(full)), load_file(str(part))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_ddp_frames_counts_windows_and_resumes(tmp_path, setup):
    """A kind with many units per clip under DDP: each rank takes half of the windows
    (clips x windows, not clips), and a SIGTERM mid-run then --resume is bit-exact."""
    p, sp = setup
    args = [p, "--arch", "frames", "--hidden", "16", "--latent", "4", "--context", "4",
            "--epochs", "2", "--batch-size", "16", "--splits", sp, "--fold", "0"]
    full = tmp_path / "full.safetensors"
    r = torchrun([*args, "-o", full, "-v"])
    assert r.returncode == 0, r.stderr[-3000:]
    # 16 training clips x 7 windows = 112 units, 56 per rank: 4 batches of 14 per epoch.
    assert "16 training clips (112 units)" in r.stderr
    assert len(re.findall(r"epoch 1/2: .*, 4 steps, ", r.stderr)) == 1, r.stderr[-3000:]
    info = read_info(full)
    assert info["world_size"] == 2 and len(info["history"]) == 2
    part = tmp_path / "part.safetensors"
    r = torchrun([*args, "-o", part], env={"AEKIT_TRAIN_SIGTERM_AT_STEP": "5"})
    assert r.returncode != 0 and not part.exists()
    assert "run again with --resume" in r.stderr
    r = torchrun([*args, "-o", part, "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(str(full)), load_file(str(part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
