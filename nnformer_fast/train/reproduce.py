"""``nnformer-fast reproduce``: the paper's accuracy and latency experiments on real data.

Experiments (each trains fresh models with fixed seeds and scores them on held-out cells):

* ``nb201-accuracy`` — NAS-Bench-201 (``nb201_accuracy.csv``, CIFAR-10 test accuracy after
  200 epochs): train on 1 %, 5 % and 10 % of the 15625 cells (``--fractions``), and on 10 % in
  the authors' 8-node encoding (``--reference-fractions``); Kendall τ, Spearman ρ and the
  top-k metrics on all the remaining cells.
* ``nb101-accuracy`` — NASLib's 500-cell NAS-Bench-101 subset (``nb101_naslib_500.json``,
  CIFAR-10 validation accuracy): train on 100 cells, the same metrics on the other 400.

Both accuracy experiments train once per split seed (``--split-seeds``, default 0, 1, 2), with
the ridge and GBDT baselines fitted on the same cells; their tables show median and range.
* ``nb201-latency`` — NAS-Bench-201 latency of every device file in ``nb201_latency/``
  (``--devices`` to filter) or of a user's own CSV files (``--latency-csv``): for each split
  seed (``--split-seeds``), train on 10 % of the cells, MAPE, Acc(δ) and τ on the rest, with
  the ridge and GBDT baselines of :mod:`nnformer_fast.baselines` fitted on the same cells.
* ``embedded-latency`` — the embedded default latency set (ONNX networks of ten CNN families,
  onnxruntime on one CPU thread): in domain (20 % of every family held out, per split seed)
  and out of domain (each family held out in turn), beside ridge and GBDT on whole-network
  features (:mod:`.reproduce_embedded`).

Every run writes ``<out>/<experiment>/<run>/metrics.json`` and a predicted-vs-measured
``scatter.png`` next to it, and ``<out>/<experiment>/summary.json``; the tables go to a
generated section of ``docs/REPRODUCTION.md`` (between markers, so re-runs replace it). A run
that looks diverged (:func:`~nnformer_fast.train.metrics.divergence_reasons`) gets a warning
line, ``"diverged"`` reasons in its ``metrics.json`` and a mark in the table.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .._atomic import writable_folder
from .._cli_args import int_at_least, pick_threads
from .metrics import PRECISION_AT_TOP_KEY
from .parallel_runs import run_calls, usable_cpus
from .reproduce_embedded import BASELINE_TEXT as EMBEDDED_BASELINE_TEXT
from .reproduce_embedded import EXPERIMENT as EMBEDDED
from .reproduce_embedded import embedded_latency, embedded_table
from .scoring import PREDICTORS
from .scoring import by_device as _by_device
from .scoring import median_range as _med_range
from .scoring import run_scores as _scores
from .scoring import train_and_score as _train_and_score

__all__ = ["EXPERIMENTS", "KNOWN_EXPERIMENTS", "PAPER", "Settings", "run_experiment", "reproduce", "update_markdown",
           "find_devices", "hardware_info", "register_reproduce", "section_markers"]

#: the paper's benchmarks (what ``all`` runs), read from the benchmark data folder
EXPERIMENTS = ("nb201-accuracy", "nb101-accuracy", "nb201-latency")
#: the experiments whose runs ``--jobs`` trains side by side
ACCURACY_EXPERIMENTS = ("nb201-accuracy", "nb101-accuracy")
#: every experiment: the benchmarks, and the embedded set shipped in the package
KNOWN_EXPERIMENTS = EXPERIMENTS + (EMBEDDED,)
#: (50 % costs as much as 10 % and is not in the paper's comparison: ``--fractions 1%,5%,10%,50%`` adds it)
DEFAULT_FRACTIONS = (0.01, 0.05, 0.10)
#: files (under the data folder) each experiment reads
DATA_FILES = {"nb201-accuracy": "nb201_accuracy.csv", "nb101-accuracy": "nb101_naslib_500.json",
              "nb201-latency": "nb201_latency"}
#: published NN-Former numbers (CVPR 2025), for the tables; see docs/REPRODUCTION.md for
#: how their protocols differ from ours
PAPER = {"nb101-accuracy": {"tau": 0.877}, "nb201-accuracy": {"tau": 0.89}, "nnlqp-in-domain": {"mape": 0.0111}}
#: nb201_latency/*.pt files that are not devices
NON_DEVICE_FILES = ("str_arch2idx", "hardware_embedding_index")


# ---------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """Model size, schedule and evaluation of a reproduction (``full`` or ``quick``)."""

    quick: bool = False
    #: the accuracy profile (chosen over split seeds 0, 1, 2: docs/REPRODUCTION.md, "Choosing the accuracy defaults")
    accuracy_model: dict = field(default_factory=lambda: dict(depth=6, dim=192, n_head=4, dropout=0.1))
    #: runs with fewer training cells than ``small_train_cells`` (NB201 1 %, NB101) train this
    #: one instead: on 100-156 cells the larger model scored lower, at 2.5x the cost
    small_accuracy_model: dict = field(default_factory=lambda: dict(depth=4, dim=128, n_head=4, dropout=0.1))
    small_train_cells: int = 500
    latency_model: dict = field(default_factory=lambda: dict(dim=64, n_layers=2, n_head=4, dropout=0.0))
    #: accuracy runs: epochs = clip(ceil(accuracy_samples / n_train), min_epochs, max_epochs)
    accuracy_samples: int = 203060
    accuracy_min_epochs: int = 20
    accuracy_max_epochs: int = 600
    nb101_epochs: int = 300
    #: EMA decay of the accuracy models' weights (0 = off) and the consistency term (twice the compute)
    accuracy_ema: float = 0.0
    accuracy_consistency: bool = False
    latency_epochs: int = 30
    epochs: Optional[int] = None           # overrides every experiment's epochs
    accuracy_lr: float = 1e-3
    latency_lr: float = 2e-3
    latency_batch: int = 32
    #: the latency loss (``LatencyTask``): log MSE + MAPE trains on devices whose latencies span
    #: four orders of magnitude, where the reference's relative MSE collapses to 0 (docs/REPRODUCTION.md)
    latency_loss: str = "log_mse_mape"
    #: nb201-latency trains every device once per split seed; tables show median and range
    latency_split_seeds: tuple = (0, 1, 2)
    #: nb201-accuracy and nb101-accuracy train once per split seed too
    accuracy_split_seeds: tuple = (0, 1, 2)
    #: nb201-accuracy fractions that also train on the authors' 8-node encoding ("reference")
    reference_fractions: tuple = (0.10,)
    precision: str = "fp32"                # bf16 rounds accuracies near 0.9 to steps of 0.004: ties hurt τ
    #: embedded-latency trains like the demo (fp32 cost 4x the CPU time there); --precision sets both
    embedded_precision: str = "bf16"
    max_test: Optional[int] = None         # score on a seeded random subset of at most this many
    max_seconds: Optional[float] = None    # per-run training time cap (a safety net)
    fractions: tuple = DEFAULT_FRACTIONS
    nb101_train: int = 100
    latency_train_fraction: float = 0.10
    seed: int = 0
    #: torch threads of each training run (None: a probe picks 1 or 2 with ``jobs`` = 1, else
    #: the CPUs shared out among the jobs)
    threads: Optional[int] = None
    #: accuracy runs trained at a time, each in its own process (None: one per CPU; 1: one after
    #: another in this process). Small models gain little from a second thread.
    jobs: Optional[int] = None
    #: training progress bars on stderr (not a setting of the results: left out of ``to_dict``)
    progress: bool = True

    @classmethod
    def quick_profile(cls, **overrides) -> "Settings":
        base = dict(quick=True, accuracy_model=dict(depth=2, dim=64, n_head=4, dropout=0.1),
                    small_accuracy_model=dict(depth=2, dim=64, n_head=4, dropout=0.1),
                    latency_model=dict(dim=32, n_layers=1, n_head=4, dropout=0.0), accuracy_samples=8000,
                    accuracy_min_epochs=3, accuracy_max_epochs=60, nb101_epochs=60, latency_epochs=8,
                    max_test=2000, latency_split_seeds=(0,), accuracy_split_seeds=(0,), reference_fractions=())
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("progress")
        return d

    def check(self) -> None:
        """Raise ``ValueError`` for counts out of range (before any data is read)."""
        for name in ("nb101_train", "max_test", "threads", "jobs", "epochs"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        for f in (*self.fractions, *self.reference_fractions):
            if not 0 < f < 1:
                raise ValueError(f"nb201-accuracy: fraction {f} must lie in (0, 1)")
        for what, seeds in (("nb201-latency", self.latency_split_seeds), ("accuracy", self.accuracy_split_seeds)):
            if not seeds or len(set(seeds)) != len(seeds):
                raise ValueError(f"{what}: split seeds must be distinct and at least one, got {list(seeds)}")
        if not 0 <= self.accuracy_ema < 1:
            raise ValueError(f"accuracy_ema must lie in [0, 1), got {self.accuracy_ema}")


def merge_model_options(base: dict, user: dict) -> dict:
    """``base`` updated with ``user``; ``depth`` (all blocks) and ``depths`` (per stage) name
    the same thing, so whichever the user gives replaces the other in ``base``."""
    base = dict(base)
    if "depths" in user:
        base.pop("depth", None)
    if "depth" in user:
        base.pop("depths", None)
    return {**base, **user}


def _batch_graphs(n_train: int) -> int:
    """Graphs per accuracy batch: ~8 steps an epoch on small sets, at most 128 (the paper's)."""
    return int(min(128, max(16, n_train // 8)))


def _accuracy_epochs(s: Settings, n_train: int) -> int:
    if s.epochs is not None:
        return int(s.epochs)
    return int(min(s.accuracy_max_epochs, max(s.accuracy_min_epochs, math.ceil(s.accuracy_samples / n_train))))


# ---------------------------------------------------------------------------- environment
def hardware_info() -> dict:
    """CPU model (from /proc/cpuinfo), logical CPUs, torch threads and versions."""
    import torch

    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor() or "unknown", "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "os": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def resolve_data_dir(data_dir: Optional[str | os.PathLike]) -> Path:
    """``data_dir``, else ``$NNFORMER_FAST_DATA``, else ``../shared/data``; must exist."""
    from ..data.cells import default_data_dir

    if data_dir is None:
        found = default_data_dir()
        if found is None:
            raise FileNotFoundError("no data folder: pass --data-dir DIR or set NNFORMER_FAST_DATA "
                                    "(see ../shared/data/README.md for the files)")
        data_dir = found
    path = Path(data_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"data folder not found: {path}")
    return path


def _need(data_dir: Path, experiment: str) -> Path:
    p = data_dir / DATA_FILES[experiment]
    if not p.exists():
        raise FileNotFoundError(f"{experiment}: {p} not found (the data folder must hold {DATA_FILES[experiment]})")
    return p


def find_devices(latency_dir: Path) -> list[str]:
    """Devices of every ``<device>.pt`` file in ``nb201_latency/`` (known devices only)."""
    from ..data.latency import NB201_DEVICES

    stems = sorted(p.stem for p in Path(latency_dir).glob("*.pt") if p.stem not in NON_DEVICE_FILES)
    unknown = [d for d in stems if d not in NB201_DEVICES]
    if unknown:
        print(f"nb201-latency: skipping files of unknown devices: {', '.join(unknown)}", file=sys.stderr)
    devices = [d for d in NB201_DEVICES if d in stems]  # the loader's (paper's) order
    if not devices:
        raise FileNotFoundError(f"{latency_dir}: no NAS-Bench-201 device files (<device>.pt)")
    return devices


# ---------------------------------------------------------------------------- one run
def _subsample(n: int, limit: Optional[int], seed: int) -> np.ndarray:
    idx = np.arange(n)
    if limit is not None and n > limit:
        idx = np.sort(np.random.default_rng(seed + 7).choice(n, int(limit), replace=False))
    return idx


def _graph_keys(cells) -> list:
    """A hashable key of each cell's pruned graph (ops and adjacency)."""
    return [(np.asarray(c.ops).tobytes(), np.asarray(c.adjacency).tobytes()) for c in cells.cells]


def _largest_group(cells) -> int:
    from collections import Counter

    return max(Counter(_graph_keys(cells)).values())


def _seen_in_train(train, test) -> np.ndarray:
    """(n_test,) bool: test cells whose pruned graph also occurs in the training set
    (benchmarks hold isomorphic duplicates: different specs, same graph, separately trained
    accuracies)."""
    seen = set(_graph_keys(train))
    return np.array([k in seen for k in _graph_keys(test)], dtype=bool)


def _accuracy_baselines(features: np.ndarray, targets: np.ndarray, train_idx, test_idx, seed: int) -> dict:
    """{name: predicted accuracies of the ``test_idx`` cells} of every baseline fitted to the
    ``train_idx`` cells (features (M, F), targets (M,) of all cells)."""
    from ..baselines import BASELINES, fit_predict

    return {name: fit_predict(name, features[train_idx], targets[train_idx], features[test_idx], seed)
            for name in BASELINES}


def _log(msg: str) -> None:
    print(msg, flush=True)


def _unique_fractions(fractions) -> list[float]:
    """``fractions`` without repeats (``0.001`` and ``0.1%`` name the same run), order kept."""
    seen: dict[str, float] = {}
    for f in fractions:
        seen.setdefault(f"{100 * f:g}", float(f))
    return list(seen.values())


# ---------------------------------------------------------------------------- experiments
def _accuracy_run(experiment: str, cells, graphs, features: np.ndarray, perm: np.ndarray, n_train: int,
                  split_seed: int, *, group: str, title: str, epochs: int, s: Settings, out: Path,
                  extra: dict) -> dict:
    """Train on the first ``n_train`` cells of ``perm`` and score on the rest (run
    ``<group>/split-<split_seed>``), beside the baselines on ``features``; the record.
    ``graphs``: the same cells pruned (which test graphs occur in training)."""
    rest = perm[n_train:]
    test_idx = rest[_subsample(rest.size, s.max_test, split_seed)]
    train_idx = perm[:n_train]
    run = f"{group}/split-{split_seed}"
    rec = _train_and_score("accuracy", _accuracy_model(s, n_train), cells.subset(train_idx), cells.subset(test_idx),
                           epochs=epochs, lr=s.accuracy_lr, batch_graphs=_batch_graphs(n_train), s=s,
                           run_dir=out / run, title=f"{title}, split {split_seed}", split_seed=split_seed,
                           extra={"experiment": experiment, "run": run, "group": group, **extra,
                                  "n_rest": int(rest.size)},
                           seen=_seen_in_train(graphs.subset(train_idx), graphs.subset(test_idx)),
                           baselines=_accuracy_baselines(features, cells.targets, train_idx, test_idx, s.seed),
                           ema=s.accuracy_ema, consistency=s.accuracy_consistency)
    m = rec["metrics"]
    _log(f"{experiment} {run}: {n_train} train, {rec['n_test']} test, {epochs} epochs -> tau {m['tau']:.4f} "
         f"rho {m['rho']:.4f}, best cell's true rank {m['best_rank']}, {PRECISION_AT_TOP_KEY} "
         f"{m[PRECISION_AT_TOP_KEY]:.2f} (tau ridge {_baseline_tau(rec, 'ridge')}, gbdt {_baseline_tau(rec, 'gbdt')})"
         f"  ({rec['wall_seconds']:.0f} s)" + ("  DIVERGED" if rec["diverged"] else ""))
    return rec


def _nb201_accuracy(data_dir: Path, out: Path, s: Settings) -> list[dict]:
    """Every fraction on the pruned cells and every reference fraction on the authors'
    8-node cells, each over every split seed (a fraction's split seed picks the same
    training cells in both encodings)."""
    from ..baselines import nb201_edge_features
    from ..data.cells import load_nb201_csv
    from .tasks import CellArrays

    path = _need(data_dir, "nb201-accuracy")
    s.check()
    pruned = CellArrays(load_nb201_csv(path, "cifar10"))
    encodings = {"pruned": pruned}
    runs = [(f, "pruned") for f in _unique_fractions(s.fractions)]
    if s.reference_fractions:
        encodings["reference"] = CellArrays(load_nb201_csv(path, "cifar10", prune=False))
        runs += [(f, "reference") for f in _unique_fractions(s.reference_fractions)]
    n = len(pruned)
    distinct = len(set(_graph_keys(pruned)))
    features = nb201_edge_features([c.key for c in pruned.cells])  # the six edge ops, pruned or not
    calls = []
    for f, encoding in runs:
        n_train = max(1, min(n - 1, int(round(f * n))))
        group = f"train-{100 * f:g}pct" + ("" if encoding == "pruned" else f"-{encoding}")
        for k in s.accuracy_split_seeds:
            perm = np.random.default_rng(k).permutation(n)
            calls.append(_accuracy_call(
                "nb201-accuracy", encodings[encoding], pruned, features, perm, n_train, k, group=group,
                title=f"NB201 {100 * f:g}% train ({encoding})", epochs=_accuracy_epochs(s, n_train), s=s, out=out,
                extra={"data": str(path), "target": "cifar10 test accuracy (200 epochs)", "fraction": f,
                       "encoding": encoding, "n_cells": n, "n_distinct_graphs": distinct}))
    return _run_accuracy_calls(calls, s)


def _nb101_accuracy(data_dir: Path, out: Path, s: Settings) -> list[dict]:
    from ..baselines import cell_features
    from ..data.cells import load_nb101_naslib
    from .tasks import CellArrays

    path = _need(data_dir, "nb101-accuracy")
    cells = CellArrays(load_nb101_naslib(path))
    n = len(cells)
    if n <= s.nb101_train:
        raise ValueError(f"nb101-accuracy: {path} holds {n} cells; need more than the {s.nb101_train} training cells")
    features = cell_features(cells, int(cells.num_nodes.max()))
    epochs = int(s.epochs if s.epochs is not None else s.nb101_epochs)
    extra = {"data": str(path), "target": "cifar10 validation accuracy (NASLib)", "n_cells": n,
             "n_distinct_graphs": len(set(_graph_keys(cells))), "largest_duplicate_group": _largest_group(cells)}
    return _run_accuracy_calls([_accuracy_call("nb101-accuracy", cells, cells, features,
                                               np.random.default_rng(k).permutation(n), s.nb101_train, k,
                                               group=f"train-{s.nb101_train}", title=f"NB101 {s.nb101_train} train",
                                               epochs=epochs, s=s, out=out, extra=extra)
                                for k in s.accuracy_split_seeds], s)


def _accuracy_model(s: Settings, n_train: int) -> dict:
    """The accuracy profile a run on ``n_train`` cells trains (the small one under
    ``s.small_train_cells``)."""
    return s.accuracy_model if n_train >= s.small_train_cells else s.small_accuracy_model


def _accuracy_call(experiment: str, cells, graphs, features: np.ndarray, perm: np.ndarray, n_train: int,
                   split_seed: int, **kwargs) -> tuple:
    """One :func:`_accuracy_run` as ``(call, cost)`` for :func:`run_calls`; cost ~ epochs x
    training tokens x depth x dim² of the run's model."""
    from .tasks import AccuracyTask

    model = _accuracy_model(kwargs["s"], n_train)
    tokens = AccuracyTask.sizes(cells)[perm[:n_train]].sum()
    call = (_accuracy_run, (experiment, cells, graphs, features, perm, n_train, split_seed), kwargs)
    depth = model["depth"] if "depth" in model else sum(model["depths"])
    return call, float(kwargs["epochs"] * tokens * depth * model["dim"] ** 2)


def _run_threads(s: Settings) -> int:
    """Torch threads of each of ``s.jobs`` runs at a time: ``s.threads``, else the usable CPUs
    shared out."""
    return int(s.threads or max(1, usable_cpus() // max(1, s.jobs or 1)))


def _run_accuracy_calls(calls_costs: list, s: Settings) -> list[dict]:
    """The records of the accuracy runs (``(call, cost)`` pairs of :func:`_accuracy_call`),
    ``s.jobs`` at a time, longest first; without progress bars when side by side."""
    jobs = int(s.jobs or 1)
    calls = [call for call, _ in calls_costs]
    if jobs > 1:
        calls = [(fn, args, {**kw, "s": dataclasses.replace(kw["s"], progress=False)}) for fn, args, kw in calls]
    return run_calls(calls, jobs=jobs, threads=_run_threads(s), costs=[c for _, c in calls_costs])


def _latency_sources(data_dir: Optional[Path], devices: Optional[Sequence[str]], latency_csv: Sequence,
                     csv_batch_size: int) -> list[tuple]:
    """(name, data path, loader) of every latency run: the CSV files first (a bad row fails
    before any training), then the HELP devices (all, or ``devices``; none when only CSV
    files are given)."""
    from ..data.latency import load_nb201_latency, load_nb201_latency_csv

    sources = [(Path(f).stem, str(f), lambda f=f: load_nb201_latency_csv(f, csv_batch_size)) for f in latency_csv]
    if devices or not latency_csv:
        root = _need(data_dir, "nb201-latency")
        available = find_devices(root)
        if devices:
            unknown = [d for d in devices if d not in available]
            if unknown:
                raise ValueError(f"nb201-latency: unknown device(s) {', '.join(unknown)}; the files in {root} are "
                                 f"for: {', '.join(available)}")
        for dev in dict.fromkeys(devices) if devices else available:
            sources.append((dev, str(root / f"{dev}.pt"), lambda dev=dev: load_nb201_latency(dev, root)))
    names = [name for name, _, _ in sources]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"nb201-latency: two runs would be named {', '.join(repeated)} (a CSV file's stem names its "
                         "run); rename the file")
    return sources


def _nb201_latency(data_dir: Optional[Path], out: Path, s: Settings, devices: Optional[Sequence[str]],
                   latency_csv: Sequence = (), csv_batch_size: int = 1) -> list[dict]:
    from ..baselines import latency_baselines

    epochs = int(s.epochs if s.epochs is not None else s.latency_epochs)
    model_cfg = {"loss": s.latency_loss, **s.latency_model}  # --latency-model loss=... wins
    records = []
    for name, where, load in _latency_sources(data_dir, devices, latency_csv, csv_batch_size):
        t0 = time.perf_counter()
        ds = load()
        load_s = time.perf_counter() - t0
        n = len(ds)
        if n < 2:
            raise ValueError(f"nb201-latency: {where} holds {n} latency; need at least 2 (train and test)")
        distinct = int(np.unique(ds.latencies).size)
        for k in s.latency_split_seeds:
            perm = np.random.default_rng(k).permutation(n)
            n_train = max(1, min(n - 1, int(round(s.latency_train_fraction * n))))
            rest = perm[n_train:]
            train = ds.subset(np.sort(perm[:n_train]))
            test = ds.subset(np.sort(rest[_subsample(rest.size, s.max_test, k)]))
            t1 = time.perf_counter()
            base = latency_baselines(train, test, seed=s.seed)
            base_s = time.perf_counter() - t1
            run = f"{name}/split-{k}"
            rec = _train_and_score("latency", model_cfg, train, test, epochs=epochs, lr=s.latency_lr,
                                   batch_graphs=s.latency_batch, s=s, run_dir=out / run, title=run,
                                   split_seed=k, baselines=base,
                                   extra={"experiment": "nb201-latency", "run": run, "device": name, "data": where,
                                          "target": "latency (ms)", "n_rest": int(rest.size), "n_cells": n,
                                          "distinct_latencies": distinct, "baseline_seconds": base_s,
                                          "load_seconds": load_s if k == s.latency_split_seeds[0] else 0.0})
            m, b = rec["metrics"], rec["baselines"]
            _log(f"nb201-latency {run}: {n_train} train, {rec['n_test']} test, {epochs} epochs -> tau {m['tau']:.3f} "
                 f"MAPE {100 * m['mape']:.2f}% (ridge {b['ridge']['tau']:.3f} {100 * b['ridge']['mape']:.2f}%, gbdt "
                 f"{b['gbdt']['tau']:.3f} {100 * b['gbdt']['mape']:.2f}%)  ({rec['wall_seconds']:.0f} s)"
                 + ("  DIVERGED" if rec["diverged"] else ""))
            records.append(rec)
    return records


def run_experiment(experiment: str, data_dir: Optional[Path], out: Path, s: Settings, *,
                   devices: Optional[Sequence[str]] = None, latency_csv: Sequence = (),
                   csv_batch_size: int = 1, embedded_set: Optional[str] = None) -> list[dict]:
    if experiment == "nb201-accuracy":
        return _nb201_accuracy(data_dir, out, s)
    if experiment == "nb101-accuracy":
        return _nb101_accuracy(data_dir, out, s)
    if experiment == "nb201-latency":
        return _nb201_latency(data_dir, out, s, devices, latency_csv, csv_batch_size)
    if experiment == EMBEDDED:
        return embedded_latency(out, s, embedded_set)
    raise ValueError(f"unknown experiment {experiment!r}; choose from {', '.join(KNOWN_EXPERIMENTS)}")


# ---------------------------------------------------------------------------- markdown
def section_markers(experiment: str) -> tuple[str, str]:
    return (f"<!-- BEGIN GENERATED: reproduce {experiment} (nnformer-fast reproduce rewrites this section) -->",
            f"<!-- END GENERATED: reproduce {experiment} -->")


_DOC_TEMPLATE = """# Reproduction of the NN-Former accuracy and latency experiments

Generated by `nnformer-fast reproduce`; each experiment's section below is rewritten by its
next run.

""" + "\n\n".join(f"{section_markers(e)[0]}\n_{e}: not run yet._\n{section_markers(e)[1]}" for e in EXPERIMENTS) + "\n"


def update_markdown(path: str | os.PathLike, experiment: str, body: str) -> Path:
    """Replace the generated section of ``experiment`` in the markdown file at ``path`` with
    ``body`` (create the file from a template, or append the section, when absent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):  # two reproduce processes may finish at the same time
        return _update_markdown(path, experiment, body)


class _locked:
    """An exclusive ``flock`` on a folder (no-op where fcntl is missing)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self):
        self.fd = os.open(self.folder, os.O_RDONLY)
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover
            pass
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock
        return False


def _update_markdown(path: Path, experiment: str, body: str) -> Path:
    begin, end = section_markers(experiment)
    text = path.read_text() if path.exists() else _DOC_TEMPLATE
    block = f"{begin}\n{body.rstrip()}\n{end}"
    i = text.find(begin)
    if i >= 0:
        j = text.find(end, i)
        if j < 0:
            raise ValueError(f"{path}: the generated section of {experiment} has no end marker {end!r}")
        text = text[:i] + block + text[j + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _f(x, digits=3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _model_text(cfg: dict, task: str) -> str:
    if task == "accuracy":
        return f"NNFormer depth {cfg['depths'][0]}, dim {cfg['dim']}, {cfg['n_head']} heads, dropout {cfg['dropout']}"
    return f"NNFormerLatency {cfg['n_layers']} layer(s), dim {cfg['dim']}, {cfg['n_head']} heads, dropout {cfg['dropout']}"


def _epochs_text(records: list[dict]) -> str:
    """``N epochs`` when every run trained as long, else where the table gives them."""
    epochs = {r["epochs"] for r in records}
    return f"{epochs.pop()} epochs" if len(epochs) == 1 else "epochs by row (table)"


def _models_text(records: list[dict], task: str) -> str:
    """The model of the runs; where they differ (the small accuracy profile), each with its runs."""
    models: dict[str, dict] = {}
    for r in records:
        models.setdefault(_model_text(r["model"], task), {})[r.get("group", r["run"])] = None
    if len(models) == 1:
        return next(iter(models))
    return "; ".join(f"{m} ({', '.join(runs)})" for m, runs in models.items())


def _batch_text(records: list[dict]) -> str:
    sizes = sorted({int(r["batch_graphs"]) for r in records})
    if len(sizes) == 1:
        return str(sizes[0])
    by_run = {r.get("group", r["run"]): r["batch_graphs"] for r in records}
    return f"{sizes[0]}–{sizes[-1]} (by run: " + ", ".join(f"{run} {b}" for run, b in by_run.items()) + ")"


def render_section(experiment: str, records: list[dict], info: dict) -> str:
    """The markdown of one experiment's generated section."""
    s, hw = info["settings"], info["hardware"]
    lines = [f"### `{experiment}`", ""]
    if s["quick"]:
        lines += ["**Quick profile (`--quick`): small models, few epochs, test sets subsampled — a smoke run, "
                  "not a reproduction.**", ""]
    if experiment in ("nb201-accuracy", "nb101-accuracy"):
        lines += _accuracy_table(experiment, records)
    elif experiment == EMBEDDED:
        lines += embedded_table(records)
    else:
        lines += _latency_table(records)
    r0 = records[0] if records else None
    if info.get("figure"):
        lines += ["", f"![predicted vs measured, {experiment}]({info['figure']})"]
    lines += [""]
    if r0 is not None:
        task = "accuracy" if experiment.endswith("accuracy") else "latency"
        seeds = ", ".join(str(k) for k in dict.fromkeys(r["split_seed"] for r in records))
        loss = f", {LOSS_TEXT[r0['loss']['loss']]}" if task == "latency" and r0.get("loss") else ""
        if r0.get("ema"):
            loss += f", EMA of the weights (decay {r0['ema']:g})"
        if r0.get("consistency"):
            loss += ", consistency term"
        lines.append(f"- model: {_models_text(records, task)}{loss}; AdamW lr {r0['lr']:g}, 5 % warm-up, cosine "
                     f"decay, {r0['precision']}, batch ≤ {_batch_text(records)} graphs, {_epochs_text(records)}; "
                     f"seed {r0['seed']}, split seed{'s' if ',' in seeds else ''} {seeds}")
        if experiment == EMBEDDED:
            lines.append(f"- baselines: {EMBEDDED_BASELINE_TEXT}")
        elif task == "latency":
            lines.append(f"- baselines ({BASELINE_TEXT}), fitted to log latency on the same training cells: "
                         f"{_baseline_text()}")
        where = ("nb201_latency/<device>.pt" + (" and " + ", ".join(sorted({Path(r["data"]).name for r in records
                                                                             if r["data"].endswith(".csv")}))
                                                   if any(r["data"].endswith(".csv") for r in records) else "")
                 if experiment == "nb201-latency" else Path(r0["data"]).name)
        lines.append(f"- target: {r0['target']}; data: `{where}`")
    threads = (f"{info['jobs']} runs at a time, {info['run_threads']} torch thread(s) each"
               if info.get("jobs", 1) > 1 else f"{hw['torch_threads']} torch thread(s)")
    lines += [f"- hardware: {hw['cpu']} ({hw['logical_cpus']} logical CPUs, {threads}), torch {hw['torch']}, "
              f"CPU only",
              f"- wall time: {info['wall_seconds']:.0f} s for the experiment ({info['finished']} UTC)",
              f"- command: `{info['command']}`",
              f"- per-run metrics and scatter plots: `{info['out']}/<run>/metrics.json`, `scatter.png`"]
    return "\n".join(lines)


#: how the accuracy tables name each NAS-Bench-201 encoding
ENCODING_TEXT = {"pruned": "pruned", "reference": "authors' 8-node"}


def _accuracy_table(experiment: str, records: list[dict]) -> list[str]:
    """The table of an accuracy experiment: one row per training set (fraction and encoding,
    or NB101 training cells), median (range) over the split seeds of NN-Former and the
    baselines; bold: the best median τ of the row."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    who = list(PREDICTORS)
    nb201 = experiment == "nb201-accuracy"
    head = (("| train fraction | encoding | " if nb201 else "| ") + "train cells | test cells | epochs | "
            + " | ".join(f"τ {PREDICTORS[w]}" for w in who) + " | ρ NN-Former | τ NN-Former, unseen graphs ³ | "
            "best cell's true rank ⁵ (" + " / ".join(PREDICTORS[w] for w in who) + f") | precision@top 1 % ⁵ ("
            + " / ".join(PREDICTORS[w] for w in who) + ") | paper τ | train s | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    wins = 0
    for runs in groups.values():
        r0 = runs[0]
        med = {w: float(np.median(_scores(runs, w, "tau"))) for w in who}
        wins += all(med["nnformer"] > med[w] for w in who[1:])
        best = np.nanmax(list(med.values()))
        taus = [_med_range(_scores(runs, w, "tau"), "{:.3f}", med[w] == best) for w in who]
        unseen = np.array([np.nan if r["tau_unseen_graphs"] is None else r["tau_unseen_graphs"] for r in runs])
        ranks = " / ".join(f"{np.median(_scores(runs, w, 'best_rank')):g}" for w in who)
        prec = " / ".join(f"{100 * np.median(_scores(runs, w, PRECISION_AT_TOP_KEY)):.0f} %" for w in who)
        if nb201:
            paper = f"{PAPER[experiment]['tau']} ¹" if abs(r0["fraction"] - 0.10) < 1e-9 else "—"
            first = f"| {100 * r0['fraction']:g} % | {ENCODING_TEXT[r0['encoding']]} | "
        else:
            paper, first = f"{PAPER[experiment]['tau']} ²", "| "
        rho = _med_range(_scores(runs, "nnformer", "rho"), "{:.3f}")
        lines.append(first + f"{r0['n_train']} | {r0['n_test']} of {r0['n_rest']} | {r0['epochs']} | "
                     + " | ".join(taus) + f" | {rho} | {_med_range(unseen, '{:.3f}')} | {ranks} | {prec} | {paper} | "
                     f"{np.median([r['train_seconds'] for r in runs]):.0f} | "
                     f"{sum(r['wall_seconds'] for r in runs):.0f} |")
    seeds = ", ".join(str(k) for k in dict.fromkeys(r["split_seed"] for r in records))
    r0 = records[0] if records else {}
    lines += ["", f"Each cell: the median over split seeds {seeds}, (min–max) over them; bold: the best median τ "
                  "of the row; train s: the median run, wall s: all the row's runs. NN-Former's median τ is above "
                  f"both baselines' in {wins} of the {len(groups)} rows."]
    diverged = [r for r in records if r["diverged"]]
    lines.append("No run diverged." if not diverged else "Diverged runs: " + "; ".join(
        f"{r['run']} ({', '.join(r['diverged'])})" for r in diverged) + ".")
    if nb201:
        lines += ["", f"¹ The paper's NAS-Bench-201 τ ({PAPER[experiment]['tau']}) comes from the authors' own "
                      "split, target and encoding (see the notes); it is placed beside our 10 % rows, the closest "
                      "setting, not an equal one.",
                  "", f"³ The {r0.get('n_cells', '?')} cells prune to {r0.get('n_distinct_graphs', '?')} distinct "
                      "graphs (isomorphic arch strings, trained separately, so their accuracies differ); τ on the "
                      "test cells whose pruned graph is not that of a training cell."]
    else:
        lines += ["", "² Paper: 4236 training cells (1 % of NAS-Bench-101), tested on the rest of the benchmark; "
                      f"ours: {r0.get('n_train', '?')} training cells of a {r0.get('n_cells', '?')}-cell subset. Not "
                      "the same task (see the notes).",
                  "", f"³ The {r0.get('n_cells', '?')} cells prune to {r0.get('n_distinct_graphs', '?')} distinct "
                      "graphs (NASLib sampled unpruned specs; the most repeated graph occurs "
                      f"{r0.get('largest_duplicate_group', '?')} times); τ on the test cells whose graph is not that "
                      "of a training cell."]
    lines += ["", f"⁴ {ACCURACY_BASELINE_TEXT[experiment]}",
              "", "⁵ Median over the split seeds. Best cell's true rank: the rank among the test cells (1 = the most "
                  "accurate) of the cell the predictor ranks first. Precision@top 1 %: the share of the predictor's "
                  "top 1 % (k = ⌈test cells / 100⌉) that is in the true top 1 %."]
    return lines


ACCURACY_BASELINE_TEXT = {
    "nb201-accuracy": "Ridge regression and GBDT (`nnformer_fast.baselines`) fitted to the accuracy of the same "
                      "training cells, on the one-hot of the six edge ops (30 numbers).",
    "nb101-accuracy": "Ridge regression and GBDT (`nnformer_fast.baselines`) fitted to the accuracy of the same "
                      "training cells, on the one-hot of the op at each node and the adjacency's upper triangle.",
}


def _baseline_tau(record: dict, name: str) -> str:
    return _f(record.get("baselines", {}).get(name, {}).get("tau"))


#: how the tables name each latency loss
LOSS_TEXT = {"log_mse_mape": "loss MSE of log latency + MAPE", "log_mse": "loss MSE of log latency",
             "relative_mse": "loss relative MSE (the reference's)"}
BASELINE_TEXT = "`nnformer_fast.baselines`"
#: devices of the mean-MAPE summary row (GPUs and server CPUs) and of the "enough distinct
#: latencies" rows (eyeriss, fpga and the four phones of the HELP subset report a few dozen
#: distinct values, so Kendall τ there mostly counts ties)
GPU_CPU_PREFIXES = ("1080ti_", "2080ti_", "titanx_", "titanxp_", "titan_rtx_", "gold_", "silver_")
MIN_DISTINCT = 1000


def _baseline_text() -> str:
    from ..baselines import RIDGE_ALPHAS

    return (f"ridge regression (numpy, closed form, penalty by 5-fold CV from {RIDGE_ALPHAS[0]:g} to "
            f"{RIDGE_ALPHAS[-1]:g}) and scikit-learn's HistGradientBoostingRegressor (≤ 1000 trees, early stopping) "
            "on the one-hot of the op at each cell node (an op whose result reaches no output apart, as NN-Former "
            "sees it) and the network's log FLOPs, log params, log MACs, log batch size and node count")


def _latency_table(records: list[dict]) -> list[str]:
    """The nb201-latency table: one row per device, median (range) over the split seeds of
    NN-Former and the baselines; best median in bold; diverged runs marked."""
    groups = _by_device(records)
    who = list(PREDICTORS)
    head = ("| device | distinct latencies | train / test | " + " | ".join(f"τ {PREDICTORS[w]}" for w in who) + " | "
            + " | ".join(f"MAPE % {PREDICTORS[w]}" for w in who) + " | Acc(10%) NN-Former | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    med = {}  # device -> {(who, key): median}
    for dev, runs in groups.items():
        med[dev] = {(w, k): float(np.median(_scores(runs, w, k))) for w in who for k in ("tau", "mape")}
        best_tau = np.nanmax([med[dev][(w, "tau")] for w in who])
        best_mape = np.nanmin([med[dev][(w, "mape")] for w in who])
        bad = [r for r in runs if r["diverged"]]
        name = dev + (f" ⚠ {len(bad)} of {len(runs)} runs diverged" if bad else "")
        r0 = runs[0]
        taus = [_med_range(_scores(runs, w, "tau"), "{:.3f}", med[dev][(w, "tau")] == best_tau) for w in who]
        mapes = [_med_range(100 * _scores(runs, w, "mape"), "{:.2f}", med[dev][(w, "mape")] == best_mape) for w in who]
        acc = _med_range(100 * _scores(runs, "nnformer", "acc@10"), "{:.1f}")
        lines.append(f"| {name} | {r0['distinct_latencies']} | {r0['n_train']} / {r0['n_test']} | " + " | ".join(taus)
                     + " | " + " | ".join(mapes) + f" | {acc} | {sum(r['wall_seconds'] for r in runs):.0f} |")
    rich = [d for d, runs in groups.items() if runs[0]["distinct_latencies"] >= MIN_DISTINCT]
    gpu_cpu = [d for d in groups if d.startswith(GPU_CPU_PREFIXES)]
    for label, devs in ((f"mean, ≥ {MIN_DISTINCT} distinct latencies", rich), ("mean, GPUs and CPUs", gpu_cpu),
                        ("mean, all", list(groups))):
        if not devs or (label != "mean, all" and len(devs) == len(groups)):
            continue
        mean = lambda w, k: float(np.mean([med[d][(w, k)] for d in devs]))
        lines.append(f"| **{label} ({len(devs)})** | | | " + " | ".join(_f(mean(w, "tau")) for w in who) + " | "
                     + " | ".join(_f(100 * mean(w, "mape"), 2) for w in who) + " | | |")
    wins = [d for d in rich if all(med[d][("nnformer", "tau")] > med[d][(w, "tau")]
                                   and med[d][("nnformer", "mape")] < med[d][(w, "mape")] for w in who[1:])]
    seeds = len(next(iter(groups.values()))) if groups else 0
    lines += ["", f"Each cell: the median over {seeds} split seed(s), (min–max) over them; bold: the best median of "
                  "the row. The means average the devices' medians."]
    if rich:
        lost = [d for d in rich if d not in wins]
        lines.append(f"NN-Former beats both baselines in τ and in MAPE on {len(wins)} of the {len(rich)} devices with "
                     f"≥ {MIN_DISTINCT} distinct latencies" + (f" (not on: {', '.join(lost)})." if lost else "."))
    diverged = [r for r in records if r["diverged"]]
    lines.append("No run diverged." if not diverged else "Diverged runs: " + "; ".join(
        f"{r['run']} ({', '.join(r['diverged'])})" for r in diverged) + ".")
    lines += ["", f"Paper: no NAS-Bench-201 per-device numbers; its latency result is NNLQP in-domain MAPE "
                  f"{100 * PAPER['nnlqp-in-domain']['mape']:.2f} % (real ONNX networks of 10 model families measured "
                  "on a GPU) — a different dataset, so no column here (see the notes)."]
    return lines


def _docs_figure(experiment: str, records: list[dict], points: list, doc: Path) -> Optional[str]:
    """One PNG of all the experiment's runs beside the markdown file (``reproduction/<experiment>.png``);
    its path relative to the markdown, or None without matplotlib."""
    from .plots import scatter_grid

    rel = f"reproduction/{experiment}.png"
    if experiment in ("nb201-latency", EMBEDDED):  # each device's (held-out group's) first split seed
        first = {}
        for r, pts in zip(records, points):
            first.setdefault(r["device"], (r, pts))
        panels = [(y, p, f"{r['run']}: MAPE {100 * r['metrics']['mape']:.1f}%, τ {r['metrics']['tau']:.2f}")
                  for r, (y, p) in first.values()]
        ok = scatter_grid(panels, doc.parent / rel, xlabel="measured latency (ms)", ylabel="predicted latency (ms)",
                          log=True, ncols=6 if experiment == "nb201-latency" else 4)
    else:
        panels = [(100 * y, 100 * p, f"{r['run']}: τ {r['metrics']['tau']:.3f} ({r['n_test']} test)")
                  for r, (y, p) in zip(records, points)]
        ok = scatter_grid(panels, doc.parent / rel, xlabel="measured accuracy (%)", ylabel="predicted accuracy (%)",
                          ncols=4)
    return rel if ok else None


# ---------------------------------------------------------------------------- driver
def _check_doc(doc: Path, experiments: Sequence[str]) -> None:
    """The markdown file must be a writable file whose generated sections (where present)
    have both markers: checked before training, as :func:`update_markdown` writes it after."""
    if doc.exists():
        if not doc.is_file():
            raise ValueError(f"--doc {doc}: not a file")
        text = doc.read_text()
        for e in experiments:
            begin, end = section_markers(e)
            i = text.find(begin)
            if i >= 0 and text.find(end, i) < 0:
                raise ValueError(f"{doc}: the generated section of {e} has no end marker {end!r}; fix the file "
                                 "or pass another --doc (or --no-doc)")
    writable_folder(doc.parent, "--doc folder")

def reproduce(experiments: Sequence[str], *, data_dir=None, out="runs/reproduce", doc: Optional[str] = None,
              settings: Optional[Settings] = None, devices: Optional[Sequence[str]] = None,
              latency_csv: Sequence[str | os.PathLike] = (), csv_batch_size: int = 1,
              embedded_set: Optional[str | os.PathLike] = None, command: str = "") -> dict[str, list[dict]]:
    """Run ``experiments``; write per-run files under ``out/<experiment>`` and, when ``doc``
    is given, the generated sections of that markdown file. Returns the run records.
    ``latency_csv``: CSV files (``arch,latency_ms``) that nb201-latency runs instead of the
    HELP devices (beside them when ``devices`` is given), measured at ``csv_batch_size``.
    ``embedded_set``: a packed latency set (``.npz``) that embedded-latency runs instead of
    the embedded default."""
    import torch

    from ..baselines import require_sklearn

    s = settings or Settings()
    for e in experiments:
        if e not in KNOWN_EXPERIMENTS:
            raise ValueError(f"unknown experiment {e!r}; choose from {', '.join(KNOWN_EXPERIMENTS)} or all")
    for what, given, applies in (("--devices", devices, "nb201-latency"),
                                 ("--latency-csv", latency_csv, "nb201-latency"),
                                 ("--embedded-set", embedded_set, EMBEDDED)):
        if given and applies not in experiments:
            raise ValueError(f"{what} applies to {applies} only")
    s.check()
    require_sklearn()  # every experiment scores the GBDT baseline: a missing extra fails before any training
    for f in latency_csv:
        if not Path(f).is_file():
            raise FileNotFoundError(f"--latency-csv: file not found: {f}")
    if embedded_set is not None and not Path(embedded_set).is_file():
        raise FileNotFoundError(f"--embedded-set: file not found: {embedded_set}")
    # a run of CSV files alone, and the embedded set, need no benchmark data folder
    need = [e for e in experiments if e != EMBEDDED and not (e == "nb201-latency" and latency_csv and not devices)]
    data = resolve_data_dir(data_dir) if need or data_dir is not None else None
    for e in need:  # fail before hours of training, not after
        _need(data, e)
    writable_folder(out, "--out")
    if doc:
        _check_doc(Path(doc), experiments)
    s.jobs = int(s.jobs or usable_cpus())
    torch.set_num_threads(int(s.threads or pick_threads()))
    torch.set_flush_denormal(True)
    hw = hardware_info()
    _log(f"data: {data}; {hw['cpu']}, {hw['torch_threads']} torch thread(s)"
         + (f"; accuracy runs {s.jobs} at a time, {_run_threads(s)} thread(s) each"
            if s.jobs > 1 and set(experiments) & set(ACCURACY_EXPERIMENTS) else "")
         + f"; {'quick' if s.quick else 'full'} profile")
    results = {}
    for e in experiments:
        exp_out = Path(out) / e
        t0 = time.perf_counter()
        records = run_experiment(e, data, exp_out, s, devices=devices, latency_csv=latency_csv,
                                 csv_batch_size=csv_batch_size,
                                 embedded_set=None if embedded_set is None else str(embedded_set))
        wall = time.perf_counter() - t0
        info = {"experiment": e, "settings": s.to_dict(), "hardware": hw, "wall_seconds": wall,
                "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                "command": command or f"nnformer-fast reproduce {e}", "out": str(exp_out),
                "data_dir": None if data is None else str(data)}
        if e in ACCURACY_EXPERIMENTS:
            info.update(jobs=s.jobs, run_threads=_run_threads(s))
        points = [r.pop("_points") for r in records]
        exp_out.mkdir(parents=True, exist_ok=True)
        (exp_out / "summary.json").write_text(json.dumps({**info, "runs": records}, indent=1, default=str))
        if doc:
            info["figure"] = _docs_figure(e, records, points, Path(doc))
            update_markdown(doc, e, render_section(e, records, info))
        _log(f"{e}: done in {wall:.0f} s -> {exp_out}" + (f" and {doc}" if doc else ""))
        results[e] = records
    return results


# ---------------------------------------------------------------------------- CLI
def _fractions(text: str) -> list[float]:
    out = []
    for t in filter(None, (x.strip() for x in text.split(","))):
        try:
            v = float(t.rstrip("%")) / (100.0 if t.endswith("%") else 1.0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a fraction: {t!r}") from None
        if not 0 < v < 1:
            raise argparse.ArgumentTypeError(f"fraction {t!r} must lie in (0, 1) (or 0%..100%)")
        out.append(v)
    if not out:
        raise argparse.ArgumentTypeError("expected comma-separated fractions, e.g. 0.01,0.05 or 1%,5%")
    return out


def _fractions_or_none(text: str) -> list[float]:
    return [] if text.strip().lower() == "none" else _fractions(text)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or math.isinf(v):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


def _ema_decay(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"an EMA decay must lie in [0, 1) (0 = off), got {text!r}")
    return v


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(t) for t in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"split seeds repeat: {text!r}")
    return seeds


def _names(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _model_arg(text: str) -> str:
    """``K=V,...`` checked while parsing (so a bad one is a usage error); kept as text."""
    from .cli import _model_options

    _model_options(text)
    return text


def _run(args) -> int:
    from .cli import _model_options

    kw = {}
    if args.fractions:
        kw["fractions"] = tuple(_unique_fractions(args.fractions))
    if args.reference_fractions is not None:
        kw["reference_fractions"] = tuple(_unique_fractions(args.reference_fractions))
    for name in ("epochs", "max_test", "max_seconds", "seed", "nb101_train", "precision", "accuracy_lr", "accuracy_ema",
                 "accuracy_consistency"):
        v = getattr(args, name)
        if v is not None:
            kw[name] = v
    if args.split_seeds is not None and args.split_seed is not None:
        raise ValueError("give --split-seed N or --split-seeds N,M,..., not both")
    if args.split_seeds is not None or args.split_seed is not None:
        kw["latency_split_seeds"] = kw["accuracy_split_seeds"] = tuple(args.split_seeds or [args.split_seed])
    if args.precision is not None:
        kw["embedded_precision"] = args.precision
    kw["progress"] = not args.quiet
    s = Settings.quick_profile(**kw) if args.quick else Settings(**kw)
    if args.accuracy_model:  # over both accuracy profiles
        user = _model_options(args.accuracy_model)
        s.accuracy_model = merge_model_options(s.accuracy_model, user)
        s.small_accuracy_model = merge_model_options(s.small_accuracy_model, user)
    if args.latency_model:
        s.latency_model = merge_model_options(s.latency_model, _model_options(args.latency_model))
    s.threads, s.jobs = args.threads, args.jobs
    experiments = list(EXPERIMENTS) if "all" in args.experiments else list(dict.fromkeys(args.experiments))
    try:
        reproduce(experiments, data_dir=args.data_dir, out=args.out, doc=None if args.no_doc else args.doc,
                  settings=s, devices=args.devices, latency_csv=args.latency_csv or (),
                  csv_batch_size=args.csv_batch_size, embedded_set=args.embedded_set, command=_command(args))
    except ModuleNotFoundError as e:  # the [baselines] extra is not installed: say so in one line
        print(f"nnformer-fast reproduce: error: {e}", file=sys.stderr)
        return 2
    return 0


def _command(args) -> str:
    """The command line of a run, rebuilt from its options (data folder and output left out)."""
    parts = ["nnformer-fast", "reproduce", *args.experiments]
    if args.quick:
        parts.append("--quick")
    for opt in ("fractions", "reference_fractions", "devices", "latency_csv", "csv_batch_size", "embedded_set",
                "epochs", "max_test",
                "max_seconds", "nb101_train", "accuracy_model", "accuracy_lr", "accuracy_ema", "accuracy_consistency",
                "latency_model", "precision", "seed", "split_seed", "split_seeds", "threads", "jobs"):
        v = getattr(args, opt)
        if v is None:
            continue
        if opt in ("fractions", "reference_fractions"):
            v = ",".join(f"{x:g}" for x in v) or "none"
        elif opt == "accuracy_consistency":
            parts.append("--accuracy-consistency" if v else "--no-accuracy-consistency")
            continue
        elif opt == "latency_csv":
            v = ",".join(Path(f).name for f in v)
        elif opt == "embedded_set":
            v = Path(v).name
        elif opt == "csv_batch_size" and not args.latency_csv:
            continue
        elif isinstance(v, list):
            v = ",".join(map(str, v))
        parts += ["--" + opt.replace("_", "-"), str(v)]
    return " ".join(shlex.quote(p) for p in parts)


def register_reproduce(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce", help="train and score on the real benchmarks; tables to docs/REPRODUCTION.md",
        description="Reproduce the paper's experiments on real data: " + "; ".join([
            "nb201-accuracy (NAS-Bench-201, train on 1/5/10% of the cells, and on 10% in the authors' encoding, "
            "Kendall tau, Spearman rho and top-k metrics on the rest)",
            "nb101-accuracy (500-cell NAS-Bench-101 subset, 100 train / 400 test)",
            "nb201-latency (every device of nb201_latency/ or --latency-csv file, 10% train, MAPE/Acc/tau on "
            "the rest)",
            "embedded-latency (the embedded set of ONNX networks: 20% of every family held out, and each family "
            "held out in turn)"]) + "; each over split seeds 0,1,2, beside ridge and GBDT baselines"
        + ". Writes OUT/<experiment>/<run>/{metrics.json,scatter.png} and the generated tables of --doc.")
    p.add_argument("experiments", nargs="+", choices=list(KNOWN_EXPERIMENTS) + ["all"], metavar="EXPERIMENT",
                   help=f"{', '.join(KNOWN_EXPERIMENTS)}, or all (the first three)")
    p.add_argument("--data-dir", default=None,
                   help="benchmark data folder (default: $NNFORMER_FAST_DATA, else ../shared/data)")
    p.add_argument("--out", default="runs/reproduce", help="output folder (default runs/reproduce)")
    p.add_argument("--doc", default="docs/REPRODUCTION.md",
                   help="markdown file whose generated sections get the tables (default docs/REPRODUCTION.md)")
    p.add_argument("--no-doc", action="store_true", help="do not write the markdown tables")
    p.add_argument("--quick", action="store_true",
                   help="small models, few epochs, test sets subsampled to 2000 (smoke runs, CPU budget)")
    p.add_argument("--fractions", type=_fractions, default=None,
                   help="nb201-accuracy training fractions (default 0.01,0.05,0.1; '5%%' works too)")
    p.add_argument("--reference-fractions", type=_fractions_or_none, default=None,
                   help="nb201-accuracy fractions that also train on the authors' 8-node cell encoding (default 10%%; "
                        "'none' for none)")
    p.add_argument("--devices", type=_names, default=None, help="nb201-latency: comma-separated devices (default all)")
    p.add_argument("--latency-csv", action="append", default=None, metavar="PATH",
                   help="nb201-latency: your own device's latencies, a CSV with the header arch,latency_ms (a "
                        "NAS-Bench-201 arch string and ms per row); one run named after the file's stem, instead of "
                        "the HELP devices unless --devices is given; repeat for more files")
    p.add_argument("--csv-batch-size", type=int_at_least(1), default=1,
                   help="the batch size the --latency-csv latencies were measured at (default 1)")
    p.add_argument("--embedded-set", default=None, metavar="PATH.npz",
                   help="embedded-latency: a packed latency set (build-latency-set --pack) instead of the embedded "
                        "default")
    p.add_argument("--epochs", type=int_at_least(1), default=None, help="epochs of every run (overrides the profile)")
    p.add_argument("--max-test", type=int_at_least(1), default=None,
                   help="score on a seeded random subset of at most N test cells (default all; 2000 with --quick)")
    p.add_argument("--max-seconds", type=float, default=None, help="cap on each run's training time")
    p.add_argument("--nb101-train", type=int_at_least(1), default=None, help="nb101-accuracy training cells (default 100)")
    p.add_argument("--accuracy-model", type=_model_arg, default=None, metavar="K=V,...",
                   help="accuracy model options over both profiles' (the one of under 500 training cells too), "
                        "e.g. depth=6,dim=128 or depths=2:2")
    p.add_argument("--accuracy-lr", type=_positive_float, default=None,
                   help=f"accuracy runs: peak learning rate (default {Settings.accuracy_lr:g})")
    p.add_argument("--accuracy-ema", type=_ema_decay, default=None,
                   help=f"accuracy runs: EMA decay of the weights, 0 = off (default {Settings.accuracy_ema:g})")
    p.add_argument("--accuracy-consistency", action=argparse.BooleanOptionalAction, default=None,
                   help="accuracy runs: add the consistency term (twice the compute; default "
                        f"{'on' if Settings.accuracy_consistency else 'off'})")
    p.add_argument("--latency-model", type=_model_arg, default=None, metavar="K=V,...", help="latency model options, e.g. dim=128")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="training precision (default fp32; bf16 for embedded-latency)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    p.add_argument("--split-seed", type=int, default=None,
                   help="one train/test split seed for every experiment (default: the split seeds 0,1,2)")
    p.add_argument("--split-seeds", type=_seeds, default=None,
                   help="comma-separated split seeds of every experiment, one run each (default 0,1,2; 0 with --quick)")
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="torch threads of each training run (default: 1 or 2, picked by a probe; with --jobs > 1, "
                        "the CPUs shared out among the jobs)")
    p.add_argument("--jobs", type=int_at_least(1), default=None,
                   help="accuracy experiments: training runs at a time, each in its own process (default: one per "
                        "CPU; 1: one after another)")
    p.add_argument("--quiet", action="store_true", help="no training progress bars (the per-run lines stay)")
    p.set_defaults(func=_run)
