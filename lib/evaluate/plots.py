"""PNG figures a person opens: loss curves, spectrograms, score histograms, ROC curves.

matplotlib is imported inside each function (it is slow to import) and used through its
object-oriented API (``matplotlib.figure.Figure``, rendered by Agg): no pyplot, no global
backend switch, no window, so the library is safe in scripts, batch jobs and notebooks.
Every file is written atomically.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from aekit.errors import InputError
from aekit.system.fileio import atomic_path
from aekit.system.textinput import display_name, read_csv

DPI = 110

#: The files ``ae-eval --plots DIR`` may write into DIR (aekit.evaluate.evaluation.make_plots): any of
#: them that is an input of the command is refused before any work.
PLOT_FILES = ("loss.png", "spectrograms_best.png", "spectrograms_worst.png", "scores.png",
              "roc.png")


def plot_paths(plots_dir: str | os.PathLike) -> list[Path]:
    """The paths :data:`PLOT_FILES` take in ``plots_dir``."""
    return [Path(plots_dir) / name for name in PLOT_FILES]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


# --------------------------------------------------------------------------- training curves

def read_training_log(path: str | os.PathLike) -> list[dict]:
    """The ``--log`` CSV of ae-train (epoch,train_loss,val_loss,lr,...) as a list of dicts."""
    df = read_csv(path, dtype=None, keep_default_na=True)  # a log of numbers: typed by pandas
    name = display_name(path)
    missing = [c for c in ("epoch", "train_loss") if c not in df.columns]
    if missing:
        raise InputError(f"{name}: not a training log: missing column(s) {', '.join(missing)}; "
                         f"columns are: {', '.join(map(str, df.columns))}")
    records = []
    for rec in df.to_dict("records"):
        records.append({k: (None if isinstance(v, float) and math.isnan(v) else v)
                        for k, v in rec.items()})
    return records


def _series(history: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i, rec in enumerate(history):
        v = rec.get(key)
        if v is None or v == "":
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            xs.append(float(rec.get("epoch", i + 1)))
            ys.append(v)
    return np.asarray(xs), np.asarray(ys)


def plot_loss_curves(history: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Training and validation loss (MSE, dB^2) per epoch, log scale when it spans decades."""
    xt, yt = _series(history, "train_loss")
    xv, yv = _series(history, "val_loss")
    if not yt.size and not yv.size:
        raise InputError("the training history holds no losses to plot")
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    if yt.size:
        ax.plot(xt, yt, marker="o", ms=3, label="train")
    if yv.size:
        ax.plot(xv, yv, marker="s", ms=3, label="validation")
        best = int(np.argmin(yv))
        ax.annotate(f"best {yv[best]:.4g}", (xv[best], yv[best]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=8)
    allv = np.r_[yt, yv]
    if allv.min() > 0 and allv.max() / allv.min() > 30:
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (MSE, dB²)")
    ax.set_title(title or "Training and validation loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


# --------------------------------------------------------------------------- spectrograms

def plot_spectrograms(original: np.ndarray, recon: np.ndarray, ids: Sequence[str],
                      errors: Sequence[float], path: str | os.PathLike, title: str = "") -> Path:
    """Original vs reconstruction of a few clips: one row per clip and channel, dB colour scale.

    original, recon: float32 [K, C, M, T] in dB; errors: the clips' MSE (dB^2).
    """
    k, c = original.shape[:2]
    if k == 0:
        raise InputError("no clips to plot")
    rows = k * c
    fig = _figure(10.0, 1.0 + 1.9 * rows)
    axes = fig.subplots(rows, 2, squeeze=False, sharex=True, sharey=True)
    for i in range(k):
        for ch in range(c):
            r = i * c + ch
            vmin = float(min(original[i, ch].min(), recon[i, ch].min()))
            vmax = float(max(original[i, ch].max(), recon[i, ch].max()))
            im = None
            for j, (img, what) in enumerate(((original[i, ch], "original"),
                                             (recon[i, ch], "reconstruction"))):
                ax = axes[r, j]
                im = ax.imshow(img, origin="lower", aspect="auto", cmap="magma",
                               vmin=vmin, vmax=vmax, interpolation="nearest")
                chan = f" ch{ch}" if c > 1 else ""
                note = f" (MSE {errors[i]:.4g})" if j else ""
                ax.set_title(f"{ids[i]}{chan} — {what}{note}", fontsize=8)
                if j == 0:
                    ax.set_ylabel("Mel band")
                if r == rows - 1:
                    ax.set_xlabel("frame")
            fig.colorbar(im, ax=axes[r, :].tolist(), label="dB", shrink=0.9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# --------------------------------------------------------------------------- scores

def plot_score_histograms(scores: np.ndarray, labels: Sequence | None, path: str | os.PathLike,
                          xlabel: str = "reconstruction MSE (dB²)", title: str = "",
                          label_name: str = "label", max_classes: int = 12) -> Path:
    """Histogram of scores, one per label value (overlaid, shared bins), or one in all."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise InputError("no scores to plot")
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    lo, hi = float(s.min()), float(s.max())
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, min(60, max(10, int(np.sqrt(s.size)) + 1)))
    if labels is None:
        ax.hist(s, bins=bins, alpha=0.8, label=f"all ({s.size})")
    else:
        lab = np.asarray([str(x) for x in labels], dtype=object)
        names = sorted(set(lab.tolist()))
        if len(names) > max_classes:
            counts = {n: int((lab == n).sum()) for n in names}
            names = sorted(names, key=lambda n: -counts[n])[:max_classes]
        for name in names:
            m = lab == name
            ax.hist(s[m], bins=bins, alpha=0.55, label=f"{label_name}={name} ({int(m.sum())})",
                    density=True, histtype="stepfilled")
        ax.set_ylabel("density")
    if labels is None:
        ax.set_ylabel("clips")
    ax.set_xlabel(xlabel)
    ax.set_title(title or "Reconstruction error per clip")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_roc(y_true, scores, path: str | os.PathLike, groups: Sequence | None = None,
             max_fpr: float = 0.1, title: str = "", max_groups: int = 10) -> Path:
    """ROC curve(s) with the DCASE partial-AUC region [0, max_fpr] shaded."""
    from aekit.evaluate.metrics import mcclish_pauc, roc_auc, roc_points

    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    fig = _figure(5.6, 5.0)
    ax = fig.add_subplot()
    ax.axvspan(0, max_fpr, color="0.9", label=f"pAUC region (FPR ≤ {max_fpr:g})")
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="chance")
    fpr, tpr, _ = roc_points(y, s)
    ax.plot(fpr, tpr, lw=2, color="C0",
            label=f"all: AUC {roc_auc(y, s):.3f}, pAUC {mcclish_pauc(y, s, max_fpr):.3f}")
    if groups is not None:
        g = np.asarray([str(x) for x in groups], dtype=object)
        names = sorted(set(g.tolist()))
        if 1 < len(names) <= max_groups:
            for i, name in enumerate(names):
                m = g == name
                gf, gt, _ = roc_points(y[m], s[m])
                ax.plot(gf, gt, lw=1, alpha=0.8, color=f"C{(i + 1) % 10}",
                        label=f"{name}: AUC {roc_auc(y[m], s[m]):.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title or "ROC (score = reconstruction error)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)
