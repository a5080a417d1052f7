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

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from aekit.audio.params import AMIN, MAX_CLIP_BYTES, StftFrontend, StftParams, param
from aekit.errors import InputError

if TYPE_CHECKING:  # torch is imported where it is used, so option parsing stays instant
    import torch

#: The DCASE Task 2 baselines' guard of log10: Python's ``sys.float_info.epsilon`` (2**-52).
EPS = 2.220446049250313e-16
MEL_SCALES = ("htk", "slaney")
MEL_NORMS = ("slaney",)  # or None: no normalization
MAX_N_MELS = 1 << 14  # far above any front end's (32 to 512); check_mel_params says what works


@dataclass(frozen=True, kw_only=True)
class MelParams(StftParams):
    """Log-Mel feature parameters; the defaults are the tutorial's (plus one sample rate for all).

    Each field is one HDF5 attribute of a features file, one ``ae-featurize`` option and one
    term of the compatibility check (``MelParams.mismatch``); the clip and STFT fields are
    ``aekit.audio.params``'.
    """

    kind: ClassVar[str] = "logmel"
    #: What a features file (or model) written before a parameter existed was computed with:
    #: a missing attribute compares as this (``mismatch``) and reads as it
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

    n_mels: int = param(32, "Mel bands.", min=1)
    mel_scale: str = param("htk", "Mel scale of the filterbank: HTK's (torchaudio's default) "
                                  "or Slaney's (librosa's default).", choices=MEL_SCALES)
    mel_norm: str | None = param(None, "Mel filter normalization: 'slaney' divides each "
                                       "triangle by its width (librosa's default, equal area); "
                                       "'none': peak 1.", type=str, choices=MEL_NORMS,
                                 none_ok=True)

    def checks(self) -> list[tuple[bool, str, str]]:
        return [*super().checks(),
                (self.n_mels > 0, "n_mels", "must be positive"),
                (self.n_mels <= MAX_N_MELS, "n_mels",
                 f"{self.n_mels} is above the limit {MAX_N_MELS:,}")]

    def check(self) -> None:
        check_mel_params(self)

    def clip_bytes(self) -> int:
        """Memory one clip's featurization works in: float32 samples, the complex STFT and its
        power, the filterbank and the features (an upper bound; Python ints, no overflow)."""
        c, m = int(self.channels), int(self.n_mels)
        return super().clip_bytes() + 4 * self.bins * m + 4 * c * m * self.frames

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.n_mels, self.frames)

    def frontend(self, device: str | torch.device = "cpu") -> "MelFrontend":
        return MelFrontend(self, device)


class MelFrontend(StftFrontend):
    """waveforms [B, C, N] (or [C, N]) -> log-Mel dB [B, C, n_mels, frames] (or [C, ...])."""

    def __init__(self, params: MelParams, device: str | torch.device = "cpu"):
        import torchaudio.functional as AF

        super().__init__(params, device)
        p = params
        # [n_freqs, n_mels], exactly the matrix torchaudio's MelScale uses
        self.fb = AF.melscale_fbanks(p.bins, p.f_min, p.f_max_hz, p.n_mels, p.sample_rate,
                                     norm=p.mel_norm, mel_scale=p.mel_scale).to(device)
        self.fb_t = self.fb.T.contiguous()  # [n_mels, n_freqs]

    def features(self, power: torch.Tensor, b: int, c: int) -> torch.Tensor:
        import torch

        mel = torch.matmul(self.fb_t, power)  # [M, F] @ [BC, F, T] -> [BC, M, T]
        return self.params.to_db(mel.reshape(b, c, self.params.n_mels, -1))  # [B, C, M, T]


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
    with warnings.catch_warnings():  # torchaudio warns about empty filters: we say it ourselves
        warnings.simplefilter("ignore")
        fb = AF.melscale_fbanks((n_fft or p.n_fft) // 2 + 1, p.f_min, p.f_max_hz, n_mels or p.n_mels,
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
    all_freqs = torch.linspace(0, p.sample_rate // 2, (n_fft or p.n_fft) // 2 + 1)
    m_pts = torch.linspace(AFF._hz_to_mel(p.f_min, mel_scale=p.mel_scale),
                           AFF._hz_to_mel(p.f_max_hz, mel_scale=p.mel_scale), n_mels + 2)
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
    data. Too many n_mels for n_fft, a tiny n_fft or a tiny sample_rate all do this.
    """
    empty = empty_mel_filters(params)
    if not empty:
        return
    p = params
    setting = (f"n_fft {p.n_fft} at sample_rate {p.sample_rate} "
               f"(f_min {p.f_min:g} Hz, f_max {p.f_max_hz:g} Hz)")
    best = max_mel_bands(p, p.n_mels - 1)
    need = min_n_fft(p)
    fft = (f"the smallest n_fft for {p.n_mels} bands is {need}" if need
           else f"no n_fft gives {p.n_mels} bands at this sample rate")
    if best:
        raise InputError(f"{p.n_mels} bands are too many for {setting}: {len(empty)} Mel "
                         f"filter(s) contain no FFT bin; at most {best} work here ({fft})",
                         param="n_mels")
    raise InputError(f"no Mel filter contains an FFT bin with {setting} ({fft}"
                     + ("" if need else "; raise sample_rate") + ")")
