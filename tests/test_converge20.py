"""Training that converges at the defaults (issue 20, part 1): with a validation fold the
validation loss chooses the epochs (--epochs a maximum, --early-stop patience, --schedule
plateau); without one a fixed count; --preset tutorial unchanged; resume bit-exact."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from conftest import invoke, write_features, write_splits

from aekit.train import settings as S
from aekit.train import loop as tr
from aekit.cmds.train import SIGTERM_AT_STEP_ENV, cli
from aekit.models.modelfile import read_info
from aekit.models.registry import kinds
from aekit.train.schedule import PLATEAU_PATIENCE, Plateau

SMALL = ["--hidden", "32,16", "--latent", "8", "--batch-size", "4", "--workers", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


@pytest.fixture()
def data(tmp_path):
    p = tmp_path / "f.h5"
    ids, _ = write_features(p)  # 40 clips: 32 train (16 in fold 0: validation), 8 test
    return p, write_splits(tmp_path / "splits.csv", ids)


def run(args, env=None):
    return invoke(cli, args, env=env)


def test_defaults_with_and_without_validation():
    for arch in kinds():
        fixed = S.make_settings(arch=arch)
        assert (fixed.epochs, fixed.early_stop, fixed.schedule) == (20, None, "cosine")
        chosen = S.make_settings(arch=arch, validation=True)
        assert (chosen.epochs, chosen.early_stop, chosen.schedule) == (100, 10, "plateau")
        tut = S.make_settings("tutorial", arch=arch, validation=True)
        assert (tut.epochs, tut.early_stop, tut.schedule, tut.keep, tut.warmup) == (
            20, None, "constant", "last", 0.0)
    s = S.make_settings(validation=True, epochs=30, early_stop=0, schedule="cosine")
    assert (s.epochs, s.early_stop, s.schedule) == (30, None, "cosine")  # explicit wins
    assert S.make_settings("tutorial", validation=True, early_stop=3).early_stop == 3


def test_plateau_state_and_lr():
    p = Plateau()
    assert [p.update(v, 0.2) for v in [5.0, 4.0, 4.0, 4.5, 4.0]] == [False] * 4 + [True]
    assert (p.scale, p.best, p.bad) == (0.5, 4.0, 0)
    assert [p.update(v, 0.2) for v in [3.0] + [3.0] * PLATEAU_PATIENCE] == [False] * 3 + [True]
    assert p.scale == 0.25
    assert [p.update(3.0, 0.2) for _ in range(2 * PLATEAU_PATIENCE)] == [False, False, True,
                                                                         False, False, False]
    assert p.scale == 0.2  # floored at min_lr_ratio, then no more reductions
    assert Plateau.from_state(p.state_dict()) == p and Plateau.from_state(None) == Plateau()
    s = S.make_settings(schedule="plateau", lr=0.01, warmup=1.0)
    # warm-up over the first epoch (4 steps), then the peak times the scale, for any horizon
    assert [tr.lr_at(i, 8, 4, s, 0.5) for i in (0, 3, 4, 7, 100)] == pytest.approx(
        [0.00125, 0.005, 0.005, 0.005, 0.005])
    assert tr.lr_at(50, 8, 4, s) == 0.01


def test_default_run_with_a_fold_stops_on_validation_tutorial_does_not(tmp_path, data):
    p, sp = data
    out = tmp_path / "m.safetensors"
    res = run([p, "-o", out, *SMALL, "--lr", "0.1", "--splits", sp, "--fold", "0", "-q"])
    assert res.exit_code == 0, res.stderr
    info = read_info(out)
    st, hist = info["settings"], info["history"]
    assert (st["epochs"], st["early_stop"], st["schedule"]) == (100, 10, "plateau")
    assert info["stopped_early"] is True and len(hist) == info["best_epoch"] + 10 < 100
    lrs = [h["lr"] for h in hist]
    assert lrs[0] == 0.1 and min(lrs) < 0.1 and lrs == sorted(lrs, reverse=True)
    assert info["weights"] == "best"
    # --preset tutorial with the same fold stays the tutorial: 20 epochs, constant lr, last
    res = run([p, "-o", out, "--hidden", "32,16", "--latent", "8", "--preset", "tutorial",
               "--splits", sp, "--fold", "0", "-q"])
    assert res.exit_code == 0, res.stderr
    info = read_info(out)
    assert len(info["history"]) == 20 and info["stopped_early"] is False
    assert {h["lr"] for h in info["history"]} == {1e-3} and info["weights"] == "last"
    assert info["settings"]["early_stop"] is None


def test_resume_with_plateau_and_patience_is_bit_exact(tmp_path, data, monkeypatch):
    """Interrupted mid-epoch while the plateau's scale and both patience counters are
    running: --resume ends at the same epoch with the same weights and history."""
    p, sp = data
    args = [p, *SMALL, "--lr", "0.1", "--splits", sp, "--fold", "0", "-q"]
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    assert run([*args, "-o", full]).exit_code == 0
    hist = read_info(full)["history"]
    lrs = [h["lr"] for h in hist]
    r = next(i for i in range(1, len(lrs)) if lrs[i] < lrs[i - 1])  # first epoch at half lr
    assert len(hist) > r + 2
    # 16 training rows in batches of 4: stop at step 2 of epoch r + 2 (1-based)
    monkeypatch.setenv(SIGTERM_AT_STEP_ENV, str((r + 1) * 4 + 2))
    res = run([*args, "-o", part])
    assert res.exit_code == 3, res.stderr
    ck = tr.load_checkpoint(tmp_path / "part.safetensors.ckpt" / "last.pt")
    assert (ck["epoch"], ck["step"]) == (r + 1, 2) and ck["plateau"]["scale"] == 0.5
    monkeypatch.delenv(SIGTERM_AT_STEP_ENV)
    assert run([*args, "-o", part, "--resume"]).exit_code == 0
    a, b = load_file(str(full)), load_file(str(part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ia, ib = read_info(full), read_info(part)
    assert [(h["train_loss"], h["val_loss"], h["lr"]) for h in ia["history"]] == [
        (h["train_loss"], h["val_loss"], h["lr"]) for h in ib["history"]]
    assert (ia["best_epoch"], ia["stopped_early"]) == (ib["best_epoch"], ib["stopped_early"])


def test_help_says_when_the_epochs_are_fixed():
    res = CliRunner().invoke(cli, ["--help"])
    text = " ".join(res.output.split())
    assert "Without one, a fixed 20 epochs with cosine decay." in text
    assert "--schedule [constant|cosine|plateau]" in text
