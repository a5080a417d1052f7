"""ae-train: train the tutorial's autoencoder (baseline or improved) on a features file."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

import click

from aekit.cmds import common
from aekit.models import registry
from aekit.train import settings as S
from aekit.errors import InputError

HELP = """Train an autoencoder on FEATURES (an HDF5 file from ae-featurize) and write one
model file (safetensors: weights, architecture, feature parameters, normalization,
history, seed, versions).

\b
Defaults train stably (input normalization, balanced batches, learning-rate warm-up,
best validation epoch kept). With a validation fold (--splits, --fold) the validation
loss decides the epochs: at most --epochs 100, stopped after --early-stop 10 epochs
without a better validation loss, the learning rate halved after 3 such epochs
(--schedule plateau). Without one, a fixed 20 epochs with cosine decay. --preset
tutorial is the tutorial exactly (raw dB, Adam lr 1e-3 constant, batch 25, 20 epochs,
last epoch kept, no early stop). Losses are MSE in dB squared either way.

\b
On a terminal, a progress bar per epoch; otherwise (a batch log) one line per epoch
with the date and time, losses, learning rate, units per second and elapsed time.

\b
Checkpoints go to OUTPUT.ckpt/ (--checkpoint-dir): last.pt (resumable, every epoch
and on SIGTERM/SIGUSR1, after which the exit status is 3) and best.pt (lowest
validation loss). --resume continues from last.pt, bit for bit on CPU. A run owns its
checkpoint folder (it holds .ae-train.lock there): a second run on the same folder exits 1.
Under torchrun or srun (SLURM_PROCID/SLURM_NTASKS + MASTER_ADDR/MASTER_PORT) it runs
as DistributedDataParallel; --batch-size is per process.

\b
Example:
  ae-train feats.h5 --splits splits.csv --fold 0 --labels labels.csv \\
      --where 'anomaly == 0' --log train.csv -o model.safetensors
  torchrun --nproc-per-node 4 -m aekit.cmds.train -- feats.h5 --log train.csv \\
      -o model.safetensors     # '--': torchrun would take --log for its --log-dir

\b
See also: ae-featurize, ae-split, ae-encode, ae-eval.
"""

#: Set by the test suite: the process sends itself SIGTERM after this global step.
SIGTERM_AT_STEP_ENV = "AEKIT_TRAIN_SIGTERM_AT_STEP"


def _widths(ctx, param, value):
    if value is None:
        return None
    try:
        widths = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not widths or any(w <= 0 for w in widths):
        raise click.BadParameter(f"expected positive widths, got {value!r}")
    return widths


def _widths_text(h) -> str:
    return ",".join(map(str, h))


#: Help of the options whose text names the model kinds, made when the parameters are built.
_KIND_HELP = {
    "arch": lambda: "; ".join(f"{k}: {e.help}" for k, e in registry.kinds().items()) + ".",
    "hidden": lambda: "Hidden layer widths, encoder side (the decoder mirrors them) "
                      f"[{S.defaults_help('hidden', _widths_text)}].",
    "latent": lambda: f"Bottleneck width [{S.defaults_help('latent')}].",
    "epochs": lambda: "Epochs: the number run without a validation fold "
                      f"[{S.defaults_help('epochs')}], the maximum with one "
                      f"[{S.WITH_VALIDATION['epochs']}].",
    "batch_size": lambda: "Units (clips, or windows for frames and interp) per step, per process "
                          f"[{S.defaults_help('batch_size')}].",
    "lr": lambda: f"Adam learning rate (schedule peak) [{S.defaults_help('lr', '{:g}'.format)}].",
}


def _kind_options() -> list[click.Option]:
    """Every model kind's own options (``ModelKind.options``, e.g. --context), made without
    naming a kind; their values reach the command in ``kind_options``."""
    seen: dict = {}
    for entry in registry.kinds().values():
        for name, opt in entry.options.items():
            seen.setdefault(name, []).append((entry, opt))
    out = []
    for name, pairs in seen.items():
        helps = " ".join(dict.fromkeys(o.help for _, o in pairs))  # each kind's own words once
        shown = "; ".join(dict.fromkeys(str(e.default(name)) for e, _ in pairs))
        out.append(click.Option([f"--{name.replace('_', '-')}", name],
                                type=click.IntRange(min=min(o.min for _, o in pairs)),
                                default=None, help=f"{helps} [{shown}]"))
    return out


class _TrainCommand(common.AeCommand):
    """ae-train reads the model kinds (aekit.models.registry: --arch's choices, the kinds' own
    options, the defaults in the help) when click builds its parameters (parsing, --help), not
    when this module is imported: finding the kinds imports torch. Built again when a kind was
    registered since."""

    _kinds_seen: tuple = ()
    _kind_params: tuple = ()

    def get_params(self, ctx):
        self._sync_kinds()
        return super().get_params(ctx)

    def _sync_kinds(self) -> None:
        kinds = registry.kinds()
        seen = tuple((k, id(e)) for k, e in kinds.items())
        if seen == self._kinds_seen:
            return
        by_name = {p.name: p for p in self.params}
        for name, text in _KIND_HELP.items():
            by_name[name].help = text()
        by_name["arch"].type = click.Choice(list(kinds))
        params = [p for p in self.params if p not in self._kind_params]
        new = _kind_options()
        clash = {p.name for p in new} & {p.name for p in params}
        if clash:  # a third-party kind's option: one line, not a traceback
            raise InputError(f"a model kind's own option is named like an ae-train option "
                             f"({', '.join(sorted(clash))}): rename it in its register call")
        at = params.index(by_name["latent"]) + 1
        self.params = params[:at] + new + params[at:]
        self._kind_params, self._kinds_seen = tuple(new), seen


@contextlib.contextmanager
def stop_signals():
    """Yield a 'stop requested?' callable set by SIGTERM or SIGUSR1 (SLURM preemption)."""
    state = {"signal": None}

    def handler(signum, frame):
        state["signal"] = signum

    sigs = [signal.SIGTERM] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in sigs:
            old[sig] = signal.signal(sig, handler)
    try:
        yield lambda: state["signal"] is not None
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _self_sigterm_hook():
    at = os.environ.get(SIGTERM_AT_STEP_ENV)
    if not at:
        return None
    at_step = int(at)

    def on_step(step: int) -> None:
        if step == at_step:
            os.kill(os.getpid(), signal.SIGTERM)

    return on_step


@common.command("ae-train", help=HELP, cls=_TrainCommand)
@click.argument("features", type=common.RegularFile("a features file"))
@common.output_option(required=True, allow_dash=False, binary="a model file",
                      help="Model file to write (.safetensors, atomically).")
@click.option("--preset", type=click.Choice(list(S.PRESETS)), default="default",
              show_default=True,
              help="default: stable training; tutorial: the tutorial's exact settings. "
                   "Options given explicitly override the preset.")
# --arch's choices and the help of the options below naming kinds: _TrainCommand.
@click.option("--arch", type=str, default=S.default_of("arch"), show_default=True)
@click.option("--hidden", callback=_widths, default=None)
@click.option("--latent", type=click.IntRange(min=1), default=None)
@click.option("--epochs", type=click.IntRange(min=1), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=float, default=None)
@click.option("--normalize", type=click.Choice(S.NORM_MODES), default=None,
              help="Input normalization fitted on training rows [default: global; tutorial: none].")
@click.option("--schedule", type=click.Choice(S.SCHEDULES), default=None,
              help="Learning rate schedule: plateau halves it after 3 epochs without a better "
                   "validation (or, without one, training) loss [default: cosine with warm-up, "
                   f"{S.WITH_VALIDATION['schedule']} with a validation fold; tutorial: constant].")
@click.option("--warmup", type=common.FiniteFloatRange(min=0), default=None,
              help=f"Epochs of linear learning-rate warm-up (cosine, plateau) "
                   f"[{S.default_of('warmup'):g}].")
@click.option("--balanced-batches/--no-balanced-batches", default=None,
              help="Equal batch sizes instead of a small last batch [default: on; tutorial: off].")
@click.option("--precision", type=click.Choice(S.PRECISIONS), default=None,
              help="bf16: autocast matmuls to bfloat16 where supported [fp32].")
@common.splits_option(help="Split CSV from ae-split (columns id,split,fold); test rows are never used.")
@common.fold_option(help="Validation fold K: train on the other train folds, validate on fold K.")
@common.labels_option
@common.where_option
@click.option("--early-stop", type=click.IntRange(min=0), default=None,
              help="Stop after N epochs without a better validation loss; 0: never "
                   f"[{S.WITH_VALIDATION['early_stop']} with a validation fold; tutorial: never].")
@click.option("--keep", type=click.Choice(S.KEEP), default=None,
              help="Weights in the model file: best validation epoch, or last [default: best; "
                   "tutorial: last].")
@click.option("--log", "log_path", type=common.OutputPath(dir_okay=False), default=None,
              help="CSV log: epoch,train_loss,val_loss,lr,seconds,samples_per_s "
                   "(rewritten each epoch).")
@click.option("--resume", is_flag=True,
              help="Continue from OUTPUT.ckpt/last.pt (error if missing).")
@click.option("--checkpoint-dir", type=common.OutputPath(file_okay=False), default=None,
              help="Checkpoint folder [OUTPUT.ckpt].")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Write last.pt every N epochs (and always on a stop signal).")
@click.option("--data", "data_mode", type=click.Choice(S.DATA_MODES),
              default="auto", show_default=True,
              help="auto: load into memory when under 25%% of RAM, else stream from HDF5.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Streaming: blocks of 256 clips read ahead on a background thread while "
                   "the step runs (0: read them in the training loop).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads of this process. Default: AEKIT_THREADS, else the cores "
                   "it may use (CPU affinity, SLURM_CPUS_PER_TASK) divided by the jobs run at "
                   "once (AEKIT_JOBS, else make's -jN): N models trained at once do not "
                   "oversubscribe the cores.")
@common.seed_option()
@common.device_option
@common.verbosity_options
def cli(features, output, preset, arch, hidden, latent, epochs, batch_size, lr, normalize,
        schedule, warmup, balanced_batches, precision, splits_path, fold, labels_path, where,
        early_stop, keep, log_path, resume, checkpoint_dir, checkpoint_every, data_mode, workers,
        threads, seed, device, **kind_options):
    from aekit.system import hostmem
    from aekit.train import loop as tr  # torch is imported here, not at --help
    from aekit.train.distributed import distributed
    from aekit.system.device import resolve_device
    from aekit.system.fileio import null_progress

    settings = S.make_settings(
        preset, validation=fold is not None,
        arch=arch, hidden=hidden, latent=latent, epochs=epochs, batch_size=batch_size,
        lr=lr, normalize=normalize, schedule=schedule, warmup=warmup,
        balanced_batches=balanced_batches, precision=precision, early_stop=early_stop,
        keep=keep, seed=seed,
        model_options=kind_options)
    if fold is not None and splits_path is None:
        raise InputError("--fold needs --splits")
    from aekit.train.checkpoint import CHECKPOINT_FILES, checkpoint_dir_for
    from aekit.system.fileio import check_writable

    # The files written inside the checkpoint directory are outputs too: none may be an
    # input (features, --splits, --labels) or another output (--log OUT.ckpt/last.pt).
    ckdir = checkpoint_dir if checkpoint_dir else checkpoint_dir_for(output)
    common.check_no_clobber(click.get_current_context(), [
        ("checkpoint", os.path.join(ckdir, name))
        for name in CHECKPOINT_FILES])
    check_writable(output, "-o/--output")
    if log_path is not None:
        check_writable(log_path, "--log")
    if resolve_device(device).type == "cpu":
        # Before torch's first allocation (gloo's and the data's included): 2 MiB pages.
        hostmem.for_cpu_training()
    from aekit.system.threads import apply_threads

    # N processes trained at once share the cores (AEKIT_THREADS, affinity, make -jN).
    n_threads, why = apply_threads(threads)
    common.LOG.info("%d torch thread(s) (%s)", n_threads, "--threads" if why == "given" else why)
    with stop_signals() as stop_requested, distributed(device) as (dist, dev):
        if not dist.is_main:
            common.LOG.setLevel("WARNING")  # one process reports
        try:
            result = tr.train(
                features, output, settings, splits=splits_path, fold=fold, labels=labels_path,
                where=where, device=dev, dist=dist, resume=resume, log=log_path,
                checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                data_mode=data_mode, workers=workers, stop_requested=stop_requested,
                on_step=_self_sigterm_hook(),
                # Per-step bars on a terminal; a batch log gets end_epoch's line per epoch.
                progress=(common.progress if dist.is_main and common.stderr_is_terminal()
                          else null_progress),
                meta={"command": common.command_line()})
            # The model file is in place: the job is complete. A signal from now on (the
            # process group's teardown, the interpreter's exit) is reported, exit status 0.
            common.output_complete()
        except tr.Preempted as exc:
            common.LOG.warning("stopped at epoch %d step %d; checkpoint %s; run again with "
                               "--resume to continue", exc.epoch, exc.step, exc.checkpoint)
            sys.stdout.flush()
            raise SystemExit(S.EXIT_PREEMPTED) from None
    if stop_requested():  # after the last epoch's stop check: the model was completed
        common.LOG.warning("a stop signal arrived after the last epoch; the model is complete")
    last = result.history[-1] if result.history else {}
    common.LOG.info("Done: %d epochs, final train loss %.4g%s dB^2; wrote %s (%s weights)",
                    len(result.history), last.get("train_loss", float("nan")),
                    "" if result.best_val_loss is None
                    else f", best val loss {result.best_val_loss:.4g} at epoch {result.best_epoch}",
                    output, result.weights)


def main() -> None:
    # torchrun's own parser rejects script options that abbreviate its options (--log is a
    # prefix of --log-dir), so under torchrun the script's arguments follow a '--';
    # Pythons that keep that '--' in the script's argv would hand it to click: drop it.
    if len(sys.argv) > 1 and sys.argv[1] == "--":
        del sys.argv[1]
    common.run(cli, "ae-train")


if __name__ == "__main__":
    main()
