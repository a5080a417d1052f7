"""ae-onehot and aekit.data.onehot: consistent columns between fit and apply, guards, errors."""

from __future__ import annotations

import io
import json
import subprocess

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from aekit.data import onehot as O
from aekit.cmds.onehot import cli
from aekit.errors import InputError
from conftest import BIN, invoke, one_error_line as one_line_error

FAST = settings(max_examples=60, deadline=None)


def run(args, input=None):
    return invoke(cli, args, input=input, prog_name="ae-onehot")


def frame(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)


@pytest.fixture
def train_csv(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text("id,machine,speed\n"
                 "a,fan,1\nb,pump,2\nc,valve,1\nd,fan,3\ne,pump,01\n")
    return p


@pytest.fixture
def test_csv(tmp_path):
    p = tmp_path / "test.csv"
    p.write_text("id,machine,speed\nx,valve,2\ny,slider,1\nz,fan,1\n")
    return p


# --------------------------------------------------------------------------- library

def test_matches_the_tutorials_get_dummies():
    df = pd.DataFrame({"id": ["a", "b", "c", "d"], "color": ["red", "blue", "red", "green"]})
    out, cats = O.fit_transform(df, ["color"])
    want = pd.concat([df, pd.get_dummies(df["color"], prefix="color", dtype=int)], axis=1)
    want = want.drop(columns=["color"])
    assert list(out.columns) == list(want.columns)
    assert (out.to_numpy() == want.to_numpy()).all()
    assert all(out[c].dtype == np.int64 for c in out.columns if c.startswith("color_"))


@FAST
@given(train=st.lists(st.sampled_from(["a", "b", "B", "01", "1", "10", "9", "é", "x y"]),
                      min_size=1, max_size=40),
       test=st.lists(st.sampled_from(["a", "b", "B", "01", "1", "10", "9", "é", "x y"]),
                     min_size=0, max_size=40))
def test_fit_and_apply_give_identical_columns(train, test):
    tr = pd.DataFrame({"id": [f"t{i}" for i in range(len(train))], "cat": train})
    te = pd.DataFrame({"id": [f"s{i}" for i in range(len(test))], "cat": test})
    out_tr, cats = O.fit_transform(tr, ["cat"])
    cats = O.from_json(json.loads(json.dumps(O.to_json(cats))))  # through the file format
    out_te, unknown = O.transform(te, cats, handle_unknown="ignore")
    assert list(out_tr.columns) == list(out_te.columns)
    assert cats["cat"].categories == sorted(set(train))  # sorted as text
    onehot_cols = [c for c in out_tr.columns if c.startswith("cat_")]
    for out, values in ((out_tr, train), (out_te, test)):
        m = out[onehot_cols].to_numpy()
        assert m.dtype == np.int64 and set(np.unique(m)) <= {0, 1}
        known = np.array([v in set(train) for v in values], dtype=bool)
        assert (m.sum(axis=1) == known.astype(int)).all()
    assert unknown.get("cat", 0) == sum(v not in set(train) for v in test)


def test_min_frequency_folds_rare_categories():
    df = pd.DataFrame({"c": ["a"] * 5 + ["b"] * 3 + ["c", "d"]})
    out, cats = O.fit_transform(df, ["c"], min_frequency=3)
    assert cats["c"].categories == ["a", "b"] and cats["c"].infrequent == ["c", "d"]
    assert list(out.columns) == ["c_a", "c_b", "c_infrequent"]
    assert out["c_infrequent"].tolist() == [0] * 8 + [1, 1]


def test_dummy_na_and_missing_rows():
    df = pd.DataFrame({"c": ["a", np.nan, "b", np.nan]})
    with pytest.raises(InputError, match=r"2 missing value\(s\) in data row\(s\) 2, 4"):
        O.fit(df, ["c"])
    out, cats = O.fit_transform(df, ["c"], dummy_na=True)
    assert list(out.columns) == ["c_a", "c_b", "c_nan"]
    assert out["c_nan"].tolist() == [0, 1, 0, 1]
    # Fit without missing values: a missing value at apply time is an error.
    cats = O.fit(pd.DataFrame({"c": ["a"]}), ["c"])
    with pytest.raises(InputError, match="missing"):
        O.transform(df, cats)


def test_cardinality_guard():
    df = pd.DataFrame({"user": [f"u{i}" for i in range(51)]})
    with pytest.raises(InputError) as exc:
        O.fit(df, ["user"])
    msg = str(exc.value)
    assert msg.startswith("max_categories: column 'user' has 51 categories, more than 50: ")
    assert "embedding" in msg and "--" not in msg
    assert "\n" not in msg
    assert len(O.fit(df.iloc[:50], ["user"])["user"].categories) == 50
    assert len(O.fit(df, ["user"], max_categories=0)["user"].categories) == 51
    assert len(O.fit(df, ["user"], max_categories=60)["user"].categories) == 51


def test_category_file_rejects_other_json(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"format": "something"}')
    with pytest.raises(InputError, match="not an aekit categories file"):
        O.load_categories(p)
    p.write_text("{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        O.load_categories(p)


# --------------------------------------------------------------------------- the command


def test_fit_save_then_apply(train_csv, test_csv, tmp_path):
    cats = tmp_path / "cats.json"
    r = run([str(train_csv), "-c", "machine", "-c", "speed", "--save-categories", str(cats)])
    assert r.exit_code == 0, r.stderr
    header = r.stdout.splitlines()[0]
    assert header == ("id,machine_fan,machine_pump,machine_valve,speed_01,speed_1,speed_2,speed_3")
    assert r.stdout.splitlines()[1] == "a,1,0,0,0,1,0,0"
    assert "True" not in r.stdout and "False" not in r.stdout
    doc = json.loads(cats.read_text())
    assert doc["format"] == "aekit-categories" and doc["version"] == 1
    assert doc["columns"]["machine"] == {"categories": ["fan", "pump", "valve"],
                                         "infrequent": [], "dummy_na": False}
    assert list(doc["columns"]) == ["machine", "speed"]

    # Unknown 'slider': an error by default, naming it ...
    r = run([str(test_csv), "--categories", str(cats)])
    one_line_error(r, "'slider'", "--handle-unknown: column 'machine'", "'ignore' encodes them as all zeros")
    # ... or all zeros with a count on stderr, and the very same columns.
    r = run([str(test_csv), "--categories", str(cats), "--handle-unknown", "ignore"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == header
    assert r.stdout.splitlines()[2] == "y,0,0,0,0,1,0,0"
    assert "1 row(s)" in r.stderr and "machine" in r.stderr
    # -c with --categories picks saved columns.
    r = run([str(test_csv), "--categories", str(cats), "-c", "speed"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == "id,machine,speed_01,speed_1,speed_2,speed_3"
    r = run([str(test_csv), "--categories", str(cats), "-c", "id"])
    one_line_error(r, "'id'", "not in")


def test_keep_original_stdin_and_output_file(train_csv, tmp_path):
    out = tmp_path / "o.csv"
    r = run(["-", "-c", "machine", "--keep-original", "-o", str(out), "-q"],
            input=train_csv.read_text())
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    df = frame(out.read_text())
    assert list(df.columns) == ["id", "machine", "speed", "machine_fan", "machine_pump", "machine_valve"]
    assert df["speed"].tolist() == ["1", "2", "1", "3", "01"]  # other columns kept verbatim


def test_dummy_na_from_the_command(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("id,c\na,x\nb,\nc,y\n")
    one_line_error(run([str(p), "-c", "c"]), "--dummy-na: column 'c'", "data row(s) 2")
    r = run([str(p), "-c", "c", "--dummy-na"])
    assert r.exit_code == 0
    assert r.stdout == "id,c_x,c_y,c_nan\na,1,0,0\nb,0,0,1\nc,0,1,0\n"


def test_cardinality_guard_from_the_command(tmp_path):
    p = tmp_path / "u.csv"
    p.write_text("id,user\n" + "".join(f"r{i},u{i % 60}\n" for i in range(120)) + "r999,u0\n")
    one_line_error(run([str(p), "-c", "user"]), "--max-categories: column 'user' has 60 categories, more than 50", "embedding")
    r = run([str(p), "-c", "user", "--max-categories", "60"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()[0].split(",")) == 61
    r = run([str(p), "-c", "user", "--min-frequency", "3"])
    assert r.exit_code == 0
    assert r.stdout.splitlines()[0] == "id,user_u0,user_infrequent"


@pytest.mark.parametrize("make,args,words", [
    (lambda d: (d / "x.csv").write_text("id,a\n1,2\n"), ["-c", "colour"], ["'colour' not found", "id, a"]),
    (lambda d: (d / "x.csv").write_text(""), ["-c", "a"], ["empty CSV"]),
    (lambda d: (d / "x.csv").write_bytes(b"\xff\xfe\x00id"), ["-c", "a"], ["not UTF-8"]),
    (lambda d: (d / "x.csv").write_text('id,a\n"1,2\n'), ["-c", "a"], ["not a valid CSV"]),
    (lambda d: (d / "x.csv").write_text("id,a\n"), ["-c", "a"], ["no data rows"]),
    (lambda d: (d / "x.csv").write_text("id,a\n1,2\n"), [], ["-c/--column"]),
    (lambda d: (d / "x.csv").write_text("id,a,a_2\n1,2,3\n"), ["-c", "a"], ["a_2", "collide"]),
])
def test_errors(tmp_path, make, args, words):
    make(tmp_path)
    out = tmp_path / "out.csv"
    one_line_error(run([str(tmp_path / "x.csv"), "-o", str(out), *args]), *words)
    assert not out.exists()


def test_missing_file_and_categories_file(tmp_path, train_csv):
    one_line_error(run([str(tmp_path / "absent.csv"), "-c", "a"]), "no such file")
    one_line_error(run([str(train_csv), "--categories", str(tmp_path / "nope.json")]), "no such file")


def test_installed_executable(tmp_path, train_csv):
    p = subprocess.run(f"cat '{train_csv}' | '{BIN / 'ae-onehot'}' - -c machine | head -2",
                       shell=True, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0
    assert p.stdout == "id,speed,machine_fan,machine_pump,machine_valve\na,1,1,0,0\n"
    p = subprocess.run([str(BIN / "ae-onehot"), str(train_csv), "-c", "nope"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines()[-1].startswith("ae-onehot: error: column(s) 'nope' not found")
