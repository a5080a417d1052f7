"""CSV as every command writes it: comma-separated, '\n' line ends, a field quoted only when it
holds a comma, a double quote or a line break (a double quote doubled), text always valid UTF-8
(a file name that is not has its bytes written as ``\\xNN``, ``aekit.system.textinput.text_name``).

``csv_line`` writes one row as it comes (``ae-score`` streams its rows); ``write_frame`` a whole
pandas table (``ae-eval --scores``, ``--result-csv``): the same dialect."""

from __future__ import annotations

from typing import IO, Iterable

from aekit.system.textinput import text_name

LINE_END = "\n"
_SPECIAL = (",", '"', "\n", "\r")


def csv_field(value) -> str:
    """One CSV field: ``value`` as text, quoted only when it must be."""
    text = text_name(str(value))
    if any(c in text for c in _SPECIAL):
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_line(values: Iterable) -> str:
    """One CSV row with its line end."""
    return ",".join(csv_field(v) for v in values) + LINE_END


def write_frame(table, fh: IO[str], float_format: str | None = None) -> None:
    """A pandas DataFrame as CSV (no index), in the dialect of ``csv_line``."""
    table.to_csv(fh, index=False, lineterminator=LINE_END, float_format=float_format)
