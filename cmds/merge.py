"""ae-merge: join the shard files of one sharded ae-featurize run into one features file."""

from __future__ import annotations

import logging

import click

from aekit.cmds import common

LOG = logging.getLogger("aekit")

HELP = """Join the shards of one `ae-featurize --shard I/N` job into one features file.

The result equals a single unsharded run: same clips, same order, same per-clip
data and failure records. Shards made with different feature parameters, from a
different input list, or an incomplete set, are refused (exit 2).

\b
Example:
  for i in 0 1 2 3; do ae-featurize data/ --shard $i/4 -o feats.$i.h5; done
  ae-merge feats.0.h5 feats.1.h5 feats.2.h5 feats.3.h5 -o feats.h5

See also: ae-featurize, ae-split.
"""


@common.command("ae-merge", help=HELP)
@click.argument("shards", nargs=-1, required=True, type=common.RegularFile("a features file"))
@common.output_option(required=True, allow_dash=False, help="Merged features file (HDF5, atomically).")
@common.verbosity_options
def cli(shards, output):
    from aekit.data.merge import merge_shards

    n = merge_shards(list(shards), output, command=common.command_line())
    LOG.info("Done: %d clip(s) from %d shard(s) -> %s", n, len(shards), output)


def main() -> None:
    common.run(cli, "ae-merge")


if __name__ == "__main__":
    main()
