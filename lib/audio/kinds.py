"""The registry of feature kinds: one entry per kind, keyed by the name a features file
records in its ``kind`` attribute (and ``ae-featurize --kind`` takes).

An entry is the kind's parameter dataclass (a subclass of ``aekit.audio.params.ClipParams``),
which owns everything about the kind: its parameters (fields = HDF5 attributes = command-line
options), its defaults and presets, its front end (``frontend()``), its checks (``checks()``,
``check()``), its clip shape and its compatibility check (``mismatch``). The commands build
their options from the entries and dispatch on them; no code outside a kind's own module names
a kind.
"""

from __future__ import annotations

import logging
from dataclasses import fields

from aekit.audio.features import MelParams
from aekit.audio.linear import LinearParams
from aekit.audio.params import ClipParams
from aekit.errors import InputError

LOG = logging.getLogger("aekit")
#: The entry-point group of feature kinds in other packages: ``NAME = "module:Class"``.
ENTRY_POINTS = "aekit.feature_kinds"

#: Feature kinds by name. A file without a ``kind`` attribute is 'logmel' (written before
#: kinds existed).
FEATURE_KINDS: dict[str, type[ClipParams]] = {}
DEFAULT_KIND = MelParams.kind


def register(cls: type[ClipParams]) -> type[ClipParams]:
    """Add a feature kind (usable as a class decorator). Its name must be new, and a field it
    shares by name with another kind must be the same option (type, choices, none_ok): the
    commands have one option per name."""
    if not (isinstance(cls, type) and issubclass(cls, ClipParams)) or not cls.kind:
        raise TypeError("a feature kind is a ClipParams subclass with a kind name")
    if cls.kind in FEATURE_KINDS and FEATURE_KINDS[cls.kind] is not cls:
        raise ValueError(f"feature kind {cls.kind!r} is already registered")
    known = option_fields()
    for f in fields(cls):
        other = known.get(f.name)
        if other is not None and any(other.metadata[k] != f.metadata[k]
                                     for k in ("type", "choices", "none_ok")):
            raise ValueError(f"feature kind {cls.kind!r}: parameter {f.name} differs in type "
                             "or choices from the one other kinds have")
    FEATURE_KINDS[cls.kind] = cls
    return cls


def params_class(kind: str | None) -> type[ClipParams]:
    """The parameter class of ``kind`` (None: the default, logmel); InputError if unknown."""
    kind = kind or DEFAULT_KIND
    if kind not in FEATURE_KINDS:
        raise InputError(f"unknown feature kind {kind!r}: this aekit knows "
                         f"{', '.join(FEATURE_KINDS)}", param="kind")
    return FEATURE_KINDS[kind]


def option_fields() -> dict:
    """Every registered kind's fields by name (the first kind's where several share one):
    the feature options of the commands."""
    out: dict = {}
    for cls in FEATURE_KINDS.values():
        for f in fields(cls):
            out.setdefault(f.name, f)
    return out


def kinds_of(name: str) -> list[str]:
    """The kinds that have the parameter ``name``."""
    return [k for k, cls in FEATURE_KINDS.items() if name in {f.name for f in fields(cls)}]


def mismatch(a: dict, b: dict) -> list[str]:
    """Differences between two feature-parameter dicts (files' or models'): their kinds first,
    then the parameters of that kind, by its own compatibility check."""
    ka, kb = a.get("kind", DEFAULT_KIND), b.get("kind", DEFAULT_KIND)
    if ka == kb:
        return params_class(ka).mismatch(a, b)
    # different kinds: every parameter either side has is listed, as it is
    return [f"kind={ka} vs {kb}", *(f"{k}={a.get(k)} vs {b.get(k)}" for k in dict.fromkeys([*a, *b])
                                    if k != "kind" and a.get(k) != b.get(k))]


def _load_entry_points() -> None:
    """Register the kinds other installed packages declare (group ``aekit.feature_kinds``); a
    broken one is logged and skipped, never taking the built-in kinds down."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINTS):
        try:
            cls = ep.load()
            if FEATURE_KINDS.get(getattr(cls, "kind", None)) is not cls:
                register(cls)
        except Exception as exc:
            LOG.warning("feature kinds: entry point %s = %s not loaded: %s", ep.name, ep.value,
                        exc)


# The built-in kinds (a kind inside aekit: one line here), then those of other packages.
for _cls in (MelParams, LinearParams):
    register(_cls)
_load_entry_points()
