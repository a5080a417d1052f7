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
  is never on two sides: all its rows share one split and one fold.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from aekit.errors import InputError, preview
from aekit.system.fileio import display_name

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
    from aekit.system.fileio import read_csv

    name = display_name(path)
    if str(path) == "-" and labels_path is not None and str(labels_path) == "-":
        raise InputError("the input and --labels cannot both be '-' (stdin)")
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
                             f"{', '.join(map(str, raw.columns))} (name the id column with --id-column)")
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


def _check_classes(classes: Sequence[str]) -> np.ndarray:
    cls = pd.Series(list(classes), dtype=object).map(str)
    counts = cls.value_counts()
    small = sorted(counts[counts < 2].index)
    if small:
        which = (f"class {small[0]!r} has" if len(small) == 1 else
                 f"classes {preview([repr(c) for c in small])} have")
        raise InputError(f"--stratify {which} only 1 row; stratifying needs at least 2 rows "
                         "per class (one for the test set, one for training)")
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
            raise InputError(f"--folds {folds} needs at least {folds + 1} groups ({folds} folds + the "
                             f"test set), found {n_groups}")
        is_test, fold = _assign_grouped(ratio, folds, seed, grp.to_numpy(), cls)
        if notes is not None:
            notes.extend(coverage_notes(is_test, fold, folds, cls, grp.to_numpy()))
        return is_test, fold
    n_test = math.ceil(ratio * n)  # as scikit-learn's train_test_split
    n_train = n - n_test
    if n_train < folds:
        raise InputError(f"--folds {folds} is more than the {n_train} train row(s) left of {n} "
                         f"after {n_test} go to the test set")
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
            raise InputError(f"--folds {folds} needs at least {folds} train groups, "
                             f"found {gkeys.size}")
        ckeys, cinv = (np.array([""], dtype=object), np.zeros(n, dtype=np.int64)) if cls is None \
            else np.unique(cls, return_inverse=True)
        sizes = np.zeros((gkeys.size, ckeys.size))
        np.add.at(sizes, (ginv, cinv), 1.0)
        rank = rng.permutation(gkeys.size)
        fold = _fold_groups(sizes, folds, seed, rank, rng.permutation(folds))[ginv]
        if notes is not None:
            notes.extend(coverage_notes(np.zeros(n, dtype=bool), fold, folds, cls, grp, False))
        return fold
    if n < folds:
        raise InputError(f"--folds {folds} is more than the {n} train row(s)")
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
        raise InputError(f"--folds {folds} is more than the {n - take.sum()} train row(s) left of "
                         f"{n} after {take.sum()} go to the test set (at least one per class)")
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


def _class_error(counts: np.ndarray, total: np.ndarray) -> float:
    """RMS over bins and classes of (class share in the bin - class share overall).

    counts: [B, C] rows per bin and class; total: [C]. A bin without rows has no class
    shares: the error is then infinite, worse than any split that uses every bin (counted
    as shares 0, an empty fold scored better than a fold holding one class, so that
    StratifiedGroupKFold's folds with an empty fold looked better than any K-fold split).
    """
    n = counts.sum(axis=1, keepdims=True)
    if (n == 0).any():
        return math.inf
    share = np.divide(counts, n, out=np.zeros_like(counts, dtype=np.float64), where=n > 0)
    return float(np.sqrt(np.mean((share - total / total.sum()) ** 2)))


def fold_quality(fold: np.ndarray, classes: Sequence[str] | None = None,
                 folds: int | None = None) -> tuple[int, float]:
    """(fold-size spread in rows = largest - smallest fold, class-proportion error) of the
    rows with fold >= 0 in ``folds`` folds (default: the highest fold + 1); the error is
    the RMS over folds and classes of the class's share in the fold minus its share in all
    those rows (0 without classes; infinite when a fold is empty, see :func:`_class_error`)."""
    fold = np.asarray(fold)
    train = fold >= 0
    k = int(fold[train].max()) + 1 if folds is None else int(folds)
    sizes = np.bincount(fold[train], minlength=k)
    if classes is None:
        return int(sizes.max() - sizes.min()), 0.0
    _, cinv = np.unique(np.asarray(classes, dtype=object)[train].astype(str), return_inverse=True)
    counts = np.zeros((k, int(cinv.max()) + 1))
    np.add.at(counts, (fold[train], cinv), 1.0)
    return int(sizes.max() - sizes.min()), _class_error(counts, counts.sum(axis=0))


def _place(order: np.ndarray, sizes: np.ndarray, frac: np.ndarray, bin_rank: np.ndarray,
           allowed, bins: np.ndarray | None = None, counts: np.ndarray | None = None) -> np.ndarray:
    """Greedy placement of the groups in ``order`` into bins with target shares ``frac`` [B].

    The bin of each group is chosen by a lexicographic cost: first how far the bin would
    overflow its row target (relative to that target), then the increase of the squared
    class-count error (each class's error relative to its size, so that small classes
    count as much as large ones); exact ties go to the bin with the lowest ``bin_rank``
    (a seeded permutation, never simply the lowest index). ``allowed(g, bins)`` -> bool [B]
    masks the bins group g may go to. Returns the bin of every group (-1 = not placed).
    """
    n_bins = frac.size
    total = sizes.sum(axis=0)  # [C]
    scale = np.where(total > 0, total, 1.0)
    targets = np.outer(frac, total)  # [B, C]
    row_target = np.maximum(frac * total.sum(), 1e-9)  # [B]
    bins = np.full(sizes.shape[0], -1, dtype=np.int64) if bins is None else bins
    counts = np.zeros((n_bins, total.size)) if counts is None else counts
    for g in order:
        s = sizes[g]
        rows = counts.sum(axis=1)
        overflow = np.maximum(rows + s.sum() - row_target, 0.0) / row_target
        err = ((s * (2.0 * (counts - targets) + s)) / scale ** 2).sum(axis=1)
        ok = allowed(g, bins)
        key = np.lexsort((bin_rank, np.round(err, 12), np.round(overflow, 12), ~ok))
        b = int(key[0])
        bins[g] = b
        counts[b] += s
    return bins


def _hard_first(sizes: np.ndarray, rank: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Processing order of groups ``members``: those of the classes with the fewest groups
    first, then the largest, then a seeded random order."""
    sub = sizes[members]
    n_groups = (sub > 0).sum(axis=0)  # groups per class
    fewest = np.where(sub > 0, n_groups[None, :], np.iinfo(np.int64).max).min(axis=1)
    return members[np.lexsort((rank[members], -sub.sum(axis=1), fewest))]


def _choose_test(sizes: np.ndarray, ratio: float, folds: int, rank: np.ndarray,
                 class_rank: np.ndarray, bin_rank: np.ndarray) -> np.ndarray:
    """Which groups form the test set (bool [G]).

    First one group of every class with at least two groups is reserved for the test set
    (classes with the fewest groups first; the group whose size is closest to the class's
    test share), then the other groups go to test or train by :func:`_place`. A group never
    goes to the test set when that would leave one of its classes without a train group or
    leave fewer than ``folds`` train groups.
    """
    n_g = sizes.shape[0]
    has = sizes > 0  # [G, C]
    n_groups = has.sum(axis=0)
    class_total = sizes.sum(axis=0)
    g_rows = sizes.sum(axis=1)
    side = np.full(n_g, -1, dtype=np.int64)  # 0 test, 1 train, -1 undecided

    seen = np.zeros(n_g, dtype=bool)  # test groups already taken off `avail`
    avail = has.sum(axis=0)  # [C] groups per class that may still train

    def test_ok(cand, side):
        # Without the candidate, at least `folds` groups and one per class of it may still train.
        new = (side == 0) & ~seen
        avail[:] -= has[new].sum(axis=0)
        seen[new] = True
        left = n_g - int(seen.sum()) - 1
        return (left >= folds) & ((avail[None, :] - has[cand] > 0) | ~has[cand]).all(axis=1)

    def allowed(g, side):
        return np.array([bool(test_ok(np.array([g]), side)[0]), True])

    for c in np.lexsort((class_rank, n_groups)):
        if n_groups[c] < 2 or (has[:, c] & (side == 0)).any():
            continue
        cand = np.flatnonzero(has[:, c] & (side == -1))
        cand = cand[test_ok(cand, side)]
        if cand.size == 0:
            continue
        dist = np.abs(g_rows[cand] - ratio * class_total[c])
        side[cand[np.lexsort((rank[cand], dist))[0]]] = 0
    counts = np.stack([sizes[side == 0].sum(axis=0), np.zeros(sizes.shape[1])])
    rest = _hard_first(sizes, rank, np.flatnonzero(side == -1))
    side = _place(rest, sizes, np.array([ratio, 1.0 - ratio]), bin_rank, allowed, side, counts)
    return side == 0


def _refine(fold_of: np.ndarray, sizes: np.ndarray, folds: int, rank: np.ndarray, key,
            max_passes: int = 20) -> np.ndarray:
    """Local search over the fold of each group.

    For each group in turn (seeded order), every move to another fold and every swap with
    a group of another fold is scored at once, and the best is taken when it lowers
    ``key(spread, error, deviation)`` (arrays in, a tuple of arrays out, compared
    lexicographically; see :func:`_scores`). Every fold keeps at least one group. Swaps
    are tried only up to 300 groups (their cost is quadratic).
    """
    fold_of = fold_of.copy()
    n_g = sizes.shape[0]
    total = sizes.sum(axis=0)
    counts = np.zeros((folds, sizes.shape[1]))
    np.add.at(counts, fold_of, sizes)
    order = np.argsort(rank, kind="stable")
    cur = tuple(float(v[0]) for v in key(*_scores(counts[None], total)))
    swaps = n_g <= 300
    eye = np.eye(folds)
    for _ in range(max_passes):
        improved = False
        for g in order:
            a = fold_of[g]
            n_in = np.bincount(fold_of, minlength=folds)
            # Moves: g from fold a to fold b (b != a; fold a must keep a group).
            delta = (eye - eye[a])[:, :, None] * sizes[g][None, None, :]  # [K, K, C]
            cand = [counts[None] + delta]
            ok = [(np.arange(folds) != a) & (n_in[a] > 1)]
            target = [np.arange(folds)]
            if swaps:
                # Swaps: g with h of another fold: fold a gets h, fold fold_of[h] gets g.
                d = sizes - sizes[g]  # [G, C]: what fold a gains
                sw = np.repeat(counts[None], n_g, axis=0)
                sw[:, a] += d
                sw[np.arange(n_g), fold_of] -= d
                cand.append(sw)
                ok.append((fold_of != a) & (d != 0).any(axis=1))
                target.append(-1 - np.arange(n_g))
            cand, ok, target = np.concatenate(cand), np.concatenate(ok), np.concatenate(target)
            if not ok.any():
                continue
            cand, target = cand[ok], target[ok]
            keys = key(*_scores(cand, total))
            best = int(np.lexsort(tuple(reversed(keys)))[0])
            new = tuple(float(v[best]) for v in keys)
            if not new < cur:
                continue
            cur = new
            counts = cand[best]
            t = int(target[best])
            if t >= 0:
                fold_of[g] = t
            else:
                h = -1 - t
                fold_of[g], fold_of[h] = fold_of[h], a
            improved = True
        if not improved:
            break
    return fold_of


def _scores(counts: np.ndarray, total: np.ndarray):
    """Per candidate [M, K, C] counts: (spread, class error, largest deviation from the
    mean fold size), arrays [M]; the error as in :func:`_class_error`."""
    rows = counts.sum(axis=2)  # [M, K]
    share = np.divide(counts, rows[:, :, None], out=np.zeros_like(counts),
                      where=rows[:, :, None] > 0)
    err = np.sqrt(np.mean((share - total / total.sum()) ** 2, axis=(1, 2)))
    err[(rows == 0).any(axis=1)] = np.inf  # an empty fold: no shares (see _class_error)
    spread = rows.max(axis=1) - rows.min(axis=1)
    dev = np.abs(rows - rows.mean(axis=1, keepdims=True)).max(axis=1)
    return spread, np.round(err, 12), dev


def _sklearn_folds(sizes: np.ndarray, folds: int, seed: int) -> np.ndarray | None:
    """The fold of each group under scikit-learn's StratifiedGroupKFold(shuffle, seed),
    or None when it cannot run (too few groups)."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    if sizes.shape[0] < folds:
        return None
    g_idx, c_idx = np.nonzero(sizes)
    reps = sizes[g_idx, c_idx].astype(np.int64)
    groups = np.repeat(g_idx, reps)
    y = np.repeat(c_idx, reps)
    out = np.full(sizes.shape[0], -1, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
            for k, (_, val) in enumerate(splitter.split(np.zeros(y.size), y, groups)):
                out[groups[val]] = k
        except ValueError:
            return None
    return out if (out >= 0).all() and np.bincount(out, minlength=folds).min() > 0 else None


def _fold_groups(sizes: np.ndarray, folds: int, seed: int, rank: np.ndarray,
                 bin_rank: np.ndarray) -> np.ndarray:
    """The fold of each train group.

    Fold sizes come first: every fold within T = max(largest group, 10 % of the mean fold
    size) rows of the mean, and a spread (largest - smallest fold) no larger than that of
    scikit-learn's StratifiedGroupKFold (shuffle, same seed) on the same rows; within
    that, the class-proportion error is made as small as possible, and no larger than
    StratifiedGroupKFold's. Two candidates are searched: the hard-first greedy placement
    refined by local search under that order, and StratifiedGroupKFold's own folds refined
    without ever raising their error; the better one is kept. Where StratifiedGroupKFold
    leaves a fold empty (few groups), its folds are no K-fold split: its class error is
    infinite (:func:`_class_error`) and only the first candidate is searched.
    """
    n_g = sizes.shape[0]
    g_rows = sizes.sum(axis=1)
    tol = max(float(g_rows.max()), 0.1 * g_rows.sum() / folds)

    def allowed(g, bins):
        # Every fold needs a group: once the groups left are just enough, only empty folds.
        empty = np.bincount(bins[bins >= 0], minlength=folds) == 0
        if (bins < 0).sum() <= empty.sum():
            return empty
        return np.ones(folds, dtype=bool)

    order = _hard_first(sizes, rank, np.arange(n_g))
    start = _place(order, sizes, np.full(folds, 1.0 / folds), bin_rank, allowed)
    ref = _sklearn_folds(sizes, folds, seed)
    if ref is None:
        return _refine(start, sizes, folds, rank,
                       lambda spread, err, dev: (np.maximum(dev - tol, 0.0), err, spread))
    ref_spread, ref_err, _ = _quality(ref, sizes, folds)
    ref_err = round(ref_err, 12)

    def key(spread, err, dev):  # sizes first, then error over StratifiedGroupKFold's, error
        over = np.maximum(dev - tol, 0.0) + np.maximum(spread - ref_spread, 0.0)
        return (over, np.maximum(err - ref_err, 0.0), err, spread)

    def key_ref(spread, err, dev):  # never above StratifiedGroupKFold's error, then as key
        return (np.maximum(err - ref_err, 0.0),) + key(spread, err, dev)

    best = None
    for cand in (_refine(start, sizes, folds, rank, key), _refine(ref, sizes, folds, rank, key_ref),
                 ref):
        spread, err, dev = _quality(cand, sizes, folds)
        err = round(err, 12)
        k = (spread > ref_spread or err > ref_err, max(dev - tol, 0.0), err, spread)
        if best is None or k < best[0]:
            best = (k, cand)
    return best[1]


def _quality(fold_of: np.ndarray, sizes: np.ndarray, folds: int) -> tuple[float, float]:
    counts = np.zeros((folds, sizes.shape[1]))
    np.add.at(counts, fold_of, sizes)
    rows = counts.sum(axis=1)
    return (float(rows.max() - rows.min()), _class_error(counts, counts.sum(axis=0)),
            float(np.abs(rows - rows.mean()).max()))


def _assign_grouped(ratio: float, folds: int, seed: int, grp: np.ndarray,
                    cls: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = grp.size
    gkeys, ginv = np.unique(grp, return_inverse=True)  # sorted: independent of input order
    if cls is None:
        ckeys, cinv = np.array([""], dtype=object), np.zeros(n, dtype=np.int64)
    else:
        ckeys, cinv = np.unique(cls, return_inverse=True)
    sizes = np.zeros((gkeys.size, ckeys.size), dtype=np.float64)  # [G, C] rows
    np.add.at(sizes, (ginv, cinv), 1.0)
    rank = rng.permutation(gkeys.size)  # seeded tie-breaks between groups,
    class_rank = rng.permutation(ckeys.size)  # classes and bins (never the lowest index)

    group_test = _choose_test(sizes, ratio, folds, rank, class_rank, rng.permutation(2))
    train = np.flatnonzero(~group_test)
    fold_of = _fold_groups(sizes[train], folds, seed, rank[train], rng.permutation(folds))
    group_fold = np.full(gkeys.size, -1, dtype=np.int64)
    group_fold[train] = fold_of
    return group_test[ginv], group_fold[ginv]


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
                       + (": too few rows for --test-ratio" if groups is None else ""))
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
    classes = None if stratify is None else _column(df, stratify, "--stratify").to_numpy()
    groups = None if group is None else _column(df, group, "--group").to_numpy()
    n = len(df)
    forced = np.zeros(n, dtype=bool)
    if test_where is not None:
        from aekit.data.selection import query_rows

        try:
            forced = query_rows(_typed(df), test_where)
        except InputError as exc:  # the parser's messages name --where
            raise InputError(str(exc).replace("--where", "--test-where", 1)) from None
        if not forced.any():
            raise InputError(f"no row matches --test-where {test_where!r} (of {n})")
    if split_column is not None:
        col = _column(df, split_column, "--split-column")
        bad = sorted(set(col) - {"train", "test"})
        if bad:
            raise InputError(f"--split-column '{split_column}' must hold 'train' or 'test', "
                             f"found: {preview(repr(v) for v in bad)}")
        is_test = col.eq("test").to_numpy() | forced
        if is_test.all():
            raise InputError(f"no train rows left: every row is a test row by --split-column "
                             f"'{split_column}'" + (" or --test-where" if test_where else ""))
        if not is_test.any():
            raise InputError(f"--split-column '{split_column}' has no 'test' rows")
        rest = np.flatnonzero(~is_test)
        fold = np.full(n, -1, dtype=np.int64)
        fold[rest] = assign_folds(rest.size, folds, seed,
                                  None if classes is None else classes[rest],
                                  None if groups is None else groups[rest])
    else:
        rest = np.flatnonzero(~forced)
        if rest.size == 0:
            raise InputError(f"every row matches --test-where {test_where!r}: "
                             "nothing left to train on")
        t, f = assign(rest.size, test_ratio, folds, seed,
                      classes=None if classes is None else classes[rest],
                      groups=None if groups is None else groups[rest])
        is_test = forced.copy()
        is_test[rest] = t
        fold = np.full(n, -1, dtype=np.int64)
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
