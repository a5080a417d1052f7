"""Operating-system errors in words: a failed write (disk full, quota, read-only file
system) as :class:`WriteError`, and any OSError as one line naming the file."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from aekit.errors import DataError

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
