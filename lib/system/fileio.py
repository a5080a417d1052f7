"""Atomic outputs and '-' streams, shared by every command.

An output is written to a hidden temporary file in the destination's own
directory and renamed over the destination only when complete, so a killed job
never leaves a file that Make would take as up to date.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO, Iterator

from aekit.errors import DataError, InputError

#: errno values that mean "the destination cannot take these bytes", not "bad input".
WRITE_ERRNOS = frozenset(e for e in (getattr(errno, n, None) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS"))
                         if e is not None)


class WriteError(DataError):
    """An output could not be written (disk full, quota, read-only file system, I/O error).

    The temporary file is gone and the previous output, if any, is untouched.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"cannot write {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def write_errno(exc: BaseException) -> int | None:
    """The errno of a failed write behind ``exc`` (its chain included), or None.

    h5py and torch report a failed write(2) as text ("errno = 28", "file write failed"):
    those are recognised too.
    """
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = getattr(e, "errno", None)
        if isinstance(e, OSError) and code in WRITE_ERRNOS:
            return code
        m = re.search(r"errno = (\d+)|os error (\d+)", str(e))  # h5py, safetensors
        if m and int(m.group(1) or m.group(2)) in WRITE_ERRNOS:
            return int(m.group(1) or m.group(2))
        e = e.__cause__ or e.__context__
    return None


def _full(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def _as_write_error(exc: BaseException, path: Path, parent: Path,
                    is_dir: bool = False) -> WriteError | None:
    if isinstance(exc, WriteError):
        return WriteError(path, exc.reason) if exc.path != str(path) and is_dir else None
    code = write_errno(exc)
    if code is None and isinstance(exc, (RuntimeError, OSError)) and _full(parent):
        code = errno.ENOSPC  # torch.save says only "file write failed" or "unexpected pos"
    return None if code is None else WriteError(path, os.strerror(code))


def describe_os_error(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for an OSError: '<path>: permission denied', '<path>: no such file', ..."""
    name = str(path if path is not None else (exc.filename or "")) or "input"
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return f"{name}: permission denied"
    if code == errno.ENOENT:
        return f"{name}: no such file"
    if code == errno.EISDIR:
        return f"{name}: is a directory, expected a file"
    if code in WRITE_ERRNOS:
        return f"cannot write {name}: {os.strerror(code)}"
    reason = exc.strerror or str(exc)
    return f"{name}: {reason[:1].lower() + reason[1:]}"


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


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_text_input(path: str | os.PathLike) -> str:
    """Read a whole text input; '-' is stdin. A leading UTF-8 byte order mark is dropped.

    The input is read once, whole (a pipe or process substitution is fine): nothing probes
    it first, so nothing of a stream is lost.
    """
    if str(path) == "-":
        name = "<stdin>"
        buffer = getattr(sys.stdin, "buffer", None)
        if buffer is None:  # a text stream without bytes underneath (tests): nothing to decode
            return sys.stdin.read().removeprefix("\ufeff")
        data = buffer.read()
    else:
        p = Path(path)
        name = str(p)
        if not p.exists():
            raise InputError(f"{p}: no such file")
        if p.is_dir():
            raise InputError(f"{p}: is a directory, expected a file")
        try:
            data = p.read_bytes()  # a pipe or process substitution is fine here
        except OSError as exc:
            raise InputError(describe_os_error(exc, p)) from None
    if data.startswith(HDF5_SIGNATURE):
        raise InputError(f"{name}: an HDF5 file, expected text"
                         + (" (an HDF5 file cannot be read from a stream)"
                            if name == "<stdin>" or not Path(path).is_file() else ""))
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def check_csv_fields(text: str, name: str) -> None:
    """Refuse a CSV whose header repeats a column name or whose records have more or fewer
    fields than the header (a trailing comma, a missing cell): pandas would otherwise take
    the first column as the index, or fill in or drop cells, silently. Blank lines are
    skipped, as pandas skips them. InputError names the file and the line."""
    import csv

    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    width = None
    try:
        while True:
            line = reader.line_num + 1  # where the next record starts
            try:
                record = next(reader)
            except StopIteration:
                break
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line
            if width is None:
                width = len(record)
                seen: set[str] = set()
                dup = [c for c in record if c in seen or seen.add(c)]
                if dup:
                    raise InputError(f"{name}: line {line}: the header repeats column name(s) "
                                     f"{', '.join(repr(c) for c in dict.fromkeys(dup))}")
            elif len(record) != width:
                raise InputError(f"{name}: line {line}: {len(record)} field(s), the header has "
                                 f"{width}" + (" (a trailing comma?)" if len(record) == width + 1
                                               and record[-1] == "" else ""))
    except csv.Error as exc:
        raise InputError(f"{name}: not a valid CSV (line {reader.line_num}: {exc})") from None


def read_csv(path: str | os.PathLike, **kwargs):
    """Read a CSV (or '-') into a DataFrame with every column as text unless told otherwise.

    Every cell is a string exactly as written (``00`` stays ``00``; ``NA``, ``null``,
    ``None``, ``nan`` are text; an empty cell is ``''``) unless the caller passes its own
    ``dtype``/``na_values``. pandas never takes a column as the index (``index_col=False``),
    and a record with more or fewer fields than the header is refused (InputError naming
    the line), as is a header that repeats a name. A leading byte order mark is dropped.

    Raises InputError for a missing, unreadable, empty or malformed file.
    """
    import pandas as pd

    text = read_text_input(path)
    name = display_name(path)
    if not text.strip():
        raise InputError(f"{name}: empty CSV (no header)")
    check_csv_fields(text, name)
    kwargs.setdefault("dtype", str)
    kwargs.setdefault("keep_default_na", False)
    kwargs["index_col"] = False
    try:
        return pd.read_csv(io.StringIO(text), **kwargs)
    except pd.errors.EmptyDataError:
        raise InputError(f"{name}: empty CSV (no header)") from None
    except pd.errors.ParserError as exc:
        msg = str(exc).strip().splitlines()[-1]
        raise InputError(f"{name}: not a valid CSV ({msg})") from None


def text_name(name: str) -> str:
    """``name`` as valid UTF-8 text: a file name that is not valid UTF-8 (its bytes held as
    surrogates, as os.fsdecode gives them) has those bytes written as ``\\xNN``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8_name(name: str | os.PathLike) -> bool:
    """Whether a file name is valid UTF-8 (no undecodable bytes held as surrogates)."""
    try:
        str(name).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


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


def display_name(path: str | os.PathLike) -> str:
    """How messages name an input: '<stdin>' for '-', else the path."""
    return "<stdin>" if str(path) == "-" else str(path)


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
