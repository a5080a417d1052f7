"""Model kind ``interp``: the interpolation model (IDNN; Suefusa et al., ICASSP 2020, "Anomalous
sound detection based on interpolation deep neural network").

The frame-window model (``aekit.models.frames``) reconstructs a whole window of ``context`` frames,
edges included; the edge frames of a non-stationary sound (valve, slider) are hard to predict,
so their error is large and varies whatever the machine's state. IDNN removes the window's
centre frame from the input and predicts it from the ``context - 1`` others: the loss, a
window's error and so a clip's score are on the centre frame only.

Everything else is the frame model's, reused, not copied: a training unit is the same window
of ``context`` consecutive frames (cut out when a batch is made; epochs, batches, ``--resume``
and DDP count windows), laid out like a frames unit (``C * M * context``, channel-major); the
model splits it (``neighbours``: the input, ``C * M * (context - 1)``; ``unit_target``: the
centre frame, ``C * M``). Layers: the frame model's Linear + BatchNorm + ReLU at every hidden
width and at the bottleneck, mirrored, and a plain Linear to the ``C * M`` centre frame.

A clip's score is the mean over its windows of the centre frame's MSE (dB^2 of the features),
its code the mean bottleneck code, its Mahalanobis error vector the mean of ``centre frame -
prediction`` (``C * M`` values). ``context`` must be odd and at least 3 (a centre with a
neighbour on each side). The first and last ``context // 2`` frames of a clip are never the
centre of a window: they are in no score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aekit.errors import InputError
from aekit.models.base import ClipModel, mirrored
from aekit.models.frames import TRAINING, FramesAE, FramesConfig, _block
from aekit.models.registry import ModelOption, register


@dataclass
class InterpConfig(FramesConfig):
    arch: str = "interp"  # the frame model's widths and window (inherited)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context < 3 or self.context % 2 == 0:
            raise InputError(f"{self.context} is not an odd window of at least 3 frames (model "
                             "kind interp predicts the centre frame from a neighbour on each "
                             "side)", param="context")

    @property
    def target_dim(self) -> int:
        """Values of the predicted centre frame: C * M."""
        c, m, _ = self.input_shape
        return c * m

    @property
    def neighbour_dim(self) -> int:
        """Values the network sees: the window without its centre frame, C * M * (context - 1)."""
        return self.target_dim * (self.context - 1)


class InterpAE(FramesAE):
    """windows [B, C*M*context] -> neighbours [B, C*M*(context-1)] -> encoder -> z [B, latent]
    -> decoder -> centre frame [B, C*M]."""

    def __init__(self, config: InterpConfig):
        ClipModel.__init__(self)
        self.config = config
        self.encoder, self.decoder = mirrored(
            [config.neighbour_dim, *config.hidden, config.latent], _block)
        self.decoder[-1] = nn.Linear(self.decoder[-1].in_features, config.target_dim)

    def _split(self, units: torch.Tensor) -> torch.Tensor:
        return units.reshape(units.shape[0], self.config.target_dim, self.config.context)

    def neighbours(self, units: torch.Tensor) -> torch.Tensor:
        """units [B, C*M*context] -> the input: every frame but the centre, [B, C*M*(context-1)]
        (channel-major, frames in time order)."""
        w, h = self._split(units), self.config.context // 2
        return torch.cat((w[..., :h], w[..., h + 1:]), dim=2).flatten(1)

    def unit_target(self, units: torch.Tensor) -> torch.Tensor:
        """units [B, C*M*context] -> their centre frame [B, C*M]."""
        return self._split(units)[..., self.config.context // 2]

    def forward(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(self.neighbours(units))  # [B, latent]
        return self.decoder(z), z  # [B, C*M], [B, latent]

    def encode_units(self, units: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.neighbours(units))

    def reconstruct_and_codes(self, x: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction in dB [B, C, M, T], codes) for plots: frame t is its prediction from the
        window centred on it; the first and last context // 2 frames, which no window predicts,
        are the input's own (and in no score)."""
        h = self.config.context // 2
        recs, codes = [], []
        for xb in self._chunks(x):
            u = self._windows(norm.transform(xb))  # [b, W, D]
            b, w, d = u.shape
            pred, z = self(u.reshape(b * w, d))  # [b*W, C*M]
            pred = norm.inverse(pred.float().reshape(b, w, *xb.shape[1:3], 1)
                                .permute(0, 2, 3, 1, 4).reshape(b, *xb.shape[1:3], w))
            out = xb.clone()
            out[..., h:h + w] = pred.to(out.dtype)
            recs.append(out)
            codes.append(z.reshape(b, w, -1).mean(1))
        return torch.cat(recs), torch.cat(codes)


def build(config: InterpConfig) -> InterpAE:
    return InterpAE(config)


# The frame model's layers and training defaults: the two differ only in what is predicted.
register("interp", InterpConfig, build, batch_norm=True, score="mahalanobis",
         help="the centre frame of a window of context frames predicted from the others, frames' layers "
              "(IDNN, ICASSP 2020)",
         defaults=TRAINING, options={"context": ModelOption("interp: odd, at least 3.", min=3,
                                                            odd=True)})
