"""Linear-frequency log-power features: the STFT power of each bin in dB, no Mel merging.

For the narrow bands (a bearing tone, a whine) that a Mel filterbank merges with their
neighbours at high frequency: every FFT bin from ``f_min`` to ``f_max`` (inclusive; bin k is
at k * sample_rate / n_fft Hz) is one feature row. Per clip: the centred STFT of
``aekit.audio.params.StftParams`` (periodic Hann window, power 2), then
10 * log10(max(power, amin)) (or power + amin) with the ``top_db`` floor per clip across its
channels, as for the log-Mel kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from aekit.audio.params import StftFrontend, StftParams
from aekit.errors import InputError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class LinearParams(StftParams):
    """Linear-frequency log-power spectrogram parameters (kind 'linear'): the clip and STFT
    fields of ``StftParams``; ``f_min`` and ``f_max`` select the bins kept."""

    kind: ClassVar[str] = "linear"

    @property
    def bin_range(self) -> tuple[int, int]:
        """[first, last + 1) of the bins kept: k * sample_rate / n_fft within [f_min, f_max]
        (compared in exact integer arithmetic where the bounds are whole Hz)."""
        sr, n = self.sample_rate, self.n_fft
        lo = max(0, math.ceil(self.f_min * n / sr))
        hi = min(self.bins - 1, math.floor(self.f_max_hz * n / sr))
        while lo > 0 and (lo - 1) * sr >= self.f_min * n:  # float rounding of the division
            lo -= 1
        while lo * sr < self.f_min * n:
            lo += 1
        while hi + 1 < self.bins and (hi + 1) * sr <= self.f_max_hz * n:
            hi += 1
        while hi >= 0 and hi * sr > self.f_max_hz * n:
            hi -= 1
        return lo, max(lo, hi + 1)

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        lo, hi = self.bin_range
        return (self.channels, hi - lo, self.frames)

    def check(self) -> None:
        lo, hi = self.bin_range
        if hi <= lo:
            raise InputError(f"no FFT bin lies between f_min {self.f_min:g} Hz and f_max "
                             f"{self.f_max_hz:g} Hz at n_fft {self.n_fft} and sample_rate "
                             f"{self.sample_rate} (bins are "
                             f"{self.sample_rate / self.n_fft:g} Hz apart)", param="f_max")

    def frontend(self, device: str | torch.device = "cpu") -> "LinearFrontend":
        return LinearFrontend(self, device)


class LinearFrontend(StftFrontend):
    """waveforms [B, C, N] (or [C, N]) -> log-power dB [B, C, bins kept, frames] (or [C, ...])."""

    def __init__(self, params: LinearParams, device: str | torch.device = "cpu"):
        super().__init__(params, device)
        self.lo, self.hi = params.bin_range

    def features(self, power: torch.Tensor, b: int, c: int) -> torch.Tensor:
        kept = power[:, self.lo:self.hi]  # [BC, F', T]
        return self.params.to_db(kept.reshape(b, c, self.hi - self.lo, -1))
