"""The contract every autoencoder follows (``ClipModel``) and the building blocks the kinds share.

Training, ``ae-encode`` and ``ae-eval`` only ever call the methods of ``ClipModel``:

* input: clips ``[B, C, M, T]`` (log-Mel in dB, normalized by the model's Normalizer);
* training units: a clip holds ``units_per_clip(T)`` training examples (1 for a
  whole-clip model; e.g. one per window of frames), and ``take_units(clips, offsets)``
  cuts unit ``offsets[b]`` of clip ``b`` into a flat vector ``[B, D]``; the data layer
  counts, shuffles and batches (clip, offset) pairs, never clips; clips held for training
  are laid out once by ``unit_store`` and read by ``gather_units`` (a batch of units from
  many clips in one indexing);
* ``forward(units) -> (reconstruction [B, D'], code [B, latent])``, compared with
  ``unit_target(units)`` (the units themselves, D' = D, for an autoencoder; the centre frame
  of the window for the ``interp`` kind, which predicts it from its neighbours);
* per clip: ``clip_errors`` (MSE in dB^2, MAE in dB: the mean over the clip's units) and
  ``clip_codes`` (the mean code over its units);
* normalization: ``norm_shape()`` is the shape of per-feature statistics, broadcast
  against one clip (the whole clip ``(C, M, T)`` here; ``(C, M, 1)`` for frame windows).

A kind is registered in ``aekit.models.registry``; the first two, ``baseline`` and
``improved``, live in ``aekit.models.mlp``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class ClipModel(nn.Module):
    """An autoencoder over clips; subclasses set ``self.config`` and define ``forward``."""

    config: object

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.config.input_shape)  # type: ignore[attr-defined]

    # -- training units
    def units_per_clip(self, frames: int) -> int:
        """How many training examples one clip of ``frames`` frames holds."""
        return 1

    def take_units(self, clips: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """clips [B, C, M, T], offsets [B] -> units [B, D] (here the whole clip)."""
        return clips.flatten(1)  # [B, C*M*T]

    def unit_store(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized clips [N, C, M, T] -> the layout ``gather_units`` reads them in, for
        clips held for training (here: as they are). Clip by clip: row i of the result
        depends on clip i alone, so the clips may be laid out a block at a time."""
        return x

    def gather_units(self, x: torch.Tensor, clip: torch.Tensor, offsets: torch.Tensor
                     ) -> torch.Tensor:
        """Units of many clips held together: x (clips laid out by ``unit_store``),
        clip [B] (positions in x), offsets [B] -> [B, D]. A model with many small units per
        clip overrides both to index its units directly instead of copying whole clips."""
        return self.take_units(x.index_select(0, clip), offsets)

    def forward(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def encode_units(self, units: torch.Tensor) -> torch.Tensor:
        return self(units)[1]

    def unit_target(self, units: torch.Tensor) -> torch.Tensor:
        """What ``forward(units)[0]`` is compared with (loss, scores, error vectors):
        units [B, D] -> [B, D'], here the units themselves (an autoencoder)."""
        return units

    # -- normalization
    def norm_shape(self) -> tuple[int, ...]:
        """Shape of per-feature statistics, broadcast against one clip [C, M, T]."""
        return self.input_shape

    def unit_stats(self, stats: torch.Tensor) -> torch.Tensor:
        """Statistics (broadcast against a clip) laid out like units: broadcast against [B, D]."""
        if stats.numel() == 1:
            return stats.reshape(1)
        clip = stats.reshape(stats.shape if stats.dim() == 3 else self.norm_shape())
        clip = clip.expand(*self.input_shape).unsqueeze(0)  # [1, C, M, T]
        return self.take_units(clip, torch.zeros(1, dtype=torch.int64, device=clip.device))[0]

    def target_stats(self, stats: torch.Tensor) -> torch.Tensor:
        """Statistics laid out like ``unit_target``'s output: broadcast against [B, D']."""
        s = self.unit_stats(stats)
        return s if s.numel() == 1 else self.unit_target(s.unsqueeze(0))[0]

    # -- per clip (raw dB in, dB out)
    def _all_units(self, xn: torch.Tensor):
        k = self.units_per_clip(xn.shape[-1])
        for o in range(k):
            yield k, self.take_units(xn, torch.full((xn.shape[0],), o, dtype=torch.int64,
                                                    device=xn.device))

    def clip_errors(self, x: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw dB clips [B, C, M, T] -> (MSE dB^2 [B], MAE dB [B]), the mean over each clip's units."""
        xn = norm.transform(x)
        std = None if norm.mode == "none" else self.target_stats(norm.std)
        mse = mae = None
        for k, u in self._all_units(xn):
            err = self(u)[0].float() - self.unit_target(u)  # [B, D'], normalized units
            if std is not None:
                err = err * std  # dB
            a, b = err.square().mean(1), err.abs().mean(1)
            mse, mae = (a, b) if mse is None else (mse + a, mae + b)
        return mse / k, mae / k

    def clip_codes(self, x: torch.Tensor, norm) -> torch.Tensor:
        """Raw dB clips [B, C, M, T] -> codes [B, latent], the mean over each clip's units."""
        xn = norm.transform(x)
        codes = [self.encode_units(u) for _, u in self._all_units(xn)]
        return codes[0] if len(codes) == 1 else torch.stack(codes).mean(0)

    def errors_and_codes(self, x: torch.Tensor, norm
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(MSE [B], MAE [B], codes [B, latent]); a model may do it in one pass."""
        return (*self.clip_errors(x, norm), self.clip_codes(x, norm))

    def reconstruct_and_codes(self, x: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction in dB [B, C, M, T], codes [B, latent]); a model may do it in one pass."""
        return self.reconstruct_clips(x, norm), self.clip_codes(x, norm)

    def reconstruct_clips(self, x: torch.Tensor, norm) -> torch.Tensor:
        """Raw dB clips [B, C, M, T] -> their reconstruction in dB (for plots)."""
        if self.units_per_clip(x.shape[-1]) != 1:
            raise NotImplementedError(f"{type(self).__name__} does not reconstruct whole clips")
        offsets = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        out, _ = self(self.take_units(norm.transform(x), offsets))
        return norm.inverse(out.reshape(x.shape))


def unit_target(net: nn.Module, units: torch.Tensor) -> torch.Tensor:
    """``ClipModel.unit_target`` of a model, a DDP-wrapped one (``.module``) included; the
    units themselves for any other module."""
    f = getattr(getattr(net, "module", net), "unit_target", None)
    return units if f is None else f(units)


def mirrored(widths: list[int], block: Callable[[int, int], list[nn.Module]]
             ) -> tuple[nn.Sequential, nn.Sequential]:
    """An encoder of ``block(a, b)`` through ``widths`` (input, hidden..., latent) and its
    mirror as decoder, ending in a plain Linear to the input width (no activation)."""
    enc: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        enc += block(a, b)
    back = widths[::-1]  # latent, ..., hidden[0], input
    dec: list[nn.Module] = []
    for a, b in zip(back[:-2], back[1:-1]):
        dec += block(a, b)
    dec.append(nn.Linear(back[-2], back[-1]))
    return nn.Sequential(*enc), nn.Sequential(*dec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_summary(model: nn.Module) -> list[str]:
    """One short line per layer, e.g. 'Linear(25024->8224)', 'BatchNorm1d(8224)', 'LeakyReLU(0.1)'."""
    out = []
    for m in model.modules():
        if list(m.children()):
            continue
        if isinstance(m, nn.Linear):
            out.append(f"Linear({m.in_features}->{m.out_features})")
        elif isinstance(m, nn.BatchNorm1d):
            out.append(f"BatchNorm1d({m.num_features})")
        elif isinstance(m, nn.LeakyReLU):
            out.append(f"LeakyReLU({m.negative_slope})")
        else:
            out.append(type(m).__name__)
    return out
