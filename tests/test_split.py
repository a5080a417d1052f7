"""ae-split and aekit.split: the tutorial's recipe, leak-free invariants, errors, pipes."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from aekit import split as S
from aekit.cmds.split import cli
from aekit.errors import InputError
from aekit.store import PER_CLIP, FeatureWriter

FAST = settings(max_examples=60, deadline=None)
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- helpers

def make_features(path: Path, ids: list[str]) -> Path:
    """A tiny features file (clips of shape 1x2x3) holding ``ids``."""
    w = FeatureWriter(path, params={}, shape=(1, 2, 3))
    n = len(ids)
    w.append(np.zeros((n, 1, 2, 3), np.float32), ids, [f"{i}.wav" for i in ids],
             {k: [0] * n for k in PER_CLIP})
    w.close()
    return path


def run(args, input=None):
    return CliRunner().invoke(cli, args, input=input, prog_name="ae-split")


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
    assert [len(p) for p in np.array_split(np.arange(100), 3)] == [34, 33, 33]


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
    is_test, fold = S.assign(n, ratio, folds, seed, classes=classes)
    check_basic(n, is_test, fold, folds)
    assert is_test.sum() == n_test
    sizes = np.bincount(fold[~is_test], minlength=folds)
    assert sizes.max() - sizes.min() <= 1
    cls = np.asarray(classes)
    for c in set(classes):
        mine = cls == c
        assert abs((mine & is_test).sum() - ratio * mine.sum()) <= 1 + 1e-9
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
    from aekit.selection import load_splits, select_rows

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
    assert "'label' not found" in r.stderr and "--labels" in r.stderr


def one_line_error(r, *words):
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    # The program name comes from sys.argv[0] under CliRunner; the real one is in the pipe test.
    assert len(errors) == 1 and ": error: " in errors[0]
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in errors[0]


@pytest.mark.parametrize("args,content,words", [
    (["--stratify", "nope"], None, ["'nope' not found", "id, label, speaker"]),
    (["--group", "nope"], None, ["'nope' not found"]),
    (["--id-column", "key"], None, ["'key' not found"]),
    ([], "id,label\na,1\nb,1\na,2\n", ["duplicate ids", "a"]),
    (["--stratify", "label", "--folds", "2"], "id,label\n" + "".join(f"r{i},x\n" for i in range(20)) + "r99,y\n",
     ["'y'", "only 1 row"]),
    (["--folds", "50"], None, ["--folds 50", "more than"]),
    (["--group", "speaker", "--folds", "10"], None, ["at least 11 groups", "found 10"]),
    (["--test-ratio", "0"], None, ["--test-ratio", "between 0 and 1"]),
    (["--test-ratio", "1"], None, ["--test-ratio"]),
    (["--test-ratio", "1.5"], None, ["--test-ratio"]),
    (["--test-ratio", "-0.2"], None, ["--test-ratio"]),
    (["--folds", "1"], None, ["--folds must be at least 2"]),
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
    assert p.stderr.splitlines()[-1].startswith("ae-split: error: --folds 40 is more than")
    assert not (tmp_path / "s.csv").exists()
