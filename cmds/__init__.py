"""The ``ae-*`` command-line programs: one thin click module per command.

Each module parses options, calls the library (:mod:`aekit`), writes, returns.
Shared options, logging, progress and error translation live in
:mod:`aekit.cmds.common`.
"""

import os as _os
import signal as _signal
import sys as _sys


def _exit_at_once(signum, frame):  # pragma: no cover - runs in a console script's imports
    """Ctrl-C, SIGTERM or SIGHUP while a console script imports its modules (torch takes a
    second): nothing was written yet, so one line and status 128 + N, no traceback.
    :func:`aekit.cmds.common.run` replaces this handler before the command runs."""
    what = "interrupted" if signum == _signal.SIGINT else f"terminated ({_signal.Signals(signum).name})"
    try:
        _os.write(2, f"{_os.path.basename(_sys.argv[0])}: {what}\n".encode("utf-8", "replace"))
    finally:
        _os._exit(128 + signum)


_exit_at_once.aekit_early = True


def _install_early_handlers() -> None:
    """Only in an ``ae-*`` console script (not when imported by a program or the tests)."""
    if not _os.path.basename(_sys.argv[0] if _sys.argv else "").startswith("ae-"):
        return
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(_signal, name, None)
        try:
            if sig is not None and _signal.getsignal(sig) in (_signal.SIG_DFL,
                                                              _signal.default_int_handler):
                _signal.signal(sig, _exit_at_once)
        except ValueError:  # not the main thread
            return


_install_early_handlers()
