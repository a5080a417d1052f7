"""aekit.evaluate.plots: every figure is written as a non-empty PNG, without pyplot."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from aekit.evaluate import plots
from aekit.errors import InputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_loss_curves(tmp_path):
    hist = [{"epoch": e, "train_loss": 2000 / e, "val_loss": 2100 / e if e % 2 else None,
             "lr": 1e-3} for e in range(1, 11)]
    out = plots.plot_loss_curves(hist, tmp_path / "loss.png")
    assert _is_png(out)
    only_train = [{"epoch": 1, "train_loss": 3.0, "val_loss": ""}, {"epoch": 2, "train_loss": 2.0}]
    assert _is_png(plots.plot_loss_curves(only_train, tmp_path / "t.png"))
    with pytest.raises(InputError, match="no losses"):
        plots.plot_loss_curves([{"epoch": 1}], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_read_training_log(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,train_loss,val_loss,lr\n1,10.0,,0.001\n2,5.0,,0.001\n")
    rec = plots.read_training_log(log)
    assert rec[0]["train_loss"] == 10.0 and rec[0]["val_loss"] is None
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not a training log"):
        plots.read_training_log(bad)


def test_spectrograms(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(-40, 5, (2, 2, 4, 10)).astype(np.float32)
    out = plots.plot_spectrograms(x, x + 1, ["a", "b"], [1.0, 1.0], tmp_path / "s.png", title="t")
    assert _is_png(out)


def test_histograms_and_roc(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    assert _is_png(plots.plot_score_histograms(s, y, tmp_path / "h.png", label_name="anomaly"))
    assert _is_png(plots.plot_score_histograms(s, None, tmp_path / "h1.png"))
    g = np.where(np.arange(200) % 2, "fan", "pump")
    assert _is_png(plots.plot_roc(y, s, tmp_path / "roc.png", groups=g))
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.png", "h1.png", "roc.png"]


def test_plots_do_not_load_pyplot(tmp_path):
    code = ("import sys, numpy as np; from aekit.evaluate import plots; "
            "plots.plot_score_histograms(np.arange(10.0), None, sys.argv[1]); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot loaded'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "h.png")], check=True)
    assert _is_png(tmp_path / "h.png")
