"""The model file: safetensors weights + JSON metadata, loaded without unpickling anything.

A model file is one ``.safetensors`` file:
  tensors   ``model.*``  the model's state dict (weights, BatchNorm statistics)
            ``norm.mean``, ``norm.std``  normalization statistics, flattened (float32: [1]
            for global, the model's ``norm_shape()`` flattened for per-feature)
  metadata  key ``aekit`` -> JSON: {"format": "aekit-model", "format_version": 2,
            "config": the kind's config (its "arch" picks the kind), "feature_params": {...}, "normalize": mode,
            "history": [{"epoch", "train_loss", "val_loss", "lr", ...}, ...],
            "seed", "versions": {"aekit", "torch", ...}, "command", ...,
            "tensors_sha256": SHA-256 of every tensor (see ``tensors_sha256``),
            "sha256": SHA-256 of all the other metadata, ``tensors_sha256`` included
            (``metadata_sha256``): the JSON and, through it, the tensors}
Losses in the history are MSE in the features' own units (dB squared).
At load, before anything is allocated: the format version is one this code reads, the
metadata hash matches (format 2; format 1 files, written before it, have none), the
metadata's types are right (``check_metadata``), and the tensors the config implies (built
on the meta device, no memory) have exactly the names, dtypes and shapes stored in the
file's header, so a header claiming huge layers is refused before a byte is allocated.
Then the tensors' hash is verified (files written before it existed load without it), and
weights with NaN/Inf or a normalizer std that is not positive are refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from aekit import __version__
from aekit.errors import InputError
from aekit.system.fileio import atomic_path
from aekit.models.base import ClipModel
from aekit.models.registry import (NORM_MODES, build_model, check_config_dict, config_from_dict,
                                   config_to_dict)

FORMAT = "aekit-model"
FORMAT_VERSION = 2
#: Versions of the format this code reads (1: without the metadata hash).
READABLE_VERSIONS = (1, 2)
#: The metadata key holding the SHA-256 of the rest of the metadata (format 2).
META_HASH = "sha256"
STD_FLOOR = 1e-2  # dB; a constant feature (e.g. always at the -80 dB floor) must not blow up


class Normalizer(torch.nn.Module):
    """Clips x [B, C, M, T] -> (x - mean) / std, fitted on training clips only.

    mode 'none' is the identity; 'global' has one mean and one std; 'per-feature' has
    statistics of ``shape``, which the model chooses (``ClipModel.norm_shape``) and which
    broadcast against one clip: (C, M, T) for a whole-clip model, (C, M, 1) for one that
    sees windows of frames. Model files store them flattened (format version 1: [1] or [D]).
    """

    def __init__(self, mode: str = "none", dim: int | None = None,
                 shape: tuple[int, ...] | None = None):
        super().__init__()
        if mode not in NORM_MODES:
            raise InputError(f"unknown normalization {mode!r}: use {', '.join(NORM_MODES)}")
        self.mode = mode
        if shape is None:
            shape = (dim,) if dim else (1,)
        self.shape = tuple(int(s) for s in shape) if mode == "per-feature" else (1,)
        self.register_buffer("mean", torch.zeros(self.shape))
        self.register_buffer("std", torch.ones(self.shape))

    def fit(self, blocks: Iterable[np.ndarray | torch.Tensor]) -> "Normalizer":
        """Two-moment fit in float64 over blocks of training clips [B, C, M, T]."""
        if self.mode == "none":
            return self
        s = s2 = None
        n = 0
        for b in blocks:
            t = torch.as_tensor(np.asarray(b) if not torch.is_tensor(b) else b).to(torch.float64)
            if self.mode == "global":
                t, dims = t.reshape(-1, 1), (0,)
            elif math.prod(self.shape) == t[0].numel():
                t, dims = t.reshape(t.shape[0], -1), (0,)  # one statistic per element
            else:  # e.g. (C, M, 1): also over the clip axes where the shape is 1
                dims = (0, *(i + 1 for i, k in enumerate(self.shape) if k == 1))
            bs, bs2 = t.sum(dims), (t * t).sum(dims)
            s = bs if s is None else s + bs
            s2 = bs2 if s2 is None else s2 + bs2
            n += math.prod(t.shape[d] for d in dims)
        if not n:
            raise InputError("cannot fit normalization: no training rows")
        mean = s / n
        var = (s2 / n - mean * mean).clamp_min(0)
        self.mean = mean.reshape(self.shape).to(torch.float32)
        self.std = var.sqrt().clamp_min(STD_FLOOR).reshape(self.shape).to(torch.float32)
        return self

    def load(self, mean: torch.Tensor, std: torch.Tensor) -> "Normalizer":
        """Restore statistics (stored flat or shaped)."""
        self.mean = mean.clone().reshape(self.shape)
        self.std = std.clone().reshape(self.shape)
        return self

    def _fit_to(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if t.numel() == 1 or t.dim() == x.dim() - 1:
            return t
        return t.reshape(x.shape[1:])  # flat statistics against flat rows [B, D]

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return x
        return (x - self._fit_to(self.mean, x)) / self._fit_to(self.std, x)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return x
        return x * self._fit_to(self.std, x) + self._fit_to(self.mean, x)

    def loss_scale(self) -> torch.Tensor:
        """Per-feature factor turning squared error in normalized units into dB squared."""
        return self.std * self.std


def versions() -> dict:
    import h5py
    import torchaudio

    return {"aekit": __version__, "torch": torch.__version__, "torchaudio": torchaudio.__version__,
            "numpy": np.__version__, "h5py": h5py.__version__, "python": platform.python_version()}


def save_model(path: str | os.PathLike, model: ClipModel, normalizer: Normalizer,
               feature_params: dict, history: list[dict] | None = None,
               mahalanobis_stats: dict | None = None, **meta) -> None:
    """Write a model file atomically (weights on CPU, contiguous, float32 as trained).

    ``mahalanobis_stats``: {domain: (mean [D], inverse covariance [D, D], n clips)}, stored
    as float64 tensors ``mahalanobis.<domain>.mean`` / ``.icov`` (covered by the tensor hash)
    and listed in the metadata's ``mahalanobis``; a ``mahalanobis`` metadata key given
    without them (carried over from a loaded model's info) is dropped: it lists tensors
    that are not written."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tensors["norm.mean"] = normalizer.mean.detach().to("cpu").reshape(-1).contiguous()
    tensors["norm.std"] = normalizer.std.detach().to("cpu").reshape(-1).contiguous()
    meta.pop("mahalanobis", None)
    mahalanobis = mahalanobis_stats
    if mahalanobis:
        from aekit.models.mahalanobis import RIDGE, VECTOR

        for d, (mean, icov, _n) in mahalanobis.items():
            tensors[f"mahalanobis.{d}.mean"] = torch.as_tensor(mean, dtype=torch.float64).contiguous()
            tensors[f"mahalanobis.{d}.icov"] = torch.as_tensor(icov, dtype=torch.float64).contiguous()
        meta["mahalanobis"] = {"domains": sorted(mahalanobis),
                               "n": {d: int(v[2]) for d, v in sorted(mahalanobis.items())},
                               "dim": int(next(iter(mahalanobis.values()))[0].shape[0]),
                               "vector": VECTOR, "ridge": RIDGE,
                               "distance": "min over domains of sqrt((e-mean)' icov (e-mean))"}
    for k in (META_HASH, "tensors_sha256"):  # computed here, never carried over
        meta.pop(k, None)
    info = {
        "tensors_sha256": tensors_sha256(tensors),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(model.config),
        "feature_params": feature_params,
        "normalize": normalizer.mode,
        "history": history or [],
        "versions": versions(),
        **meta,
    }
    info = json.loads(json.dumps(info))  # as it will be read back: the hash covers that
    info[META_HASH] = metadata_sha256(info)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"aekit": json.dumps(info, sort_keys=True)})


def metadata_sha256(info: dict) -> str:
    """SHA-256 of a model's metadata but the hash itself, as canonical JSON (sorted keys, no
    spaces). It covers ``tensors_sha256``, so metadata and tensors are hashed together."""
    body = {k: v for k, v in info.items() if k != META_HASH}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(b"aekit-model-meta\n" + text.encode("ascii")).hexdigest()


def check_metadata(path, info) -> None:
    """Refuse model metadata that is damaged or malformed (InputError, one line): not a JSON
    object, another format, a format version this code does not read, a metadata hash that
    differs (format 2), a missing or malformed config, and values of the wrong type."""
    if not isinstance(info, dict):
        raise InputError(f"{path}: model metadata is not a JSON object; the file is corrupt")
    if info.get("format") != FORMAT:
        raise InputError(f"{path}: not an aekit model file (format={info.get('format')!r})")
    version = info.get("format_version")
    if (isinstance(version, bool) or not isinstance(version, int)
            or version not in READABLE_VERSIONS):
        raise InputError(f"{path}: unknown model format_version {version!r} (this aekit reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}); written by a newer aekit?")
    if version >= 2:
        want = info.get(META_HASH)
        if not isinstance(want, str) or want != metadata_sha256(info):
            raise InputError(f"{path}: metadata checksum mismatch (the SHA-256 of the JSON header "
                             "differs from the one stored at save time): the file is corrupt")
    if "config" not in info:
        raise InputError(f"{path}: bad model metadata: no config")
    try:
        check_config_dict(info["config"])
    except InputError as exc:
        raise InputError(f"{path}: bad model metadata: {exc}") from None
    types = {"feature_params": dict, "history": list, "threshold": dict, "normalize": str,
             "tensors_sha256": str, "training_scores": dict}  # (aekit.evaluate.ensemble checks it)
    for key, typ in types.items():
        if key in info and not isinstance(info[key], typ):
            raise InputError(f"{path}: bad model metadata: {key} is a {type(info[key]).__name__}, "
                             f"expected a {'JSON object' if typ is dict else typ.__name__}")
    if version >= 2 and "normalize" not in info:
        raise InputError(f"{path}: bad model metadata: no normalize")
    if info.get("normalize", "none") not in NORM_MODES:
        raise InputError(f"{path}: bad model metadata: normalize {info['normalize']!r} is not one "
                         f"of {', '.join(NORM_MODES)}")


_ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16",
              torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32",
              torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def _mahalanobis_domains(path, info: dict | None) -> list[str]:
    """The domains whose Mahalanobis tensors the metadata lists ([] when none)."""
    m = (info or {}).get("mahalanobis")
    if m is None:
        return []
    doms = m.get("domains") if isinstance(m, dict) else None
    if (not isinstance(doms, list) or not doms
            or not all(isinstance(d, str) and d.isidentifier() for d in doms)
            or len(set(doms)) != len(doms)):
        raise InputError(f"{path}: bad model metadata: mahalanobis.domains")
    return doms


def check_stored_shapes(path, model: ClipModel, normalize: str, info: dict | None = None
                        ) -> None:
    """Refuse a file whose stored tensors (names, dtypes, shapes: read from the safetensors
    header only) are not exactly those ``model`` (built on the meta device) and a normalizer
    of ``normalize`` need (InputError, one line). Called before any tensor is allocated, so a
    config claiming layers far larger than the file costs nothing."""
    from safetensors import safe_open

    want = {f"model.{k}": (_ST_DTYPES.get(v.dtype, str(v.dtype)), list(v.shape))
            for k, v in model.state_dict().items()}
    n_norm = math.prod(model.norm_shape()) if normalize == "per-feature" else 1
    want.update({"norm.mean": ("F32", [n_norm]), "norm.std": ("F32", [n_norm])})
    doms = _mahalanobis_domains(path, info)
    if doms:
        from aekit.models.mahalanobis import vector_dim

        dim = vector_dim(model)
        for d in doms:
            want[f"mahalanobis.{d}.mean"] = ("F64", [dim])
            want[f"mahalanobis.{d}.icov"] = ("F64", [dim, dim])
    try:
        with safe_open(str(path), framework="pt") as f:
            got = {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape()))
                   for k in f.keys()}
    except Exception:
        raise InputError(f"{path}: not a model file (expected safetensors written by "
                         "ae-train)") from None
    for name, (dt, shape) in want.items():
        if name not in got:
            raise InputError(f"{path}: weights do not match the stored architecture: tensor "
                             f"{name!r} is missing")
        if got[name] != (dt, shape):
            what = ("normalization statistics" if name.startswith("norm.") else
                    "Mahalanobis statistics:" if name.startswith("mahalanobis.") else
                    "weights do not match the stored architecture:")
            raise InputError(f"{path}: {what} tensor {name!r} is {got[name][0]} "
                             f"{got[name][1]}, the config implies {dt} {shape}")
    extra = sorted(set(got) - set(want))
    if extra:
        raise InputError(f"{path}: weights do not match the stored architecture: unexpected "
                         f"tensor {extra[0]!r}")


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
    """A model with its normalizer: raw dB clips in, per-clip errors and codes out."""

    model: ClipModel
    normalizer: Normalizer
    config: object
    feature_params: dict
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    path: Path | None = None
    #: {domain: (mean float64 [D], inverse covariance float64 [D, D])} fitted by ae-train on
    #: the training clips' error vectors (aekit.models.mahalanobis); None in older files
    mahalanobis: dict | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.config.input_shape)

    @property
    def latent(self) -> int:
        return int(self.config.latent)

    def to(self, device: torch.device | str) -> "LoadedModel":
        self.model.to(device)
        self.normalizer.to(device)
        return self

    @torch.no_grad()
    def score(self, x: torch.Tensor, codes: bool = False) -> tuple[torch.Tensor, ...]:
        """Raw dB clips [B, C, M, T] -> (MSE dB^2 [B], MAE dB [B]) (and codes [B, latent]).

        ``x`` may also be a numpy array (or anything numpy takes), one clip [C, M, T] or a
        batch: it is checked as ``aekit.score_features`` checks clips, and the results are
        numpy arrays then (float64 errors, float32 codes)."""
        if not isinstance(x, torch.Tensor):
            import numpy as np

            from aekit.models.clipcheck import check_clips

            xs = check_clips(self, x)  # float32 [B, C, M, T], finite, the model's shape
            device = next(iter(self.model.parameters())).device
            out = self.score(torch.from_numpy(xs).to(device), codes=codes)
            return tuple(t.float().cpu().numpy().astype(np.float64 if k < 2 else np.float32)
                         for k, t in enumerate(out))
        if codes:
            return self.model.errors_and_codes(x, self.normalizer)
        return self.model.clip_errors(x, self.normalizer)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw dB clips [B, C, M, T] -> (reconstruction in dB [B, C, M, T], code z [B, latent])."""
        return self.model.reconstruct_and_codes(x, self.normalizer)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Raw dB clips [B, C, M, T] -> codes [B, latent]."""
        return self.model.clip_codes(x, self.normalizer)


def make_normalizer(model: ClipModel, mode: str) -> Normalizer:
    """The normalizer of ``mode`` with the statistics shape the model asks for."""
    return Normalizer(mode, shape=model.norm_shape())


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
    except RecursionError:
        raise InputError(f"{p}: model metadata nested too deeply; the file is corrupt") from None
    check_metadata(p, info)
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

    info = read_info(path)  # format, version, metadata hash, types: nothing allocated yet
    try:
        config = config_from_dict(info["config"])
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: bad model config: {exc}") from None
    # The tensors the config implies, counted on the meta device, against the file's header.
    check_stored_shapes(path, build_model(config, "meta"), info.get("normalize", "none"), info)
    tensors = load_file(str(path), device="cpu")
    model = build_model(config)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise InputError(f"{path}: weights do not match the stored architecture: "
                         f"{state_mismatch(model, state)}") from None
    verify_tensors(path, tensors, info)
    norm = make_normalizer(model, info.get("normalize", "none"))
    try:
        norm.load(tensors["norm.mean"], tensors["norm.std"])
    except (KeyError, RuntimeError):
        raise InputError(f"{path}: normalization statistics missing or of the wrong size") from None
    model.eval()
    lm = LoadedModel(model=model, normalizer=norm, config=config,
                     feature_params=info.get("feature_params", {}),
                     history=info.get("history", []), info=info, path=Path(path))
    doms = _mahalanobis_domains(path, info)
    if doms:
        lm.mahalanobis = {d: (tensors[f"mahalanobis.{d}.mean"].numpy(),
                              tensors[f"mahalanobis.{d}.icov"].numpy()) for d in doms}
    return lm.to(device)
