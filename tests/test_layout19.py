"""Issue 19, item 3: DCASE 2021-2025 file names (ae-labels), ae-split on them, and
ae-synth --layout dcase2023 (sections, source and target domains)."""

from __future__ import annotations

import hashlib
import io
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aekit.data import idlabels
from aekit.audio import synth
from conftest import exe

# Real DCASE file names (without extension), one year after another: development set train
# and test, evaluation set test (no label; from 2022 on no domain either).
YEAR_IDS = [
    # 2021: no attributes in the name
    ("fan/train/section_00_source_train_normal_0000",
     ["fan", "00", "fan_section_00", "source", "train", "normal", "0", "0000", ""]),
    ("fan/test/section_00_target_test_anomaly_0003",
     ["fan", "00", "fan_section_00", "target", "test", "anomaly", "1", "0003", ""]),
    ("pump/test/section_03_source_test_0000",
     ["pump", "03", "pump_section_03", "source", "test", "", "", "0000", ""]),
    # 2022: attributes as key_value pairs (f-n_A) or a single word
    ("fan/train/section_01_source_train_normal_0000_f-n_A",
     ["fan", "01", "fan_section_01", "source", "train", "normal", "0", "0000", "f-n_A"]),
    ("fan/test/section_01_target_test_normal_0007_f-n_B",
     ["fan", "01", "fan_section_01", "target", "test", "normal", "0", "0007", "f-n_B"]),
    ("valve/test/section_04_0012",
     ["valve", "04", "valve_section_04", "", "test", "", "", "0012", ""]),
    # 2023-2025: several pairs, noAttribute, eval test files
    ("bearing/train/section_00_source_train_normal_0001_vel_12_loc_A",
     ["bearing", "00", "bearing_section_00", "source", "train", "normal", "0", "0001",
      "vel_12_loc_A"]),
    ("bearing/test/section_00_target_test_anomaly_0001_vel_6_loc_B",
     ["bearing", "00", "bearing_section_00", "target", "test", "anomaly", "1", "0001",
      "vel_6_loc_B"]),
    ("slider/train/section_00_target_train_normal_0009_noAttribute",
     ["slider", "00", "slider_section_00", "target", "train", "normal", "0", "0009",
      "noAttribute"]),
    ("dev_data/ToyCar/test/section_00_source_test_normal_0049_car_A1_spd_28V_mic_1",
     ["ToyCar", "00", "ToyCar_section_00", "source", "test", "normal", "0", "0049",
      "car_A1_spd_28V_mic_1"]),
    ("eval_data/bearing/test/section_00_0000",
     ["bearing", "00", "bearing_section_00", "", "test", "", "", "0000", ""]),
]
BASE_COLUMNS = ["machine_type", "section", "machine", "domain", "split", "label", "anomaly",
                "clip", "attributes"]


@pytest.mark.parametrize("preset", ["dcase2021", "dcase2022", "dcase2023", "dcase2024",
                                    "dcase2025"])
def test_every_year_name_parses_to_the_same_exact_columns(preset):
    ids = [i for i, _ in YEAR_IDS]
    table = idlabels.label_ids(ids, idlabels.parser_for(preset=preset)).table
    # f-n (2022), vel and loc (2023) recur; car, spd, mic occur once and stay in attributes
    assert list(table.columns) == ["id", *BASE_COLUMNS, "f-n", "vel", "loc"]
    for (id_, values), (_, row) in zip(YEAR_IDS, table.iterrows()):
        assert list(row[BASE_COLUMNS]) == values, id_
    assert list(table["f-n"]) == ["", "", "", "A", "B", "", "", "", "", "", ""]
    assert list(table["vel"]) == ["", "", "", "", "", "", "12", "6", "", "", ""]
    assert list(table["loc"]) == ["", "", "", "", "", "", "A", "B", "", "", ""]


def test_ae_labels_takes_the_year_names_and_ae_split_uses_their_split(tmp_path):
    ids = [i for i, _ in YEAR_IDS if "/train/" in i or "_test_" in i and "_0000" not in i]
    (tmp_path / "ids.csv").write_text("id\n" + "\n".join(ids) + "\n")
    p = subprocess.run([exe("ae-labels"), "ids.csv", "--preset", "dcase2023", "-o", "labels.csv",
                        "-q"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0 and p.stderr == ""
    labels = pd.read_csv(tmp_path / "labels.csv", dtype=str, keep_default_na=False)
    assert list(labels["split"]) == ["train" if "/train/" in i else "test" for i in ids]
    p = subprocess.run([exe("ae-split"), "ids.csv", "--labels", "labels.csv", "--split-column",
                        "split", "--folds", "2", "-q"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = pd.read_csv(io.StringIO(p.stdout), dtype=str, keep_default_na=False)
    assert list(out["id"]) == ids
    assert list(out["split"]) == list(labels["split"])
    assert sorted(out.loc[out["split"] == "train", "fold"]) == ["0", "0", "1", "1"]
    assert set(out.loc[out["split"] == "test", "fold"]) == {""}
    assert list(out["domain"]) == list(labels["domain"])


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0"
                     + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


# Computed with the code before --layout dcase2023 existed (commit 54bbe44).
BEFORE = {"default": "d98636914fb53f48dabdb1feb801e34b3a94dcbcdd7a0e887d0a30dc531c8315",
          "dcase2020": "4002a5bdd0d7fe58d570346abfded6ab612559e16d47ab579acea8646ce4ba15"}


@pytest.mark.parametrize("layout", ["default", "dcase2020"])
def test_older_layouts_write_the_same_bytes_as_before(tmp_path, layout):
    synth.generate(tmp_path / layout, n_per_machine=3, machine_types=("fan", "slider"),
                   ids_per_type=2, duration=0.1, layout=layout)
    assert _tree_hash(tmp_path / layout) == BEFORE[layout]


def test_dcase2023_counts_follow_the_dcase_ratio():
    # DCASE's development set per section: 990 source + 10 target train; 50 + 50 per domain test
    assert synth._dcase2023_counts(1050, 50) == {
        ("source", "train", "normal"): 990, ("target", "train", "normal"): 10,
        ("source", "test", "normal"): 25, ("target", "test", "normal"): 25,
        ("source", "test", "anomaly"): 25, ("target", "test", "anomaly"): 25}
    # scaled down: still one target clip for training, a source clip always left
    assert synth._dcase2023_counts(20, 5)[("target", "train", "normal")] == 1
    assert synth._dcase2023_counts(20, 5)[("source", "train", "normal")] == 14
    assert synth._dcase2023_counts(1, 0) == {
        ("source", "train", "normal"): 1, ("target", "train", "normal"): 0,
        ("source", "test", "normal"): 0, ("target", "test", "normal"): 0,
        ("source", "test", "anomaly"): 0, ("target", "test", "anomaly"): 0}


def test_ae_synth_dcase2023_layout_names_labels_and_domains(tmp_path):
    out = tmp_path / "d23"
    p = subprocess.run([exe("ae-synth"), str(out), "--layout", "dcase2023", "--machine-types",
                        "fan,valve", "--ids-per-type", "2", "--clips-per-machine", "10",
                        "--duration", "0.1", "-q"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == ""
    assert (out / synth.MARKER_NAME).is_file()
    labels = pd.read_csv(out / "labels.csv", dtype=str, keep_default_na=False)
    assert tuple(labels.columns) == synth.DCASE2023_LABEL_COLUMNS
    files = sorted(p.relative_to(out).with_suffix("").as_posix() for p in out.rglob("*.wav"))
    assert files == sorted(labels["id"])
    # per section, 10 clips, 2 anomalous: 5 source + 1 target train, 1 + 1 normal and
    # 1 + 1 anomalous test clips
    fan0 = labels[labels["machine"] == "fan_section_00"]
    spd = fan0.loc[fan0["domain"] == "target", "spd"].iloc[0]
    assert 70 <= int(spd) <= 80 or 125 <= int(spd) <= 140
    assert list(fan0["id"]) == [
        *(f"fan/train/section_00_source_train_normal_{k:04d}_spd_100" for k in range(5)),
        f"fan/train/section_00_target_train_normal_0000_spd_{spd}",
        "fan/test/section_00_source_test_normal_0000_spd_100",
        f"fan/test/section_00_target_test_normal_0000_spd_{spd}",
        "fan/test/section_00_source_test_anomaly_0000_spd_100",
        f"fan/test/section_00_target_test_anomaly_0000_spd_{spd}"]
    assert list(fan0["anomaly"]) == ["0"] * 8 + ["1", "1"]
    assert list(fan0["anomaly_kind"].iloc[:8]) == ["none"] * 8
    assert "none" not in set(fan0["anomaly_kind"].iloc[8:])
    # what ae-labels parses from the ids is what ae-synth wrote
    parsed = idlabels.label_ids(list(labels["id"]), idlabels.parser_for(preset="dcase2023"))
    cols = list(parsed.table.columns)
    assert cols == list(synth.DCASE2023_LABEL_COLUMNS[:11])
    pd.testing.assert_frame_equal(parsed.table.astype(str), labels[cols])
    # anomalies in both domains, normal test clips in both, all sections present
    test = labels[labels["split"] == "test"]
    assert sorted(set(zip(test["domain"], test["anomaly"]))) == [
        ("source", "0"), ("source", "1"), ("target", "0"), ("target", "1")]
    assert sorted(set(labels["machine"])) == ["fan_section_00", "fan_section_01",
                                              "valve_section_00", "valve_section_01"]
    # source clips are the default layout's clips with those numbers
    default = tmp_path / "default"
    synth.generate(default, n_per_machine=10, machine_types=("fan",), ids_per_type=1,
                   duration=0.1)
    assert ((out / "fan/train/section_00_source_train_normal_0003_spd_100.wav").read_bytes()
            == (default / "fan/id_00/normal_0003.wav").read_bytes())


def test_target_domain_runs_at_another_speed():
    m = synth.make_machine(0, "fan", 0)
    speed = synth.target_speed(0, "fan", 0)
    assert speed == synth.target_speed(0, "fan", 0) and (0.7 <= speed <= 0.8 or 1.25 <= speed <= 1.4)

    def peak_hz(audio):
        spec = np.abs(np.fft.rfft(audio[:, 0].astype(np.float64)))
        spec[:int(20 * len(audio) / m.sample_rate)] = 0  # below 20 Hz
        return np.argmax(spec) * m.sample_rate / len(audio)

    source = synth.render_clip(m, 2.0, rng=np.random.default_rng(5))
    target = synth.render_clip(m, 2.0, rng=np.random.default_rng(5), speed=speed)
    assert peak_hz(target) / peak_hz(source) == pytest.approx(speed, rel=0.02)
    with pytest.raises(synth.InputError, match="speed"):
        synth.render_clip(m, 0.1, speed=float("nan"))


def test_a_later_year_name_is_named_as_asked_in_errors():
    with pytest.raises(idlabels.InputError, match=r"none of the 1 ids matches preset dcase2024 "):
        idlabels.label_ids(["fan/train/normal_id_00_00000000"],
                           idlabels.parser_for(preset="dcase2024"))


@pytest.mark.slow
def test_dcase_example_on_the_dcase2023_layout(tmp_path, env_bin):
    """examples/dcase LAYOUT=dcase2023 without DATA: ae-synth --layout dcase2023, labels by
    ae-labels --preset dcase2023, the folders' split; a row per section whose AUC is
    scikit-learn's on the per-clip scores."""
    from sklearn.metrics import roc_auc_score

    w = tmp_path / "work"
    tiny = "--hidden 16 --latent 4 --epochs 1 --batch-size 8"
    p = subprocess.run(
        ["make", f"W={w}", "LAYOUT=dcase2023", "TYPES=fan", "IDS=2", "CLIPS=8", "DURATION=1",
         "FOLDS=2", "JOBS=1", "ARCHS=frames", "FEATURE_OPTS=--preset dcase2020 --num-samples 16000",
         f"OPTS_frames={tiny}"], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[1] / "examples" / "dcase", env=env_bin)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(p.relative_to(w / "audio").as_posix() for p in (w / "audio").rglob("*.wav"))[0] \
        == "fan/test/section_00_source_test_anomaly_0000_spd_100.wav"
    labels = pd.read_csv(w / "labels.csv", dtype=str, keep_default_na=False)
    assert list(labels.columns[:10]) == ["id", *BASE_COLUMNS]
    splits = pd.read_csv(w / "splits.csv", dtype=str, keep_default_na=False)
    assert list(splits["split"]) == list(labels["split"])  # the folders decide the test set
    rows = [[c.strip().strip("*") for c in r.strip("|").split("|")]
            for r in (w / "table.md").read_text().splitlines()]
    # ae-eval --protocol dcase2023, both scorers, one table by ae-table
    assert rows[0] == ["machine type", "section"] + [
        f"frames-{sc} {c}" for sc in ("mse", "mahalanobis")
        for c in ("AUC (source)", "AUC (target)", "pAUC", "official score")]
    rows = rows[2:]
    assert [r[:2] for r in rows] == [["fan", "00"], ["fan", "01"], ["fan", "mean"],
                                     ["all types", "arithmetic mean"],
                                     ["all types", "harmonic mean"],
                                     ["all types", "official score"]]
    for j, score in enumerate(("mse", "mahalanobis")):
        s = pd.read_csv(w / "reports" / f"frames-{score}.fan.scores.csv", dtype=str)
        assert sorted(set(s["domain"])) == ["source", "target"] and set(s["split"]) == {"test"}
        for i, sec in enumerate(["00", "01"]):
            g = s[s["machine"] == f"fan_section_{sec}"]
            assert len(g) == 4
            y, v = g["anomaly"].astype(int), g[score].astype(float)
            src = (g["domain"] == "source") | (y == 1)  # the source normals, every anomaly
            assert float(rows[i][2 + 4 * j]) == pytest.approx(roc_auc_score(y[src], v[src]),
                                                              abs=6e-4)
            assert float(rows[i][4 + 4 * j]) == pytest.approx(
                roc_auc_score(y, v, max_fpr=0.1), abs=6e-4)


def test_dcase2021_as_released_source_test_and_target_test_folders():
    p = idlabels.parser_for(preset="dcase2021")
    assert [p.parse(i)[c] for i in ["fan/source_test/section_00_source_test_normal_0000",
                                    "fan/target_test/section_01_target_test_anomaly_0003",
                                    "fan/target_test/section_03_0000"]
            for c in ("section", "domain", "split", "anomaly")] == [
        "00", "source", "test", "0", "01", "target", "test", "1", "03", "target", "test", ""]
    # a folder of one domain holding a name of the other is not this layout
    assert p.parse("fan/source_test/section_00_target_test_normal_0000") is None
    assert p.parse("fan/target_train/section_00_target_test_normal_0000") is None
