"""ae-split and aekit.data.split: the tutorial's recipe, leak-free invariants, errors, pipes."""

from __future__ import annotations

import io
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings, strategies as st

from aekit.data import split as S
from aekit.data.groupfolds import fold_quality
from aekit.cmds.split import cli
from aekit.errors import InputError
from conftest import BIN, invoke, one_error_line as one_line_error, write_features

FAST = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------- helpers

def make_features(path: Path, ids: list[str]) -> Path:
    """A tiny features file (clips of shape 1x2x3, zeros) holding ``ids``."""
    write_features(path, ids=ids, params={}, x=np.zeros((len(ids), 1, 2, 3), np.float32))
    return path


def run(args, input=None):
    return invoke(cli, args, input=input, prog_name="ae-split")


def read_out(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype={"id": str, "split": str}, keep_default_na=False)


def check_basic(n, is_test, fold, folds):
    assert is_test.shape == fold.shape == (n,)
    assert (fold[is_test] == -1).all()
    assert set(fold[~is_test].tolist()) == set(range(folds))


# --------------------------------------------------------------------------- the tutorial's recipe

def test_tutorial_example_100_rows_in_3_parts():
    # 125 rows, 20 % test -> 25 test and 100 train rows -> folds of 34, 33, 33.
    is_test, fold = S.assign(125, test_ratio=0.2, folds=3, seed=42)
    assert is_test.sum() == 25
    assert np.bincount(fold[~is_test]).tolist() == [34, 33, 33]


@pytest.mark.parametrize("n,ratio,folds,seed", [(100, 0.2, 5, 42), (125, 0.2, 3, 0), (37, 0.3, 4, 7)])
def test_plain_split_is_train_test_split_then_array_split(n, ratio, folds, seed):
    from sklearn.model_selection import train_test_split

    ids = [f"clip{i:03d}" for i in range(n)]
    df = pd.DataFrame({"id": ids})
    table = S.split_table(df, test_ratio=ratio, folds=folds, seed=seed).set_index("id")
    train, test = train_test_split(ids, test_size=ratio, shuffle=True, random_state=seed)
    assert sorted(table.index[table["split"] == "test"]) == sorted(test)
    for k, part in enumerate(np.array_split(np.array(train), folds)):
        assert sorted(table.index[table["fold"] == k]) == sorted(part)


@FAST
@given(n=st.integers(2, 300), ratio=st.floats(0.01, 0.99), folds=st.integers(2, 8),
       seed=st.integers(0, 2**32 - 1))
def test_plain_invariants(n, ratio, folds, seed):
    n_test = math.ceil(ratio * n)
    if n - n_test < folds:
        with pytest.raises(InputError, match="more than"):
            S.assign(n, ratio, folds, seed)
        return
    is_test, fold = S.assign(n, ratio, folds, seed)
    check_basic(n, is_test, fold, folds)
    assert is_test.sum() == n_test  # the test fraction, rounded up as scikit-learn does
    sizes = np.bincount(fold[~is_test], minlength=folds)
    assert sizes.max() - sizes.min() <= 1
    assert sizes.tolist() == sorted(sizes.tolist(), reverse=True)  # array_split: big parts first
    again = S.assign(n, ratio, folds, seed)
    assert (again[0] == is_test).all() and (again[1] == fold).all()


@FAST
@given(data=st.data(), n_cls=st.integers(1, 5), ratio=st.floats(0.05, 0.6),
       folds=st.integers(2, 6), seed=st.integers(0, 1000))
def test_stratified_invariants(data, n_cls, ratio, folds, seed):
    counts = data.draw(st.lists(st.integers(2, 60), min_size=n_cls, max_size=n_cls))
    classes = np.repeat([f"c{i}" for i in range(n_cls)], counts)
    classes = data.draw(st.permutations(classes.tolist()))
    n = len(classes)
    n_test = math.ceil(ratio * n)
    if n - n_test < folds:
        with pytest.raises(InputError):
            S.assign(n, ratio, folds, seed, classes=classes)
        return
    try:
        is_test, fold = S.assign(n, ratio, folds, seed, classes=classes)
    except InputError as exc:  # one test row per class left too few train rows
        assert "at least one per class" in str(exc)
        assert n - sum(max(1, math.floor(ratio * c)) for c in counts) < folds
        return
    check_basic(n, is_test, fold, folds)
    if all(1 <= math.floor(ratio * c) < c - 1 for c in counts):
        assert is_test.sum() == n_test  # no class needed its one test or train row
    sizes = np.bincount(fold[~is_test], minlength=folds)
    assert sizes.max() - sizes.min() <= 1
    cls = np.asarray(classes)
    for c in set(classes):
        mine = cls == c
        assert abs((mine & is_test).sum() - ratio * mine.sum()) <= 1 + 1e-9
        assert (mine & is_test).any() and (mine & ~is_test).any()
        n_train = (mine & ~is_test).sum()
        for k in range(folds):
            assert abs((mine & (fold == k)).sum() - n_train / folds) <= 1 + 1e-9
    again = S.assign(n, ratio, folds, seed, classes=classes)
    assert (again[0] == is_test).all() and (again[1] == fold).all()


@FAST
@given(data=st.data(), ratio=st.floats(0.05, 0.6), folds=st.integers(2, 5),
       seed=st.integers(0, 1000), stratify=st.booleans())
def test_grouped_invariants(data, ratio, folds, seed, stratify):
    sizes = data.draw(st.lists(st.integers(1, 12), min_size=folds + 1, max_size=25))
    groups = np.repeat([f"g{i}" for i in range(len(sizes))], sizes).tolist()
    groups = data.draw(st.permutations(groups))
    n = len(groups)
    classes = None
    if stratify:
        classes = data.draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n))
        if min(pd.Series(classes).value_counts()) < 2:
            with pytest.raises(InputError, match="only 1 row"):
                S.assign(n, ratio, folds, seed, classes=classes, groups=groups)
            return
    is_test, fold = S.assign(n, ratio, folds, seed, classes=classes, groups=groups)
    check_basic(n, is_test, fold, folds)
    g = pd.DataFrame({"g": groups, "t": is_test, "f": fold})
    # A group is never on two sides: one split and one fold per group.
    assert (g.groupby("g")["t"].nunique() == 1).all()
    assert (g.groupby("g")["f"].nunique() == 1).all()
    test_groups = g.loc[g.t, "g"].nunique()
    train_groups = g.loc[~g.t, "g"].nunique()
    assert test_groups >= 1 and train_groups >= folds
    if not stratify:
        gmax = max(sizes)
        fold_rows = np.bincount(fold[~is_test], minlength=folds)
        assert fold_rows.max() - fold_rows.min() <= gmax  # greedy: within one group of balanced
        if test_groups > 1 and train_groups > folds:  # no minimum had to be forced
            assert abs(is_test.sum() - ratio * n) <= gmax
    again = S.assign(n, ratio, folds, seed, classes=classes, groups=groups)
    assert (again[0] == is_test).all() and (again[1] == fold).all()


def test_group_balance_example():
    # 20 speakers of 10 clips: exactly 4 test speakers and 4 per fold.
    groups = [f"spk{i % 20}" for i in range(200)]
    is_test, fold = S.assign(200, 0.2, 4, 42, groups=groups)
    assert is_test.sum() == 40
    assert np.bincount(fold[~is_test]).tolist() == [40, 40, 40, 40]


def test_stratified_grouped_keeps_rare_class_in_test_and_train():
    # 30 machines, 3 of them with anomalies: both sides should see anomalies.
    rows = []
    for m in range(30):
        for j in range(10):
            rows.append((f"m{m}", "anomaly" if m < 3 and j < 5 else "normal"))
    groups, classes = zip(*rows)
    is_test, fold = S.assign(len(rows), 0.2, 2, 1, classes=classes, groups=groups)
    cls = np.asarray(classes)
    assert (cls[is_test] == "anomaly").any() and (cls[~is_test] == "anomaly").any()


# --------------------------------------------------------------------------- the command

@pytest.fixture
def csv_input(tmp_path):
    p = tmp_path / "rows.csv"
    lines = ["id,label,speaker"] + [f"c{i},{'ab'[i % 2]},s{i % 10}" for i in range(60)]
    p.write_text("\n".join(lines) + "\n")
    return p



def test_csv_output_columns_and_folds(csv_input):
    r = run([str(csv_input), "--folds", "3", "-q"])
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.splitlines()[0] == "id,split,fold,label,speaker"
    df = read_out(r.stdout)
    assert len(df) == 60 and df["id"].is_unique
    assert set(df["split"]) == {"train", "test"}
    assert (df.loc[df.split == "test", "fold"] == "").all()
    assert set(df.loc[df.split == "train", "fold"]) == {0, 1, 2} or \
        set(df.loc[df.split == "train", "fold"]) == {"0", "1", "2"}
    assert "True" not in r.stdout and ".0" not in r.stdout
    assert r.stdout.endswith("\n") and "\r" not in r.stdout


def test_same_seed_byte_identical_other_seed_differs(csv_input):
    a = run([str(csv_input), "--stratify", "label", "--group", "speaker"])
    b = run([str(csv_input), "--stratify", "label", "--group", "speaker"])
    c = run([str(csv_input), "--stratify", "label", "--group", "speaker", "--seed", "3"])
    assert a.exit_code == b.exit_code == 0
    assert a.stdout == b.stdout and a.stdout != c.stdout


def test_stdin_and_output_file(csv_input, tmp_path):
    out = tmp_path / "splits.csv"
    r = run(["-", "-o", str(out)], input=csv_input.read_text())
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    assert "60 ids" in r.stderr
    assert out.read_text() == run([str(csv_input)]).stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_id_column_and_split_file_roundtrip(tmp_path):
    from aekit.data.selection import load_splits, select_rows

    p = tmp_path / "x.csv"
    p.write_text("file,kind\n" + "".join(f"f{i},k{i % 3}\n" for i in range(40)))
    out = tmp_path / "s.csv"
    r = run([str(p), "--id-column", "file", "--stratify", "kind", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    splits = load_splits(out)
    ids = [f"f{i}" for i in range(40)]
    val = select_rows(ids, splits, "val", 0)
    train = select_rows(ids, splits, "train", 0)
    test = select_rows(ids, splits, "test", None)
    assert len(set(val) | set(train) | set(test)) == 40
    assert not (set(val) & set(train)) and not (set(test) & set(train))


def test_hdf5_with_labels(tmp_path):
    ids = [f"m{i % 8}/clip{i}" for i in range(50)]
    feats = make_features(tmp_path / "feats.bin", ids)  # recognised by signature, not name
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label,machine\n" + "".join(
        f"{i},{int(k % 5 == 0)},{i.split('/')[0]}\n" for k, i in enumerate(reversed(ids))))
    r = run([str(feats), "--labels", str(labels), "--stratify", "label", "--group", "machine",
             "--folds", "3"])
    assert r.exit_code == 0, r.stderr
    df = read_out(r.stdout)
    assert list(df.columns) == ["id", "split", "fold", "label", "machine"]
    assert list(df["id"]) == ids
    assert (df.groupby("machine")["split"].nunique() == 1).all()


def test_hdf5_without_labels_cannot_stratify(tmp_path):
    feats = make_features(tmp_path / "f.h5", [f"c{i}" for i in range(20)])
    r = run([str(feats)])
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == "id,split,fold"
    r = run([str(feats), "--stratify", "label"])
    assert r.exit_code == 2
    assert "--stratify: column 'label' not found" in r.stderr and "label CSV" in r.stderr


@pytest.mark.parametrize("args,content,words", [
    (["--stratify", "nope"], None, ["--stratify: column 'nope' not found", "id, label, speaker"]),
    (["--group", "nope"], None, ["--group: column 'nope' not found"]),
    (["--id-column", "key"], None, ["--id-column: ", "'key' not found"]),
    ([], "id,label\na,1\nb,1\na,2\n", ["duplicate ids", "a"]),
    (["--stratify", "label", "--folds", "2"], "id,label\n" + "".join(f"r{i},x\n" for i in range(20)) + "r99,y\n",
     ["--stratify: class 'y' has only 1 row"]),
    (["--folds", "50"], None, ["--folds: 50 is more than"]),
    (["--group", "speaker", "--folds", "10"], None, ["--folds: 10 needs at least 11 groups", "found 10"]),
    (["--test-ratio", "0"], None, ["--test-ratio: must be between 0 and 1"]),
    (["--test-ratio", "1"], None, ["--test-ratio"]),
    (["--test-ratio", "1.5"], None, ["--test-ratio"]),
    (["--test-ratio", "-0.2"], None, ["--test-ratio"]),
    (["--folds", "1"], None, ["--folds: must be at least 2, got 1"]),
])
def test_errors_one_line_exit_2_nothing_written(csv_input, tmp_path, args, content, words):
    src = csv_input
    if content is not None:
        src = tmp_path / "bad.csv"
        src.write_text(content)
    out = tmp_path / "out.csv"
    r = run([str(src), "-o", str(out), *args])
    one_line_error(r, *words)
    assert r.stdout == ""
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({src.name, csv_input.name})


def test_missing_and_empty_inputs(tmp_path):
    one_line_error(run([str(tmp_path / "absent.csv")]), "no such file")
    (tmp_path / "empty.csv").write_text("")
    one_line_error(run([str(tmp_path / "empty.csv")]), "empty CSV")
    (tmp_path / "head.csv").write_text("id,label\n")
    one_line_error(run([str(tmp_path / "head.csv")]), "no rows")
    (tmp_path / "bad.h5").write_text("id\na\n")
    one_line_error(run([str(tmp_path / "bad.h5")]), "not an HDF5 file")


def test_labels_missing_ids_is_an_error(tmp_path):
    feats = make_features(tmp_path / "f.h5", [f"c{i}" for i in range(20)])
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"c{i},0\n" for i in range(19)))
    one_line_error(run([str(feats), "--labels", str(labels)]), "labels missing", "c19")


def test_real_pipe_split_into_onehot(tmp_path):
    ids = [f"clip{i}" for i in range(30)]
    make_features(tmp_path / "feats.h5", ids)
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"{i},{k % 2}\n" for k, i in enumerate(ids)))
    cmd = (f"set -o pipefail; '{BIN / 'ae-split'}' feats.h5 --labels labels.csv "
           f"| '{BIN / 'ae-onehot'}' - -c split > x.csv")
    p = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "ae-split: INFO:" in p.stderr and "ae-onehot: INFO:" in p.stderr
    x = pd.read_csv(tmp_path / "x.csv", dtype={"id": str})
    assert list(x.columns) == ["id", "fold", "label", "split_test", "split_train"]
    assert len(x) == 30 and x["split_test"].sum() == 6
    assert (x["split_test"] + x["split_train"] == 1).all()
    # Closing the pipe early is not an error either.
    p = subprocess.run(["bash", "-c", f"'{BIN / 'ae-split'}' feats.h5 | head -1"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.stdout == "id,split,fold\n" and "Traceback" not in p.stderr
    # An error from the installed program: one line with its own name, exit 2, no output.
    p = subprocess.run([str(BIN / "ae-split"), "feats.h5", "--folds", "40", "-o", "s.csv"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines()[-1].startswith("ae-split: error: --folds: 40 is more than")
    assert not (tmp_path / "s.csv").exists()


# --------------------------------------------------------------------------- grouped: balance

def sklearn_folds(groups, classes, fold, folds, seed):
    """The oracle: StratifiedGroupKFold(shuffle, seed) on the train rows of ``fold``."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    train = np.flatnonzero(np.asarray(fold) >= 0)
    out = np.full(len(fold), -1)
    g, c = np.asarray(groups)[train], np.asarray(classes)[train]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        for k, (_, val) in enumerate(splitter.split(np.zeros(train.size), c, g)):
            out[train[val]] = k
    return out


@st.composite
def structures(draw, max_classes=6):
    """Random (groups, classes): few groups per class, one group per class, very unequal
    groups; every group holds one class, every class at least 2 rows."""
    n_cls = draw(st.integers(1, max_classes))
    spec = []
    for _ in range(n_cls):
        n_g = draw(st.integers(1, 6))
        skew = draw(st.booleans())
        spec.append([draw(st.integers(2 if j == 0 else 1, 80 if skew and j == 0 else 12))
                     for j in range(n_g)])
    groups, classes = grouped_rows(spec)
    order = draw(st.permutations(range(len(groups))))
    return [groups[i] for i in order], [classes[i] for i in order]


def grouped_rows(spec):
    """Rows of class c{i} in groups c{i}g{j} of spec[i][j] rows each."""
    groups, classes = [], []
    for c, sizes in enumerate(spec):
        for j, m in enumerate(sizes):
            groups += [f"c{c}g{j}"] * m
            classes += [f"c{c}"] * m
    return groups, classes


# derandomize: a fixed set of examples, so the suite is reproducible. The @examples were
# found by random exploration (the first by shrinking): StratifiedGroupKFold leaves a fold
# empty there, which the class error used to score as shares 0, lower than any split using
# every fold (the first: 6 groups in 6 folds, one group each, is the only K-fold split).
@settings(max_examples=80, deadline=None, derandomize=True)
@given(struct=structures(), folds=st.integers(2, 6), seed=st.integers(0, 2**32 - 1))
@example(struct=grouped_rows([[2, 1, 1], [2], [6], [2], [2], [2]]), folds=6, seed=0)
@example(struct=grouped_rows([[10, 10, 10], [80], [6], [4]]), folds=5, seed=5898405)
@example(struct=grouped_rows([[5, 7, 2, 2, 5, 2], [14], [19], [11], [2, 3]]), folds=6, seed=100)
@example(struct=grouped_rows([[2, 3], [3], [3, 9, 8, 1], [2], [3]]), folds=6, seed=9574)
@example(struct=grouped_rows([[27, 7, 4, 5, 9, 1], [6], [64], [5], [3]]), folds=6, seed=133)
def test_grouped_folds_balanced_and_never_worse_than_sklearn(struct, folds, seed):
    groups, classes = struct
    if len(set(groups)) < folds + 1:
        return
    notes = []
    is_test, fold = S.assign(len(groups), 0.2, folds, seed, classes=classes, groups=groups,
                             notes=notes)
    check_basic(len(groups), is_test, fold, folds)
    g, c = np.asarray(groups), np.asarray(classes)
    # Fold sizes: each within max(largest train group, 10 % of the mean) of the mean.
    sizes = np.bincount(fold[~is_test], minlength=folds)
    largest = pd.Series(g[~is_test]).value_counts().max()
    assert np.abs(sizes - sizes.mean()).max() <= max(largest, 0.1 * sizes.mean()) + 1e-9
    # Never worse than StratifiedGroupKFold on the same rows, in spread or class error.
    mine = fold_quality(fold, classes)
    try:
        ref = sklearn_folds(groups, classes, fold, folds, seed)
        theirs = fold_quality(ref, classes, folds)
        ref_sizes = np.bincount(ref[ref >= 0], minlength=folds)
        # fold sizes come first (lib/data/groupfolds.py fold_groups): the class error is only held
        # to StratifiedGroupKFold's where its folds meet the size bound themselves
        ref_sized = np.abs(ref_sizes - ref_sizes.mean()).max() <= max(
            largest, 0.1 * ref_sizes.mean()) + 1e-9
    except ValueError:  # StratifiedGroupKFold refuses: every class smaller than --folds
        theirs, ref_sized = (np.inf, np.inf), True
    assert mine[0] <= theirs[0]
    if ref_sized:  # (1e-12: the search compares errors rounded to 12 digits)
        assert mine[1] <= theirs[1] + 1e-12
    # The test set holds every class with at least two groups; the rest are named.
    for cls in set(classes):
        n_groups = len(set(g[c == cls]))
        if not is_test[c == cls].any():
            assert any(cls in n for n in notes if n.startswith("no test rows")), (cls, notes)
            assert n_groups == 1 or len(set(groups)) < 2 * folds, (cls, n_groups)
        held = len(set(fold[(c == cls) & ~is_test]))
        if held < folds:
            assert any(f"{cls} ({held})" in n for n in notes), (cls, notes)
    again = S.assign(len(groups), 0.2, folds, seed, classes=classes, groups=groups)
    assert (again[0] == is_test).all() and (again[1] == fold).all()


def few_groups_per_class(n_cls=10, n_groups=4, rows=184, seed=7):
    """``n_cls`` classes of ``n_groups`` groups each, ``rows`` rows of unequal group sizes."""
    n_all = n_cls * n_groups
    sizes = 2 + np.random.default_rng(seed).multinomial(rows - 2 * n_all, np.full(n_all, 1 / n_all))
    groups = np.repeat([f"c{i // n_groups}g{i % n_groups}" for i in range(n_all)], sizes)
    classes = np.array([x.split("g")[0] for x in groups])
    return groups.tolist(), classes.tolist()


@pytest.mark.parametrize("seed", [0, 42])
def test_ten_classes_of_four_groups(seed):
    # The case: folds came out 46, 46, 38, 4, 4 and every class sat in folds 0-2.
    groups, classes = few_groups_per_class()
    is_test, fold = S.assign(184, 0.2, 5, seed, classes=classes, groups=groups)
    sizes = np.bincount(fold[~is_test])
    assert sizes.max() - sizes.min() <= 3, sizes
    assert set(np.asarray(classes)[is_test]) == set(classes)  # all 10 classes in the test set
    c = np.asarray(classes)
    for cls in set(classes):  # 3 train groups each: in 3 different folds
        assert len(set(fold[(c == cls) & ~is_test])) == 3
    mine = fold_quality(fold, classes)
    theirs = fold_quality(sklearn_folds(groups, classes, fold, 5, seed), classes)
    assert mine[0] <= theirs[0] and mine[1] <= theirs[1] + 1e-9


def test_four_types_of_two_machines_all_types_in_test():
    # Three of four types used to have no test rows at all, without a warning.
    groups = [f"{t}-id{m}" for t in ("fan", "pump", "slider", "valve") for m in range(2)
              for _ in range(30 + m)]
    types = [g.split("-")[0] for g in groups]
    for seed in (0, 1, 42):
        notes = []
        is_test, fold = S.assign(len(groups), 0.2, 2, seed, classes=types, groups=groups,
                                 notes=notes)
        assert set(np.asarray(types)[is_test]) == set(types)
        assert set(np.asarray(types)[~is_test]) == set(types)
        # One machine per type left to train: each type is in one of the two folds only.
        assert notes and "missing from some of the 2 folds" in notes[-1]


def test_ties_are_broken_by_the_seed_not_the_lowest_index():
    # Equal groups of one class: the old greedy put the remainder into the lowest bins.
    groups = [f"g{i}" for i in range(11) for _ in range(5)]
    layouts = set()
    for seed in range(6):
        is_test, fold = S.assign(len(groups), 0.1, 5, seed, groups=groups)
        sizes = np.bincount(fold[~is_test])
        assert sizes.max() - sizes.min() <= 5
        layouts.add(tuple(fold))
    assert len(layouts) > 1


def test_single_group_class_is_named_and_strict_fails(tmp_path):
    p = tmp_path / "rows.csv"
    rows = [f"r{i},{'solo' if i < 8 else 'ab'[i % 2]},{'s0' if i < 8 else f's{i % 7 + 1}'}"
            for i in range(50)]
    p.write_text("id,label,spk\n" + "\n".join(rows) + "\n")
    r = run([str(p), "--stratify", "label", "--group", "spk", "--folds", "2"])
    assert r.exit_code == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "WARNING" in ln]
    assert len(warn) == 2 and "solo" in warn[0] and "single group" in warn[0]
    assert "solo (1)" in warn[1] and "missing from some of the 2 folds" in warn[1]
    summary = [ln for ln in r.stderr.splitlines() if "50 ids" in ln][0]
    assert "2 unmet" in summary and "solo" in summary
    df = read_out(r.stdout)
    assert not (df.loc[df.split == "test", "label"] == "solo").any()
    out = tmp_path / "s.csv"
    r = run([str(p), "--stratify", "label", "--group", "spk", "--folds", "2", "--strict",
             "-o", str(out)])
    assert r.exit_code == 1 and "--strict" in r.stderr and "solo" in r.stderr
    assert r.stdout == "" and not out.exists()
    # Without an unmet constraint --strict changes nothing.
    a = run([str(p), "--folds", "2", "--strict", "--stratify", "label"])
    b = run([str(p), "--folds", "2", "--stratify", "label"])
    assert a.exit_code == 0 and a.stdout == b.stdout


# --------------------------------------------------------------------------- protocols

@pytest.fixture
def machines(tmp_path):
    """DCASE-like: 3 types x 2 machines x 20 clips, every 5th clip anomalous, own folders."""
    lines = ["id,machine_type,machine_id,anomaly,folder"]
    for t in ("fan", "pump", "valve"):
        for m in range(2):
            for j in range(20):
                anomaly = int(j % 5 == 0)
                folder = "test" if anomaly or j % 5 == 1 else "train"
                lines.append(f"{t}/id_0{m}/{j:02d}.wav,{t},{t}-0{m},{anomaly},{folder}")
    p = tmp_path / "labels.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_test_where_sends_matches_to_test_and_splits_the_rest(machines):
    r = run([str(machines), "--test-where", "anomaly == 1", "--folds", "3", "--seed", "5"])
    assert r.exit_code == 0, r.stderr
    df = read_out(r.stdout)
    anomalous = df["anomaly"].astype(int) == 1
    assert (df.loc[anomalous, "split"] == "test").all()
    assert (df.loc[anomalous, "fold"] == "").all()
    # The rest is split exactly as if it were the whole input (here the plain recipe).
    rest = df[~anomalous].reset_index(drop=True)
    is_test, fold = S.assign(len(rest), 0.2, 3, 5)
    assert (rest["split"].eq("test").to_numpy() == is_test).all()
    assert rest.loc[~is_test, "fold"].astype(int).tolist() == fold[~is_test].tolist()
    # With stratification by machine the normal test clips cover every machine.
    r = run([str(machines), "--test-where", "anomaly == 1 and machine_type != 'x'",
             "--stratify", "machine_id", "--folds", "3"])
    df = read_out(r.stdout)
    normal_test = df[(df.split == "test") & (df.anomaly.astype(int) == 0)]
    assert set(normal_test["machine_id"]) == set(df["machine_id"])


def test_split_column_takes_train_test_and_makes_folds_inside_train(machines):
    r = run([str(machines), "--split-column", "folder", "--folds", "4", "--group", "machine_id"])
    assert r.exit_code == 0, r.stderr
    df = read_out(r.stdout)
    assert (df["split"] == df["folder"]).all()
    train = df[df.split == "train"]
    assert sorted(set(train["fold"].astype(int))) == [0, 1, 2, 3]
    assert (train.groupby("machine_id")["fold"].nunique() == 1).all()
    assert (df.loc[df.split == "test", "fold"] == "").all()
    # --test-where adds to the column's test set.
    r = run([str(machines), "--split-column", "folder", "--test-where", "machine_type == 'fan'"])
    df = read_out(r.stdout)
    assert (df.loc[df.machine_type == "fan", "split"] == "test").all()
    other = df[df.machine_type != "fan"]
    assert (other["split"] == other["folder"]).all()


@pytest.mark.parametrize("args,words", [
    (["--test-where", "__import__('os').system('echo hi')"], ["not allowed"]),
    (["--test-where", "anomaly.sum() > 0"], ["--test-where: bad expression", "not allowed"]),
    (["--test-where", "anomaly == 7"], ["--test-where: no row matches 'anomaly == 7'"]),
    (["--test-where", "anomaly >= 0"], ["--test-where: every row matches"]),
    (["--test-where", "nope == 1"], ["--test-where: bad expression", "unknown column", "nope"]),
    (["--split-column", "machine_type"], ["--split-column: column 'machine_type' must hold 'train' or 'test'", "'fan'"]),
    (["--split-column", "nope"], ["--split-column: column 'nope' not found"]),
    (["--split-column", "folder", "--test-ratio", "0.3"], ["--test-ratio cannot be used"]),
])
def test_protocol_errors(machines, tmp_path, args, words):
    out = tmp_path / "out.csv"
    r = run([str(machines), "-o", str(out), *args])
    one_line_error(r, *words)
    assert not out.exists()


def test_stratified_small_classes_get_a_test_row():
    # 96 + 2 + 2 rows, 20 %: b and c have an ideal of 0.4 test rows each. Largest remainder
    # alone gives the one leftover row to only one of them; both get one now.
    classes = ["a"] * 96 + ["b"] * 2 + ["c"] * 2
    for seed in range(5):
        notes = []
        is_test, fold = S.assign(100, 0.2, 3, seed, classes=classes, notes=notes)
        c = np.asarray(classes)
        assert sorted(set(c[is_test])) == ["a", "b", "c"]
        assert sorted(set(c[~is_test])) == ["a", "b", "c"]
        assert (c[is_test] == "a").sum() == 19 and is_test.sum() == 21
        # One train row each for b and c: they are missing from 2 of the 3 folds, and said so.
        assert len(notes) == 1 and "b (1), c (1)" in notes[0]
