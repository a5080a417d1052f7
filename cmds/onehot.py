"""ae-onehot: one 0/1 integer column per category, with categories saved and re-applied."""

from __future__ import annotations

import logging

import click

from aekit.cmds import common

LOG = logging.getLogger("aekit")

HELP = """One-hot encode categorical columns of a CSV, consistently across files.

INPUT is a CSV file or '-' (stdin). Each -c COL becomes one COL_value column per category,
values 0/1 as integers, categories in sorted order (compared as text: '01' and '1' differ,
'10' sorts before '9'); the new columns follow the input's columns and COL itself is
dropped unless --keep-original.

Fit once, apply many: --save-categories cats.json records the categories seen;
--categories cats.json applies them to another file (all its columns, or those named with
-c), so train and test get identical columns in identical order. A category not seen when
fitting is an error, or all zeros with --handle-unknown ignore (counted on stderr).

One-hot is for low cardinality: a column with more than --max-categories categories is
refused (an embedding is the better tool there). --min-frequency N folds categories seen
fewer than N times into COL_infrequent. Only an empty cell is a missing value: --dummy-na
gives it a COL_nan column, otherwise it is an error naming the rows.

\b
Example:
  ae-onehot train.csv -c machine --save-categories cats.json -o train_1h.csv
  ae-onehot test.csv --categories cats.json --handle-unknown ignore -o test_1h.csv
  ae-split feats.h5 --labels labels.csv | ae-onehot - -c split > x.csv

See also: ae-featurize, ae-split, ae-train, ae-encode, ae-eval.
"""


@common.command("ae-onehot", help=HELP, short_help="One-hot encode categorical CSV columns.")
@click.argument("input_path", metavar="INPUT", type=common.InputPath(allow_dash=True))
@common.output_option()
@click.option("-c", "--column", "columns", multiple=True, metavar="COL",
              help="Column to encode; repeat for several. With --categories: default all saved.")
@click.option("--keep-original", is_flag=True, help="Keep the encoded columns as well.")
@click.option("--save-categories", "save_path", type=common.OutputPath(dir_okay=False), default=None,
              help="Write the categories seen to this JSON file (atomically).")
@click.option("--categories", "categories_path",
              type=common.InputPath(dir_okay=False, allow_dash=True),
              default=None, help="Apply categories saved by --save-categories instead of fitting.")
@click.option("--handle-unknown", type=click.Choice(["error", "ignore"]), default="error",
              show_default=True, help="A category not in --categories: fail, or all zeros.")
@click.option("--max-categories", type=int, default=50, show_default=True,
              help="Refuse a column with more categories than this (0: no limit).")
@click.option("--min-frequency", type=int, default=None, metavar="N",
              help="Fold categories seen fewer than N times into COL_infrequent.")
@click.option("--dummy-na", is_flag=True, help="Encode empty cells as a COL_nan column.")
@common.verbosity_options
def cli(input_path: str, output: str, columns: tuple[str, ...], keep_original: bool,
        save_path: str | None, categories_path: str | None, handle_unknown: str,
        max_categories: int, min_frequency: int | None, dummy_na: bool) -> None:
    from aekit.data import onehot
    from aekit.system.fileio import open_output

    if not columns and categories_path is None:
        common.fail_usage("name at least one column with -c/--column (or apply --categories)")
    if save_path is not None:
        from aekit.system.fileio import check_writable

        check_writable(save_path, "--save-categories")
    if categories_path is not None and str(categories_path) == "-" and str(input_path) == "-":
        common.fail_usage("INPUT and --categories cannot both be '-' (stdin)")
    df = onehot.read_table(input_path)
    if categories_path is not None:
        ctx = click.get_current_context()
        fit_only = [f"--{p.replace('_', '-')}" for p in ("max_categories", "min_frequency", "dummy_na")
                    if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
        if fit_only:
            LOG.warning("%s ignored: the categories file decides the columns", ", ".join(fit_only))
    cats = onehot.categories_for(df, columns, categories_path, max_categories=max_categories,
                                 min_frequency=min_frequency, dummy_na=dummy_na)
    table, unknown = onehot.transform(df, cats, handle_unknown=handle_unknown,
                                      keep_original=keep_original)
    for col, count in unknown.items():
        LOG.warning("column '%s': %d row(s) with a category not in %s encoded as all zeros",
                    col, count, categories_path)
    if save_path is not None:
        onehot.save_categories(cats, save_path, extra={"command": common.command_line()})
    with open_output(output) as fh:
        table.to_csv(fh, index=False, lineterminator="\n")
    LOG.info("%d rows: %s", len(table), ", ".join(
        f"{c} -> {len(s.output_names(c))} columns" for c, s in cats.items()))


def main() -> None:
    common.run(cli, "ae-onehot")


if __name__ == "__main__":
    main()
