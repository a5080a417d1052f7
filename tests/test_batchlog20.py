"""Batch logs (issue 20, part 3): with stderr not a terminal, progress lines come at most every
AEKIT_PROGRESS_INTERVAL seconds plus a final one, each with the date and time, and ae-train
writes one line per epoch instead of per-step progress. The clock is faked: no test waits."""

from __future__ import annotations

import itertools
import re

import pytest
from click.testing import CliRunner

from conftest import write_features, write_splits, write_tone

from aekit.cmds import common

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


@pytest.fixture
def fake_clock(monkeypatch):
    """The progress clock: 0 at its first reading, then ``step`` seconds more at each."""
    def install(step: float):
        ticks = itertools.count()
        monkeypatch.setattr(common, "_clock", lambda: next(ticks) * step)
    monkeypatch.delenv(common.PROGRESS_INTERVAL_ENV, raising=False)
    return install


def _progress_lines(capsys, n: int, total: int | None = 25) -> list[str]:
    common.setup_logging()  # to pytest's captured stderr: not a terminal
    with common.progress(total, "work", unit="files") as advance:
        for _ in range(n):
            advance(1)
    return capsys.readouterr().err.splitlines()


def test_progress_lines_every_interval_and_a_final_one(capsys, fake_clock):
    fake_clock(1.0)  # start at 0, the k-th file done at k seconds, the final reading at 26
    lines = _progress_lines(capsys, 25)
    assert len(lines) == 3, lines
    for line in lines:
        assert re.fullmatch(rf".+?: INFO: {STAMP} work: .*", line), line
    body = [line.split(" work: ", 1)[1] for line in lines]
    assert body == ["10/25 files, 1.0 files/s, elapsed 0:00:10",
                    "20/25 files, 1.0 files/s, elapsed 0:00:20",
                    "done, 25/25 files, 1.0 files/s, elapsed 0:00:26"]


def test_progress_interval_from_the_environment(capsys, fake_clock, monkeypatch):
    fake_clock(2.0)
    monkeypatch.setenv(common.PROGRESS_INTERVAL_ENV, "5")
    lines = _progress_lines(capsys, 10, total=None)  # readings 2, 4, ... 20, final 22
    assert [ln.split(" work: ", 1)[1] for ln in lines] == [
        "3 files, 0.5 files/s, elapsed 0:00:06", "6 files, 0.5 files/s, elapsed 0:00:12",
        "9 files, 0.5 files/s, elapsed 0:00:18", "done, 10 files, 0.5 files/s, elapsed 0:00:22"]
    # A burst (no time passing) gives the final line only, whatever the share done.
    monkeypatch.setenv(common.PROGRESS_INTERVAL_ENV, "10")
    monkeypatch.setattr(common, "_clock", lambda: 100.0)
    assert [ln.split(" work: ", 1)[1] for ln in _progress_lines(capsys, 25)] == [
        "done, 25/25 files, elapsed 0:00:00"]


@pytest.mark.parametrize("bad", ["soon", "-1", "inf", "nan"])
def test_bad_progress_interval_warns_and_uses_the_default(capsys, fake_clock, monkeypatch, bad):
    fake_clock(1.0)
    monkeypatch.setenv(common.PROGRESS_INTERVAL_ENV, bad)
    lines = _progress_lines(capsys, 25)
    assert f"WARNING: {common.PROGRESS_INTERVAL_ENV}={bad!r} is not a number of seconds" in lines[0]
    assert len(lines) == 4  # the warning, 10/25, 20/25, done


def test_ae_featurize_batch_log(tmp_path, fake_clock):
    """ae-featurize on 7 files, the clock 4 s later at each file: a line at 12 s (3 files) and
    at 24 s (6 files), none in between, and the final one (the helper ae-score and ae-eval use)."""
    from aekit.cmds.featurize import cli as featurize

    for i in range(7):
        write_tone(tmp_path / "a" / f"m{i}.wav", seconds=0.2, freq=300 + 50 * i, seed=i)
    fake_clock(4.0)
    r = CliRunner().invoke(featurize, [str(tmp_path / "a"), "-o", str(tmp_path / "f.h5"),
                                       "-j", "1", "--num-samples", "2304", "--n-mels", "4"])
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if " featurize: " in ln]
    assert [ln.split(" featurize: ", 1)[1] for ln in lines] == [
        "3/7 files, 0.2 files/s, elapsed 0:00:12", "6/7 files, 0.2 files/s, elapsed 0:00:24",
        "done, 7/7 files, 0.2 files/s, elapsed 0:00:32"]
    assert all(re.match(rf"ae-featurize: INFO: {STAMP} featurize: ", ln) for ln in lines), lines


def test_ae_train_batch_log_one_line_per_epoch(tmp_path):
    from aekit.cmds.train import cli as train

    p = tmp_path / "f.h5"
    ids, _ = write_features(p)
    sp = write_splits(tmp_path / "splits.csv", ids)
    r = CliRunner().invoke(train, [str(a) for a in [
        p, "-o", tmp_path / "m.safetensors", "--hidden", "16", "--latent", "4", "--epochs", "3",
        "--batch-size", "4", "--splits", sp, "--fold", "0", "--workers", "0"]])
    assert r.exit_code == 0, r.stderr
    lines = r.stderr.splitlines()
    assert not [ln for ln in lines if "batches" in ln], r.stderr  # no per-step progress
    epoch = re.compile(
        rf"ae-train: INFO: ({STAMP}) epoch (\d)/3: train loss [\d.e+-]+, val loss [\d.e+-]+ dB\^2, "
        r"lr [\d.e+-]+(?: \(next [\d.e+-]+\))?, 4 steps, \d+ clips/s, [\d.]+ s, "
        r"elapsed \d:\d\d:\d\d( \*)?")
    found = [m for m in map(epoch.fullmatch, lines) if m]
    assert [int(m.group(2)) for m in found] == [1, 2, 3], r.stderr
    assert sum(bool(re.search(r" epoch \d+/", ln)) for ln in lines) == 3
