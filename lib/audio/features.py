"""Log-Mel dB features: the tutorial's MelSpectrogram + AmplitudeToDB, computed fast.

``MelFrontend`` is numerically the tutorial's pipeline by default (torchaudio MelSpectrogram
with a Hann window, power 2, HTK Mel scale, no filterbank norm, reflect-padded centred STFT;
AmplitudeToDB power->dB with amin 1e-10, ref 1.0) but built once and reused, and with the
``top_db`` floor taken per clip across that clip's channels, exactly as AmplitudeToDB does on
one [C, M, T] clip. The Mel scale, the filterbank normalization, the STFT's centre padding and
the dB conversion's guard are parameters too (``mel_scale``, ``mel_norm``, ``pad_mode``,
``amin``, ``amin_mode``), so the DCASE presets compute what the DCASE baselines' librosa
front ends compute (``MelParams.PRESETS``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, ClassVar

import math
import numbers

from aekit.audio.decode import CHANNEL_POLICIES, MAX_SAMPLE_RATE

if TYPE_CHECKING:  # torch is imported where it is used, so option parsing stays instant
    import torch

AMIN = 1e-10  # torchaudio AmplitudeToDB default
#: The DCASE Task 2 baselines' guard of log10: Python's ``sys.float_info.epsilon`` (2**-52).
EPS = 2.220446049250313e-16
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest positive normal float32
MEL_SCALES = ("htk", "slaney")
MEL_NORMS = ("slaney",)  # or None: no normalization
PAD_MODES = ("reflect", "constant")
AMIN_MODES = ("clamp", "add")
MAX_N_FFT = 1 << 20  # about a minute per frame at 16 kHz; min_n_fft searches up to it too
MAX_N_MELS = 1 << 14  # far above any front end's (32 to 512); check_mel_params says what works
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


@dataclass(frozen=True)
class MelParams:
    """Log-Mel feature parameters; the defaults are the tutorial's (plus one sample rate for all).

    Each field is one HDF5 attribute of a features file, one ``ae-featurize`` option and one
    term of the compatibility check (``aekit.data.store.params_mismatch``).
    """

    kind: ClassVar[str] = "logmel"
    #: What MelFrontend always uses: recorded in every file and checked, but not options.
    FIXED: ClassVar[dict] = {"window": "hann", "power": 2.0}
    #: What a features file (or model) written before a parameter existed was computed with:
    #: a missing attribute compares as this (``aekit.data.store.params_mismatch``) and reads as it
    #: (``from_attrs``: these are also today's defaults), never as some newer default.
    LEGACY: ClassVar[dict] = {"mel_scale": "htk", "mel_norm": None, "pad_mode": "reflect",
                              "amin": AMIN, "amin_mode": "clamp"}
    #: ``ae-featurize --preset NAME``: field values replacing the defaults (explicit options
    #: still override them). Each is the front end of the official DCASE Task 2 autoencoder
    #: baseline of that year (its baseline.yaml and common.py / datasets/loader_common.py;
    #: the README's "DCASE feature presets" gives the sources): librosa.load(sr=None) of 16 kHz
    #: mono clips, librosa.feature.melspectrogram (centred STFT, periodic Hann, power 2,
    #: Slaney Mel scale with Slaney area normalization), then 20/power * log10 of the Mel
    #: power guarded by sys.float_info.epsilon, no dB floor. The years differ in n_mels, in
    #: the guard (2020: mel + eps; 2021 on: max(mel, eps)) and in the centre padding (librosa
    #: 0.6.0, pinned by 2020 and 2021: reflect; librosa >= 0.9 from 2022 on: zeros).
    #: num_samples: 10 s, the length of the 2020 clips; the baselines keep each clip at its own
    #: length, aekit pads or cuts to this one (ae-featurize warns with the padded share).
    PRESETS: ClassVar[dict] = {
        "dcase2020": dict(sample_rate=16000, num_samples=160_000, n_fft=1024, hop_length=512,
                          n_mels=64, top_db=None, channels=1, channel_policy="mix",
                          mel_scale="slaney", mel_norm="slaney", pad_mode="reflect",
                          amin=EPS, amin_mode="add"),
        "dcase2021": dict(sample_rate=16000, num_samples=160_000, n_fft=1024, hop_length=512,
                          n_mels=128, top_db=None, channels=1, channel_policy="mix",
                          mel_scale="slaney", mel_norm="slaney", pad_mode="reflect",
                          amin=EPS, amin_mode="clamp"),
        # 2023, 2024 and 2025: one baseline repository (nttcslab/dcase2023_task2_baseline_ae),
        # one baseline.yaml and feature loader for the three years: the 2022 front end.
        **{f"dcase{year}": dict(sample_rate=16000, num_samples=160_000, n_fft=1024,
                                hop_length=512, n_mels=128, top_db=None, channels=1,
                                channel_policy="mix", mel_scale="slaney", mel_norm="slaney",
                                pad_mode="constant", amin=EPS, amin_mode="clamp")
           for year in (2022, 2023, 2024, 2025)},
    }

    sample_rate: int = param(16000, "Resample every clip to this rate (Hz) first.", min=1)
    # ~6.25 s at 16 kHz; longer clips truncated, shorter zero-padded
    num_samples: int = param(100_000, "Clip length at that rate: longer truncated, shorter "
                                      "zero-padded.", min=1)
    n_fft: int = param(1024, "FFT size (Hann window of the same length).", min=2)
    hop_length: int = param(256, "Samples between STFT frames.", min=1)
    n_mels: int = param(32, "Mel bands.", min=1)
    top_db: float | None = param(80.0, "Dynamic range kept below each clip's maximum (dB); "
                                       "'none': no floor.", min=0, min_open=True, none_ok=True)
    f_min: float = param(0.0, "Lowest Mel filter edge (Hz).", min=0)
    f_max: float | None = param(None, "Highest Mel filter edge (Hz).", type=float, min=0,
                                min_open=True, default_help="sample-rate / 2")  # None: Nyquist
    # the tutorial's model assumes stereo: 2 x 32 x 391 = 25,024 values
    channels: int = param(2, "Channels per clip: fewer are repeated (mono -> stereo), more are "
                             "cut.", min=1)
    channel_policy: str = param("first", "With more channels than asked: keep the first N, or "
                                         "mix down.", choices=CHANNEL_POLICIES)
    mel_scale: str = param("htk", "Mel scale of the filterbank: HTK's (torchaudio's default) "
                                  "or Slaney's (librosa's default).", choices=MEL_SCALES)
    mel_norm: str | None = param(None, "Mel filter normalization: 'slaney' divides each "
                                       "triangle by its width (librosa's default, equal area); "
                                       "'none': peak 1.", type=str, choices=MEL_NORMS,
                                 none_ok=True)
    pad_mode: str = param("reflect", "Padding of the centred STFT's first and last frames: "
                                     "'reflect' (torchaudio, librosa < 0.9) or 'constant' "
                                     "(zeros, librosa >= 0.9).", choices=PAD_MODES)
    amin: float = param(AMIN, "Guard of the dB conversion: the smallest Mel power the log "
                              "takes (see --amin-mode).", min=0, min_open=True)
    amin_mode: str = param("clamp", "How amin guards log10: 'clamp' = max(power, amin) "
                                    "(torchaudio AmplitudeToDB), 'add' = power + amin.",
                           choices=AMIN_MODES)

    def __post_init__(self) -> None:
        from aekit.errors import InputError

        for f in fields(self):  # types first: the checks below compare numbers
            v, kind = getattr(self, f.name), f.metadata["type"]
            if v is None and (f.metadata["none_ok"] or f.default is None):
                continue
            if kind is int and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
                raise InputError(f"{f.name.replace('_', '-')} must be an integer, got {v!r}")
            if kind is float and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
                raise InputError(f"{f.name.replace('_', '-')} must be a number, got {v!r}")
            if kind is float and not math.isfinite(v):
                raise InputError(f"{f.name.replace('_', '-')} must be a finite number, got {v!r}")
            if kind is str and not isinstance(v, str):
                raise InputError(f"{f.name.replace('_', '-')} must be a string, got {v!r}")
        checks = [
            (self.sample_rate > 0, "sample rate must be positive"),
            (self.num_samples > 0, "num-samples must be positive"),
            (self.n_fft > 1, "n-fft must be at least 2"),
            (self.hop_length > 0, "hop-length must be positive"),
            (self.n_mels > 0, "n-mels must be positive"),
            (self.channels > 0, "channels must be positive"),
            (self.top_db is None or self.top_db > 0, "top-db must be positive"),
            (self.channel_policy in CHANNEL_POLICIES,
             f"channel policy must be one of {', '.join(CHANNEL_POLICIES)}"),
            (self.mel_scale in MEL_SCALES, f"mel-scale must be one of {', '.join(MEL_SCALES)}"),
            (self.mel_norm is None or self.mel_norm in MEL_NORMS,
             f"mel-norm must be none or one of {', '.join(MEL_NORMS)}"),
            (self.pad_mode in PAD_MODES, f"pad-mode must be one of {', '.join(PAD_MODES)}"),
            (self.amin_mode in AMIN_MODES, f"amin-mode must be one of {', '.join(AMIN_MODES)}"),
            (FLOAT32_TINY <= self.amin <= 1.0,
             f"amin must be between {FLOAT32_TINY:.7g} (float32's smallest normal number: "
             "below it the guard is 0 in float32 and silence would be -inf dB) and 1"),
            (self.num_samples > self.n_fft // 2,
             "num-samples must exceed n-fft/2 (centre padding of the STFT)"),
            (self.f_max is None or self.f_min < self.f_max <= self.sample_rate / 2,
             "f-max must be above f-min and at most half the sample rate"),
            (self.sample_rate <= MAX_SAMPLE_RATE,
             f"sample rate {self.sample_rate} is above the {MAX_SAMPLE_RATE:,} Hz this aekit "
             "handles"),
            (self.n_fft <= MAX_N_FFT, f"n-fft {self.n_fft} is above the limit {MAX_N_FFT:,}"),
            (self.hop_length <= self.num_samples,
             f"hop-length {self.hop_length} is longer than the clip (num-samples "
             f"{self.num_samples})"),
            (self.n_mels <= MAX_N_MELS, f"n-mels {self.n_mels} is above the limit {MAX_N_MELS:,}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg)
        need = self.clip_bytes()
        if need > MAX_CLIP_BYTES:
            raise InputError(f"these feature parameters need {need / 2**30:,.1f} GiB per clip "
                             f"(channels {self.channels} x num-samples {self.num_samples}, "
                             f"n-fft {self.n_fft}, hop-length {self.hop_length}, n-mels "
                             f"{self.n_mels}); the limit is {MAX_CLIP_BYTES / 2**30:g} GiB")

    def clip_bytes(self) -> int:
        """Memory one clip's featurization works in: float32 samples, the complex STFT and its
        power, the filterbank and the features (an upper bound; Python ints, no overflow)."""
        c, n, m = int(self.channels), int(self.num_samples), int(self.n_mels)
        bins, frames = int(self.n_fft) // 2 + 1, n // int(self.hop_length) + 1
        return 4 * c * n + 12 * c * bins * frames + 4 * bins * m + 4 * c * m * frames

    @property
    def frames(self) -> int:
        return self.num_samples // self.hop_length + 1  # center=True

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.n_mels, self.frames)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The attributes that define these features (two files agree when these are equal)."""
        return (*(f.name for f in fields(cls)), *cls.FIXED)

    def to_attrs(self) -> dict:
        """The features file's parameter attributes (``keys()``; the kind is written apart)."""
        d = asdict(self)
        d.update(self.FIXED)
        d["f_max"] = float(self.sample_rate / 2) if self.f_max is None else float(self.f_max)
        d["top_db"] = None if self.top_db is None else float(self.top_db)
        d["f_min"] = float(self.f_min)
        d["amin"] = float(self.amin)
        return d

    @classmethod
    def from_preset(cls, preset: str | None = None, **options) -> "MelParams":
        """The parameters of ``preset`` (None: the defaults) with ``options`` overriding it;
        an option whose value is ``UNSET`` keeps the preset's (or default) value."""
        from aekit.errors import InputError

        if preset is not None and preset not in cls.PRESETS:
            raise InputError(f"unknown feature preset {preset!r}: use {', '.join(cls.PRESETS)}")
        values = {**(cls.PRESETS[preset] if preset else {}),
                  **{k: v for k, v in options.items() if v is not UNSET}}
        return cls(**values)

    @classmethod
    def from_attrs(cls, attrs: dict) -> "MelParams":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in attrs.items() if k in names})

    @classmethod
    def from_dict(cls, values: dict) -> "MelParams":
        """Parameters given by a caller (``featurize_files(params={...})``): every key must be
        a field (or a FIXED key at its fixed value, or the kind): a misspelt key is an
        InputError naming it and the valid ones, never silently a default."""
        from aekit.errors import InputError

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


#: Feature kinds by the name recorded in a file's ``kind`` attribute: the parameter
#: dataclass of each. A file without one is 'logmel' (written before kinds existed).
FEATURE_KINDS: dict[str, type] = {MelParams.kind: MelParams}
DEFAULT_KIND = MelParams.kind


def params_class(kind: str | None) -> type:
    from aekit.errors import InputError

    kind = kind or DEFAULT_KIND
    if kind not in FEATURE_KINDS:
        raise InputError(f"unknown feature kind {kind!r}: this aekit knows {', '.join(FEATURE_KINDS)}")
    return FEATURE_KINDS[kind]


class MelFrontend:
    """waveforms [B, C, N] (or [C, N]) -> log-Mel dB [B, C, n_mels, frames] (or [C, ...])."""

    def __init__(self, params: MelParams, device: str | torch.device = "cpu"):
        import torch
        import torchaudio.functional as AF

        self.params = p = params
        f_max = p.f_max if p.f_max is not None else p.sample_rate / 2
        self.window = torch.hann_window(p.n_fft, device=device)
        # [n_freqs, n_mels], exactly the matrix torchaudio's MelScale uses
        self.fb = AF.melscale_fbanks(p.n_fft // 2 + 1, p.f_min, f_max, p.n_mels, p.sample_rate,
                                     norm=p.mel_norm, mel_scale=p.mel_scale).to(device)
        self.fb_t = self.fb.T.contiguous()  # [n_mels, n_freqs]

    def warm_up(self) -> None:
        """Run one silent clip: the FFT plan and buffers are set up before real work (and
        before forking workers, which then inherit them)."""
        import torch

        p = self.params
        with torch.inference_mode():
            self(torch.zeros(p.channels, p.num_samples))

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        import torch

        p = self.params
        single = wave.dim() == 2
        x = wave.unsqueeze(0) if single else wave  # [B, C, N]
        b, c, n = x.shape
        spec = torch.stft(x.reshape(b * c, n), p.n_fft, p.hop_length, win_length=p.n_fft,
                          window=self.window, center=True, pad_mode=p.pad_mode,
                          normalized=False, onesided=True, return_complex=True)  # [BC, F, T]
        power = spec.real.square() + spec.imag.square()  # |X|^2, [BC, F, T]; 4x faster than abs()**2
        mel = torch.matmul(self.fb_t, power)  # [M, F] @ [BC, F, T] -> [BC, M, T]
        if p.amin_mode == "add":
            db = 10.0 * torch.log10(mel + p.amin)
        else:
            db = 10.0 * torch.log10(torch.clamp(mel, min=p.amin))
        db = db.reshape(b, c, p.n_mels, -1)  # [B, C, M, T]
        if p.top_db is not None:
            # The floor is per clip, across its channels: never across the batch.
            floor = db.amax(dim=(1, 2, 3), keepdim=True) - p.top_db
            db = torch.maximum(db, floor)
        return db[0] if single else db


def tutorial_features(waveform: torch.Tensor, sample_rate: int, params: MelParams) -> torch.Tensor:
    """The tutorial's own code path for one clip [C, N]: transforms built anew for each file.

    Kept as the reference that MelFrontend is tested and benchmarked against.
    """
    import torchaudio.transforms as T

    mel = T.MelSpectrogram(sample_rate=sample_rate, n_fft=params.n_fft,
                           hop_length=params.hop_length, n_mels=params.n_mels)
    to_db = T.AmplitudeToDB(top_db=params.top_db)
    return to_db(mel(waveform))


def empty_mel_filters(params: MelParams, n_mels: int | None = None,
                      n_fft: int | None = None) -> list[int]:
    """Indices of the Mel filters that no FFT bin falls inside (all-zero rows), computed on the
    very filterbank MelFrontend uses (torchaudio's, at the params' Mel scale) for ``n_mels`` bands
    (default: the params' own)."""
    import warnings

    import torch
    import torchaudio.functional as AF

    p = params
    f_max = p.f_max if p.f_max is not None else p.sample_rate / 2
    with warnings.catch_warnings():  # torchaudio warns about empty filters: we say it ourselves
        warnings.simplefilter("ignore")
        fb = AF.melscale_fbanks((n_fft or p.n_fft) // 2 + 1, p.f_min, f_max, n_mels or p.n_mels,
                                p.sample_rate, norm=None,
                                mel_scale=p.mel_scale)  # [n_freqs, n_mels]
    return torch.nonzero(fb.amax(dim=0) <= 0).flatten().tolist()


def _empty_count_fast(params: MelParams, n_mels: int, n_fft: int | None = None) -> int:
    """Empty filters of the same filterbank, without building it: filter k is non-zero exactly
    when some bin frequency lies strictly between its edges f_pts[k] and f_pts[k+2] (the same
    float32 points torchaudio computes). Used only to search; answers are confirmed on the
    real filterbank."""
    import torch
    import torchaudio.functional.functional as AFF

    p = params
    f_max = p.f_max if p.f_max is not None else p.sample_rate / 2
    all_freqs = torch.linspace(0, p.sample_rate // 2, (n_fft or p.n_fft) // 2 + 1)
    m_pts = torch.linspace(AFF._hz_to_mel(p.f_min, mel_scale=p.mel_scale),
                           AFF._hz_to_mel(f_max, mel_scale=p.mel_scale), n_mels + 2)
    f_pts = AFF._mel_to_hz(m_pts, mel_scale=p.mel_scale)
    above_low = torch.searchsorted(all_freqs, f_pts[:-2], right=True)  # bins <= lower edge
    below_high = torch.searchsorted(all_freqs, f_pts[2:], right=False)  # bins < upper edge
    return int((below_high <= above_low).sum())


def max_mel_bands(params: MelParams, upto: int | None = None) -> int:
    """The largest n_mels <= ``upto`` (default: the params' n_mels) whose filterbank has no
    empty filter at these n_fft, sample_rate, f_min and f_max; 0 when none has.

    Filters narrow as n_mels grows, so the search bisects; the answer is then confirmed on the
    real filterbank (and walked down should the two ever disagree).
    """
    hi = upto or params.n_mels
    if _empty_count_fast(params, 1):
        lo = 0
    else:
        lo = 1  # invariant: lo works, every n > hi_bad fails
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _empty_count_fast(params, mid) == 0:
                lo = mid
            else:
                hi = mid - 1
    n = lo
    while n > 0 and empty_mel_filters(params, n):
        n -= 1
    return n


def min_n_fft(params: MelParams, limit: int = 1 << 20) -> int | None:
    """The smallest n_fft (up to ``limit``) giving the params' n_mels no empty filter; None when
    none does (e.g. a sample rate so low that every FFT bin sits at 0 Hz)."""
    p = params
    if _empty_count_fast(p, p.n_mels, limit):
        return None
    lo, hi = p.n_fft + 1, limit  # invariant: hi works
    while lo < hi:
        mid = (lo + hi) // 2
        if _empty_count_fast(p, p.n_mels, mid) == 0:
            hi = mid
        else:
            lo = mid + 1
    n = hi
    # Confirmed on the real filterbank only where building it is affordable (the fast count
    # is exact in itself; a suggestion must not cost gigabytes).
    while n <= limit and 4 * (n // 2 + 1) * p.n_mels <= MAX_CLIP_BYTES \
            and empty_mel_filters(p, n_fft=n):
        n += 1
    return n if n <= limit else None


def check_mel_params(params: MelParams) -> None:
    """Refuse settings whose Mel filterbank has empty filters (InputError, naming the limit).

    An empty filter (no FFT bin inside its triangle) gives a band that is the -100 dB floor
    (or the top_db floor) for every clip whatever the audio: constant features that pass for
    data. Too many --n-mels for --n-fft, a tiny --n-fft or a tiny --sample-rate all do this.
    """
    from aekit.errors import InputError

    empty = empty_mel_filters(params)
    if not empty:
        return
    p = params
    f_max = p.f_max if p.f_max is not None else p.sample_rate / 2
    setting = (f"--n-fft {p.n_fft} at --sample-rate {p.sample_rate} "
               f"(f_min {p.f_min:g} Hz, f_max {f_max:g} Hz)")
    best = max_mel_bands(p, p.n_mels - 1)
    need = min_n_fft(p)
    fft = (f"the smallest --n-fft for {p.n_mels} bands is {need}" if need
           else f"no --n-fft gives {p.n_mels} bands at this sample rate")
    if best:
        raise InputError(f"--n-mels {p.n_mels} is too many for {setting}: {len(empty)} Mel "
                         f"filter(s) contain no FFT bin; at most --n-mels {best} works here "
                         f"({fft})")
    raise InputError(f"no Mel filter contains an FFT bin with {setting} ({fft}"
                     + ("" if need else "; raise --sample-rate") + ")")
