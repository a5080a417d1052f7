"""Forward passes of a trained model over a features file: per-clip errors and latent codes.

Both ``ae-encode`` and ``ae-eval`` are forward passes only: rows are read in blocks
(``FeatureFile.iter_blocks``), run through the model under ``torch.inference_mode`` and
reduced at once, so memory stays flat whatever the number of clips. What a clip's error
and code are is the model's business (``ClipModel.clip_errors``/``clip_codes``); the
latents file format lives in ``aekit.data.store``, the evaluation in ``aekit.evaluate.evaluation``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from aekit.errors import InputError
from aekit.models.modelfile import LoadedModel
from aekit.data.store import FeatureFile, params_mismatch
from aekit.data.latents import LatentsWriter

LOG = logging.getLogger("aekit")

DEFAULT_BATCH = 256  # big enough that the Linear layers run as large, efficient matmuls


def check_compatible(model: LoadedModel, ff: FeatureFile, model_name: str | None = None) -> None:
    """Refuse features whose parameters or clip shape differ from the model's (InputError).

    The message names both sides, e.g. ``n_mels=64 vs 32 (features x.h5 vs model m.safetensors)``.
    """
    mname = model_name or (str(model.path) if model.path else "the model")
    sides = f"(features {ff.path} vs model {mname})"
    shape_f, shape_m = tuple(ff.clip_shape), tuple(model.input_shape)
    if shape_f != shape_m:
        fmt = lambda s: "x".join(map(str, s))  # noqa: E731
        raise InputError(f"clip shape differs: {fmt(shape_f)} vs {fmt(shape_m)} {sides}")
    if not model.feature_params:
        LOG.warning("model %s records no feature parameters; only the clip shape was checked",
                    mname)
        return
    diffs = params_mismatch(ff.params, model.feature_params)
    if diffs:
        raise InputError(f"feature parameters differ: {', '.join(diffs)} {sides}")


def _batches(ff: FeatureFile, rows: np.ndarray | None, batch_size: int
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if batch_size < 1:
        raise InputError(f"batch size must be positive, got {batch_size}")
    yield from ff.iter_blocks(rows, block=batch_size)


@dataclass
class Scores:
    """Per-clip reconstruction errors (in the features' units: dB) of the rows scored."""

    rows: np.ndarray  # int64 [N]  indices into the features file
    mse: np.ndarray  # float64 [N]  mean squared error, dB^2
    mae: np.ndarray  # float64 [N]  mean absolute error, dB
    latents: np.ndarray | None = None  # float32 [N, latent] when asked for
    mahalanobis: np.ndarray | None = None  # float64 [N] when asked for (aekit.models.mahalanobis)


def score_rows(model: LoadedModel, ff: FeatureFile, rows: np.ndarray | None = None,
               batch_size: int = DEFAULT_BATCH, device: torch.device | str = "cpu",
               keep_latents: bool = False, advance: Callable[[int], None] | None = None,
               mahalanobis: bool = False) -> Scores:
    """Reconstruction MSE and MAE of each row (all rows when None), batched, no gradients;
    with ``mahalanobis`` also the Mahalanobis score (the model must store statistics)."""
    if mahalanobis:
        from aekit.models.mahalanobis import distances, error_vectors, model_stats

        stats = model_stats(model)
    rows = np.arange(len(ff), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    n = rows.size
    maha = np.empty(n, dtype=np.float64) if mahalanobis else None
    mse = np.empty(n, dtype=np.float64)
    mae = np.empty(n, dtype=np.float64)
    lat = np.empty((n, model.latent), dtype=np.float32) if keep_latents else None
    pos = 0
    with torch.inference_mode():
        for _, block in _batches(ff, rows, batch_size):
            x = torch.from_numpy(block).to(device, non_blocking=True)  # [B, C, M, T] dB
            # The model's per-clip errors: [B] dB^2, [B] dB (and codes [B, latent]).
            e2, e1, z = model.score(x, codes=True) if lat is not None else (*model.score(x), None)
            k = block.shape[0]
            mse[pos:pos + k] = e2.cpu().numpy()
            mae[pos:pos + k] = e1.cpu().numpy()
            if lat is not None:
                lat[pos:pos + k] = z.float().cpu().numpy()
            if mahalanobis:
                v = error_vectors(model.model, model.normalizer, x).cpu().numpy()
                maha[pos:pos + k] = distances(v, stats)
            pos += k
            if advance:
                advance(k)
    from aekit.evaluate.checks import check_scores

    check_scores(mse)  # a NaN or Inf score is an error (DataError), never a silent null
    check_scores(mae)
    if mahalanobis:
        check_scores(maha)
    return Scores(rows=rows, mse=mse, mae=mae, latents=lat,
                  mahalanobis=maha if mahalanobis else None)


def encode_rows(model: LoadedModel, ff: FeatureFile, rows: np.ndarray | None = None,
                batch_size: int = DEFAULT_BATCH, device: torch.device | str = "cpu"
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (row indices, latent codes float32 [B, latent]) block by block."""
    for idx, block in _batches(ff, rows, batch_size):
        # Inference mode only around the computation: a generator must not leave it
        # switched on in the caller's code while suspended.
        with torch.inference_mode():
            z = model.encode(torch.from_numpy(block).to(device, non_blocking=True))
            codes = z.float().cpu().numpy()
        yield idx, codes


def reconstruct_rows(model: LoadedModel, ff: FeatureFile, rows: Sequence[int],
                     device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(original, reconstruction) float32 [K, C, M, T] of a few rows, for plots."""
    x = ff.read(np.asarray(rows, dtype=np.int64))
    with torch.inference_mode():
        recon, _ = model.reconstruct(torch.from_numpy(x).to(device))
    return x, recon.float().cpu().numpy()


def write_latents(path: str | os.PathLike, model: LoadedModel, ff: FeatureFile,
                  rows: np.ndarray | None = None, batch_size: int = DEFAULT_BATCH,
                  device: torch.device | str = "cpu", command: str = "",
                  provenance: dict | None = None,
                  advance: Callable[[int], None] | None = None) -> int:
    """Encode the rows (all when None) into a latents HDF5 file, atomically; return the count.

    Blocks are appended as they are encoded, so memory does not grow with N.
    """
    rows = np.arange(len(ff), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    ids = ff.ids
    attrs = {"command": command, "latent": model.latent, "arch": model.config.arch,
             "input_shape": np.asarray(model.input_shape, dtype=np.int64),
             **(provenance or {}), **model.feature_params}
    with LatentsWriter(path, model.latent, attrs, chunk=max(1, min(4096, rows.size))) as w:
        for idx, z in encode_rows(model, ff, rows, batch_size, device):
            w.append(z, [ids[i] for i in idx])
            if advance:
                advance(len(idx))
    return w.n
