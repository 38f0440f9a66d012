"""Training losses (docs/TRAINING.md: losses and metrics).

Every loss returns a scalar float32 tensor, the MEAN over the graphs of the batch (so a
distributed step that splits one global batch can rescale each rank's part by
``B_local · world / B_global`` and get the single-process gradient). Inputs are computed in
float32 whatever the autocast dtype of the predictions.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["relative_mse", "log_mse", "log_mse_mape", "LATENCY_LOSSES", "MAPE_LOG_CAP", "latency_consistency_loss",
           "accuracy_loss", "accuracy_consistency_loss", "consistency_l1", "LAMBDA_MSE", "LAMBDA_RANK",
           "LAMBDA_CONSISTENCY", "CONSISTENCY_WEIGHT"]

LAMBDA_MSE = 1.0
LAMBDA_RANK = 0.2
#: λ_c of the accuracy consistency loss (NN-Former's ``--lambda_consistency 1.0``)
LAMBDA_CONSISTENCY = 1.0
#: weight of ``l1(p1, p2)`` in the latency consistency loss
CONSISTENCY_WEIGHT = 0.01


def _flat(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    p, y = pred.float().reshape(-1), target.float().reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"loss: {p.numel()} predictions for {y.numel()} targets")
    return p, y


def relative_mse(pred: Tensor, target: Tensor) -> Tensor:
    """``mse(p / y, 1)``: pred (B,) or (B, 1), target (B,) positive latencies."""
    p, y = _flat(pred, target)
    return F.mse_loss(p / y, torch.ones_like(p))


def log_mse(pred: Tensor, target: Tensor) -> Tensor:
    """``mse(log p, log y)``: pred (B,) or (B, 1) positive, target (B,) positive latencies.
    Scale-free like :func:`relative_mse`, but an over-prediction of a tiny target costs no
    more than the same factor under-predicted, so targets spanning orders of magnitude (a
    device whose fastest networks run in microseconds) do not pull every prediction to 0."""
    p, y = _flat(pred, target)
    return F.mse_loss(torch.log(p), torch.log(y))


#: the largest log-ratio ``log(p / y)`` the MAPE term of :func:`log_mse_mape` follows (a 20x
#: over-prediction, 1900 %); beyond it only the log term pulls the prediction back
MAPE_LOG_CAP = 3.0


def log_mse_mape(pred: Tensor, target: Tensor) -> Tensor:
    """``mse(log p, log y) + mean(|p - y| / y)`` with ``d = log(p / y)`` capped at
    ``MAPE_LOG_CAP`` inside the second term. The log term trains every device (see
    :func:`log_mse`); the MAPE term is the reported metric, which punishes over-prediction
    harder than under-prediction, so a network whose latency the model cannot pin down (the
    cut-off NAS-Bench-201 cells on phones: 0.003 ms to 34 ms) is predicted low rather than at
    the geometric mean."""
    p, y = _flat(pred, target)
    d = torch.log(p) - torch.log(y)
    return (d * d).mean() + torch.expm1(d.clamp(max=MAPE_LOG_CAP)).abs().mean()


#: the latency losses by name (``LatencyTask(loss=...)``)
LATENCY_LOSSES = {"relative_mse": relative_mse, "log_mse": log_mse, "log_mse_mape": log_mse_mape}


def latency_consistency_loss(p1: Tensor, p2: Tensor, target: Tensor,
                             weight: float = CONSISTENCY_WEIGHT, loss=relative_mse) -> Tensor:
    """``loss(p1, y) + loss(p2, y) + weight · l1(p1, p2)`` for two stochastic passes
    (``loss`` one of ``LATENCY_LOSSES``; the reference uses relative MSE)."""
    a, y = _flat(p1, target)
    b, _ = _flat(p2, target)
    return loss(a, y) + loss(b, y) + weight * consistency_l1(a, b)


def accuracy_loss(pred: Tensor, target: Tensor, *, lambda_mse: float = LAMBDA_MSE,
                  lambda_rank: float = LAMBDA_RANK, perm: Optional[Tensor] = None,
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """``λ_mse · mse(p, y) + λ_rank · l1(p − p[π], y − y[π])`` for a random permutation π of
    the batch (``perm`` fixes it; otherwise drawn from ``generator`` on the CPU)."""
    p, y = _flat(pred, target)
    if perm is None:
        perm = torch.randperm(p.numel(), generator=generator).to(p.device)
    loss = lambda_mse * F.mse_loss(p, y)
    if lambda_rank:
        loss = loss + lambda_rank * F.l1_loss(p - p[perm], y - y[perm])
    return loss


def accuracy_consistency_loss(p1: Tensor, p2: Tensor, target: Tensor, *,
                              lambda_consistency: float = LAMBDA_CONSISTENCY, **kw) -> Tensor:
    """:func:`accuracy_loss` of the batch ``[p1; p2]`` (targets ``[y; y]``) plus
    ``λ_c · l1(p1, p2)``: p1 (B,) predictions for the cells, p2 (B,) for their twins, target
    (B,); ``kw`` go to :func:`accuracy_loss` (its permutation then spans all 2B entries)."""
    a, y = _flat(p1, target)
    b, _ = _flat(p2, target)
    return accuracy_loss(torch.cat([a, b]), torch.cat([y, y]), **kw) + lambda_consistency * consistency_l1(a, b)


def consistency_l1(a: Tensor, b: Tensor) -> Tensor:
    """``l1(a, b)`` between two predictions of the same graphs (two stochastic passes, or a cell
    and its augmented twin)."""
    a, b = _flat(a, b)
    return F.l1_loss(a, b)
