"""ae-table: the per-type results table across several ae-eval reports (aekit.evaluate.tables)."""

from __future__ import annotations

import logging

import click

from aekit.cmds import common

LOG = logging.getLogger("aekit")

HELP = """The DCASE-shaped results table across several ae-eval reports: a row per machine type
and machine id (section), a column group per model, the type means, the means over all
machine types and, with the 2021-2025 protocols, the official score.

\b
REPORT is PATH or NAME=PATH. The column group of PATH is named by its file name
LABEL.TYPE.json (frames-mse.fan.json -> frames-mse), else by the report's ARCH-SCORE; a
label's reports (one per machine type) form one group.

\b
Reports of `ae-eval --anomaly-column anomaly --group-by machine` (DCASE 2020): AUC and pAUC
  per machine id; a type's mean over its ids; arithmetic and harmonic means of the type means.
Reports of `ae-eval --protocol dcase2021..dcase2025`: AUC (source), AUC (target), pAUC
  (2021: AUC and pAUC per domain) per section; a type's mean over its sections and official
  score; arithmetic and harmonic means over all types and sections; the official score.

--section NAME: the table of a metric section of the reports whose registry entry
  (aekit.evaluate.sections) defines table rows: its rows, each type's mean over its keys,
  the mean of the type means.

Refused (exit 2): reports of different protocols or --max-fpr, models covering different
machine types or ids/sections, two reports of one model on one type, a report of an unknown
format version, a report without per-machine numbers.

\b
Examples:
  ae-table reports/*.json
  ae-table mse=frames-mse.fan.json maha=frames-mahalanobis.fan.json --format csv -o t.csv

See also: ae-eval (makes the reports; --result-csv: one report's per-section table).
"""


@common.command("ae-table", help=HELP)
@click.argument("reports", nargs=-1, required=True, metavar="REPORT...")
@click.option("--format", "fmt", type=click.Choice(("markdown", "csv")), default="markdown",
              show_default=True,
              help="Markdown (3 decimals, n/a where not computable) or CSV (full precision, "
                   "empty cells there).")
@click.option("--section", default=None, metavar="NAME",
              help="The table of this metric section of the reports (a registered section "
                   "that defines table rows) instead of the DCASE one.")
@common.output_option(help="The table, written atomically; '-' or omitted: stdout.")
@common.verbosity_options
def cli(reports, fmt: str, section: str | None, output: str) -> None:
    from aekit.evaluate import tables

    parsed = tables.parse_inputs(reports)
    paths = [p for _, p in parsed]
    if paths.count("-") > 1:
        common.fail_usage("'-' (stdin) can be given once")
    common.check_output_not_among(output, [p for p in paths if p != "-"])
    if section is not None:
        tables.table_entry(section)  # an unknown section: refused before reading
    table = tables.build_table([(label, path, tables.load_report(path))
                                for label, path in parsed], section)
    text = tables.to_csv(table) if fmt == "csv" else tables.to_markdown(table)
    from aekit.system.fileio import open_output

    with open_output(output) as fh:
        fh.write(text)
    LOG.info("Done: %d report(s), %d model(s), %s, %d row(s)", len(reports), len(table.labels),
             table.protocol, len(table.rows))


def main() -> None:
    common.run(cli, "ae-table")


if __name__ == "__main__":
    main()
