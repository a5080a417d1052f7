"""Forward passes of a trained model over a features file: latent codes and reconstruction errors.

Both ``ae-encode`` and ``ae-eval`` are forward passes only: rows are read in blocks
(``FeatureFile.iter_blocks``), run through the model under ``torch.inference_mode`` and
reduced at once, so memory stays flat whatever the number of clips.

Latents file layout (format ``aekit-latents``, version 1)::

    /latents   float32 [N, latent]   the code z of each clip (the encoder's output);
                                     Fletcher-32 checksummed
    /ids       utf-8 str [N]         the clip ids, in the features file's order
    attrs: format, format_version, aekit_version, command, model, model_sha256,
           features, features_sha256, splits, splits_sha256, split, fold, latent,
           input_shape, arch, and the model's feature parameters
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import h5py
import numpy as np
import torch

from . import __version__
from .errors import InputError, preview
from .fileio import atomic_path, file_sha256
from .modelfile import LoadedModel
from .store import STR, FeatureFile, params_mismatch

LOG = logging.getLogger("aekit")

LATENTS_FORMAT = "aekit-latents"
LATENTS_FORMAT_VERSION = 1
DEFAULT_BATCH = 256  # big enough that the Linear layers run as large, efficient matmuls


def check_compatible(model: LoadedModel, ff: FeatureFile, model_name: str | None = None) -> None:
    """Refuse features whose parameters or clip shape differ from the model's (InputError).

    The message names both sides, e.g. ``n_mels=64 vs 32 (features x.h5 vs model m.safetensors)``.
    """
    mname = model_name or (str(model.path) if model.path else "the model")
    sides = f"(features {ff.path} vs model {mname})"
    shape_f, shape_m = tuple(ff.clip_shape), tuple(model.input_shape)
    if shape_f != shape_m:
        fmt = lambda s: "x".join(map(str, s))  # noqa: E731
        raise InputError(f"clip shape differs: {fmt(shape_f)} vs {fmt(shape_m)} {sides}")
    if not model.feature_params:
        LOG.warning("model %s records no feature parameters; only the clip shape was checked",
                    mname)
        return
    diffs = params_mismatch(ff.params, model.feature_params)
    if diffs:
        raise InputError(f"feature parameters differ: {', '.join(diffs)} {sides}")


def _batches(ff: FeatureFile, rows: np.ndarray | None, batch_size: int
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if batch_size < 1:
        raise InputError(f"batch size must be positive, got {batch_size}")
    yield from ff.iter_blocks(rows, block=batch_size)


@dataclass
class Scores:
    """Per-clip reconstruction errors (in the features' units: dB) of the rows scored."""

    rows: np.ndarray  # int64 [N]  indices into the features file
    mse: np.ndarray  # float64 [N]  mean squared error, dB^2
    mae: np.ndarray  # float64 [N]  mean absolute error, dB
    latents: np.ndarray | None = None  # float32 [N, latent] when asked for


def score_rows(model: LoadedModel, ff: FeatureFile, rows: np.ndarray | None = None,
               batch_size: int = DEFAULT_BATCH, device: torch.device | str = "cpu",
               keep_latents: bool = False, advance: Callable[[int], None] | None = None) -> Scores:
    """Reconstruction MSE and MAE of each row (all rows when None), batched, no gradients."""
    rows = np.arange(len(ff), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    n = rows.size
    mse = np.empty(n, dtype=np.float64)
    mae = np.empty(n, dtype=np.float64)
    lat = np.empty((n, model.config.latent), dtype=np.float32) if keep_latents else None
    pos = 0
    with torch.inference_mode():
        for _, block in _batches(ff, rows, batch_size):
            x = torch.from_numpy(block).to(device, non_blocking=True)  # [B, C, M, T] dB
            recon, z = model.reconstruct(x)
            diff = (recon - x).flatten(1)  # [B, D]
            k = block.shape[0]
            # float32 on the device (MPS has no float64); torch's reductions sum pairwise.
            mse[pos:pos + k] = diff.square().mean(1).cpu().numpy()
            mae[pos:pos + k] = diff.abs().mean(1).cpu().numpy()
            if lat is not None:
                lat[pos:pos + k] = z.float().cpu().numpy()
            pos += k
            if advance:
                advance(k)
    return Scores(rows=rows, mse=mse, mae=mae, latents=lat)


def encode_rows(model: LoadedModel, ff: FeatureFile, rows: np.ndarray | None = None,
                batch_size: int = DEFAULT_BATCH, device: torch.device | str = "cpu"
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (row indices, latent codes float32 [B, latent]) block by block."""
    for idx, block in _batches(ff, rows, batch_size):
        # Inference mode only around the computation: a generator must not leave it
        # switched on in the caller's code while suspended.
        with torch.inference_mode():
            z = model.encode(torch.from_numpy(block).to(device, non_blocking=True))
            codes = z.float().cpu().numpy()
        yield idx, codes


def reconstruct_rows(model: LoadedModel, ff: FeatureFile, rows: Sequence[int],
                     device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(original, reconstruction) float32 [K, C, M, T] of a few rows, for plots."""
    x = ff.read(np.asarray(rows, dtype=np.int64))
    with torch.inference_mode():
        recon, _ = model.reconstruct(torch.from_numpy(x).to(device))
    return x, recon.float().cpu().numpy()


def write_latents(path: str | os.PathLike, model: LoadedModel, ff: FeatureFile,
                  rows: np.ndarray | None = None, batch_size: int = DEFAULT_BATCH,
                  device: torch.device | str = "cpu", command: str = "",
                  provenance: dict | None = None,
                  advance: Callable[[int], None] | None = None) -> int:
    """Encode the rows (all when None) into a latents HDF5 file, atomically; return the count.

    Blocks are appended to resizable datasets, so memory does not grow with N.
    """
    rows = np.arange(len(ff), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    latent = int(model.config.latent)
    ids = ff.ids
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver=("earliest", "v110")) as f:
            f.attrs["format"] = LATENTS_FORMAT
            f.attrs["format_version"] = LATENTS_FORMAT_VERSION
            f.attrs["aekit_version"] = __version__
            f.attrs["command"] = command
            f.attrs["latent"] = latent
            f.attrs["arch"] = model.config.arch
            f.attrs["input_shape"] = np.asarray(model.input_shape, dtype=np.int64)
            for k, v in (provenance or {}).items():
                f.attrs[k] = "none" if v is None else v
            for k, v in model.feature_params.items():
                f.attrs[k] = "none" if v is None else v
            chunk = max(1, min(4096, rows.size))
            dz = f.create_dataset("latents", shape=(0, latent), maxshape=(None, latent),
                                  dtype=np.float32, chunks=(chunk, latent), fletcher32=True)
            di = f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=STR, chunks=(chunk,))
            n = 0
            for idx, z in encode_rows(model, ff, rows, batch_size, device):
                k = len(idx)
                dz.resize((n + k, latent))
                di.resize((n + k,))
                dz[n:n + k] = z
                di[n:n + k] = [ids[i] for i in idx]
                n += k
                if advance:
                    advance(k)
    return n


def provenance(model_path: str | os.PathLike, features_path: str | os.PathLike,
               splits_path: str | os.PathLike | None = None, split: str | None = None,
               fold: int | None = None) -> dict:
    """Where a result came from: paths and content hashes of its inputs, and the selection."""
    out = {
        "model": str(model_path), "model_sha256": file_sha256(model_path),
        "features": str(features_path), "features_sha256": file_sha256(features_path),
        "splits": None, "splits_sha256": None,
        "split": split, "fold": fold,
    }
    if splits_path is not None:
        out["splits"] = str(splits_path)
        if str(splits_path) != "-" and Path(splits_path).is_file():
            out["splits_sha256"] = file_sha256(splits_path)
    return out


class LatentsFile:
    """Read a latents file: ``.latents`` float32 [N, latent], ``.ids``, ``.attrs``."""

    def __init__(self, path: str | os.PathLike):
        p = Path(path)
        if not p.exists():
            raise InputError(f"{p}: no such file")
        try:
            with h5py.File(p, "r") as f:
                fmt = f.attrs.get("format", "")
                fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
                if fmt != LATENTS_FORMAT:
                    raise InputError(f"{p}: not an aekit latents file (format={fmt!r}); "
                                     "make one with ae-encode")
                self.latents = f["latents"][()]
                self.ids = [s.decode("utf-8") if isinstance(s, bytes) else str(s)
                            for s in f["ids"][()]]
                self.attrs = {k: (v.item() if isinstance(v, np.generic) else
                                  v.tolist() if isinstance(v, np.ndarray) else v)
                              for k, v in f.attrs.items()}
        except OSError:
            raise InputError(f"{p}: not an HDF5 file") from None

    def __repr__(self) -> str:  # pragma: no cover - convenience
        return f"LatentsFile(n={len(self.ids)}, latent={self.latents.shape[1]})"


# --------------------------------------------------------------------------- evaluation

def row_split_names(ids: Sequence[str], rows: np.ndarray, splits, fold: int | None) -> np.ndarray:
    """The role of each selected row: 'all' without splits; else 'test', or for train rows
    'val' (fold == K) / 'train' (fold != K) when a fold is given, 'train' otherwise."""
    if splits is None:
        return np.full(rows.size, "all", dtype=object)
    s = splits.reindex([ids[i] for i in rows])
    sp = s["split"].to_numpy(dtype=object)
    out = np.where(sp == "test", "test", "train").astype(object)
    if fold is not None:
        is_val = (s["fold"] == fold).fillna(False).to_numpy(dtype=bool) & (sp == "train")
        out[is_val] = "val"
    return out


@dataclass
class EvalOptions:
    """What ae-eval computes beyond reconstruction scores (all optional)."""

    labels_path: str | None = None
    anomaly_column: str | None = None
    group_by: str | None = None
    probe_column: str | None = None
    score: str = "mse"  # the anomaly score: 'mse' or 'mae'
    max_fpr: float = 0.1
    train_rows: np.ndarray | None = None  # rows the probe is fitted on
    plots_dir: str | None = None
    history: list | None = None  # training records for the loss plot
    plot_clips: int = 2  # best and worst clips shown
    seed: int = 42


@dataclass
class _Labels:
    """The label columns an evaluation uses, checked, aligned to the evaluated rows."""

    table: object = None  # pandas DataFrame indexed by id (evaluated + probe training rows)
    anomaly: np.ndarray | None = None  # int 0/1 [N]
    groups: np.ndarray | None = None  # str [N]
    probe_eval: np.ndarray | None = None  # str [N]
    probe_train: np.ndarray | None = None  # str [len(train_rows)]


def _label_column(labels, column: str, what: str, source: str):
    if column not in labels.columns:
        raise InputError(f"{what} column '{column}' not found in {source}; columns are: "
                         f"{', '.join(map(str, labels.columns))}")
    col = labels[column]
    if col.isna().any():
        ids = col.index[col.isna()]
        raise InputError(f"{source}: {what} column '{column}' is empty for {len(ids)} id(s): "
                         f"{preview(ids)}")
    return col


def _one_class(y: np.ndarray) -> str:
    return "anomalous (1)" if y[0] == 1 else "normal (0)"


def _prepare_labels(opts: EvalOptions, ids: Sequence[str], rows: np.ndarray,
                    train_rows: np.ndarray | None) -> _Labels:
    """Load and check every label the evaluation needs (InputError on the first problem)."""
    from . import metrics
    from .selection import load_labels

    out = _Labels()
    if not opts.labels_path:
        return out
    src = "<stdin>" if str(opts.labels_path) == "-" else str(opts.labels_path)
    sel_ids = [ids[i] for i in rows]
    want = rows if train_rows is None else np.union1d(rows, train_rows)
    out.table = labels = load_labels(opts.labels_path, [ids[i] for i in want])
    if opts.anomaly_column:
        col = _label_column(labels.loc[sel_ids], opts.anomaly_column, "anomaly", src)
        y = out.anomaly = metrics.anomaly_labels(col, opts.anomaly_column)
        if np.unique(y).size < 2:
            raise InputError(f"AUC needs both normal (0) and anomalous (1) clips; all {y.size} "
                             f"evaluated clips are {_one_class(y)} "
                             f"in column '{opts.anomaly_column}'")
    if opts.group_by:
        col = _label_column(labels.loc[sel_ids], opts.group_by, "group-by", src)
        g = out.groups = col.astype(str).to_numpy()
        for name in sorted(set(g.tolist())):
            yg = out.anomaly[g == name]
            if np.unique(yg).size < 2:
                raise InputError(f"group '{name}' of '{opts.group_by}' has only {_one_class(yg)} "
                                 "clips; AUC needs both normal (0) and anomalous (1)")
    if opts.probe_column:
        col = _label_column(labels, opts.probe_column, "probe", src).astype(str)
        out.probe_eval = col.loc[sel_ids].to_numpy()
        out.probe_train = col.loc[[ids[i] for i in train_rows]].to_numpy()
        classes = sorted(set(out.probe_train.tolist()))
        if len(classes) < 2:
            raise InputError(f"linear probe needs at least two classes in the training rows; "
                             f"column '{opts.probe_column}' holds only '{classes[0]}'")
    return out


def _train_codes(model: LoadedModel, ff: FeatureFile, rows: np.ndarray, z_rows: np.ndarray,
                 train_rows: np.ndarray, batch_size: int, device) -> np.ndarray:
    """Codes of the probe's training rows: reused where already computed, else encoded."""
    pos = {int(r): i for i, r in enumerate(rows)}
    where = {int(r): j for j, r in enumerate(train_rows)}
    z = np.empty((train_rows.size, model.config.latent), dtype=np.float32)
    todo = []
    for j, r in enumerate(train_rows):
        if int(r) in pos:
            z[j] = z_rows[pos[int(r)]]
        else:
            todo.append(int(r))
    if not todo:
        LOG.warning("linear probe: every training row is also evaluated; its score is a "
                    "training score, not a held-out one")
    for idx, zb in encode_rows(model, ff, np.asarray(todo, dtype=np.int64), batch_size, device):
        z[[where[int(r)] for r in idx]] = zb
    return z


def evaluate(model: LoadedModel, ff: FeatureFile, rows: np.ndarray, split_names: np.ndarray,
             opts: EvalOptions, batch_size: int = DEFAULT_BATCH, device: torch.device | str = "cpu",
             advance: Callable[[int], None] | None = None):
    """Score the rows; return (report sections dict, per-clip pandas DataFrame).

    Sections: "reconstruction" always; "anomaly" with an anomaly column; "probe" with a probe
    column; "plots" with a plots directory. Bad labels raise InputError before any forward pass.
    """
    import pandas as pd

    from . import metrics

    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise InputError("no rows selected: nothing to evaluate")
    if opts.score not in ("mse", "mae"):
        raise InputError(f"unknown anomaly score {opts.score!r}: use mse or mae")
    if (opts.anomaly_column or opts.group_by or opts.probe_column) and not opts.labels_path:
        raise InputError("--anomaly-column, --group-by and --probe-column need --labels")
    if opts.group_by and not opts.anomaly_column:
        raise InputError("--group-by needs --anomaly-column")
    train_rows = None
    if opts.probe_column:
        if opts.train_rows is None:
            raise InputError("--probe-column needs --splits (and --fold) to pick the training "
                             "rows the probe is fitted on")
        train_rows = np.asarray(opts.train_rows, dtype=np.int64)
        if train_rows.size == 0:
            raise InputError("linear probe: the split file selects no training rows")
    ids = ff.ids
    sel_ids = [ids[i] for i in rows]
    # Labels first: a bad label file must fail before minutes of forward passes.
    lab = _prepare_labels(opts, ids, rows, train_rows)

    sc = score_rows(model, ff, rows, batch_size, device, keep_latents=train_rows is not None,
                    advance=advance)
    report: dict = {"reconstruction": metrics.score_summary(sc.mse, sc.mae, split_names)}
    table = pd.DataFrame({"id": sel_ids, "split": split_names, "mse": sc.mse, "mae": sc.mae})
    if lab.table is not None:
        extra = lab.table.loc[sel_ids].reset_index(drop=True)
        table = pd.concat([table, extra[[c for c in extra.columns if c not in table.columns]]],
                          axis=1)

    score = sc.mse if opts.score == "mse" else sc.mae
    if lab.anomaly is not None:
        report["anomaly"] = {
            "column": opts.anomaly_column, "score": opts.score,
            "pauc_definition": "dcase: area under ROC for FPR in [0, max_fpr] / max_fpr",
            "group_by": opts.group_by,
            **metrics.anomaly_report(lab.anomaly, score, lab.groups, opts.max_fpr),
        }
    if train_rows is not None:
        z_train = _train_codes(model, ff, rows, sc.latents, train_rows, batch_size, device)
        report["probe"] = {
            "column": opts.probe_column, "model": "standardized logistic regression",
            **metrics.linear_probe(z_train, lab.probe_train, sc.latents, lab.probe_eval,
                                   seed=opts.seed),
        }
    if opts.plots_dir:
        report["plots"] = make_plots(model, ff, rows, sc, score, opts, lab, split_names, device)
    return report, table


def make_plots(model: LoadedModel, ff: FeatureFile, rows: np.ndarray, sc: Scores,
               score: np.ndarray, opts: EvalOptions, lab: _Labels, split_names: np.ndarray,
               device) -> dict:
    """Write the evaluation's PNG files into opts.plots_dir; return {name: path}."""
    from . import plots

    out_dir = Path(opts.plots_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made: dict = {}
    if opts.history:
        made["loss"] = str(plots.plot_loss_curves(opts.history, out_dir / "loss.png"))
    else:
        LOG.warning("no training history in the model (and no --log): loss curves not plotted")
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
    xlabel = "reconstruction MSE (dB²)" if opts.score == "mse" else "reconstruction MAE (dB)"
    made["scores"] = str(plots.plot_score_histograms(score, hist_labels, out_dir / "scores.png",
                                                     xlabel=xlabel, label_name=hist_name))
    if lab.anomaly is not None:
        made["roc"] = str(plots.plot_roc(lab.anomaly, score, out_dir / "roc.png",
                                         groups=lab.groups, max_fpr=opts.max_fpr))
    return made


# --------------------------------------------------------------------------- whole files

#: (total, description, unit) -> context manager yielding advance(n), e.g. cmds.common.progress
ProgressFactory = Callable[[int, str, str], ContextManager[Callable[[int], None]]]


@contextmanager
def _no_progress(total: int, description: str, unit: str) -> Iterator[Callable[[int], None]]:
    yield lambda n=1: None


def fold_for(lm, splits, fold: int | None) -> int | None:
    """The fold to select rows with: the one the model was trained with, unless told otherwise.

    A model trained on fold K (validation = fold K) evaluated with another --fold J would
    score rows it trained on as if they were held out: refused.
    """
    trained = lm.info.get("fold")
    if splits is None or trained is None:
        return fold
    if fold is None:
        LOG.info("--fold %d: the fold the model was trained with", trained)
        return int(trained)
    if fold != trained:
        raise InputError(f"the model was trained with --fold {trained} (its validation rows are "
                         f"fold {trained}); --fold {fold} would evaluate rows it trained on")
    return fold


@contextmanager
def open_inputs(model_path: str | os.PathLike, features_path: str | os.PathLike,
                splits_path: str | os.PathLike | None, device: torch.device | str
                ) -> Iterator[tuple[LoadedModel, FeatureFile, object]]:
    """Open features, load the model on ``device``, check they match, read the splits."""
    from .modelfile import load_model
    from .selection import load_splits

    if "-" in (str(model_path), str(features_path)):
        raise InputError("MODEL and FEATURES must be file paths, not '-'")
    with FeatureFile(features_path) as ff:
        lm = load_model(model_path, device=device)
        check_compatible(lm, ff, str(model_path))
        splits = load_splits(splits_path, ff.ids) if splits_path else None
        yield lm, ff, splits


def encode_file(model_path: str | os.PathLike, features_path: str | os.PathLike,
                output: str | os.PathLike, splits_path: str | os.PathLike | None = None,
                split: str | None = None, fold: int | None = None,
                batch_size: int = DEFAULT_BATCH, device: torch.device | str = "cpu",
                command: str = "", progress: ProgressFactory = _no_progress,
                labels_path: str | os.PathLike | None = None,
                where: str | None = None) -> tuple[int, int]:
    """ae-encode as a function: write the latents of the selected rows; return (encoded, total).

    ``where`` (with ``labels_path``) keeps only the selected rows whose labels match."""
    from .selection import restrict_rows, select_rows

    with open_inputs(model_path, features_path, splits_path, device) as (lm, ff, splits):
        fold = fold_for(lm, splits, fold)
        rows = restrict_rows(ff.ids, select_rows(ff.ids, splits, split, fold), labels_path, where)
        if rows.size == 0:
            raise InputError("no rows selected: nothing to encode")
        prov = provenance(model_path, features_path, splits_path, split, fold)
        LOG.info("encoding %d of %d clips on %s (latent %d)", rows.size, len(ff), device,
                 lm.config.latent)
        with progress(rows.size, "encode", "clips") as advance:
            n = write_latents(output, lm, ff, rows, batch_size, device, command=command,
                              provenance=prov, advance=advance)
        return n, len(ff)


def evaluate_file(model_path: str | os.PathLike, features_path: str | os.PathLike,
                  opts: EvalOptions, splits_path: str | os.PathLike | None = None,
                  split: str | None = None, fold: int | None = None,
                  batch_size: int = DEFAULT_BATCH, device: torch.device | str = "cpu",
                  command: str = "", log_path: str | os.PathLike | None = None,
                  progress: ProgressFactory = _no_progress, where: str | None = None):
    """ae-eval as a function: return (the JSON report as a dict, the per-clip DataFrame).

    ``where`` keeps only the selected rows whose labels (``opts.labels_path``) match.

    The probe's training rows are the train rows of ``fold`` (all train rows without a fold);
    the loss plot uses the model's history unless ``log_path`` (an ae-train --log CSV) is given.
    """
    from dataclasses import replace

    from .selection import restrict_rows, select_rows

    with open_inputs(model_path, features_path, splits_path, device) as (lm, ff, splits):
        fold = fold_for(lm, splits, fold)
        rows = restrict_rows(ff.ids, select_rows(ff.ids, splits, split, fold), opts.labels_path,
                             where)
        if log_path:
            from .plots import read_training_log

            history = read_training_log(log_path)
        else:
            history = lm.history
        train_rows = select_rows(ff.ids, splits, "train", fold) if splits is not None else None
        opts = replace(opts, train_rows=train_rows, history=history)
        prov = provenance(model_path, features_path, splits_path, split, fold)
        LOG.info("evaluating %d of %d clips on %s", rows.size, len(ff), device)
        with progress(rows.size, "eval", "clips") as advance:
            names = row_split_names(ff.ids, rows, splits, fold)
            sections, per_clip = evaluate(lm, ff, rows, names, opts, batch_size, device,
                                          advance=advance)
        total = len(ff)
    report = {
        "format": "aekit-eval",
        "format_version": 1,
        "aekit_version": __version__,
        "command": command,
        "model": {"path": prov["model"], "sha256": prov["model_sha256"], "arch": lm.config.arch,
                  "latent": lm.config.latent, "input_shape": list(lm.input_shape)},
        "features": {"path": prov["features"], "sha256": prov["features_sha256"], "count": total},
        "selection": {"splits": prov["splits"], "splits_sha256": prov["splits_sha256"],
                      "split": split or "all", "fold": fold,
                      **({"where": where} if where is not None else {})},
        **sections,
    }
    return report, per_clip
