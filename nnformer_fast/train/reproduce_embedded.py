"""``reproduce embedded-latency``: the latency predictor on the embedded default set (ONNX
networks of ten CNN families measured with onnxruntime on one CPU thread,
``nnformer_fast/data/default``), in domain and out of domain:

* ``in-domain`` — a random 20 % of every family's networks held out
  (:meth:`~nnformer_fast.data.LatencyDataset.split_in_domain`), once per split seed;
* ``out-of-domain`` — each family held out in turn, trained on the other nine (NNLQP's
  protocol), once.

NN-Former (the demo's model) and the ridge and GBDT baselines on whole-network features
(:func:`nnformer_fast.baselines.network_features`) train on the same networks; MAPE,
Acc(10 %) and Kendall τ on the held-out records.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .scoring import PREDICTORS, by_device, median_range, run_scores, train_and_score

__all__ = ["EXPERIMENT", "RECIPE", "embedded_latency", "embedded_table", "BASELINE_TEXT"]

EXPERIMENT = "embedded-latency"
#: NN-Former's recipe here: the demo's (model, loss, batches, epochs; precision
#: ``Settings.embedded_precision``, bf16 unless ``--precision`` says otherwise)
RECIPE = dict(model=dict(dim=128, n_layers=2, n_head=4, dropout=0.0, loss="log_mse_mape"), epochs=30, lr=2e-3,
              max_nodes=3072, max_graphs=256)
QUICK_EPOCHS = 4
#: in-domain: the held-out share of every family's networks
TEST_FRACTION = 0.2
BASELINE_TEXT = ("ridge regression and GBDT (`nnformer_fast.baselines`) fitted to log latency on the same "
                 "networks, over log FLOPs, log params, log MACs, log batch size and node count")


def _splits(ds, seeds) -> list[tuple[str, str, int, object, object]]:
    """(group, run, split seed, train, test) of every run: in domain per seed, then each
    family held out."""
    runs = [("in-domain", f"in-domain/split-{k}", k, *ds.split_in_domain(TEST_FRACTION, seed=k)) for k in seeds]
    runs += [(f"out-of-domain: {fam}", f"out-of-domain/{fam}", 0, *ds.split_out_of_domain([fam]))
             for fam in sorted(set(ds.families.tolist()))]
    return runs


def embedded_latency(out: Path, s, data: Optional[str] = None) -> list[dict]:
    """Every run of the experiment (``s``: the reproduction's
    :class:`~nnformer_fast.train.reproduce.Settings`; ``data``: another packed set than the
    embedded default); one record per run, as :func:`~.scoring.train_and_score` returns."""
    from ..baselines import latency_baselines
    from ..data.default import DEFAULT_LATENCY_SET
    from ..data.latency import LatencyDataset

    source = Path(data) if data else DEFAULT_LATENCY_SET
    if not source.is_file():
        raise FileNotFoundError(f"{EXPERIMENT}: latency set not found: {source}")
    ds = LatencyDataset.load(source)
    epochs = int(s.epochs if s.epochs is not None else QUICK_EPOCHS if s.quick else RECIPE["epochs"])
    model_cfg = dict(RECIPE["model"])
    records = []
    for group, run, k, train, test in _splits(ds, s.latency_split_seeds):
        base = latency_baselines(train, test, seed=s.seed, cells=False)
        rec = train_and_score("latency", model_cfg, train, test, epochs=epochs, lr=RECIPE["lr"],
                              batch_graphs=RECIPE["max_graphs"], max_nodes=RECIPE["max_nodes"], s=s,
                              run_dir=out / run, title=run, split_seed=k, baselines=base,
                              precision=s.embedded_precision,
                              extra={"experiment": EXPERIMENT, "run": run, "device": group, "data": str(source),
                                     "target": "latency (ms) of onnxruntime, 1 CPU thread",
                                     "families_train": sorted(set(train.families.tolist())),
                                     "distinct_latencies": int(np.unique(ds.latencies).size)})
        m, b = rec["metrics"], rec["baselines"]
        print(f"{EXPERIMENT} {run}: {len(train)} train, {len(test)} test, {epochs} epochs -> MAPE "
              f"{100 * m['mape']:.2f}% tau {m['tau']:.3f} (ridge {100 * b['ridge']['mape']:.2f}% "
              f"{b['ridge']['tau']:.3f}, gbdt {100 * b['gbdt']['mape']:.2f}% {b['gbdt']['tau']:.3f})  "
              f"({rec['wall_seconds']:.0f} s)" + ("  DIVERGED" if rec["diverged"] else ""), flush=True)
        records.append(rec)
    return records


def embedded_table(records: list[dict]) -> list[str]:
    """Markdown: one row per held-out group (in domain: median (range) over the split seeds;
    out of domain: each family), MAPE, Acc(10 %) and τ of NN-Former and both baselines, the
    best of each metric in bold; then the out-of-domain mean."""
    groups = by_device(records)
    metrics = (("mape", "MAPE %", 100.0, "{:.2f}", min), ("acc@10", "Acc(10%) %", 100.0, "{:.1f}", max),
               ("tau", "τ", 1.0, "{:.3f}", max))
    head = "| held out | train / test | " + " | ".join(f"{label} {name}" for _, label, _, _, _ in metrics
                                                       for name in PREDICTORS.values()) + " | wall s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for group, runs in groups.items():
        cells = []
        for key, _, scale, fmt, pick in metrics:
            scores = {w: scale * run_scores(runs, w, key) for w in PREDICTORS}
            best = pick(float(np.median(v)) for v in scores.values())
            cells += [median_range(v, fmt, float(np.median(v)) == best) for v in scores.values()]
        mark = " ⚠ diverged" if any(r["diverged"] for r in runs) else ""
        lines.append(f"| {group}{mark} | {runs[0]['n_train']} / {runs[0]['n_test']} | " + " | ".join(cells)
                     + f" | {sum(r['wall_seconds'] for r in runs):.0f} |")
    ood = [r for r in records if r["device"].startswith("out-of-domain")]
    if ood:
        lines.append(f"| **mean, out of domain ({len(ood)})** | | " + " | ".join(
            fmt.format(scale * float(np.mean(run_scores(ood, w, key)))) for key, _, scale, fmt, _ in metrics
            for w in PREDICTORS) + " | |")
    seeds = len(groups.get("in-domain", []))
    lines += ["", f"In domain: median (min–max) over {seeds} split seed(s), {round(100 * TEST_FRACTION)} % of every "
                  "family's networks held out (both batch sizes of a network on one side). Out of domain: the family "
                  "held out, trained on the other nine. Bold: the best of the row."]
    return lines
