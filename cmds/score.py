"""ae-score: score new recordings with a trained model, streaming: audio in, id,path,score out."""

from __future__ import annotations

import logging
import math
import sys

import click

from aekit.cmds import common

LOG = logging.getLogger("aekit")

HELP = """Score audio files with a trained model: one CSV row per file, as computed.

Each file is decoded and featurized with the feature parameters stored in MODEL
(exactly as ae-featurize would, in worker processes), and scored by the model
(higher: more anomalous), the same number ae-featurize + ae-eval --scores give (its
column of that score). --score auto (the default) is the model's own choice: the
Mahalanobis distance for the frame-window models (frames, interp) when the model stores
its statistics, else the reconstruction MSE in dB^2; the choice and why are logged, and
the last column, scorer, names it on every row (mse or mahalanobis). Rows
(id,path,score[,decision],scorer) come in input order, a batch at a time, so a long
stream runs in constant memory and '| head' works.

INPUTS are audio files and directories (searched recursively by extension; ids as in
ae-featurize: relative to the inputs' common root or --root, without extension), or
'-' alone to read paths from stdin, one per line, as they come: the first rows come out
while the list is still being written, and the list is never held (a path listed twice
gets two rows; ids are the paths as listed, or relative to --root, without extension).
Every forward pass is a full --batch-size (padded), so scores never depend on when the
list paused. A file that cannot be
decoded, or that is listed on stdin but does not exist, is reported on stderr and gets
a row with an empty score (and decision);
--on-error fail stops at the first one instead, and the run fails (exit 1) when more
than --max-fail-frac of the inputs failed.

--threshold T adds a column decision: 1 when score > T, else 0. --threshold model
uses the model's threshold of the score in use: the 90th percentile of a gamma
distribution fitted to its training clips' scores, as in the DCASE baselines (mse: the
one ae-train stored; mahalanobis: fitted to the training clips' distances ae-train
stored; a model without them is refused).

--ensemble M2 (repeatable) adds models that vote with MODEL: each member scores the
clip (--score applies to every member; auto: mahalanobis only when it is every
member's own choice, else mse), each score is standardized on that member's
training clips' scores (stored by ae-train), and the column ensemble_z (in place of
score) is their mean: a z-score, not dB^2. The members must take the same features;
--threshold model is then the 90th percentile of the training clips' ensemble z-scores,
available when all members were trained on the same clips.

\b
Examples:
  ae-score model.safetensors new/ -o scores.csv
  find new -name '*.wav' | ae-score model.safetensors - --threshold model | head
  ae-score seed1.safetensors new/ --ensemble seed2.safetensors --ensemble seed3.safetensors

See also: ae-featurize, ae-train, ae-eval.
"""


def _threshold(ctx, param, value):
    if value is None or value == "model":
        return value
    try:
        t = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a number nor 'model'") from None
    if not math.isfinite(t):
        raise click.BadParameter(f"{value!r} is not a finite number")
    return t


@common.command("ae-score", help=HELP)
@click.argument("model_path", metavar="MODEL", type=common.RegularFile("model file"))
@click.argument("inputs", nargs=-1, required=True, type=common.InputPath(allow_dash=True))
@common.output_option(help="Scores CSV, written atomically; '-' or omitted: stdout (streamed).")
@click.option("--threshold", default=None, metavar="T|model", callback=_threshold,
              help="Add a decision column (1: score > T); 'model': the threshold stored by ae-train.")
@click.option("--score", "score_name", type=click.Choice(("auto", "mse", "mahalanobis")),
              default="auto", show_default=True,
              help="The score: reconstruction MSE (dB^2), or the Mahalanobis distance of the "
                   "clip's error vector to the statistics ae-train stored (min over domains); "
                   "auto: the model kind's choice (frames, interp: mahalanobis when stored; "
                   "else mse), logged and named in the scorer column.")
@click.option("--ensemble", "ensemble", multiple=True, metavar="MODEL",
              type=common.RegularFile("model file"),
              help="Another model voting with MODEL (repeatable): the score becomes the mean "
                   "of the members' z-scores on their training scores (column ensemble_z).")
@common.jobs_option
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Clips per forward pass (rows are written a batch at a time).")
@common.audio_input_options("A bad input: report it and write a row with an empty score, or stop at once.")
@common.device_option
@common.verbosity_options
def cli(model_path, inputs, output, threshold, score_name, ensemble, jobs, batch_size, on_error,
        max_fail_frac, root, device):
    from aekit.audio.decode import common_root, discover, make_ids
    from aekit.system.device import resolve_device
    from aekit.errors import InputError
    from aekit.audio.featurize import available_cpus
    from aekit.system.csvout import csv_line
    from aekit.system.failpolicy import FailPolicy
    from aekit.system.fileio import open_output
    from aekit.models.modelfile import load_model
    from aekit.evaluate.autoscore import resolve_logged
    from aekit.evaluate.autoscore import threshold as score_threshold
    from aekit.evaluate.scoring import check_score, model_params, score_files

    model = load_model(model_path, resolve_device(device))
    if ensemble:  # aekit.evaluate.ensemble: members checked alike, scores combined as z-scores
        from aekit.evaluate.ensemble import Ensemble

        model = Ensemble([model, *(load_model(p, resolve_device(device)) for p in ensemble)])
    params = model_params(model)  # refuses a model without feature parameters
    score_name = resolve_logged(model, score_name)  # auto: the model's choice, and why
    check_score(model, score_name)  # mahalanobis: refused when the model stores no statistics
    if threshold == "model" and ensemble:
        fitted = model.threshold(score_name)
        threshold = fitted["value"]
        LOG.info("threshold %.6g (ensemble z-score: the %g quantile of the training clips')",
                 threshold, fitted["quantile"])
    if threshold == "model":  # the model's threshold of this score (aekit.evaluate.autoscore)
        fitted = score_threshold(model, score_name)
        threshold = fitted["value"]
        LOG.info("threshold %.6g (%s: %s, method %s)", threshold, score_name,
                 "stored in " + str(model_path) if score_name == "mse" else
                 "fitted to the training distances stored in " + str(model_path),
                 fitted.get("method"))
    stream = list(inputs) == ["-"]
    jobs = jobs or available_cpus()
    out_stat = None
    if stream:  # read as it comes: never held, the first rows before the list's end
        from aekit.audio.pathstream import listed_id, stdin_paths

        paths = stdin_paths(sys.stdin)
        ids = (lambda p: listed_id(p, root))  # noqa: E731
        out_stat = _stat(output)
        LOG.info("paths from stdin, scored as they are read; %d job(s); clip shape %s", jobs,
                 list(params.clip_shape))
    else:
        paths = discover(list(inputs))
        common.check_output_not_among(output, paths)
        ids = make_ids(paths, root if root is not None else common_root(list(inputs), paths))
        if len(set(ids)) != len(ids):
            raise InputError("ids are not unique")
        LOG.info("%d input file(s), %d job(s); clip shape %s", len(paths), jobs,
                 list(params.clip_shape))

    header = (["id", "path", "ensemble_z" if ensemble else "score"]  # a z-score: not dB^2
              + (["decision"] if threshold is not None else []) + ["scorer"])
    policy = FailPolicy(on_error, max_fail_frac)  # aekit.system.failpolicy, as ae-featurize's
    scored = 0
    with common.progress(None if stream else len(paths), "score", unit="files") as advance, \
            open_output(output) as fh:
        records = score_files(model, paths, ids, jobs=jobs, batch_size=batch_size,
                              score=score_name)
        try:
            last = -1
            for rec in records:
                if out_stat is not None and _same_file(out_stat, rec.path):
                    raise common.CommandError(
                        f"-o/--output {output} is the same file as input {rec.path}: refusing "
                        "to overwrite an input; choose another output", exit_code=2)
                if last < 0:
                    fh.write(csv_line(header))
                if rec.error is not None:
                    policy.failure(rec.path, rec.error)
                    LOG.warning("%s: %s (empty score)", rec.path, rec.error)
                    row = [rec.id, rec.path, ""] + ([""] if threshold is not None else [])
                    row.append(score_name)
                else:
                    scored += 1
                    row = [rec.id, rec.path, format(rec.score, ".9g")]
                    if threshold is not None:
                        row.append("1" if rec.score > threshold else "0")
                    row.append(score_name)
                if rec.index != last + 1:  # a bug, not bad data: never write rows out of order
                    raise RuntimeError("ae-score: rows out of input order")
                last = rec.index
                fh.write(csv_line(row))
                if fh is sys.stdout:
                    fh.flush()  # a reader sees each batch's rows as soon as they are scored
                advance(1)
        finally:
            records.close()
        total = last + 1
        if total == 0:
            raise InputError("no paths on stdin")
        policy.check(total, "; no output written" if output not in (None, "-") else "")
    LOG.info("Done %d of %d (%d failed) -> %s", scored, total, policy.failed,
             "stdout" if output in (None, "-") else output)


def _stat(output):
    """os.stat of an existing -o file (None: stdout, or no such file yet)."""
    import os

    if output is None or str(output) == "-":
        return None
    try:
        return os.stat(output)
    except OSError:
        return None


def _same_file(st, path: str) -> bool:
    import os

    try:
        return os.path.samestat(st, os.stat(path))
    except (OSError, ValueError):
        return False


def main() -> None:
    common.run(cli, "ae-score")


if __name__ == "__main__":
    main()
