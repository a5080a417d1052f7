"""The model registry: one entry per model kind, owning everything about it.

A kind is one module of ``aekit.models`` that defines a config dataclass and a model (a
``aekit.models.base.ClipModel``) and registers them under its name with ``register(...)``;
its entry (``ModelKind``) holds everything the rest of aekit needs to know about the kind:

* ``config_cls``: its config dataclass, with at least ``arch``, ``input_shape`` (C, M, T) and
  ``latent``; the field defaults are the kind's defaults. A field named like a model setting
  of training (``hidden``, ``latent``: ``aekit.train.settings.MODEL_FIELDS``) is filled from
  it; a kind without such a field refuses the setting (``ae-train --hidden`` with a kind that
  has no hidden layers is an error, not silently ignored);
* ``options``: its own integer fields offered as training options (``context`` ->
  ``ae-train --context``), each a ``ModelOption`` (help, minimum, odd), its default the field's;
* ``defaults``: the other training settings it changes (``batch_size``, ``lr``, ``epochs``),
  and ``validated``: its values when a validation fold exists;
* ``batch_norm`` (a batch needs at least 2 units), ``help`` (one line for ``--arch``) and
  ``score``: the anomaly score ``--score auto`` picks for it ('mse' or 'mahalanobis').

The built-in kinds are found by importing every module of the ``aekit.models`` package
once, when a kind is first looked up (``kinds()``, ``kind(name)``): the ``register`` call in
a module is its one registration. Third-party kinds register with ``register(...)`` at run
time (a notebook), or from an installed package through the entry-point group
``aekit.models`` (``[project.entry-points."aekit.models"] mykind = "mypkg.mykind"``: the
module is imported at discovery and calls ``register``).

This module does not import torch (``ae-train``'s options are read from it); the model
contract and the shared layers are in ``aekit.models.base``.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

from aekit.errors import InputError

LOG = logging.getLogger("aekit")

#: The input normalizations a model file may hold (``aekit.models.modelfile.Normalizer``).
NORM_MODES = ("none", "global", "per-feature")
SCORES = ("mse", "mahalanobis")


@dataclass(frozen=True)
class ModelOption:
    """An integer config field of a kind offered as a training option (``context`` ->
    ``ae-train --context``); its default is the field's default."""

    help: str
    min: int = 1
    odd: bool = False  # only odd values (a window with a centre frame)


@dataclass(frozen=True)
class ModelKind:
    """A registered model kind (see the module)."""

    name: str
    config_cls: type
    build: Callable[[Any], Any]  # config -> ClipModel
    help: str = ""
    batch_norm: bool = False
    score: str = "mse"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    validated: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, ModelOption] = field(default_factory=dict)

    @property
    def fields(self) -> tuple[str, ...]:
        """The config's field names."""
        return tuple(f.name for f in fields(self.config_cls))

    def uses(self, name: str) -> bool:
        """Whether the config has a field ``name`` (a setting it takes)."""
        return name in self.fields

    def default(self, name: str):
        """The default of config field ``name``."""
        f = {f.name: f for f in fields(self.config_cls)}[name]
        return f.default_factory() if f.default is MISSING else f.default


_REGISTRY: dict[str, ModelKind] = {}
_discovered = False


def register(name: str, config_cls: type, build: Callable[[Any], Any], *,
             batch_norm: bool = False, help: str = "", score: str = "mse",
             defaults: Mapping[str, Any] | None = None,
             validated: Mapping[str, Any] | None = None,
             options: Mapping[str, ModelOption] | None = None) -> ModelKind:
    """Register the kind ``name``: ``build(config_cls(...))`` makes its model. See the module
    for the other entries; a second registration of a name replaces the first."""
    if score not in SCORES:
        raise ValueError(f"score must be 'mse' or 'mahalanobis', got {score!r}")
    if not isinstance(name, str) or not name or name.startswith("-") or "," in name:
        raise ValueError(f"a model kind's name must be a word, got {name!r}")
    if not is_dataclass(config_cls):
        raise ValueError(f"model kind {name!r}: the config must be a dataclass")
    names = {f.name for f in fields(config_cls)}
    missing = {"arch", "input_shape", "latent"} - names
    if missing:
        raise ValueError(f"model kind {name!r}: the config has no field {', '.join(sorted(missing))}")
    for f in fields(config_cls):  # what a model file of this kind must be able to hold
        if f.name in ("arch", "input_shape"):
            continue
        if f.default is MISSING and f.default_factory is MISSING:
            raise ValueError(f"model kind {name!r}: config field {f.name} needs a default")
        d = f.default if f.default is not MISSING else f.default_factory()
        if (isinstance(d, int) and not isinstance(d, bool) and d < 1) or (
                isinstance(d, tuple) and not all(type(x) is int and x >= 1 for x in d)):
            raise ValueError(f"model kind {name!r}: config field {f.name} defaults to {d!r}; "
                             "integer fields (and tuples of them) are sizes or counts, >= 1, "
                             "as a model file holds them")
    options = dict(options or {})
    defaults_of = {f.name: f.default for f in fields(config_cls)}
    for opt in options:
        if opt not in names:
            raise ValueError(f"model kind {name!r}: option {opt!r} is not a field of its config")
        if opt in ("arch", "input_shape", "hidden", "latent"):
            raise ValueError(f"model kind {name!r}: {opt!r} is a setting of every kind, not an "
                             "option of its own")
        if type(defaults_of[opt]) is not int:
            raise ValueError(f"model kind {name!r}: option {opt!r} needs an integer default")
    for key in (*(defaults or {}), *(validated or {})):
        if key in names:
            raise ValueError(f"model kind {name!r}: {key!r} is a field of its config: "
                             "its default is the field's")
    entry = ModelKind(name, config_cls, build, help=help, batch_norm=batch_norm, score=score,
                      defaults=MappingProxyType(dict(defaults or {})),
                      validated=MappingProxyType(dict(validated or {})),
                      options=MappingProxyType(options))
    _REGISTRY[name] = entry
    return entry


def _discover() -> None:
    """Import every module of the aekit.models package and every ``aekit.models`` entry
    point, once: their ``register`` calls fill the registry."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import pkgutil
    from importlib.metadata import entry_points

    import aekit.models as package

    for mod in pkgutil.iter_modules(package.__path__):
        if mod.name != "registry":
            importlib.import_module(f"{package.__name__}.{mod.name}")
    for ep in entry_points(group="aekit.models"):
        try:
            ep.load()
        except Exception as exc:  # a broken plug-in must not take the built-in kinds down
            LOG.warning("model kinds: entry point %s = %s not loaded: %s", ep.name, ep.value, exc)


def kinds() -> Mapping[str, ModelKind]:
    """Every registered kind by name (the built-in ones found first)."""
    _discover()
    return MappingProxyType(_REGISTRY)


def kind(name: str) -> ModelKind:
    """The entry of kind ``name`` (InputError, param 'arch', when there is none)."""
    if name not in _REGISTRY:
        _discover()
    if name not in _REGISTRY:
        raise InputError(f"unknown model kind {name!r}: use {', '.join(_REGISTRY)}", param="arch")
    return _REGISTRY[name]


def make_config(arch: str, input_shape, **options):
    """The config of kind ``arch`` for clips of ``input_shape``; None options are left at the
    config's default, an option the kind has no field for is refused (InputError)."""
    entry = kind(arch)
    names = entry.fields
    given = {k: v for k, v in options.items() if v is not None}
    for k in given:
        if k not in names or k in ("arch", "input_shape"):
            raise InputError(f"does not apply to model kind {arch!r}", param=k)
    return entry.config_cls(arch=arch, input_shape=tuple(input_shape), **given)


def check_config_dict(d) -> None:
    """Refuse a stored config (model file, checkpoint) whose fields are missing or of the wrong
    type or range, before anything is built (InputError, one line).

    Each field must have the type of its default: a positive integer for an int (a width, a
    context), a finite number for a float, a list of positive integers for a tuple (shapes,
    widths), a string for a str; ``arch`` and ``input_shape`` must be present. Keys the kind
    does not know are ignored, as ``config_from_dict`` does.
    """
    import math

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


def build_model(config, device=None):
    """Build the model of a config (on the meta device for counting without memory:
    device='meta')."""
    import torch

    build = kind(config.arch).build
    if device is not None and str(device) == "meta":
        with torch.device("meta"):
            return build(config)
    model = build(config)
    return model.to(device) if device is not None else model
