"""What a metric section sees: the evaluated rows, their labels and their scores.

:class:`EvalContext` is handed to each registered section's ``check`` (before the forward
passes: ``scores`` is still None) and ``compute`` (after them), :mod:`aekit.evaluate.sections`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from aekit.errors import InputError, preview

LOG = logging.getLogger("aekit")


@dataclass
class Labels:
    """The label columns an evaluation uses, checked, aligned to the evaluated rows."""

    table: object = None  # pandas DataFrame indexed by id (evaluated + probe training rows)
    anomaly: np.ndarray | None = None  # int 0/1 [N]
    groups: np.ndarray | None = None  # str [N]
    probe_eval: np.ndarray | None = None  # str [N]
    probe_train: np.ndarray | None = None  # str [len(train_rows)]
    dcase: dict | None = None  # with a protocol: {"types", "sections", "domains": str [N]}
    submission: dict | None = None  # with submission files: {"types", "sections": str [N]}
    extra: dict = field(default_factory=dict)  # what other sections' checks keep, by name


@dataclass
class EvalContext:
    """The evaluation of one model on selected rows, as the metric sections see it."""

    model: object  # aekit.models.modelfile.LoadedModel
    ff: object  # aekit.data.store.FeatureFile
    rows: np.ndarray  # the evaluated rows of ff
    ids: list  # their ids
    split_names: np.ndarray  # their roles: all, train, val, test
    opts: object  # aekit.evaluate.evaluation.EvalOptions
    labels: Labels
    source: str = ""  # the label file, as messages name it
    train_rows: np.ndarray | None = None  # the probe's training rows
    batch_size: int = 256
    device: object = "cpu"
    scores: object = None  # aekit.evaluate.inference.Scores, after the forward pass
    score: np.ndarray | None = None  # the anomaly score of each row (opts.score, or ensemble)
    score_name: str = ""  # its name in the report: mse, ..., ensemble_z(mse)
    ensemble_threshold: dict | None = None
    decisions: np.ndarray | None = None  # 0/1 at the model's threshold, set by 'anomaly'
    report: dict = field(default_factory=dict)  # the sections computed so far

    def train_codes(self) -> np.ndarray:
        """Codes of the training rows: reused where already computed, else encoded."""
        from aekit.evaluate.inference import encode_rows

        rows, train_rows, z_rows = self.rows, self.train_rows, self.scores.latents
        pos = {int(r): i for i, r in enumerate(rows)}
        where = {int(r): j for j, r in enumerate(train_rows)}
        z = np.empty((train_rows.size, self.model.latent), dtype=np.float32)
        todo = []
        for j, r in enumerate(train_rows):
            if int(r) in pos:
                z[j] = z_rows[pos[int(r)]]
            else:
                todo.append(int(r))
        if not todo:
            LOG.warning("linear probe: every training row is also evaluated; its score is a "
                        "training score, not a held-out one")
        for idx, zb in encode_rows(self.model, self.ff, np.asarray(todo, dtype=np.int64),
                                   self.batch_size, self.device):
            z[[where[int(r)] for r in idx]] = zb
        return z


def label_column(labels, column: str, what: str, source: str):
    """``labels[column]``, every cell non-empty; InputError naming the column otherwise."""
    if column not in labels.columns:
        raise InputError(f"{what} column '{column}' not found in {source}; columns are: "
                         f"{', '.join(map(str, labels.columns))}")
    col = labels[column]
    empty = col.isna() | col.astype(object).map(lambda v: isinstance(v, str) and not v.strip())
    if empty.any():  # labels are text: an empty cell is '' (NA, null, ... are values)
        ids = col.index[empty.to_numpy(dtype=bool)]
        raise InputError(f"{source}: {what} column '{column}' is empty for {len(ids)} id(s): "
                         f"{preview(ids)}")
    return col


def one_class(y: Sequence) -> str:
    return "anomalous (1)" if y[0] == 1 else "normal (0)"
