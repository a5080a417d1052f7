"""Model kind ``frames``: the DCASE 2020 Task 2 baseline autoencoder over windows of frames.

A training unit is a window of ``context`` consecutive frames of a clip's log-Mel,
flattened channel-major, then band by band, to ``C * M * context`` values (C=1, M=128,
context=5: the DCASE baseline's 640; the baseline orders them frame by frame, the same
values in another order, which an MLP learns alike). A clip of T frames holds
T - context + 1 windows; they are cut out of the clips when a batch is made
(``gather_units``, one indexing of the clips held frame-major by ``unit_store``), never
stored.

Layers (the DCASE baseline's Keras model): Linear + BatchNorm + ReLU at every hidden width
and at the bottleneck, mirrored in the decoder, and a plain Linear output. A clip's score is
the mean squared error over all its windows (dB^2), its code the mean bottleneck code;
both are computed for all windows of a chunk of clips in one forward pass.
Normalization statistics, when asked for, are per (channel, Mel band): ``(C, M, 1)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from aekit.errors import InputError
from aekit.models.base import ClipModel, mirrored
from aekit.models.registry import ModelOption, register

#: The DCASE 2020 Task 2 baseline's training (Adam lr 1e-3, batch 512 windows). Epochs: with a
#: validation fold, at most the baseline's 100, stopped by the validation loss
#: (aekit.train.settings.WITH_VALIDATION); without one, 20 (README, "Anomalous-sound detection").
TRAINING = dict(batch_size=512, lr=1e-3, epochs=20)
#: Values per forward pass when scoring (windows x D): bounds memory whatever the clip count.
CHUNK_VALUES = 1 << 23


@dataclass
class FramesConfig:
    arch: str = "frames"
    input_shape: tuple[int, int, int] = (1, 128, 313)  # [C, n_mels, frames]
    hidden: tuple[int, ...] = (128, 128, 128, 128)  # the DCASE baseline's
    latent: int = 8
    context: int = 5  # frames per window

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(x) for x in self.input_shape)  # type: ignore[assignment]
        self.hidden = tuple(int(x) for x in self.hidden)
        self.latent, self.context = int(self.latent), int(self.context)
        if any(w <= 0 for w in (*self.hidden, self.latent)):
            raise InputError("layer widths must be positive", param="hidden")
        if not 1 <= self.context <= self.input_shape[2]:
            raise InputError(f"{self.context} must be between 1 and the clips' "
                             f"{self.input_shape[2]} frames", param="context")

    @property
    def input_dim(self) -> int:
        c, m, _ = self.input_shape
        return c * m * self.context

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"], d["hidden"] = list(self.input_shape), list(self.hidden)
        return d


def _block(n_in: int, n_out: int) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU(inplace=True)]


class FramesAE(ClipModel):
    """windows [B, C*M*context] -> encoder -> z [B, latent] -> decoder -> [B, C*M*context]."""

    def __init__(self, config: FramesConfig):
        super().__init__()
        self.config = config
        self.encoder, self.decoder = mirrored(
            [config.input_dim, *config.hidden, config.latent], _block)

    def forward(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(units)  # [B, latent]
        return self.decoder(z), z  # [B, D], [B, latent]

    def encode_units(self, units: torch.Tensor) -> torch.Tensor:
        return self.encoder(units)

    # -- units: windows of frames
    def units_per_clip(self, frames: int) -> int:
        return frames - self.config.context + 1

    def take_units(self, clips: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """clips [B, C, M, T], offsets [B] -> window offsets[b] of clip b, [B, C*M*context]."""
        windows = clips.unfold(3, self.config.context, 1)  # [B, C, M, W, context], a view
        rows = torch.arange(clips.shape[0], device=clips.device)
        return windows[rows, :, :, offsets].flatten(1)  # [B, C, M, context] -> [B, D]

    def unit_store(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized clips [N, C, M, T] -> frame-major [N, T, C*M] (one copy, contiguous):
        a window is then one contiguous run of context x C*M values, which gather_units
        copies whole instead of picking context-value pieces out of C*M rows of T frames
        (a batch of 512 windows of 1 x 128 x 5: 0.18 ms against 0.4 to 1.5 ms, measured
        on a 2-core CPU; the same values)."""
        n, c, m, t = x.shape
        return x.permute(0, 3, 1, 2).reshape(n, t, c * m).contiguous()

    def gather_units(self, x: torch.Tensor, clip: torch.Tensor, offsets: torch.Tensor
                     ) -> torch.Tensor:
        """x [N, T, C*M] (``unit_store``'s layout), clip [B], offsets [B] -> windows
        [B, C*M*context] in the window's layout (channel, band, frame): one indexing of the
        windows view, each window read from one contiguous run, then put in that order."""
        windows = x.unfold(1, self.config.context, 1)  # [N, W, C*M, context], a view
        return windows[clip, offsets].flatten(1)  # [B, C*M, context] -> [B, D]

    def norm_shape(self) -> tuple[int, ...]:
        c, m, _ = self.input_shape
        return (c, m, 1)

    def unit_stats(self, stats: torch.Tensor) -> torch.Tensor:
        if stats.numel() == 1:
            return stats.reshape(1)
        c, m, _ = self.input_shape
        s = stats.reshape(c, m, 1).expand(c, m, self.config.context)
        return s.reshape(-1)  # [C*M*context], laid out like a window

    # -- per clip: every window of a chunk of clips in one forward pass
    def _windows(self, xn: torch.Tensor) -> torch.Tensor:
        """Normalized clips [b, C, M, T] -> all their windows [b, W, C*M*context]."""
        b = xn.shape[0]
        w = xn.unfold(3, self.config.context, 1)  # [b, C, M, W, context]
        return w.permute(0, 3, 1, 2, 4).reshape(b, w.shape[3], -1)

    def _chunks(self, x: torch.Tensor):
        per_clip = self.units_per_clip(x.shape[-1]) * self.config.input_dim
        step = max(1, CHUNK_VALUES // max(1, per_clip))
        for s in range(0, x.shape[0], step):
            yield x[s:s + step]

    def errors_and_codes(self, x: torch.Tensor, norm
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw dB clips [B, C, M, T] -> (MSE dB^2 [B], MAE dB [B], codes [B, latent]), each the
        mean over the clip's windows."""
        std = None if norm.mode == "none" else self.target_stats(norm.std)
        mse, mae, codes = [], [], []
        for xb in self._chunks(x):
            u = self._windows(norm.transform(xb))  # [b, W, D]
            b, w, d = u.shape
            units = u.reshape(b * w, d)
            rec, z = self(units)  # [b*W, D'], [b*W, latent]
            err = (rec.float() - self.unit_target(units)).reshape(b, w, -1)  # D' = D here
            if std is not None:
                err = err * std  # dB
            mse.append(err.square().mean((1, 2)))  # equal D per window: mean of window means
            mae.append(err.abs().mean((1, 2)))
            codes.append(z.reshape(b, w, -1).mean(1))
        return torch.cat(mse), torch.cat(mae), torch.cat(codes)

    def clip_errors(self, x: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
        return self.errors_and_codes(x, norm)[:2]

    def clip_codes(self, x: torch.Tensor, norm) -> torch.Tensor:
        out = []
        for xb in self._chunks(x):
            u = self._windows(norm.transform(xb))  # [b, W, D]
            b, w, d = u.shape
            out.append(self.encode_units(u.reshape(b * w, d)).reshape(b, w, -1).mean(1))
        return torch.cat(out)

    def reconstruct_and_codes(self, x: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction in dB [B, C, M, T], codes): each frame is the mean of its
        reconstructions in the windows that hold it (for plots)."""
        c = self.config.context
        recs, codes = [], []
        for xb in self._chunks(x):
            u = self._windows(norm.transform(xb))  # [b, W, D]
            b, w, d = u.shape
            rec, z = self(u.reshape(b * w, d))
            rec = rec.float().reshape(b, w, *xb.shape[1:3], c)  # [b, W, C, M, context]
            t = xb.shape[-1]
            out = torch.zeros(b, *xb.shape[1:3], t, dtype=rec.dtype, device=rec.device)
            for j in range(c):  # context is small: one add per position in the window
                out[..., j:j + w] += rec[..., j].permute(0, 2, 3, 1)
            cover = torch.zeros(t, dtype=rec.dtype, device=rec.device)  # windows per frame
            for j in range(c):
                cover[j:j + w] += 1
            recs.append(norm.inverse(out / cover))
            codes.append(z.reshape(b, w, -1).mean(1))
        return torch.cat(recs), torch.cat(codes)

    def reconstruct_clips(self, x: torch.Tensor, norm) -> torch.Tensor:
        return self.reconstruct_and_codes(x, norm)[0]


def build(config: FramesConfig) -> FramesAE:
    return FramesAE(config)


register("frames", FramesConfig, build, batch_norm=True, score="mahalanobis",
         help="frame windows (context frames each), Linear+BatchNorm+ReLU (DCASE 2020)",
         defaults=TRAINING, options={"context": ModelOption("Frames per window.")})
