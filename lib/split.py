"""Leak-free splits: a locked test set, then K cross-validation folds (tutorial 2.1).

The result is the split table every later command reads (see :mod:`aekit.selection`):
one row per id with ``split`` = ``train`` or ``test`` and ``fold`` = 0..K-1 on train rows,
<NA> on test rows. Fold k is the validation set of run k; the other folds train.

Three algorithms, all deterministic for a given seed (same input + seed -> same table):

* **plain** (no stratify, no groups) is the tutorial's recipe exactly:
  ``train_test_split(ids, test_size=ratio, shuffle=True, random_state=seed)`` for the test
  set, then the train rows, in the order train_test_split returned them, cut into K parts
  with ``numpy.array_split`` (sizes differ by at most one: 100 rows in 3 -> 34, 33, 33).
* **stratified** (``stratify``, no groups): per class, the test set gets ``floor`` or ``ceil``
  of ``ratio * n_class`` rows (largest-remainder apportionment, total ``ceil(ratio * n)`` as
  in scikit-learn); the class's train rows are then dealt round-robin over the folds, so every
  class has ``floor`` or ``ceil`` of ``n_class_train / K`` rows in each fold and the fold sizes
  still differ by at most one.
* **grouped** (``groups``, with or without ``stratify``, like scikit-learn's
  StratifiedGroupKFold): whole groups are placed, largest first, each into the bin (test or
  train, then fold 0..K-1) where it brings the per-class row counts closest to their targets
  (least squared error). Without stratify this is "largest group to the emptiest fold", so fold
  sizes in rows differ by at most the size of the largest group rather than by one. A group
  is never on two sides: all its rows share one split and one fold.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import InputError, preview

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
    if not p.is_file():
        return p.suffix.lower() in HDF5_SUFFIXES
    import h5py

    try:
        return bool(h5py.is_hdf5(str(p))) or p.suffix.lower() in HDF5_SUFFIXES
    except OSError:
        return p.suffix.lower() in HDF5_SUFFIXES


def load_split_input(path: str | os.PathLike, id_column: str = "id",
                     labels_path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The rows to split: a DataFrame whose first column is ``id`` (str), then any other columns.

    ``path`` is a features file (its ids; HDF5 is recognised by its signature) or a CSV
    (``-`` is stdin) with an ``id_column``; a CSV's other columns are kept as text, exactly
    as written. ``labels_path``: a CSV joined by id (its ``id_column`` too); every id needs
    a row there. Columns ``split`` and ``fold`` of a CSV input (an earlier ae-split output)
    are dropped, since they are what is being recomputed.
    """
    from .fileio import read_csv

    name = "<stdin>" if str(path) == "-" else str(path)
    if str(path) == "-" and labels_path is not None and str(labels_path) == "-":
        raise InputError("the input and --labels cannot both be '-' (stdin)")
    if is_hdf5(path):
        from .store import read_ids

        df = pd.DataFrame({"id": read_ids(path)}, dtype=object)
    else:
        p = Path(path)
        if str(path) != "-" and p.is_dir():
            raise InputError(f"{p}: is a directory, expected a features file or a CSV")
        raw = read_csv(path, dtype=str, keep_default_na=False)
        if id_column not in raw.columns:
            raise InputError(f"{name}: column '{id_column}' not found; columns are: "
                             f"{', '.join(map(str, raw.columns))} (name the id column with --id-column)")
        rest = [c for c in raw.columns if c != id_column and c not in ("split", "fold")]
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
        from .selection import load_labels

        labels = load_labels(labels_path, list(df["id"]), id_column=id_column, as_text=True)
        lname = "<stdin>" if str(labels_path) == "-" else str(labels_path)
        labels = labels.drop(columns=[c for c in ("split", "fold") if c in labels.columns])
        clash = [c for c in labels.columns if c in df.columns]
        if clash:
            raise InputError(f"{lname}: column(s) {', '.join(map(str, clash))} are also in {name}; "
                             "rename them in one of the files")
        df = pd.concat([df.reset_index(drop=True), labels.reset_index(drop=True)], axis=1)
    return df


# --------------------------------------------------------------------------- splitting

def _check_params(n: int, test_ratio: float, folds: int, seed: int) -> None:
    if not isinstance(test_ratio, (int, float)) or not (0.0 < float(test_ratio) < 1.0):
        raise InputError(f"--test-ratio must be between 0 and 1 (both excluded), got {test_ratio}")
    if folds < 2:
        raise InputError(f"--folds must be at least 2, got {folds}")
    if seed < 0 or seed >= 2**32:
        raise InputError(f"--seed must be between 0 and 2**32-1, got {seed}")


def _column(df: pd.DataFrame, col: str, what: str) -> pd.Series:
    if col not in df.columns:
        cols = ", ".join(map(str, df.columns))
        hint = " (a features file has only ids: join label columns with --labels)" if list(df.columns) == ["id"] else ""
        raise InputError(f"{what} column '{col}' not found; columns are: {cols}{hint}")
    s = df[col]
    miss = _missing(s)
    if miss.any():
        rows = np.flatnonzero(miss) + 1
        raise InputError(f"{what} column '{col}' is empty in {len(rows)} row(s): "
                         f"data row(s) {preview(rows)}")
    # Keys compared and sorted as text so that the order never depends on dtype or hashing.
    return s.map(str)


def assign(n: int, test_ratio: float = 0.2, folds: int = 5, seed: int = 42,
           classes: Sequence[str] | None = None,
           groups: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split rows 0..n-1. Returns (is_test bool[n], fold int64[n] with -1 on test rows).

    ``classes``: a class key per row (stratify); ``groups``: a group key per row.
    Raises InputError for bad parameters, too few rows/groups, or a class too small.
    """
    _check_params(n, test_ratio, folds, seed)
    ratio = float(test_ratio)
    if classes is not None:
        cls = pd.Series(list(classes), dtype=object).map(str)
        counts = cls.value_counts()
        small = sorted(counts[counts < 2].index)
        if small:
            which = (f"class {small[0]!r} has" if len(small) == 1 else
                     f"classes {preview([repr(c) for c in small])} have")
            raise InputError(f"--stratify {which} only 1 row; stratifying needs at least 2 rows "
                             "per class (one for the test set, one for training)")
    if groups is not None:
        grp = pd.Series(list(groups), dtype=object).map(str)
        n_groups = grp.nunique()
        if n_groups < folds + 1:
            raise InputError(f"--folds {folds} needs at least {folds + 1} groups ({folds} folds + the "
                             f"test set), found {n_groups}")
        return _assign_grouped(ratio, folds, seed, grp.to_numpy(),
                               None if classes is None else cls.to_numpy())
    n_test = math.ceil(ratio * n)  # as scikit-learn's train_test_split
    n_train = n - n_test
    if n_train < folds:
        raise InputError(f"--folds {folds} is more than the {n_train} train row(s) left of {n} "
                         f"after {n_test} go to the test set")
    if classes is None:
        return _assign_plain(n, ratio, folds, seed)
    return _assign_stratified(ratio, folds, seed, cls.to_numpy(), n_test)


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
    ideal = np.array([ratio * members[c].size for c in keys])
    take = np.floor(ideal).astype(np.int64)
    left = int(n_test - take.sum())
    tiebreak = rng.permutation(len(keys))
    order = sorted(range(len(keys)), key=lambda i: (-(ideal[i] - take[i]), tiebreak[i]))
    for i in order[:left]:
        take[i] += 1
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


def _greedy_bins(group_ids: np.ndarray, sizes: np.ndarray, targets: np.ndarray,
                 minimum: np.ndarray) -> np.ndarray:
    """Place groups (already in processing order) into bins; returns the bin of each group.

    sizes: [G, C] rows per group and class; targets: [B, C] wanted rows per bin and class;
    minimum: [B] groups each bin must end up with (placement is forced once the groups
    left are just enough to meet the minimums).
    """
    n_bins = targets.shape[0]
    counts = np.zeros_like(targets, dtype=np.float64)  # [B, C]
    n_in = np.zeros(n_bins, dtype=np.int64)
    out = np.empty(group_ids.size, dtype=np.int64)
    for j, g in enumerate(group_ids):
        s = sizes[g]  # [C]
        # Increase of sum (count - target)^2 if the group goes into each bin.
        cost = (s * (2.0 * (counts - targets) + s)).sum(axis=1)  # [B]
        deficit = np.maximum(minimum - n_in, 0)
        remaining = group_ids.size - j
        if remaining <= deficit.sum():
            cost = np.where(deficit > 0, cost, np.inf)
        b = int(np.argmin(cost))  # ties: the lowest bin index
        out[j] = b
        counts[b] += s
        n_in[b] += 1
    return out


def _assign_grouped(ratio: float, folds: int, seed: int, grp: np.ndarray,
                    cls: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = grp.size
    gkeys, ginv = np.unique(grp, return_inverse=True)  # sorted: independent of input order
    if cls is None:
        cinv = np.zeros(n, dtype=np.int64)
        n_cls = 1
    else:
        ckeys, cinv = np.unique(cls, return_inverse=True)
        n_cls = ckeys.size
    sizes = np.zeros((gkeys.size, n_cls), dtype=np.float64)
    np.add.at(sizes, (ginv, cinv), 1.0)
    class_total = sizes.sum(axis=0)  # [C]
    # Processing order: a seeded shuffle, then largest group first (stable), so ties
    # between equal-sized groups are broken by the seed.
    order = rng.permutation(gkeys.size)
    order = order[np.argsort(-sizes[order].sum(axis=1), kind="stable")]

    # Bins 0 = test, 1 = train; train keeps at least K groups for the folds.
    targets = np.stack([ratio * class_total, (1.0 - ratio) * class_total])
    side = _greedy_bins(order, sizes, targets, np.array([1, folds]))
    group_test = np.zeros(gkeys.size, dtype=bool)
    group_test[order[side == 0]] = True

    train_order = order[side == 1]
    train_total = sizes[train_order].sum(axis=0)
    targets = np.tile(train_total / folds, (folds, 1))
    fold_of = _greedy_bins(train_order, sizes, targets, np.ones(folds, dtype=np.int64))
    group_fold = np.full(gkeys.size, -1, dtype=np.int64)
    group_fold[train_order] = fold_of
    return group_test[ginv], group_fold[ginv]


def split_table(df: pd.DataFrame, test_ratio: float = 0.2, folds: int = 5, seed: int = 42,
                stratify: str | None = None, group: str | None = None) -> pd.DataFrame:
    """The split table for the rows of ``df`` (from :func:`load_split_input`), in input order.

    Columns: ``id``, ``split`` (train/test), ``fold`` (Int64, <NA> on test rows), then the
    other columns of ``df`` unchanged.
    """
    if "id" not in df.columns:
        raise InputError("column 'id' not found; columns are: " + ", ".join(map(str, df.columns)))
    classes = None if stratify is None else _column(df, stratify, "--stratify").to_numpy()
    groups = None if group is None else _column(df, group, "--group").to_numpy()
    is_test, fold = assign(len(df), test_ratio, folds, seed, classes=classes, groups=groups)
    out = pd.DataFrame({
        "id": df["id"].to_numpy(dtype=object),
        "split": np.where(is_test, "test", "train").astype(object),
        "fold": pd.arrays.IntegerArray(np.where(is_test, 0, fold).astype(np.int64), is_test.copy()),
    })
    rest = df.drop(columns=["id"]).reset_index(drop=True)
    return pd.concat([out, rest], axis=1)


def summary(table: pd.DataFrame, group: str | None = None) -> str:
    """One line for the log: sizes of the test set and of each fold."""
    test = table["split"].eq("test")
    sizes = table.loc[~test, "fold"].value_counts().sort_index()
    text = (f"{len(table)} ids: {int(test.sum())} test, {int((~test).sum())} train in "
            f"{len(sizes)} folds of {', '.join(str(int(v)) for v in sizes.to_numpy())} rows")
    if group is not None:
        g = table[group].map(str)
        text += (f"; groups: {g[test].nunique()} test, "
                 f"{g[~test].nunique()} train")
    return text


def write_table(table: pd.DataFrame, fh) -> None:
    """CSV with '\\n' line ends; the fold column is integers, empty on test rows."""
    table.to_csv(fh, index=False, lineterminator="\n")
