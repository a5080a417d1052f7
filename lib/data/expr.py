"""A small, safe expression language for selecting label rows (``--where``, ``--test-where``).

Expressions are parsed with :mod:`ast` and evaluated by walking a whitelist, never by
``eval`` or ``DataFrame.query``: nothing a user writes can call a function, touch an
attribute or reach Python's builtins. Allowed:

- column names (``anomaly``, ``machine_type``); names starting with ``__`` never;
- literals: numbers (with a sign), strings, ``True``, ``False``, ``None``, and lists or
  tuples of literals (for ``in``/``not in``);
- comparisons ``== != < <= > >= in not in``, chained as in Python (``0 < x <= 3``);
  ``col == None`` / ``col != None`` test for a missing value;
- ``and``, ``or``, ``not`` and parentheses.

Types are strict: a column is *numeric* when every non-empty value in it is a decimal
number (``0``, ``-1.5``, ``2e3``; ``nan``, ``inf``, ``0x10`` are text), *text* otherwise;
in a label CSV, where every cell is read as text, that is decided from all the file's rows
(an empty or blank cell is a missing value and does not count). A numeric column compares
only with numbers, a text column only with strings (``machine_id == '00'`` on a numeric
column, ``anomaly != '1'`` on a numeric one, ``machine == 3`` on a text one are errors
naming the column and its type), so that no comparison quietly selects every row or none.
A column with no value at all compares with anything and matches nothing (``!=``: every
row). ``True``/``False`` compare only with a boolean column (a DataFrame given by Python).

Everything else (attribute access, calls, subscripts, arithmetic, lambdas,
comprehensions, f-strings, ``@`` references, backticks, ``&``/``|``) is refused with an
:class:`~aekit.errors.InputError` naming the construct.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from aekit.errors import InputError

MAX_LENGTH = 10_000  # characters; a selection is a line, not a program
MAX_DEPTH = 64  # nesting of the parsed tree

_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
            ast.GtE: ">=", ast.In: "in", ast.NotIn: "not in"}

# What a refused node is called in the error message.
_NAMES = {
    ast.Attribute: "attribute access", ast.Call: "function calls", ast.Subscript: "subscripts",
    ast.Lambda: "lambda", ast.ListComp: "comprehensions", ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions", ast.GeneratorExp: "comprehensions",
    ast.JoinedStr: "f-strings", ast.FormattedValue: "f-strings", ast.Dict: "dicts",
    ast.Set: "sets", ast.Starred: "starred expressions", ast.IfExp: "conditional expressions",
    ast.NamedExpr: "assignment expressions", ast.Await: "await", ast.Yield: "yield",
    ast.YieldFrom: "yield", ast.Slice: "slices", ast.BinOp: "arithmetic and bitwise operators",
}


@dataclass(frozen=True)
class Where:
    """A parsed, checked selection expression; ``mask(df)`` evaluates it on a label table."""

    text: str
    tree: ast.expr

    @property
    def columns(self) -> list[str]:
        """Column names the expression refers to, in order of appearance."""
        return [n.id for n in ast.walk(self.tree) if isinstance(n, ast.Name)]

    def mask(self, df: pd.DataFrame) -> np.ndarray:
        """Boolean array over ``df``'s rows that match.

        Each column is typed by :func:`column_kinds` (``df.attrs["column_kinds"]`` when
        given, as :func:`aekit.data.selection.load_labels` sets it from the whole file)."""
        unknown = [c for c in dict.fromkeys(self.columns) if c not in df.columns]
        if unknown:
            raise _bad(f"bad expression {_show(self.text)}: unknown column(s) "
                             f"{', '.join(unknown)}; columns are: {', '.join(map(str, df.columns))}")
        try:
            value = _Evaluator(df, self.text).eval(self.tree)
        except InputError:
            raise
        except (TypeError, ValueError) as exc:  # e.g. '<' between text and a number
            raise _bad(f"bad expression {_show(self.text)}: {_first_line(exc)}") from None
        if isinstance(value, _Col) and value.kind == BOOL:  # a boolean column is a condition
            value = value.values.fillna(False).astype(bool)
        if isinstance(value, _Col):
            raise _bad(f"bad expression {_show(self.text)}: it must be a condition "
                             "(a comparison), not a bare column; e.g. anomaly == 1")
        if isinstance(value, pd.Series):
            if value.dtype != bool:
                raise _bad(f"bad expression {_show(self.text)}: it must be a condition "
                                 "(a comparison), not a bare column; e.g. anomaly == 1")
            return value.to_numpy(dtype=bool)
        if isinstance(value, (bool, np.bool_)):
            return np.full(len(df), bool(value))
        raise _bad(f"bad expression {_show(self.text)}: it must be a condition, "
                         f"not a {type(value).__name__}")


def _bad(message: str) -> InputError:
    """A refused expression: an error about the ``where`` parameter (a caller that takes the
    expression under another name sets its own ``param``)."""
    return InputError(message, param="where")


def parse_where(text: str) -> Where:
    """Parse and check ``text``; raise InputError naming what is not allowed."""
    if not isinstance(text, str) or not text.strip():
        raise _bad("bad expression: it is empty")
    if len(text) > MAX_LENGTH:
        raise _bad(f"bad expression: longer than {MAX_LENGTH} characters")
    src = text.strip()
    if "`" in src:
        raise _bad(f"bad expression {_show(text)}: backticks are not allowed")
    if "@" in _outside_strings(src):
        raise _bad(f"bad expression {_show(text)}: '@' references are not allowed")
    try:
        tree = ast.parse(src, mode="eval").body
    except SyntaxError as exc:
        raise _bad(f"bad expression {_show(text)}: syntax error"
                         f"{f' at column {exc.offset}' if exc.offset else ''}") from None
    except (RecursionError, MemoryError, ValueError):
        raise _bad(f"bad expression {_show(text)}: too deeply nested") from None
    _check(tree, text, 0)
    return Where(text, tree)


def _outside_strings(src: str) -> str:
    """The source with string literals blanked (best effort, for the '@' check only)."""
    out, quote, i = [], None, 0
    while i < len(src):
        ch = src[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _refuse(node: ast.AST, text: str, what: str | None = None) -> None:
    name = what or _NAMES.get(type(node)) or type(node).__name__
    raise _bad(f"bad expression {_show(text)}: {name} not allowed; use column names, "
                     "literals, comparisons (== != < <= > >= in, not in), and/or/not")


def _check(node: ast.AST, text: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _bad(f"bad expression {_show(text)}: too deeply nested")
    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v, text, depth + 1)
    elif isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.Not):
            _check(node.operand, text, depth + 1)
        elif isinstance(node.op, (ast.USub, ast.UAdd)) and _is_number(node.operand):
            pass
        else:
            _refuse(node, text, "this unary operator")
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _COMPARE:
                _refuse(node, text, f"operator {type(op).__name__}")
        operands = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            if isinstance(op, (ast.In, ast.NotIn)):
                rhs = operands[i + 1]
                if not isinstance(rhs, (ast.List, ast.Tuple)):
                    _refuse(rhs, text, "'in' with anything but a list of literals")
        for operand in operands:
            _check(operand, text, depth + 1)
    elif isinstance(node, ast.Name):
        if node.id.startswith("__"):
            _refuse(node, text, f"the name {node.id!r}")
    elif isinstance(node, ast.Constant):
        if not isinstance(node.value, (int, float, str, bool, type(None))):
            _refuse(node, text, f"the literal {node.value!r}")
    elif isinstance(node, (ast.List, ast.Tuple)):
        for elt in node.elts:
            if not (_is_literal(elt)):
                _refuse(elt, text, "lists of anything but literals")
    else:
        _refuse(node, text)


def _is_number(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, (int, float))
            and not isinstance(node.value, bool))


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _is_number(node.operand)
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None)))


def _first_line(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return msg


#: A decimal number as a CSV cell holds it (surrounding blanks allowed); nan/inf are text.
_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")

NUMBER, TEXT, BOOL, EMPTY = "numeric", "text", "boolean", "empty"


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, str):
        return not v.strip()
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def column_kind(values: pd.Series) -> str:
    """How ``--where`` types a column: 'numeric' (every non-empty value a number), 'text',
    'boolean' (a bool column given by Python) or 'empty' (no value at all)."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return BOOL
    if pd.api.types.is_numeric_dtype(values.dtype):
        return NUMBER if values.notna().any() else EMPTY
    seen = False
    for v in pd.unique(values.astype(object)):
        if _missing(v):
            continue
        seen = True
        if isinstance(v, (bool, np.bool_)):
            return TEXT
        if isinstance(v, (int, float, np.integer, np.floating)):
            if not math.isfinite(float(v)):
                return TEXT
            continue
        if not (isinstance(v, str) and _NUMBER.fullmatch(v)):
            return TEXT
    return NUMBER if seen else EMPTY


def column_kinds(df: pd.DataFrame) -> dict:
    """{column: kind} for every column of ``df`` (see :func:`column_kind`)."""
    return {c: column_kind(df[c]) for c in df.columns}


def _typed(values: pd.Series, kind: str) -> pd.Series:
    """The column as compared: numbers as numbers (missing: NaN), text as Python strings
    exactly as written (missing: None)."""
    if kind in (BOOL,) or (kind == NUMBER and pd.api.types.is_numeric_dtype(values.dtype)):
        return values
    obj = values.astype(object)
    missing = obj.map(_missing).to_numpy(dtype=bool)
    obj = obj.where(~missing, None)
    if kind == NUMBER:
        return pd.to_numeric(obj.map(lambda v: v.strip() if isinstance(v, str) else v))
    return obj


def _literal_kind(v: Any) -> str:
    if v is None:
        return EMPTY
    if isinstance(v, bool):
        return BOOL
    if isinstance(v, (int, float)):
        return NUMBER
    return TEXT


@dataclass(frozen=True)
class _Col:
    """A column as an operand: its typed values and its kind."""

    name: str
    values: pd.Series
    kind: str

    def describe(self) -> str:
        if self.kind == TEXT:
            return f"column {self.name!r} holds text"
        return f"column {self.name!r} is {self.kind}" + (
            " (every value in it is a number)" if self.kind == NUMBER else "")


class _Evaluator:
    """Evaluates a checked tree over a DataFrame: columns are typed Series, literals stay Python."""

    def __init__(self, df: pd.DataFrame, text: str):
        self.df, self.text = df, text
        self.kinds = dict(df.attrs.get("column_kinds") or {})

    def _column(self, name: str) -> _Col:
        values = self.df[name]
        if isinstance(values, pd.DataFrame):
            raise _bad(f"bad expression {_show(self.text)}: column {name!r} "
                             "appears more than once")
        kind = self.kinds.get(name) or column_kind(values)
        return _Col(name, _typed(values, kind), kind)

    def _error(self, what: str) -> InputError:
        return _bad(f"bad expression {_show(self.text)}: {what}")

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Name):
            return self._column(node.id)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return ~self._bool(self.eval(node.operand))
            v = node.operand.value  # a number, by _check
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.eval(e) for e in node.elts]
        if isinstance(node, ast.BoolOp):
            parts = [self._bool(self.eval(v)) for v in node.values]
            out = parts[0]
            for p in parts[1:]:
                out = (out & p) if isinstance(node.op, ast.And) else (out | p)
            return out
        if isinstance(node, ast.Compare):
            operands = [self.eval(node.left)] + [self.eval(c) for c in node.comparators]
            out = None
            for i, op in enumerate(node.ops):
                part = self._bool(self._compare(operands[i], _COMPARE[type(op)], operands[i + 1]))
                out = part if out is None else (out & part)
            return out
        raise self._error(f"cannot evaluate {type(node).__name__}")  # unreachable after _check

    def _bool(self, v: Any) -> pd.Series:
        if isinstance(v, _Col):
            if v.kind == BOOL:
                return v.values.fillna(False).astype(bool)
            raise self._error(f"column {v.name!r} is not a condition; compare it, e.g. "
                              "anomaly == 1")
        if isinstance(v, pd.Series):
            if v.dtype != bool:
                return v.fillna(False).astype(bool)
            return v
        if isinstance(v, (bool, np.bool_)):
            return pd.Series(np.full(len(self.df), bool(v)), index=self.df.index)
        raise self._error(f"{v!r} is not a condition")

    def _check_kinds(self, a: Any, op: str, b: Any) -> None:
        """Refuse comparing a number with text (either way round), or a boolean with either."""
        cols = [x for x in (a, b) if isinstance(x, _Col)]
        if len(cols) == 2:
            ka, kb = a.kind, b.kind
            if EMPTY not in (ka, kb) and ka != kb:
                raise self._error(f"{a.describe()} and {b.describe()}: they cannot be compared")
            return
        if not cols:  # literals only
            ka = _literal_kind(a)
            kb = [_literal_kind(v) for v in (b if isinstance(b, list) else [b])]
            bad = [k for k in kb if EMPTY not in (ka, k) and k != ka]
            if bad:
                raise self._error(f"{a!r} {op} {b!r} compares a {ka} value with a {bad[0]} one")
            return
        col = cols[0]
        values = b if isinstance(b, list) else [b if col is a else a]
        if col.kind == EMPTY:
            return
        for v in values:
            kind = _literal_kind(v)
            if kind in (EMPTY, col.kind):
                continue
            if col.kind == NUMBER:
                hint = (f"; e.g. {col.name} {op} {v.strip()}" if isinstance(v, str)
                        and _NUMBER.fullmatch(v) and op not in ("in", "not in") else "")
                raise self._error(f"{col.describe()}; it cannot be compared with the "
                                  f"{kind} value {v!r}: compare it with a number{hint}")
            if col.kind == TEXT:
                example = (f"[{str(v)!r}]" if op in ("in", "not in") else repr(str(v)))
                raise self._error(f"{col.describe()}; it cannot be compared with the {kind} "
                                  f"value {v!r} using {op}: compare it with a string, e.g. "
                                  f"{col.name} {op} {example}")
            raise self._error(f"{col.describe()}; it cannot be compared with the {kind} "
                              f"value {v!r}: compare it with True or False")

    def _compare(self, a: Any, op: str, b: Any) -> Any:
        if op in ("in", "not in"):
            if isinstance(b, _Col) or not isinstance(b, list):
                raise self._error("'in' needs a list of literals on its right")
            self._check_kinds(a, op, b)
            values = list(b)
            if isinstance(a, _Col):
                hit = a.values.isin([v for v in values if v is not None])
                if any(v is None for v in values):
                    hit = hit | a.values.isna()
                hit = hit.fillna(False).astype(bool)
                return hit if op == "in" else ~hit
            hit = a in values
            return hit if op == "in" else not hit
        if a is None or b is None:
            if op not in ("==", "!="):
                raise self._error("only == and != compare with None")
            other = b if a is None else a
            if not isinstance(other, _Col):
                return (other is None) == (op == "==")
            return other.values.isna() if op == "==" else other.values.notna()
        self._check_kinds(a, op, b)
        if not isinstance(a, _Col) and not isinstance(b, _Col):
            return bool({"==": lambda: a == b, "!=": lambda: a != b, "<": lambda: a < b,
                         "<=": lambda: a <= b, ">": lambda: a > b, ">=": lambda: a >= b}[op]())
        av = a.values if isinstance(a, _Col) else a
        bv = b.values if isinstance(b, _Col) else b
        if op not in ("==", "!="):  # text orders as text; a missing value matches nothing
            if any(isinstance(x, _Col) and x.kind == EMPTY for x in (a, b)):
                return pd.Series(False, index=self.df.index)
            present = pd.Series(True, index=self.df.index)
            for side in (av, bv):
                if isinstance(side, pd.Series):
                    present &= side.notna()
            if isinstance(av, pd.Series):
                av = av.where(present, "" if a.kind == TEXT else np.nan)
            if isinstance(bv, pd.Series):
                bv = bv.where(present, "" if b.kind == TEXT else np.nan)
            result = {"<": lambda: av < bv, "<=": lambda: av <= bv, ">": lambda: av > bv,
                      ">=": lambda: av >= bv}[op]()
            return result.fillna(False).astype(bool) & present
        result = (av == bv) if op == "==" else (av != bv)
        if isinstance(result, pd.Series):
            return result.fillna(op == "!=").astype(bool) if result.dtype != bool else result
        return result


def _show(text: str, limit: int = 80) -> str:
    """The expression as quoted in a message, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
