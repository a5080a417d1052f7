"""aekit.data.idlabels and ae-labels: label columns parsed from ids (DCASE presets, --pattern).

Expected rows are written out by hand from the DCASE file-name layouts; the end-to-end test
compares with the labels ae-synth knows when it writes the files.
"""

from __future__ import annotations

import io
import subprocess

import h5py
import pandas as pd
import pytest

from aekit.data import idlabels
from aekit.data import selection
from aekit.cmds.labels import cli
from aekit.errors import InputError
from conftest import exe, invoke


def run(args, input=None):
    return invoke(cli, args, input=input)


def csv_of(ids, header="id"):
    return header + "\n" + "".join(f"{i}\n" for i in ids)


def parse(ids, preset=None, pattern=None, allow_unmatched=False):
    parser = idlabels.parser_for(preset=preset, pattern=pattern)
    return idlabels.label_ids(ids, parser, allow_unmatched=allow_unmatched)


def rows(table):
    return [tuple(r) for r in table.itertuples(index=False)]


# --------------------------------------------------------------------------- presets

def test_dcase2020_columns_and_values():
    ids = ["fan/train/normal_id_00_00000000",
           "dev_data/pump/test/anomaly_id_04_00000123",      # featurized from above dev_data
           "/abs/eval_data/valve/test/normal_id_06_00000007",
           "ToyCar/test/id_05_00000000"]                     # evaluation set: no label
    out = parse(ids, preset="dcase2020")
    assert list(out.table.columns) == ["id", "machine_type", "machine_id", "machine", "split",
                                       "label", "anomaly", "clip"]
    assert rows(out.table) == [
        ("fan/train/normal_id_00_00000000", "fan", "00", "fan_id_00", "train", "normal", "0", "00000000"),
        ("dev_data/pump/test/anomaly_id_04_00000123", "pump", "04", "pump_id_04", "test", "anomaly", "1",
         "00000123"),
        ("/abs/eval_data/valve/test/normal_id_06_00000007", "valve", "06", "valve_id_06", "test", "normal",
         "0", "00000007"),
        ("ToyCar/test/id_05_00000000", "ToyCar", "05", "ToyCar_id_05", "test", "", "", "00000000"),
    ]
    assert out.unmatched == [] and out.unlabelled == 1


@pytest.mark.parametrize("bad", [
    "train/normal_id_00_00000000",              # no machine type: featurized from the type's directory
    "fan/train/id_00_00000000",                 # a train file always has a label
    "fan/val/normal_id_00_00000000",            # split is train or test
    "fan/train/abnormal_id_00_00000000",        # label is normal or anomaly
    "fan/train/normal_id_00_00000000/extra",    # anchored at the end
    "fan/train/normal_id_00_00000000.wav",
    "fan/train/normal_id_00_",
    "fan/train/section_00_source_train_normal_0000",
])
def test_dcase2020_refuses_other_ids(bad):
    assert idlabels.PRESETS["dcase2020"].parse(bad) is None


def test_dcase2021_columns_values_and_attributes():
    ids = ["bearing/train/section_00_source_train_normal_0000_vel_6_loc_A",
           "bearing/test/section_01_target_test_anomaly_0003_vel_8_loc_B",
           "dev/fan/train/section_02_target_train_normal_0012_strength_1_ambient",  # odd: no pairs
           "fan/test/section_03_source_test_0001",                 # 2021 evaluation set: no label
           "fan/test/section_03_0002",                             # 2022+: no domain either
           "ToyCar/train/section_00_source_train_normal_0001_split_1_mic_2",
           "ToyCar/train/section_00_source_train_normal_0002_split_2_mic_1_only_once",
           "ToyCar/train/section_00_source_train_normal_0003_noAttribute"]
    out = parse(ids, preset="dcase2021")
    assert list(out.table.columns) == [
        "id", "machine_type", "section", "machine", "domain", "split", "label", "anomaly", "clip",
        "attributes", "vel", "loc", "attr_split", "mic"]  # 'only' appears once: no column
    got = {r[0]: r[1:] for r in rows(out.table)}
    assert got[ids[0]] == ("bearing", "00", "bearing_section_00", "source", "train", "normal", "0",
                           "0000", "vel_6_loc_A", "6", "A", "", "")
    assert got[ids[1]] == ("bearing", "01", "bearing_section_01", "target", "test", "anomaly", "1",
                           "0003", "vel_8_loc_B", "8", "B", "", "")
    assert got[ids[2]] == ("fan", "02", "fan_section_02", "target", "train", "normal", "0", "0012",
                           "strength_1_ambient", "", "", "", "")
    assert got[ids[3]] == ("fan", "03", "fan_section_03", "source", "test", "", "", "0001", "", "",
                           "", "", "")
    assert got[ids[4]] == ("fan", "03", "fan_section_03", "", "test", "", "", "0002", "", "", "", "", "")
    assert got[ids[5]][-4:] == ("", "", "1", "2")
    assert got[ids[6]][-5:] == ("split_2_mic_1_only_once", "", "", "2", "1")
    assert got[ids[7]][-5:] == ("noAttribute", "", "", "", "")
    assert out.unlabelled == 2


@pytest.mark.parametrize("bad", [
    "fan/train/section_00_source_test_normal_0000",   # the name's split differs from the folder's
    "fan/train/section_00_source_train_0000",         # train without a label
    "fan/train/section_00_0000",                      # train without domain and label
    "fan/test/section_00_other_test_normal_0000",     # domain is source or target
    "section_00_source_train_normal_0000",
    "fan/train/normal_id_00_00000000",
])
def test_dcase2021_refuses_other_ids(bad):
    assert idlabels.PRESETS["dcase2021"].parse(bad) is None


def test_where_anomaly_selects_normal_rows(tmp_path):
    """The anomaly column is what --where 'anomaly == 0' needs, read the way ae-train reads."""
    ids = ["fan/train/normal_id_00_00000000", "fan/test/anomaly_id_00_00000000",
           "fan/test/normal_id_00_00000000", "fan/test/id_01_00000000"]
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as fh:
        idlabels.write_table(parse(ids, preset="dcase2020").table, fh)
    labels = selection.load_labels(path, ids)
    assert selection.query_rows(labels, "anomaly == 0").tolist() == [True, False, True, False]
    assert selection.query_rows(labels, "anomaly == 1").tolist() == [False, True, False, False]


# --------------------------------------------------------------------------- --pattern

def test_pattern_groups_become_columns_in_order():
    ids = ["-6_dB_fan/fan/id_00/abnormal/00000001", "0_dB_pump/pump/id_02/normal/00000010"]
    out = parse(ids, pattern=r"(?P<snr>-?\d+)_dB_[^/]+/(?P<machine_type>[^/]+)/id_(?P<machine_id>\d+)/"
                             r"(?P<label>[^/]+)/(?P<clip>\d+)$")
    assert list(out.table.columns) == ["id", "snr", "machine_type", "machine_id", "label", "clip"]
    assert rows(out.table) == [(ids[0], "-6", "fan", "00", "abnormal", "00000001"),
                               (ids[1], "0", "pump", "02", "normal", "00000010")]


def test_pattern_optional_group_is_empty():
    out = parse(["a/x_1", "a/x"], pattern=r"(?P<name>[a-z]+)(?:_(?P<n>\d+))?$")
    assert rows(out.table) == [("a/x_1", "x", "1"), ("a/x", "x", "")]


@pytest.mark.parametrize("pattern, message", [
    ("(?P<a>[", "not a valid regular expression"),
    ("(a)(b)", "no named groups"),
    ("(?P<id>.*)", "cannot be named 'id'"),
    ("(?P<a>x)" + "y" * idlabels.MAX_PATTERN_LENGTH, f"at most {idlabels.MAX_PATTERN_LENGTH}"),
])
def test_bad_patterns_are_input_errors(pattern, message):
    with pytest.raises(InputError, match=message):
        idlabels.compile_pattern(pattern)


def test_unmatched_ids():
    ids = [f"fan/train/normal_id_00_{k:08d}" for k in range(3)] + [f"junk{k}" for k in range(5)]
    with pytest.raises(InputError, match=r"5 of 8 ids do not match preset dcase2020.*'junk0', 'junk1', "
                                         r"'junk2' \(and 2 more\); when allowed, they are kept") as err:
        parse(ids, preset="dcase2020")
    assert err.value.param == "allow_unmatched"
    out = parse(ids, preset="dcase2020", allow_unmatched=True)
    assert out.unmatched == [f"junk{k}" for k in range(5)]
    assert rows(out.table)[3] == ("junk0", "", "", "", "", "", "", "")
    assert rows(out.table)[0][1:] == ("fan", "00", "fan_id_00", "train", "normal", "0", "00000000")
    with pytest.raises(InputError, match="none of the 2 ids matches"):
        parse(["a", "b"], preset="dcase2020", allow_unmatched=True)


# --------------------------------------------------------------------------- the command

IDS = ["fan/train/normal_id_00_00000000", "fan/test/anomaly_id_01_00000002"]
EXPECTED = ("id,machine_type,machine_id,machine,split,label,anomaly,clip\n"
            "fan/train/normal_id_00_00000000,fan,00,fan_id_00,train,normal,0,00000000\n"
            "fan/test/anomaly_id_01_00000002,fan,01,fan_id_01,test,anomaly,1,00000002\n")


def test_cli_stdin_to_stdout():
    r = run(["-", "--preset", "dcase2020"], input=csv_of(IDS))
    assert r.exit_code == 0, r.stderr
    assert r.stdout == EXPECTED


def test_cli_csv_file_to_file(tmp_path):
    (tmp_path / "ids.csv").write_text("path,id\nx.wav,%s\ny.wav,%s\n" % tuple(IDS))
    out = tmp_path / "labels.csv"
    r = run([str(tmp_path / "ids.csv"), "--preset", "dcase2020", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    assert out.read_text() == EXPECTED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.csv", "labels.csv"]  # no temp left


def test_cli_pattern():
    r = run(["-", "--pattern", r"^(?P<who>[^/]+)/take_(?P<take>\d+)$", "-q"],
            input=csv_of(["ann/take_01", "bob/take_10"]))
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "id,who,take\nann/take_01,ann,01\nbob/take_10,bob,10\n"


def test_cli_unmatched_exit_2_and_nothing_written(tmp_path):
    out = tmp_path / "labels.csv"
    ids = IDS + ["fan/train/readme", "x/y"]
    r = run(["-", "--preset", "dcase2020", "-o", str(out)], input=csv_of(ids))
    assert r.exit_code == 2
    errors = [ln for ln in r.stderr.splitlines() if ": error: " in ln]
    assert errors == ["ae-labels: error: --allow-unmatched: 2 of 4 ids do not match preset "
                      "dcase2020 ({machine_type}/{split}/{label}_id_{machine_id}_{n}): "
                      "'fan/train/readme', 'x/y'; when allowed, they are kept with empty columns"]
    assert r.stdout == "" and list(tmp_path.iterdir()) == []
    r = run(["-", "--preset", "dcase2020", "-o", str(out), "--allow-unmatched"], input=csv_of(ids))
    assert r.exit_code == 0, r.stderr
    assert "2 of 4 ids do not match" in r.stderr
    assert out.read_text() == EXPECTED + "fan/train/readme,,,,,,,\nx/y,,,,,,,\n"


def test_cli_existing_output_is_kept_on_error(tmp_path):
    out = tmp_path / "labels.csv"
    out.write_text("precious\n")
    r = run(["-", "--preset", "dcase2020", "-o", str(out)], input=csv_of(["nothing/like/it"]))
    assert r.exit_code == 2 and "none of the 1 ids matches" in r.stderr
    assert out.read_text() == "precious\n"


def test_cli_refuses_to_overwrite_its_input(tmp_path):
    ids = tmp_path / "ids.csv"
    ids.write_text(csv_of(IDS))
    r = run([str(ids), "--preset", "dcase2020", "-o", str(tmp_path / "." / "ids.csv")])
    assert r.exit_code == 2 and "refusing to overwrite an input" in r.stderr
    assert ids.read_text() == csv_of(IDS)


@pytest.mark.parametrize("args, stdin, message", [
    (["-"], "id\na\n", "exactly one of --preset and --pattern"),
    (["-", "--preset", "dcase2020", "--pattern", "(?P<a>.)"], "id\na\n", "exactly one of"),
    (["-", "--preset", "dcase2019"], "id\na\n", "Invalid value for '--preset'"),
    (["-", "--pattern", "(?P<a>["], "id\na\n", "not a valid regular expression"),
    (["-", "--preset", "dcase2020"], "name\na\n", "column 'id' not found; columns are: name"),
    (["-", "--preset", "dcase2020"], "id\n", "<stdin>: no ids"),
    (["-", "--preset", "dcase2020"], "", "empty CSV"),
    (["-", "--preset", "dcase2020"], "id\na\n\"\"\n", "empty id in 1 row(s): data row(s) 2"),
    (["-", "--preset", "dcase2020"], csv_of(IDS + IDS[:1]), "1 id(s) appear more than once"),
    (["-", "--preset", "dcase2020", "-o", "no/such/dir/x.csv"], csv_of(IDS), "does not exist"),
])
def test_cli_bad_input_exit_2(args, stdin, message):
    r = run(args, input=stdin)
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_cli_hdf5_that_is_not_a_features_file(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1, 2]
    r = run([str(tmp_path / "other.h5"), "--preset", "dcase2020"])
    assert r.exit_code == 2
    assert "not an aekit features file" in r.stderr and r.stdout == ""


# --------------------------------------------------------------------------- end to end

def test_synth_featurize_labels_end_to_end(tmp_path, env_bin):
    """ae-synth --layout dcase2020 -> ae-featurize -> ae-labels: the labels ae-synth wrote."""
    def sh(cmd):
        p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=tmp_path, env=env_bin,
                           capture_output=True, text=True)
        assert p.returncode == 0, (cmd, p.stderr)
        return p.stdout

    sh("ae-synth data --layout dcase2020 --machine-types fan,valve --ids-per-type 2 "
       "--clips-per-machine 3 --anomaly-fraction 0.34 --duration 0.1 --format mixed -q")
    sh("ae-featurize data -o features.h5 --num-samples 1600 -j 1 -q")
    got = pd.read_csv(io.StringIO(sh("ae-labels features.h5 --preset dcase2020 -q")),
                      dtype=str, keep_default_na=False)
    truth = pd.read_csv(tmp_path / "data" / "labels.csv", dtype=str, keep_default_na=False)
    assert len(truth) == 12 and set(truth["split"]) == {"train", "test"}
    assert list(got.columns) == list(truth.columns[:len(got.columns)])
    assert truth.columns[len(got.columns):].tolist() == ["anomaly_kind", "sample_rate", "channels"]
    pd.testing.assert_frame_equal(got.sort_values("id", ignore_index=True),
                                  truth[got.columns].sort_values("id", ignore_index=True))


def test_installed_ae_labels_in_a_pipe(tmp_path):
    p = subprocess.run([exe("ae-labels"), "-", "--preset", "dcase2020", "-q"], input=csv_of(IDS),
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0 and p.stdout == EXPECTED and p.stderr == ""
    p = subprocess.run([exe("ae-labels"), "-", "--preset", "dcase2021"], input=csv_of(IDS),
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines()[-1].startswith("ae-labels: error: none of the 2 ids matches")
    assert "Traceback" not in p.stderr


def test_readme_documents_every_preset_and_its_columns():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, parser in idlabels.PRESETS.items():
        row = next(ln for ln in readme.splitlines() if ln.startswith(f"| `{name}`"))
        assert parser.template in row and f"`{', '.join(parser.columns)}" in row, name
