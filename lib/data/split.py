"""Leak-free splits: a locked test set, then K cross-validation folds (tutorial 2.1).

The result is the split table every later command reads (see :mod:`aekit.data.selection`):
one row per id with ``split`` = ``train`` or ``test`` and ``fold`` = 0..K-1 on train rows,
<NA> on test rows. Fold k is the validation set of run k; the other folds train.

Three algorithms, all deterministic for a given seed (same input + seed -> same table):

* **plain** (no stratify, no groups) is the tutorial's recipe exactly:
  ``train_test_split(ids, test_size=ratio, shuffle=True, random_state=seed)`` for the test
  set, then the train rows, in the order train_test_split returned them, cut into K parts
  with ``numpy.array_split`` (sizes differ by at most one: 100 rows in 3 -> 34, 33, 33).
* **stratified** (``stratify``, no groups): per class, the test set gets ``floor`` or ``ceil``
  of ``ratio * n_class`` rows (largest-remainder apportionment, total ``ceil(ratio * n)`` as
  in scikit-learn), but at least one row and never all of them; the class's train rows are then dealt round-robin over the folds, so every
  class has ``floor`` or ``ceil`` of ``n_class_train / K`` rows in each fold and the fold sizes
  still differ by at most one.
* **grouped** (``groups``, with or without ``stratify``, like scikit-learn's
  StratifiedGroupKFold): whole groups are placed, largest first, each into the bin (test or
  train, then fold 0..K-1) where it brings the per-class row counts closest to their targets
  (least squared error). Without stratify this is "largest group to the emptiest fold", so fold
  sizes in rows differ by at most the size of the largest group rather than by one. A group
  is never on two sides: all its rows share one split and one fold. The search is
  :mod:`aekit.data.groupfolds`.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from aekit.data.groupfolds import assign_grouped, fold_groups
from aekit.errors import InputError, preview
from aekit.system.textinput import display_name

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")




def _missing(values: pd.Series) -> np.ndarray:
    """Missing cells: NaN/None, or empty text (CSV inputs are read with empty cells as '')."""
    s = values.astype(object)
    return (s.isna() | s.map(lambda v: isinstance(v, str) and v.strip() == "")).to_numpy(dtype=bool)


# --------------------------------------------------------------------------- inputs

def is_hdf5(path: str | os.PathLike) -> bool:
    """True when ``path`` is an HDF5 file (by its signature, whatever its name)."""
    if str(path) == "-":
        return False
    p = Path(path)
    if not p.is_file():  # a pipe is never probed (that would consume it): named .h5, it is
        return p.suffix.lower() in HDF5_SUFFIXES  # refused as not a regular file, else CSV
    import h5py

    try:
        return bool(h5py.is_hdf5(str(p))) or p.suffix.lower() in HDF5_SUFFIXES
    except OSError:
        return p.suffix.lower() in HDF5_SUFFIXES


def load_split_input(path: str | os.PathLike, id_column: str = "id",
                     labels_path: str | os.PathLike | None = None,
                     keep: str | None = None) -> pd.DataFrame:
    """The rows to split: a DataFrame whose first column is ``id`` (str), then any other columns.

    ``path`` is a features file (its ids; HDF5 is recognised by its signature) or a CSV
    (``-`` is stdin) with an ``id_column``; a CSV's other columns are kept as text, exactly
    as written. ``labels_path``: a CSV joined by id (its ``id_column`` too); every id needs
    a row there. Columns ``split`` and ``fold`` of a CSV input (an earlier ae-split output)
    are dropped, since they are what is being recomputed, unless named by ``keep`` (the
    --split-column: e.g. ae-labels' ``split``, which holds the data set's own folders).
    """
    dropped = tuple(c for c in ("split", "fold") if c != keep)
    from aekit.system.textinput import read_csv

    name = display_name(path)
    if str(path) == "-" and labels_path is not None and str(labels_path) == "-":
        raise InputError("cannot be '-' (stdin) when the input is read from stdin too",
                         param="labels_path")
    if is_hdf5(path):
        from aekit.data.store import read_ids

        df = pd.DataFrame({"id": read_ids(path)}, dtype=object)
    else:
        p = Path(path)
        if str(path) != "-" and p.is_dir():
            raise InputError(f"{p}: is a directory, expected a features file or a CSV")
        raw = read_csv(path, dtype=str, keep_default_na=False)
        if id_column not in raw.columns:
            raise InputError(f"{name}: column '{id_column}' not found; columns are: "
                             f"{', '.join(map(str, raw.columns))}", param="id_column")
        rest = [c for c in raw.columns if c != id_column and c not in dropped]
        if "id" in rest:
            raise InputError(f"{name}: has both '{id_column}' (the id column) and 'id'; "
                             "rename one of them")
        df = pd.concat([raw[[id_column]].rename(columns={id_column: "id"}), raw[rest]], axis=1)
        df = df.astype(object)
    if len(df) == 0:
        raise InputError(f"{name}: no rows to split")
    empty = _missing(df["id"])
    if empty.any():
        rows = np.flatnonzero(empty) + 1
        raise InputError(f"{name}: empty id in {len(rows)} row(s): data row(s) {preview(rows)}")
    dup = df["id"].duplicated(keep=False)
    if dup.any():
        raise InputError(f"{name}: duplicate ids: {preview(pd.unique(df.loc[dup, 'id']))}")
    if labels_path is not None:
        from aekit.data.selection import load_labels

        labels = load_labels(labels_path, list(df["id"]), id_column=id_column, as_text=True)
        lname = display_name(labels_path)
        labels = labels.drop(columns=[c for c in dropped if c in labels.columns])
        clash = [c for c in labels.columns if c in df.columns]
        if clash:
            raise InputError(f"{lname}: column(s) {', '.join(map(str, clash))} are also in {name}; "
                             "rename them in one of the files")
        df = pd.concat([df.reset_index(drop=True), labels.reset_index(drop=True)], axis=1)
    return df


# --------------------------------------------------------------------------- splitting

def _check_params(test_ratio: float, folds: int, seed: int) -> None:
    if not isinstance(test_ratio, (int, float)) or not (0.0 < float(test_ratio) < 1.0):
        raise InputError(f"must be between 0 and 1 (both excluded), got {test_ratio}",
                         param="test_ratio")
    if folds < 2:
        raise InputError(f"must be at least 2, got {folds}", param="folds")
    if seed < 0 or seed >= 2**32:
        raise InputError(f"must be between 0 and 2**32-1, got {seed}", param="seed")


def _column(df: pd.DataFrame, col: str, param: str) -> pd.Series:
    """Column ``col`` as text, named by parameter ``param`` (``stratify``...)."""
    if col not in df.columns:
        cols = ", ".join(map(str, df.columns))
        hint = (" (a features file has only ids: join label columns from a label CSV)"
                if list(df.columns) == ["id"] else "")
        raise InputError(f"column '{col}' not found; columns are: {cols}{hint}", param=param)
    s = df[col]
    miss = _missing(s)
    if miss.any():
        rows = np.flatnonzero(miss) + 1
        raise InputError(f"column '{col}' is empty in {len(rows)} row(s): "
                         f"data row(s) {preview(rows)}", param=param)
    # Keys compared and sorted as text so that the order never depends on dtype or hashing.
    return s.map(str)


def _check_classes(classes: Sequence[str]) -> np.ndarray:
    cls = pd.Series(list(classes), dtype=object).map(str)
    counts = cls.value_counts()
    small = sorted(counts[counts < 2].index)
    if small:
        which = (f"class {small[0]!r} has" if len(small) == 1 else
                 f"classes {preview([repr(c) for c in small])} have")
        raise InputError(f"{which} only 1 row; stratifying needs at least 2 rows "
                         "per class (one for the test set, one for training)", param="classes")
    return cls.to_numpy()


def assign(n: int, test_ratio: float = 0.2, folds: int = 5, seed: int = 42,
           classes: Sequence[str] | None = None, groups: Sequence[str] | None = None,
           notes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split rows 0..n-1. Returns (is_test bool[n], fold int64[n] with -1 on test rows).

    ``classes``: a class key per row (stratify); ``groups``: a group key per row.
    Raises InputError for bad parameters, too few rows/groups, or a class too small.
    ``notes``, when given, receives one line per constraint the split could not meet
    (a class without test rows, a class missing from some folds).
    """
    _check_params(test_ratio, folds, seed)
    ratio = float(test_ratio)
    cls = None if classes is None else _check_classes(classes)
    if groups is not None:
        grp = pd.Series(list(groups), dtype=object).map(str)
        n_groups = grp.nunique()
        if n_groups < folds + 1:
            raise InputError(f"{folds} needs at least {folds + 1} groups ({folds} folds + the "
                             f"test set), found {n_groups}", param="folds")
        is_test, fold = assign_grouped(ratio, folds, seed, grp.to_numpy(), cls)
        if notes is not None:
            notes.extend(coverage_notes(is_test, fold, folds, cls, grp.to_numpy()))
        return is_test, fold
    n_test = math.ceil(ratio * n)  # as scikit-learn's train_test_split
    n_train = n - n_test
    if n_train < folds:
        raise InputError(f"{folds} is more than the {n_train} train row(s) left of {n} "
                         f"after {n_test} go to the test set", param="folds")
    if cls is None:
        return _assign_plain(n, ratio, folds, seed)
    is_test, fold = _assign_stratified(ratio, folds, seed, cls, n_test)
    if notes is not None:
        notes.extend(coverage_notes(is_test, fold, folds, cls))
    return is_test, fold


def assign_folds(n: int, folds: int = 5, seed: int = 42, classes: Sequence[str] | None = None,
                 groups: Sequence[str] | None = None,
                 notes: list[str] | None = None) -> np.ndarray:
    """Folds 0..K-1 for rows 0..n-1 that are all train rows (the test set is chosen
    elsewhere, e.g. by ``--split-column``): the fold part of :func:`assign`."""
    _check_params(0.5, folds, seed)
    rng = np.random.default_rng(seed)
    cls = None if classes is None else _check_classes(classes)
    if groups is not None:
        grp = pd.Series(list(groups), dtype=object).map(str).to_numpy()
        gkeys, ginv = np.unique(grp, return_inverse=True)
        if gkeys.size < folds:
            raise InputError(f"{folds} needs at least {folds} train groups, "
                             f"found {gkeys.size}", param="folds")
        ckeys, cinv = (np.array([""], dtype=object), np.zeros(n, dtype=np.int64)) if cls is None \
            else np.unique(cls, return_inverse=True)
        sizes = np.zeros((gkeys.size, ckeys.size))
        np.add.at(sizes, (ginv, cinv), 1.0)
        rank = rng.permutation(gkeys.size)
        fold = fold_groups(sizes, folds, seed, rank, rng.permutation(folds))[ginv]
        if notes is not None:
            notes.extend(coverage_notes(np.zeros(n, dtype=bool), fold, folds, cls, grp, False))
        return fold
    if n < folds:
        raise InputError(f"{folds} is more than the {n} train row(s)", param="folds")
    fold = np.full(n, -1, dtype=np.int64)
    if cls is None:
        for k, part in enumerate(np.array_split(rng.permutation(n), folds)):
            fold[part] = k
        return fold
    pos = 0
    for c in sorted(set(cls.tolist())):  # each class dealt round-robin, as in _assign_stratified
        rows = rng.permutation(np.flatnonzero(cls == c))
        fold[rows] = (pos + np.arange(rows.size)) % folds
        pos += rows.size
    if notes is not None:
        notes.extend(coverage_notes(np.zeros(n, dtype=bool), fold, folds, cls, None, False))
    return fold


def _assign_plain(n: int, ratio: float, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(np.arange(n), test_size=ratio, shuffle=True,
                                           random_state=seed)
    is_test = np.zeros(n, dtype=bool)
    is_test[test_idx] = True
    fold = np.full(n, -1, dtype=np.int64)
    for k, part in enumerate(np.array_split(train_idx, folds)):
        fold[part] = k
    return is_test, fold


def _assign_stratified(ratio: float, folds: int, seed: int, cls: np.ndarray,
                       n_test: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = cls.size
    keys = sorted(set(cls.tolist()))
    members = {c: np.flatnonzero(cls == c) for c in keys}
    # Largest remainder: floor(ratio * n_c) each, the leftover rows to the largest fractions
    # (ties in a seeded random order), so every class is within one row of its ideal share.
    # Every class gets at least one test row and keeps at least one train row (all have
    # >= 2 rows), even where that moves the test set a few rows off ceil(ratio * n).
    size = np.array([members[c].size for c in keys])
    ideal = ratio * size
    take = np.floor(ideal).astype(np.int64)
    bumped = take == 0
    take[bumped] = 1
    left = int(n_test - take.sum())
    tiebreak = rng.permutation(len(keys))
    order = sorted((i for i in range(len(keys)) if not bumped[i] and take[i] + 1 < size[i]),
                   key=lambda i: (-(ideal[i] - take[i]), tiebreak[i]))
    for i in order[:max(left, 0)]:
        take[i] += 1
    if n - take.sum() < folds:
        raise InputError(f"{folds} is more than the {n - take.sum()} train row(s) left of "
                         f"{n} after {take.sum()} go to the test set (at least one per class)",
                         param="folds")
    is_test = np.zeros(n, dtype=bool)
    fold = np.full(n, -1, dtype=np.int64)
    pos = 0
    for i, c in enumerate(keys):
        rows = rng.permutation(members[c])
        is_test[rows[:take[i]]] = True
        # Deal the class's train rows round-robin, continuing where the previous class
        # stopped: per class floor/ceil of n_c/K per fold, and fold sizes differ by <= 1.
        train_rows = rows[take[i]:]
        fold[train_rows] = (pos + np.arange(train_rows.size)) % folds
        pos += train_rows.size
    return is_test, fold


def coverage_notes(is_test: np.ndarray, fold: np.ndarray, folds: int,
                   classes: Sequence[str] | None, groups: Sequence[str] | None = None,
                   with_test: bool = True) -> list[str]:
    """What a split could not give, one line each: classes with no test rows (a single
    group, or too few rows), and classes missing from some folds. Empty without classes."""
    if classes is None:
        return []
    cls = np.asarray(classes, dtype=object).astype(str)
    unit = "row" if groups is None else "group"
    grp = (np.arange(cls.size) if groups is None else np.asarray(groups, dtype=object)).astype(str)
    keys = sorted(set(cls.tolist()))
    out = []
    if with_test:
        single = [c for c in keys
                  if np.unique(grp[cls == c]).size < 2 and not is_test[cls == c].any()]
        if single:
            out.append(f"no test rows for class(es) {preview(single, 20)}: a single {unit} each")
        no_test = [c for c in keys if c not in single and not is_test[cls == c].any()]
        if no_test:
            out.append(f"no test rows for class(es) {preview(no_test, 20)}"
                       + (": too few rows for the test ratio" if groups is None else ""))
    few = []
    for c in keys:
        held = np.unique(fold[(cls == c) & ~is_test & (fold >= 0)]).size
        if held < folds:
            few.append(f"{c} ({held})")
    if few:
        out.append(f"class(es) missing from some of the {folds} folds (folds holding them): "
                   f"{preview(few, 20)}: fewer train {unit}s than folds")
    return out


def split_table(df: pd.DataFrame, test_ratio: float = 0.2, folds: int = 5, seed: int = 42,
                stratify: str | None = None, group: str | None = None,
                test_where: str | None = None, split_column: str | None = None,
                notes: list[str] | None = None) -> pd.DataFrame:
    """The split table for the rows of ``df`` (from :func:`load_split_input`), in input order.

    Columns: ``id``, ``split`` (train/test), ``fold`` (Int64, <NA> on test rows), then the
    other columns of ``df`` unchanged.

    ``test_where``: rows matching this expression (:mod:`aekit.data.expr`) always go to the
    test set; the other rows are split as without it (``test_ratio`` of them to the test
    set, folds over the rest). ``split_column``: train/test come from this column (values
    ``train`` and ``test``) and only the folds are made, inside train. ``notes`` receives
    the constraints that could not be met (see :func:`assign`).
    """
    if "id" not in df.columns:
        raise InputError("column 'id' not found; columns are: " + ", ".join(map(str, df.columns)))
    classes = None if stratify is None else _column(df, stratify, "stratify").to_numpy()
    groups = None if group is None else _column(df, group, "group").to_numpy()
    forced = _forced_test(df, test_where)
    if split_column is not None:
        is_test = _column_test(df, split_column, forced, test_where)
        rest = np.flatnonzero(~is_test)
        fold = np.full(len(df), -1, dtype=np.int64)
        with _param_renamed("classes", "stratify"):
            fold[rest] = assign_folds(rest.size, folds, seed,
                                      None if classes is None else classes[rest],
                                      None if groups is None else groups[rest])
    else:
        rest = np.flatnonzero(~forced)
        if rest.size == 0:
            raise InputError(f"every row matches {test_where!r}: nothing left to train on",
                             param="test_where")
        with _param_renamed("classes", "stratify"):
            t, f = assign(rest.size, test_ratio, folds, seed,
                          classes=None if classes is None else classes[rest],
                          groups=None if groups is None else groups[rest])
        is_test = forced.copy()
        is_test[rest] = t
        fold = np.full(len(df), -1, dtype=np.int64)
        fold[rest] = f
    if notes is not None:
        notes.extend(coverage_notes(is_test, fold, folds, classes, groups))
    out = pd.DataFrame({
        "id": df["id"].to_numpy(dtype=object),
        "split": np.where(is_test, "test", "train").astype(object),
        "fold": pd.arrays.IntegerArray(np.where(is_test, 0, fold).astype(np.int64), is_test.copy()),
    })
    # A kept 'split'/'fold' input column (--split-column split) is replaced by the result.
    rest = df.drop(columns=[c for c in ("id", "split", "fold") if c in df.columns])
    return pd.concat([out, rest.reset_index(drop=True)], axis=1)


def _forced_test(df: pd.DataFrame, test_where: str | None) -> np.ndarray:
    """The rows that ``test_where`` sends to the test set (bool [n]; none without it)."""
    n = len(df)
    if test_where is None:
        return np.zeros(n, dtype=bool)
    from aekit.data.selection import query_rows

    with _param_renamed("where", "test_where"):  # the parser's errors are about `where`
        forced = query_rows(_typed(df), test_where)
    if not forced.any():
        raise InputError(f"no row matches {test_where!r} (of {n})", param="test_where")
    return forced


def _column_test(df: pd.DataFrame, split_column: str, forced: np.ndarray,
                 test_where: str | None) -> np.ndarray:
    """The test rows by ``split_column`` (values train/test), plus the ``forced`` ones."""
    col = _column(df, split_column, "split_column")
    bad = sorted(set(col) - {"train", "test"})
    if bad:
        raise InputError(f"column '{split_column}' must hold 'train' or 'test', "
                         f"found: {preview(repr(v) for v in bad)}", param="split_column")
    is_test = col.eq("test").to_numpy() | forced
    if is_test.all():
        raise InputError(f"no train rows left: every row is a test row by column "
                         f"'{split_column}'" + (" or by test_where" if test_where else ""),
                         param="split_column")
    if not is_test.any():
        raise InputError(f"column '{split_column}' has no 'test' rows", param="split_column")
    return is_test


@contextlib.contextmanager
def _param_renamed(old: str, new: str) -> Iterator[None]:
    """An InputError about parameter ``old`` of a helper is about ``new`` of the caller."""
    try:
        yield
    except InputError as exc:
        if exc.param == old:
            exc.param = new
        raise


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """The split input as an expression sees it in a label CSV: every column typed by
    :func:`aekit.data.expr.column_kinds` (numeric when every non-empty cell is a number)."""
    from aekit.data.expr import column_kinds

    out = df.copy()
    out.attrs["column_kinds"] = column_kinds(df)
    return out


def summary(table: pd.DataFrame, group: str | None = None, stratify: str | None = None,
            notes: Sequence[str] = ()) -> str:
    """One line for the log: sizes of the test set and of each fold, the classes the test
    set holds, and the constraints that could not be met."""
    test = table["split"].eq("test")
    sizes = table.loc[~test, "fold"].value_counts().sort_index()
    text = (f"{len(table)} ids: {int(test.sum())} test ({100 * test.mean():.0f}%), "
            f"{int((~test).sum())} train in "
            f"{len(sizes)} folds of {', '.join(str(int(v)) for v in sizes.to_numpy())} rows")
    if group is not None:
        g = table[group].map(str)
        text += (f"; groups: {g[test].nunique()} test, "
                 f"{g[~test].nunique()} train")
    if stratify is not None:
        c = table[stratify].map(str)
        text += f"; classes: {c[test].nunique()} of {c.nunique()} in test"
    if notes:
        text += f"; {len(notes)} unmet: " + "; ".join(notes)
    return text


def write_table(table: pd.DataFrame, fh) -> None:
    """CSV with '\\n' line ends; the fold column is integers, empty on test rows."""
    table.to_csv(fh, index=False, lineterminator="\n")
