"""Choosing rows of a features file: split CSVs from ae-split and label CSVs joined by id.

Split CSV contract (written by ae-split): columns ``id,split,fold``; ``split`` is
``train`` or ``test``; ``fold`` is 0..K-1 on train rows and empty on test rows.
For fold K: *val* = train rows with fold == K, *train* = train rows with fold != K,
*test* = test rows. Test rows are never used for fitting anything.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

from aekit.errors import InputError, preview
from aekit.data.expr import parse_where
from aekit.system.textinput import display_name, read_csv




def load_splits(path: str | os.PathLike, ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Read an ae-split CSV, indexed by id, with columns split (str) and fold (Int64, <NA> on test)."""
    df = read_csv(path, dtype={"id": str, "split": str}, keep_default_na=False)
    name = display_name(path)
    missing = [c for c in ("id", "split", "fold") if c not in df.columns]
    if missing:
        raise InputError(f"{name}: not a split file: missing column(s) {', '.join(missing)}; "
                         f"columns are: {', '.join(map(str, df.columns))}")
    if df["id"].duplicated().any():
        raise InputError(f"{name}: duplicate ids: {preview(df.loc[df['id'].duplicated(), 'id'].unique())}")
    bad = sorted(set(df["split"]) - {"train", "test"})
    if bad:
        raise InputError(f"{name}: split must be 'train' or 'test', found: {preview(bad)}")
    fold = pd.to_numeric(df["fold"].replace("", np.nan), errors="coerce")
    if (df["split"].eq("train") & fold.isna()).any():
        raise InputError(f"{name}: train rows without a fold number")
    bad_fold = fold.notna() & ((fold < 0) | (fold != np.floor(fold)))
    if bad_fold.any():
        raise InputError(f"{name}: fold must be a whole number from 0 up; found "
                         f"{preview(df.loc[bad_fold, 'fold'].unique())}")
    df["fold"] = fold.astype("Int64")
    df = df.set_index("id")
    if ids is not None:
        unknown = df.index.difference(pd.Index(ids))
        if len(unknown):
            raise InputError(f"{name}: {len(unknown)} id(s) not in the features file: "
                             f"{preview(sorted(unknown))}")
    return df


def num_folds(splits: pd.DataFrame) -> int:
    f = splits["fold"].dropna()
    return int(f.max()) + 1 if len(f) else 0


def select_rows(ids: Sequence[str], splits: pd.DataFrame | None, split: str | None,
                fold: int | None) -> np.ndarray:
    """Indices (ascending) into ``ids`` of the rows in ``split`` for ``fold``.

    split: 'train', 'val', 'test', 'all' or None (= all). Without a splits table every row
    is selected. 'train' without a fold means every train row.
    """
    n = len(ids)
    if splits is None:
        if split not in (None, "all"):
            raise InputError(f"needed to select split {split!r}", param="splits_path")
        if fold is not None:
            raise InputError(f"needed to select fold {fold}", param="splits_path")
        return np.arange(n)
    k = num_folds(splits)
    if fold is not None and not (0 <= fold < k):
        raise InputError(f"fold {fold} is out of range: the split file has folds 0..{k - 1}")
    if split == "val" and fold is None:
        raise InputError("needed to select split 'val' (the validation rows of one fold)",
                         param="fold")
    s = splits.reindex(pd.Index(ids))
    sp = s["split"].to_numpy()
    fd = s["fold"]
    if split in (None, "all"):
        mask = pd.notna(sp)
    elif split == "test":
        mask = sp == "test"
    elif split == "train":
        mask = sp == "train"
        if fold is not None:
            mask &= (fd != fold).fillna(False).to_numpy(dtype=bool)
    elif split == "val":
        mask = (sp == "train") & (fd == fold).fillna(False).to_numpy(dtype=bool)
    else:
        raise InputError(f"unknown split {split!r}: use train, val, test or all", param="split")
    return np.flatnonzero(np.asarray(mask, dtype=bool))


def load_labels(path: str | os.PathLike, ids: Sequence[str], id_column: str = "id",
                require_all: bool = True, as_text: bool = False) -> pd.DataFrame:
    """Label CSV joined to ``ids``: a DataFrame indexed by id in the order of ``ids``.

    Every value is text exactly as written (``01`` stays ``01``, ``NA`` is an id or a value
    like any other, an empty cell is ``''``): ``as_text`` is kept for compatibility and
    changes nothing. ``--where`` types a column itself (see :mod:`aekit.data.expr`), from all the
    file's rows: ``attrs["column_kinds"]`` of the result.

    Raises InputError when the id column is missing, ids repeat, or (require_all) some ids
    have no labels.
    """
    from aekit.data.expr import column_kinds

    df = read_csv(path, dtype=str, keep_default_na=False)
    name = display_name(path)
    if id_column not in df.columns:
        raise InputError(f"{name}: column '{id_column}' not found; columns are: "
                         f"{', '.join(map(str, df.columns))}")
    if df[id_column].duplicated().any():
        raise InputError(f"{name}: duplicate ids: {preview(df.loc[df[id_column].duplicated(), id_column].unique())}")
    df = df.set_index(id_column)
    if require_all:
        missing = pd.Index(ids).difference(df.index)
        if len(missing):
            raise InputError(f"{name}: labels missing for {len(missing)} id(s): {preview(sorted(missing))}"
                             " (ids are paths relative to the featurized root)")
    kinds = column_kinds(df)
    out = df.reindex(pd.Index(ids, name="id"))
    out.attrs["column_kinds"] = kinds
    return out


def query_rows(labels: pd.DataFrame, expr: str) -> np.ndarray:
    """Boolean mask over labels rows matching a safe selection expression (see aekit.data.expr)."""
    return parse_where(expr).mask(labels)


def restrict_rows(ids: Sequence[str], rows: np.ndarray, labels_path: str | os.PathLike | None,
                  where: str | None) -> np.ndarray:
    """``rows`` (indices into ``ids``) whose labels match ``where`` (``--where`` of ae-eval
    and ae-encode); ``rows`` unchanged without ``where``. Every selected id needs labels."""
    if where is None:
        return rows
    if labels_path is None:
        raise InputError("needs labels: no label CSV given", param="where")
    where_ = parse_where(where)  # refuse a bad expression before reading anything
    labels = load_labels(labels_path, [ids[i] for i in rows])
    keep = rows[where_.mask(labels)]
    if keep.size == 0:
        raise InputError(f"no selected row matches {where!r} (of {rows.size})", param="where")
    return keep
