"""The metric sections aekit ships: reconstruction, anomaly, dcase, probe (the registry's
entries, :mod:`aekit.evaluate.sections`).

Each entry's ``check`` reads the label columns it needs from ``ctx.labels.table`` before any
forward pass; its ``compute`` builds the section from the scores held by ``ctx``
(:class:`~aekit.evaluate.evalcontext.EvalContext`). Sections are computed in registry order:
``dcase`` uses the decisions ``anomaly`` made.
"""

from __future__ import annotations

import numpy as np

from aekit.errors import InputError
from aekit.evaluate import metrics
from aekit.evaluate.evalcontext import label_column, one_class
from aekit.evaluate.sections import MetricSection

# --------------------------------------------------------------------------- reconstruction


def _reconstruction(ctx) -> dict:
    return metrics.score_summary(ctx.scores.mse, ctx.scores.mae, ctx.split_names)


RECONSTRUCTION = MetricSection(
    name="reconstruction", compute=_reconstruction,
    schema="{count, mse: S, mae: S, per_split: {NAME: {count, mse: S, mae: S}}}\n"
           "  S = {count, mean, std, min, p5, p25, median, p75, p95, max}; mse in dB^2, mae in "
           "dB;\n  per_split only when the rows span several of train / val / test",
    done=lambda s: "mean MSE " + ("n/a" if s["mse"]["mean"] is None
                                  else f"{s['mse']['mean']:.4g}") + " dB²")


# --------------------------------------------------------------------------- anomaly

def _check_anomaly(ctx) -> None:
    opts, lab = ctx.opts, ctx.labels
    col = label_column(lab.table.loc[ctx.ids], opts.anomaly_column, "anomaly", ctx.source)
    y = lab.anomaly = metrics.anomaly_labels(col, opts.anomaly_column)
    if np.unique(y).size < 2:
        raise InputError(f"AUC needs both normal (0) and anomalous (1) clips; all {y.size} "
                         f"evaluated clips are {one_class(y)} in column '{opts.anomaly_column}'")
    if opts.group_by:
        col = label_column(lab.table.loc[ctx.ids], opts.group_by, "group-by", ctx.source)
        g = lab.groups = col.astype(str).to_numpy()
        for name in sorted(set(g.tolist())):
            yg = y[g == name]
            if np.unique(yg).size < 2:
                raise InputError(f"group '{name}' of '{opts.group_by}' has only "
                                 f"{one_class(yg)} clips; AUC needs both normal (0) and "
                                 "anomalous (1)")


def _anomaly(ctx) -> dict:
    from aekit.evaluate.autoscore import has_threshold, threshold as score_threshold

    opts, lab, score = ctx.opts, ctx.labels, ctx.score
    out = {
        "column": opts.anomaly_column, "score": ctx.score_name,
        "pauc_definition": "official, as the dcase evaluators: roc_auc_score(max_fpr=max_fpr)"
                           " (McClish-standardized); pauc_raw: area for FPR in [0, max_fpr]"
                           " / max_fpr",
        "group_by": opts.group_by,
        **metrics.anomaly_report(lab.anomaly, score, lab.groups, opts.max_fpr),
    }
    value = None
    if opts.ensemble is not None:
        if ctx.ensemble_threshold is not None:
            value, method = ctx.ensemble_threshold["value"], "ensemble empirical quantile"
    elif has_threshold(ctx.model, opts.score):
        # Decisions at the model's threshold of the score (ae-score's threshold 'model'):
        # mse the one ae-train stored, mahalanobis the 90th percentile rule on the stored
        # training distances; the same checks as ae-score's, so a damaged value is an error.
        fitted = score_threshold(ctx.model, opts.score)
        value, method = fitted["value"], fitted.get("method")
    if value is not None:
        ctx.decisions = (score > value).astype(np.int64)
        out["threshold"] = {"method": method,
                            **metrics.decision_report(lab.anomaly, score, value)}
        if lab.dcase is not None:  # per domain, as the DCASE 2021+ baselines report them
            dm = lab.dcase["domains"]
            out["threshold"]["per_domain"] = {
                name: metrics.decision_report(lab.anomaly[dm == name], score[dm == name], value)
                for name in sorted(set(dm.tolist()))}
    return out


def _num(v, fmt: str = ".4f") -> str:
    return "n/a" if v is None else format(v, fmt)


ANOMALY = MetricSection(
    name="anomaly", compute=_anomaly, check=_check_anomaly, needs=("anomaly_column",),
    settings=frozenset({"max_fpr"}),
    schema="{column, score, pauc_definition, group_by, count, normal, anomalous, max_fpr,\n"
           "  auc, pauc (official DCASE: scikit-learn roc_auc_score(max_fpr=...), McClish),\n"
           "  pauc_raw (area for FPR <= max_fpr, / max_fpr; not standardized),\n"
           "  groups: {NAME: {count, normal, anomalous, auc, pauc, pauc_raw}},\n"
           "  group_mean: {auc_arithmetic, pauc_arithmetic, auc_harmonic, pauc_harmonic,\n"
           "               pauc_raw_arithmetic, pauc_raw_harmonic},\n"
           "  threshold: {method, value, tp, fp, fn, tn, precision, recall, f1,\n"
           "              per_domain: {source|target: {...}} (with a protocol)}}",
    done=lambda s: f"AUC {_num(s['auc'])}, pAUC {_num(s['pauc'])}")


# --------------------------------------------------------------------------- dcase

def _check_dcase(ctx) -> None:
    from aekit.evaluate.dcase import DOMAINS, dcase_results

    opts, lab = ctx.opts, ctx.labels
    if lab.anomaly is None:
        raise InputError("needs an anomaly column", param="protocol")
    got = {k: label_column(lab.table.loc[ctx.ids], c, what, ctx.source).astype(str).to_numpy()
           for k, c, what in (("types", opts.type_column, "machine type"),
                              ("sections", opts.section_column, "section"),
                              ("domains", opts.domain_column, "domain"))}
    bad = sorted(set(got["domains"].tolist()) - set(DOMAINS))
    if bad:
        raise InputError(f"{ctx.source}: domain column '{opts.domain_column}' must hold source or "
                         f"target for {opts.protocol}; found: {', '.join(bad[:5])}")
    lab.dcase = got
    # every number computable: checked now, before any forward pass
    dcase_results(got["types"], got["sections"], got["domains"], lab.anomaly,
                  np.zeros(lab.anomaly.size), protocol=opts.protocol, max_fpr=opts.max_fpr)


def _dcase(ctx) -> dict:
    from aekit.evaluate.dcase import dcase_results

    opts, lab = ctx.opts, ctx.labels
    return {
        "score": ctx.score_name, "type_column": opts.type_column,
        "section_column": opts.section_column, "domain_column": opts.domain_column,
        "decisions": None if ctx.decisions is None else "score > the model's threshold",
        **dcase_results(lab.dcase["types"], lab.dcase["sections"], lab.dcase["domains"],
                        lab.anomaly, ctx.score, ctx.decisions, protocol=opts.protocol,
                        max_fpr=opts.max_fpr)}


DCASE = MetricSection(
    name="dcase", compute=_dcase, check=_check_dcase, needs=("anomaly_column", "protocol"),
    settings=frozenset({"max_fpr", "protocol"}),
    schema="{score, type_column, section_column, domain_column, decisions, protocol, max_fpr,\n"
           "  count, normal, anomalous, machine_types: {TYPE: {sections: {SEC: M},\n"
           "  arithmetic_mean: M + auc, harmonic_mean: M + auc, official_score}},\n"
           "  arithmetic_mean, harmonic_mean, official_score, official_score_definition}\n"
           "  M (2022-2025) = {count, auc_source, auc_target, pauc, [precision_source,\n"
           "  precision_target, recall_*, f1_*]}; (2021) auc_/pauc_ source and target",
    done=lambda s: f"official score {_num(s['official_score'])}")


# --------------------------------------------------------------------------- probe

def _check_probe(ctx) -> None:
    opts, lab = ctx.opts, ctx.labels
    if ctx.train_rows is None:
        raise InputError("needs a split file (and a fold) to pick the training rows the probe "
                         "is fitted on", param="probe_column")
    if ctx.train_rows.size == 0:
        raise InputError("linear probe: the split file selects no training rows")
    all_ids = ctx.ff.ids
    col = label_column(lab.table, opts.probe_column, "probe", ctx.source).astype(str)
    lab.probe_eval = col.loc[ctx.ids].to_numpy()
    lab.probe_train = col.loc[[all_ids[i] for i in ctx.train_rows]].to_numpy()
    classes = sorted(set(lab.probe_train.tolist()))
    if len(classes) < 2:
        raise InputError(f"linear probe needs at least two classes in the training rows; "
                         f"column '{opts.probe_column}' holds only '{classes[0]}'")


def _probe(ctx) -> dict:
    z_train = ctx.train_codes()
    return {"column": ctx.opts.probe_column, "model": "standardized logistic regression",
            **metrics.linear_probe(z_train, ctx.labels.probe_train, ctx.scores.latents,
                                   ctx.labels.probe_eval, seed=ctx.opts.seed)}


PROBE = MetricSection(
    name="probe", compute=_probe, check=_check_probe, needs=("probe_column",), codes=True,
    schema="{column, model, train_count, count, classes, accuracy, macro_f1, "
           "majority_accuracy, converged}",
    done=lambda s: f"probe accuracy {_num(s['accuracy'])}")
