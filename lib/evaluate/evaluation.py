"""Evaluating a trained model: which rows, which labels, which metrics, which plots.

``evaluate_file`` is ``ae-eval`` as a function and ``encode_file`` is ``ae-encode``: each
opens the inputs, checks they belong together, applies the fold policy (``fold_for``),
checks the labels before any forward pass, runs the forward passes of ``aekit.evaluate.inference``
and assembles the report. ``load_reports``/``summarize_files`` are ``ae-eval --summarize``.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import numpy as np
import torch

from aekit import __version__
from aekit.errors import InputError, preview
from aekit.system.fileio import display_name, file_sha256, null_progress
from aekit.evaluate.inference import (DEFAULT_BATCH, Scores, check_compatible, encode_rows, reconstruct_rows,
                        score_rows, write_latents)
from aekit.models.modelfile import LoadedModel
from aekit.data.store import FeatureFile

LOG = logging.getLogger("aekit")

REPORT_FORMAT = "aekit-eval"
REPORT_FORMAT_VERSION = 1
SCORES = ("auto", "mse", "mae", "mahalanobis")  # per-clip MSE (dB^2), MAE (dB), or the Mahalanobis
# distance of the error vector to the model's stored statistics (aekit.evaluate.mahalanobis)


def provenance(model_path: str | os.PathLike, features_path: str | os.PathLike,
               splits_path: str | os.PathLike | None = None, split: str | None = None,
               fold: int | None = None) -> dict:
    """Where a result came from: paths and content hashes of its inputs, and the selection."""
    out = {
        "model": str(model_path), "model_sha256": file_sha256(model_path),
        "features": str(features_path), "features_sha256": file_sha256(features_path),
        "splits": None, "splits_sha256": None,
        "split": split, "fold": fold,
    }
    if splits_path is not None:
        out["splits"] = str(splits_path)
        if str(splits_path) != "-" and Path(splits_path).is_file():
            out["splits_sha256"] = file_sha256(splits_path)
    return out



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


@dataclass
class _Labels:
    """The label columns an evaluation uses, checked, aligned to the evaluated rows."""

    table: object = None  # pandas DataFrame indexed by id (evaluated + probe training rows)
    anomaly: np.ndarray | None = None  # int 0/1 [N]
    groups: np.ndarray | None = None  # str [N]
    probe_eval: np.ndarray | None = None  # str [N]
    probe_train: np.ndarray | None = None  # str [len(train_rows)]
    dcase: dict | None = None  # with a protocol: {"types", "sections", "domains": str [N]}
    submission: dict | None = None  # with --submission: {"types", "sections": str [N]}


def _label_column(labels, column: str, what: str, source: str):
    if column not in labels.columns:
        raise InputError(f"{what} column '{column}' not found in {source}; columns are: "
                         f"{', '.join(map(str, labels.columns))}")
    col = labels[column]
    empty = col.isna() | col.astype(object).map(lambda v: isinstance(v, str) and not v.strip())
    if empty.any():  # labels are text: an empty cell is '' (NA, null, ... are values)
        ids = col.index[empty.to_numpy(dtype=bool)]
        raise InputError(f"{source}: {what} column '{column}' is empty for {len(ids)} id(s): "
                         f"{preview(ids)}")
    return col


def _one_class(y: np.ndarray) -> str:
    return "anomalous (1)" if y[0] == 1 else "normal (0)"


def _prepare_labels(opts: EvalOptions, ids: Sequence[str], rows: np.ndarray,
                    train_rows: np.ndarray | None) -> _Labels:
    """Load and check every label the evaluation needs (InputError on the first problem)."""
    from aekit.evaluate import metrics
    from aekit.data.selection import load_labels

    out = _Labels()
    if not opts.labels_path:
        return out
    src = display_name(opts.labels_path)
    sel_ids = [ids[i] for i in rows]
    want = rows if train_rows is None else np.union1d(rows, train_rows)
    out.table = labels = load_labels(opts.labels_path, [ids[i] for i in want])
    if opts.anomaly_column:
        col = _label_column(labels.loc[sel_ids], opts.anomaly_column, "anomaly", src)
        y = out.anomaly = metrics.anomaly_labels(col, opts.anomaly_column)
        if np.unique(y).size < 2:
            raise InputError(f"AUC needs both normal (0) and anomalous (1) clips; all {y.size} "
                             f"evaluated clips are {_one_class(y)} "
                             f"in column '{opts.anomaly_column}'")
    if opts.group_by:
        col = _label_column(labels.loc[sel_ids], opts.group_by, "group-by", src)
        g = out.groups = col.astype(str).to_numpy()
        for name in sorted(set(g.tolist())):
            yg = out.anomaly[g == name]
            if np.unique(yg).size < 2:
                raise InputError(f"group '{name}' of '{opts.group_by}' has only {_one_class(yg)} "
                                 "clips; AUC needs both normal (0) and anomalous (1)")
    if opts.protocol:
        from aekit.evaluate.dcase import DOMAINS, dcase_results

        got = {k: _label_column(labels.loc[sel_ids], c, what, src).astype(str).to_numpy()
               for k, c, what in (("types", opts.type_column, "machine type"),
                                  ("sections", opts.section_column, "section"),
                                  ("domains", opts.domain_column, "domain"))}
        bad = sorted(set(got["domains"].tolist()) - set(DOMAINS))
        if bad:
            raise InputError(f"{src}: domain column '{opts.domain_column}' must hold source or "
                             f"target for {opts.protocol}; found: {', '.join(bad[:5])}")
        out.dcase = got
        # every number computable: checked now, before any forward pass
        dcase_results(got["types"], got["sections"], got["domains"], out.anomaly,
                      np.zeros(out.anomaly.size), protocol=opts.protocol, max_fpr=opts.max_fpr)
    if opts.submission:  # no anomaly or domain column needed: the evaluation set has none
        out.submission = {k: _label_column(labels.loc[sel_ids], c, what, src).astype(str)
                          .to_numpy() for k, c, what in
                          (("types", opts.type_column, "machine type"),
                           ("sections", opts.section_column, "section"))}
    if opts.probe_column:
        col = _label_column(labels, opts.probe_column, "probe", src).astype(str)
        out.probe_eval = col.loc[sel_ids].to_numpy()
        out.probe_train = col.loc[[ids[i] for i in train_rows]].to_numpy()
        classes = sorted(set(out.probe_train.tolist()))
        if len(classes) < 2:
            raise InputError(f"linear probe needs at least two classes in the training rows; "
                             f"column '{opts.probe_column}' holds only '{classes[0]}'")
    return out


def _train_codes(model: LoadedModel, ff: FeatureFile, rows: np.ndarray, z_rows: np.ndarray,
                 train_rows: np.ndarray, batch_size: int, device) -> np.ndarray:
    """Codes of the probe's training rows: reused where already computed, else encoded."""
    pos = {int(r): i for i, r in enumerate(rows)}
    where = {int(r): j for j, r in enumerate(train_rows)}
    z = np.empty((train_rows.size, model.latent), dtype=np.float32)
    todo = []
    for j, r in enumerate(train_rows):
        if int(r) in pos:
            z[j] = z_rows[pos[int(r)]]
        else:
            todo.append(int(r))
    if not todo:
        LOG.warning("linear probe: every training row is also evaluated; its score is a "
                    "training score, not a held-out one")
    for idx, zb in encode_rows(model, ff, np.asarray(todo, dtype=np.int64), batch_size, device):
        z[[where[int(r)] for r in idx]] = zb
    return z


def evaluate(model: LoadedModel, ff: FeatureFile, rows: np.ndarray, split_names: np.ndarray,
             opts: EvalOptions, batch_size: int = DEFAULT_BATCH, device: torch.device | str = "cpu",
             advance: Callable[[int], None] | None = None):
    """Score the rows; return (report sections dict, per-clip pandas DataFrame).

    Sections: "reconstruction" always; "anomaly" with an anomaly column; "probe" with a probe
    column; "plots" with a plots directory. Bad labels raise InputError before any forward pass.
    """
    import pandas as pd

    from aekit.evaluate import metrics

    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise InputError("no rows selected: nothing to evaluate")
    if opts.score not in SCORES:
        raise InputError(f"unknown anomaly score {opts.score!r}: use auto, mse, mae or "
                         "mahalanobis")
    if opts.score == "auto":  # the model's (the ensemble's) own choice, logged with its reason
        from dataclasses import replace

        from aekit.evaluate.autoscore import resolve_logged

        opts = replace(opts, score=resolve_logged(opts.ensemble or model, "auto"))
    if opts.score == "mahalanobis":
        from aekit.evaluate.mahalanobis import model_stats

        model_stats(model)  # refused before any forward pass
    ens = opts.ensemble
    if ens is not None:
        if ens.members[0] is not model:
            raise ValueError("the ensemble's first member must be the evaluated model")
        ens.check(opts.score)  # every member stores its training statistics: before any pass
    if (opts.anomaly_column or opts.group_by or opts.probe_column or opts.protocol) \
            and not opts.labels_path:
        raise InputError("--anomaly-column, --group-by, --protocol and --probe-column need "
                         "--labels")
    if opts.group_by and not opts.anomaly_column:
        raise InputError("--group-by needs --anomaly-column")
    if opts.protocol and not opts.anomaly_column:
        raise InputError("--protocol needs --anomaly-column")
    if opts.submission:
        if not opts.labels_path:
            raise InputError("--submission needs --labels (machine type and section columns)")
        if ens is not None:
            ens.threshold(opts.score)  # InputError now when the ensemble has none
        elif opts.score == "mae":
            raise InputError("--submission needs --score mse or mahalanobis: the decisions use "
                             "the model's threshold, which exists for those scores only")
        else:
            from aekit.evaluate.autoscore import threshold as score_threshold

            score_threshold(model, opts.score)  # InputError now, before any pass, when none
    train_rows = None
    if opts.probe_column:
        if opts.train_rows is None:
            raise InputError("--probe-column needs --splits (and --fold) to pick the training "
                             "rows the probe is fitted on")
        train_rows = np.asarray(opts.train_rows, dtype=np.int64)
        if train_rows.size == 0:
            raise InputError("linear probe: the split file selects no training rows")
    ids = ff.ids
    sel_ids = [ids[i] for i in rows]
    # Labels first: a bad label file must fail before minutes of forward passes.
    lab = _prepare_labels(opts, ids, rows, train_rows)
    if lab.submission is not None:  # names and duplicates checked before the pass too
        from aekit.evaluate.dcase import submission_files

        submission_files(lab.submission["types"], lab.submission["sections"],
                         [Path(ff.paths[i]).name for i in rows], np.zeros(rows.size),
                         np.zeros(rows.size, dtype=np.int64))

    sc = score_rows(model, ff, rows, batch_size, device, keep_latents=train_rows is not None,
                    advance=advance, mahalanobis=opts.score == "mahalanobis")
    report: dict = {"reconstruction": metrics.score_summary(sc.mse, sc.mae, split_names)}
    table = pd.DataFrame({"id": sel_ids, "split": split_names, "mse": sc.mse, "mae": sc.mae})
    if lab.table is not None:
        extra = lab.table.loc[sel_ids].reset_index(drop=True)
        table = pd.concat([table, extra[[c for c in extra.columns if c not in table.columns]]],
                          axis=1)

    if sc.mahalanobis is not None:
        table["mahalanobis"] = sc.mahalanobis
    score = {"mse": sc.mse, "mae": sc.mae, "mahalanobis": sc.mahalanobis}[opts.score]
    score_name, ens_threshold = opts.score, None
    if ens is not None:  # each member's scores, standardized and averaged (aekit.evaluate.ensemble)
        member_scores = [score]
        for m in ens.members[1:]:
            ms = score_rows(m, ff, rows, batch_size, device,
                            mahalanobis=opts.score == "mahalanobis")
            member_scores.append({"mse": ms.mse, "mae": ms.mae,
                                  "mahalanobis": ms.mahalanobis}[opts.score])
        score = ens.combine(member_scores, opts.score)
        score_name = f"ensemble_z({opts.score})"
        table["ensemble_z"] = score
        report["ensemble"] = ens.describe(opts.score)
        try:
            ens_threshold = ens.threshold(opts.score)
        except InputError as exc:
            LOG.warning("no ensemble threshold, no decisions: %s", exc)
        report["ensemble"]["threshold"] = ens_threshold
    if lab.anomaly is not None:
        report["anomaly"] = {
            "column": opts.anomaly_column, "score": score_name,
            "pauc_definition": "official, as the dcase evaluators: roc_auc_score(max_fpr=max_fpr)"
                               " (McClish-standardized); pauc_raw: area for FPR in [0, max_fpr]"
                               " / max_fpr",
            "group_by": opts.group_by,
            **metrics.anomaly_report(lab.anomaly, score, lab.groups, opts.max_fpr),
        }
        from aekit.evaluate.autoscore import has_threshold, threshold as score_threshold

        decisions = value = None
        if ens is not None:
            if ens_threshold is not None:
                value, method = ens_threshold["value"], "ensemble empirical quantile"
        elif has_threshold(model, opts.score):
            # Decisions at the model's threshold of the score (ae-score --threshold model):
            # mse the one ae-train stored, mahalanobis the 90th percentile rule on the stored
            # training distances; the same checks as ae-score's, so a damaged value is an error.
            fitted = score_threshold(model, opts.score)
            value, method = fitted["value"], fitted.get("method")
        if value is not None:
            decisions = (score > value).astype(np.int64)
            report["anomaly"]["threshold"] = {
                "method": method,
                **metrics.decision_report(lab.anomaly, score, value)}
            if lab.dcase is not None:  # per domain, as the DCASE 2021+ baselines report them
                dm = lab.dcase["domains"]
                report["anomaly"]["threshold"]["per_domain"] = {
                    name: metrics.decision_report(lab.anomaly[dm == name], score[dm == name],
                                                  value)
                    for name in sorted(set(dm.tolist()))}
        if lab.dcase is not None:
            from aekit.evaluate.dcase import dcase_results

            report["dcase"] = {
                "score": score_name, "type_column": opts.type_column,
                "section_column": opts.section_column, "domain_column": opts.domain_column,
                "decisions": None if decisions is None else "score > the model's threshold",
                **dcase_results(lab.dcase["types"], lab.dcase["sections"],
                                lab.dcase["domains"], lab.anomaly, score, decisions,
                                protocol=opts.protocol, max_fpr=opts.max_fpr)}
    if lab.submission is not None:
        from aekit.evaluate.autoscore import threshold as score_threshold
        from aekit.evaluate.dcase import submission_files

        cut = (ens.threshold(opts.score)["value"] if ens is not None
               else score_threshold(model, opts.score)["value"])
        decided = (score > cut).astype(np.int64)
        names = [Path(ff.paths[i]).name for i in rows]
        files = submission_files(lab.submission["types"], lab.submission["sections"], names,
                                 score, decided)
        table.attrs["submission"] = files
        report["submission"] = {"files": sorted(files), "score": score_name,
                                "decisions": "score > the model's threshold"}
    if train_rows is not None:
        z_train = _train_codes(model, ff, rows, sc.latents, train_rows, batch_size, device)
        report["probe"] = {
            "column": opts.probe_column, "model": "standardized logistic regression",
            **metrics.linear_probe(z_train, lab.probe_train, sc.latents, lab.probe_eval,
                                   seed=opts.seed),
        }
    if opts.plots_dir:
        report["plots"] = make_plots(model, ff, rows, sc, score, opts, lab, split_names, device)
    return report, table


def make_plots(model: LoadedModel, ff: FeatureFile, rows: np.ndarray, sc: Scores,
               score: np.ndarray, opts: EvalOptions, lab: _Labels, split_names: np.ndarray,
               device) -> dict:
    """Write the evaluation's PNG files into opts.plots_dir; return {name: path}."""
    from aekit.evaluate import plots

    out_dir = Path(opts.plots_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made: dict = {}
    if opts.history:
        made["loss"] = str(plots.plot_loss_curves(opts.history, out_dir / "loss.png"))
    else:
        LOG.warning("no training history in the model (and no --log): loss curves not plotted")
    k = max(1, min(opts.plot_clips, rows.size))
    order = np.argsort(sc.mse, kind="stable")
    ids = ff.ids
    for name, pick, title in (("best", order[:k], "Best reconstructed clips (lowest MSE first)"),
                              ("worst", order[::-1][:k],
                               "Worst reconstructed clips (highest MSE first)")):
        x, r = reconstruct_rows(model, ff, rows[pick], device)
        made[f"spectrograms_{name}"] = str(plots.plot_spectrograms(
            x, r, [ids[i] for i in rows[pick]], sc.mse[pick],
            out_dir / f"spectrograms_{name}.png", title=title))
    if lab.anomaly is not None:
        hist_labels, hist_name = lab.anomaly, opts.anomaly_column
    elif lab.probe_eval is not None:
        hist_labels, hist_name = lab.probe_eval, opts.probe_column
    elif len(set(split_names.tolist())) > 1:
        hist_labels, hist_name = split_names, "split"
    else:
        hist_labels, hist_name = None, "label"
    xlabel = {"mse": "reconstruction MSE (dB²)", "mae": "reconstruction MAE (dB)",
              "mahalanobis": "Mahalanobis distance of the error vector"}.get(opts.score,
                                                                            opts.score)
    if opts.ensemble is not None:
        xlabel = f"ensemble z-score ({opts.score})"
    made["scores"] = str(plots.plot_score_histograms(score, hist_labels, out_dir / "scores.png",
                                                     xlabel=xlabel, label_name=hist_name))
    if lab.anomaly is not None:
        made["roc"] = str(plots.plot_roc(lab.anomaly, score, out_dir / "roc.png",
                                         groups=lab.groups, max_fpr=opts.max_fpr))
    return made



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
        LOG.info("--fold %d: the fold the model was trained with", trained)
        return int(trained)
    if fold != trained:
        raise InputError(f"the model was trained with --fold {trained} (its validation rows are "
                         f"fold {trained}); --fold {fold} would evaluate rows it trained on")
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
    from dataclasses import replace

    from aekit.data.selection import restrict_rows, select_rows

    with open_inputs(model_path, features_path, splits_path, device) as (lm, ff, splits):
        fold = fold_for(lm, splits, fold)
        if ensemble:
            from aekit.evaluate.ensemble import Ensemble
            from aekit.models.modelfile import load_model

            members = [lm]
            for path in ensemble:
                if str(path) == "-":
                    raise InputError("--ensemble takes model file paths, not '-'")
                m = load_model(path, device=device)
                check_compatible(m, ff, str(path))
                try:
                    same = fold_for(m, splits, fold) == fold
                except InputError as exc:
                    raise InputError(f"{path}: {exc}") from None
                if not same:
                    raise InputError(f"{path}: trained with --fold {m.info.get('fold')}, "
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


def load_reports(paths: Sequence[str]) -> list[dict]:
    """Read ae-eval JSON reports ('-' = stdin), refusing anything else (InputError)."""
    from aekit.system.fileio import read_text_input

    loaded = []
    for path in paths:
        text = read_text_input(path)
        try:
            rep = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        except RecursionError:
            raise InputError(f"{path}: JSON nested too deeply; not an ae-eval report") from None
        if not isinstance(rep, dict) or rep.get("format") != REPORT_FORMAT:
            raise InputError(f"{path}: not an ae-eval report (expected \"format\": \"{REPORT_FORMAT}\")")
        loaded.append(rep)
    return loaded


def summarize_files(paths: Sequence[str], command: str = "") -> dict:
    """ae-eval --summarize as a function: mean, std, min, max of every metric over the reports."""
    from aekit.evaluate import metrics

    summary = metrics.summarize_reports(load_reports(paths), list(paths))
    summary["command"] = command
    return summary
