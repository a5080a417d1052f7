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

Everything else (attribute access, calls, subscripts, arithmetic, lambdas,
comprehensions, f-strings, ``@`` references, backticks, ``&``/``|``) is refused with an
:class:`~aekit.errors.InputError` naming the construct.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError

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
        """Boolean array over ``df``'s rows that match."""
        unknown = [c for c in dict.fromkeys(self.columns) if c not in df.columns]
        if unknown:
            raise InputError(f"bad --where expression {_show(self.text)}: unknown column(s) "
                             f"{', '.join(unknown)}; columns are: {', '.join(map(str, df.columns))}")
        try:
            value = _Evaluator(df, self.text).eval(self.tree)
        except InputError:
            raise
        except (TypeError, ValueError) as exc:  # e.g. '<' between text and a number
            raise InputError(f"bad --where expression {_show(self.text)}: {_first_line(exc)}") from None
        if isinstance(value, pd.Series):
            if value.dtype != bool:
                raise InputError(f"bad --where expression {_show(self.text)}: it must be a condition "
                                 "(a comparison), not a bare column; e.g. anomaly == 1")
            return value.to_numpy(dtype=bool)
        if isinstance(value, (bool, np.bool_)):
            return np.full(len(df), bool(value))
        raise InputError(f"bad --where expression {_show(self.text)}: it must be a condition, "
                         f"not a {type(value).__name__}")


def parse_where(text: str) -> Where:
    """Parse and check ``text``; raise InputError naming what is not allowed."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("bad --where expression: it is empty")
    if len(text) > MAX_LENGTH:
        raise InputError(f"bad --where expression: longer than {MAX_LENGTH} characters")
    src = text.strip()
    if "`" in src:
        raise InputError(f"bad --where expression {_show(text)}: backticks are not allowed")
    if "@" in _outside_strings(src):
        raise InputError(f"bad --where expression {_show(text)}: '@' references are not allowed")
    try:
        tree = ast.parse(src, mode="eval").body
    except SyntaxError as exc:
        raise InputError(f"bad --where expression {_show(text)}: syntax error"
                         f"{f' at column {exc.offset}' if exc.offset else ''}") from None
    except (RecursionError, MemoryError, ValueError):
        raise InputError(f"bad --where expression {_show(text)}: too deeply nested") from None
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
    raise InputError(f"bad --where expression {_show(text)}: {name} not allowed; use column names, "
                     "literals, comparisons (== != < <= > >= in, not in), and/or/not")


def _check(node: ast.AST, text: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InputError(f"bad --where expression {_show(text)}: too deeply nested")
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


class _Evaluator:
    """Evaluates a checked tree over a DataFrame: columns are Series, literals stay Python."""

    def __init__(self, df: pd.DataFrame, text: str):
        self.df, self.text = df, text

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Name):
            return self.df[node.id]
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
        raise InputError(f"bad --where expression {_show(self.text)}: cannot evaluate "
                         f"{type(node).__name__}")  # unreachable after _check

    def _bool(self, v: Any) -> pd.Series:
        if isinstance(v, pd.Series):
            if v.dtype != bool:
                if str(v.dtype) == "boolean":  # nullable booleans: missing is no match
                    return v.fillna(False).astype(bool)
                raise InputError(f"bad --where expression {_show(self.text)}: column {v.name!r} is not "
                                 "a condition; compare it, e.g. anomaly == 1")
            return v
        if isinstance(v, (bool, np.bool_)):
            return pd.Series(np.full(len(self.df), bool(v)), index=self.df.index)
        raise InputError(f"bad --where expression {_show(self.text)}: {v!r} is not a condition")

    def _compare(self, a: Any, op: str, b: Any) -> Any:
        if op in ("in", "not in"):
            if not isinstance(a, pd.Series):
                a = pd.Series([a] * len(self.df), index=self.df.index, dtype=object)
            values = list(b)
            hit = a.isin([v for v in values if v is not None])
            if any(v is None for v in values):
                hit = hit | a.isna()
            return hit if op == "in" else ~hit
        if a is None or b is None:
            if op not in ("==", "!="):
                raise InputError(f"bad --where expression {_show(self.text)}: only == and != "
                                 "compare with None")
            other = b if a is None else a
            if not isinstance(other, pd.Series):
                return (other is None) == (op == "==")
            return other.isna() if op == "==" else other.notna()
        if not isinstance(a, pd.Series) and not isinstance(b, pd.Series):
            return bool({"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b,
                         ">=": a >= b}[op])
        for side in (a, b):
            if (isinstance(side, pd.Series) and op not in ("==", "!=")
                    and (side.dtype == object or pd.api.types.is_string_dtype(side.dtype))):
                other = b if side is a else a
                if not isinstance(other, (str, pd.Series)):
                    raise InputError(f"bad --where expression {_show(self.text)}: column "
                                     f"{side.name!r} holds text; it cannot be compared with "
                                     f"{other!r} using {op}")
        result = {"==": lambda: a == b, "!=": lambda: a != b, "<": lambda: a < b,
                  "<=": lambda: a <= b, ">": lambda: a > b, ">=": lambda: a >= b}[op]()
        if isinstance(result, pd.Series):
            return result.fillna(False).astype(bool) if result.dtype != bool else result
        return result


def _show(text: str, limit: int = 80) -> str:
    """The expression as quoted in a message, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
