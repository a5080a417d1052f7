"""aekit.evaluate.plots: every figure is written as a non-empty PNG, without pyplot."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from aekit.evaluate import plots
from aekit.errors import InputError
from conftest import C0, C1, MAGMA_HIGH, MAGMA_LOW, png_rgb, pixels_of

# Figure sizes in pixels at plots.DPI (110): loss and histograms 6.4 x 4.0 in, ROC 5.6 x 5.0 in,
# spectrograms 10 in wide, 1 + 1.9 in per row (clip x channel).
WIDE, ROC = (704, 440), (616, 550)


def _orange(rgb) -> int:
    """Pixels of an orange hue (C1 drawn thin, antialiased, at alpha < 1)."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return int(((r >= 200) & (g >= 100) & (g <= 200) & (r - b >= 100)).sum())


def _green(rgb) -> int:
    """Pixels of a green hue (C2)."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return int(((g - r >= 40) & (g - b >= 40)).sum())


def test_loss_curves(tmp_path):
    hist = [{"epoch": e, "train_loss": 2000 / e, "val_loss": 2100 / e if e % 2 else None,
             "lr": 1e-3} for e in range(1, 11)]
    out = plots.plot_loss_curves(hist, tmp_path / "loss.png")
    rgb = png_rgb(out, WIDE)
    assert pixels_of(rgb, C0) > 200 and pixels_of(rgb, C1) > 200  # train and validation lines
    only_train = [{"epoch": 1, "train_loss": 3.0, "val_loss": ""}, {"epoch": 2, "train_loss": 2.0}]
    rgb = png_rgb(plots.plot_loss_curves(only_train, tmp_path / "t.png"), WIDE)
    assert pixels_of(rgb, C0) > 200 and pixels_of(rgb, C1, tol=60) == 0  # no validation line
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
    rgb = png_rgb(out, (1100, round((1 + 1.9 * 4) * 110)))  # 2 clips x 2 channels: 4 rows
    # each row's colour scale spans its own min and max: both ends of magma are drawn, as
    # blocks of whole cells (4 x 10 cells per panel, each over 100 pixels)
    assert pixels_of(rgb, MAGMA_LOW, tol=1) > 1000 and pixels_of(rgb, MAGMA_HIGH, tol=1) > 1000


def test_histograms_and_roc(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    rgb = png_rgb(plots.plot_score_histograms(s, y, tmp_path / "h.png", label_name="anomaly"),
                  WIDE)
    # two overlaid filled histograms (alpha 0.55): C0 and C1, each over a large area
    assert pixels_of(rgb, C0, tol=2, alpha=0.55) > 5000
    assert pixels_of(rgb, C1, tol=2, alpha=0.55) > 5000
    rgb = png_rgb(plots.plot_score_histograms(s, None, tmp_path / "h1.png"), WIDE)
    assert pixels_of(rgb, C0, tol=2, alpha=0.8) > 20000 and _orange(rgb) == 0  # one, alpha 0.8
    g = np.where(np.arange(200) % 2, "fan", "pump")
    rgb = png_rgb(plots.plot_roc(y, s, tmp_path / "roc.png", groups=g), ROC)
    # the pooled curve (C0, 2 px), the shaded pAUC region (grey 0.9), one curve per group
    assert pixels_of(rgb, C0) > 500 and pixels_of(rgb, (230, 230, 230), tol=1) > 10000
    assert _orange(rgb) > 50 and _green(rgb) > 50
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.png", "h1.png", "roc.png"]


def test_plots_do_not_load_pyplot(tmp_path):
    code = ("import sys, numpy as np; from aekit.evaluate import plots; "
            "plots.plot_score_histograms(np.arange(10.0), None, sys.argv[1]); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot loaded'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "h.png")], check=True)
    png_rgb(tmp_path / "h.png", WIDE)
