"""Evaluation metrics of SPEC §6: MAPE, Acc(δ) and Kendall's τ-b.

All functions take predictions and targets as array-likes or tensors of the same length
(any shape, flattened) and return Python floats.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["mape", "acc_within", "kendall_tau", "regression_metrics", "ACC_DELTAS"]

#: δ of the Acc(δ) metrics reported by :func:`regression_metrics`.
ACC_DELTAS = (0.01, 0.05, 0.10)
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


def regression_metrics(pred, target, *, relative: bool = True) -> dict[str, float]:
    """All metrics of SPEC §6 in one dict: ``tau`` and, with ``relative`` (positive targets,
    the latency task), ``mape``, ``acc@1``, ``acc@5``, ``acc@10``; always ``n`` and ``mse``."""
    p, y = _as_arrays(pred, target)
    out = {"n": int(p.size), "mse": float(np.mean((p - y) ** 2)), "tau": kendall_tau(p, y)}
    if relative:
        err = _relative_error(p, y)
        out["mape"] = float(err.mean())
        for d in ACC_DELTAS:
            out[f"acc@{round(d * 100)}"] = float((err <= d + _SLACK).mean())
    return out
