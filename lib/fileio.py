"""Atomic outputs and '-' streams, shared by every command.

An output is written to a hidden temporary file in the destination's own
directory and renamed over the destination only when complete, so a killed job
never leaves a file that Make would take as up to date.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .errors import InputError


def _check_dir_writable(path: Path) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write {path}: directory {parent} is not writable")
    return parent


def check_writable(path: str | os.PathLike, what: str = "output") -> None:
    """Fail early (before hours of work) when ``path`` cannot be written; '-' is refused."""
    if str(path) == "-":
        raise InputError(f"{what} must be a file path, not '-'")
    _check_dir_writable(Path(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    On any exception (KeyboardInterrupt included) the temporary file is removed
    and ``path`` is left untouched.
    """
    path = Path(path)
    parent = _check_dir_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the result the usual umask-derived mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def open_output(path: str | os.PathLike | None) -> Iterator[IO]:
    """Open a text output: '-' or None is stdout, else a file written atomically."""
    if path is None or str(path) == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            yield fh


def read_text_input(path: str | os.PathLike) -> str:
    """Read a whole text input; '-' is stdin."""
    if str(path) == "-":
        return sys.stdin.read()
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror})") from None


def read_csv(path: str | os.PathLike, **kwargs):
    """Read a CSV (or '-') into a DataFrame with every column as text unless told otherwise.

    Raises InputError for a missing, unreadable or empty file.
    """
    import pandas as pd

    text = read_text_input(path)
    name = display_name(path)
    if not text.strip():
        raise InputError(f"{name}: empty CSV (no header)")
    try:
        return pd.read_csv(io.StringIO(text), **kwargs)
    except pd.errors.EmptyDataError:
        raise InputError(f"{name}: empty CSV (no header)") from None
    except pd.errors.ParserError as exc:
        msg = str(exc).strip().splitlines()[-1]
        raise InputError(f"{name}: not a valid CSV ({msg})") from None


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
