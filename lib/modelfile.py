"""The model file: safetensors weights + JSON metadata, loaded without unpickling anything.

A model file is one ``.safetensors`` file:
  tensors   ``model.*``  the Autoencoder state dict (weights, BatchNorm statistics)
            ``norm.mean``, ``norm.std``  normalization statistics (float32, shape [1] or [D])
  metadata  key ``aekit`` -> JSON: {"format": "aekit-model", "format_version": 1,
            "config": AEConfig.to_dict(), "feature_params": {...}, "normalize": mode,
            "history": [{"epoch", "train_loss", "val_loss", "lr", ...}, ...],
            "seed", "versions": {"aekit", "torch", ...}, "command", ...,
            "tensors_sha256": SHA-256 of every tensor (see ``tensors_sha256``)}
Losses in the history are MSE in the features' own units (dB squared).
At load the hash is verified (files written before it existed load without it), and
weights with NaN/Inf or a normalizer std that is not positive are refused.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from . import __version__
from .errors import InputError
from .fileio import atomic_path
from .models import AEConfig, Autoencoder, build_model

FORMAT = "aekit-model"
FORMAT_VERSION = 1
NORM_MODES = ("none", "global", "per-feature")
STD_FLOOR = 1e-2  # dB; a constant feature (e.g. always at the -80 dB floor) must not blow up


class Normalizer(torch.nn.Module):
    """x -> (x - mean) / std, fitted on training rows only. mode 'none' is the identity."""

    def __init__(self, mode: str = "none", dim: int = 1):
        super().__init__()
        if mode not in NORM_MODES:
            raise InputError(f"unknown normalization {mode!r}: use {', '.join(NORM_MODES)}")
        self.mode = mode
        size = dim if mode == "per-feature" else 1
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("std", torch.ones(size))

    def fit(self, blocks: Iterable[np.ndarray | torch.Tensor]) -> "Normalizer":
        """Two-moment fit in float64 over blocks of [B, D] (or [B, C, M, T]) training rows."""
        if self.mode == "none":
            return self
        s = s2 = None
        n = 0
        for b in blocks:
            t = torch.as_tensor(np.asarray(b) if not torch.is_tensor(b) else b)
            t = t.reshape(t.shape[0], -1).to(torch.float64)
            if self.mode == "global":
                t = t.reshape(-1, 1)
            bs, bs2 = t.sum(0), (t * t).sum(0)
            s = bs if s is None else s + bs
            s2 = bs2 if s2 is None else s2 + bs2
            n += t.shape[0]
        if not n:
            raise InputError("cannot fit normalization: no training rows")
        mean = s / n
        var = (s2 / n - mean * mean).clamp_min(0)
        self.mean = mean.to(torch.float32)
        self.std = var.sqrt().clamp_min(STD_FLOOR).to(torch.float32)
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return x
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return x
        return x * self.std + self.mean

    def loss_scale(self) -> torch.Tensor:
        """Per-dimension factor turning squared error in normalized units into dB squared."""
        return self.std * self.std


def versions() -> dict:
    import h5py
    import torchaudio

    return {"aekit": __version__, "torch": torch.__version__, "torchaudio": torchaudio.__version__,
            "numpy": np.__version__, "h5py": h5py.__version__, "python": platform.python_version()}


def save_model(path: str | os.PathLike, model: Autoencoder, normalizer: Normalizer,
               feature_params: dict, history: list[dict] | None = None, **meta) -> None:
    """Write a model file atomically (weights on CPU, contiguous, float32 as trained)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tensors["norm.mean"] = normalizer.mean.detach().to("cpu").contiguous()
    tensors["norm.std"] = normalizer.std.detach().to("cpu").contiguous()
    info = {
        "tensors_sha256": tensors_sha256(tensors),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "feature_params": feature_params,
        "normalize": normalizer.mode,
        "history": history or [],
        "versions": versions(),
        **meta,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"aekit": json.dumps(info, sort_keys=True)})


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor, in name order: name, dtype, shape and raw bytes of each.
    Independent of how safetensors lays the file out, so it checks the values themselves."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def verify_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], info: dict) -> None:
    """Refuse a model file whose tensors are damaged or unusable (InputError, one line):
    a SHA-256 that differs from the one stored at save time (bit rot, editing), NaN/Inf in
    any tensor, a normalizer std that is not positive (divides by zero), or missing norm.*."""
    want = info.get("tensors_sha256")
    if want is not None and tensors_sha256(tensors) != want:
        raise InputError(f"{path}: tensor checksum mismatch (SHA-256 differs from the one stored "
                         "at save time): the file is corrupt")
    for key in ("norm.mean", "norm.std"):
        if key not in tensors:
            raise InputError(f"{path}: no {key} tensor; not a complete aekit model file")
    bad = [k for k in sorted(tensors)
           if tensors[k].is_floating_point() and not bool(torch.isfinite(tensors[k]).all())]
    if bad:
        raise InputError(f"{path}: non-finite values (NaN/Inf) in {', '.join(bad[:3])}"
                         + (f" and {len(bad) - 3} more tensor(s)" if len(bad) > 3 else "")
                         + "; the model cannot be used")
    std = tensors["norm.std"]
    if std.numel() and not bool((std > 0).all()):
        raise InputError(f"{path}: normalizer std has {int((std <= 0).sum())} value(s) <= 0 "
                         "(would divide by zero); the model cannot be used")


@dataclass
class LoadedModel:
    model: Autoencoder
    normalizer: Normalizer
    config: AEConfig
    feature_params: dict
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.config.input_shape

    def to(self, device: torch.device | str) -> "LoadedModel":
        self.model.to(device)
        self.normalizer.to(device)
        return self

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw dB features [B, C, M, T] -> (reconstruction in dB [B, C, M, T], code z [B, latent])."""
        shape = x.shape
        xn = self.normalizer.transform(x.reshape(shape[0], -1))  # [B, D]
        out, z = self.model(xn)
        return self.normalizer.inverse(out).reshape(shape), z

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        xn = self.normalizer.transform(x.reshape(x.shape[0], -1))
        return self.model.encoder(xn)


def read_info(path: str | os.PathLike) -> dict:
    """The JSON metadata of a model file, without loading tensors."""
    from safetensors import safe_open

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such model file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        raise InputError(f"{p}: not a model file (expected safetensors written by ae-train)") from None
    try:
        info = json.loads(meta["aekit"])
    except (KeyError, json.JSONDecodeError):
        raise InputError(f"{p}: safetensors file without aekit metadata; not written by ae-train") from None
    if info.get("format") != FORMAT:
        raise InputError(f"{p}: not an aekit model file (format={info.get('format')!r})")
    return info


def state_mismatch(model: torch.nn.Module, state: dict) -> str:
    """Why ``state`` does not fit ``model``: the first missing, extra or misshapen tensor."""
    own = model.state_dict()
    for name, want in own.items():
        if name not in state:
            return f"tensor {name!r} is missing"
        got = state[name]
        if tuple(got.shape) != tuple(want.shape):
            return (f"tensor {name!r} has shape {list(got.shape)}, the architecture expects "
                    f"{list(want.shape)}")
    extra = [k for k in state if k not in own]
    if extra:
        return f"unexpected tensor {extra[0]!r}"
    return "tensors do not match"


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a model file safely (safetensors: no code runs); the model is in eval mode."""
    from safetensors.torch import load_file

    info = read_info(path)
    config = AEConfig.from_dict(info["config"])
    tensors = load_file(str(path), device="cpu")
    model = build_model(config)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise InputError(f"{path}: weights do not match the stored architecture: "
                         f"{state_mismatch(model, state)}") from None
    verify_tensors(path, tensors, info)
    norm = Normalizer(info.get("normalize", "none"), dim=config.input_dim)
    norm.mean = tensors["norm.mean"].clone()
    norm.std = tensors["norm.std"].clone()
    model.eval()
    lm = LoadedModel(model=model, normalizer=norm, config=config,
                     feature_params=info.get("feature_params", {}),
                     history=info.get("history", []), info=info, path=Path(path))
    return lm.to(device)
