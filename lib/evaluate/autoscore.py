"""``--score auto``: the anomaly score a model prefers, and the decision threshold of a score.

One rule for every model kind: a kind declares its preferred score at registration
(``aekit.models.registry.register(score=...)``, ``ModelKind.score``): 'mahalanobis' for
the frame-window kinds (frames, interp), 'mse' for the whole-clip ones. ``auto`` is that
score when it is 'mse', or when the model file stores Mahalanobis statistics; otherwise
(a model written before ae-train stored them, or one whose error vectors are longer than
``aekit.models.mahalanobis.MAX_DIM``) 'mse'. An ensemble resolves to one score for all members:
'mahalanobis' only when every member's own ``auto`` is 'mahalanobis', else 'mse'.

Why Mahalanobis for the window models: on held-out synthetic data (ae-synth, validation from
training normals only) frames reached a mean AUC of 0.87-0.90 with the MSE and 0.94-0.95 with
the Mahalanobis distance; the DCASE 2023 baseline on real held-out recordings (issue 20):
0.78 (MSE) and 0.83 (Mahalanobis), per-id models.

The threshold of a score (``--threshold model``, ae-eval's decisions, --submission):
'mse' the one ae-train stored (``aekit.evaluate.thresholds.stored_threshold``); 'mahalanobis'
``aekit.evaluate.thresholds.fit_threshold`` (the same 90th percentile rule) of the training clips'
Mahalanobis distances that ae-train stored in ``training_scores`` (``aekit.evaluate.ensemble``).
"""

from __future__ import annotations

import logging

from aekit.errors import InputError

LOG = logging.getLogger("aekit")

AUTO = "auto"


def preferred(model) -> str:
    """The score a loaded model's kind declares (``ModelKind.score``; 'mse' when unknown)."""
    from aekit.models.registry import kinds

    arch = getattr(getattr(model, "config", None), "arch", None)
    info = kinds().get(arch)
    return info.score if info is not None else "mse"


def _auto_one(model) -> tuple[str, str]:
    arch = getattr(getattr(model, "config", None), "arch", "?")
    want = preferred(model)
    if want == "mse":
        return "mse", f"model kind {arch} prefers mse"
    if getattr(model, "mahalanobis", None):
        return "mahalanobis", f"model kind {arch} prefers mahalanobis and the model stores its " \
                              "statistics"
    return "mse", f"model kind {arch} prefers mahalanobis, but the model stores no Mahalanobis " \
                  "statistics (trained before aekit stored them, or error vectors too long)"


def resolve(model, score: str = AUTO) -> tuple[str, str]:
    """(score name, why): ``score`` as given unless it is 'auto', else the model's choice
    (see the module; an ``aekit.evaluate.ensemble.Ensemble``: one score for all members)."""
    if score != AUTO:
        return score, "given"
    members = getattr(model, "members", None) if getattr(model, "is_ensemble", False) else None
    if members is None:
        return _auto_one(model)
    picks = [_auto_one(m) for m in members]
    if all(p[0] == "mahalanobis" for p in picks):
        return "mahalanobis", "every member's auto score is mahalanobis"
    names = getattr(model, "names", None) or [f"member {k + 1}" for k in range(len(picks))]
    first = next(k for k, p in enumerate(picks) if p[0] != "mahalanobis")
    return "mse", f"not every member's auto score is mahalanobis ({names[first]}: " \
                  f"{picks[first][1]})"


def resolve_logged(model, score: str = AUTO) -> str:
    """``resolve``'s score; when ``score`` is 'auto', the choice and its reason logged (INFO)."""
    name, why = resolve(model, score)
    if score == AUTO:
        LOG.info("score: %s (auto: %s)", name, why)
    return name


def has_threshold(model, score: str) -> bool:
    """Whether a single model stores what ``threshold`` needs for ``score`` (not checked)."""
    info = getattr(model, "info", None) or {}
    if score == "mse":
        t = info.get("threshold")
        return isinstance(t, dict) and t.get("value") is not None
    from aekit.evaluate.trainingscores import KEY

    ts = info.get(KEY)
    entry = (ts.get("scorers") or {}).get(score) if isinstance(ts, dict) else None
    return score == "mahalanobis" and isinstance(entry, dict) and entry.get("values") is not None


def threshold(model, score: str) -> dict:
    """{"value", "method", ...} the decision threshold of a single model's ``score`` ('mse' or
    'mahalanobis', resolved): see the module. InputError (one line) when the model has none."""
    from aekit.evaluate.thresholds import fit_threshold, stored_threshold

    name = str(model.path) if getattr(model, "path", None) else "the model"
    if score == "mse":
        value = stored_threshold(model)
        stored = (model.info or {}).get("threshold") or {}
        return {"value": value, "method": stored.get("method"), "score": "mse"}
    if score != "mahalanobis":
        raise InputError(f"no model threshold for the {score} score; give a number")
    from aekit.evaluate.trainingscores import member_stats

    if not has_threshold(model, "mahalanobis"):
        raise InputError(f"{name} stores no per-clip Mahalanobis training scores: no "
                         "Mahalanobis threshold; use the mse score (its MSE threshold) or give "
                         "the threshold as a number")
    values = member_stats(model, "mahalanobis")["values"]  # every field checked
    fitted = fit_threshold(values)
    return {**fitted, "score": "mahalanobis"}


def model_threshold(model, score: str = AUTO) -> float:
    """The decision threshold of ``model`` (a LoadedModel, an ``aekit.evaluate.ensemble.Ensemble`` or a
    model file path) for ``score`` ('auto' resolved as ``score_files`` resolves it): what
    ``ae-score --threshold model`` compares the scores with. InputError when there is none."""
    from aekit.evaluate.checks import as_model

    model = as_model(model)
    score = resolve(model, score)[0]
    if getattr(model, "is_ensemble", False):
        return float(model.threshold(score)["value"])
    return float(threshold(model, score)["value"])
