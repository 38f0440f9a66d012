"""Predicted-vs-measured scatter plots (PNG) for the demo and the reproduction runs.

matplotlib is optional: the functions return False (and write nothing) when it is not
installed, so callers can still write their metrics.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["scatter_plot", "scatter_grid"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _subsample(measured, predicted, max_points: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(measured, dtype=np.float64).reshape(-1)
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"scatter plot: {p.size} predictions for {y.size} measurements")
    if y.size > max_points:
        keep = rng.choice(y.size, max_points, replace=False)
        y, p = y[keep], p[keep]
    return y, p


def _panel(ax, y: np.ndarray, p: np.ndarray, *, log: bool, title: Optional[str], point_scale: float,
           title_size: int) -> None:
    """One scatter with the y = x diagonal; marker size and opacity shrink with the count."""
    from matplotlib.ticker import NullFormatter

    n = max(1, y.size)
    size = 10.0 if n <= 500 else 4.0 if n <= 3000 else 2.0
    alpha = 0.7 if n <= 500 else 0.4 if n <= 3000 else 0.25
    ax.scatter(y, p, s=size * point_scale, alpha=alpha, linewidths=0, rasterized=n > 3000)
    both = np.concatenate([y, p])
    if log:
        both = both[both > 0]
    if both.size:
        lo, hi = float(both.min()), float(both.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
        # no labels on log-axis minor ticks: they overlap on narrow ranges
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    if title:
        ax.set_title(title, fontsize=title_size)


def _save(fig, plt, path, dpi: int) -> None:
    try:
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def scatter_plot(measured, predicted, path: str | os.PathLike, *, xlabel: str = "measured", ylabel: str = "predicted",
                 title: Optional[str] = None, log: bool = False, max_points: int = 20000, seed: int = 0,
                 dpi: int = 120) -> bool:
    """Scatter ``predicted`` against ``measured`` with the y = x diagonal; saves a PNG at
    ``path``. ``log``: log-log axes (latencies). Above ``max_points`` a fixed random subset
    is drawn (the title should carry metrics of the full set). Returns False when
    matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return False
    y, p = _subsample(measured, predicted, max_points, np.random.default_rng(seed))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    _panel(ax, y, p, log=log, title=title, point_scale=1.0, title_size=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _save(fig, plt, path, dpi)
    return True


def scatter_grid(panels, path: str | os.PathLike, *, xlabel: str = "measured", ylabel: str = "predicted",
                 log: bool = False, ncols: int = 4, max_points: int = 4000, seed: int = 0, dpi: int = 90) -> bool:
    """Small multiples: one predicted-vs-measured panel per ``(measured, predicted, title)``
    in ``panels``, saved as one PNG (for the docs). False when matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return False
    panels = list(panels)
    if not panels:
        raise ValueError("scatter_grid: no panels")
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, (measured, predicted, title) in zip(axes.flat, panels):
        y, p = _subsample(measured, predicted, max_points, rng)
        _panel(ax, y, p, log=log, title=title, point_scale=0.6, title_size=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.supxlabel(xlabel, fontsize=9)
    fig.supylabel(ylabel, fontsize=9)
    _save(fig, plt, path, dpi)
    return True
