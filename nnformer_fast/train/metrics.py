"""Evaluation metrics (docs/TRAINING.md: losses and metrics): MAPE, Acc(δ) and Kendall's τ-b; Spearman's ρ and the
top-k metrics of a ranking predictor (how well it finds the best cells).

All functions take predictions and targets as array-likes or tensors of the same length
(any shape, flattened) and return Python floats.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["mape", "acc_within", "kendall_tau", "spearman_rho", "best_cell_rank", "precision_at_top",
           "regression_metrics", "divergence_reasons", "ACC_DELTAS", "CONSTANT_SPREAD", "TOP_FRACTION",
           "PRECISION_AT_TOP_KEY"]

#: δ of the Acc(δ) metrics reported by :func:`regression_metrics`.
ACC_DELTAS = (0.01, 0.05, 0.10)
#: predictions whose spread (standard deviation) is below this fraction of the targets' are
#: "nearly constant": the model tells the networks apart no better than a constant would
CONSTANT_SPREAD = 0.01
#: the top share of :func:`precision_at_top` in :func:`regression_metrics`, and its key there
TOP_FRACTION = 0.01
PRECISION_AT_TOP_KEY = f"prec@top{TOP_FRACTION * 100:g}%"
# keeps exact-boundary cases (|p-y|/y == δ in decimal) inside despite float32 rounding
_SLACK = 1e-6


def _as_arrays(pred, target) -> tuple[np.ndarray, np.ndarray]:
    def conv(a):
        if hasattr(a, "detach"):
            a = a.detach().float().cpu().numpy()
        return np.asarray(a, dtype=np.float64).reshape(-1)

    p, y = conv(pred), conv(target)
    if p.shape != y.shape:
        raise ValueError(f"metrics: {p.size} predictions for {y.size} targets")
    if p.size == 0:
        raise ValueError("metrics: no predictions")
    return p, y


def _relative_error(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    if not np.all(y > 0):
        raise ValueError("MAPE/Acc(δ) need positive targets; "
                         f"target {int(np.nonzero(~(y > 0))[0][0])} is {y[~(y > 0)][0]}")
    return np.abs(p - y) / y


def mape(pred, target) -> float:
    """``mean(|p − y| / y)`` (a fraction: 0.05 is 5 %). Targets must be positive."""
    p, y = _as_arrays(pred, target)
    return float(_relative_error(p, y).mean())


def acc_within(pred, target, delta: float) -> float:
    """``Acc(δ)``: the fraction of predictions with ``|p − y| / y ≤ δ``."""
    p, y = _as_arrays(pred, target)
    return float((_relative_error(p, y) <= delta + _SLACK).mean())


def kendall_tau(pred, target) -> float:
    """Kendall's τ-b between predictions and targets (``scipy.stats.kendalltau``); NaN
    when either side is constant or there are fewer than 2 values."""
    from scipy.stats import kendalltau

    p, y = _as_arrays(pred, target)
    if p.size < 2:
        return math.nan
    return float(kendalltau(p, y).statistic)


def spearman_rho(pred, target) -> float:
    """Spearman's ρ (Pearson correlation of the average ranks; ``scipy.stats.spearmanr``);
    NaN when either side is constant or there are fewer than 2 values."""
    from scipy.stats import spearmanr

    p, y = _as_arrays(pred, target)
    if p.size < 2 or p.min() == p.max() or y.min() == y.max():
        return math.nan
    return float(spearmanr(p, y).statistic)


def best_cell_rank(pred, target) -> int:
    """The true rank (1 = best, higher targets are better) of the cell predicted best: one
    plus the number of cells whose target is strictly higher than its target (tied cells
    share the best rank). Of several cells predicted equally best, the first counts."""
    p, y = _as_arrays(pred, target)
    return int(1 + np.count_nonzero(y > y[int(np.argmax(p))]))


def precision_at_top(pred, target, fraction: float = TOP_FRACTION) -> float:
    """Of the ``k = ceil(fraction * n)`` cells predicted best (highest predictions; ties in
    the order given), the share whose target is among the k highest (a target tied with the
    k-th highest counts as among them)."""
    p, y = _as_arrays(pred, target)
    if not 0 < fraction <= 1:
        raise ValueError(f"precision_at_top: fraction must lie in (0, 1], got {fraction}")
    k = max(1, math.ceil(fraction * p.size - 1e-9))
    picked = np.argsort(-p, kind="stable")[:k]
    kth_best = np.partition(y, y.size - k)[y.size - k]
    return float(np.count_nonzero(y[picked] >= kth_best) / k)


def regression_metrics(pred, target, *, relative: bool = True) -> dict[str, float]:
    """All metrics (docs/TRAINING.md) in one dict: ``tau`` and, with ``relative`` (positive targets,
    the latency task), ``mape``, ``acc@1``, ``acc@5``, ``acc@10``; without it (accuracies,
    higher is better) ``best_rank`` (:func:`best_cell_rank`) and ``prec@top1%``
    (:func:`precision_at_top`); always ``n``, ``mse`` and ``rho`` (Spearman)."""
    p, y = _as_arrays(pred, target)
    out = {"n": int(p.size), "mse": float(np.mean((p - y) ** 2)), "tau": kendall_tau(p, y), "rho": spearman_rho(p, y)}
    if relative:
        err = _relative_error(p, y)
        out["mape"] = float(err.mean())
        for d in ACC_DELTAS:
            out[f"acc@{round(d * 100)}"] = float((err <= d + _SLACK).mean())
    else:
        out["best_rank"] = best_cell_rank(p, y)
        out[PRECISION_AT_TOP_KEY] = precision_at_top(p, y, TOP_FRACTION)
    return out


def divergence_reasons(losses=None, first_epoch_steps: int | None = None, pred=None, target=None) -> list[str]:
    """Why a training run looks diverged; empty when it does not. Each reason is one phrase.

    losses: the training loss of every step and first_epoch_steps the steps of its first
    epoch: the final loss (the mean of the last ``first_epoch_steps`` steps) above the
    first epoch's mean is a reason (judged once two epochs' worth of steps ran).
    pred, target: held-out predictions and targets: Kendall τ ≤ 0 (or undefined) and
    predictions whose spread is below ``CONSTANT_SPREAD`` of the targets' are reasons.
    """
    reasons = []
    if losses is not None and first_epoch_steps:
        w = int(first_epoch_steps)
        loss = np.asarray(losses, dtype=np.float64)
        if loss.size >= 2 * w:
            first, final = float(loss[:w].mean()), float(loss[-w:].mean())
            if not final <= first:
                reasons.append(f"final training loss {final:.4g} above the first epoch's {first:.4g}")
    if pred is not None:
        p, y = _as_arrays(pred, target)
        if not np.isfinite(p).all():
            reasons.append("non-finite held-out predictions")
            return reasons
        spread, target_spread = float(p.std()), float(y.std())
        if spread <= CONSTANT_SPREAD * target_spread:
            reasons.append(f"held-out predictions nearly constant (spread {spread:.3g}, targets' {target_spread:.3g})")
        tau = kendall_tau(p, y)
        if not tau > 0:
            reasons.append(f"held-out Kendall tau {tau:.3f} <= 0" if np.isfinite(tau) else "held-out Kendall tau "
                           "undefined (constant predictions)")
    return reasons
