"""Shared fixtures: synthesized audio, tiny features files, paths to installed executables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BIN = Path(sys.executable).parent


#: Feature parameters of a real log-Mel setup whose clips are 2 x 4 x 10 (what the library
#: accepts: a tiny features file written with them passes every compatibility check).
PARAMS = dict(sample_rate=16000, num_samples=2304, n_fft=1024, hop_length=256, n_mels=4,
              top_db=80.0, f_min=0.0, f_max=None, window="hann", power=2.0, mel_scale="htk",
              channels=2, channel_policy="first")
SHAPE = (2, 4, 10)


def write_features(path, n: int = 40, shape=SHAPE, seed: int = 0, ids=None, params=None):
    """Low-rank dB-like clips (mean -40, std ~20) in an aekit features file; returns (ids, x).

    Without ``params``: PARAMS with channels, n_mels and num_samples matching ``shape``."""
    from aekit.data import store

    rng = np.random.default_rng(seed)
    c, m, t = shape
    tmpl = rng.normal(0, 15, size=(3, c * m * t))
    x = -40 + rng.random((n, 3)) @ tmpl + rng.normal(0, 3, size=(n, c * m * t))
    x = x.astype(np.float32).reshape(n, c, m, t)
    ids = ids or [f"clip{i:03d}" for i in range(n)]
    if params is None:  # the shape attributes agree with the data (store checks them)
        params = {**PARAMS, "channels": c, "n_mels": m,
                  "num_samples": (t - 1) * PARAMS["hop_length"]}
    w = store.FeatureWriter(path, dict(params), shape)
    w.append(x, ids, [f"/data/{i}.wav" for i in ids], {k: np.zeros(n) for k in store.PER_CLIP})
    w.close()
    return ids, x


def write_splits(path, ids, folds: int = 2, test_every: int = 5) -> Path:
    """Every test_every-th clip is test; the others train, in folds i % folds."""
    lines = ["id,split,fold"]
    for i, id_ in enumerate(ids):
        lines.append(f"{id_},test," if i % test_every == test_every - 1
                     else f"{id_},train,{i % folds}")
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def exe(name: str) -> str:
    """Path of an installed console script (ae-*) in the test interpreter's environment."""
    return str(BIN / name)


def write_tone(path: Path, sr: int = 16000, seconds: float = 1.0, channels: int = 1,
               freq: float = 440.0, subtype: str | None = None, seed: int = 0) -> Path:
    """A sine plus a little noise; each channel at a different level and frequency."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    n = int(round(sr * seconds))
    t = np.arange(n) / sr
    cols = [(0.3 / (c + 1)) * np.sin(2 * np.pi * freq * (1 + 0.25 * c) * t) + 0.01 * rng.standard_normal(n)
            for c in range(channels)]
    data = np.stack(cols, axis=1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data if channels > 1 else data[:, 0], sr, subtype=subtype)
    return path


@pytest.fixture
def tone():
    return write_tone


@pytest.fixture
def env_bin():
    """Environment for subprocesses: the venv's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs (root only), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the ENOSPC unit tests still run)")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def invoke(cli, args, **kw):
    """Run a click command in-process (CliRunner), every argument as text."""
    from click.testing import CliRunner

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kw)


def one_error_line(r, code=2):
    """The one 'error:' line of a CliRunner result that exited ``code``, with no traceback."""
    lines = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert r.exit_code == code, r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]
