"""ae-featurize: audio files -> features of one kind (log-Mel dB by default) in one self-describing
HDF5 file."""

from __future__ import annotations

import logging
import sys

import click

from aekit.cmds import common

LOG = logging.getLogger("aekit")

HELP = """Compute features of audio files into one HDF5 file: log-Mel dB by default.

Per clip: decode -> resample to --sample-rate -> fix channels -> truncate or
zero-pad to --num-samples -> the --kind's front end: logmel, a Mel spectrogram;
linear, the STFT power of each bin from --f-min to --f-max -> dB with a --top-db
floor per clip. With the defaults every clip becomes [2, 32, 391], the tutorial's
shape. An option of a parameter the --kind does not have is refused.

INPUTS are audio files and directories (searched recursively by extension), or
'-' alone to read paths from stdin, one per line. Ids are the paths relative to
the inputs' common root (or --root), without extension. A file that cannot be decoded
(or is listed on stdin but missing) is reported, recorded in the output and skipped;
the run fails (exit 1, nothing written) when more than --max-fail-frac of the inputs
failed.

\b
Examples:
  ae-featurize data/ -o feats.h5
  find data -name '*.wav' | ae-featurize - -o feats.h5
  ae-featurize data/ --shard 0/4 -o feats.0.h5   # then: ae-merge feats.*.h5 -o feats.h5

See also: ae-merge, ae-split, ae-train, ae-encode, ae-eval.
"""


@common.command("ae-featurize", help=HELP)
@click.argument("inputs", nargs=-1, required=True, type=common.InputPath(allow_dash=True))
@common.output_option(required=True, allow_dash=False, help="Features file to write (HDF5, atomically).")
@common.feature_options
@common.jobs_option
@click.option("--block-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Clips written to the file at a time.")
@common.audio_input_options("A bad input: record and skip it, or stop at once.")
@click.option("--shard", default=None, metavar="I/N",
              help="Process only the I-th of N deterministic parts (job arrays); join with ae-merge.")
@common.verbosity_options
def cli(inputs, output, jobs, block_size, on_error, max_fail_frac, root, shard, **kwargs):
    from aekit.audio.decode import common_root, discover, make_ids
    from aekit.audio.featurize import available_cpus, parse_shard, shard_indices
    from aekit.data.ingest import featurize

    params = common.feature_params_from(kwargs)
    shard_ix = parse_shard(shard)
    paths = discover(list(inputs), sys.stdin if list(inputs) == ["-"] else None)
    common.check_output_not_among(output, paths)
    ids = make_ids(paths, root if root is not None else common_root(list(inputs), paths))
    jobs = jobs or available_cpus()
    LOG.info("%d input file(s)%s, %d job(s); clip shape %s", len(paths),
             f", shard {shard_ix[0]}/{shard_ix[1]}" if shard else "", jobs, list(params.clip_shape))

    def warn(path: str, reason: str) -> None:
        LOG.warning("%s: %s (skipped)", path, reason)

    n = len(shard_indices(len(paths), shard_ix))
    with common.progress(n, "featurize", unit="files") as advance:
        report = featurize(paths, ids, output, params, jobs=jobs, block_size=block_size,
                           on_error=on_error, max_fail_frac=max_fail_frac, shard=shard_ix,
                           command=common.command_line(), on_failure=warn, progress=advance)
    if report.channels_cut:
        LOG.warning("%d clip(s) had more than %d channel(s): kept the first %d "
                    "(--channel-policy mix mixes them down instead)",
                    report.channels_cut, params.channels, params.channels)
    if report.truncated:
        LOG.warning("%d file(s) end before their header says (truncated body), zero-padded and "
                    "flagged in /truncated: %s", len(report.truncated), ", ".join(report.truncated[:3])
                    + (f" (and {len(report.truncated) - 3} more)" if len(report.truncated) > 3 else ""))
    if report.padded_clips:
        LOG.warning("%d of %d clip(s) are shorter than --num-samples %d (%g s) and were "
                    "zero-padded to it: padding is %.1f%% of all samples written (each clip's "
                    "own length is in /valid_samples)", report.padded_clips, report.written,
                    params.num_samples, params.num_samples / params.sample_rate,
                    100 * report.padded_share)
    LOG.info("Done %d of %d (%d failed) -> %s", report.written, report.total,
             len(report.failures), output)


def main() -> None:
    common.run(cli, "ae-featurize")


if __name__ == "__main__":
    main()
