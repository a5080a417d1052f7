"""What every feature kind's parameters share: the clip they are computed from, and the STFT.

A feature kind's parameters are one frozen dataclass: each field is one HDF5 attribute of a
features file, one ``ae-featurize`` option (``aekit.cmds.common.feature_options`` builds it
from the field's :func:`param` metadata) and one term of the compatibility check
(:meth:`ClipParams.mismatch`). :class:`ClipParams` holds the clip (rate, length, channels:
what ``aekit.audio.decode.condition`` makes of any file or array); :class:`StftParams` adds
a centred STFT and its dB conversion, which the log-Mel and the linear kinds both use.
A kind is registered in ``aekit.audio.kinds``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, ClassVar

from aekit.audio.decode import CHANNEL_POLICIES, MAX_SAMPLE_RATE
from aekit.errors import InputError

if TYPE_CHECKING:  # torch is imported where it is used, so option parsing stays instant
    import torch

AMIN = 1e-10  # torchaudio AmplitudeToDB default
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest positive normal float32
PAD_MODES = ("reflect", "constant")
AMIN_MODES = ("clamp", "add")
MAX_N_FFT = 1 << 20  # about a minute per frame at 16 kHz
#: The most memory the parameters may ask for one clip's working set (samples, STFT, power,
#: filterbank, features), checked before anything is allocated: beyond it, a typo.
MAX_CLIP_BYTES = 2 << 30
UNSET = object()  # an option not given on the command line (None is a value: 'none')


def param(default, help: str, *, type=None, min=None, min_open: bool = False,
          choices: tuple | None = None, default_help: str | None = None, none_ok: bool = False):
    """A feature parameter: its default, and what its command-line option needs (help, range,
    choices; ``none_ok``: the option also takes 'none'), so the dataclass is the one list of
    parameters (attributes, options, checks)."""
    return field(default=default, metadata={
        "help": help, "type": type or builtins_type(default), "min": min, "min_open": min_open,
        "choices": choices, "default_help": default_help, "none_ok": none_ok})


def builtins_type(value):
    return {bool: bool, int: int, float: float, str: str}[type(value)]


@dataclass(frozen=True, kw_only=True)
class ClipParams:
    """The clip every kind is computed from: ``channels`` x ``num_samples`` at ``sample_rate``.

    A kind subclasses this (or :class:`StftParams`) and provides ``kind``, ``clip_shape``,
    ``clip_bytes()`` and ``frontend()``; it may add checks (:meth:`checks`, :meth:`check`).
    """

    #: The name recorded in a features file's ``kind`` attribute and given to ``--kind``.
    kind: ClassVar[str] = ""
    #: What the front end always uses: recorded in every file and checked, but not options.
    FIXED: ClassVar[dict] = {}
    #: What a file written before a parameter existed was computed with (read and compared as).
    LEGACY: ClassVar[dict] = {}
    #: Named sets of field values (``ae-featurize --preset NAME``).
    PRESETS: ClassVar[dict] = {}

    sample_rate: int = param(16000, "Resample every clip to this rate (Hz) first.", min=1)
    # ~6.25 s at 16 kHz; longer clips truncated, shorter zero-padded
    num_samples: int = param(100_000, "Clip length at that rate: longer truncated, shorter "
                                      "zero-padded.", min=1)
    # the tutorial's model assumes stereo: 2 x 32 x 391 = 25,024 values
    channels: int = param(2, "Channels per clip: fewer are repeated (mono -> stereo), more are "
                             "cut.", min=1)
    channel_policy: str = param("first", "With more channels than asked: keep the first N, or "
                                         "mix down.", choices=CHANNEL_POLICIES)

    def __post_init__(self) -> None:
        for f in fields(self):  # types first: the checks below compare numbers
            v, kind = getattr(self, f.name), f.metadata["type"]
            if v is None and (f.metadata["none_ok"] or f.default is None):
                continue
            if kind is int and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
                raise InputError(f"must be an integer, got {v!r}", param=f.name)
            if kind is float and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
                raise InputError(f"must be a number, got {v!r}", param=f.name)
            if kind is float and not math.isfinite(v):
                raise InputError(f"must be a finite number, got {v!r}", param=f.name)
            if kind is str and not isinstance(v, str):
                raise InputError(f"must be a string, got {v!r}", param=f.name)
            choices = f.metadata["choices"]
            if choices and v not in choices:
                raise InputError(f"must be {'none or ' if f.metadata['none_ok'] else ''}one "
                                 f"of {', '.join(choices)}, got {v!r}", param=f.name)
        for ok, name, msg in self.checks():
            if not ok:
                raise InputError(msg, param=name)
        need = self.clip_bytes()
        if need > MAX_CLIP_BYTES:
            shown = ", ".join(f"{f.name} {getattr(self, f.name)}" for f in fields(self)
                              if f.metadata["type"] is int)
            raise InputError(f"these feature parameters need {need / 2**30:,.1f} GiB per clip "
                             f"({shown}); the limit is {MAX_CLIP_BYTES / 2**30:g} GiB")

    def checks(self) -> list[tuple[bool, str, str]]:
        """(holds, parameter, message) for each range check; subclasses extend the list."""
        return [
            (self.sample_rate > 0, "sample_rate", "must be positive"),
            (self.num_samples > 0, "num_samples", "must be positive"),
            (self.channels > 0, "channels", "must be positive"),
            (self.sample_rate <= MAX_SAMPLE_RATE, "sample_rate",
             f"{self.sample_rate} is above the {MAX_SAMPLE_RATE:,} Hz this aekit handles"),
        ]

    def check(self) -> None:
        """Refuse settings that are valid one by one but give features that are not data
        (e.g. empty Mel filters); run before any work. Nothing to refuse by default."""

    def clip_bytes(self) -> int:
        """Memory one clip's featurization works in (an upper bound; checked at creation)."""
        return 4 * int(self.channels) * int(self.num_samples)

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        """One clip's features: [channels, bins, frames]."""
        raise NotImplementedError

    def frontend(self, device: str | torch.device = "cpu"):
        """The front end: a callable waveforms [B, C, N] (or [C, N]) -> features
        [B, *clip_shape] (or clip_shape), with ``params`` and ``warm_up()``."""
        raise NotImplementedError

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The attributes that define these features (two files agree when these are equal)."""
        return (*(f.name for f in fields(cls)), *cls.FIXED)

    def to_attrs(self) -> dict:
        """The features file's parameter attributes (``keys()``; the kind is written apart).
        Numbers are written as the field's type; a None with a resolved value
        (:meth:`resolved`) is written resolved."""
        d = asdict(self)
        d.update(self.FIXED)
        for f in fields(self):
            if f.metadata["type"] is float and d[f.name] is not None:
                d[f.name] = float(d[f.name])
        d.update(self.resolved())
        return d

    def resolved(self) -> dict:
        """Fields whose None default stands for a value derived from others, resolved."""
        return {}

    @classmethod
    def from_preset(cls, preset: str | None = None, **options) -> "ClipParams":
        """The parameters of ``preset`` (None: the defaults) with ``options`` overriding it;
        an option whose value is ``UNSET`` keeps the preset's (or default) value."""
        if preset is not None and preset not in cls.PRESETS:
            raise InputError(f"unknown feature preset {preset!r} for kind {cls.kind}"
                             + (f": use {', '.join(cls.PRESETS)}" if cls.PRESETS
                                else ": it has none"), param="preset")
        values = {**(cls.PRESETS[preset] if preset else {}),
                  **{k: v for k, v in options.items() if v is not UNSET}}
        return cls(**values)

    @classmethod
    def from_attrs(cls, attrs: dict) -> "ClipParams":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in attrs.items() if k in names})

    @classmethod
    def from_dict(cls, values: dict) -> "ClipParams":
        """Parameters given by a caller (``featurize_files(params={...})``): every key must be
        a field (or a FIXED key at its fixed value, or the kind): a misspelt key is an
        InputError naming it and the valid ones, never silently a default."""
        names = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in names and k not in cls.FIXED and k != "kind"]
        if unknown:
            raise InputError(f"unknown feature parameter(s) {', '.join(map(repr, unknown))}; "
                             f"valid: {', '.join(names)}")
        for k, fixed in (*cls.FIXED.items(), ("kind", cls.kind)):
            if k in values and values[k] != fixed:
                raise InputError(f"feature parameter {k} must be {fixed!r} (what aekit "
                                 f"computes), got {values[k]!r}")
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def mismatch(cls, a: dict, b: dict) -> list[str]:
        """The compatibility check: human-readable differences between two parameter dicts of
        this kind (attributes of files or models; an empty list when they agree). A parameter
        one side lacks (written before it existed) counts as its ``LEGACY`` value, never as
        a newer default; floats agree to a relative 1e-9."""
        diffs = []
        for k in dict.fromkeys([*cls.keys(), *a, *b]):  # a key known to one side counts
            missing = cls.kind if k == "kind" else cls.LEGACY.get(k)
            va, vb = a.get(k, missing), b.get(k, missing)
            if isinstance(va, float) or isinstance(vb, float):
                # relative: amin 1e-10 and 2.2e-16 differ (an absolute tolerance would not)
                same = va == vb or (isinstance(va, (int, float)) and isinstance(vb, (int, float))
                                    and math.isclose(float(va), float(vb), rel_tol=1e-9,
                                                     abs_tol=0.0))
            else:
                same = va == vb
            if not same:
                diffs.append(f"{k}={va} vs {vb}")
        return diffs


@dataclass(frozen=True, kw_only=True)
class StftParams(ClipParams):
    """A centred STFT of each clip (periodic Hann window of ``n_fft``) and the dB conversion of
    a power spectrum, with a ``top_db`` floor per clip; ``f_min``/``f_max`` bound the
    frequencies the kind keeps (``f_max`` None: the Nyquist frequency, :attr:`f_max_hz`)."""

    FIXED: ClassVar[dict] = {"window": "hann", "power": 2.0}

    n_fft: int = param(1024, "FFT size (Hann window of the same length).", min=2)
    hop_length: int = param(256, "Samples between STFT frames.", min=1)
    top_db: float | None = param(80.0, "Dynamic range kept below each clip's maximum (dB); "
                                       "'none': no floor.", min=0, min_open=True, none_ok=True)
    f_min: float = param(0.0, "Lowest frequency analysed (Hz).", min=0)
    f_max: float | None = param(None, "Highest frequency analysed (Hz).", type=float, min=0,
                                min_open=True, default_help="sample-rate / 2")  # None: Nyquist
    pad_mode: str = param("reflect", "Padding of the centred STFT's first and last frames: "
                                     "'reflect' (torchaudio, librosa < 0.9) or 'constant' "
                                     "(zeros, librosa >= 0.9).", choices=PAD_MODES)
    amin: float = param(AMIN, "Guard of the dB conversion: the smallest power the log "
                              "takes (see amin-mode).", min=0, min_open=True)
    amin_mode: str = param("clamp", "How amin guards log10: 'clamp' = max(power, amin) "
                                    "(torchaudio AmplitudeToDB), 'add' = power + amin.",
                           choices=AMIN_MODES)

    def checks(self) -> list[tuple[bool, str, str]]:
        return [*super().checks(),
                (self.n_fft > 1, "n_fft", "must be at least 2"),
                (self.hop_length > 0, "hop_length", "must be positive"),
                (self.top_db is None or self.top_db > 0, "top_db", "must be positive"),
                (FLOAT32_TINY <= self.amin <= 1.0, "amin",
                 f"must be between {FLOAT32_TINY:.7g} (float32's smallest normal number: "
                 "below it the guard is 0 in float32 and silence would be -inf dB) and 1"),
                (self.num_samples > self.n_fft // 2, "num_samples",
                 "must exceed n_fft/2 (centre padding of the STFT)"),
                (self.f_max is None or self.f_min < self.f_max <= self.sample_rate / 2, "f_max",
                 "must be above f_min and at most half the sample rate"),
                (self.n_fft <= MAX_N_FFT, "n_fft", f"{self.n_fft} is above the limit "
                                                   f"{MAX_N_FFT:,}"),
                (self.hop_length <= self.num_samples, "hop_length",
                 f"{self.hop_length} is longer than the clip (num_samples {self.num_samples})")]

    @property
    def f_max_hz(self) -> float:
        """The highest frequency analysed: ``f_max``, or the Nyquist frequency when None (the
        one place this default is resolved)."""
        return float(self.sample_rate / 2) if self.f_max is None else float(self.f_max)

    def resolved(self) -> dict:
        return {"f_max": self.f_max_hz}

    @property
    def frames(self) -> int:
        return self.num_samples // self.hop_length + 1  # center=True

    @property
    def bins(self) -> int:
        """The one-sided STFT's frequency bins."""
        return self.n_fft // 2 + 1

    def clip_bytes(self) -> int:
        """Samples, the complex STFT and its power, for every channel (Python ints)."""
        c, n = int(self.channels), int(self.num_samples)
        return 4 * c * n + 12 * c * self.bins * self.frames

    def power(self, x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """|STFT|^2 of waveforms [K, N]: [K, bins, frames]."""
        import torch

        spec = torch.stft(x, self.n_fft, self.hop_length, win_length=self.n_fft,
                          window=window, center=True, pad_mode=self.pad_mode,
                          normalized=False, onesided=True, return_complex=True)  # [K, F, T]
        return spec.real.square() + spec.imag.square()  # 4x faster than abs()**2

    def to_db(self, power: torch.Tensor) -> torch.Tensor:
        """Power [B, C, F, T] -> dB with the ``amin`` guard and the ``top_db`` floor taken per
        clip across its channels (never across the batch), as AmplitudeToDB on one clip."""
        import torch

        if self.amin_mode == "add":
            db = 10.0 * torch.log10(power + self.amin)
        else:
            db = 10.0 * torch.log10(torch.clamp(power, min=self.amin))
        if self.top_db is not None:
            floor = db.amax(dim=(1, 2, 3), keepdim=True) - self.top_db
            db = torch.maximum(db, floor)
        return db


class StftFrontend:
    """The front end of an STFT kind: waveforms [B, C, N] (or one clip [C, N]) -> the STFT
    power of every channel -> ``features(power, b, c)`` [B, C, *, frames] in dB (or [C, ...]).
    A kind subclasses it and writes only ``features``."""

    def __init__(self, params: StftParams, device: str | torch.device = "cpu"):
        import torch

        self.params = params
        self.window = torch.hann_window(params.n_fft, device=device)

    def warm_up(self) -> None:
        """Run one silent clip: the FFT plan and buffers are set up before real work (and
        before forking workers, which then inherit them)."""
        import torch

        p = self.params
        with torch.inference_mode():
            self(torch.zeros(p.channels, p.num_samples))

    def features(self, power: torch.Tensor, b: int, c: int) -> torch.Tensor:
        """Power [B*C, bins, frames] -> features [B, C, *, frames] in dB."""
        raise NotImplementedError

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        single = wave.dim() == 2
        x = wave.unsqueeze(0) if single else wave  # [B, C, N]
        b, c, n = x.shape
        db = self.features(self.params.power(x.reshape(b * c, n), self.window), b, c)
        return db[0] if single else db
