"""Atomic outputs and '-' streams, shared by every command.

An output is written to a hidden temporary file in the destination's own
directory and renamed over the destination only when complete, so a killed job
never leaves a file that Make would take as up to date.

Failed writes and OS errors in words are :mod:`aekit.system.oserrors`; text and CSV inputs
are :mod:`aekit.system.textinput`. Their names are importable from here too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO, Iterator

from aekit.errors import InputError

# Re-exported: ``from aekit.system.fileio import ...`` stays the one import path of callers.
from aekit.system.oserrors import WriteError, _as_write_error, describe_os_error, write_errno


def check_regular_file(path: str | os.PathLike, what: str = "input") -> Path:
    """Refuse what cannot be a seekable file input (HDF5, model): missing, a directory, a
    FIFO or device, unreadable. CSV inputs may be pipes and do not need this."""
    p = Path(path)
    if str(path) == "-":
        raise InputError(f"{what} must be a file path, not '-' (it cannot be streamed)")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except OSError as exc:
        raise InputError(describe_os_error(exc, p)) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{p}: is a directory, expected a file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a character device"
                if stat.S_ISCHR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "special")
        raise InputError(f"{p}: not a regular file ({kind}); {what} must be a regular file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: permission denied")
    return p


def _read_only_fs(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_path_text(path: str | os.PathLike, what: str = "output", file: bool = True) -> None:
    """Refuse an empty path (it would mean the current directory) and, where a file is meant,
    a path ending in '/' (it names a directory): InputError, before anything is touched."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text == "":
        raise InputError(f"{what}: empty path")
    if file and text != "-" and text.endswith(("/", os.sep)):
        raise InputError(f"{what}: {text!r} ends in '/': a directory, expected a file name")


def _check_dir_writable(path: Path) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        if _read_only_fs(parent):  # the destination, not the command line: exit 1
            raise WriteError(path, os.strerror(errno.EROFS))
        raise InputError(f"cannot write {path}: directory {parent} is not writable")
    return parent


def _file_kind(mode: int) -> str:
    return ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a directory" if stat.S_ISDIR(mode) else "special")


_FD_LINK = re.compile(r"^/(?:proc/(?:self|thread-self|\d+)|dev)/fd/\d+$")


def _through_proc(path: str | os.PathLike) -> bool:
    """Whether ``path`` is, or links (hop by hop) to, a descriptor's name (/proc/self/fd/N,
    /dev/fd/N) such as /dev/stdout -> /proc/self/fd/1: written in place, never replaced."""
    p = os.path.abspath(os.fspath(path))
    for _ in range(40):
        if _FD_LINK.match(p):
            return True
        if not os.path.islink(p):
            return False
        try:
            p = os.path.abspath(os.path.join(os.path.dirname(p), os.readlink(p)))
        except OSError:
            return False
    return False


def output_target(path: str | os.PathLike) -> tuple[Path, bool]:
    """Where an output to ``path`` goes: (the file to write, written in place?).

    - a path that does not exist, or a regular file: itself, written atomically;
    - a symbolic link to a regular file: the file it resolves to, written atomically in that
      file's directory (the link stays a link, like ``cp`` or ``sed -i --follow-symlinks``);
    - a character device, a FIFO, or anything reached through /proc or /dev/fd
      (``/dev/stdout``): itself, in place (``written in place = True``); never unlinked or
      replaced.
    Refused (InputError): an empty path, a directory, a dangling symbolic link, a block
    device or a socket.
    """
    check_path_text(path)
    p = Path(path)
    try:
        lst = os.lstat(p)
    except FileNotFoundError:
        return p, False
    except OSError as exc:
        raise InputError(describe_os_error(exc, p)) from None
    if _through_proc(p):
        return p, True
    if os.path.realpath(p).startswith(("/proc/", "/sys/")):  # kernel settings: never ours
        raise InputError(f"{p}: a kernel file (/proc, /sys); refusing to write an output there")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(f"{p}: a dangling symbolic link; not writing through it") from None
    except OSError as exc:
        raise InputError(describe_os_error(exc, p)) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{p}: is a directory, expected a file")
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return p, True
    if not stat.S_ISREG(st.st_mode):  # a block device (a disk!), a socket: never written
        raise InputError(f"{p}: not a regular file ({_file_kind(st.st_mode)}); refusing to "
                         "write an output there")
    if stat.S_ISLNK(lst.st_mode):
        return Path(os.path.realpath(p)), False
    return p, False


def check_regular_output(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse (InputError) an output that cannot be a seekable regular file (HDF5, a model):
    an existing device, FIFO, socket or /dev/stdout."""
    target, in_place = output_target(path)
    if in_place:
        try:
            mode = os.stat(target).st_mode
        except OSError:
            mode = 0
        kind = "an open descriptor" if stat.S_ISREG(mode) or not mode else _file_kind(mode)
        raise InputError(f"{path}: not a regular file ({kind}); {what} must be written to a "
                         "regular file")


def check_writable(path: str | os.PathLike, what: str = "output") -> None:
    """Fail early (before hours of work) when ``path`` cannot be written; '-' is refused.
    A device or FIFO (written in place) needs only to be writable itself."""
    if str(path) == "-":
        raise InputError(f"{what} must be a file path, not '-'")
    check_path_text(path, what)
    target, in_place = output_target(path)
    if in_place:
        if not os.access(target, os.W_OK):
            raise InputError(f"cannot write {path}: permission denied")
        return
    _check_dir_writable(target)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname() or "host")


def _tmp_prefix(path: Path) -> str:
    """Temporary names carry host and pid (``.NAME.HOST-PID.XXXX.tmp``), so that a later
    run can tell the leftovers of a killed run from the files of one still running."""
    return f".{path.name}.{_host()}-{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


#: What a temporary of ours is named: ``.NAME.HOST-PID.`` then mkstemp's 8 random characters
#: (letters, digits, '_'), then ``.tmp``.
_TMP_RANDOM = r"[a-z0-9_]{8}"

#: The file every temporary directory of atomic_dir holds while it is being written: a
#: directory without it was not made by this program and is never removed as stale.
TMPDIR_MARKER = ".aekit-partial"

#: Inputs of the running command (registered by the command line): never removed as stale.
_INPUTS: list[str] = []


def register_inputs(paths) -> None:
    """Name this process's inputs: stale-temporary cleanup never removes one of them."""
    _INPUTS.extend(os.fspath(p) for p in paths if p is not None and os.fspath(p) != "-")


def _is_input(path: Path) -> bool:
    for inp in _INPUTS:
        try:
            if os.path.samefile(inp, path):
                return True
        except OSError:
            continue
    return False


def _ours(stale: Path, directory: bool) -> bool:
    """Whether ``stale`` (its name already matched) can be proved to be a temporary this
    program made: a regular file with mkstemp's private mode (0600: no group or other bits; or
    a directory holding our marker),
    owned by this user, not a symbolic link, and not an input of this command."""
    try:
        st = os.lstat(stale)
    except OSError:
        return False
    if st.st_uid != os.geteuid():
        return False
    if directory:
        if not stat.S_ISDIR(st.st_mode):
            return False
        try:
            if not stat.S_ISREG(os.lstat(stale / TMPDIR_MARKER).st_mode):
                return False
        except OSError:
            return False
    elif not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o077:
        return False
    return not _is_input(stale)


def remove_stale_temporaries(path: str | os.PathLike, directory: bool = False) -> list[Path]:
    """Remove the temporaries of ``path`` left by earlier runs on this host whose process is
    gone (a SIGKILL, an out-of-memory kill, a power cut leave them). Returns what was removed.

    Only what this program can prove it made is removed: the exact name of its temporaries
    (``.NAME.HOST-PID.XXXXXXXX.tmp``), the pid dead on this host, a regular file with
    mkstemp's private mode (``directory``: a directory holding :data:`TMPDIR_MARKER`), owned by
    this user, and not an input of this command. Temporaries of other hosts (a shared file
    system) and of live processes are kept.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(_host())}-(\d+)\."
                         rf"{_TMP_RANDOM}\.tmp$")
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        stale = parent / name
        if not _ours(stale, directory):
            continue
        try:
            if directory:
                shutil.rmtree(stale)
            else:
                stale.unlink()
            removed.append(stale)
        except OSError:
            pass
    return removed


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, special_ok: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    Where ``path`` is not a regular file (see :func:`output_target`): a symbolic link to a
    regular file has that file replaced (the link stays); a device, FIFO or /dev/stdout is
    yielded itself, to be written in place, with ``special_ok`` (text outputs), else refused
    with InputError (HDF5 and model files need a seekable regular file). An empty path or
    one ending in '/' is refused.

    On any exception (KeyboardInterrupt and signals included) the temporary file is
    removed and ``path`` is left untouched. A failed write (disk full, quota, ...) is
    raised as :class:`WriteError` naming ``path``. Stale temporaries of ``path`` from a
    killed earlier run are removed first.
    """
    path, in_place = output_target(path)
    if in_place:
        if not special_ok:
            check_regular_output(path)
        yield path  # a device, FIFO or /dev/stdout: written in place, never replaced
        return
    parent = _check_dir_writable(path)
    remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=parent)
    except OSError as exc:
        raise WriteError(path, exc.strerror or str(exc)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the result the usual umask-derived mode.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        err = _as_write_error(exc, path, parent)
        if err is not None:
            raise err from None
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success its files land in ``path``.

    A new ``path`` is renamed into place whole; into an existing one, the files are moved
    one by one (each rename atomic, no copy). On any exception the temporary directory is
    removed and ``path`` is untouched: no half-written directory is ever left.
    """
    check_path_text(path, file=False)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a directory")
    try:  # like mkdir -p, as these directories were made before they were written atomically
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(path, exc.strerror or str(exc)) from None
    parent = _check_dir_writable(path)
    remove_stale_temporaries(path, directory=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=parent))
    except OSError as exc:
        raise WriteError(path, exc.strerror or str(exc)) from None
    try:
        try:  # proves to a later run's cleanup that this directory is ours
            (tmp / TMPDIR_MARKER).write_bytes(b"")
        except OSError as exc:
            raise WriteError(path, exc.strerror or str(exc)) from None
        yield tmp
        (tmp / TMPDIR_MARKER).unlink()
        os.chmod(tmp, 0o777 & ~_umask())
        if not path.exists():
            os.rename(tmp, path)
        else:
            for root, dirs, files in os.walk(tmp):
                dest = path / Path(root).relative_to(tmp)
                dest.mkdir(exist_ok=True)
                for name in files:
                    os.replace(Path(root) / name, dest / name)
            shutil.rmtree(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        err = _as_write_error(exc, path, parent, is_dir=True)
        if err is not None:
            raise err from None
        raise


def _open_in_place(path: Path) -> int:
    """A descriptor to write ``path`` in place: our own stdout or stderr when it is that file
    (``/dev/stdout``: the same open file, even a socket), else opened for appending (never
    created or truncated)."""
    try:
        st = os.stat(path)
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                if os.path.samestat(st, os.fstat(fd)):
                    with contextlib.suppress(AttributeError, ValueError, OSError):
                        (sys.stdout if fd == 1 else sys.stderr).flush()
                    return os.dup(fd)
        return os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise InputError(describe_os_error(exc, path)) from None


@contextlib.contextmanager
def open_output(path: str | os.PathLike | None) -> Iterator[IO]:
    """Open a text output: '-' or None is stdout, else a file written atomically.

    A device, FIFO or /dev/stdout is written in place (opened for appending, never created,
    truncated or replaced); see :func:`output_target`."""
    if path is None or str(path) == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    with atomic_path(path, special_ok=True) as tmp:
        if tmp == Path(path) and output_target(path)[1]:
            fd = _open_in_place(tmp)
            try:
                with open(fd, "w", encoding="utf-8", newline="", closefd=False) as fh:
                    yield fh
            except OSError as exc:
                code = write_errno(exc)
                if code is not None:
                    raise WriteError(path, os.strerror(code)) from None
                raise
            finally:
                os.close(fd)
            return
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            yield fh


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Content hash of a file, for provenance attributes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def null_progress(total: int, description: str, unit: str = "items") -> Iterator:
    """A progress factory that shows nothing: yields advance(n) that does nothing."""
    yield lambda n=1: None


#: ``LOG.info(..., extra=LOG_STAMP)``: a line of a batch log (a progress line, an epoch of
#: ae-train) that the commands' plain-text log handler starts with the date and time.
LOG_STAMP = {"aekit_stamp": True}


def elapsed_text(seconds: float) -> str:
    """'0:01:05': hours, minutes, seconds (for log lines)."""
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
