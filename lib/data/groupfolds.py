"""Grouped splits: whole groups placed into the test set and the K folds (the search).

The placement of :mod:`aekit.data.split` with ``groups``: greedy placement of the groups,
hardest first (:func:`_place`), the test set chosen with one group of every class that has
two (:func:`_choose_test`), then the folds refined by local search (:func:`_refine`) against
scikit-learn's StratifiedGroupKFold as a second candidate (:func:`fold_groups`). Also the
quality measures the search and the tests use (:func:`fold_quality`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


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


def fold_groups(sizes: np.ndarray, folds: int, seed: int, rank: np.ndarray,
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
    ref_spread, ref_err, _ = _quality(ref, sizes, folds) if ref is not None else (0.0, np.inf, 0.0)
    if not np.isfinite(ref_err):  # none, or a fold left empty: no reference to hold to
        return _refine(start, sizes, folds, rank,
                       lambda spread, err, dev: (np.maximum(dev - tol, 0.0), err, spread))
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


def assign_grouped(ratio: float, folds: int, seed: int, grp: np.ndarray,
                   cls: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Whole groups to the test set and the folds: (is_test bool[n], fold int64[n], -1 on
    test rows) for rows of group ``grp`` and class ``cls`` (None: no stratify)."""
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
    fold_of = fold_groups(sizes[train], folds, seed, rank[train], rng.permutation(folds))
    group_fold = np.full(gkeys.size, -1, dtype=np.int64)
    group_fold[train] = fold_of
    return group_test[ginv], group_fold[ginv]
