"""Scoring new recordings with a trained model: files or arrays in, per-clip scores out.

The path of ``ae-score`` and of the notebook API: the model file's feature parameters
decide the featurization (``model_params``), the featurize workers decode and compute
the features in input order (``aekit.audio.featurize.iter_features``), and batches of clips go
through the model's ``clip_errors``, the same function ``ae-eval --scores`` uses. A score
is a clip's reconstruction MSE in dB^2, or the Mahalanobis distance of its error vector
(``score="mahalanobis"``; ``"auto"``, the default, is the model's choice: aekit.evaluate.autoscore);
higher is more anomalous.

The decision threshold a model carries (``fit_threshold``, stored by ``ae-train``) is
fitted on its training clips' scores: the 90th percentile of a gamma distribution fitted
to them (the DCASE 2021+ baselines' rule), and the empirical 90th percentile beside it
(``aekit.evaluate.thresholds``, its names kept here).
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Iterator, NamedTuple, Sequence

import numpy as np

from aekit.errors import InputError
from aekit.evaluate.checks import as_model as _as_model  # noqa: F401  (the old private names)
from aekit.evaluate.checks import check_batch as _check_batch
from aekit.evaluate.checks import check_jobs as _check_jobs
from aekit.evaluate.checks import check_scores, path_list as _path_list
from aekit.models.clipcheck import check_clips

if TYPE_CHECKING:  # torch is imported by the functions that need it
    from aekit.models.modelfile import LoadedModel

LOG = logging.getLogger("aekit")

DEFAULT_BATCH = 64  # clips per forward pass: rows reach the output after at most this many


class ScoreRecord(NamedTuple):
    """One input's score (of the score asked for: MSE dB^2, or the Mahalanobis distance, see
    ``resolve_score``), or ``score=None`` and the reason it failed."""

    index: int  # position in the input list
    id: str
    path: str
    score: float | None
    error: str | None


# ------------------------------------------------------------------ model -> parameters

def model_params(model: "LoadedModel | str | os.PathLike"):
    """The feature parameters (e.g. a MelParams) recorded in a model (a LoadedModel or a model
    file path); InputError when the model records none, or records ones this aekit cannot
    reproduce."""
    from aekit.audio.kinds import params_class
    from aekit.data.store import params_mismatch

    model = _as_model(model)
    fp = dict(model.feature_params or {})
    name = str(model.path) if model.path else "the model"
    if not fp:
        raise InputError(f"{name} records no feature parameters; cannot featurize audio for it "
                         "(retrain it from a features file written by ae-featurize)")
    cls = params_class(fp.get("kind"))
    try:
        params = cls.from_attrs(fp)
    except (TypeError, ValueError, InputError) as exc:
        raise InputError(f"{name}: bad feature parameters: {exc}") from None
    diffs = params_mismatch({**params.to_attrs(), "kind": params.kind}, fp)
    if diffs:
        raise InputError(f"{name}: feature parameters this aekit does not compute: "
                         f"{', '.join(diffs)}")
    if tuple(params.clip_shape) != tuple(model.input_shape):
        raise InputError(f"{name}: its feature parameters give clips {list(params.clip_shape)}, "
                         f"the model takes {list(model.input_shape)}")
    return params


#: Integer PCM -> float as soundfile (libsndfile) reads it: (x - offset) / scale.
_PCM = {np.dtype(np.int8): (0, 2**7), np.dtype(np.uint8): (128, 2**7),
        np.dtype(np.int16): (0, 2**15), np.dtype(np.int32): (0, 2**31)}


def _as_float_waves(waves) -> np.ndarray:
    """Waveforms as float32: floats as they are, integer PCM scaled to [-1, 1) as soundfile
    scales it (int16 / 32768, int32 / 2**31, int8 / 128, uint8 (x - 128) / 128); other
    dtypes (int64, uint16, bool, complex, objects) are refused: their scale is unknown."""
    w = np.asarray(waves)
    if w.dtype.kind == "f":
        return np.asarray(w, dtype=np.float32)
    if w.dtype in _PCM:
        offset, scale = _PCM[w.dtype]
        return ((w.astype(np.float64) - offset) / scale).astype(np.float32)
    raise InputError(f"waveforms of dtype {w.dtype}: give float samples in [-1, 1] or integer "
                     "PCM (int8, uint8, int16, int32)")


# ------------------------------------------------------------------ features -> scores

SCORES = ("mse", "mahalanobis")  # ae-score / score_files / score_features
DEFAULT_SCORE = "auto"  # the model's own choice (aekit.evaluate.autoscore): mahalanobis or mse


def resolve_score(model, score: str = DEFAULT_SCORE) -> str:
    """The score ``score`` means for ``model``: 'auto' resolved (``aekit.evaluate.autoscore``: the
    kind's preferred score when the model can give it, else 'mse'), any other name as is."""
    from aekit.evaluate.autoscore import resolve

    return resolve(model, score)[0]


def check_score(model, score: str) -> None:
    """InputError (one line) for an unknown score name, or ``mahalanobis`` with a model that
    stores no Mahalanobis statistics ('auto' is resolved first)."""
    score = resolve_score(model, score)
    if score not in SCORES:
        raise InputError(f"unknown score {score!r}: use auto, {' or '.join(SCORES)}")
    if getattr(model, "is_ensemble", False):  # aekit.evaluate.ensemble: every member, its statistics
        return model.check(score)
    if score == "mahalanobis":
        from aekit.models.mahalanobis import model_stats

        model_stats(model)


def score_features(model, x: np.ndarray, batch_size: int = DEFAULT_BATCH,
                   score: str = DEFAULT_SCORE) -> np.ndarray:
    """Raw log-Mel dB clips float32 [N, C, M, T] (or one clip [C, M, T]) -> scores [N]:
    MSE dB^2 (``score="mse"``) or the Mahalanobis distance of the clips' error vectors, the
    minimum over the domains the model stores (``score="mahalanobis"``, aekit.models.mahalanobis);
    ``"auto"`` (the default): the model's own choice (``resolve_score``, aekit.evaluate.autoscore).

    ``model`` is a LoadedModel or a model file path; an ``aekit.evaluate.ensemble.Ensemble`` gives
    its members' combined z-scores."""
    import torch

    model = _as_model(model)
    score = resolve_score(model, score)
    check_score(model, score)
    if getattr(model, "is_ensemble", False):
        return model.score_features(x, batch_size, score)
    x = check_clips(model, x)
    _check_batch(batch_size)
    device = next(iter(model.model.parameters())).device
    out = np.empty(x.shape[0], dtype=np.float64)
    with torch.inference_mode():
        for s in range(0, x.shape[0], batch_size):
            xb = torch.from_numpy(x[s:s + batch_size]).to(device)
            if score == "mahalanobis":
                from aekit.models.mahalanobis import distances, error_vectors

                v = error_vectors(model.model, model.normalizer, xb).cpu().numpy()
                out[s:s + batch_size] = distances(v, model.mahalanobis)
            else:
                e2, _ = model.score(xb)  # [B] dB^2
                out[s:s + batch_size] = e2.cpu().numpy()
    return check_scores(out)


def score_array(model, waves: np.ndarray, sample_rate: int | None = None,
                batch_size: int = DEFAULT_BATCH, score: str = DEFAULT_SCORE) -> np.ndarray:
    """Waveforms [N, channels, samples] (or one [channels, samples] / [samples]) -> scores
    [N] (``score`` as :func:`score_features`: 'auto', 'mse' or 'mahalanobis'), featurized as
    ae-featurize would a file: resampled from ``sample_rate`` (None: the model's), channels
    fixed, truncated or zero-padded, then the model's front end.

    Float samples are taken as they are (full scale 1.0); integer PCM is scaled as soundfile
    reads it (int16 / 32768, int32 / 2**31, int8 / 128, uint8 (x - 128) / 128), so an int16
    array scores as the WAV file holding it."""
    import torch

    from aekit.audio.decode import MAX_DECODE_BYTES, MAX_SAMPLE_RATE, RESAMPLE_MARGIN, condition

    model = _as_model(model)
    params = model_params(model)
    score = resolve_score(model, score)
    check_score(model, score)
    _check_batch(batch_size)
    w = _as_float_waves(waves)
    w = w[None, None] if w.ndim == 1 else (w[None] if w.ndim == 2 else w)
    if w.ndim != 3:
        raise InputError(f"waveforms of shape {list(np.shape(waves))}: expected "
                         "[N, channels, samples]")
    if w.shape[1] == 0 or w.shape[2] == 0:
        raise InputError(f"waveforms of shape {list(w.shape)}: need at least one channel and "
                         "one sample")
    if not np.isfinite(w).all():
        raise InputError("waveforms contain NaN or Inf")
    if sample_rate is None:
        sr = params.sample_rate
    elif (isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer))
          or not 0 < sample_rate <= MAX_SAMPLE_RATE):
        raise InputError(f"sample rate must be an integer from 1 to {MAX_SAMPLE_RATE:,} Hz, "
                         f"got {sample_rate!r}")
    else:
        sr = int(sample_rate)
    if w.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    frontend = params.frontend()
    # Only what the clip keeps is resampled, as a file is decoded (aekit.audio.decode): a long or
    # low-rate array never becomes a huge upsampled one.
    need = (params.num_samples if sr == params.sample_rate else
            math.ceil(params.num_samples * sr / params.sample_rate) + RESAMPLE_MARGIN)
    size = 4 * w.shape[1] * max(need, math.ceil(min(need, w.shape[2]) * params.sample_rate / sr))
    if size > MAX_DECODE_BYTES:
        raise InputError(f"waveforms at {sr} Hz with {w.shape[1]} channel(s): a clip would "
                         f"resample to {size / 2**30:,.1f} GiB (limit "
                         f"{MAX_DECODE_BYTES / 2**30:g} GiB)")
    feats = []
    with torch.inference_mode():
        for clip in w:
            c, _, _ = condition(np.ascontiguousarray(clip[:, :need].T), sr, params.sample_rate,
                                params.num_samples, params.channels, params.channel_policy)
            feats.append(frontend(torch.from_numpy(c)).numpy())
    return score_features(model, np.stack(feats), batch_size, score)


# ------------------------------------------------------------------ files -> scores

def _is_stream(paths) -> bool:
    """Whether ``paths`` is read as a stream (an iterator, a generator, a file of paths, an
    aekit.audio.pathstream.PathSource), not a sequence held by the caller (list, tuple, ...)."""
    from collections.abc import Sequence as _Seq

    return (not isinstance(paths, (str, bytes, os.PathLike, _Seq))
            and hasattr(paths, "__iter__") and not hasattr(paths, "__len__"))


def featurize_files(paths: Sequence[str | os.PathLike], params=None, jobs: int | None = None):
    """Iterate over ``Featurized(index, path, features [C, M, T] | None, meta, error)`` in input
    order, computed in worker processes. ``paths``: a sequence of paths (one str is refused:
    give ``[path]``), or an iterator of paths (a generator, an aekit.audio.pathstream source), read
    as the work needs it, never held; a path that is missing or undecodable gives
    ``features=None`` and its reason. ``params``: the parameters of a feature kind (a
    MelParams, a LinearParams, ...), a dict of a kind's fields (its ``kind`` key, default
    logmel; an unknown key is an InputError naming the valid ones), a LoadedModel or a model
    file path (its parameters); None: the log-Mel defaults."""
    from aekit.audio.kinds import params_class
    from aekit.audio.params import ClipParams
    from aekit.audio.featurize import iter_features

    stream = _is_stream(paths)
    if not stream:
        paths = _path_list(paths)
    _check_jobs(jobs)
    if params is None:
        params = params_class(None)()
    elif isinstance(params, dict):
        params = params_class(params.get("kind")).from_dict(params)
    elif not isinstance(params, ClipParams):
        params = model_params(_as_model(params))
    if stream:
        from aekit.audio.pathstream import IDLE, iter_features_stream

        return (it for it in iter_features_stream(paths, params, jobs) if it is not IDLE)
    return iter_features(paths, params, jobs)


def score_files(model, paths: Sequence[str | os.PathLike], ids: Sequence[str] | None = None,
                jobs: int | None = None, batch_size: int = DEFAULT_BATCH,
                score: str = DEFAULT_SCORE) -> Iterator[ScoreRecord]:
    """Score audio files with a model: yield one :class:`ScoreRecord` per path, in input order,
    batch by batch as they are computed (memory does not grow with the number of files).

    Each file is decoded and featurized with the parameters stored in the model, in
    ``jobs`` worker processes; a file that is missing or cannot be decoded gives a record
    with ``score=None`` and its reason. ``paths`` is a sequence of paths (one str is
    refused with a TypeError: give ``[path]``), or an iterator of paths (a generator, an
    ``aekit.audio.pathstream`` source such as the lines of a pipe): read as the work needs it and
    never held, its first records come before its end is read. ``ids``: None (the paths), a
    function path -> id, a sequence as long as a sequence of paths, or an iterable read in
    step with an iterator of paths. ``score``: "auto" (the model's choice, ``resolve_score``:
    which one it is does not change during the run), "mse" or "mahalanobis", as
    :func:`score_features`.

    Every forward pass is ``batch_size`` clips (a last or early batch is padded), so a clip's
    score depends on its position in the input only, never on when a stream paused.
    """
    model = _as_model(model)
    score = resolve_score(model, score)
    check_score(model, score)
    params = model_params(model)
    stream = _is_stream(paths)
    if ids is not None and isinstance(ids, (str, bytes)):
        raise TypeError("ids must be a sequence of strings, not one string")
    if stream:
        id_of = _stream_ids(ids)
    else:
        paths = _path_list(paths)
        if callable(ids):
            id_of = _call_ids(ids)
        else:
            id_list = list(paths) if ids is None else [str(i) for i in ids]
            if len(id_list) != len(paths):
                raise ValueError("paths and ids differ in length")
            id_of = lambda index, path: id_list[index]  # noqa: E731
    _check_batch(batch_size)
    size = 4 * batch_size * math.prod(params.clip_shape)
    if size > MAX_BATCH_BYTES:  # every batch is padded to batch_size clips
        raise InputError(f"batch size {batch_size}: a batch of clips {list(params.clip_shape)} "
                         f"would take {size / 2**30:.1f} GiB (limit "
                         f"{MAX_BATCH_BYTES / 2**30:g} GiB); give a smaller batch size")
    _check_jobs(jobs)
    if stream:
        from aekit.audio.pathstream import iter_features_stream

        items = iter_features_stream(paths, params, jobs)
    else:
        items = featurize_files(paths, params, jobs)
    return _score_files(model, params, items, id_of, batch_size, score)  # run lazily


def _call_ids(fn):
    return lambda index, path: str(fn(path))


def _stream_ids(ids):
    if ids is None:
        return lambda index, path: path
    if callable(ids):
        return _call_ids(ids)
    it = iter(ids)

    def id_of(index, path):
        try:
            return str(next(it))
        except StopIteration:
            raise ValueError("paths and ids differ in length (ids ran out)") from None
    return id_of


#: The largest batch of clips score_files holds (every batch is padded to its full size).
MAX_BATCH_BYTES = 2 << 30

#: Rows held for the batch in progress before they are written anyway (failures between
#: scored clips): past this many, the batch is scored padded and its rows are yielded.
HELD_LIMIT = 1024


def _score_files(model, params, items, id_of, batch_size: int,
                 score_name: str = "mse") -> Iterator[ScoreRecord]:
    """Score the ``Featurized`` items (and IDLE marks) of ``items``, in batches of exactly
    ``batch_size`` consecutive good clips: a batch is scored when full, and, padded with
    the clips of the buffer's free slots, when the input pauses (IDLE), ends, or
    HELD_LIMIT rows wait. Slot k of a batch always holds the same clip whatever the timing,
    and a forward pass's result for a clip depends on its slot and the batch size only
    (tested), so the scores do not depend on when the input paused."""
    from collections import deque

    from aekit.audio.pathstream import IDLE

    buf = None  # float32 [batch_size, C, M, T]: the batch in progress (zeros in unused slots)
    slots = 0  # slots of ``buf`` filled
    held: deque = deque()  # (item, slot or None) not yet yielded, in input order
    scores = None

    def emit() -> Iterator[ScoreRecord]:
        nonlocal scores
        if any(slot is not None for _, slot in held):
            scores = score_features(model, buf, batch_size, score_name)
        while held:
            it, slot = held.popleft()
            score = None if slot is None else float(scores[slot])
            yield ScoreRecord(it.index, id_of(it.index, it.path), it.path, score, it.error)

    try:
        for item in items:
            if item is IDLE:
                yield from emit()
                continue
            if item.error is not None:
                held.append((item, None))
                if len(held) == 1 or len(held) >= HELD_LIMIT:  # nothing before it to wait for
                    yield from emit()
                continue
            if buf is None:
                buf = np.zeros((batch_size, *item.features.shape), dtype=np.float32)
            buf[slots] = item.features
            held.append((item, slots))
            slots += 1
            if slots == batch_size:
                yield from emit()
                slots = 0
            elif len(held) >= HELD_LIMIT:
                yield from emit()
        yield from emit()
    finally:  # closed early, or an error: the workers stop now, not when collected
        close = getattr(items, "close", None)
        if close is not None:
            close()


