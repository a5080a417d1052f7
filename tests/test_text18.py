"""Issue 18, text side: ids and label values stay text, byte for byte, through every command;
a CSV row with a wrong number of fields is refused; --where never compares a number with
text; names that are hard to list (spaces, a BOM, bytes that are not UTF-8) are handled;
user regexes and nested or huge JSON cannot hang or crash; pipes are not consumed by the
HDF5 probe; CSV on stdout is UTF-8 whatever the locale says.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from conftest import PARAMS, exe, invoke, one_error_line, write_features, write_tone

TINY = ["--hidden", "16,8", "--latent", "4", "--epochs", "1", "--batch-size", "12", "-q"]
MEL = ["--num-samples", "2304", "--n-mels", "4", "-j", "1", "-q"]


# --------------------------------------------------------------------------- text stays text

#: Real file names that pandas would read as missing values, and ids with leading zeros.
TEXT_IDS = ["NA", "null", "None", "nan", "NaN", "n/a", "00000032", "0x1", "1e3", "-0"]


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    ids = TEXT_IDS + [f"fan/id_{i:02d}_{i:08d}" for i in range(14)]  # 24 rows
    write_features(d / "f.h5", n=len(ids), ids=ids, params={**PARAMS, "f_max": 8000.0})  # MEL's
    rows = ["id,machine_id,clip,anomaly,note"]
    for k, i in enumerate(ids):
        rows.append(f"{i},{k % 2:02d},{k:08d},{int(k % 4 >= 2)},{'NA' if k % 3 == 0 else 'x'}")
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    r = invoke("train", [d / "f.h5", "-o", d / "m.safetensors", "--labels", d / "labels.csv",
                         "--where", "machine_id == 0 or note == 'NA'", *TINY])
    assert r.exit_code == 0, (r.stderr, r.exception)
    return d, ids


def test_eval_scores_keep_ids_and_label_values_byte_identical(text_data):
    """ae-eval --scores wrote machine_id 00 as 0 and clip 00000032 as 32; ids NA, null, None,
    nan broke --labels. Every value is written back exactly as it is in the label file."""
    d, ids = text_data
    r = invoke("eval", [d / "m.safetensors", d / "f.h5", "--labels", d / "labels.csv",
                        "--anomaly-column", "anomaly", "--group-by", "machine_id",
                        "--scores", d / "scores.csv", "-o", d / "report.json", "-q"])
    assert r.exit_code == 0, (r.stderr, r.exception)
    got = list(csv.DictReader(io.StringIO((d / "scores.csv").read_text())))
    want = {row["id"]: row for row in csv.DictReader(io.StringIO((d / "labels.csv").read_text()))}
    assert [g["id"] for g in got] == ids
    for g in got:
        for col in ("machine_id", "clip", "anomaly", "note"):
            assert g[col] == want[g["id"]][col], (g["id"], col, g[col])
    assert got[6]["clip"] == "00000006" and got[0]["machine_id"] == "00"
    report = json.loads((d / "report.json").read_text())
    assert sorted(report["anomaly"]["groups"]) == ["00", "01"]


def test_encode_and_eval_where_select_by_text_ids_and_NA_values(text_data):
    """A label value NA is a value (ae-split keeps it): --where note == 'NA' selects it."""
    import h5py

    d, ids = text_data
    r = invoke("encode", [d / "m.safetensors", d / "f.h5", "--labels", d / "labels.csv",
                          "--where", "note == 'NA'", "-o", d / "z.h5", "-q"])
    assert r.exit_code == 0, (r.stderr, r.exception)
    with h5py.File(d / "z.h5") as f:
        got = [v.decode() for v in f["ids"][:]]
    assert got == [i for k, i in enumerate(ids) if k % 3 == 0]
    assert got[:2] == ["NA", "nan"]


# --------------------------------------------------------------------------- field counts

@pytest.mark.parametrize("module,args", [
    ("split", ["--test-ratio", "0.5", "--folds", "2"]),
    ("onehot", ["-c", "machine", "--dummy-na"]),
    ("labels", ["--pattern", "(?P<n>[0-9]+)$"]),
])
@pytest.mark.parametrize("body,line,fields", [
    ("id,machine\nf/1,fan,\nf/2,pump,\nf/3,fan,\nf/4,pump,\n", 2, 3),  # trailing commas
    ("id,machine\nf/1,fan\nf/2,pump\nf/3\nf/4,pump\n", 4, 1),  # a missing cell
])
def test_rows_whose_field_count_differs_from_the_header_are_refused(tmp_path, module, args, body,
                                                                   line, fields):
    """With a comma at the end of every row pandas took the first column as the index, and
    these commands then used the SECOND column as ids, exit 0."""
    (tmp_path / "in.csv").write_text(body)
    r = invoke(module, [tmp_path / "in.csv", *args])
    msg = one_error_line(r, f"in.csv: line {line}: {fields} field(s), the header has 2")
    assert r.stdout == ""
    assert ("trailing comma" in msg) == (fields == 3)


def test_label_files_with_a_trailing_comma_are_refused_too(text_data, tmp_path):
    d, ids = text_data
    (tmp_path / "l.csv").write_text("id,anomaly\n" + "".join(f"{i},0,\n" for i in ids))
    r = invoke("eval", [d / "m.safetensors", d / "f.h5", "--labels", tmp_path / "l.csv",
                        "--where", "anomaly == 0", "-q"])
    one_error_line(r, "l.csv: line 2: 3 field(s), the header has 2")


def test_a_header_repeating_a_name_is_refused(tmp_path):
    """pandas renamed the second 'a' to 'a.1' silently."""
    (tmp_path / "in.csv").write_text("id,a,a\nx,1,2\n")
    r = invoke("split", [tmp_path / "in.csv", "--folds", "2"])
    one_error_line(r, "in.csv: line 1: the header repeats column name(s) 'a'")


# --------------------------------------------------------------------------- --where types

@pytest.fixture
def int_labels(tmp_path):
    (tmp_path / "l.csv").write_text("id,anomaly,machine\na,0,fan\nb,1,pump\nc,0,NA\nd,1,\n")
    from aekit.data.selection import load_labels

    return load_labels(tmp_path / "l.csv", ["a", "b", "c", "d"])


@pytest.mark.parametrize("text", ["anomaly != '1'", "not (anomaly == '1')", "anomaly not in ['1']",
                                  "anomaly == '1'", "anomaly in ['0', '1']", "anomaly < '1'"])
def test_a_number_column_compared_with_text_is_an_error(text, int_labels):
    """These selected every row (anomalies included), or none, silently."""
    from aekit.errors import InputError
    from aekit.data.selection import query_rows

    for labels in (int_labels, int_labels.assign(anomaly=[0, 1, 0, 1])):  # CSV text, or ints
        with pytest.raises(InputError) as err:
            query_rows(labels, text)
        assert "column 'anomaly' is numeric" in str(err.value), str(err.value)


@pytest.mark.parametrize("text", ["machine == 1", "machine != 0", "machine in [1, 'fan']",
                                  "machine == anomaly"])
def test_a_text_column_compared_with_a_number_is_an_error(text, int_labels):
    from aekit.errors import InputError
    from aekit.data.selection import query_rows

    with pytest.raises(InputError, match="column 'machine' holds text"):
        query_rows(int_labels, text)


def test_where_on_text_labels_selects_the_right_rows(int_labels):
    from aekit.data.selection import query_rows

    for text, want in [("anomaly == 1", [0, 1, 0, 1]), ("anomaly != 1", [1, 0, 1, 0]),
                       ("not (anomaly == 1)", [1, 0, 1, 0]), ("anomaly not in [1]", [1, 0, 1, 0]),
                       ("machine == 'NA'", [0, 0, 1, 0]), ("machine == None", [0, 0, 0, 1]),
                       ("machine != 'fan'", [0, 1, 1, 1]), ("anomaly >= 0.5", [0, 1, 0, 1])]:
        np.testing.assert_array_equal(query_rows(int_labels, text), np.array(want, dtype=bool),
                                      err_msg=text)


def test_column_type_comes_from_the_whole_file_not_the_selected_rows(tmp_path):
    """'x' only on a row that is not selected still makes the column text for every run."""
    from aekit.errors import InputError
    from aekit.data.selection import load_labels, query_rows

    (tmp_path / "l.csv").write_text("id,v\na,1\nb,2\nc,x\n")
    labels = load_labels(tmp_path / "l.csv", ["a", "b"])
    np.testing.assert_array_equal(query_rows(labels, "v == '1'"), [True, False])
    with pytest.raises(InputError, match="column 'v' holds text"):
        query_rows(labels, "v == 1")


def test_split_test_where_uses_the_same_rules(tmp_path):
    (tmp_path / "in.csv").write_text("id,anomaly\n" + "".join(f"c{i},{i % 2}\n" for i in range(10)))
    r = invoke("split", [tmp_path / "in.csv", "--test-where", "anomaly != '1'", "--folds", "2"])
    one_error_line(r, "--test-where", "column 'anomaly' is numeric")


# --------------------------------------------------------------------------- names

def test_stdin_lists_keep_spaces_and_drop_a_bom(tmp_path):
    from aekit.audio.decode import discover

    for name in (" lead.wav", "trail.wav ", "b.wav"):
        (tmp_path / name).write_bytes(b"")  # discover only finds them
    lines = [f"\ufeff{tmp_path}/ lead.wav\n", f"{tmp_path}/trail.wav \r\n", "\n",
             f"{tmp_path}/b.wav"]
    assert [p.name for p in discover(["-"], lines)] == [" lead.wav", "trail.wav ", "b.wav"]


def test_a_name_that_is_not_utf8_is_a_failed_input_written_escaped(text_data, tmp_path):
    """ae-featurize and ae-score crashed writing the row of such a file (a traceback)."""
    import h5py

    model = text_data[0] / "m.safetensors"  # its features have the parameters of MEL
    d = tmp_path / "a"
    for i in range(6):
        write_tone(d / f"g{i}.wav", seconds=0.2, channels=2, freq=300 + 40 * i, seed=i)
    try:
        os.rename(d / "g5.wav", os.fsdecode(bytes(d) + b"/bad\xff.wav"))
    except OSError:  # a file system that only takes UTF-8 names (macOS)
        pytest.skip("this file system refuses names that are not UTF-8")
    r = invoke("featurize", [d, "-o", tmp_path / "f.h5", "--max-fail-frac", "0.5", *MEL])
    assert r.exit_code == 0, (r.stderr, r.exception)
    with h5py.File(tmp_path / "f.h5") as f:
        assert [p.decode() for p in f["failed/paths"][:]] == [f"{d}/bad\\xff.wav"]
        assert "not valid UTF-8" in f["failed/reasons"][0].decode()
        assert [i.decode() for i in f["ids"][:]] == [f"g{i}" for i in range(5)]
    r = invoke("score", [model, d, "-o", tmp_path / "s.csv", "-j", "1",
                         "--max-fail-frac", "0.5", "-q"])
    assert r.exit_code == 0, (r.stderr, r.exception)
    raw = (tmp_path / "s.csv").read_bytes()
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
    assert rows[0][-1] == "scorer"  # the score in use, on every row
    assert rows[1][:3] == ["bad\\xff", f"{d}/bad\\xff.wav", ""] and len(rows[1]) == 4
    assert [row[0] for row in rows[2:]] == [f"g{i}" for i in range(5)]


def test_a_bom_before_a_csv_header_is_dropped(tmp_path):
    from aekit.system.textinput import read_csv

    (tmp_path / "b.csv").write_bytes(b"\xef\xbb\xbfid,a\nx,01\n")
    df = read_csv(tmp_path / "b.csv")
    assert list(df.columns) == ["id", "a"] and df["a"].tolist() == ["01"]


# --------------------------------------------------------------------------- regex, JSON

def test_a_backtracking_pattern_is_stopped_in_time(monkeypatch):
    from aekit.data import idlabels
    from aekit.errors import InputError

    monkeypatch.setattr(idlabels, "MATCH_TIMEOUT", 0.05)
    parser = idlabels.compile_pattern(r"(?P<x>(a|aa)+)$")
    t = time.monotonic()
    with pytest.raises(InputError, match=r"took more than 0.05 s on the id 'a{34}!'"):
        idlabels.label_ids(["fine", "a" * 34 + "!"], parser)
    assert time.monotonic() - t < 2
    assert idlabels.label_ids(["a1"], idlabels.compile_pattern(r"(?P<x>\d)")).table["x"].tolist() == ["1"]
    monkeypatch.setattr(idlabels, "TOTAL_MATCH_TIMEOUT", 0.0)
    with pytest.raises(InputError, match="matching 1 ids took more than 0 s"):
        idlabels.label_ids(["fine"], idlabels.compile_pattern(r"(?P<x>i)"))


def test_the_issue_pattern_ends_quickly_in_ae_labels(tmp_path):
    """'(?P<x>(a+)+)$' ran over 40 s on one 35-character id."""
    (tmp_path / "ids.csv").write_text("id\n" + "a" * 34 + "!\n")
    t = time.monotonic()
    p = subprocess.run([exe("ae-labels"), "ids.csv", "--pattern", "(?P<x>(a+)+)$"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t < 15
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "none of the 1 ids matches" in p.stderr


def test_deeply_nested_json_is_one_line(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "in.csv").write_text("id,c\na,x\n")
    r = invoke("onehot", [tmp_path / "in.csv", "-c", "c", "--categories", tmp_path / "deep.json"])
    one_error_line(r, "deep.json: JSON nested too deeply")
    r = invoke("eval", ["--summarize", tmp_path / "deep.json"])
    one_error_line(r, "deep.json: JSON nested too deeply")


def test_a_hundred_thousand_categories_are_linear():
    """The collision check counted every name in the list of names: 162 s for 100,000."""
    from aekit.data import onehot

    n = 100_000
    cats = {"c": onehot.ColumnCategories([f"v{i:06d}" for i in range(n)])}
    df = pd.DataFrame({"id": ["a", "b"], "c": ["v000001", "v099999"]}, dtype=object)
    t = time.monotonic()
    out, _ = onehot.transform(df, cats)
    assert time.monotonic() - t < 10
    assert out.shape == (2, 1 + n) and out["c_v099999"].tolist() == [0, 1]
    dup = {"c": onehot.ColumnCategories([f"v{i}" for i in range(n)] + ["v7"])}
    with pytest.raises(Exception, match="collide"):
        onehot.transform(df, dup)


# --------------------------------------------------------------------------- pipes, encoding

def test_process_substitution_is_not_consumed_by_the_hdf5_probe(tmp_path):
    (tmp_path / "ids.csv").write_text("id\nfan/train/normal_id_00_00000032\n")
    p = subprocess.run(["bash", "-c", f"'{exe('ae-labels')}' <(cat ids.csv) --preset dcase2020"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[1] == "fan/train/normal_id_00_00000032,fan,00,fan_id_00,train,normal,0,00000032"


def test_csv_on_stdout_is_utf8_under_an_ascii_locale(tmp_path):
    (tmp_path / "in.csv").write_text("id,größe\nä/1,1\nb,2\n", encoding="utf-8")
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"}
    p = subprocess.run([exe("ae-onehot"), "in.csv", "-c", "größe"], cwd=tmp_path,
                       capture_output=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr.decode("utf-8", "replace")
    assert p.stdout.decode("utf-8") == "id,größe_1,größe_2\nä/1,1,0\nb,0,1\n"
