"""The check of clips handed to a model: shape, dtype, finite values within the feature
limit. Used by ``LoadedModel`` (``aekit.models.modelfile``) and by every scoring path."""

from __future__ import annotations

import numpy as np

from aekit.errors import InputError


def check_clips(model, x) -> np.ndarray:
    """Clips as float32 [N, C, M, T] (one clip [C, M, T] becomes N = 1), refused (InputError)
    when their shape is not the model's, or when a value is NaN, Inf or beyond
    +-``aekit.data.integrity.FEATURE_LIMIT`` (log-Mel dB values are within about [-100, 390])."""
    from aekit.data.integrity import FEATURE_LIMIT

    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise InputError(f"clips must be real numbers, got dtype {a.dtype}")
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or tuple(a.shape[1:]) != tuple(model.input_shape):
        raise InputError(f"clips of shape {list(a.shape)}: the model takes "
                         f"[N, {', '.join(map(str, model.input_shape))}]")
    if not np.isfinite(a).all():
        raise InputError("features contain NaN or Inf")
    if a.size and (a.min() < -FEATURE_LIMIT or a.max() > FEATURE_LIMIT):
        raise InputError(f"features contain values beyond +-{FEATURE_LIMIT:g} (log-Mel dB "
                         "values lie within about [-100, 390]): corrupt or not dB features")
    return a
