"""The training loss outside the step: the per-feature weight that makes it dB squared, and
the validation loss (``evaluate``). The step's own loss is aekit.train.loop._mse_db."""

from __future__ import annotations

from typing import ContextManager

import torch

from aekit.models.modelfile import Normalizer
from aekit.models.base import ClipModel, unit_target
from aekit.train.distributed import Dist


def _loss_weight(norm: Normalizer, model: ClipModel) -> torch.Tensor | None:
    """Per-feature weight (in the model's unit layout) turning squared error in normalized
    units into dB squared."""
    return None if norm.mode == "none" else model.target_stats(norm.loss_scale())


@torch.no_grad()
def evaluate(model: torch.nn.Module, source, weight: torch.Tensor | None, amp: ContextManager,
             dist: Dist | None = None, block: int = 256) -> float:
    """MSE in dB squared over a source's units (eval mode; shards across ranks under DDP)."""
    dist = dist or Dist()
    if dist.enabled:
        # Running BatchNorm statistics drift apart per rank between DDP's broadcasts:
        # evaluate (and save) with rank 0's everywhere.
        for b in model.buffers():
            torch.distributed.broadcast(b, 0)
    was_training = model.training
    model.eval()
    total = None
    n = 0
    for i, xb in enumerate(source.blocks(block)):
        if i % dist.world != dist.rank:
            continue
        with amp:
            out, _ = model(xb)
        err = out.float() - unit_target(model, xb)
        sq = err * err if weight is None else err * err * weight
        part = sq.sum(dtype=torch.float64)
        total = part if total is None else total + part
        n += err.numel()
    model.train(was_training)
    dev = next(model.parameters()).device
    if total is None:
        total = torch.zeros((), dtype=torch.float64, device=dev)
    t = torch.stack([total.to(dev), torch.tensor(float(n), dtype=torch.float64, device=dev)])
    dist.all_reduce(t)
    return float(t[0].item() / max(1.0, t[1].item()))
