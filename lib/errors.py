"""Exceptions the library raises for expected failures.

The commands translate them into one-line messages and exit codes:
``InputError`` -> 2 (bad input or usage), ``DataError`` -> 1 (runtime/data).
Anything else is a bug and keeps its traceback.
"""


class AekitError(Exception):
    """Base class for failures a user can act on.

    ``param`` names the parameter at fault by its Python name (``batch_size``), never by a
    command-line flag: ``str(err)`` is ``"batch_size: must be positive"`` for a notebook user,
    and a command shows its own flag instead (``--batch-size: must be positive``,
    ``aekit.cmds.common``). The message itself names no flag either.
    """

    exit_code = 1

    def __init__(self, message: str = "", *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message


class DataError(AekitError):
    """The inputs were valid but the work failed (too many bad files, NaN loss...)."""

    exit_code = 1


class InputError(AekitError):
    """An input, option value or file is unusable as given."""

    exit_code = 2


def preview(items, k: int = 5) -> str:
    """'a, b, c, d, e (and 7 more)': a short list for one-line error messages."""
    items = list(items)
    more = f" (and {len(items) - k} more)" if len(items) > k else ""
    return ", ".join(map(str, items[:k])) + more
