"""Decision thresholds of a model: ``fit_threshold`` (the DCASE baselines' gamma 90th
percentile) of its training clips' scores, the one ae-train stored (``stored_threshold``),
and the one pass over the training clips ae-train makes to store them (``training_fit``)."""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from aekit.errors import InputError
from aekit.evaluate.checks import as_model, check_scores

if TYPE_CHECKING:  # torch is imported by the functions that need it
    from aekit.models.modelfile import LoadedModel

LOG = logging.getLogger("aekit")

THRESHOLD_QUANTILE = 0.9  # the DCASE baselines' decision threshold: 90th percentile


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


def stored_threshold(model: "LoadedModel | str | os.PathLike") -> float:
    """The threshold ``ae-train`` stored in the model (a LoadedModel or a model file path);
    InputError for a model without one."""
    model = as_model(model)
    t = (model.info or {}).get("threshold")
    name = str(model.path) if model.path else "the model"
    if not isinstance(t, dict) or t.get("value") is None:
        raise InputError(f"{name} stores no threshold (trained before ae-train stored one); "
                         "give the threshold as a number, or retrain")
    v = t["value"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"{name}: its stored threshold {v!r} is not a finite number")
    return float(t["value"])


def training_threshold(model, normalizer, features: str | os.PathLike, rows: np.ndarray,
                       device="cpu", quantile: float = THRESHOLD_QUANTILE) -> dict:
    """``fit_threshold`` of the scores of ``rows`` of a features file, computed as ``ae-eval``
    computes them (eval mode, float32): what ``ae-train`` stores with the kept weights."""
    from aekit.evaluate.inference import score_rows
    from aekit.models.modelfile import LoadedModel
    from aekit.data.store import FeatureFile

    lm = LoadedModel(model=model, normalizer=normalizer, config=model.config, feature_params={})
    was_training = model.training
    model.eval()
    try:
        with FeatureFile(features) as ff:
            scores = score_rows(lm, ff, np.asarray(rows, dtype=np.int64), device=device)
    finally:
        model.train(was_training)
    return fit_threshold(scores.mse, quantile)


def training_fit(model, normalizer, features: str | os.PathLike, rows: np.ndarray,
                 domains: np.ndarray | None = None, device="cpu",
                 quantile: float = THRESHOLD_QUANTILE, scores_out: dict | None = None
                 ) -> tuple[dict, dict | None]:
    """(``fit_threshold`` of the training clips' MSE scores, Mahalanobis statistics
    {domain: (mean, icov, n)} or None), from one pass over ``rows`` of a features file with
    the model in eval mode: what ``ae-train`` stores with the kept weights. ``domains``: the
    domain of each row (None: one domain 'all'). No statistics (None, logged) when the
    error vectors are longer than ``aekit.models.mahalanobis.MAX_DIM`` or no domain has 2 clips.
    ``scores_out`` (a dict), when given, receives the training clips' ids ("ids") and their
    scores {"mse", "mae", "mahalanobis" (None without statistics)}: float64 [N] in row order
    (``aekit.evaluate.trainingscores.training_stats``)."""
    import torch

    from aekit.models import mahalanobis as mh
    from aekit.evaluate.inference import DEFAULT_BATCH as EVAL_BATCH  # as training_threshold: same numbers
    from aekit.models.modelfile import LoadedModel
    from aekit.data.store import FeatureFile

    rows = np.asarray(rows, dtype=np.int64)
    lm = LoadedModel(model=model, normalizer=normalizer, config=model.config, feature_params={})
    dim = mh.vector_dim(model)
    want = dim <= mh.MAX_DIM
    if not want:
        LOG.warning("no Mahalanobis statistics stored: error vectors of %d values (limit %d)",
                    dim, mh.MAX_DIM)
    mse = np.empty(rows.size, dtype=np.float64)
    mae = np.empty(rows.size, dtype=np.float64)
    vec = np.empty((rows.size, dim), dtype=np.float64) if want else None
    was_training = model.training
    model.eval()
    pos = 0
    try:
        with FeatureFile(features) as ff, torch.inference_mode():
            if scores_out is not None:
                scores_out["ids"] = [ff.ids[i] for i in rows]
            for _, block in ff.iter_blocks(rows, block=EVAL_BATCH):
                x = torch.from_numpy(block).to(device)
                k = block.shape[0]
                e2, e1 = lm.score(x)
                mse[pos:pos + k], mae[pos:pos + k] = e2.cpu().numpy(), e1.cpu().numpy()
                if want:
                    vec[pos:pos + k] = mh.error_vectors(model, normalizer, x).cpu().numpy()
                pos += k
    finally:
        model.train(was_training)
    check_scores(mse)
    threshold = fit_threshold(mse, quantile)
    stats = None
    if want:
        if not np.isfinite(vec).all():
            LOG.warning("no Mahalanobis statistics stored: non-finite error vectors")
        else:
            dom = (np.full(rows.size, mh.ALL, dtype=object) if domains is None
                   else np.asarray(domains, dtype=object))
            stats = mh.fit(vec, dom) or None
    if scores_out is not None:
        scores_out.update(mse=mse, mae=mae, mahalanobis=None if stats is None else
                          mh.crossfit_distances(vec, dom, stats))
    return threshold, stats
