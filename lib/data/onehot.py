"""One-hot columns that stay consistent between files (tutorial 2.2).

Fit once, apply many: :func:`fit` records the categories of each column, :func:`transform`
turns each column into one ``COL_value`` column per category (integers 0/1, because bools
are awkward to feed to PyTorch), and a saved categories file makes train, validation and
test files get identical columns in identical order.

Values are text: a CSV is read with every cell as a string, so ``01`` and ``1`` are two
categories, and categories are sorted as Python strings (code point order, so ``10`` sorts
before ``9``). Only an empty cell is a missing value.

Column layout for a column COL: ``COL_<category>`` for each kept category in sorted order,
then ``COL_infrequent`` (when --min-frequency folded some categories), then ``COL_nan``
(with dummy_na). The new columns follow the input's columns, in the order the columns were
named.

Categories file (JSON, format ``aekit-categories``, version 1)::

    {"format": "aekit-categories", "version": 1,
     "columns": {"COL": {"categories": [...], "infrequent": [...], "dummy_na": false}}}
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from aekit.errors import InputError, preview

FORMAT = "aekit-categories"
FORMAT_VERSION = 1

#: The tutorial's rule of thumb: above ~50 categories, an embedding is the better tool.
DEFAULT_MAX_CATEGORIES = 50

INFREQUENT = "infrequent"
NAN = "nan"




@dataclass
class ColumnCategories:
    """What was seen in one column when fitting: the layout of its one-hot columns."""

    categories: list[str]
    infrequent: list[str] = field(default_factory=list)
    dummy_na: bool = False

    def output_names(self, column: str) -> list[str]:
        names = [f"{column}_{c}" for c in self.categories]
        if self.infrequent:
            names.append(f"{column}_{INFREQUENT}")
        if self.dummy_na:
            names.append(f"{column}_{NAN}")
        return names

    def to_json(self) -> dict:
        return {"categories": list(self.categories), "infrequent": list(self.infrequent),
                "dummy_na": bool(self.dummy_na)}


Categories = dict  # column name -> ColumnCategories, in output order


# --------------------------------------------------------------------------- reading

def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV (or '-') with every cell as text and only empty cells missing."""
    from aekit.system.textinput import read_csv

    return read_csv(path, dtype=str, keep_default_na=False, na_values=[""])


def check_columns(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The columns, deduplicated in order; InputError naming any that are missing."""
    wanted = list(dict.fromkeys(columns))
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise InputError(f"column(s) {', '.join(repr(c) for c in missing)} not found; columns are: "
                         f"{', '.join(map(str, df.columns))}")
    return wanted


def _values(df: pd.DataFrame, column: str) -> pd.Series:
    return df[column].astype(object)


def _missing_rows(values: pd.Series) -> np.ndarray:
    return np.flatnonzero(values.isna().to_numpy(dtype=bool))


def _missing_error(column: str, rows: np.ndarray) -> InputError:
    return InputError(f"column '{column}' has {rows.size} missing value(s) in data row(s) "
                      f"{preview(rows + 1)}; fill them, or encode them as a "
                      f"'{column}_{NAN}' column", param="dummy_na")


# --------------------------------------------------------------------------- fit

def fit(df: pd.DataFrame, columns: Sequence[str], max_categories: int = DEFAULT_MAX_CATEGORIES,
        min_frequency: int | None = None, dummy_na: bool = False) -> Categories:
    """Record the categories of each column.

    max_categories: refuse a column with more one-hot columns than this (0: no limit).
    min_frequency: categories seen fewer times are folded into ``COL_infrequent``.
    dummy_na: missing values get a ``COL_nan`` column; without it they are an error.
    """
    columns = check_columns(df, columns)
    if len(df) == 0:
        raise InputError("no data rows to fit categories on")
    if max_categories < 0:
        raise InputError(f"must be 0 (no limit) or more, got {max_categories}",
                         param="max_categories")
    if min_frequency is not None and min_frequency < 1:
        raise InputError(f"must be at least 1, got {min_frequency}", param="min_frequency")
    out: Categories = {}
    for col in columns:
        values = _values(df, col)
        missing = _missing_rows(values)
        if missing.size and not dummy_na:
            raise _missing_error(col, missing)
        counts = values.dropna().value_counts()
        seen = sorted(str(c) for c in counts.index)
        if min_frequency is not None:
            rare = set(str(c) for c in counts[counts < min_frequency].index)
        else:
            rare = set()
        kept = [c for c in seen if c not in rare]
        infrequent = [c for c in seen if c in rare]
        n_cols = len(kept) + (1 if infrequent else 0)
        if max_categories and n_cols > max_categories:
            folded = f" ({len(seen)} before folding the rare ones)" if infrequent else ""
            raise InputError(
                f"column '{col}' has {n_cols} categories{folded}, more than {max_categories}: "
                f"one-hot is for low cardinality, an embedding is the better tool for a column "
                f"like this (or raise this limit, or fold rare values by a minimum frequency)",
                param="max_categories")
        out[col] = ColumnCategories(kept, infrequent, bool(dummy_na))
    return out


# --------------------------------------------------------------------------- apply

def transform(df: pd.DataFrame, cats: Mapping[str, ColumnCategories],
              handle_unknown: str = "error", keep_original: bool = False
              ) -> tuple[pd.DataFrame, dict[str, int]]:
    """One-hot encode ``df`` with fitted ``cats``.

    Returns (the table, {column: rows with an unknown category}). handle_unknown='error'
    raises InputError on a category not seen when fitting; 'ignore' encodes such a row as
    all zeros (counted in the returned dict).
    """
    if handle_unknown not in ("error", "ignore"):
        raise InputError(f"must be 'error' or 'ignore', got {handle_unknown!r}",
                         param="handle_unknown")
    columns = check_columns(df, list(cats))
    new_names: list[str] = []
    for col in columns:
        new_names += cats[col].output_names(col)
    kept_cols = [c for c in df.columns if keep_original or c not in cats]
    kept_set = set(kept_cols)  # sets and counts: linear in the number of categories
    clash = [n for n in new_names if n in kept_set]
    dup = sorted(n for n, k in Counter(new_names).items() if k > 1)
    if clash or dup:
        raise InputError(f"one-hot column name(s) {preview(sorted(set(clash + dup)))} collide with "
                         "another column; rename the column or the category")
    n = len(df)
    unknown_counts: dict[str, int] = {}
    blocks = []
    for col in columns:
        spec = cats[col]
        values = _values(df, col)
        missing = values.isna().to_numpy(dtype=bool)
        if missing.any() and not spec.dummy_na:
            raise _missing_error(col, np.flatnonzero(missing))
        names = spec.output_names(col)
        index = {c: i for i, c in enumerate(spec.categories)}
        if spec.infrequent:
            slot = len(spec.categories)
            index.update({c: slot for c in spec.infrequent})
        codes = values.map(lambda v: -2 if pd.isna(v) else index.get(str(v), -1))
        codes = codes.to_numpy(dtype=np.int64)
        unknown = codes == -1
        if unknown.any():
            seen = pd.unique(values[unknown].map(str))
            if handle_unknown == "error":
                raise InputError(
                    f"column '{col}': {int(unknown.sum())} row(s) with categories not seen when "
                    f"fitting: {preview([repr(v) for v in seen])} (first in data row "
                    f"{int(np.flatnonzero(unknown)[0]) + 1}); 'ignore' encodes them as all "
                    "zeros", param="handle_unknown")
            unknown_counts[col] = int(unknown.sum())
        matrix = np.zeros((n, len(names)), dtype=np.int64)
        hit = codes >= 0
        matrix[np.flatnonzero(hit), codes[hit]] = 1
        if spec.dummy_na:
            matrix[missing, len(names) - 1] = 1
        blocks.append(pd.DataFrame(matrix, columns=names, index=df.index))
    out = pd.concat([df[kept_cols], *blocks], axis=1)
    return out, unknown_counts


def fit_transform(df: pd.DataFrame, columns: Sequence[str], **fit_kwargs) -> tuple[pd.DataFrame, Categories]:
    """Fit on ``df`` and encode it (no unknowns are possible)."""
    cats = fit(df, columns, **fit_kwargs)
    out, _ = transform(df, cats)
    return out, cats


# --------------------------------------------------------------------------- categories file

def to_json(cats: Mapping[str, ColumnCategories], extra: Mapping | None = None) -> dict:
    doc = {"format": FORMAT, "version": FORMAT_VERSION,
           "columns": {col: spec.to_json() for col, spec in cats.items()}}
    doc.update(extra or {})
    return doc


def save_categories(cats: Mapping[str, ColumnCategories], path: str | os.PathLike,
                    extra: Mapping | None = None) -> None:
    """Write the categories file atomically (``extra``: e.g. the command line, for provenance)."""
    from aekit.system.fileio import atomic_path

    text = json.dumps(to_json(cats, extra), indent=2, ensure_ascii=False) + "\n"
    with atomic_path(path, special_ok=True) as tmp:  # a device or FIFO: written in place
        with open(tmp, "a" if os.fspath(tmp) == os.fspath(path) else "w", encoding="utf-8") as fh:
            fh.write(text)


def from_json(doc, name: str = "categories") -> Categories:
    bad = InputError(f"{name}: not an aekit categories file (one that ae-onehot saved)")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("columns"), dict):
        raise bad
    if doc.get("version") != FORMAT_VERSION:
        raise InputError(f"{name}: categories file version {doc.get('version')!r} is not supported "
                         f"(this aekit reads version {FORMAT_VERSION})")
    out: Categories = {}
    for col, spec in doc["columns"].items():
        if not isinstance(spec, dict):
            raise bad
        c, inf = spec.get("categories", []), spec.get("infrequent", [])
        if not (isinstance(c, list) and isinstance(inf, list)
                and all(isinstance(v, str) for v in c + inf)):
            raise InputError(f"{name}: column '{col}': categories must be lists of strings")
        out[col] = ColumnCategories(list(c), list(inf), bool(spec.get("dummy_na", False)))
    if not out:
        raise InputError(f"{name}: the categories file names no columns")
    return out


def load_categories(path: str | os.PathLike) -> Categories:
    from aekit.system.textinput import display_name, read_json_input

    name = display_name(path)
    doc = read_json_input(path, "an aekit categories file")
    return from_json(doc, name)


def categories_for(df: pd.DataFrame, columns: Sequence[str], categories_path=None,
                   **fit_kwargs) -> Categories:
    """The categories ae-onehot encodes with: those saved in ``categories_path`` (only
    ``columns`` of them when given; InputError when one was not saved), else fitted on df."""
    if categories_path is None:
        return fit(df, columns, **fit_kwargs)
    cats = load_categories(categories_path)
    if columns:
        unsaved = [c for c in columns if c not in cats]
        if unsaved:
            raise InputError(f"column(s) {', '.join(map(repr, unsaved))} not in "
                             f"{categories_path}; it has: {', '.join(cats)}")
        cats = {c: cats[c] for c in dict.fromkeys(columns)}
    return cats
