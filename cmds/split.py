"""ae-split: a locked test set, then K cross-validation folds, written as id,split,fold."""

from __future__ import annotations

import logging

import click

from aekit.cmds import common

LOG = logging.getLogger("aekit")

HELP = """Split ids into a locked test set and K cross-validation folds, leak-free.

INPUT is a features file from ae-featurize (its ids are split) or a CSV with an id column;
'-' reads a CSV from stdin. First a test set of --test-ratio of the rows is locked away
(shuffled with --seed), then the remaining train rows are cut into --folds folds whose sizes
differ by at most one (100 rows in 3 -> 34, 33, 33). Fold k is the validation set of run k;
the other folds train. Without --stratify/--group this is exactly scikit-learn's
train_test_split(test_size, shuffle=True, random_state=seed) followed by numpy.array_split.

--stratify COL keeps each class's share in the test set and in every fold within one row of
its ideal. --group COL keeps all rows of a group (speaker, machine, session) in one split and
one fold. With --group the test set first gets one group of every class that has at least two
groups, then groups are placed hardest first (classes with the fewest groups, then the largest
groups) where they balance fold sizes first and class shares second; ties go by --seed.
Folds aim to stay within max(largest group, 10% of the mean) rows of the mean size, and are
never worse than scikit-learn's StratifiedGroupKFold(shuffle=True, random_state=seed) in size
spread or class error. Classes that cannot be in the test set or in every fold (too few groups) are named on
stderr and in the summary line; --strict makes that an error (exit 1). Same input and seed give
byte-identical output.

Anomaly-detection protocols (DCASE, MIMII, ToyADMOS): --test-where 'anomaly == 1' sends every
matching row to the test set and splits the rest as usual (--test-ratio of the rest to test,
folds over what is left); --split-column COL takes train/test from a column (values train and
test, e.g. the data set's own folders) and makes only the folds, inside train.

Output CSV: id,split,fold (split is train or test; fold 0..K-1 on train rows, empty on test
rows), followed by the input CSV's other columns and the --labels columns, so labels flow
on down a pipe.

\b
Example:
  ae-split feats.h5 --labels labels.csv --stratify label --group machine -o splits.csv
  ae-split feats.h5 --labels labels.csv | ae-onehot - -c split > x.csv
  ae-split feats.h5 --labels labels.csv --test-where 'anomaly == 1' --stratify machine_id
  ae-split feats.h5 --labels labels.csv --split-column folder --group machine_id

See also: ae-featurize, ae-onehot, ae-train, ae-encode, ae-eval.
"""


@common.command("ae-split", help=HELP, short_help="Split ids into a test set and K folds.")
@click.argument("input_path", metavar="INPUT", type=common.InputPath(allow_dash=True))
@common.output_option()
@click.option("--id-column", default="id", show_default=True,
              help="Id column of a CSV input and of --labels (the output column is always 'id').")
@common.labels_option
@click.option("--test-ratio", type=float, default=None,
              help="Share of rows locked away as the test set, in (0, 1)  [default: 0.2].")
@click.option("--folds", type=int, default=5, show_default=True,
              help="Number K of cross-validation folds of the train rows (at least 2).")
@common.seed_option()
@click.option("--stratify", default=None, metavar="COL",
              help="Keep the proportions of this label column in the test set and every fold.")
@click.option("--group", default=None, metavar="COL",
              help="Keep all rows of each value of this column in one split and one fold.")
@click.option("--test-where", default=None, metavar="EXPR",
              help="Rows matching EXPR (e.g. 'anomaly == 1') always go to the test set; the "
                   "rest is split as usual.")
@click.option("--split-column", default=None, metavar="COL",
              help="Take train/test from this column (values train, test); only the folds "
                   "are made, inside train.")
@click.option("--strict", is_flag=True,
              help="Exit 1 (writing nothing) when a class gets no test rows or misses folds.")
@common.verbosity_options
def cli(input_path: str, output: str, id_column: str, labels_path: str | None,
        test_ratio: float | None, folds: int, seed: int, stratify: str | None, group: str | None,
        test_where: str | None, split_column: str | None, strict: bool) -> None:
    from aekit.data import split
    from aekit.errors import DataError
    from aekit.system.fileio import open_output

    if split_column is not None and test_ratio is not None:
        common.fail_usage("--test-ratio cannot be used with --split-column (the column "
                          "chooses the test set)")
    rows = split.load_split_input(input_path, id_column=id_column, labels_path=labels_path,
                                  keep=split_column)
    notes: list[str] = []
    table = split.split_table(rows, test_ratio=0.2 if test_ratio is None else test_ratio,
                              folds=folds, seed=seed, stratify=stratify, group=group,
                              test_where=test_where, split_column=split_column, notes=notes)
    for note in notes:
        LOG.warning("%s", note)
    if strict and notes:
        raise DataError(f"--strict: {len(notes)} constraint(s) not met, nothing written: "
                        f"{notes[0]}")
    with open_output(output) as fh:
        split.write_table(table, fh)
    LOG.info("%s", split.summary(table, group=group, stratify=stratify, notes=notes))


def main() -> None:
    common.run(cli, "ae-split")


if __name__ == "__main__":
    main()
