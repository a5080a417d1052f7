"""The tutorial's two fully connected autoencoders, with the elided layers written out.

baseline  (tutorial part 4): every hidden Linear followed by ReLU, the bottleneck included;
          the output layer is a plain Linear (dB values may be negative).
improved  (tutorial part 5): every hidden Linear followed by BatchNorm1d + LeakyReLU(0.1),
          the bottleneck included; the output layer is a plain Linear without BatchNorm.

Both see a whole clip as one flat vector (one training unit per clip). With the defaults
(input 2 x 32 x 391 = 25024, hidden 8224,2056,1024,512, latent 256) both have about
451 M parameters, as in the tutorial.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from aekit.models.base import ClipModel, mirrored
from aekit.models.registry import register

MLP_ARCHS = ("baseline", "improved")
LEAKY_SLOPE = 0.1  # tutorial part 5: small negative slope keeps neurons alive
DEFAULT_HIDDEN = (8224, 2056, 1024, 512)  # the tutorial's widths
DEFAULT_LATENT = 256  # the tutorial's bottleneck


@dataclass
class AEConfig:
    """Everything needed to rebuild a model; stored in every model file."""

    arch: str = "improved"
    input_shape: tuple[int, int, int] = (2, 32, 391)  # [C, n_mels, frames]
    hidden: tuple[int, ...] = field(default_factory=lambda: DEFAULT_HIDDEN)
    latent: int = DEFAULT_LATENT
    negative_slope: float = LEAKY_SLOPE

    def __post_init__(self) -> None:
        if self.arch not in MLP_ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}: use {' or '.join(MLP_ARCHS)}")
        self.input_shape = tuple(int(x) for x in self.input_shape)  # type: ignore[assignment]
        self.hidden = tuple(int(x) for x in self.hidden)
        self.latent = int(self.latent)
        if any(w <= 0 for w in (*self.hidden, self.latent)):
            raise ValueError("layer widths must be positive")

    @property
    def input_dim(self) -> int:
        c, m, t = self.input_shape
        return c * m * t

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AEConfig":
        keys = {"arch", "input_shape", "hidden", "latent", "negative_slope"}
        return cls(**{k: v for k, v in d.items() if k in keys})


def _block(arch: str, n_in: int, n_out: int, slope: float) -> list[nn.Module]:
    if arch == "baseline":
        return [nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.LeakyReLU(slope, inplace=True)]


class Autoencoder(ClipModel):
    """x [B, D] -> encoder -> z [B, latent] -> decoder -> x_hat [B, D]; forward returns (x_hat, z)."""

    def __init__(self, config: AEConfig):
        super().__init__()
        self.config = config
        widths = [config.input_dim, *config.hidden, config.latent]
        self.encoder, self.decoder = mirrored(
            widths, lambda a, b: _block(config.arch, a, b, config.negative_slope))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() > 2:
            x = x.flatten(1)  # [B, C, M, T] -> [B, C*M*T]
        z = self.encoder(x)  # [B, latent]
        return self.decoder(z), z  # [B, D], [B, latent]

    def encode_units(self, units: torch.Tensor) -> torch.Tensor:
        return self.encoder(units)  # the decoder is not needed for a code

    def unit_stats(self, stats: torch.Tensor) -> torch.Tensor:
        return stats.reshape(-1)  # [1] or [C*M*T]: the unit is the flat clip

    def reconstruct_and_codes(self, x: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
        out, z = self(norm.transform(x).flatten(1))  # [B, D], [B, latent]
        return norm.inverse(out.reshape(x.shape)), z  # [B, C, M, T] dB

    def reconstruct_clips(self, x: torch.Tensor, norm) -> torch.Tensor:
        return self.reconstruct_and_codes(x, norm)[0]

    def errors_and_codes(self, x: torch.Tensor, norm
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Compared in dB after de-normalizing the reconstruction (as ae-eval always did).
        recon, z = self.reconstruct_and_codes(x, norm)
        diff = (recon - x).flatten(1)  # [B, D] dB
        # float32 on the device (MPS has no float64); torch's reductions sum pairwise.
        return diff.square().mean(1), diff.abs().mean(1), z

    def clip_errors(self, x: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
        return self.errors_and_codes(x, norm)[:2]


def build(config: AEConfig) -> Autoencoder:
    return Autoencoder(config)


register("baseline", AEConfig, build, help="Linear+ReLU")
register("improved", AEConfig, build, batch_norm=True, help="Linear+BatchNorm+LeakyReLU(0.1)")
