"""What every ``ae-*`` command shares: options, logging, progress, errors, exit codes.

Exit codes (documented in the README):
  0  success (also when the reader of stdout goes away early, as with ``| head``)
  1  runtime or data error (too many bad inputs, NaN loss, ...)
  2  usage error or bad input (missing file, bad option value, missing column, ...)
  3  ae-train only: stopped by SIGTERM/SIGUSR1 after writing a resumable checkpoint
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import click

from aekit.errors import AekitError

LOG = logging.getLogger("aekit")

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class CommandError(click.ClickException):
    """An expected failure: printed as one line ``prog: error: message``, no traceback."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
        self.prog = _prog_name()  # now, while the click context is still current

    def show(self, file=None) -> None:
        click.echo(f"{self.prog}: error: {self.format_message()}", err=True)


def _prog_name() -> str:
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().info_name:
        return ctx.find_root().info_name
    return os.path.basename(sys.argv[0]) or "aekit"


class AeCommand(click.Command):
    """click.Command that turns library errors into one-line messages with our exit codes."""

    def make_context(self, info_name, args, parent=None, **extra):
        line = shlex.join([info_name or self.name or "", *args])
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["aekit.command_line"] = line
        return ctx

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AekitError as exc:
            raise CommandError(str(exc), exit_code=exc.exit_code) from None
        except BrokenPipeError:
            _quiet_stdout()
            raise SystemExit(0) from None  # the reader had enough (| head): not an error
        except MemoryError:
            raise CommandError("out of memory; try a smaller --batch-size or --block-size") from None


def command(name: str, **kwargs):
    """Decorator for an ae-* command: our Command class, -h/--help, shared context settings."""
    kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
    return click.command(name, cls=AeCommand, **kwargs)


def run(cli: click.Command, prog_name: str) -> None:
    """Console-script entry point: run ``cli``; a closed stdout (``| head``) is not an error."""
    try:
        cli.main(prog_name=prog_name)
    except BrokenPipeError:  # raised by the final flush, after the command returned
        _quiet_stdout()
        sys.exit(0)


def _quiet_stdout() -> None:
    """The reader of stdout went away: send what is left to /dev/null so that the
    interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced (tests) or closed
        pass


# --------------------------------------------------------------------------- logging

def verbosity_options(f: Callable) -> Callable:
    """-q/--quiet and -v/--verbose, and logging set up before the command body runs."""

    @click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
    @click.option("-v", "--verbose", is_flag=True, help="Debug messages on stderr.")
    @functools.wraps(f)
    def wrapper(*args, quiet: bool, verbose: bool, **kwargs):
        setup_logging(quiet=quiet, verbose=verbose)
        LOG.info("%s", command_line())
        return f(*args, **kwargs)

    return wrapper


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Log records of the 'aekit' logger to the current stderr: rich on a terminal, plain lines otherwise."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    for h in list(LOG.handlers):
        LOG.removeHandler(h)
    prog = _prog_name()
    if stderr_is_terminal():
        from rich.console import Console
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            console=Console(stderr=True), show_path=False, show_time=False, markup=False
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{prog}: %(levelname)s: %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(level)
    LOG.propagate = False


def command_line() -> str:
    """The command line as typed (program basename + arguments), for logs and provenance."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and "aekit.command_line" in ctx.meta:
        return ctx.meta["aekit.command_line"]
    argv = [os.path.basename(sys.argv[0])] + sys.argv[1:]
    return shlex.join(argv)


# --------------------------------------------------------------------------- progress

@contextmanager
def progress(total: int | None, description: str, unit: str = "items") -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``: a rich bar on a terminal, a plain log line every ~5% or 10 s otherwise."""
    if not LOG.isEnabledFor(logging.INFO):  # progress shows only with informational messages
        yield lambda n=1: None
        return
    if stderr_is_terminal():
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(),
                      console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
        return

    state = {"done": 0, "last_t": time.monotonic(), "last_frac": 0.0}
    start = time.monotonic()
    step = 0.05

    def advance(n: int = 1) -> None:
        state["done"] += n
        now = time.monotonic()
        frac = state["done"] / total if total else 0.0
        if (total and frac - state["last_frac"] >= step) or now - state["last_t"] >= 10.0:
            state["last_t"], state["last_frac"] = now, frac
            rate = state["done"] / max(now - start, 1e-9)
            of = f"/{total}" if total else ""
            LOG.info("%s: %d%s %s (%.1f %s/s)", description, state["done"], of, unit, rate, unit)

    yield advance


# --------------------------------------------------------------------------- shared options

def output_option(required: bool = False, allow_dash: bool = True, help: str | None = None):
    """-o/--output: a file (written atomically), or '-' for stdout where a stream makes sense."""
    default_help = ("Output file, written atomically; '-' or omitted: stdout."
                    if allow_dash else "Output file (written atomically).")
    kwargs = {} if required else {"default": "-" if allow_dash else None}
    return click.option("-o", "--output", "output", required=required,
                        type=click.Path(dir_okay=False, allow_dash=allow_dash),
                        help=help or default_help, **kwargs)


def seed_option(default: int = 42):
    return click.option("--seed", type=int, default=default, show_default=True,
                        help="Random seed: same inputs + same seed -> identical outputs.")


def device_option(f: Callable) -> Callable:
    return click.option(
        "--device", default="auto", show_default=True,
        help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps.")(f)


def splits_option(help: str = "Split CSV from ae-split (columns id,split,fold)."):
    return click.option("--splits", "splits_path", type=click.Path(dir_okay=False, allow_dash=True),
                        default=None, help=help)


def fold_option(help: str = "Fold number K from the splits file."):
    return click.option("--fold", type=click.IntRange(min=0), default=None, help=help)


def selection_options(f: Callable) -> Callable:
    """--splits/--split/--fold: pick rows of a features file using an ae-split CSV."""
    f = fold_option()(f)
    f = click.option("--split", "split_name",
                     type=click.Choice(["train", "val", "test", "all"]), default=None,
                     help="Which rows: test (split=test), val (train rows of fold K), "
                          "train (train rows not in fold K), all.")(f)
    return splits_option()(f)


def labels_option(f: Callable) -> Callable:
    return click.option("--labels", "labels_path",
                        type=click.Path(dir_okay=False, allow_dash=True), default=None,
                        help="CSV with an 'id' column and label columns, joined by id.")(f)


def where_option(f: Callable) -> Callable:
    """--where EXPR: keep only rows whose --labels match (the safe language of aekit.expr)."""
    return click.option("--where", default=None, metavar="EXPR",
                        help="Keep only rows whose --labels match EXPR, e.g. 'anomaly == 0' or "
                             "\"machine_type == 'fan'\" (comparisons, in, and/or/not).")(f)


def fail_usage(message: str) -> None:
    """Raise a one-line usage error (exit status 2)."""
    raise CommandError(message, exit_code=2)


def mel_options(f: Callable) -> Callable:
    """The feature-parameter options, defined once with the library's defaults (MelParams)."""
    from aekit.features import MelParams

    d = MelParams()
    opts = [
        click.option("--sample-rate", type=click.IntRange(min=1), default=d.sample_rate,
                     show_default=True, help="Resample every clip to this rate (Hz) first."),
        click.option("--num-samples", type=click.IntRange(min=1), default=d.num_samples,
                     show_default=True, help="Clip length at that rate: longer truncated, shorter zero-padded."),
        click.option("--channels", type=click.IntRange(min=1), default=d.channels, show_default=True,
                     help="Channels per clip: fewer are repeated (mono -> stereo), more are cut."),
        click.option("--channel-policy", type=click.Choice(["first", "mix"]), default=d.channel_policy,
                     show_default=True, help="With more channels than asked: keep the first N, or mix down."),
        click.option("--n-fft", type=click.IntRange(min=2), default=d.n_fft, show_default=True,
                     help="FFT size (Hann window of the same length)."),
        click.option("--hop-length", type=click.IntRange(min=1), default=d.hop_length,
                     show_default=True, help="Samples between STFT frames."),
        click.option("--n-mels", type=click.IntRange(min=1), default=d.n_mels, show_default=True,
                     help="Mel bands."),
        click.option("--top-db", type=click.FloatRange(min=0, min_open=True), default=d.top_db,
                     show_default=True, help="Dynamic range kept below each clip's maximum (dB)."),
        click.option("--f-min", type=click.FloatRange(min=0), default=d.f_min, show_default=True,
                     help="Lowest Mel filter edge (Hz)."),
        click.option("--f-max", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Highest Mel filter edge (Hz) [default: sample-rate / 2]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def mel_params_from(kwargs: dict):
    """Pop the mel_options values out of a command's kwargs into a MelParams."""
    from aekit.features import MelParams

    names = ("sample_rate", "num_samples", "channels", "channel_policy", "n_fft", "hop_length",
             "n_mels", "top_db", "f_min", "f_max")
    return MelParams(**{k: kwargs.pop(k) for k in names})


def jobs_option(f: Callable) -> Callable:
    return click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
                        help="Worker processes [default: all available cores].")(f)
