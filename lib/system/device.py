"""Device choice shared by every command that runs a model: CUDA, else Apple MPS, else CPU."""

from __future__ import annotations

import torch

from aekit.errors import InputError


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str | None = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; explicit names are checked, not trusted."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise InputError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps",
                         param="device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{spec} requested but CUDA is not available on this machine",
                             param="device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"{spec}: only {torch.cuda.device_count()} CUDA device(s)",
                             param="device")
    elif dev.type == "mps" and not mps_available():
        raise InputError("mps requested but Apple MPS is not available on this machine",
                         param="device")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unsupported device {spec!r}: use auto, cpu, cuda, cuda:N or mps",
                         param="device")
    return dev
