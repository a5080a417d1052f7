"""ae-labels: label columns parsed from the ids (DCASE file names, or any regex); see :mod:`aekit.data.idlabels`."""

from __future__ import annotations

import logging

import click

from aekit.cmds import common

LOG = logging.getLogger("aekit")

HELP = """Parse label columns out of clip ids (file names) and write them as a labels CSV.

INPUT is a features file from ae-featurize (its ids), or a CSV with an 'id' column ('-':
stdin). Output: id followed by the columns parsed from it, every value text as written in
the id (machine id 00 stays 00).

\b
Presets, matched at the END of the id (leading directories such as dev_data/ are fine):
  dcase2020  {machine_type}/{split}/{label}_id_{machine_id}_{n}
             fan/train/normal_id_00_00000000
             columns: machine_type, machine_id, machine, split, label, anomaly, clip
  dcase2021  {machine_type}/{split}/section_{section}_{domain}_{split}_{label}_{n}[_{attr}]
             (DCASE 2021-2025; dcase2022 ... dcase2025 are the same preset; 2021's
             source_test/ and target_test/ folders read as test, the folder's domain)
             bearing/test/section_00_target_test_anomaly_0003_vel_6_loc_A
             columns: machine_type, section, machine, domain, split, label, anomaly, clip,
             attributes, then one column per attribute key found in more than one id
             (vel, loc; a key that is already a column name gets the prefix attr_)

split is train or test, label normal or anomaly, anomaly 1 or 0, machine one machine's key
across types (fan_id_00, fan_section_00), clip the file's number. Test files of an
evaluation set have no label (fan/test/id_05_00000000, section_03_source_test_0000,
section_03_0000): their label and anomaly are left EMPTY, not guessed. So that the ids carry
the machine type, featurize from the directory holding the machine types (or above it).

--pattern REGEX takes any other layout: a Python regular expression (at most 1000 characters)
searched in each id (anchor it with ^ and $), whose named groups (?P<name>...) become the
columns, in order; a group that does not take part is empty. Matching has a time limit
(1 s per id, 60 s in all): a pattern that backtracks without end is an error, not a hang. An id that does not match is an error (exit 2, naming the first
few); --allow-unmatched keeps it with empty columns instead.

\b
Example:
  ae-featurize dev_data -o features.h5
  ae-labels features.h5 --preset dcase2020 -o labels.csv
  ae-split features.h5 --labels labels.csv --stratify machine_type --group machine > splits.csv
  ae-labels features.h5 --pattern '(?P<speaker>[^/]+)/(?P<take>\\d+)$' > labels.csv

See also: ae-synth, ae-featurize, ae-split, ae-onehot, ae-train.
"""


@common.command("ae-labels", help=HELP, short_help="Label columns parsed from the ids (file names).")
@click.argument("input_path", metavar="INPUT", type=common.InputPath(allow_dash=True))
@common.output_option()
@click.option("--preset", type=click.Choice(["dcase2020", "dcase2021", "dcase2022", "dcase2023",
                                            "dcase2024", "dcase2025"]), default=None,
              help="A known file-name layout (see above).")
@click.option("--pattern", default=None, metavar="REGEX",
              help="Python regex with named groups, searched in each id: one column per group.")
@click.option("--allow-unmatched", is_flag=True,
              help="Keep ids that do not match, with empty columns, instead of failing.")
@common.verbosity_options
def cli(input_path: str, output: str, preset: str | None, pattern: str | None,
        allow_unmatched: bool) -> None:
    from aekit.data import idlabels
    from aekit.system.fileio import check_writable, open_output

    if (preset is None) == (pattern is None):
        common.fail_usage("give exactly one of --preset and --pattern")
    parser = idlabels.parser_for(preset=preset, pattern=pattern)
    if output != "-":  # an -o naming the input is refused by the shared option check
        check_writable(output, "-o/--output")
    ids = idlabels.read_ids(input_path)
    result = idlabels.label_ids(ids, parser, allow_unmatched=allow_unmatched)
    if result.unmatched:
        LOG.warning("%d of %d ids do not match; their columns are empty (e.g. %s)",
                    len(result.unmatched), len(ids), result.unmatched[0])
    if result.unlabelled:
        LOG.info("%d test file(s) carry no label: label and anomaly left empty", result.unlabelled)
    with open_output(output) as fh:
        idlabels.write_table(result.table, fh)
    LOG.info("%d ids -> %s", len(ids), ", ".join(result.table.columns[1:]))


def main() -> None:
    common.run(cli, "ae-labels")


if __name__ == "__main__":
    main()
