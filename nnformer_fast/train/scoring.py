"""One reproduction run: train a fresh predictor, score it on held-out data beside the
baselines' predictions, and write its files (``metrics.json``, ``predictions.npz``,
``scatter.png``); and the helpers that tabulate such runs' records. Shared by the experiments
of :mod:`.reproduce` and :mod:`.reproduce_embedded`."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["train_and_score", "PREDICTORS", "by_device", "run_scores", "median_range"]

#: the tables' name for each predictor of a run record (NN-Former, then its baselines)
PREDICTORS = {"nnformer": "NN-Former", "ridge": "ridge", "gbdt": "GBDT"}


def train_and_score(task_name: str, model_cfg: dict, train_set, test_set, *, epochs: int, lr: float,
                    batch_graphs: int, s, run_dir: Path, title: str,
                    extra: dict, split_seed: int, seen: Optional[np.ndarray] = None,
                    baselines: Optional[dict] = None, ema: float = 0.0, consistency: bool = False,
                    max_nodes: Optional[int] = None, precision: Optional[str] = None) -> dict:
    """Train a fresh model of ``task_name`` (``accuracy`` or ``latency``) with ``model_cfg`` on
    ``train_set``, predict ``test_set``, write ``run_dir/metrics.json``, ``predictions.npz``
    and ``scatter.png``; returns the run's record (``extra`` merged in). ``s``: the
    reproduction's settings (seed, progress, max_seconds, and ``precision`` unless given).
    Batches hold at most ``batch_graphs`` graphs and ``max_nodes`` nodes (default:
    ``batch_graphs`` of the largest training graph). ``baselines``: {name: (len(test_set),)
    predictions} scored beside the model's; ``seen``: (len(test_set),) bool, test graphs also
    in the training set."""
    from .loop import TrainConfig, evaluate_model, fit
    from .metrics import divergence_reasons, regression_metrics
    from .plots import scatter_plot
    from .tasks import get_task

    t0 = time.perf_counter()
    sizes = get_task(task_name, **model_cfg).sizes(train_set)
    precision = precision or s.precision
    max_nodes = int(max_nodes or batch_graphs * max(int(sizes.max()), 1))
    cfg = TrainConfig(task=task_name, model=dict(model_cfg), epochs=epochs, max_nodes=max_nodes,
                      max_graphs=batch_graphs, lr=lr, warmup=0.05, precision=precision, device="cpu",
                      seed=s.seed, progress=s.progress, max_seconds=s.max_seconds, ema=ema, consistency=consistency)
    result = fit(cfg, train_set=train_set, test_set=None)
    task = get_task(task_name, **model_cfg)
    pred, y, metrics = evaluate_model(result.model, task, test_set, max_nodes=8192, progress=s.progress,
                                      desc=f"{title}: evaluate")
    wall = time.perf_counter() - t0 + float(extra.get("load_seconds", 0.0))
    run_dir.mkdir(parents=True, exist_ok=True)
    baselines = baselines or {}
    record = {**extra, "n_train": len(train_set), "n_test": len(test_set), "epochs": epochs,
              "steps": result.step, "batch_graphs": batch_graphs, "lr": lr, "ema": ema, "consistency": consistency,
              "model": task.model_config,
              "loss": task.loss_config, "precision": precision, "seed": s.seed, "split_seed": split_seed,
              "stopped_early": bool(s.max_seconds is not None and result.throughput["seconds"] > s.max_seconds),
              "train_seconds": result.throughput["seconds"], "graphs_per_s": result.throughput["graphs_per_s"],
              "wall_seconds": wall, "metrics": metrics, "distinct_targets": int(np.unique(y).size),
              "final_train_loss": float(np.mean(result.losses[-10:])) if result.losses else None,
              "baselines": {name: regression_metrics(p, y, relative=task.relative_metrics)
                            for name, p in baselines.items()},
              "diverged": result.divergence + divergence_reasons(pred=pred, target=y)}
    if record["diverged"]:
        print(f"warning: {title} looks diverged: {'; '.join(record['diverged'])}", flush=True)
    if seen is not None:
        from .metrics import kendall_tau

        record["test_graphs_seen_in_train"] = int(seen.sum())
        record["tau_unseen_graphs"] = kendall_tau(pred[~seen], y[~seen]) if (~seen).sum() > 1 else None
    if task_name == "accuracy":
        ok = scatter_plot(100 * y, 100 * pred, run_dir / "scatter.png", xlabel="measured accuracy (%)",
                          ylabel="predicted accuracy (%)", title=f"{title}: tau {metrics['tau']:.3f} "
                          f"({len(y)} test cells)")
    else:
        ok = scatter_plot(y, pred, run_dir / "scatter.png", xlabel="measured latency (ms)",
                          ylabel="predicted latency (ms)", log=True,
                          title=f"{title}: MAPE {100 * metrics['mape']:.1f}%, Acc(10%) "
                                f"{100 * metrics['acc@10']:.0f}%, tau {metrics['tau']:.3f}")
    record["scatter"] = str(run_dir / "scatter.png") if ok else None
    np.savez_compressed(run_dir / "predictions.npz", measured=y, predicted=pred,
                        **{f"predicted_{name}": p for name, p in baselines.items()})
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=1, default=str))
    record["_points"] = (y, pred)  # for the docs figure; dropped before summary.json
    return record


def by_device(records: list[dict]) -> dict[str, list[dict]]:
    """The run records grouped by their ``device`` (a device, or a held-out group), in order."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["device"], []).append(r)
    return groups


def run_scores(runs: list[dict], who: str, key: str) -> np.ndarray:
    """(len(runs),) float: metric ``key`` of predictor ``who`` (a key of ``PREDICTORS``) in each run."""
    return np.array([(r["metrics"] if who == "nnformer" else r["baselines"][who])[key] for r in runs], dtype=float)


def median_range(values: np.ndarray, fmt: str, bold: bool = False) -> str:
    """``median (min–max)`` of ``values``; ``—`` where a value is NaN (τ of constant predictions)."""
    if np.isnan(values).any():
        return "—"
    med = fmt.format(float(np.median(values)))
    med = f"**{med}**" if bold else med
    if len(values) < 2:
        return med
    return f"{med} ({fmt.format(float(values.min()))}–{fmt.format(float(values.max()))})"
