"""ae-encode: the latent code z of every clip, from a trained model and a features file."""

from __future__ import annotations

import click

from aekit.cmds import common

HELP = """Encode clips into latent codes z [N, latent] with a trained autoencoder.

Writes an HDF5 file with /latents (float32 [N, latent]) and /ids, whose attributes record the
model and features it came from (paths and SHA-256 hashes) and the command line. Rows can be
restricted with --splits/--split/--fold, and by their labels with --labels and --where EXPR.
Forward passes only: batched, no gradients, memory flat for any N. Features whose parameters
or clip shape differ from the model's are refused.

\b
Example:
  ae-encode model.safetensors features.h5 -o latents.h5 --splits splits.csv --split test
  ae-encode fan.safetensors features.h5 -o fan.h5 --splits splits.csv --split test \\
      --labels labels.csv --where "machine_type == 'fan'"

\b
See also: ae-train (makes MODEL), ae-featurize (makes FEATURES), ae-eval (scores a model).
"""


@common.command("ae-encode", help=HELP)
@click.argument("model", type=common.RegularFile("a model file"))
@click.argument("features", type=common.RegularFile("a features file"))
@common.output_option(required=True, allow_dash=False,
                      help="Latents HDF5 file to write (atomically).")
@common.selection_options
@common.labels_option
@common.where_option
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Clips per forward pass.")
@common.device_option
@common.verbosity_options
def cli(model: str, features: str, output: str, splits_path: str | None, split_name: str | None,
        fold: int | None, labels_path: str | None, where: str | None, batch_size: int,
        device: str) -> None:
    from aekit.evaluate import evaluation
    from aekit.system.device import resolve_device

    n, total = evaluation.encode_file(model, features, output, splits_path, split_name, fold,
                                     batch_size, resolve_device(device),
                                     command=common.command_line(), progress=common.progress,
                                     labels_path=labels_path, where=where)
    common.LOG.info("Done: %d of %d clips encoded to %s", n, total, output)


def main() -> None:
    common.run(cli, "ae-encode")


if __name__ == "__main__":
    main()
