"""The model registry and the contract every autoencoder follows.

A model kind is a config dataclass plus a builder, registered under its ``--arch`` name
(``register``). Training, ``ae-encode`` and ``ae-eval`` only ever call the methods of
``ClipModel``, so a new kind is one module and one registration:

* input: clips ``[B, C, M, T]`` (log-Mel in dB, normalized by the model's Normalizer);
* training units: a clip holds ``units_per_clip(T)`` training examples (1 for a
  whole-clip model; e.g. one per window of frames), and ``take_units(clips, offsets)``
  cuts unit ``offsets[b]`` of clip ``b`` into a flat vector ``[B, D]``; the data layer
  counts, shuffles and batches (clip, offset) pairs, never clips;
* ``forward(units) -> (reconstruction [B, D'], code [B, latent])``, compared with
  ``unit_target(units)`` (the units themselves, D' = D, for an autoencoder; the centre frame
  of the window for ``--arch interp``, which predicts it from its neighbours);
* per clip: ``clip_errors`` (MSE in dB^2, MAE in dB: the mean over the clip's units) and
  ``clip_codes`` (the mean code over its units);
* normalization: ``norm_shape()`` is the shape of per-feature statistics, broadcast
  against one clip (the whole clip ``(C, M, T)`` here; ``(C, M, 1)`` for frame windows).

The first two kinds, ``baseline`` and ``improved``, live in ``aekit.models.mlp``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from typing import Callable

import torch
from torch import nn

from aekit.errors import InputError
from aekit.train.settings import ARCHS, DEFAULT_HIDDEN, DEFAULT_LATENT, ArchInfo  # noqa: F401 (re-export)


class ClipModel(nn.Module):
    """An autoencoder over clips; subclasses set ``self.config`` and define ``forward``."""

    config: object

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.config.input_shape)  # type: ignore[attr-defined]

    # -- training units
    def units_per_clip(self, frames: int) -> int:
        """How many training examples one clip of ``frames`` frames holds."""
        return 1

    def take_units(self, clips: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """clips [B, C, M, T], offsets [B] -> units [B, D] (here the whole clip)."""
        return clips.flatten(1)  # [B, C*M*T]

    def gather_units(self, x: torch.Tensor, clip: torch.Tensor, offsets: torch.Tensor
                     ) -> torch.Tensor:
        """Units of many clips held together: x [N, C, M, T], clip [B] (positions in x),
        offsets [B] -> [B, D]. A model with many small units per clip overrides this to
        index its units directly instead of copying whole clips first."""
        return self.take_units(x.index_select(0, clip), offsets)

    def forward(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def encode_units(self, units: torch.Tensor) -> torch.Tensor:
        return self(units)[1]

    def unit_target(self, units: torch.Tensor) -> torch.Tensor:
        """What ``forward(units)[0]`` is compared with (loss, scores, error vectors):
        units [B, D] -> [B, D'], here the units themselves (an autoencoder)."""
        return units

    # -- normalization
    def norm_shape(self) -> tuple[int, ...]:
        """Shape of per-feature statistics, broadcast against one clip [C, M, T]."""
        return self.input_shape

    def unit_stats(self, stats: torch.Tensor) -> torch.Tensor:
        """Statistics (broadcast against a clip) laid out like units: broadcast against [B, D]."""
        if stats.numel() == 1:
            return stats.reshape(1)
        clip = stats.reshape(stats.shape if stats.dim() == 3 else self.norm_shape())
        clip = clip.expand(*self.input_shape).unsqueeze(0)  # [1, C, M, T]
        return self.take_units(clip, torch.zeros(1, dtype=torch.int64, device=clip.device))[0]

    def target_stats(self, stats: torch.Tensor) -> torch.Tensor:
        """Statistics laid out like ``unit_target``'s output: broadcast against [B, D']."""
        s = self.unit_stats(stats)
        return s if s.numel() == 1 else self.unit_target(s.unsqueeze(0))[0]

    # -- per clip (raw dB in, dB out)
    def _all_units(self, xn: torch.Tensor):
        k = self.units_per_clip(xn.shape[-1])
        for o in range(k):
            yield k, self.take_units(xn, torch.full((xn.shape[0],), o, dtype=torch.int64,
                                                    device=xn.device))

    def clip_errors(self, x: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw dB clips [B, C, M, T] -> (MSE dB^2 [B], MAE dB [B]), the mean over each clip's units."""
        xn = norm.transform(x)
        std = None if norm.mode == "none" else self.target_stats(norm.std)
        mse = mae = None
        for k, u in self._all_units(xn):
            err = self(u)[0].float() - self.unit_target(u)  # [B, D'], normalized units
            if std is not None:
                err = err * std  # dB
            a, b = err.square().mean(1), err.abs().mean(1)
            mse, mae = (a, b) if mse is None else (mse + a, mae + b)
        return mse / k, mae / k

    def clip_codes(self, x: torch.Tensor, norm) -> torch.Tensor:
        """Raw dB clips [B, C, M, T] -> codes [B, latent], the mean over each clip's units."""
        xn = norm.transform(x)
        codes = [self.encode_units(u) for _, u in self._all_units(xn)]
        return codes[0] if len(codes) == 1 else torch.stack(codes).mean(0)

    def errors_and_codes(self, x: torch.Tensor, norm
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(MSE [B], MAE [B], codes [B, latent]); a model may do it in one pass."""
        return (*self.clip_errors(x, norm), self.clip_codes(x, norm))

    def reconstruct_and_codes(self, x: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction in dB [B, C, M, T], codes [B, latent]); a model may do it in one pass."""
        return self.reconstruct_clips(x, norm), self.clip_codes(x, norm)

    def reconstruct_clips(self, x: torch.Tensor, norm) -> torch.Tensor:
        """Raw dB clips [B, C, M, T] -> their reconstruction in dB (for plots)."""
        if self.units_per_clip(x.shape[-1]) != 1:
            raise NotImplementedError(f"{type(self).__name__} does not reconstruct whole clips")
        offsets = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        out, _ = self(self.take_units(norm.transform(x), offsets))
        return norm.inverse(out.reshape(x.shape))


# --------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class ModelKind:
    name: str
    config_cls: type  # a dataclass with at least arch, input_shape, latent
    build: Callable[[object], ClipModel]


_REGISTRY: dict[str, ModelKind] = {}


def register(name: str, config_cls: type, build: Callable[[object], ClipModel], *,
             batch_norm: bool = False, help: str = "", score: str = "mse") -> None:
    """Make ``--arch name`` build ``build(config_cls(...))``. ``score``: the anomaly score
    ``--score auto`` prefers for the kind (``ArchInfo.score``: 'mse' or 'mahalanobis')."""
    if score not in ("mse", "mahalanobis"):
        raise ValueError(f"score must be 'mse' or 'mahalanobis', got {score!r}")
    _REGISTRY[name] = ModelKind(name, config_cls, build)
    if name not in ARCHS:
        ARCHS[name] = ArchInfo(getattr(build, "__module__", ""), batch_norm, help, score=score)


def kind(name: str) -> ModelKind:
    if name not in _REGISTRY and name in ARCHS:
        importlib.import_module(ARCHS[name].module)
    if name not in _REGISTRY:
        raise InputError(f"unknown architecture {name!r}: use {' or '.join(ARCHS)}")
    return _REGISTRY[name]


def make_config(arch: str, input_shape, **options):
    """The config of kind ``arch`` for clips of ``input_shape``; options it has no field for
    (e.g. --hidden for a kind without hidden layers) are ignored."""
    cls = kind(arch).config_cls
    names = {f.name for f in fields(cls)}
    return cls(arch=arch, input_shape=tuple(input_shape),
               **{k: v for k, v in options.items() if k in names})


def check_config_dict(d) -> None:
    """Refuse a stored config (model file, checkpoint) whose fields are missing or of the wrong
    type or range, before anything is built (InputError, one line).

    Each field must have the type of its default: a positive integer for an int (a width, a
    context), a finite number for a float, a list of positive integers for a tuple (shapes,
    widths), a string for a str; ``arch`` and ``input_shape`` must be present. Keys the kind
    does not know are ignored, as ``config_from_dict`` does.
    """
    import math
    from dataclasses import MISSING

    if not isinstance(d, dict):
        raise InputError(f"config is not a JSON object but {type(d).__name__}")
    arch = d.get("arch")
    if not isinstance(arch, str):
        raise InputError(f"config: arch {arch!r} is not a name")
    cls = kind(arch).config_cls
    for f in fields(cls):
        if f.name not in d:
            if f.name == "input_shape" or (f.default is MISSING and f.default_factory is MISSING):
                raise InputError(f"config: {f.name} is missing")
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        v = d[f.name]
        if isinstance(default, bool):
            ok = isinstance(v, bool)
        elif isinstance(default, int):
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= 1
        elif isinstance(default, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        elif isinstance(default, tuple):
            ok = (isinstance(v, list) and len(v) >= 1
                  and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)
                  and (f.name != "input_shape" or len(v) == 3))
        elif isinstance(default, str):
            ok = isinstance(v, str)
        else:
            ok = True
        if not ok:
            shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
            raise InputError(f"config: {f.name}={shown} is not valid "
                             f"(expected {_expected(default, f.name)})")


def _expected(default, name: str) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "a positive integer"
    if isinstance(default, float):
        return "a finite number"
    if isinstance(default, tuple):
        return "3 positive integers" if name == "input_shape" else "a list of positive integers"
    return "a string"


def config_from_dict(d: dict):
    """The config stored in a model file or checkpoint (its 'arch' picks the kind)."""
    cls = kind(d.get("arch", "improved")).config_cls
    if hasattr(cls, "from_dict"):
        return cls.from_dict(d)
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def config_to_dict(config) -> dict:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    from dataclasses import asdict

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}


def build_model(config, device: torch.device | str | None = None) -> ClipModel:
    """Build the model (on the meta device for counting without memory: device='meta')."""
    build = kind(config.arch).build
    if device is not None and str(device) == "meta":
        with torch.device("meta"):
            return build(config)
    model = build(config)
    return model.to(device) if device is not None else model


def unit_target(net: nn.Module, units: torch.Tensor) -> torch.Tensor:
    """``ClipModel.unit_target`` of a model, a DDP-wrapped one (``.module``) included; the
    units themselves for any other module."""
    f = getattr(getattr(net, "module", net), "unit_target", None)
    return units if f is None else f(units)


def mirrored(widths: list[int], block: Callable[[int, int], list[nn.Module]]
             ) -> tuple[nn.Sequential, nn.Sequential]:
    """An encoder of ``block(a, b)`` through ``widths`` (input, hidden..., latent) and its
    mirror as decoder, ending in a plain Linear to the input width (no activation)."""
    enc: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        enc += block(a, b)
    back = widths[::-1]  # latent, ..., hidden[0], input
    dec: list[nn.Module] = []
    for a, b in zip(back[:-2], back[1:-1]):
        dec += block(a, b)
    dec.append(nn.Linear(back[-2], back[-1]))
    return nn.Sequential(*enc), nn.Sequential(*dec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_summary(model: nn.Module) -> list[str]:
    """One short line per layer, e.g. 'Linear(25024->8224)', 'BatchNorm1d(8224)', 'LeakyReLU(0.1)'."""
    out = []
    for m in model.modules():
        if list(m.children()):
            continue
        if isinstance(m, nn.Linear):
            out.append(f"Linear({m.in_features}->{m.out_features})")
        elif isinstance(m, nn.BatchNorm1d):
            out.append(f"BatchNorm1d({m.num_features})")
        elif isinstance(m, nn.LeakyReLU):
            out.append(f"LeakyReLU({m.negative_slope})")
        else:
            out.append(type(m).__name__)
    return out


from aekit.models.mlp import LEAKY_SLOPE, AEConfig, Autoencoder  # noqa: E402,F401  (the first two kinds)
