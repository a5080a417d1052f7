"""Evaluating a trained model: which rows, which labels, which metrics, which plots.

``evaluate_file`` is ``ae-eval`` as a function and ``encode_file`` is ``ae-encode``: each
opens the inputs, checks they belong together, applies the fold policy (``fold_for``),
checks the labels before any forward pass, runs the forward passes of ``aekit.evaluate.inference``
and assembles the report from the registered metric sections (``aekit.evaluate.sections``).
``load_reports``/``summarize_files`` (``aekit.evaluate.reports``) are ``ae-eval --summarize``.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import numpy as np
import torch

from aekit import __version__
from aekit.errors import InputError
from aekit.system.fileio import null_progress
from aekit.system.textinput import display_name
from aekit.evaluate.evalcontext import EvalContext, Labels, label_column
from aekit.evaluate.evalplots import make_plots
from aekit.evaluate.inference import (DEFAULT_BATCH, check_compatible, score_rows,
                                      write_latents)
from aekit.evaluate.reports import provenance
from aekit.evaluate.sections import REPORT_FORMAT, REPORT_FORMAT_VERSION
from aekit.models.modelfile import LoadedModel
from aekit.data.store import FeatureFile

LOG = logging.getLogger("aekit")

SCORES = ("auto", "mse", "mae", "mahalanobis")  # per-clip MSE (dB^2), MAE (dB), or the Mahalanobis
# distance of the error vector to the model's stored statistics (aekit.models.mahalanobis)


def row_split_names(ids: Sequence[str], rows: np.ndarray, splits, fold: int | None) -> np.ndarray:
    """The role of each selected row: 'all' without splits; else 'test', or for train rows
    'val' (fold == K) / 'train' (fold != K) when a fold is given, 'train' otherwise."""
    if splits is None:
        return np.full(rows.size, "all", dtype=object)
    s = splits.reindex([ids[i] for i in rows])
    sp = s["split"].to_numpy(dtype=object)
    out = np.where(sp == "test", "test", "train").astype(object)
    if fold is not None:
        is_val = (s["fold"] == fold).fillna(False).to_numpy(dtype=bool) & (sp == "train")
        out[is_val] = "val"
    return out


@dataclass
class EvalOptions:
    """What ae-eval computes beyond reconstruction scores (all optional)."""

    labels_path: str | None = None
    anomaly_column: str | None = None
    group_by: str | None = None
    probe_column: str | None = None
    score: str = "auto"  # the anomaly score: 'mse', 'mae', 'mahalanobis'; 'auto': aekit.evaluate.autoscore
    protocol: str | None = None  # a DCASE 2021-2025 protocol (aekit.evaluate.dcase.PROTOCOLS)
    type_column: str = "machine_type"  # with protocol: machine type, section, domain columns
    section_column: str = "section"
    domain_column: str = "domain"
    submission: bool = False  # the challenge's submission files (in table.attrs["submission"])
    max_fpr: float = 0.1
    train_rows: np.ndarray | None = None  # rows the probe is fitted on
    plots_dir: str | None = None
    history: list | None = None  # training records for the loss plot
    plot_clips: int = 2  # best and worst clips shown
    seed: int = 42
    ensemble: object = None  # an aekit.evaluate.ensemble.Ensemble whose first member is the model


def evaluate(model: LoadedModel, ff: FeatureFile, rows: np.ndarray, split_names: np.ndarray,
             opts: EvalOptions, batch_size: int = DEFAULT_BATCH, device: torch.device | str = "cpu",
             advance: Callable[[int], None] | None = None):
    """Score the rows; return (report sections dict, per-clip pandas DataFrame).

    Sections: each registered metric section (:mod:`aekit.evaluate.sections`) the options ask
    for ("reconstruction" always, "anomaly" with an anomaly column, ...), in registry order;
    "ensemble", "submission" and "plots" when asked for. Bad labels raise InputError before
    any forward pass.
    """
    import pandas as pd

    from aekit.evaluate.sections import registered

    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise InputError("no rows selected: nothing to evaluate")
    if opts.score not in SCORES:
        raise InputError(f"unknown anomaly score {opts.score!r}: use auto, mse, mae or "
                         "mahalanobis", param="score")
    if opts.score == "auto":  # the model's (the ensemble's) own choice, logged with its reason
        from aekit.evaluate.autoscore import resolve_logged

        opts = replace(opts, score=resolve_logged(opts.ensemble or model, "auto"))
    if opts.score == "mahalanobis":
        from aekit.models.mahalanobis import model_stats

        model_stats(model)  # refused before any forward pass
    ens = opts.ensemble
    if ens is not None:
        if ens.members[0] is not model:
            raise ValueError("the ensemble's first member must be the evaluated model")
        ens.check(opts.score)  # every member stores its training statistics: before any pass
    _check_options(model, opts)
    wanted = [s for s in registered() if s.wanted(opts)]
    train_rows = None
    if opts.train_rows is not None and any(s.codes for s in wanted):
        train_rows = np.asarray(opts.train_rows, dtype=np.int64)
    ids = ff.ids
    sel_ids = [ids[i] for i in rows]
    ctx = EvalContext(model=model, ff=ff, rows=rows, ids=sel_ids, split_names=split_names,
                      opts=opts, labels=Labels(), train_rows=train_rows,
                      batch_size=batch_size, device=device)
    # Labels first: a bad label file must fail before minutes of forward passes.
    if opts.labels_path:
        from aekit.data.selection import load_labels

        ctx.source = display_name(opts.labels_path)
        want = rows if train_rows is None else np.union1d(rows, train_rows)
        ctx.labels.table = load_labels(opts.labels_path, [ids[i] for i in want])
    for section in wanted:
        if section.check is not None:
            section.check(ctx)
    if opts.submission:  # names and duplicates checked before the pass too
        from aekit.evaluate.dcase import submission_files

        ctx.labels.submission = {
            k: label_column(ctx.labels.table.loc[sel_ids], c, what, ctx.source).astype(str)
            .to_numpy() for k, c, what in (("types", opts.type_column, "machine type"),
                                           ("sections", opts.section_column, "section"))}
        submission_files(ctx.labels.submission["types"], ctx.labels.submission["sections"],
                         [Path(ff.paths[i]).name for i in rows], np.zeros(rows.size),
                         np.zeros(rows.size, dtype=np.int64))

    sc = ctx.scores = score_rows(model, ff, rows, batch_size, device,
                                 keep_latents=any(s.codes for s in wanted), advance=advance,
                                 mahalanobis=opts.score == "mahalanobis")
    table = pd.DataFrame({"id": sel_ids, "split": split_names, "mse": sc.mse, "mae": sc.mae})
    if ctx.labels.table is not None:
        extra = ctx.labels.table.loc[sel_ids].reset_index(drop=True)
        table = pd.concat([table, extra[[c for c in extra.columns if c not in table.columns]]],
                          axis=1)
    if sc.mahalanobis is not None:
        table["mahalanobis"] = sc.mahalanobis
    ctx.score = {"mse": sc.mse, "mae": sc.mae, "mahalanobis": sc.mahalanobis}[opts.score]
    ctx.score_name = opts.score
    ensemble = None
    if ens is not None:
        ensemble = _ensemble_scores(ctx)
        table["ensemble_z"] = ctx.score
    report = ctx.report
    for section in wanted:
        report[section.name] = section.compute(ctx)
        if section.name == "reconstruction" and ensemble is not None:
            report["ensemble"] = ensemble
    if ensemble is not None and "ensemble" not in report:
        report["ensemble"] = ensemble
    if ctx.labels.submission is not None:
        table.attrs["submission"] = files = _submission(ctx)
        report["submission"] = {"files": sorted(files), "score": ctx.score_name,
                                "decisions": "score > the model's threshold"}
    if opts.plots_dir:
        report["plots"] = make_plots(model, ff, rows, sc, ctx.score, opts, ctx.labels,
                                     split_names, device)
    return report, table


def _ensemble_scores(ctx: EvalContext) -> dict:
    """Each member's scores, standardized and averaged (aekit.evaluate.ensemble) into
    ``ctx.score``; returns the report's ``ensemble`` section."""
    opts, ens = ctx.opts, ctx.opts.ensemble
    member_scores = [ctx.score]
    for m in ens.members[1:]:
        ms = score_rows(m, ctx.ff, ctx.rows, ctx.batch_size, ctx.device,
                        mahalanobis=opts.score == "mahalanobis")
        member_scores.append({"mse": ms.mse, "mae": ms.mae,
                              "mahalanobis": ms.mahalanobis}[opts.score])
    ctx.score = ens.combine(member_scores, opts.score)
    ctx.score_name = f"ensemble_z({opts.score})"
    section = ens.describe(opts.score)
    try:
        ctx.ensemble_threshold = ens.threshold(opts.score)
    except InputError as exc:
        LOG.warning("no ensemble threshold, no decisions: %s", exc)
    section["threshold"] = ctx.ensemble_threshold
    return section


def _check_options(model, opts: EvalOptions) -> None:
    """Options that need other options, and a threshold the submission needs: InputError."""
    for name in ("anomaly_column", "group_by", "protocol", "probe_column"):
        if getattr(opts, name) and not opts.labels_path:
            raise InputError("needs a label file", param=name)
    if opts.group_by and not opts.anomaly_column:
        raise InputError("needs an anomaly column", param="group_by")
    if opts.protocol and not opts.anomaly_column:
        raise InputError("needs an anomaly column", param="protocol")
    if opts.probe_column and opts.train_rows is None:
        raise InputError("needs a split file (and a fold) to pick the training rows the probe "
                         "is fitted on", param="probe_column")
    if opts.submission:
        if not opts.labels_path:
            raise InputError("needs a label file with the machine type and section columns",
                             param="submission")
        if opts.ensemble is not None:
            opts.ensemble.threshold(opts.score)  # InputError now when the ensemble has none
        elif opts.score == "mae":
            raise InputError("needs the score mse or mahalanobis: the decisions use the "
                             "model's threshold, which exists for those scores only",
                             param="submission")
        else:
            from aekit.evaluate.autoscore import threshold as score_threshold

            score_threshold(model, opts.score)  # InputError now, before any pass, when none


def _submission(ctx: EvalContext) -> dict:
    """The challenge's submission files {name: text}, decisions at the model's threshold."""
    from aekit.evaluate.autoscore import threshold as score_threshold
    from aekit.evaluate.dcase import submission_files

    opts, ens = ctx.opts, ctx.opts.ensemble
    cut = (ens.threshold(opts.score)["value"] if ens is not None
           else score_threshold(ctx.model, opts.score)["value"])
    decided = (ctx.score > cut).astype(np.int64)
    names = [Path(ctx.ff.paths[i]).name for i in ctx.rows]
    return submission_files(ctx.labels.submission["types"], ctx.labels.submission["sections"],
                            names, ctx.score, decided)


#: (total, description, unit) -> context manager yielding advance(n), e.g. cmds.common.progress
ProgressFactory = Callable[[int, str, str], ContextManager[Callable[[int], None]]]


def fold_for(lm, splits, fold: int | None) -> int | None:
    """The fold to select rows with: the one the model was trained with, unless told otherwise.

    A model trained on fold K (validation = fold K) evaluated with another --fold J would
    score rows it trained on as if they were held out: refused.
    """
    trained = lm.info.get("fold")
    if splits is None or trained is None:
        return fold
    if fold is None:
        LOG.info("fold %d: the fold the model was trained with", trained)
        return int(trained)
    if fold != trained:
        raise InputError(f"the model was trained with fold {trained} (its validation rows are "
                         f"fold {trained}); fold {fold} would evaluate rows it trained on",
                         param="fold")
    return fold


@contextmanager
def open_inputs(model_path: str | os.PathLike, features_path: str | os.PathLike,
                splits_path: str | os.PathLike | None, device: torch.device | str
                ) -> Iterator[tuple[LoadedModel, FeatureFile, object]]:
    """Open features, load the model on ``device``, check they match, read the splits."""
    from aekit.models.modelfile import load_model
    from aekit.data.selection import load_splits

    if "-" in (str(model_path), str(features_path)):
        raise InputError("MODEL and FEATURES must be file paths, not '-'")
    with FeatureFile(features_path) as ff:
        lm = load_model(model_path, device=device)
        check_compatible(lm, ff, str(model_path))
        splits = load_splits(splits_path, ff.ids) if splits_path else None
        yield lm, ff, splits


def encode_file(model_path: str | os.PathLike, features_path: str | os.PathLike,
                output: str | os.PathLike, splits_path: str | os.PathLike | None = None,
                split: str | None = None, fold: int | None = None,
                batch_size: int = DEFAULT_BATCH, device: torch.device | str = "cpu",
                command: str = "", progress: ProgressFactory = null_progress,
                labels_path: str | os.PathLike | None = None,
                where: str | None = None) -> tuple[int, int]:
    """ae-encode as a function: write the latents of the selected rows; return (encoded, total).

    ``where`` (with ``labels_path``) keeps only the selected rows whose labels match."""
    from aekit.data.selection import restrict_rows, select_rows

    with open_inputs(model_path, features_path, splits_path, device) as (lm, ff, splits):
        fold = fold_for(lm, splits, fold)
        rows = restrict_rows(ff.ids, select_rows(ff.ids, splits, split, fold), labels_path, where)
        if rows.size == 0:
            raise InputError("no rows selected: nothing to encode")
        prov = provenance(model_path, features_path, splits_path, split, fold)
        LOG.info("encoding %d of %d clips on %s (latent %d)", rows.size, len(ff), device,
                 lm.latent)
        with progress(rows.size, "encode", "clips") as advance:
            n = write_latents(output, lm, ff, rows, batch_size, device, command=command,
                              provenance=prov, advance=advance)
        return n, len(ff)


def evaluate_file(model_path: str | os.PathLike, features_path: str | os.PathLike,
                  opts: EvalOptions, splits_path: str | os.PathLike | None = None,
                  split: str | None = None, fold: int | None = None,
                  batch_size: int = DEFAULT_BATCH, device: torch.device | str = "cpu",
                  command: str = "", log_path: str | os.PathLike | None = None,
                  progress: ProgressFactory = null_progress, where: str | None = None,
                  ensemble: Sequence[str | os.PathLike] = ()):
    """ae-eval as a function: return (the JSON report as a dict, the per-clip DataFrame).

    ``where`` keeps only the selected rows whose labels (``opts.labels_path``) match.
    ``ensemble``: more model files voting with the model (``aekit.evaluate.ensemble``): the anomaly
    score is then the members' mean z-score (column ``ensemble_z``, report ``ensemble``);
    each member must match the features and have been trained with the same fold.

    The probe's training rows are the train rows of ``fold`` (all train rows without a fold);
    the loss plot uses the model's history unless ``log_path`` (an ae-train --log CSV) is given.
    """
    from aekit.data.selection import restrict_rows, select_rows

    with open_inputs(model_path, features_path, splits_path, device) as (lm, ff, splits):
        fold = fold_for(lm, splits, fold)
        if ensemble:
            from aekit.evaluate.ensemble import Ensemble
            from aekit.models.modelfile import load_model

            members = [lm]
            for path in ensemble:
                if str(path) == "-":
                    raise InputError("takes model file paths, not '-'", param="ensemble")
                m = load_model(path, device=device)
                check_compatible(m, ff, str(path))
                try:
                    same = fold_for(m, splits, fold) == fold
                except InputError as exc:
                    raise InputError(f"{path}: {exc.message}", param=exc.param) from None
                if not same:
                    raise InputError(f"{path}: trained with fold {m.info.get('fold')}, "
                                     f"{lm.path} without: evaluate them on the same fold")
                members.append(m)
            opts = replace(opts, ensemble=Ensemble(members))
        rows = restrict_rows(ff.ids, select_rows(ff.ids, splits, split, fold), opts.labels_path,
                             where)
        if log_path:
            from aekit.evaluate.plots import read_training_log

            history = read_training_log(log_path)
        else:
            history = lm.history
        train_rows = select_rows(ff.ids, splits, "train", fold) if splits is not None else None
        opts = replace(opts, train_rows=train_rows, history=history)
        prov = provenance(model_path, features_path, splits_path, split, fold)
        LOG.info("evaluating %d of %d clips on %s", rows.size, len(ff), device)
        with progress(rows.size, "eval", "clips") as advance:
            names = row_split_names(ff.ids, rows, splits, fold)
            sections, per_clip = evaluate(lm, ff, rows, names, opts, batch_size, device,
                                          advance=advance)
        total = len(ff)
    report = {
        "format": REPORT_FORMAT,
        "format_version": REPORT_FORMAT_VERSION,
        "aekit_version": __version__,
        "command": command,
        "model": {"path": prov["model"], "sha256": prov["model_sha256"], "arch": lm.config.arch,
                  "latent": lm.latent, "input_shape": list(lm.input_shape)},
        "features": {"path": prov["features"], "sha256": prov["features_sha256"], "count": total},
        "selection": {"splits": prov["splits"], "splits_sha256": prov["splits_sha256"],
                      "split": split or "all", "fold": fold,
                      **({"where": where} if where is not None else {})},
        **sections,
    }
    return report, per_clip
