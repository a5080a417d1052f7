"""aekit.audio.synth and ae-synth: the demo data set generator.

Small sets only (fractions of a second per clip, a few clips per machine): the whole file
runs in a few seconds.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from aekit.audio import synth
from aekit.cmds.synth import cli
from aekit.errors import InputError
from conftest import exe

# 4 types x 3 ids x 4 clips = 48 clips of 0.25 s, one anomaly per machine.
SMALL = dict(n_per_machine=4, ids_per_type=3, anomaly_fraction=0.25, duration=0.25)


def audio_files(root: Path) -> list[Path]:
    return sorted(p for ext in ("wav", "flac") for p in root.rglob(f"*.{ext}"))


def digests(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "demo"
    labels = synth.generate(root, **SMALL)
    return root, labels


# --------------------------------------------------------------------------- layout and labels

def test_labels_csv_matches_files(small_set):
    root, labels = small_set
    on_disk = pd.read_csv(root / "labels.csv", keep_default_na=False)
    assert list(on_disk.columns) == list(synth.LABEL_COLUMNS)
    pd.testing.assert_frame_equal(on_disk, labels, check_dtype=False)
    files = audio_files(root)
    assert len(files) == len(labels) == 4 * 3 * 4
    # id = path relative to the root without extension, what ae-featurize calls the file
    assert sorted(p.relative_to(root).with_suffix("").as_posix() for p in files) == sorted(labels["id"])
    assert labels["id"].is_unique
    for row in labels.itertuples():
        mtype, mid, stem = row.id.split("/")
        assert (mtype, f"{mtype}_{mid}") == (row.machine_type, row.machine_id)
        assert stem == f"{'anomaly' if row.anomaly else 'normal'}_{stem[-4:]}"
        assert (row.anomaly_kind == "none") == (row.anomaly == 0)
        info = sf.info(str(root / f"{row.id}.wav"))
        assert (info.samplerate, info.channels, info.subtype) == (row.sample_rate, row.channels, "PCM_16")
        assert info.frames == int(np.floor(0.25 * row.sample_rate + 0.5))


def test_mixed_sample_rates_and_channels(small_set):
    _, labels = small_set
    assert set(labels["sample_rate"]) == set(synth.DEFAULT_SAMPLE_RATES)
    assert set(labels["channels"]) == {1, 2}
    per_machine = labels.groupby("machine_id")[["sample_rate", "channels"]].nunique()
    assert (per_machine == 1).all().all()       # fixed per machine
    assert labels["machine_id"].nunique() == 12
    assert set(labels["machine_type"]) == set(synth.MACHINE_TYPES)


def test_anomaly_fraction_and_kinds(small_set, tmp_path):
    _, labels = small_set
    assert (labels.groupby("machine_id")["anomaly"].sum() == 1).all()
    assert set(labels.loc[labels["anomaly"] == 1, "anomaly_kind"]) == set(synth.ANOMALY_KINDS)
    big = synth.generate(tmp_path / "a", n_per_machine=20, machine_types=("valve",), ids_per_type=1,
                         anomaly_fraction=0.2, duration=0.05)
    assert big["anomaly"].sum() == 4 and big["anomaly"].mean() == pytest.approx(0.2)
    none = synth.generate(tmp_path / "b", n_per_machine=3, machine_types=("fan",), ids_per_type=1,
                          anomaly_fraction=0.0, duration=0.05)
    assert none["anomaly"].sum() == 0 and set(none["anomaly_kind"]) == {"none"}


def test_clip_levels_are_alike(small_set):
    """An anomaly is not a level change: anomalous clips are as loud as normal ones."""
    root, labels = small_set
    rms_db = {}
    for row in labels.itertuples():
        x, _ = sf.read(str(root / f"{row.id}.wav"), dtype="float32")
        assert np.isfinite(x).all() and np.abs(x).max() < 1.0
        rms_db[row.id] = 20 * np.log10(np.sqrt(np.mean(x ** 2)))
    level = labels["id"].map(rms_db)
    assert level.between(-45, -14).all(), level.describe()
    by_label = level.groupby(labels["anomaly"]).mean()
    assert abs(by_label[1] - by_label[0]) < 4.0


# --------------------------------------------------------------------------- determinism

def test_same_parameters_same_bytes(small_set, tmp_path):
    root, _ = small_set
    again = tmp_path / "again"
    synth.generate(again, **SMALL)
    assert digests(again) == digests(root)
    # A re-run over an existing directory rewrites identical bytes.
    before = digests(again)
    synth.generate(again, **SMALL)
    assert digests(again) == before
    # Another seed is another data set.
    other = tmp_path / "other"
    synth.generate(other, **SMALL, seed=1)
    assert digests(other)["fan/id_00/normal_0000.wav"] != before["fan/id_00/normal_0000.wav"]


def test_a_clip_does_not_depend_on_the_rest_of_the_set(small_set, tmp_path):
    root, _ = small_set
    synth.generate(tmp_path, n_per_machine=1, machine_types=("slider",), ids_per_type=2,
                   anomaly_fraction=0.0, duration=0.25)
    name = "slider/id_01/normal_0000.wav"
    assert (tmp_path / name).read_bytes() == (root / name).read_bytes()


def test_global_random_state_is_untouched(tmp_path):
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    synth.generate(tmp_path, n_per_machine=2, machine_types=("pump",), ids_per_type=1, duration=0.05)
    assert np.random.random() == expected


# --------------------------------------------------------------------------- the sounds

def _profile(x: np.ndarray, sr: int) -> np.ndarray:
    """Level-free log band spectrum (mean over frames) and its variation over time."""
    x = x.mean(axis=1)
    frames = np.lib.stride_tricks.sliding_window_view(x, 512)[::256] * np.hanning(512)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    f = np.fft.rfftfreq(512, 1 / sr)
    edges = np.geomspace(50, 7800, 17)
    bands = np.stack([power[:, (f >= lo) & (f < hi)].sum(1) for lo, hi in zip(edges[:-1], edges[1:])], 1)
    db = 10 * np.log10(bands + 1e-12)
    mean = db.mean(0)
    return np.concatenate([mean - mean.mean(), db.std(0)])


def test_anomalies_stand_out_from_normals_of_their_machine():
    seed, duration, n_normal = 0, 1.0, 6
    normal_d, anomaly_d = [], []
    for mtype in synth.MACHINE_TYPES:
        for index in range(2):
            m = synth.make_machine(seed, mtype, index)
            normals = [_profile(synth.render_clip(m, duration, "none",
                                                  synth.clip_rng(seed, mtype, index, False, k)),
                                m.sample_rate) for k in range(n_normal)]
            centre = np.mean(normals, axis=0)
            for j in range(n_normal):
                rest = np.mean([v for k, v in enumerate(normals) if k != j], axis=0)
                normal_d.append(np.linalg.norm(normals[j] - rest))
            for k, kind in enumerate(synth.ANOMALY_KINDS):
                clip = synth.render_clip(m, duration, kind, synth.clip_rng(seed, mtype, index, True, k))
                anomaly_d.append(np.linalg.norm(_profile(clip, m.sample_rate) - centre))
    assert np.mean(anomaly_d) > 1.2 * np.mean(normal_d), (np.mean(anomaly_d), np.mean(normal_d))


@pytest.mark.parametrize("mtype", synth.MACHINE_TYPES)
def test_machines_of_a_type_sound_different(mtype):
    a, b = (synth.make_machine(0, mtype, i, (16000,)) for i in (0, 1))
    pa = _profile(synth.render_clip(a, 1.0, rng=synth.clip_rng(0, mtype, 0, False, 0)), 16000)
    pb = _profile(synth.render_clip(b, 1.0, rng=synth.clip_rng(0, mtype, 1, False, 0)), 16000)
    assert np.linalg.norm(pa - pb) > 3.0


def test_render_clip_shape_and_range():
    m = synth.make_machine(3, "fan", 0, (22050,))
    for kind in ("none", *synth.ANOMALY_KINDS):
        x = synth.render_clip(m, 0.5, kind, synth.clip_rng(3, "fan", 0, kind != "none", 0))
        assert x.dtype == np.float32 and x.shape == (11025, m.channels)
        assert np.isfinite(x).all() and np.abs(x).max() <= 0.98 + 1e-6


# --------------------------------------------------------------------------- dcase2020 layout

def test_dcase2020_layout_names_the_default_layouts_clips(small_set, tmp_path):
    """Same clips as the default layout, under DCASE 2020 names: normal clips 0 and 1 of a
    machine in train, normal clip 2 and anomalous clip 0 in test (SMALL: 4 clips, 1 anomalous)."""
    root, default = small_set
    out = tmp_path / "dcase"
    labels = synth.generate(out, **SMALL, layout="dcase2020")
    on_disk = pd.read_csv(out / "labels.csv", dtype=str, keep_default_na=False)
    assert list(on_disk.columns) == list(synth.DCASE2020_LABEL_COLUMNS)
    pd.testing.assert_frame_equal(on_disk, labels.astype(str))
    assert sorted(p.relative_to(out).with_suffix("").as_posix() for p in audio_files(out)) \
        == sorted(labels["id"])
    # where each DCASE file comes from in the default layout
    source = {"train/normal_id_{i}_00000000": "id_{i}/normal_0000",
              "train/normal_id_{i}_00000001": "id_{i}/normal_0001",
              "test/normal_id_{i}_00000000": "id_{i}/normal_0002",
              "test/anomaly_id_{i}_00000000": "id_{i}/anomaly_0000"}
    default = default.set_index("id")
    assert len(labels) == len(default) == 4 * 3 * len(source) == 48
    for mtype in synth.MACHINE_TYPES:
        for i in ("00", "01", "02"):
            for new, old in source.items():
                new_id, old_id = f"{mtype}/{new.format(i=i)}", f"{mtype}/{old.format(i=i)}"
                assert (out / f"{new_id}.wav").read_bytes() == (root / f"{old_id}.wav").read_bytes()
                row = labels.set_index("id").loc[new_id]
                split, stem = new.split("/")
                assert (row.machine_type, row.machine_id, row.machine, row.split, row.label, row["clip"]) \
                    == (mtype, i, f"{mtype}_id_{i}", split, stem.split("_")[0], stem[-8:])
                assert row.anomaly == int(stem.startswith("anomaly"))
                assert (row.anomaly_kind, row.sample_rate, row.channels) == tuple(
                    default.loc[old_id, ["anomaly_kind", "sample_rate", "channels"]])


def test_dcase2020_layout_counts(tmp_path):
    labels = synth.generate(tmp_path, n_per_machine=10, machine_types=("pump",), ids_per_type=1,
                            anomaly_fraction=0.6, duration=0.05, layout="dcase2020")
    counts = labels.groupby(["split", "label"]).size().to_dict()
    # 6 anomalous, 4 normal: as many normal as anomalous in test, but one normal stays in train
    assert counts == {("train", "normal"): 1, ("test", "normal"): 3, ("test", "anomaly"): 6}
    labels = synth.generate(tmp_path / "none", n_per_machine=3, machine_types=("pump",),
                            ids_per_type=1, anomaly_fraction=0.0, duration=0.05, layout="dcase2020")
    assert set(labels["split"]) == {"train"} and len(labels) == 3


def test_cli_layout_dcase2020(tmp_path):
    r = CliRunner().invoke(cli, [str(tmp_path / "d"), "--layout", "dcase2020", "--clips-per-machine", "2",
                                 "--machine-types", "valve", "--ids-per-type", "1", "--duration", "0.05",
                                 "--anomaly-fraction", "0.5"])
    assert r.exit_code == 0, r.stderr
    assert "wrote 2 clips (1 normal, 1 anomalous) of 1 machines" in r.stderr
    assert sorted(p.relative_to(tmp_path / "d").as_posix() for p in audio_files(tmp_path / "d")) == \
        ["valve/test/anomaly_id_00_00000000.wav", "valve/train/normal_id_00_00000000.wav"]


# --------------------------------------------------------------------------- files

def test_flac_and_mixed_formats(tmp_path):
    labels = synth.generate(tmp_path, n_per_machine=4, machine_types=("fan",), ids_per_type=1,
                            anomaly_fraction=0.25, duration=0.1, formats=("wav", "flac"))
    suffixes = sorted(p.suffix for p in audio_files(tmp_path))
    assert suffixes == [".flac", ".flac", ".wav", ".wav"]
    assert sorted(p.relative_to(tmp_path).with_suffix("").as_posix()
                  for p in audio_files(tmp_path)) == sorted(labels["id"])
    # Regenerating in another format replaces the files: no id left twice.
    synth.generate(tmp_path, n_per_machine=4, machine_types=("fan",), ids_per_type=1,
                   anomaly_fraction=0.25, duration=0.1, formats=("flac",))
    assert sorted(p.suffix for p in audio_files(tmp_path)) == [".flac"] * 4


def test_interrupted_run_leaves_no_partial_file(tmp_path):
    done = []

    def progress(n):
        done.append(n)
        if len(done) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth.generate(tmp_path, n_per_machine=5, machine_types=("valve",), ids_per_type=1,
                       duration=0.1, sample_rates=(16000,), progress=progress)
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    # .ae-synth (synth.MARKER_NAME) is written first: it marks the directory as ae-synth's
    assert not [n for n in leftovers if (n.startswith(".") and n != synth.MARKER_NAME)
                or n.endswith(".tmp")]
    assert "labels.csv" not in leftovers
    for p in audio_files(tmp_path):      # what is there is whole
        assert sf.info(str(p)).frames == 1600


@pytest.mark.parametrize("kwargs, message", [
    (dict(anomaly_fraction=1.0), "anomaly fraction"),
    (dict(anomaly_fraction=-0.1), "anomaly fraction"),
    (dict(machine_types=("fan", "drill")), "drill"),
    (dict(machine_types=()), "machine types"),
    (dict(n_per_machine=0), "clips per machine"),
    (dict(ids_per_type=0), "ids per type"),
    (dict(duration=0.0), "duration"),
    (dict(sample_rates=(16000, 100)), "sample rates"),
    (dict(sample_rates=()), "sample rates"),
    (dict(seed=-1), "seed"),
    (dict(formats=("mp3",)), "formats"),
    (dict(anomaly_kinds=("squeak",)), "squeak"),
    (dict(layout="dcase2021"), "unknown layout"),
])
def test_bad_values_are_input_errors(tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        synth.generate(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_out_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        synth.generate(tmp_path / "f", n_per_machine=1, duration=0.05)


# --------------------------------------------------------------------------- the command

def test_cli_writes_set_and_logs_on_stderr(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(cli, [str(out), "--clips-per-machine", "2", "--machine-types", "fan,valve",
                                 "--ids-per-type", "2", "--duration", "0.1", "--format", "mixed",
                                 "--sample-rates", "16000,8000", "--anomaly-fraction", "0.5",
                                 "--seed", "7"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    assert "labels.csv" in r.stderr and "wrote 8 clips (4 normal, 4 anomalous) of 4 machines" in r.stderr
    labels = pd.read_csv(out / "labels.csv")
    assert len(labels) == 8 and set(labels["sample_rate"]) == {16000, 8000}
    assert {p.suffix for p in audio_files(out)} == {".wav", ".flac"}
    assert labels.equals(synth.generate(tmp_path / "lib", n_per_machine=2, machine_types=("fan", "valve"),
                                        ids_per_type=2, duration=0.1, formats=("wav", "flac"),
                                        sample_rates=(16000, 8000), anomaly_fraction=0.5, seed=7))


def test_cli_quiet(tmp_path):
    r = CliRunner().invoke(cli, [str(tmp_path / "q"), "-q", "--clips-per-machine", "1",
                                 "--machine-types", "pump", "--ids-per-type", "1", "--duration", "0.05"])
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""


@pytest.mark.parametrize("args", [
    ["--anomaly-fraction", "1"],
    ["--anomaly-fraction", "-0.1"],
    ["--machine-types", "fan,drill"],
    ["--machine-types", ""],
    ["--machine-types", "fan,fan"],
    ["--anomaly-kinds", "squeak"],
    ["--sample-rates", "16k"],
    ["--sample-rates", "16000,100"],
    ["--clips-per-machine", "0"],
    ["--ids-per-type", "0"],
    ["--duration", "0"],
    ["--format", "mp3"],
    ["--seed", "-1"],
    ["--layout", "mimii"],
])
def test_cli_bad_values_exit_2(tmp_path, args):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, [str(out), *args])
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not out.exists()


def test_installed_ae_synth(tmp_path):
    p = subprocess.run([exe("ae-synth"), "out", "--clips-per-machine", "1", "--machine-types", "slider",
                        "--ids-per-type", "1", "--duration", "0.05"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and "wrote 1 clips" in p.stderr
    assert (tmp_path / "out" / "slider" / "id_00" / "normal_0000.wav").is_file()
