"""The plots of an evaluation (``ae-eval --plots DIR``): loss curves, the best and worst
reconstructed clips, score histograms and the ROC curve, from what ``evaluate`` computed."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from aekit.evaluate.evalcontext import Labels
from aekit.evaluate.inference import Scores, reconstruct_rows

LOG = logging.getLogger("aekit")


def make_plots(model, ff, rows: np.ndarray, sc: Scores,
               score: np.ndarray, opts, lab: Labels, split_names: np.ndarray,
               device) -> dict:
    """Write the evaluation's PNG files into opts.plots_dir; return {name: path}."""
    from aekit.evaluate import plots

    out_dir = Path(opts.plots_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made: dict = {}
    if opts.history:
        made["loss"] = str(plots.plot_loss_curves(opts.history, out_dir / "loss.png"))
    else:
        LOG.warning("no training history in the model (and no training log given): loss curves not plotted")
    k = max(1, min(opts.plot_clips, rows.size))
    order = np.argsort(sc.mse, kind="stable")
    ids = ff.ids
    for name, pick, title in (("best", order[:k], "Best reconstructed clips (lowest MSE first)"),
                              ("worst", order[::-1][:k],
                               "Worst reconstructed clips (highest MSE first)")):
        x, r = reconstruct_rows(model, ff, rows[pick], device)
        made[f"spectrograms_{name}"] = str(plots.plot_spectrograms(
            x, r, [ids[i] for i in rows[pick]], sc.mse[pick],
            out_dir / f"spectrograms_{name}.png", title=title))
    if lab.anomaly is not None:
        hist_labels, hist_name = lab.anomaly, opts.anomaly_column
    elif lab.probe_eval is not None:
        hist_labels, hist_name = lab.probe_eval, opts.probe_column
    elif len(set(split_names.tolist())) > 1:
        hist_labels, hist_name = split_names, "split"
    else:
        hist_labels, hist_name = None, "label"
    xlabel = {"mse": "reconstruction MSE (dB²)", "mae": "reconstruction MAE (dB)",
              "mahalanobis": "Mahalanobis distance of the error vector"}.get(opts.score,
                                                                            opts.score)
    if opts.ensemble is not None:
        xlabel = f"ensemble z-score ({opts.score})"
    made["scores"] = str(plots.plot_score_histograms(score, hist_labels, out_dir / "scores.png",
                                                     xlabel=xlabel, label_name=hist_name))
    if lab.anomaly is not None:
        made["roc"] = str(plots.plot_roc(lab.anomaly, score, out_dir / "roc.png",
                                         groups=lab.groups, max_fpr=opts.max_fpr))
    return made
