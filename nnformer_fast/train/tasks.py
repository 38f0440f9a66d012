"""Training tasks: what a dataset is, how a batch is built and which model and loss apply.

* ``latency`` — :class:`nnformer_fast.NNFormerLatency` on whole networks: NNLQP-layout folders
  (or their text file), saved ``.npz`` sets, the embedded default set, NAS-Bench-201
  per-device latencies. Loss: relative MSE (the reference's), optionally the consistency loss.
* ``accuracy`` — :class:`nnformer_fast.NNFormer` on NAS-Bench-101/201 cells: the library's JSON layout (docs/DATA.md),
  the NAS-Bench-201 CSV, NASLib's zero-cost JSON files. Loss: MSE + rank loss (docs/TRAINING.md),
  optionally with the augmented-twin consistency term.

Batches are built by a *batch builder*: a map-style dataset indexed by a LIST of item
indices (what the bucketing sampler yields), so each DataLoader worker builds whole batches
with array operations — no per-graph Python in the training process. A batch is a
:class:`Batch` (model inputs, targets, item indices), movable with ``to`` / ``pin_memory``.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..graph import GraphBatch
from .losses import (LAMBDA_CONSISTENCY, LAMBDA_MSE, LAMBDA_RANK, LATENCY_LOSSES, accuracy_consistency_loss,
                     accuracy_loss, latency_consistency_loss)

__all__ = ["Batch", "LatencyTask", "AccuracyTask", "get_task", "load_dataset", "split_dataset",
           "LatencyBatchBuilder", "CellArrays", "CellBatchBuilder", "dataset_fingerprint", "TASKS"]


# ---------------------------------------------------------------------------- batch
def _move(obj, fn):
    if isinstance(obj, (Tensor, GraphBatch)):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _move(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_move(v, fn) for v in obj)
    return obj


@dataclass
class Batch:
    """One training batch. ``inputs``: positional model inputs; ``target``: (B,) float32;
    ``index``: (B,) int64 dataset items; ``num_nodes``: packed node count."""

    inputs: tuple
    target: Tensor
    index: Tensor
    num_nodes: int

    @property
    def num_graphs(self) -> int:
        return int(self.target.shape[0])

    def to(self, device, non_blocking: bool = False) -> "Batch":
        f = lambda t: t.to(device, non_blocking=non_blocking)
        return dataclasses.replace(self, inputs=_move(self.inputs, f), target=f(self.target))

    def pin_memory(self) -> "Batch":
        f = lambda t: t.pin_memory()
        return dataclasses.replace(self, inputs=_move(self.inputs, f), target=f(self.target))


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for every (s, c), without a Python loop."""
    total = int(counts.sum())
    offsets = np.cumsum(counts) - counts
    return np.repeat(starts - offsets, counts) + np.arange(total)


# ---------------------------------------------------------------------------- option types
def _fits(value, hint) -> bool:
    """Whether ``value`` suits a parameter annotated ``hint`` (int, float, bool, str,
    Sequence[int]); other annotations are not checked."""
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False  # True is an int to Python, not a size or a rate
    if hint is int:
        return isinstance(value, (int, np.integer))
    if hint is float:
        return isinstance(value, (int, float, np.integer, np.floating))
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is collections.abc.Sequence:
        (item,) = typing.get_args(hint) or (object,)
        return (isinstance(value, (list, tuple)) and len(value) > 0
                and all(item is object or _fits(v, item) for v in value))
    return True


def _describe(hint) -> str:
    if typing.get_origin(hint) is collections.abc.Sequence:
        (item,) = typing.get_args(hint) or (object,)
        return f"a non-empty list of {getattr(item, '__name__', item)} (a:b:c on the command line)"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def check_option_types(owner: str, fn, options: dict, hints: Optional[dict] = None) -> None:
    """Raise ``ValueError`` naming the option when a value does not match the annotation of
    ``fn``'s parameter of that name (e.g. ``dim="abc"`` for ``dim: int``)."""
    hints = typing.get_type_hints(fn) if hints is None else hints
    for key, value in options.items():
        hint = hints.get(key)
        if hint is not None and not _fits(value, hint):
            raise ValueError(f"{owner}: option {key}={value!r} should be {_describe(hint)}")


# ---------------------------------------------------------------------------- latency
class LatencyBatchBuilder(torch.utils.data.Dataset):
    """``builder[indices] -> Batch`` of ``(x (N, 192), GraphBatch, static (B, 40))`` for a
    :class:`~nnformer_fast.data.latency.LatencyDataset`. Reads its raw store arrays and
    gathers node features from the store's :meth:`~nnformer_fast.data.latency.LatencyDataset.node_feature_table`;
    any other dataset of ``(x, edge_index, static, y)`` items goes through ``collate_latency``."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.vectorized = hasattr(dataset, "node_feature_table")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices) -> Batch:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if not self.vectorized:
            from ..data.latency import collate_latency

            x, graph, static, y = collate_latency([self.dataset[int(i)] for i in idx])
            return Batch((x, graph, static), y.float(), torch.from_numpy(idx), graph.num_nodes)
        from ..data.onnx_features import static_features

        s, rec = self.dataset.store, self.dataset.records
        entry = rec["entry"][idx]
        node_ptr, edge_ptr = np.asarray(s["node_ptr"]), np.asarray(s["edge_ptr"])
        n = node_ptr[entry + 1] - node_ptr[entry]
        ne = edge_ptr[entry + 1] - edge_ptr[entry]
        nodes = _ranges(node_ptr[entry], n)
        edges_at = _ranges(edge_ptr[entry], ne)
        x = self.dataset.node_feature_table()[nodes]
        offsets = np.cumsum(n) - n
        edge_index = s["edges"][:, edges_at].astype(np.int64) + np.repeat(offsets, ne)[None, :]
        sc = np.asarray(s["scalars"][entry], dtype=np.float64)
        static = static_features(sc[:, 0], sc[:, 1], sc[:, 2], sc[:, 3]).astype(np.float32)
        graph = GraphBatch.from_edge_index(torch.from_numpy(edge_index), torch.from_numpy(n), validate=False)
        y = torch.from_numpy(np.asarray(rec["latency"][idx], dtype=np.float32))
        return Batch((torch.from_numpy(x), graph, torch.from_numpy(static)), y, torch.from_numpy(idx),
                     int(n.sum()))


def _targets(dataset) -> np.ndarray:
    if hasattr(dataset, "latencies"):
        return np.asarray(dataset.latencies, dtype=np.float64)
    if isinstance(dataset, CellArrays):
        return dataset.targets.astype(np.float64)
    return np.array([float(dataset[i][-1]) for i in range(len(dataset))])


def _sizes(dataset) -> np.ndarray:
    if hasattr(dataset, "num_nodes") and not callable(dataset.num_nodes):
        return np.asarray(dataset.num_nodes, dtype=np.int64)
    return np.array([int(dataset[i][0].shape[0]) for i in range(len(dataset))], dtype=np.int64)


class LatencyTask:
    """Whole-network latency in ms with :class:`nnformer_fast.NNFormerLatency`.

    loss: ``"relative_mse"`` (the reference's, the default), ``"log_mse"`` or ``"log_mse_mape"``
    (``reproduce``'s: it trains on devices whose latencies span four orders of magnitude,
    where relative MSE collapses to 0; see :mod:`.losses`)."""

    name = "latency"
    relative_metrics = True
    #: the model's defaults (docs/DESIGN.md: the models); ``model_config`` overrides any of them
    DEFAULTS = dict(in_features=192, dim=512, n_layers=2, n_head=4, mlp_ratio=4.0, act="relu", dropout=0.05,
                    degree_gating=False, layer_scale_init=1e-4, static_features=40)

    def __init__(self, loss: str = "relative_mse", **model_config):
        if loss not in LATENCY_LOSSES:
            raise ValueError(f"latency model: unknown loss {loss!r}; choose from {', '.join(LATENCY_LOSSES)}")
        unknown = set(model_config) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"latency model: unknown options {sorted(unknown)}; known: {sorted(self.DEFAULTS)} "
                             "and loss")
        from ..models import NNFormerLatency

        check_option_types("latency model", NNFormerLatency.__init__, model_config)
        self.model_config = {**self.DEFAULTS, **model_config}
        self._loss = LATENCY_LOSSES[loss]
        #: the loss (part of a run's settings: a resumed run must keep it)
        self.loss_config = {"loss": loss}

    def build_model(self) -> torch.nn.Module:
        from ..models import NNFormerLatency

        return NNFormerLatency(**self.model_config)

    def check_dataset(self, dataset, where: str = "dataset") -> None:
        if len(dataset) == 0:
            raise ValueError(f"{where}: empty dataset (no latency records)")
        y = _targets(dataset)
        bad = np.nonzero(~np.isfinite(y))[0]
        if bad.size:
            raise ValueError(f"{where}: latency of record {int(bad[0])} is {y[bad[0]]} (NaN/inf targets)")
        bad = np.nonzero(y <= 0)[0]
        if bad.size:
            raise ValueError(f"{where}: latency of record {int(bad[0])} is {y[bad[0]]}; latency targets must be "
                             "positive (the loss divides by them)")

    sizes = staticmethod(_sizes)
    targets = staticmethod(_targets)

    def builder(self, dataset) -> LatencyBatchBuilder:
        return LatencyBatchBuilder(dataset)

    @staticmethod
    def forward(model, batch: Batch) -> Tensor:
        """(B,) predictions."""
        return model(*batch.inputs).reshape(-1)

    def loss(self, model, batch: Batch, *, consistency: bool = False, generator=None) -> tuple[Tensor, Tensor]:
        p1 = self.forward(model, batch)
        if consistency:
            p2 = self.forward(model, batch)
            return latency_consistency_loss(p1, p2, batch.target, loss=self._loss), p1
        return self._loss(p1, batch.target), p1


# ---------------------------------------------------------------------------- accuracy
class CellArrays(torch.utils.data.Dataset):
    """Cells as padded arrays (for array-built batches): ``ops`` (M, L) int64, ``adj`` (M, L, L)
    int64, ``num_nodes`` (M,) int64, ``depths`` (M,) int64 (the cells' ``depth``, one-hot in
    ``code_depth``), ``targets`` (M,) float32. Item ``i`` is ``(tokens, target)``."""

    def __init__(self, cells: Sequence, in_chans: int = 32):
        from ..data.cells import tokenize

        self.cells = list(cells)
        self.in_chans = in_chans
        m = len(self.cells)
        self.num_nodes = np.array([c.num_nodes for c in self.cells], dtype=np.int64)
        self.depths = np.array([c.depth for c in self.cells], dtype=np.int64)
        L = int(self.num_nodes.max()) if m else 1
        if m and self.depths.max() >= in_chans:
            i = int(self.depths.argmax())
            what = (f"up to {self.depths[i]} nodes" if self.depths[i] == self.num_nodes[i]
                    else f"depths up to {self.depths[i]}")
            raise ValueError(f"cells have {what}; in_chans={in_chans} must exceed that (code_depth is a one-hot)")
        self.ops = np.zeros((m, L), dtype=np.int64)
        self.adj = np.zeros((m, L, L), dtype=np.int64)
        self.targets = np.array([np.nan if c.accuracy is None else c.accuracy for c in self.cells], np.float32)
        for i, c in enumerate(self.cells):  # once, at load time
            n = c.num_nodes
            if n and (c.ops.min() < 0 or c.ops.max() >= in_chans):
                bad = int(c.ops[(c.ops < 0) | (c.ops >= in_chans)][0])
                raise ValueError(f"cell {c.key if c.key is not None else i}: op code {bad} outside [0, {in_chans}) "
                                 f"(in_chans={in_chans}; op codes index the one-hot token)")
            self.ops[i, :n] = c.ops
            self.adj[i, :n, :n] = c.adjacency
        self._tokenize = tokenize

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, i):
        return self._tokenize(self.cells[i], self.in_chans), torch.tensor([self.targets[i]])

    def subset(self, indices) -> "CellArrays":
        return CellArrays([self.cells[int(i)] for i in indices], self.in_chans)


class CellBatchBuilder(torch.utils.data.Dataset):
    """``builder[indices] -> Batch`` with the padded input dict of :class:`NNFormer`
    (``num_vertices`` included; the bucketing sampler keeps padding small)."""

    def __init__(self, cells: CellArrays):
        self.cells = cells

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, indices) -> Batch:
        c = self.cells
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        nv = c.num_nodes[idx]
        L = int(nv.max())
        ops = torch.from_numpy(c.ops[idx, :L])
        valid = torch.arange(L)[None, :] < torch.from_numpy(nv)[:, None]
        code = torch.nn.functional.one_hot(ops, c.in_chans).float() * valid[..., None]
        depth = torch.nn.functional.one_hot(torch.from_numpy(c.depths[idx])[:, None], c.in_chans).float()
        rel_pos = torch.from_numpy(c.adj[idx, :L, :L])
        sample = {"code": code, "code_depth": depth, "code_rel_pos": rel_pos, "code_adj": (rel_pos == 1).float(),
                  "num_vertices": torch.from_numpy(nv)}
        y = torch.from_numpy(c.targets[idx])
        return Batch((sample,), y, torch.from_numpy(idx), int(nv.sum()))


class AccuracyTask:
    """Cell accuracy (fraction) with :class:`nnformer_fast.NNFormer`."""

    name = "accuracy"
    relative_metrics = False
    DEFAULTS = dict(depths=[12], in_chans=32, dim=192, n_head=4, mlp_ratio=4.0, act_layer="relu", dropout=0.1,
                    droppath=0.0, avg_tokens=False, class_token=True, depth_embed=True)

    def __init__(self, lambda_mse: float = LAMBDA_MSE, lambda_rank: float = LAMBDA_RANK,
                 lambda_consistency: float = LAMBDA_CONSISTENCY, **model_config):
        from ..models import NNFormer

        losses = dict(lambda_mse=lambda_mse, lambda_rank=lambda_rank, lambda_consistency=lambda_consistency)
        check_option_types("accuracy model", AccuracyTask.__init__, losses)
        if "depth" in model_config:
            check_option_types("accuracy model", None, {"depth": model_config["depth"]}, hints={"depth": int})
            model_config["depths"] = [int(model_config.pop("depth"))]
        unknown = set(model_config) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"accuracy model: unknown options {sorted(unknown)}; known: {sorted(self.DEFAULTS)}")
        if isinstance(model_config.get("depths"), (int, np.integer)) and not isinstance(model_config["depths"], bool):
            raise ValueError(f"accuracy model: option depths={model_config['depths']!r} should be a list of "
                             f"integers; for one stage write depth={model_config['depths']}")
        check_option_types("accuracy model", NNFormer.__init__, model_config)
        self.model_config = {**self.DEFAULTS, **model_config}
        self.model_config["depths"] = [int(d) for d in self.model_config["depths"]]
        self.lambda_mse, self.lambda_rank, self.lambda_consistency = lambda_mse, lambda_rank, lambda_consistency
        #: the loss weights (part of a run's settings: a resumed run must keep them)
        self.loss_config = losses

    def build_model(self) -> torch.nn.Module:
        from ..models import NNFormer

        return NNFormer(**self.model_config)

    def check_dataset(self, dataset, where: str = "dataset") -> None:
        if len(dataset) == 0:
            raise ValueError(f"{where}: empty dataset (no cells)")
        y = _targets(dataset)
        bad = np.nonzero(~np.isfinite(y))[0]
        if bad.size:
            raise ValueError(f"{where}: accuracy of cell {int(bad[0])} is {y[bad[0]]} (NaN/inf or missing targets)")

    sizes = staticmethod(_sizes)
    targets = staticmethod(_targets)

    def builder(self, dataset) -> CellBatchBuilder:
        if not isinstance(dataset, CellArrays):
            raise TypeError("accuracy task: the dataset must be a CellArrays (see load_dataset)")
        return CellBatchBuilder(dataset)

    @staticmethod
    def forward(model, batch: Batch) -> Tensor:
        return model(*batch.inputs).reshape(-1)

    def loss(self, model, batch: Batch, *, consistency: bool = False, generator=None) -> tuple[Tensor, Tensor]:
        """(loss, (B,) predictions). With ``consistency`` the model sees a batch of 2B cells, every
        cell and its augmented twin. As in NN-Former the twin is the cell itself: the model is
        invariant to node relabelling, so an isomorphic twin would differ only in its dropout
        masks, and those differ anyway between the two halves of the batch."""
        kw = dict(lambda_mse=self.lambda_mse, lambda_rank=self.lambda_rank, generator=generator)
        if not consistency:
            p = self.forward(model, batch)
            return accuracy_loss(p, batch.target, **kw), p
        twins = dataclasses.replace(batch, inputs=_move(batch.inputs, lambda t: torch.cat([t, t])))
        p1, p2 = self.forward(model, twins).chunk(2)
        return accuracy_consistency_loss(p1, p2, batch.target, lambda_consistency=self.lambda_consistency, **kw), p1


TASKS = {"latency": LatencyTask, "accuracy": AccuracyTask}


def get_task(name: str, **options):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name](**options)


# ---------------------------------------------------------------------------- loading
LATENCY_FORMATS = ("auto", "default", "nnlqp", "npz", "nb201-latency")
ACCURACY_FORMATS = ("auto", "spec-json", "nb201-csv", "nb101-naslib", "nb201-naslib")
#: NAS-Bench-201 cell encodings of the CSV and NASLib formats (``nb201_cell``'s prune=True / False)
NB201_ENCODINGS = ("pruned", "reference")


def load_dataset(task: str, data: Optional[str | os.PathLike] = None, *, fmt: str = "auto",
                 nb201_device: Optional[str] = None, accuracy_dataset: str = "cifar10",
                 target: str = "validation_accuracy", nb201_encoding: str = "pruned", in_chans: int = 32,
                 progress: bool = False, filters: Optional[dict] = None):
    """The whole dataset of a task.

    latency: ``data`` None or ``"default"`` → the embedded default set; a folder or text file
    → NNLQP layout; ``*.npz`` → :meth:`LatencyDataset.load`; ``fmt="nb201-latency"`` (or
    ``nb201_device`` given) → NAS-Bench-201 latencies of ``nb201_device`` under ``data``.
    accuracy: ``*.csv`` → NAS-Bench-201 CSV (``accuracy_dataset`` column); ``*.json`` → the library's layout
    JSON (``target`` field; percent values are divided by 100), or NASLib's zero-cost files
    (detected by their top-level keys). ``nb201_encoding``: ``"pruned"`` (docs/DATA.md) or
    ``"reference"`` (the authors' unpruned cells) for the NB201 CSV and NASLib NB201 files;
    other formats ignore it.
    """
    if nb201_encoding not in NB201_ENCODINGS:
        raise ValueError(f"unknown NAS-Bench-201 encoding {nb201_encoding!r}; choose from {NB201_ENCODINGS}")
    prune = nb201_encoding == "pruned"
    filters = filters or {}
    if task == "latency":
        from ..data import latency as L

        if fmt not in LATENCY_FORMATS:
            raise ValueError(f"unknown latency data format {fmt!r}; choose from {LATENCY_FORMATS}")
        if fmt == "nb201-latency" or nb201_device is not None:
            if nb201_device is None:
                raise ValueError("NAS-Bench-201 latency needs a device (--nb201-device)")
            return L.load_nb201_latency(nb201_device, root=data)
        if data is None or str(data) == "default" or fmt == "default":
            from ..data.default import load_default_latency_set

            return load_default_latency_set(**filters)
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"latency dataset not found: {path}")
        if fmt == "npz" or path.suffix == ".npz":
            return L.LatencyDataset.load(path, **filters)
        return L.LatencyDataset(path, progress=progress, **filters)
    if task == "accuracy":
        from ..data import cells as C

        if fmt not in ACCURACY_FORMATS:
            raise ValueError(f"unknown accuracy data format {fmt!r}; choose from {ACCURACY_FORMATS}")
        if data is None:
            raise ValueError("accuracy task: give the dataset path (--data)")
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"accuracy dataset not found: {path}")
        if fmt == "nb201-csv" or (fmt == "auto" and path.suffix == ".csv"):
            cells = C.load_nb201_csv(path, accuracy_dataset, prune=prune)
        else:
            root = C.read_json_object(path)
            if fmt == "nb101-naslib" or (fmt == "auto" and "nasbench101" in root):
                cells = C.load_nb101_naslib(path)
            elif fmt == "nb201-naslib" or (fmt == "auto" and isinstance(root, dict) and "cifar10" in root
                                           and not any(k.isdigit() for k in root)):
                cells = C.load_nb201_naslib(path, accuracy_dataset, prune=prune)
            else:
                cells = _load_spec_json(root, path, target)
        if not cells:
            raise ValueError(f"{path}: empty dataset (no cells)")
        try:
            return CellArrays(cells, in_chans)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    raise ValueError(f"unknown task {task!r}; choose from {sorted(TASKS)}")


def _load_spec_json(root: dict, path: Path, target: str):
    """The library's cell JSON layout: ``{"0": {module_adjacency, module_operations, <accuracies>}, ...}``;
    NAS-Bench-201 files give percent (any accuracy > 1 marks the file as percent). Cells are
    taken as they are (no pruning). A file whose records carry ``*_avg`` accuracies is a
    NAS-Bench-201 file in the authors' layout (8 nodes, ``none`` nodes kept): its cells get
    the authors' depth, the number of ops other than ``none`` (code 5); other files (e.g.
    NAS-Bench-101, already pruned) keep depth = L."""
    from ..data.cells import Cell, NB201_OPS

    if not isinstance(root, dict) or not root:
        raise ValueError(f"{path}: expected a JSON object keyed '0', '1', ...")
    keys = sorted(root, key=lambda k: int(k) if k.isdecimal() and len(k) <= 4000 else -1)  # int() takes <= 4300
    percent = any(v > 1.0 for item in root.values() if isinstance(item, dict)
                  for k, v in item.items() if "accuracy" in k and isinstance(v, (int, float)))
    nb201 = any(k.endswith("_avg") for item in root.values() if isinstance(item, dict)
                for k in item if "accuracy" in k)
    none = NB201_OPS.index("none")
    cells = []
    for key in keys:
        item = root[key]
        where = f"{path} [{key if len(key) <= 60 else key[:57] + '...'}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object with module_adjacency, module_operations and "
                             f"{target!r}, got {type(item).__name__} {str(item)[:40]}")
        for field in ("module_adjacency", "module_operations"):
            if field not in item:
                raise ValueError(f"{where}: missing {field!r}")
        if target not in item:
            raise ValueError(f"{where}: no {target!r}; has {sorted(k for k in item if 'accuracy' in k)[:10]}")
        if isinstance(item[target], bool) or not isinstance(item[target], (int, float)):
            raise ValueError(f"{where}: {target!r} is {repr(item[target])[:60]}, not a number")
        try:
            acc = float(item[target]) / (100.0 if percent else 1.0)
            extra = {k: float(v) / (100.0 if percent else 1.0) for k, v in item.items()
                     if "accuracy" in k and isinstance(v, (int, float))}
            adj = np.asarray(item["module_adjacency"], dtype=np.int64)
            ops = np.asarray(item["module_operations"], dtype=np.int64)
            depth = int((ops != none).sum()) if nb201 else None
            cells.append(Cell(adj, ops, acc, extra, str(key), depth))
        except OverflowError as e:  # an integer accuracy beyond float range
            raise ValueError(f"{where}: accuracy out of range ({e})") from None
        except (TypeError, ValueError) as e:  # ragged lists, strings, shape mismatch
            raise ValueError(f"{where}: bad module_adjacency / module_operations: {str(e)[:160]}") from None
    return cells


def split_dataset(task: str, dataset, *, test_fraction: float = 0.2, seed: int = 0,
                  train_limit: Optional[int] = None):
    """(train, test): latency sets split inside every family with whole networks on one
    side (:meth:`LatencyDataset.split_in_domain`); cells split at random. ``train_limit``
    keeps the first that many training items (e.g. NAS-Bench-101 with 1 % training data).
    ``test_fraction`` must lie in (0, 1) for both kinds."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test fraction must lie in (0, 1), got {test_fraction}")
    if task == "latency" and hasattr(dataset, "split_in_domain"):
        train, test = dataset.split_in_domain(test_fraction=test_fraction, seed=seed)
    else:
        n = len(dataset)
        if n < 2:
            raise ValueError(f"cannot split a dataset of {n} item(s)")
        perm = np.random.default_rng(seed).permutation(n)
        n_test = min(n - 1, max(1, int(round(n * test_fraction))))
        train, test = dataset.subset(perm[n_test:]), dataset.subset(perm[:n_test])
    if train_limit is not None:
        train = train.subset(np.arange(min(int(train_limit), len(train))))
    return train, test


def dataset_fingerprint(task, dataset) -> str:
    """A short hash of the node counts, targets and cell depths (resuming on other data is
    refused). Depths equal to the node counts are left out, so such sets keep the
    fingerprint they had before depths were hashed."""
    h = hashlib.sha256()
    sizes = np.ascontiguousarray(task.sizes(dataset), dtype=np.int64)
    h.update(sizes.tobytes())
    h.update(np.ascontiguousarray(task.targets(dataset), dtype=np.float64).tobytes())
    if isinstance(dataset, CellArrays) and not np.array_equal(dataset.depths, sizes):
        h.update(dataset.depths.tobytes())
    return h.hexdigest()[:16]
