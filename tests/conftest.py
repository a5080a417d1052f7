"""Shared fixtures: synthesized audio, tiny features files, paths to installed executables."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

BIN = Path(sys.executable).parent


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
