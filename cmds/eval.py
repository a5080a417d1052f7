"""ae-eval: reconstruction scores, anomaly AUC/pAUC, a linear probe, plots, and the K-fold verdict.

The report (``ae-eval MODEL FEATURES``), JSON, sections present only when asked for (the
metric sections -- reconstruction, anomaly, dcase, probe and any other -- are the entries of
the registry ``aekit.evaluate.sections``; ``report_schema()`` lists them with their schema)::

    format "aekit-eval", format_version 1, aekit_version, command
    model       {path, sha256, arch, latent, input_shape}
    features    {path, sha256, count}            count = clips in the file
    selection   {splits, splits_sha256, split, fold}
    reconstruction, anomaly (--anomaly-column), dcase (--protocol), probe (--probe-column),
                and any other registered metric section: each entry's schema, in report
                order, is ``aekit.evaluate.sections.report_schema()``
    ensemble    (--ensemble) {score, combination, column: "ensemble_z",
                 members: [{path, sha256, arch, train_mean, train_std, train_n}],
                 threshold: {method, quantile, n, value} | null}; anomaly.score, dcase.score
                 are then "ensemble_z(SCORE)"
    submission  (--submission DIR) {files: [NAME], score, decisions}
    plots       {loss, spectrograms_best, spectrograms_worst, scores, roc: PATH}

The summary (``ae-eval --summarize``)::

    format "aekit-eval-summary", format_version 1, count, reports, folds, std, command,
    metrics {DOTTED.KEY: {mean, std, min, max, n, values}}   e.g. "anomaly.auc"
"""

from __future__ import annotations

import json

import click

from aekit.cmds import common

HELP = """Evaluate a trained autoencoder on a features file, or summarize per-fold reports.

\b
ae-eval MODEL FEATURES [options]
  Per-clip reconstruction error (MSE in dB², MAE in dB) of the selected rows (--splits/--split/
  --fold, then --where EXPR on the --labels); a JSON report on stdout (or -o): count, mean,
  std, median, percentiles, per split when several occur.
  --scores CSV   per-clip table: id,split,mse,mae (+ the label columns with --labels).
  --score auto|mse|mae|mahalanobis  the anomaly score (default auto: the model kind's
                 choice, mahalanobis for frames and interp when the model stores its
                 statistics, else mse; logged, and named by the report's anomaly.score; a
                 mahalanobis score adds the column mahalanobis to --scores).
  --anomaly-column COL (1 = anomalous): ROC AUC and the official DCASE pAUC (scikit-learn's
                 roc_auc_score(max_fpr=p), McClish-standardized, p = --max-fpr), overall and
                 per --group-by COL (machine id) with arithmetic and harmonic means;
                 'pauc_raw' is the non-standardized area for FPR in [0, p] divided by p.
  --protocol dcase2021..dcase2025: per machine type and section (--type-column,
                 --section-column, --domain-column) AUC source/target and pAUC with the
                 official evaluators' clip selection, P/R/F1 per domain at the model's
                 threshold of the score (mse: stored by ae-train; mahalanobis: the same
                 90th-percentile gamma rule on the training distances it stored), means,
                 and the official score (report section 'dcase').
  --probe-column COL: logistic regression on the standardized codes z, fitted on the train
                 rows of the fold (from --splits), scored on the evaluated rows.
  --submission DIR (with --labels: --type-column, --section-column; no anomaly or domain
                 column needed) the challenge's submission files, one pair per
                 machine type and section: anomaly_score_<type>_section_<sec>_test.csv
                 (clip file name, score) and decision_result_..._test.csv (file name, 1/0 at
                 the model's threshold), no header, as the DCASE baselines write them.
  --result-csv FILE (with --protocol) the per-section result table as CSV: machine type,
                 section, AUC (source), AUC (target), pAUC, precision/recall/F1 per domain,
                 each type's means and official score, then over all types.
  --plots DIR    loss.png, spectrograms_best.png, spectrograms_worst.png, scores.png, roc.png.
  --ensemble M2  (repeatable) models voting with MODEL: the anomaly score becomes the mean
                 over members of each member's --score (auto: mahalanobis only when it is
                 every member's own choice, else mse) standardized on its training clips'
                 scores (stored by ae-train): a z-score, column ensemble_z, report section
                 'ensemble'; decisions at the 90th percentile of the training clips' ensemble
                 z-scores when all members were trained on the same clips. reconstruction,
                 mse and mae stay MODEL's.

\b
ae-eval --summarize REPORT.json...
  The K-fold verdict: mean ± std (sample, ddof=1), min, max of every numeric metric over the
  reports; JSON on stdout (or -o), or a plain-text table with --table (headline metrics;
  --all-metrics for every one).

Features whose parameters or clip shape differ from the model's are refused.

\b
Examples:
  ae-eval model1.safetensors features.h5 --splits splits.csv --split val --fold 1 \\
      --labels labels.csv --anomaly-column anomaly --group-by machine --plots plots1 -o fold1.json
  ae-eval --summarize fold*.json --table
  ae-eval seed1.safetensors features.h5 --ensemble seed2.safetensors \\
      --ensemble seed3.safetensors --splits splits.csv --split test --labels labels.csv \\
      --anomaly-column anomaly

\b
See also: ae-train (makes MODEL), ae-encode (latent codes), ae-split (folds).
"""


def _stdout_conflict(output: str | None, scores: str | None, table: bool,
                     result_csv: str | None = None) -> None:
    to_stdout = []
    if (output in (None, "-")) and not table:
        to_stdout.append("the JSON report")
    if table:
        to_stdout.append("--table")
    if scores == "-":
        to_stdout.append("--scores -")
    if result_csv == "-":
        to_stdout.append("--result-csv -")
    if len(to_stdout) > 1:
        common.fail_usage(f"{' and '.join(to_stdout)} would both go to stdout; "
                          "send one to a file with -o")


def _write_json(obj: dict, output: str | None) -> None:
    from aekit.system.fileio import open_output

    with open_output(output) as fh:
        fh.write(json.dumps(obj, indent=2) + "\n")


def _summarize(reports: tuple[str, ...], output: str | None, table: bool,
               all_metrics: bool) -> None:
    from aekit.evaluate import metrics
    from aekit.evaluate.reports import summarize_files

    summary = summarize_files(reports, command=common.command_line())
    if output not in (None, "-") or not table:
        _write_json(summary, output)
    if table:
        click.echo(metrics.format_table(summary, all_metrics), nl=False)
    common.LOG.info("Done: %d report(s) summarized, %d metric(s)", len(reports),
                    len(summary["metrics"]))


@common.command("ae-eval", help=HELP)
@click.argument("inputs", nargs=-1, required=True, metavar="MODEL FEATURES | REPORT.json...",
                type=common.InputPath(dir_okay=False, allow_dash=True))
@click.option("--summarize", is_flag=True,
              help="Combine per-fold JSON reports (the arguments) into mean ± std per metric.")
@click.option("--table", is_flag=True,
              help="Print a plain-text table of the headline metrics on stdout instead of JSON "
                   "(the JSON still goes to -o FILE when given).")
@click.option("--all-metrics", is_flag=True,
              help="With --table: every metric, counts and percentiles included.")
@common.output_option(help="JSON report (or summary), written atomically; '-' or omitted: stdout.")
@common.selection_options
@common.labels_option
@common.where_option
@click.option("--anomaly-column", default=None, metavar="COL",
              help="Label column with 1 = anomalous, 0 = normal: ROC AUC and DCASE pAUC.")
@click.option("--group-by", default=None, metavar="COL",
              help="Label column (e.g. machine ID): AUC/pAUC per group, and their "
                   "arithmetic and harmonic means.")
@click.option("--protocol", type=click.Choice(("dcase2021", "dcase2022", "dcase2023", "dcase2024",
                                              "dcase2025")), default=None,
              help="DCASE 2021-2025 domain-shift results per machine type and section "
                   "(needs --anomaly-column and the type, section and domain columns).")
@click.option("--type-column", default="machine_type", show_default=True, metavar="COL",
              help="With --protocol or --submission: the machine type column.")
@click.option("--section-column", default="section", show_default=True, metavar="COL",
              help="With --protocol or --submission: the section column.")
@click.option("--domain-column", default="domain", show_default=True, metavar="COL",
              help="With --protocol: the domain column (source or target).")
@click.option("--probe-column", default=None, metavar="COL",
              help="Label column for a linear probe on the codes z (needs --splits).")
@click.option("--score", "score_name",
              type=click.Choice(("auto", "mse", "mae", "mahalanobis")),
              default="auto", show_default=True,
              help="The anomaly score: reconstruction MSE or MAE, or the Mahalanobis distance "
                   "of the clip's error vector to the statistics ae-train stored (min over "
                   "domains; adds a mahalanobis column to --scores). auto: the model kind's "
                   "choice (frames, interp: mahalanobis when the model stores its statistics; "
                   "else mse), logged; the report's anomaly.score names it.")
@click.option("--ensemble", "ensemble", multiple=True, metavar="MODEL",
              type=common.InputPath(dir_okay=False),
              help="Another model voting with MODEL (repeatable): the anomaly score becomes the "
                   "mean of the members' z-scores on their training scores (ensemble_z).")
@click.option("--max-fpr", type=common.FiniteFloatRange(0, 1, min_open=True), default=0.1,
              show_default=True, help="Upper FPR bound p of the partial AUC (DCASE: 0.1).")
@click.option("--scores", "scores_path", type=common.OutputPath(dir_okay=False, allow_dash=True),
              default=None, help="Write per-clip scores CSV (id,split,mse,mae,+labels).")
@click.option("--submission", "submission", type=common.OutputPath(file_okay=False),
              default=None,
              help="Write the challenge's anomaly_score_<type>_section_<sec>_test.csv and "
                   "decision_result_..._test.csv files into DIR (needs --labels with the "
                   "--type-column and --section-column; decisions at the model's threshold).")
@click.option("--result-csv", "result_csv", type=common.OutputPath(dir_okay=False, allow_dash=True),
              default=None,
              help="With --protocol: the per-section result table (AUC source/target, pAUC, "
                   "precision, recall, F1, means, official score) as CSV.")
@click.option("--plots", "plots_dir", type=common.OutputPath(file_okay=False), default=None,
              help="Directory for PNG plots (created if missing).")
@click.option("--log", "log_path", type=common.InputPath(dir_okay=False, allow_dash=True),
              default=None,
              help="ae-train --log CSV for the loss plot (default: the model's own history).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Clips per forward pass.")
@common.seed_option()
@common.device_option
@common.verbosity_options
def cli(inputs, summarize: bool, table: bool, all_metrics: bool, output: str | None,
        **opts) -> None:
    _stdout_conflict(output, opts["scores_path"], table, opts["result_csv"])
    if summarize:
        model_only = {"--splits": "splits_path", "--split": "split_name", "--fold": "fold",
                      "--labels": "labels_path", "--where": "where",
                      "--anomaly-column": "anomaly_column",
                      "--group-by": "group_by", "--probe-column": "probe_column",
                      "--protocol": "protocol", "--submission": "submission",
                      "--result-csv": "result_csv",
                      "--scores": "scores_path", "--plots": "plots_dir", "--log": "log_path"}
        used = [flag for flag, name in model_only.items() if opts[name] is not None]
        used += ["--ensemble"] if opts["ensemble"] else []
        if used:
            common.fail_usage(f"{', '.join(used)} cannot be used with --summarize "
                              "(its arguments are JSON reports)")
        _summarize(inputs, output, table, all_metrics)
        return
    if len(inputs) != 2:
        common.fail_usage(f"expected MODEL FEATURES, got {len(inputs)} argument(s); "
                          "to combine reports use --summarize")
    _evaluate(*inputs, output=output, table=table, all_metrics=all_metrics, **opts)


def _evaluate(model: str, features: str, *, output, table, all_metrics, splits_path, split_name,
              fold, labels_path, where, anomaly_column, group_by, probe_column, score_name, max_fpr,
              scores_path, plots_dir, log_path, batch_size, seed, device, protocol=None,
              type_column="machine_type", section_column="section",
              domain_column="domain", submission=None, result_csv=None,
              ensemble=()) -> None:
    from contextlib import nullcontext

    from aekit.evaluate import evaluation
    from aekit.evaluate import metrics
    from aekit.system.csvout import write_frame
    from aekit.system.device import resolve_device
    from aekit.system.fileio import atomic_dir, check_regular_file, open_output

    submission_dir = submission  # the directory (named as the library's error param)

    if result_csv and not protocol:
        common.fail_usage("--result-csv needs --protocol")
    check_regular_file(model, "a model file")
    check_regular_file(features, "a features file")
    for path in ensemble:
        check_regular_file(path, "a model file")
    if plots_dir:  # the PNGs replace same-named files in DIR: none may be an input
        from aekit.evaluate.plots import plot_paths

        common.check_no_clobber(click.get_current_context(),
                                [("--plots", p) for p in plot_paths(plots_dir)])
    # Plots go to a temporary directory, renamed into place only when all are written.
    with (atomic_dir(plots_dir) if plots_dir else nullcontext()) as tmp_plots:
        opts = evaluation.EvalOptions(
            labels_path=labels_path, anomaly_column=anomaly_column, group_by=group_by,
            probe_column=probe_column, score=score_name, max_fpr=max_fpr, protocol=protocol,
            type_column=type_column, section_column=section_column,
            domain_column=domain_column, submission=submission_dir is not None,
            plots_dir=str(tmp_plots) if plots_dir else None, seed=seed)
        report, per_clip = evaluation.evaluate_file(
            model, features, opts, splits_path, split_name, fold, batch_size,
            resolve_device(device), command=common.command_line(), log_path=log_path,
            progress=common.progress, where=where, ensemble=ensemble)
    if plots_dir and isinstance(report.get("plots"), dict):  # name the final paths
        import os

        report["plots"] = {k: os.path.join(plots_dir, os.path.relpath(v, tmp_plots))
                           for k, v in report["plots"].items()}
    if submission_dir:
        from pathlib import Path

        files = per_clip.attrs["submission"]
        # the names depend on the labels: checked against the inputs now, before any write
        common.check_no_clobber(click.get_current_context(),
                                [("--submission", Path(submission_dir) / n) for n in files])
        with atomic_dir(submission_dir) as tmp:
            for name, text in files.items():
                (tmp / name).write_text(text, encoding="utf-8")
        common.LOG.info("%d submission file(s) -> %s", len(files), submission_dir)
    if result_csv:
        from aekit.evaluate.dcase import result_table

        with open_output(result_csv) as fh:
            write_frame(result_table(report["dcase"]), fh, float_format="%.6f")
    if scores_path:
        with open_output(scores_path) as fh:
            write_frame(per_clip, fh, float_format="%.6g")
    if output not in (None, "-") or not table:
        _write_json(report, output)
    if table:
        flat = {k: v for k, v in metrics.flatten_metrics(report).items()
                if all_metrics or metrics.is_headline(k)}
        width = max(len(k) for k in flat)
        click.echo("\n".join(f"{k.ljust(width)}  {v:.6g}" for k, v in flat.items()))
    from aekit.evaluate.sections import registered

    rec = report["reconstruction"]
    parts = [s.done(report[s.name]) for s in registered()  # each section's own summary
             if s.done is not None and s.name in report]
    msg = f"Done: {rec['count']} clips, " + ", ".join(parts)
    common.LOG.info("%s", msg)


def main() -> None:
    common.run(cli, "ae-eval")


if __name__ == "__main__":
    main()
