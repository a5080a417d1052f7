"""Shared fixtures: synthesized audio, tiny features files, paths to installed executables."""

from __future__ import annotations

import csv
import io
import os
import re
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


def write_features(path, n: int = 40, shape=SHAPE, seed: int = 0, ids=None, params=None,
                   x=None):
    """Low-rank dB-like clips (mean -40, std ~20), or the given clips ``x``, in an aekit
    features file; returns (ids, x).

    Without ``params``: PARAMS with channels, n_mels and num_samples matching ``shape``."""
    from aekit.data import store

    if x is None:
        rng = np.random.default_rng(seed)
        c, m, t = shape
        tmpl = rng.normal(0, 15, size=(3, c * m * t))
        x = -40 + rng.random((n, 3)) @ tmpl + rng.normal(0, 3, size=(n, c * m * t))
        x = x.astype(np.float32).reshape(n, c, m, t)
    n, shape = len(x), tuple(x.shape[1:])
    c, m, t = shape
    ids = [f"clip{i:03d}" for i in range(n)] if ids is None else ids
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


def cli_of(name: str):
    """The click command of a command, by name: "ae-train" or "train" (module aekit.cmds.train)."""
    import importlib

    return importlib.import_module(f"aekit.cmds.{name.removeprefix('ae-')}").cli


def invoke(cli, args, **kw):
    """Run a click command in-process (CliRunner), every argument as text; ``cli`` is the command
    or its name (cli_of). Exceptions propagate unless catch_exceptions=True is given."""
    from click.testing import CliRunner

    if isinstance(cli, str):
        kw.setdefault("prog_name", f"ae-{cli.removeprefix('ae-')}")
        cli = cli_of(cli)
    kw.setdefault("catch_exceptions", False)
    r = CliRunner().invoke(cli, [str(a) for a in args], **kw)
    r.prog = kw.get("prog_name") or cli.name  # what one_error_line expects the line to start with
    return r


def one_error_line(r, *words, code=2):
    """The one error line of a CliRunner result that exited ``code`` ("ae-NAME: error: ...",
    no other line naming an error, no traceback; nothing on stdout for a refusal, code 2),
    holding each of ``words``. The exit code may also come first: one_error_line(r, 1)."""
    if words and isinstance(words[0], int):
        code, words = words[0], words[1:]
    lines = [ln for ln in r.stderr.splitlines() if "error:" in ln.lower()]
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr, r.exception)
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert code != 2 or r.stdout == "", r.stdout  # refused before any output
    prog = getattr(r, "prog", None)  # set by invoke
    assert re.match(rf"{re.escape(prog) if prog else 'ae-[a-z]+'}: error: ", lines[0]), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def only_error_line(stderr: str, prog: str) -> str:
    """The error line of ``prog``, the only line of ``stderr`` besides its INFO log lines."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and f"{prog}: INFO: " not in ln]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def read_csv(text: str) -> list[dict]:
    """The rows of a CSV text (a command's stdout or a file's text) as dicts of strings."""
    return list(csv.DictReader(io.StringIO(text)))


# --------------------------------------------------------------------------- tiny models

def noise_clips(n: int, shape=SHAPE, seed: int = 0) -> np.ndarray:
    """n clips of Gaussian dB-like values (mean -40, std 6), float32 [n, *shape]."""
    return np.random.default_rng(seed).normal(-40, 6, (n, *shape)).astype(np.float32)


#: One epoch of a plausible training history (written into model files by write_model).
HISTORY = [{"epoch": 1, "train_loss": 50.0, "val_loss": 60.0, "lr": 1e-3}]


def write_model(path, x=None, hidden=(32, 16), latent: int = 8, params=PARAMS, seed: int = 0,
                history=HISTORY):
    """An untrained baseline model (torch seed ``seed``) with a global normalizer fitted on
    ``x`` (default: 4 noise clips of SHAPE), written by save_model; returns the model."""
    import torch

    from aekit.models.modelfile import Normalizer, save_model
    from aekit.models.mlp import AEConfig
    from aekit.models.registry import build_model

    x = noise_clips(4, seed=seed) if x is None else x
    torch.manual_seed(seed)
    model = build_model(AEConfig(input_shape=tuple(x.shape[1:]), hidden=tuple(hidden),
                                 latent=latent)).eval()
    save_model(path, model, Normalizer("global", dim=x[0].size).fit([x]), params,
               history=history)
    return model


#: ae-featurize options giving clips of 2 x 4 x 10 (SHAPE) from 16 kHz audio.
MEL = ["--num-samples", "2304", "--n-mels", "4"]
#: ae-train options of the tiny frames model that tone_frames_model trains.
TINY_FRAMES = ["--arch", "frames", "--context", "1", "--hidden", "16,8", "--latent", "4",
               "--epochs", "2", "--batch-size", "4", "-q"]
N_TONES = 24


@pytest.fixture(scope="session")
def tones(tmp_path_factory):
    """N_TONES short tones (16 kHz, 0.2 s, 1 or 2 channels, 300 + 40 i Hz) and their features
    (ae-featurize MEL): {"audio", "feats", "ids", "x"}. Shared by the whole session: read only."""
    root = tmp_path_factory.mktemp("tones")
    audio = root / "a"
    for i in range(N_TONES):
        write_tone(audio / f"m{i:02d}.wav", sr=16000, seconds=0.2, channels=1 + i % 2,
                   freq=300 + 40 * i, seed=i)
    feats = root / "f.h5"
    r = invoke("featurize", [audio, "-o", feats, "-j", "1", "-q", *MEL])
    assert r.exit_code == 0, r.stderr
    from aekit.data.store import FeatureFile

    with FeatureFile(feats) as ff:
        ids, x = list(ff.ids), np.asarray(ff.read(), dtype=np.float32)
    x.setflags(write=False)
    return {"audio": audio, "feats": feats, "ids": ids, "x": x}


@pytest.fixture(scope="session")
def tone_frames_model(tones, tmp_path_factory):
    """A frames model (TINY_FRAMES) trained on all the tones' clips. Shared: read only."""
    model = tmp_path_factory.mktemp("frames") / "frames.safetensors"
    r = invoke("train", [tones["feats"], "-o", model, *TINY_FRAMES])
    assert r.exit_code == 0, r.stderr
    return model


# --------------------------------------------------------------------------- figures

#: matplotlib's first default colours (C0 blue, C1 orange) and magma's two ends, as RGB.
C0, C1 = (31, 119, 180), (255, 127, 14)
MAGMA_LOW, MAGMA_HIGH = (0, 0, 4), (252, 253, 191)


def png_rgb(path, size: tuple[int, int]) -> np.ndarray:
    """The pixels [H, W, 3] of a PNG file, decoded (Pillow), after checking that it is a PNG of
    ``size`` = (width, height) pixels that is not blank (many colours, under 95% white)."""
    from PIL import Image

    with Image.open(path) as im:
        assert (im.format, im.size) == ("PNG", tuple(size)), (path, im.format, im.size)
        rgb = np.asarray(im.convert("RGB"))
    packed = rgb.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32)
    assert np.unique(packed).size > 50, path
    assert pixels_of(rgb, (255, 255, 255)) < 0.95 * rgb.shape[0] * rgb.shape[1], path
    return rgb


def pixels_of(rgb: np.ndarray, colour, tol: int = 0, alpha: float = 1.0) -> int:
    """How many pixels are ``colour`` (within ``tol`` per channel), drawn at ``alpha`` over
    white."""
    want = np.round(255 - alpha * (255 - np.asarray(colour, dtype=float)))
    return int((np.abs(rgb.astype(int) - want).max(-1) <= tol).sum())


@pytest.fixture()
def one_thread():
    """Tiny models on a shared machine: one torch thread (no OpenMP spin-waits between cores),
    the previous count restored afterwards (an in-process ae-train later must not inherit it)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
