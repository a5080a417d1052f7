"""Training settings: defaults, presets (the module imports no torch; making a TrainSettings
looks its model kind up, and the kinds bring torch).

Everything that decides the trained weights is one ``TrainSettings``; ``ae-train``'s
options take their defaults and help from here, so a default lives in one place. What a
model kind changes (its config's defaults, its own options, its training defaults) is its
entry in ``aekit.models.registry``, read from there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from aekit.errors import InputError
from aekit.models import registry
from aekit.models.registry import NORM_MODES  # noqa: F401  (the settings' choices)


#: The settings that are a model's config fields: a kind whose config has the field takes it
#: (default: the config's own), a kind without it refuses it (aekit.models.registry).
MODEL_FIELDS = ("hidden", "latent")
SCHEDULES = ("constant", "cosine", "plateau")
PRECISIONS = ("fp32", "bf16")
KEEP = ("best", "last")
DATA_MODES = ("auto", "memory", "stream")
EXIT_PREEMPTED = 3  # exit status after a stop request wrote a resumable checkpoint


@dataclass
class TrainSettings:
    """Everything that decides the trained weights. Defaults are the 'default' preset."""

    arch: str = "improved"
    hidden: tuple[int, ...] | None = None  # None: the kind's own (MODEL_FIELDS)
    latent: int | None = None
    epochs: int = 20  # the tutorial's; with a validation fold, WITH_VALIDATION's maximum
    batch_size: int = 25  # the tutorial's; per process under DDP
    lr: float = 1e-3  # the tutorial's Adam learning rate (peak of the schedule)
    normalize: str = "global"  # raw dB (std ~20-50) makes the first steps overshoot
    schedule: str = "cosine"  # decay to min_lr_ratio x lr: ends in a minimum, no late blow-up
    warmup: float = 1.0  # epochs of linear warm-up: Adam's first steps are the largest
    min_lr_ratio: float = 0.01
    balanced_batches: bool = True  # no tiny last batch under BatchNorm
    seed: int = 42
    precision: str = "fp32"
    early_stop: int | None = None  # epochs without a better validation loss (0: none)
    keep: str = "best"  # weights written to the model file: best validation epoch, or last
    preset: str = "default"
    model_options: dict = field(default_factory=dict)  # the kind's own (ModelKind.options)

    def __post_init__(self) -> None:
        if self.early_stop == 0:  # --early-stop 0: no early stop
            self.early_stop = None
        entry = self._resolve_kind()
        checks = [
            ("normalize", self.normalize in NORM_MODES,
             f"unknown {self.normalize!r}: use {', '.join(NORM_MODES)}"),
            ("schedule", self.schedule in SCHEDULES,
             f"unknown {self.schedule!r}: use {', '.join(SCHEDULES)}"),
            ("precision", self.precision in PRECISIONS,
             f"unknown {self.precision!r}: use {', '.join(PRECISIONS)}"),
            ("keep", self.keep in KEEP, f"unknown {self.keep!r}: use best or last"),
            ("epochs", self.epochs >= 1, "must be at least 1"),
            ("batch_size", self.batch_size >= 1, "must be at least 1"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "must be a positive number"),
            ("warmup", self.warmup >= 0, "must be >= 0"),
            ("early_stop", self.early_stop is None or self.early_stop >= 1, "must be at least 1"),
        ]
        for param, ok, msg in checks:
            if not ok:
                raise InputError(msg, param=param)
        self._check_kind(entry)

    def _resolve_kind(self) -> registry.ModelKind:
        """The kind's entry; its config's defaults for the model settings it takes, those it
        does not take refused (left None: not recorded)."""
        entry = registry.kind(self.arch)
        for name in MODEL_FIELDS:
            if entry.uses(name):
                if getattr(self, name) is None:
                    setattr(self, name, entry.default(name))
            elif getattr(self, name) is not None:
                raise InputError(f"does not apply to model kind {self.arch!r} (its config has "
                                 f"no {name})", param=name)
        if self.hidden is not None:
            self.hidden = tuple(int(h) for h in self.hidden)
        return entry

    def _check_kind(self, entry: registry.ModelKind) -> None:
        if entry.batch_norm and self.batch_size < 2:
            raise InputError(f"must be at least 2 for model kind {self.arch!r} (BatchNorm needs "
                             "2 rows)", param="batch_size")
        if self.hidden is not None and (not self.hidden or any(h <= 0 for h in self.hidden)):
            raise InputError("layer widths must be positive", param="hidden")
        if self.latent is not None and self.latent <= 0:
            raise InputError("must be positive", param="latent")
        declared = entry.options
        self.model_options = {**{k: entry.default(k) for k in declared}, **self.model_options}
        for k, v in self.model_options.items():
            if k not in declared:
                raise InputError(f"does not apply to model kind {self.arch!r}", param=k)
            if not isinstance(v, int) or isinstance(v, bool) or v < declared[k].min:
                raise InputError(f"must be at least {declared[k].min}", param=k)
            if declared[k].odd and v % 2 == 0:
                raise InputError(f"{v} must be odd for model kind {self.arch!r} (a window around "
                                 "a centre frame)", param=k)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = None if self.hidden is None else list(self.hidden)
        return d


#: --preset: 'tutorial' is the tutorial exactly (raw dB, constant lr, DataLoader batches,
#: 20 epochs whether or not there is a validation fold).
PRESETS: dict[str, dict] = {
    "default": {},
    "tutorial": dict(normalize="none", schedule="constant", warmup=0.0, balanced_batches=False,
                     keep="last", epochs=20, batch_size=25, lr=1e-3, precision="fp32",
                     early_stop=None),
}

#: The default preset's values when a validation fold exists (ae-train --fold): --epochs is a
#: maximum, the run stops after --early-stop epochs without a better validation loss, and
#: the learning rate is halved after 3 such epochs (--schedule plateau, aekit.train.schedule),
#: which needs no fixed horizon. Measured (README, "Training"): at 20 epochs every frames
#: model's best epoch was one of its last; with these, runs stop by themselves.
WITH_VALIDATION = dict(epochs=100, early_stop=10, schedule="plateau")

#: Settings a resumed run must share with the checkpoint (others, e.g. early_stop, may change).
RESUME_MUST_MATCH = ("arch", "hidden", "latent", "epochs", "batch_size", "lr", "normalize",
                     "schedule", "warmup", "min_lr_ratio", "balanced_batches", "seed", "precision",
                     "model_options")


def make_settings(preset: str = "default", validation: bool = False, **overrides) -> TrainSettings:
    """Settings of a preset with the given (non-None) values overriding it.

    Precedence, lowest first: TrainSettings' defaults, the kind's (its config's defaults and
    ``ModelKind.defaults``), with ``validation`` (a validation fold will be given)
    WITH_VALIDATION and the kind's ``validated``, the preset's, the explicit values. ``model_options`` (a dict; None values
    dropped) holds the kind's own options.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}: use {', '.join(PRESETS)}", param="preset")
    explicit = {k: v for k, v in overrides.items() if v is not None}
    if "model_options" in explicit:
        explicit["model_options"] = {k: v for k, v in explicit["model_options"].items()
                                     if v is not None}
    arch = explicit.get("arch", PRESETS[preset].get("arch", default_of("arch")))
    entry = registry.kind(arch)
    kind = dict(entry.defaults)
    if validation:
        kind.update(WITH_VALIDATION)
        kind.update(entry.validated)
    values = {**kind, **PRESETS[preset], **explicit}
    names = {f.name for f in fields(TrainSettings)}
    unknown = set(values) - names
    if unknown:
        raise TypeError(f"unknown settings: {sorted(unknown)}")
    return TrainSettings(preset=preset, **values)


def default_of(name: str):
    """The default of a TrainSettings field, for option help text ('[20]')."""
    return {f.name: f.default for f in fields(TrainSettings)}[name]


def defaults_help(name: str, fmt=str) -> str:
    """'25; frames: 512': the general default of a setting and the kinds that change it; for a
    model setting (MODEL_FIELDS) each kind's own, 'baseline, improved: 256; frames, interp: 8'."""
    general = default_of(name)
    own: dict = {}
    for arch, entry in registry.kinds().items():
        if name in MODEL_FIELDS:
            if entry.uses(name):
                own.setdefault(entry.default(name), []).append(arch)
        elif name in entry.defaults and entry.defaults[name] != general:
            own.setdefault(entry.defaults[name], []).append(arch)
    parts = [] if general is None else [fmt(general)]
    return "; ".join([*parts, *(f"{', '.join(archs)}: {fmt(v)}" for v, archs in own.items())])
