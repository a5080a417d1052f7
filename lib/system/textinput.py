"""Text inputs: a whole file or '-' (stdin) read once, as UTF-8, and CSVs read strictly
(every cell as text, a record of the wrong width or a repeated header name refused)."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

from aekit.errors import InputError
from aekit.system.oserrors import describe_os_error

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


def read_json_input(path: str | os.PathLike, what: str):
    """A JSON file (or '-') read once, as UTF-8, parsed; InputError naming the file when it is
    not JSON or nests too deeply (``what``: the kind of file it should have been)."""
    import json

    name = display_name(path)
    text = read_text_input(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise InputError(f"{name}: JSON nested too deeply; not {what}") from None


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


def display_name(path: str | os.PathLike) -> str:
    """How messages name an input: '<stdin>' for '-', else the path."""
    return "<stdin>" if str(path) == "-" else str(path)
