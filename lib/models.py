"""The tutorial's two fully connected autoencoders, with the elided layers written out.

baseline  (tutorial part 4): every hidden Linear followed by ReLU, the bottleneck included;
          the output layer is a plain Linear (dB values may be negative).
improved  (tutorial part 5): every hidden Linear followed by BatchNorm1d + LeakyReLU(0.1),
          the bottleneck included; the output layer is a plain Linear without BatchNorm.

With the defaults (input 2 x 32 x 391 = 25024, hidden 8224,2056,1024,512, latent 256)
both have about 451 M parameters, as in the tutorial.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

ARCHS = ("baseline", "improved")

DEFAULT_HIDDEN = (8224, 2056, 1024, 512)  # the tutorial's widths
DEFAULT_LATENT = 256  # the tutorial's bottleneck
LEAKY_SLOPE = 0.1  # tutorial part 5: small negative slope keeps neurons alive


@dataclass
class AEConfig:
    """Everything needed to rebuild a model; stored in every model file."""

    arch: str = "improved"
    input_shape: tuple[int, int, int] = (2, 32, 391)  # [C, n_mels, frames]
    hidden: tuple[int, ...] = field(default_factory=lambda: DEFAULT_HIDDEN)
    latent: int = DEFAULT_LATENT
    negative_slope: float = LEAKY_SLOPE

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}: use {' or '.join(ARCHS)}")
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


class Autoencoder(nn.Module):
    """x [B, D] -> encoder -> z [B, latent] -> decoder -> x_hat [B, D]; forward returns (x_hat, z)."""

    def __init__(self, config: AEConfig):
        super().__init__()
        self.config = config
        widths = [config.input_dim, *config.hidden, config.latent]
        enc: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            enc += _block(config.arch, a, b, config.negative_slope)
        dec: list[nn.Module] = []
        back = widths[::-1]  # latent, ..., hidden[0], input
        for a, b in zip(back[:-2], back[1:-1]):
            dec += _block(config.arch, a, b, config.negative_slope)
        dec.append(nn.Linear(back[-2], back[-1]))  # output layer: no activation, no BatchNorm
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() > 2:
            x = x.flatten(1)  # [B, C, M, T] -> [B, C*M*T]
        z = self.encoder(x)  # [B, latent]
        return self.decoder(z), z  # [B, D], [B, latent]


def build_model(config: AEConfig, device: torch.device | str | None = None) -> Autoencoder:
    """Build the model (on the meta device for counting without memory: device='meta')."""
    if device is not None and str(device) == "meta":
        with torch.device("meta"):
            return Autoencoder(config)
    model = Autoencoder(config)
    return model.to(device) if device is not None else model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_summary(model: Autoencoder) -> list[str]:
    """One short line per layer, e.g. 'Linear(25024->8224)', 'BatchNorm1d(8224)', 'LeakyReLU(0.1)'."""
    out = []
    for part in (model.encoder, model.decoder):
        for m in part:
            if isinstance(m, nn.Linear):
                out.append(f"Linear({m.in_features}->{m.out_features})")
            elif isinstance(m, nn.BatchNorm1d):
                out.append(f"BatchNorm1d({m.num_features})")
            elif isinstance(m, nn.LeakyReLU):
                out.append(f"LeakyReLU({m.negative_slope})")
            else:
                out.append(type(m).__name__)
    return out

