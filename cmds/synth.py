"""ae-synth: make the demo data set (machine-like recordings + labels.csv); see :mod:`aekit.audio.synth`."""

from __future__ import annotations

import os

import click

from aekit.audio import synth
from aekit.cmds import common

HELP = f"""Write a synthetic machine-sound data set to OUT_DIR: WAV/FLAC clips and labels.csv.

Fans, pumps, valves and sliders, several machines each, every machine with its own sound
(fundamental, harmonics, noise colour, modulation), sample rate and channel count (mono and
stereo mixed). Normal clips vary speed, level and phase; anomalous ones add bearing impulses,
imbalance, frequency drift or rattle at a level a model has to listen for. Same options and
seed, same bytes.

Files: OUT_DIR/<type>/<id_NN>/<normal|anomaly>_<NNNN>.wav (16-bit PCM). OUT_DIR/labels.csv has
columns {",".join(synth.LABEL_COLUMNS)}; its ids are the ones ae-featurize gives the files.
OUT_DIR/{synth.MARKER_NAME} marks the directory as ae-synth's: an existing non-empty directory
without it is refused (exit 2) unless --force. So is a data set of more than
{synth.MAX_CLIPS:,} clips, or with more audio than the free space where it goes.

--layout dcase2020 names the same clips as DCASE 2020 Task 2 does:
OUT_DIR/<type>/train/normal_id_NN_<8 digits>.wav (normal clips only) and
OUT_DIR/<type>/test/<normal|anomaly>_id_NN_<8 digits>.wav (every anomalous clip and as many
normal ones, at least one normal clip staying in train). labels.csv then has the columns
ae-labels --preset dcase2020 parses from the ids (machine_id 00, machine fan_id_00, split,
label, anomaly, clip) followed by anomaly_kind, sample_rate, channels.

--layout dcase2023 makes the DCASE 2021-2025 domain-shift protocol's data: each machine id is
a section (section_00, section_01, ...) recorded in a source domain and in a target domain that
runs at another speed (70-80 % or 125-140 % of the source's; the attribute spd_<percent>).
OUT_DIR/<type>/train/section_NN_<source|target>_train_normal_<4 digits>_spd_<P>.wav holds the
normal training clips, 1 % of them (at least one) in the target domain as DCASE's 990:10, and
OUT_DIR/<type>/test/section_NN_<domain>_test_<normal|anomaly>_<4 digits>_spd_<P>.wav every
anomalous clip and as many normal ones, half in each domain. labels.csv has the columns
ae-labels --preset dcase2021 parses from the ids (section, machine, domain, split, label,
anomaly, clip, attributes, spd) followed by anomaly_kind, sample_rate, channels.

\b
Example:
  ae-synth data/demo
  ae-synth data/small --clips-per-machine 10 --machine-types fan,pump --duration 2
  ae-featurize data/demo -o features.h5
  ae-synth data/dcase --layout dcase2020 && ae-featurize data/dcase -o dcase.h5
  ae-labels dcase.h5 --preset dcase2020 -o labels.csv
  ae-synth data/dcase23 --layout dcase2023 && ae-featurize data/dcase23 -o d23.h5

\b
See also: ae-featurize, ae-labels, ae-split, ae-train, ae-eval.
"""


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _names(choices: tuple[str, ...]):
    """Callback: a comma-separated list of names from ``choices``, without repeats."""
    def parse(ctx, param, value: str) -> tuple[str, ...]:
        names = _split_list(value)
        if not names:
            raise click.BadParameter(f"give at least one of: {', '.join(choices)}")
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise click.BadParameter(f"unknown: {', '.join(unknown)}; choose from {', '.join(choices)}")
        if len(set(names)) != len(names):
            raise click.BadParameter(f"repeated name in {value!r}")
        return tuple(names)
    return parse


def _sample_rates(ctx, param, value: str) -> tuple[int, ...]:
    try:
        rates = tuple(int(v) for v in _split_list(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of whole numbers (Hz)") from None
    if not rates or any(not 8000 <= r <= 192000 for r in rates):
        raise click.BadParameter(f"{value!r}: give rates from 8000 to 192000 Hz")
    return rates


_FORMATS = {"wav": ("wav",), "flac": ("flac",), "mixed": ("wav", "flac")}


@common.command("ae-synth", help=HELP)
@click.argument("out_dir", type=common.OutputPath(file_okay=False))
@click.option("--clips-per-machine", type=click.IntRange(min=1),
              default=synth.DEFAULT_CLIPS_PER_MACHINE, show_default=True,
              help="Clips per machine, normal and anomalous together.")
@click.option("--machine-types", default=",".join(synth.MACHINE_TYPES), show_default=True,
              callback=_names(synth.MACHINE_TYPES), help="Comma-separated machine types.")
@click.option("--ids-per-type", type=click.IntRange(min=1), default=synth.DEFAULT_IDS_PER_TYPE,
              show_default=True, help="Machines (id_00, id_01, ...) per type.")
@click.option("--anomaly-fraction", type=common.FiniteFloatRange(0.0, 1.0, max_open=True),
              default=synth.DEFAULT_ANOMALY_FRACTION, show_default=True,
              help="Share of each machine's clips that are anomalous, in [0, 1).")
@click.option("--anomaly-kinds", default=",".join(synth.ANOMALY_KINDS), show_default=True,
              callback=_names(synth.ANOMALY_KINDS), help="Comma-separated anomaly kinds to cycle through.")
@click.option("--duration", type=common.FiniteFloatRange(0.05, 600.0), default=synth.DEFAULT_DURATION,
              show_default=True, help="Clip length in seconds.")
@click.option("--sample-rates", default=",".join(map(str, synth.DEFAULT_SAMPLE_RATES)),
              show_default=True, callback=_sample_rates,
              help="Comma-separated sample rates (Hz), assigned to machines in turn.")
@common.seed_option(default=synth.DEFAULT_SEED)
@click.option("--format", "fmt", type=click.Choice(sorted(_FORMATS)), default="wav", show_default=True,
              help="Audio files: wav, flac, or mixed (alternating within each machine).")
@click.option("--layout", type=click.Choice(synth.LAYOUTS), default="default", show_default=True,
              help="File names: <type>/<id_NN>/..., DCASE 2020's <type>/<train|test>/..., or DCASE "
                   "2023's sections with source and target domains (see above).")
@click.option("--force", is_flag=True,
              help=f"Write into an existing non-empty directory that ae-synth did not make "
                   f"(without it, one lacking the {synth.MARKER_NAME} file ae-synth leaves is "
                   "refused).")
@common.verbosity_options
def cli(out_dir, clips_per_machine, machine_types, ids_per_type, anomaly_fraction, anomaly_kinds,
        duration, sample_rates, seed, fmt, layout, force):
    if seed < 0:
        common.fail_usage(f"--seed must be >= 0, got {seed}")
    from aekit.system.fileio import atomic_dir

    # Before anything is made: someone else's directory, or more audio than fits.
    synth.check_out_dir(out_dir, force)
    synth.check_size(out_dir, clips_per_machine, machine_types, ids_per_type, duration,
                     sample_rates, seed)

    total = len(machine_types) * ids_per_type * clips_per_machine
    # Written to a temporary directory next to OUT_DIR and moved into place when complete.
    with common.progress(total, "ae-synth", unit="clips") as advance, atomic_dir(out_dir) as tmp:
        labels = synth.generate(
            tmp, n_per_machine=clips_per_machine, machine_types=machine_types,
            ids_per_type=ids_per_type, anomaly_fraction=anomaly_fraction, duration=duration,
            sample_rates=sample_rates, seed=seed, formats=_FORMATS[fmt], progress=advance,
            anomaly_kinds=anomaly_kinds, layout=layout, force=True)  # OUT_DIR checked above
    n_anomalous = int(labels["anomaly"].sum())
    common.LOG.info("wrote %d clips (%d normal, %d anomalous) of %d machines; labels: %s",
                    len(labels), len(labels) - n_anomalous, n_anomalous,
                    len(machine_types) * ids_per_type, os.path.join(out_dir, synth.LABELS_NAME))


def main() -> None:
    common.run(cli, "ae-synth")


if __name__ == "__main__":
    main()
