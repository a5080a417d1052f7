"""Training settings without torch: defaults, presets, the names of the model kinds.

Everything that decides the trained weights is one ``TrainSettings``; ``ae-train``'s
options take their defaults and help from here, so a default lives in one place.
A model kind is known here by name only (``ARCHS``: name -> the module that registers
it, imported when the kind is first built), so ``ae-train --help`` never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from aekit.errors import InputError


@dataclass(frozen=True)
class ArchOption:
    """An option of one model kind (e.g. --context of frames): an integer field of its config
    that ae-train offers as ``--NAME`` without knowing the kind."""

    default: int
    help: str
    min: int = 1
    odd: bool = False  # only odd values (a window with a centre frame)


@dataclass(frozen=True)
class ArchInfo:
    """What the command line needs to know about a model kind, without importing it."""

    module: str  # imported to register the kind (aekit.models.registry.register)
    batch_norm: bool = False  # BatchNorm in training mode: a batch needs >= 2 units
    help: str = ""
    #: TrainSettings values of this kind, replacing the general defaults; a --preset and
    #: explicit options still override them.
    defaults: dict = field(default_factory=dict)
    #: The kind's own options by config field name ('context' -> --context).
    options: dict = field(default_factory=dict)
    #: Its values replacing WITH_VALIDATION's when a validation fold exists (default preset).
    validated: dict = field(default_factory=dict)
    #: The anomaly score ``--score auto`` picks for a model of this kind (aekit.evaluate.autoscore):
    #: 'mahalanobis' (used when the model file stores its statistics, else 'mse') or 'mse'.
    score: str = "mse"


#: Model kinds by --arch name; a new kind is one module plus one line here (or a
#: runtime aekit.models.registry.register call, which adds its line).
ARCHS: dict[str, ArchInfo] = {
    "baseline": ArchInfo("aekit.models.mlp", False, "Linear+ReLU"),
    "improved": ArchInfo("aekit.models.mlp", True, "Linear+BatchNorm+LeakyReLU(0.1)"),
    # The DCASE 2020 Task 2 baseline: windows of 5 frames, Linear+BatchNorm+ReLU 128 x 4,
    # bottleneck 8, Adam lr 1e-3, batch 512 windows. Epochs: with a validation fold, at most
    # the baseline's 100, stopped by the validation loss (WITH_VALIDATION); without one, 20
    # (README, "Anomalous-sound detection").
    "frames": ArchInfo(
        "aekit.models.frames", True, "windows of --context frames, Linear+BatchNorm+ReLU (DCASE 2020)",
        defaults=dict(hidden=(128, 128, 128, 128), latent=8, batch_size=512, lr=1e-3,
                      epochs=20),
        options={"context": ArchOption(5, "Frames per window (--arch frames).")},
        score="mahalanobis"),
}

# Suefusa et al., ICASSP 2020 ("IDNN"): predict the centre frame of a window of --context
# frames from the others. The frame model's layers and training defaults (its dict, so a change
# there applies to both): the two differ only in what is predicted (lib/models/interp.py).
ARCHS["interp"] = ArchInfo(
    "aekit.models.interp", True, "the centre frame of a --context window predicted from the others, "
    "frames' layers (IDNN, ICASSP 2020)",
    defaults=ARCHS["frames"].defaults,
    options={"context": ArchOption(5, "interp: odd, at least 3.", min=3, odd=True)},
    score="mahalanobis")

DEFAULT_HIDDEN = (8224, 2056, 1024, 512)  # the tutorial's widths
DEFAULT_LATENT = 256  # the tutorial's bottleneck
NORM_MODES = ("none", "global", "per-feature")
SCHEDULES = ("constant", "cosine", "plateau")
PRECISIONS = ("fp32", "bf16")
KEEP = ("best", "last")
DATA_MODES = ("auto", "memory", "stream")
EXIT_PREEMPTED = 3  # exit status after a stop request wrote a resumable checkpoint


@dataclass
class TrainSettings:
    """Everything that decides the trained weights. Defaults are the 'default' preset."""

    arch: str = "improved"
    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    latent: int = DEFAULT_LATENT
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
    model_options: dict = field(default_factory=dict)  # the kind's own (ArchInfo.options)

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.early_stop == 0:  # --early-stop 0: no early stop
            self.early_stop = None
        bn = self.arch in ARCHS and ARCHS[self.arch].batch_norm
        checks = [
            (self.arch in ARCHS, f"unknown --arch {self.arch!r}: use {' or '.join(ARCHS)}"),
            (self.normalize in NORM_MODES,
             f"unknown --normalize {self.normalize!r}: use {', '.join(NORM_MODES)}"),
            (self.schedule in SCHEDULES,
             f"unknown --schedule {self.schedule!r}: use {', '.join(SCHEDULES)}"),
            (self.precision in PRECISIONS,
             f"unknown --precision {self.precision!r}: use {', '.join(PRECISIONS)}"),
            (self.keep in KEEP, f"unknown --keep {self.keep!r}: use best or last"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (not bn or self.batch_size >= 2,
             f"--batch-size must be at least 2 for --arch {self.arch} (BatchNorm needs 2 rows)"),
            (self.lr > 0 and math.isfinite(self.lr), "--lr must be a positive number"),
            (self.warmup >= 0, "--warmup must be >= 0"),
            (len(self.hidden) >= 1 and all(h > 0 for h in self.hidden) and self.latent > 0,
             "layer widths (--hidden, --latent) must be positive"),
            (self.early_stop is None or self.early_stop >= 1, "--early-stop must be at least 1"),
        ]
        if self.arch in ARCHS:
            declared = ARCHS[self.arch].options
            self.model_options = {**{k: o.default for k, o in declared.items()},
                                  **self.model_options}
            for k, v in self.model_options.items():
                checks.append((k in declared,
                               f"--{k.replace('_', '-')} does not apply to --arch {self.arch}"))
                if k in declared:
                    checks.append((isinstance(v, int) and v >= declared[k].min,
                                   f"--{k.replace('_', '-')} must be at least {declared[k].min}"))
                    checks.append((not declared[k].odd or not isinstance(v, int) or v % 2 == 1,
                                   f"--{k.replace('_', '-')} {v} must be odd for --arch "
                                   f"{self.arch} (a window around a centre frame)"))
        for ok, msg in checks:
            if not ok:
                raise InputError(msg)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
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

    Precedence, lowest first: TrainSettings' defaults, the kind's (ArchInfo.defaults), with
    ``validation`` (a validation fold will be given) WITH_VALIDATION and the kind's
    ``validated``, the preset's, the explicit values. ``model_options`` (a dict; None values
    dropped) holds the kind's own options.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}: use {', '.join(PRESETS)}", param="preset")
    explicit = {k: v for k, v in overrides.items() if v is not None}
    if "model_options" in explicit:
        explicit["model_options"] = {k: v for k, v in explicit["model_options"].items()
                                     if v is not None}
    arch = explicit.get("arch", PRESETS[preset].get("arch", default_of("arch")))
    kind = dict(ARCHS[arch].defaults) if arch in ARCHS else {}
    if validation:
        kind.update(WITH_VALIDATION)
        kind.update(ARCHS[arch].validated if arch in ARCHS else {})
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
    """'20; frames: 100': the general default of a field and the kinds that change it."""
    general = default_of(name)
    own = [f"{arch}: {fmt(a.defaults[name])}" for arch, a in ARCHS.items()
           if name in a.defaults and a.defaults[name] != general]
    return "; ".join([fmt(general), *own])
