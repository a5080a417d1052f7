"""Scoring new recordings with a trained model: files or arrays in, per-clip scores out.

The path of ``ae-score`` and of the notebook API: the model file's feature parameters
decide the featurization (``model_params``), the featurize workers decode and compute
the features in input order (``aekit.featurize.iter_features``), and batches of clips go
through the model's ``clip_errors``, the same function ``ae-eval --scores`` uses. A score
is a clip's reconstruction MSE in dB^2; higher is more anomalous.

The decision threshold a model carries (``fit_threshold``, stored by ``ae-train``) is
fitted on its training clips' scores: the 90th percentile of a gamma distribution fitted
to them (the DCASE 2021+ baselines' rule), and the empirical 90th percentile beside it.
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Iterator, NamedTuple, Sequence

import numpy as np

from .errors import InputError

if TYPE_CHECKING:  # torch is imported by the functions that need it
    from .modelfile import LoadedModel

LOG = logging.getLogger("aekit")

DEFAULT_BATCH = 64  # clips per forward pass: rows reach the output after at most this many
THRESHOLD_QUANTILE = 0.9  # the DCASE baselines' decision threshold: 90th percentile


class ScoreRecord(NamedTuple):
    """One input's score (MSE dB^2), or ``score=None`` and the reason it failed."""

    index: int  # position in the input list
    id: str
    path: str
    score: float | None
    error: str | None


# ------------------------------------------------------------------ model -> parameters

def model_params(model: "LoadedModel"):
    """The feature parameters (e.g. a MelParams) recorded in a model file; InputError when the
    model records none, or records ones this aekit cannot reproduce."""
    from .features import params_class
    from .store import params_mismatch

    fp = dict(model.feature_params or {})
    name = str(model.path) if model.path else "the model"
    if not fp:
        raise InputError(f"{name} records no feature parameters; cannot featurize audio for it "
                         "(retrain it from a features file written by ae-featurize)")
    cls = params_class(fp.get("kind"))
    try:
        params = cls.from_attrs(fp)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: bad feature parameters: {exc}") from None
    diffs = params_mismatch(params.to_attrs(), fp)
    if diffs:
        raise InputError(f"{name}: feature parameters this aekit does not compute: "
                         f"{', '.join(diffs)}")
    if tuple(params.clip_shape) != tuple(model.input_shape):
        raise InputError(f"{name}: its feature parameters give clips {list(params.clip_shape)}, "
                         f"the model takes {list(model.input_shape)}")
    return params


def _as_model(model) -> "LoadedModel":
    if isinstance(model, (str, os.PathLike)):
        from .modelfile import load_model

        return load_model(model)
    return model


# ------------------------------------------------------------------ features -> scores

def score_features(model, x: np.ndarray, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """Raw log-Mel dB clips float32 [N, C, M, T] (or one clip [C, M, T]) -> MSE dB^2 [N].

    ``model`` is a LoadedModel or a model file path."""
    import torch

    model = _as_model(model)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(model.input_shape):
        raise InputError(f"clips of shape {list(x.shape)}: the model takes "
                         f"[N, {', '.join(map(str, model.input_shape))}]")
    if not np.isfinite(x).all():
        raise InputError("features contain NaN or Inf")
    if batch_size < 1:
        raise InputError(f"batch size must be positive, got {batch_size}")
    device = next(iter(model.model.parameters())).device
    out = np.empty(x.shape[0], dtype=np.float64)
    with torch.inference_mode():
        for s in range(0, x.shape[0], batch_size):
            e2, _ = model.score(torch.from_numpy(x[s:s + batch_size]).to(device))  # [B] dB^2
            out[s:s + batch_size] = e2.cpu().numpy()
    return out


def score_array(model, waves: np.ndarray, sample_rate: int | None = None,
                batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """Waveforms float [N, channels, samples] (or one [channels, samples] / [samples]) -> MSE
    dB^2 [N], featurized as ae-featurize would a file: resampled from ``sample_rate`` (default:
    the model's), channels fixed, truncated or zero-padded, then the model's front end."""
    import torch

    from .audio import fix_channels, resample
    from .features import MelFrontend

    model = _as_model(model)
    params = model_params(model)
    w = np.asarray(waves, dtype=np.float32)
    w = w[None, None] if w.ndim == 1 else (w[None] if w.ndim == 2 else w)
    if w.ndim != 3:
        raise InputError(f"waveforms of shape {list(np.shape(waves))}: expected "
                         "[N, channels, samples]")
    if not np.isfinite(w).all():
        raise InputError("waveforms contain NaN or Inf")
    sr = int(sample_rate or params.sample_rate)
    frontend = MelFrontend(params)
    feats = []
    with torch.inference_mode():
        for clip in w:
            y = resample(np.ascontiguousarray(clip.T), sr, params.sample_rate)[:params.num_samples]
            c, _ = fix_channels(np.ascontiguousarray(y.T), params.channels, params.channel_policy)
            if c.shape[1] < params.num_samples:
                c = np.pad(c, ((0, 0), (0, params.num_samples - c.shape[1])))
            feats.append(frontend(torch.from_numpy(np.ascontiguousarray(c))).numpy())
    return score_features(model, np.stack(feats), batch_size)


# ------------------------------------------------------------------ files -> scores

def featurize_files(paths: Sequence[str | os.PathLike], params=None, jobs: int | None = None):
    """Iterate over ``Featurized(index, path, features [C, M, T] | None, meta, error)`` in input
    order, computed in worker processes. ``params``: a MelParams, a dict of them, a
    LoadedModel or a model file path (its parameters); None: the defaults."""
    from .features import MelParams
    from .featurize import iter_features

    if params is None:
        params = MelParams()
    elif isinstance(params, dict):
        params = MelParams.from_attrs(params)
    elif not isinstance(params, MelParams):
        params = model_params(_as_model(params))
    return iter_features(list(paths), params, jobs)


def score_files(model, paths: Sequence[str | os.PathLike], ids: Sequence[str] | None = None,
                jobs: int | None = None, batch_size: int = DEFAULT_BATCH
                ) -> Iterator[ScoreRecord]:
    """Score audio files with a model: yield one :class:`ScoreRecord` per path, in input order,
    batch by batch as they are computed (memory does not grow with the number of files).

    Each file is decoded and featurized with the parameters stored in the model, in
    ``jobs`` worker processes; a file that cannot be decoded gives a record with
    ``score=None`` and its reason. ``ids`` default to the paths.
    """
    model = _as_model(model)
    params = model_params(model)
    paths = [str(p) for p in paths]
    ids = list(paths) if ids is None else [str(i) for i in ids]
    if len(ids) != len(paths):
        raise ValueError("paths and ids differ in length")
    if batch_size < 1:
        raise InputError(f"batch size must be positive, got {batch_size}")
    held = []  # Featurized items waiting for their batch: ok ones and failures between them

    def flush() -> Iterator[ScoreRecord]:
        ok = [it for it in held if it.error is None]
        scores = iter(score_features(model, np.stack([it.features for it in ok]), batch_size)
                      if ok else ())
        for it in held:
            score = None if it.error is not None else float(next(scores))
            yield ScoreRecord(it.index, ids[it.index], it.path, score, it.error)
        held.clear()

    n_ok = 0
    for item in featurize_files(paths, params, jobs):
        held.append(item)
        n_ok += item.error is None
        if n_ok >= batch_size:
            yield from flush()
            n_ok = 0
    yield from flush()


# ------------------------------------------------------------------ threshold

def fit_threshold(scores: Sequence[float], quantile: float = THRESHOLD_QUANTILE) -> dict:
    """The decision threshold of a model, from its training clips' scores (MSE dB^2).

    Returns {"method", "value", "quantile", "n", "empirical", "gamma": {"shape", "loc",
    "scale", "value"}}: ``value`` is the ``quantile`` of a gamma distribution fitted to the
    scores by maximum likelihood (scipy.stats.gamma.fit, as the DCASE 2021+ baselines do),
    or the empirical quantile (method "empirical") when the fit fails or its quantile falls
    outside the range of the scores.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0 or not np.isfinite(s).all():
        raise InputError("threshold: need at least one finite training score")
    if not 0.0 < quantile < 1.0:
        raise InputError("threshold quantile must be between 0 and 1")
    empirical = float(np.quantile(s, quantile))  # numpy's default (linear) interpolation
    out = {"quantile": quantile, "n": int(s.size), "empirical": empirical, "gamma": None,
           "method": "empirical", "value": empirical}
    if s.size >= 3 and float(s.max() - s.min()) > 0:
        import warnings

        from scipy import stats

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a, loc, scale = stats.gamma.fit(s)
                g = float(stats.gamma.ppf(quantile, a, loc=loc, scale=scale))
        except (ValueError, RuntimeError, FloatingPointError):
            g = math.nan
        else:
            out["gamma"] = {"shape": float(a), "loc": float(loc), "scale": float(scale), "value": g}
        if math.isfinite(g) and s.min() <= g <= s.max():
            out["method"], out["value"] = "gamma", g
    return out


def stored_threshold(model: "LoadedModel") -> float:
    """The threshold ``ae-train`` stored in the model; InputError for a model without one."""
    t = (model.info or {}).get("threshold")
    name = str(model.path) if model.path else "the model"
    if not isinstance(t, dict) or t.get("value") is None:
        raise InputError(f"{name} stores no threshold (trained before ae-train stored one); "
                         "give --threshold a number, or retrain")
    v = t["value"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"{name}: its stored threshold {v!r} is not a finite number")
    return float(t["value"])


def training_threshold(model, normalizer, features: str | os.PathLike, rows: np.ndarray,
                       device="cpu", quantile: float = THRESHOLD_QUANTILE) -> dict:
    """``fit_threshold`` of the scores of ``rows`` of a features file, computed as ``ae-eval``
    computes them (eval mode, float32): what ``ae-train`` stores with the kept weights."""
    from .inference import score_rows
    from .modelfile import LoadedModel
    from .store import FeatureFile

    lm = LoadedModel(model=model, normalizer=normalizer, config=model.config, feature_params={})
    was_training = model.training
    model.eval()
    try:
        with FeatureFile(features) as ff:
            scores = score_rows(lm, ff, np.asarray(rows, dtype=np.int64), device=device)
    finally:
        model.train(was_training)
    return fit_threshold(scores.mse, quantile)
