"""What every ``ae-*`` command shares: options, logging, progress, errors, exit codes.

Exit codes (documented in the README):
  0  success (also when the reader of stdout goes away early, as with ``| head``)
  1  runtime or data error (too many bad inputs, NaN loss, ...)
  2  usage error or bad input (missing file, bad option value, missing column, ...)
  3  ae-train only: stopped by SIGTERM/SIGUSR1 after writing a resumable checkpoint
  128+N  stopped by signal N (130 Ctrl-C/SIGINT, 129 SIGHUP, 143 SIGTERM): temporaries removed
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import click

from aekit import __version__
from aekit.errors import AekitError

LOG = logging.getLogger("aekit")
STAMP_ATTR = "aekit_stamp"  # aekit.system.fileio.LOG_STAMP's key

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class CommandError(click.ClickException):
    """An expected failure: printed as one line ``prog: error: message``, no traceback."""

    def __init__(self, message: str, exit_code: int = 1, prog: str | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.prog = prog or _prog_name()  # now, while the click context is still current

    def show(self, file=None) -> None:
        click.echo(f"{self.prog}: error: {self.format_message()}", err=True)


class Stopped(CommandError):
    """Stopped by a signal: ``prog: interrupted`` (Ctrl-C), ``prog: terminated (SIGTERM)``."""

    def show(self, file=None) -> None:
        click.echo(f"{self.prog}: {self.format_message()}", err=True)


class Terminated(BaseException):
    """Raised by the SIGTERM/SIGHUP handler, so that cleanup (``finally``, temporary files)
    runs as it does for Ctrl-C. A BaseException: ``except Exception`` does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _prog_name() -> str:
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().info_name:
        return ctx.find_root().info_name
    return os.path.basename(sys.argv[0]) or "aekit"


class AeCommand(click.Command):
    """click.Command that turns library errors into one-line messages with our exit codes.

    Parser errors too (bad option value, missing option): one line ``prog: error: ...``,
    exit 2, instead of click's Usage/Try/Error block. Before the body runs, no output may
    name an input or another output (:func:`check_no_clobber`).
    """

    def get_params(self, ctx: click.Context) -> list:
        if getattr(self.callback, "aekit_feature_options", False):
            refresh_feature_options(self)  # kinds registered since the command was built
        return super().get_params(ctx)

    def make_context(self, info_name, args, parent=None, **extra):
        line = shlex.join([info_name or self.name or "", *args])
        prog = info_name or self.name or _prog_name()
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise CommandError(_one_line(exc.format_message()), exit_code=2, prog=prog) from None
        except AekitError as exc:  # a parameter type's check (e.g. not a regular file)
            raise CommandError(describe_error(exc, click.Context(self)), exit_code=exc.exit_code,
                               prog=prog) from None
        except (KeyboardInterrupt, Terminated) as exc:  # while parsing (and its imports)
            raise _stopped(exc, prog) from None
        ctx.meta["aekit.command_line"] = line
        return ctx

    def invoke(self, ctx: click.Context):
        global _HARD_EXIT
        _SIG["complete"] = False
        try:
            check_no_clobber(ctx)
            result = super().invoke(ctx)
            output_complete()  # a signal from now on finds the work done (teardown)
            if _SIG["raised"] is not None and not _SIG["stopping"]:  # swallowed on its way
                _SIG["late"] = _SIG["late"] or _signum(_SIG["raised"])
                _write_stderr(f"{_prog_name()}: warning: {signal.Signals(_SIG['late']).name} "
                              "was swallowed by a library; the output is complete (exit status 0)\n")
            return result
        except AekitError as exc:
            from aekit.system.fileio import WriteError

            if isinstance(exc, WriteError):
                _HARD_EXIT = True  # h5py may be left in a state that crashes at shutdown
            raise CommandError(describe_error(exc, ctx), exit_code=exc.exit_code) from None
        except BrokenPipeError:
            _quiet_stdout()
            raise SystemExit(0) from None  # the reader had enough (| head): not an error
        except MemoryError:
            raise CommandError("out of memory; try a smaller --batch-size or --block-size") from None
        except (KeyboardInterrupt, Terminated) as exc:
            raise _stopped(exc) from None
        except PermissionError as exc:
            from aekit.system.fileio import describe_os_error

            raise CommandError(describe_os_error(exc), exit_code=2) from None
        except OSError as exc:
            from aekit.system.fileio import describe_os_error, write_errno

            if write_errno(exc) is None:
                raise
            _HARD_EXIT = True
            # A failed write on an open stream carries no file name: name the output.
            name = None if exc.filename is not None else _unnamed_output(ctx)
            raise CommandError(describe_os_error(exc, name), exit_code=1) from None


def describe_error(exc: AekitError, ctx: click.Context | None) -> str:
    """A library error in the command's words: its ``param`` (a Python name, ``batch_size``)
    shown as the command's own flag (``--batch-size``), or as itself when the command has no
    such parameter (a name read from a file, a model's config field)."""
    param = getattr(exc, "param", None)
    if not param:
        return str(exc)
    command = ctx.command if ctx is not None else None
    for p in (command.params if command is not None else ()):
        if p.name == param:
            return f"{_flag(p)}: {exc.message}"
    return str(exc)


def _unnamed_output(ctx: click.Context) -> str:
    """What a failed write without a file name was writing: ``<stdout>`` when the command
    writes there, else its one output file ("output" when that is not clear)."""
    outs = [os.fspath(v) for p in ctx.command.params if isinstance(p.type, OutputPath)
            for v in _values(ctx.params.get(p.name))]
    if "-" in outs:
        return "<stdout>"
    return outs[0] if len(outs) == 1 else "output"


def _values(value) -> tuple:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


# --------------------------------------------------------------------------- paths

class InputPath(click.Path):
    """Every path option and argument of every command is this type or a subclass: an empty
    path is a usage error (it would mean the current directory), and so is a path ending in
    '/' where a file is meant (``dir_okay=False``); a directory may end in '/'."""

    def convert(self, value, param, ctx):
        text = os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else str(value)
        if text == "":
            self.fail("empty path", param, ctx)
        if not self.dir_okay and text != "-" and text.endswith(("/", os.sep)):
            self.fail(f"{text!r} ends in '/': a directory, expected a file name", param, ctx)
        return super().convert(value, param, ctx)


class OutputPath(InputPath):
    """A path the command writes. Outputs are checked against inputs and each other
    (:func:`check_no_clobber`). With ``refuse_dash`` (the reason, e.g. "HDF5 cannot be
    written to stdout"), '-' is a usage error instead of a file literally named '-'.

    An existing device, FIFO or /dev/stdout is written in place (text outputs) or, with
    ``regular_only`` (HDF5, model files: they need a seekable regular file), refused."""

    def __init__(self, *args, refuse_dash: str | None = None, regular_only: bool = False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.refuse_dash = refuse_dash
        self.regular_only = regular_only

    def convert(self, value, param, ctx):
        if self.refuse_dash and str(value) == "-":
            self.fail(f"{self.refuse_dash}; give a file name", param, ctx)
        value = super().convert(value, param, ctx)
        if self.file_okay and str(value) != "-":
            from aekit.system.fileio import check_regular_output, output_target

            if self.regular_only:
                check_regular_output(value, _flag(param) if param is not None else "output")
            else:
                output_target(value)  # a dangling symbolic link or a directory: refused now
        return value


class RegularFile(InputPath):
    """An input that must be a regular, readable file (HDF5, model): a FIFO, a device, a
    directory or an unreadable file is refused before any work, in one line."""

    def __init__(self, what: str = "input", **kwargs):
        kwargs.setdefault("dir_okay", False)
        super().__init__(**kwargs)
        self.what = what

    def convert(self, value, param, ctx):
        from aekit.system.fileio import check_regular_file

        value = super().convert(value, param, ctx)
        if os.path.lexists(value):
            check_regular_file(value, self.what)
        return value


def _flag(param: click.Parameter) -> str:
    if isinstance(param, click.Argument):
        return param.human_readable_name
    return "/".join(param.opts)


def _same(a: str, b: str) -> bool:
    """Same file: os.path.samefile where both exist (symlinks, hard links, other
    spellings), else the same resolved path."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _stdin_is(path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(sys.stdin.fileno()), os.stat(path))
    except (OSError, ValueError, AttributeError):  # no real stdin (tests), or no such path
        return False


def check_no_clobber(ctx: click.Context, extra_outputs=()) -> None:
    """Refuse (exit 2, before any work) an output that names an input of the same command,
    or another output: same file by os.path.samefile (through symlinks, hard links or
    another spelling), stdin redirected from it included. Inputs are every path parameter
    that is not an :class:`OutputPath`; ``extra_outputs`` are (what, path) pairs of the files
    a command writes inside its output directories (ae-train's checkpoints, ae-eval's
    plots). The inputs are also registered with aekit.system.fileio, whose stale-temporary cleanup
    never removes one."""
    from aekit.system.fileio import register_inputs

    inputs: list[tuple[str, str]] = []
    outputs: list[tuple[str, str]] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or not isinstance(param.type, click.Path):
            continue
        for v in (value if isinstance(value, (tuple, list)) else (value,)):
            v = os.fspath(v)
            (outputs if isinstance(param.type, OutputPath) else inputs).append((_flag(param), v))
    outputs += [(what, os.fspath(p)) for what, p in extra_outputs]
    register_inputs(inp for _, inp in inputs)
    for i, (oflag, out) in enumerate(outputs):
        if out == "-":
            continue
        for iflag, inp in inputs:
            if (inp == "-" and _stdin_is(out)) or (inp != "-" and os.path.exists(inp) and _same(out, inp)):
                where = "stdin" if inp == "-" else f"input {iflag} {inp}"
                raise CommandError(f"{oflag} {out} is the same file as {where}: refusing to "
                                   "overwrite an input; choose another output", exit_code=2)
        for oflag2, out2 in outputs[i + 1:]:
            if out2 != "-" and _same(out, out2):
                raise CommandError(f"{oflag} and {oflag2} name the same file ({out}); "
                                   "give each output its own", exit_code=2)


def check_output_not_among(output, paths, flag: str = "-o/--output") -> None:
    """Refuse (exit 2) an output that is one of the input files found inside directories or
    listed on stdin (check_no_clobber sees only the paths given as arguments)."""
    from aekit.system.fileio import register_inputs

    paths = list(paths)
    register_inputs(paths)  # never removed as a stale temporary either
    if output is None or str(output) == "-" or not os.path.exists(output):
        return  # an input exists: an output that does not is none of them
    st = os.stat(output)
    for p in paths:
        try:
            same = os.path.samestat(st, os.stat(p))
        except OSError:
            continue
        if same:
            raise CommandError(f"{flag} {output} is the same file as input {p}: refusing to "
                               "overwrite an input; choose another output", exit_code=2)


def command(name: str, **kwargs):
    """Decorator for an ae-* command: our Command class, -h/--help, --version, shared settings."""
    kwargs.setdefault("context_settings", CONTEXT_SETTINGS)

    def decorate(f: Callable) -> click.Command:
        f = click.version_option(__version__, "--version", prog_name=name,
                                 message="%(prog)s (aekit) %(version)s",
                                 help="Show the version and exit.")(f)
        return click.command(name, **{"cls": AeCommand, **kwargs})(f)  # cls: a subclass

    return decorate


#: Set when a write failed: h5py can be left in a state that crashes the interpreter's
#: shutdown, so run() ends the process at once (after the message, temporaries removed).
_HARD_EXIT = False


def run(cli: click.Command, prog_name: str) -> None:
    """Console-script entry point: run ``cli``; a closed stdout (``| head``) is not an error.

    SIGTERM and SIGHUP end the command like Ctrl-C does (cleanup runs, temporaries are
    removed), with status 128 + the signal number and one line; forked workers exit
    quietly. See :func:`install_signal_handlers` for when a signal takes effect.
    """
    global _HARD_EXIT
    _HARD_EXIT = False
    _SIG.update(raised=None, stopping=False, complete=False, late=None, prog=prog_name,
                deferred={}, armed=None)
    install_signal_handlers()
    sys.unraisablehook = _unraisable
    sys.excepthook = _excepthook
    for stream, errors in ((sys.stdout, "strict"), (sys.stdin, "surrogateescape")):
        with contextlib.suppress(AttributeError, ValueError, OSError):  # CSV out is UTF-8 always;
            stream.reconfigure(encoding="utf-8", errors=errors)  # stdin lists: any file name
    try:
        cli.main(prog_name=prog_name)
    except BrokenPipeError:  # raised by the final flush, after the command returned
        _quiet_stdout()
        sys.exit(0)
    except OSError as err:  # e.g. --version's own flush into a full stdout
        from aekit.system.fileio import write_errno

        if write_errno(err) is None:
            raise
        exit_ = SystemExit(1)
        _stdout_failed(write_errno(err), prog_name, exit_)
        raise exit_ from None
    except (KeyboardInterrupt, Terminated) as exc:  # outside the command's own handling
        _stopped(exc, prog_name).show()
        sys.exit(128 + _signum(exc))
    except SystemExit as exc:
        try:
            _flush_stdout(exc, prog_name)
        except (KeyboardInterrupt, Terminated) as stop:  # while the last bytes were flushed
            _quiet_stdout()
            _stopped(stop, prog_name).show()
            exc = SystemExit(128 + _signum(stop))
        if _SIG["complete"] and exc.code in (0, None):
            # What is left is the interpreter's exit, which resets the handlers to the
            # default (a late SIGTERM would then kill the finished command): ignore them.
            for name in ("SIGTERM", "SIGHUP", "SIGINT"):
                sig = getattr(signal, name, None)
                if sig is not None and signal.getsignal(sig) not in (None, signal.SIG_IGN):
                    signal.signal(sig, signal.SIG_IGN)
        if _HARD_EXIT:
            code = exc.code if isinstance(exc.code, int) else 1
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)
        raise exc


def _flush_stdout(exc: SystemExit, prog_name: str) -> None:
    """Flush stdout now (--version, the last rows): a failed write (a full disk, /dev/full)
    is one line and exit 1, not a silent failure in the interpreter's final flush."""
    from aekit.system.fileio import write_errno

    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    except OSError as err:
        code = write_errno(err)
        if code is None:
            raise
        _stdout_failed(code, prog_name, exc)
    except (ValueError, AttributeError):  # closed or replaced stdout
        pass


def _stdout_failed(code: int, prog_name: str, exc: SystemExit) -> None:
    _quiet_stdout()
    try:
        sys.stdout = open(os.devnull, "w")  # the unwritten buffer is dropped, not retried
    except OSError:
        pass
    click.echo(f"{prog_name}: error: cannot write <stdout>: {os.strerror(code)}", err=True)
    if not exc.code:
        exc.code = 1


#: The signal state of the command this process runs (run() resets it).
#: raised: the KeyboardInterrupt/Terminated the handler raised; stopping: it reached the
#: command's error handling (the one line is on its way); complete: the command's outputs
#: are complete (a later signal is reported and ignored); late: that later signal.
_SIG: dict = {"raised": None, "stopping": False, "complete": False, "late": None,
              "prog": None, "timer": None}
RETRY_S = 0.05
DEFER_MAX_S = 5.0  # a deferred signal (an import, torch's code) is raised anyway after this


def output_complete() -> None:
    """Declare this command's work done (its outputs renamed into place): a SIGTERM, SIGHUP
    or Ctrl-C from now on (teardown, interpreter exit) is reported on stderr and does not
    change the exit status, 0."""
    _SIG["complete"] = True


def _signum(exc: BaseException) -> int:
    return exc.signum if isinstance(exc, Terminated) else int(signal.SIGINT)


def _stopped(exc: BaseException, prog: str | None = None) -> "Stopped":
    """The one-line stop for a KeyboardInterrupt or Terminated; later signals are ignored
    while the process exits."""
    _SIG["stopping"] = True
    if isinstance(exc, Terminated):
        return Stopped(f"terminated ({signal.Signals(exc.signum).name})",
                       exit_code=128 + exc.signum, prog=prog)
    return Stopped("interrupted", exit_code=130, prog=prog)


def _critical_codes() -> set:
    """Code that must not be interrupted half-way: creating a temporary output and renaming
    it into place (the generator frames of aekit.system.fileio's atomic_path and atomic_dir run
    only then; the command's work runs while they are suspended)."""
    fileio = sys.modules.get("aekit.system.fileio")
    codes = set()
    for name in ("atomic_path", "atomic_dir"):
        fn = getattr(getattr(fileio, name, None), "__wrapped__", None)
        if fn is not None:
            codes.add(fn.__code__)
    return codes


def _own_unsafe(frame, critical: set) -> bool:
    name = frame.f_code.co_filename
    return (name.startswith("<frozen importlib") or f"{os.sep}torch{os.sep}" in name
            or frame.f_code in critical or frame.f_code is _unraisable.__code__)


def _unsafe(frame) -> bool:
    """Whether raising here could turn a signal into a crash or a leak: inside an import (a
    C extension's initialisation), in torch's Python code (which torch's C++ also calls
    back through pybind11: an exception thrown there ends in std::terminate, SIGABRT),
    while a temporary output is created or renamed, or in :func:`_unraisable` (where an
    exception is lost)."""
    critical, depth = _critical_codes(), 0
    while frame is not None and depth < 500:
        if _own_unsafe(frame, critical):
            return True
        frame, depth = frame.f_back, depth + 1
    return False


def _raise_when_safe(signum: int, frame) -> None:
    """Raise the stop for ``signum`` at the next line that runs in a frame below every
    unsafe one (see :func:`_unsafe`) of ``frame``'s stack, i.e. as soon as the import,
    torch's call or the callback has returned: synchronously, with a line-trace function
    on the frames below (removed when it fires); no thread to wait for."""
    chain, depth = [], 0
    while frame is not None and depth < 500:
        chain.append(frame)
        frame, depth = frame.f_back, depth + 1
    critical = _critical_codes()
    lowest = max((i for i, f in enumerate(chain) if _own_unsafe(f, critical)), default=-1)
    safe = chain[lowest + 1:]
    if _SIG.get("armed") is None:
        _SIG["trace_before"] = sys.gettrace()  # a debugger's or coverage's, put back after

    def tracer(frame, event, arg):
        if event == "call":  # frames started from now on are not traced
            return None
        if _SIG.get("armed") is not tracer:  # done, or replaced by a later signal's
            return None
        if event != "line":
            return tracer
        _disarm()
        if _SIG["stopping"] or _SIG["complete"]:
            return None
        _SIG["deferred"].pop(signum, None)
        t = _SIG.get("timer")
        if t is not None:
            t.cancel()
        exc = KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)
        _SIG["raised"] = exc
        raise exc

    _SIG["armed"], _SIG["traced"] = tracer, safe
    for f in safe:
        f.f_trace = tracer
    sys.settrace(tracer)


def _disarm() -> None:
    """Remove :func:`_raise_when_safe`'s trace function, if any."""
    if _SIG.get("armed") is None:
        return
    _SIG["armed"] = None
    sys.settrace(_SIG.get("trace_before"))
    for f in _SIG.get("traced") or ():
        f.f_trace = None
    _SIG["traced"] = None


def _in_flight(exc: BaseException) -> bool:
    """Whether ``exc`` is still propagating (being handled: ``finally``, ``except``,
    ``__exit__`` cleanup) in this thread, directly or as the context of another."""
    cur, seen = sys.exc_info()[1], 0
    while cur is not None and seen < 100:
        if cur is exc:
            return True
        cur, seen = (cur.__context__ or cur.__cause__), seen + 1
    return False


def _redeliver(signum: int, delay: float) -> None:
    """Send ``signum`` to the main thread again after ``delay`` seconds (one timer at a
    time): the handler then raises a signal deferred for DEFER_MAX_S whatever the frame."""
    t = _SIG.get("timer")
    if t is not None and t.is_alive():
        return
    main = threading.main_thread().ident

    def again() -> None:
        if not _SIG["stopping"]:
            try:
                signal.pthread_kill(main, signum)
            except (OSError, ValueError):
                pass

    t = threading.Timer(delay, again)
    t.daemon = True
    _SIG["timer"] = t
    t.start()


def install_signal_handlers() -> None:
    """SIGINT raises KeyboardInterrupt and SIGTERM/SIGHUP :class:`Terminated` in this
    process, so that atomic outputs clean up and the command ends with one line and status
    128 + N; in a forked worker they end it at once without a traceback.

    A signal never crashes the process and is not lost: arriving inside an import or in
    torch's Python code (which torch's C++ also calls back through pybind11, where an
    exception aborts the process: "terminate called after throwing ...
    error_already_set"), or while a temporary output is created or renamed, it is raised
    as soon as that code has returned (:func:`_raise_when_safe`; anyway after
    DEFER_MAX_S); raised where Python cannot propagate it (a weakref callback, a
    ``__del__``: "Exception ignored in ..."), it is raised again in the code that runs
    next. While the stop's cleanup runs, further signals wait. Once
    the command's outputs are complete (:func:`output_complete`), a signal is reported on
    stderr and ignored: exit status 0.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    main_pid = os.getpid()

    def on_signal(signum, frame):
        if os.getpid() != main_pid:  # a forked worker: the parent reports and cleans up
            os._exit(128 + signum)
        if _SIG["stopping"]:
            return
        if _SIG["complete"]:
            if _SIG["late"] is None:
                _SIG["late"] = signum
                _write_stderr(f"{_SIG['prog'] or _prog_name()}: warning: "
                              f"{signal.Signals(signum).name} arrived after the output was "
                              "complete; not stopping (exit status 0)\n")
            return
        raised = _SIG["raised"]
        if raised is not None and _in_flight(raised):  # its cleanup is running: let it run
            return
        now = time.monotonic()
        since = _SIG.setdefault("deferred", {}).setdefault(signum, now)
        if now - since < DEFER_MAX_S and _unsafe(frame):
            _raise_when_safe(signum, frame)
            _redeliver(signum, DEFER_MAX_S - (now - since) + RETRY_S)  # never waits longer
            return
        _SIG["deferred"].pop(signum, None)
        _disarm()
        exc = KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)
        _SIG["raised"] = exc
        raise exc

    for name in ("SIGTERM", "SIGHUP", "SIGINT"):
        sig = getattr(signal, name, None)
        if sig is not None and (signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler)
                                or getattr(signal.getsignal(sig), "aekit_early", False)):
            signal.signal(sig, on_signal)
    if sys.platform.startswith("linux") and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_die_with_parent)


def _write_stderr(text: str) -> None:
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


def _die_with_parent() -> None:
    """In a forked worker (Linux): SIGTERM when the parent dies, even by SIGKILL, so that no
    orphan keeps working (and the handler above ends it quietly)."""
    _SIG["timer"] = None  # the parent's timer thread is not in this process
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() == 1:  # the parent is already gone
            os._exit(128 + signal.SIGTERM)
    except (OSError, AttributeError):
        pass


_default_unraisable = sys.unraisablehook
_default_excepthook = sys.excepthook


def _unraisable(unraisable) -> None:
    """Drop h5py's 'Exception ignored in __dealloc__' noise that follows a failed write
    (the one-line error says it all), and a stop signal raised where Python cannot
    propagate it (a weakref callback, a ``__del__``): it is raised again at the next line
    of Python code that runs after this hook (:func:`_raise_when_safe`). Anything else is
    reported as usual."""
    from aekit.system.fileio import write_errno

    exc = unraisable.exc_value
    if exc is not None and exc is _SIG["raised"]:
        _SIG["raised"] = None
        _SIG.setdefault("deferred", {})[_signum(exc)] = time.monotonic()
        _raise_when_safe(_signum(exc), sys._getframe())
        return
    if exc is not None and write_errno(exc) is not None:
        return
    _default_unraisable(unraisable)


def _excepthook(exc_type, exc_value, tb) -> None:
    """h5py's deallocators print their failures through sys.excepthook (Cython's full
    tracebacks): after a failed write, that is noise. Everything else as usual."""
    from aekit.system.fileio import write_errno

    if exc_value is not None and write_errno(exc_value) is not None:
        return
    _default_excepthook(exc_type, exc_value, tb)


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


class _StampedFormatter(logging.Formatter):
    """Plain lines; a record logged with ``extra=aekit.system.fileio.LOG_STAMP`` (progress lines,
    ae-train's epoch lines) has its message start with the local date and time."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if getattr(record, STAMP_ATTR, False):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
            record.message = f"{when} {record.message}"
        return super().formatMessage(record)


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
        handler.setFormatter(_StampedFormatter(f"{prog}: %(levelname)s: %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(level)
    LOG.propagate = False


def command_line() -> str:
    """The command line as typed (program basename + arguments), for logs and provenance."""
    ctx = click.get_current_context(silent=True)
    from aekit.system.textinput import text_name

    if ctx is not None and "aekit.command_line" in ctx.meta:
        return text_name(ctx.meta["aekit.command_line"])
    argv = [os.path.basename(sys.argv[0])] + sys.argv[1:]
    return text_name(shlex.join(argv))  # a file name that is not UTF-8: stored as \xNN


# --------------------------------------------------------------------------- progress

#: Seconds between two progress lines when stderr is not a terminal (a batch log): the
#: environment variable PROGRESS_INTERVAL_ENV overrides it (0: a line at every step).
PROGRESS_INTERVAL = 10.0
PROGRESS_INTERVAL_ENV = "AEKIT_PROGRESS_INTERVAL"
_clock = time.monotonic  # the progress lines' clock (the tests replace it)


def progress_interval() -> float:
    """PROGRESS_INTERVAL, or the environment's AEKIT_PROGRESS_INTERVAL (seconds >= 0)."""
    raw = os.environ.get(PROGRESS_INTERVAL_ENV, "").strip()
    if not raw:
        return PROGRESS_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (0 <= value < float("inf")):
        LOG.warning("%s=%r is not a number of seconds >= 0: using %g", PROGRESS_INTERVAL_ENV,
                    raw, PROGRESS_INTERVAL)
        return PROGRESS_INTERVAL
    return value


@contextmanager
def progress(total: int | None, description: str, unit: str = "items") -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``: a rich bar on a terminal; otherwise (a batch log) a line at most
    every ``progress_interval()`` seconds and one when done, each with the date and time."""
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

    from aekit.system.fileio import LOG_STAMP, elapsed_text

    interval = progress_interval()
    start = _clock()
    state = {"done": 0, "last": start}
    of = f"/{total}" if total else ""

    def line(now: float, final: bool) -> None:
        took = now - start
        rate = f", {state['done'] / took:.1f} {unit}/s" if took > 0 else ""
        LOG.info("%s: %s%d%s %s%s, elapsed %s", description, "done, " if final else "",
                 state["done"], of, unit, rate, elapsed_text(took), extra=LOG_STAMP)

    def advance(n: int = 1) -> None:
        state["done"] += n
        now = _clock()
        if now - state["last"] >= interval:
            state["last"] = now
            line(now, False)

    yield advance
    line(_clock(), True)  # not after an error: the error says what happened


# --------------------------------------------------------------------------- shared options

def output_option(required: bool = False, allow_dash: bool = True, help: str | None = None,
                  binary: str = "HDF5"):
    """-o/--output: a file (written atomically), or '-' for stdout where a stream makes sense.

    Without ``allow_dash``, '-' is refused: "``binary`` cannot be written to stdout".
    """
    default_help = ("Output file, written atomically; '-' or omitted: stdout."
                    if allow_dash else "Output file (written atomically).")
    kwargs = {} if required else {"default": "-" if allow_dash else None}
    refuse = None if allow_dash else f"{binary} cannot be written to stdout"
    # A text output may be a device or a FIFO (written in place); a binary one may not.
    return click.option("-o", "--output", "output", required=required,
                        type=OutputPath(dir_okay=False, allow_dash=allow_dash, refuse_dash=refuse,
                                        regular_only=not allow_dash),
                        help=help or default_help, **kwargs)


#: The seeds every command takes: numpy's legacy seeding and scikit-learn's random_state
#: accept 0..2**32-1 and nothing else (outside it: an overflow deep inside them).
SEED_MAX = 2**32 - 1


def seed_option(default: int = 42):
    return click.option("--seed", type=click.IntRange(0, SEED_MAX), default=default,
                        show_default=True,
                        help="Random seed (0 to 2**32-1): same inputs + same seed -> identical "
                             "outputs.")


def device_option(f: Callable) -> Callable:
    return click.option(
        "--device", default="auto", show_default=True,
        help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps.")(f)


def splits_option(help: str = "Split CSV from ae-split (columns id,split,fold)."):
    return click.option("--splits", "splits_path", type=InputPath(dir_okay=False, allow_dash=True),
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
                        type=InputPath(dir_okay=False, allow_dash=True), default=None,
                        help="CSV with an 'id' column and label columns, joined by id.")(f)


def _check_where(ctx, param, value):
    """Parse --where now, so that a refused expression is an error before any work."""
    if value is not None:
        from aekit.data.expr import parse_where

        parse_where(value)  # raises InputError naming the refused construct
    return value


def where_option(f: Callable) -> Callable:
    """--where EXPR: keep only rows whose --labels match (the safe language of aekit.data.expr),
    parsed when the command line is (a refused expression is a usage error before any work)."""
    return click.option("--where", default=None, metavar="EXPR", callback=_check_where,
                        help="Keep only rows whose --labels match EXPR, e.g. 'anomaly == 0' or "
                             "\"machine_type == 'fan'\" (comparisons, in, and/or/not).")(f)


def fail_usage(message: str) -> None:
    """Raise a one-line usage error (exit status 2)."""
    raise CommandError(message, exit_code=2)


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange refusing nan and inf (which pass its bounds: nan compares false)."""

    def convert(self, value, param, ctx):
        import math

        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return v


class _FeatureParam(click.ParamType):
    """A feature option's type: the field's type, passing an option not given (UNSET)
    through, and taking 'none' where the field allows it (e.g. --top-db none: no floor)."""

    def __init__(self, inner: click.ParamType, none_ok: bool):
        self.inner, self.none_ok = inner, none_ok
        self.name = inner.name + ("|none" if none_ok else "")

    def get_metavar(self, param, *args, **kwargs):
        inner = self.inner.get_metavar(param, *args, **kwargs) or self.inner.name.upper()
        return inner + ("|none" if self.none_ok else "")

    def convert(self, value, param, ctx):
        from aekit.audio.params import UNSET

        if value is UNSET:
            return value
        if self.none_ok and isinstance(value, str) and value.strip().lower() == "none":
            return None
        return self.inner.convert(value, param, ctx)


def _feature_option(fld) -> click.Option:
    """One feature parameter's option, made from the dataclass field (its metadata gives the
    type, range, choices and help; the default is UNSET so that a preset's value wins over a
    default that was not typed, and an explicit option over the preset)."""
    from aekit.audio.kinds import kinds_of

    m = fld.metadata
    if m["choices"]:
        kind = click.Choice(list(m["choices"]))
    elif m["type"] is int:
        kind = click.IntRange(min=m["min"], min_open=m["min_open"])
    elif m["type"] is float:
        kind = FiniteFloatRange(min=m["min"], min_open=m["min_open"])
    else:
        kind = click.STRING
    from aekit.audio.params import UNSET

    shown = m["default_help"] or ("none" if fld.default is None else f"{fld.default:g}"
                                  if isinstance(fld.default, float) else str(fld.default))
    owners = kinds_of(fld.name)
    from aekit.audio.kinds import FEATURE_KINDS

    only = "" if len(owners) == len(FEATURE_KINDS) else f" (kind {', '.join(owners)})"
    opt = click.Option([f"--{fld.name.replace('_', '-')}"], type=_FeatureParam(kind, m["none_ok"]),
                       default=UNSET, show_default=False,
                       help=m["help"] + only + f" [default: {shown}]")
    opt.aekit_feature = True
    return opt


def _feature_option_list() -> list[click.Option]:
    """--kind, --preset and every registered kind's parameters (one option per name)."""
    from aekit.audio.kinds import DEFAULT_KIND, FEATURE_KINDS, option_fields

    opts = [click.Option(["--kind"], type=click.Choice(list(FEATURE_KINDS)), default=DEFAULT_KIND,
                         show_default=True, help="Feature kind: its parameters are the options "
                                                 "below marked with it (or unmarked).")]
    presets = {k: cls.PRESETS for k, cls in FEATURE_KINDS.items() if cls.PRESETS}
    parts = []
    for kind, table in presets.items():
        groups: dict[tuple, list[str]] = {}  # presets with equal values are listed once
        for name, values in table.items():
            groups.setdefault(tuple(values.items()), []).append(name)
        prev = None
        for items, names in groups.items():
            values = dict(items)
            shown = {k: v for k, v in values.items() if prev is None or prev[1].get(k) != v}
            parts.append(", ".join(names) + ": " + (f"as {prev[0]} but " if prev else "")
                         + ", ".join(f"{k}={'none' if v is None else v}" for k, v in shown.items()))
            prev = (names[0], values)
    names = list(dict.fromkeys(n for table in presets.values() for n in table))
    opts.append(click.Option(["--preset", "feature_preset"], type=click.Choice(names),
                             default=None, help="Feature settings of a known front end "
                                                f"({'; '.join(parts)}); options given "
                                                "explicitly override it."))
    opts += [_feature_option(f) for f in option_fields().values()]
    for o in opts:
        o.aekit_feature = True
    return opts


def _registry_key() -> tuple:
    from aekit.audio.kinds import FEATURE_KINDS

    return tuple((k, id(v)) for k, v in FEATURE_KINDS.items())


def refresh_feature_options(command: click.Command) -> None:
    """Make a command's feature options those of the kinds registered now (a kind registered
    after the command was built gets its options): called before every parse and help."""
    if getattr(command, "aekit_kinds", None) == _registry_key():
        return
    at = next((i for i, p in enumerate(command.params) if getattr(p, "aekit_feature", False)),
              len(command.params))
    rest = [p for p in command.params if not getattr(p, "aekit_feature", False)]
    command.params = rest[:at] + _feature_option_list() + rest[at:]
    command.aekit_kinds = _registry_key()


def feature_options(f: Callable) -> Callable:
    """The feature options: --kind (``aekit.audio.kinds``), --preset and each registered
    kind's parameters, made from the kinds' parameter dataclasses (their fields give the
    names, defaults, ranges, choices and help, so none is typed twice). An option of a
    parameter the chosen kind does not have is refused (:func:`feature_params_from`)."""
    f.aekit_feature_options = True
    if not hasattr(f, "__click_params__"):
        f.__click_params__ = []
    f.__click_params__.extend(reversed(_feature_option_list()))  # as click.option does
    return f


def feature_params_from(kwargs: dict):
    """Pop the feature_options values out of a command's kwargs into the chosen kind's
    parameters; a parameter of another kind given explicitly is a usage error."""
    from dataclasses import fields

    from aekit.audio.kinds import option_fields, params_class
    from aekit.audio.params import UNSET

    cls = params_class(kwargs.pop("kind", None))
    preset = kwargs.pop("feature_preset", None)
    own = {f.name for f in fields(cls)}
    values = {}
    for name in option_fields():
        if name not in kwargs:
            continue
        v = kwargs.pop(name)
        if name in own:
            values[name] = v
        elif v is not UNSET:
            fail_usage(f"--{name.replace('_', '-')} is not a parameter of feature kind "
                       f"{cls.kind} (--kind)")
    if preset is not None and preset not in cls.PRESETS:
        fail_usage(f"--preset {preset} is not a preset of feature kind {cls.kind}"
                   + (f" (its presets: {', '.join(cls.PRESETS)})" if cls.PRESETS else
                      " (it has none)"))
    return cls.from_preset(preset, **values)


def audio_input_options(on_error_help: str):
    """--on-error, --max-fail-frac and --root: the options of commands that decode audio files
    (the values and defaults of aekit.system.failpolicy)."""
    from aekit.system.failpolicy import DEFAULT_MAX_FAIL_FRAC, ON_ERROR

    def deco(f: Callable) -> Callable:
        f = click.option("--root", type=InputPath(file_okay=False), default=None,
                         help="Make ids relative to this directory "
                              "[default: the inputs' common root].")(f)
        f = click.option("--max-fail-frac", type=FiniteFloatRange(0, 1),
                         default=DEFAULT_MAX_FAIL_FRAC,
                         show_default=True,
                         help="Fail the run when more than this fraction of inputs failed.")(f)
        return click.option("--on-error", type=click.Choice(list(ON_ERROR)), default=ON_ERROR[0],
                            show_default=True, help=on_error_help)(f)
    return deco


def jobs_option(f: Callable) -> Callable:
    return click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
                        help="Worker processes [default: all available cores].")(f)
