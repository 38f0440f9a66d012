"""Latency datasets: the NNLQP layout (ONNX graphs + measured latencies), NAS-Bench-201
per-device latencies, and the embedded default set — one :class:`LatencyDataset` type.

A dataset holds a *store* of graph entries (one per distinct (ONNX file, batch size)) as
plain arrays, and *records* (one per measured line: entry, latency, family, platform,
stage). The store keeps the raw per-node values of :mod:`.onnx_features` (op id, 8
attributes, 4 output dims) and the 4 static scalars; the 192-wide node features and 40-wide
static features are embedded on access (a few microseconds per graph), which keeps the
on-disk cache and the embedded default set ~15x smaller than float32 features.

Store arrays (``sumN`` nodes, ``sumE`` edges, ``G`` entries)::

    op_ids   (sumN,)    int16    one-hot position, -1 = unknown op
    attrs    (sumN, 8)  float32  attribute scalars (ATTR_NAMES)
    shapes   (sumN, 4)  int32    output dims
    node_ptr (G+1,)     int64    node offsets
    edges    (2, sumE)  int32    local (per-graph) edge ids, src < dst
    edge_ptr (G+1,)     int64    edge offsets
    scalars  (G, 4)     float64  batch size, FLOPs, params, MACs

NNLQP cache: one file ``<root>/.nnformer_cache/<text file>.nnfc`` holding the store in a
raw layout (magic, JSON header with dtypes/shapes/offsets and the source key, 64-byte
aligned arrays) that is memory-mapped on load (``np.memmap``; no pickle anywhere). The key
hashes the text file's content and every ONNX file's size and mtime plus the feature
version; a mismatch rebuilds it. It is written to a temporary file and ``os.replace``-d, so
a crash mid-write never leaves a corrupt cache.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import warnings
import zipfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .._atomic import atomic_open
from .._safe_load import load_torch_file
from .onnx_features import FEATURE_VERSION, NodeFeatureTable, node_features, static_features

__all__ = [
    "LatencyDataset",
    "LatencyRecord",
    "collate_latency",
    "parse_latency_file",
    "load_nb201_latency",
    "nb201_cell_descriptor",
    "NB201_NOT_LIVE",
    "nb201_latency_set",
    "load_nb201_latency_csv",
    "NB201_DEVICES",
    "pack_latency_set",
]

_STORE_KEYS = ("op_ids", "attrs", "shapes", "node_ptr", "edges", "edge_ptr", "scalars")
_RECORD_KEYS = ("entry", "latency", "family", "platform", "stage", "speed_id", "graph")
_MAGIC = b"NNFCACHE1\n"
_ALIGN = 64


# ---------------------------------------------------------------------------- text file
class LatencyRecord(tuple):
    """One line: (speed_id, graph_path, batch_size, latency_ms, model_type, platform, stage)."""

    __slots__ = ()
    _fields = ("speed_id", "graph_path", "batch_size", "latency_ms", "model_type", "platform", "stage")

    def __new__(cls, *values):
        return super().__new__(cls, values)

    speed_id = property(lambda s: s[0])
    graph_path = property(lambda s: s[1])
    batch_size = property(lambda s: s[2])
    latency_ms = property(lambda s: s[3])
    model_type = property(lambda s: s[4])
    platform = property(lambda s: s[5])
    stage = property(lambda s: s[6])


def parse_latency_file(path: str | os.PathLike) -> list[LatencyRecord]:
    """Parse an NNLQP text file: ``speed_id graph_path batch_size latency_ms model_type
    platform_id [stage]`` per line; blank lines and ``#`` comments are skipped. A missing
    stage is ``""``. Raises ValueError naming the file and line for a malformed line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latency file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a byte-order mark is not the first id
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    records = []
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        where = f"{path}:{lineno}"
        if len(parts) not in (6, 7):
            raise ValueError(f"{where}: expected 'speed_id graph_path batch_size latency_ms model_type "
                             f"platform_id [stage]', got {len(parts)} fields: {line.strip()[:80]!r}"
                             + ("..." if len(line.strip()) > 80 else ""))
        try:
            bs = int(parts[2])
            lat = float(parts[3])
        except ValueError:
            raise ValueError(f"{where}: batch_size must be an int and latency_ms a number, got "
                             f"{parts[2][:40]!r} and {parts[3][:40]!r}") from None
        if bs < 1 or not np.isfinite(lat) or lat <= 0:
            raise ValueError(f"{where}: need batch_size >= 1 and a positive finite latency, got {bs}, {lat}")
        records.append(LatencyRecord(parts[0], parts[1], bs, lat, parts[4], parts[5],
                                     parts[6] if len(parts) == 7 else ""))
    if not records:
        raise ValueError(f"{path}: no latency records")
    return records


def _find_text_file(root: Path, file: str | None) -> tuple[Path, Path]:
    if root.is_file():
        return root.parent, root
    if not root.is_dir():
        raise FileNotFoundError(f"latency dataset root not found: {root}")
    if file is not None:
        return root, root / file
    for name in ("latency.txt", "gt.txt"):
        if (root / name).is_file():
            return root, root / name
    txts = sorted(root.glob("*.txt"))
    if len(txts) == 1:
        return root, txts[0]
    raise FileNotFoundError(f"{root}: cannot tell the latency text file (found {len(txts)} *.txt files: "
                            f"{[t.name for t in txts[:5]]}); name it latency.txt or give the text file itself "
                            "as the dataset path")


# ---------------------------------------------------------------------------- store I/O
def _concat_store(graphs: Sequence[tuple]) -> dict[str, np.ndarray]:
    """graphs: (op_ids, attrs, shapes, edge_index, scalars(4,)) per entry -> store arrays."""
    n = np.array([len(g[0]) for g in graphs], dtype=np.int64)
    e = np.array([g[3].shape[1] for g in graphs], dtype=np.int64)
    cat = lambda parts, shape, dtype: (np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype))
    return {
        "op_ids": cat([g[0] for g in graphs], (0,), np.int16),
        "attrs": cat([g[1] for g in graphs], (0, 8), np.float32),
        "shapes": cat([g[2] for g in graphs], (0, 4), np.int32),
        "node_ptr": np.concatenate([[0], np.cumsum(n)]).astype(np.int64),
        "edges": (np.concatenate([g[3] for g in graphs], axis=1) if graphs else np.zeros((2, 0))).astype(np.int32),
        "edge_ptr": np.concatenate([[0], np.cumsum(e)]).astype(np.int64),
        "scalars": np.array([g[4] for g in graphs], dtype=np.float64).reshape(-1, 4),
    }


def _write_raw(path: Path, arrays: dict[str, np.ndarray], key: str) -> None:
    """One file: magic, 8-byte header length, JSON header, 64-byte aligned raw arrays.
    Written to a temporary file in the same folder, then ``os.replace``-d (atomic)."""
    header = {"key": key, "arrays": {}}
    offset = 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        offset = -(-offset // _ALIGN) * _ALIGN
        header["arrays"][name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
        offset += a.nbytes
    blob = json.dumps(header).encode()
    start = -(-(len(_MAGIC) + 8 + len(blob)) // _ALIGN) * _ALIGN
    with atomic_open(path) as f:
        f.write(_MAGIC + len(blob).to_bytes(8, "little") + blob)
        for name, a in arrays.items():
            f.seek(start + header["arrays"][name]["offset"])
            f.write(np.ascontiguousarray(a).tobytes())


def _read_raw(path: Path) -> tuple[str, dict[str, np.ndarray]] | None:
    """(key, memory-mapped arrays), or None when the file is missing, truncated or not a cache."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                return None
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        start = -(-(len(_MAGIC) + 8 + n) // _ALIGN) * _ALIGN
        arrays = {}
        for name, spec in header["arrays"].items():
            dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
            if dtype.hasobject:
                return None
            nbytes = int(np.prod(shape)) * dtype.itemsize
            off = start + spec["offset"]
            if off + nbytes > size:
                return None
            arrays[name] = (np.memmap(path, dtype=dtype, mode="r", offset=off, shape=shape) if nbytes
                            else np.zeros(shape, dtype))
        if set(arrays) != set(_STORE_KEYS):
            return None
        return header["key"], arrays
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_store(store: dict, records: dict, source: str) -> None:
    """Raise ValueError (naming ``source`` and the first bad graph or record) unless the store
    follows the layout of the module docstring: ``node_ptr`` and ``edge_ptr`` of one length
    G+1, starting at 0, non-decreasing (every graph has at least one node) and ending at the
    node and edge counts; per-node and per-graph arrays of those lengths; integer edge ids
    with ``0 <= src < dst < n`` of their own graph; op ids in [-1, NUM_OPS); every record's
    entry in [0, G) and latency positive and finite. Vectorised: one pass over each array."""
    from .onnx_features import NUM_ATTRS, NUM_OPS, SHAPE_DIMS, STATIC_SCALARS

    def fail(why: str):
        raise ValueError(f"{source}: malformed latency set: {why}")

    arr = {k: np.asarray(store[k]) for k in _STORE_KEYS}
    for k in ("op_ids", "shapes", "node_ptr", "edges", "edge_ptr"):
        if arr[k].size and arr[k].dtype.kind not in "iu":
            fail(f"{k} must hold integers, got {arr[k].dtype}")
    node_ptr, edge_ptr = arr["node_ptr"].astype(np.int64), arr["edge_ptr"].astype(np.int64)
    if node_ptr.ndim != 1 or node_ptr.shape != edge_ptr.shape or len(node_ptr) < 1:
        fail(f"node_ptr {node_ptr.shape} and edge_ptr {edge_ptr.shape} must both be (G+1,)")
    g_count = len(node_ptr) - 1
    sum_n, edges = len(arr["op_ids"]), arr["edges"]
    if edges.ndim != 2 or edges.shape[0] != 2:
        fail(f"edges must be (2, E), got {edges.shape}")
    for name, ptr, total, what in (("node_ptr", node_ptr, sum_n, "op_ids has"),
                                   ("edge_ptr", edge_ptr, edges.shape[1], "edges has")):
        if ptr[0] != 0 or ptr[-1] != total:
            fail(f"{name} runs from {ptr[0]} to {ptr[-1]} but must run from 0 to {total} ({what} {total})")
        least = 1 if name == "node_ptr" else 0  # a graph has at least one node, any number of edges
        bad = np.flatnonzero(np.diff(ptr) < least)
        if bad.size:
            g = int(bad[0])
            fail(f"graph {g}: {name}[{g}:{g + 2}] = {ptr[g:g + 2].tolist()}; {name} must grow by at least "
                 f"{least} per graph")
    for name, shape in (("op_ids", (sum_n,)), ("attrs", (sum_n, NUM_ATTRS)), ("shapes", (sum_n, SHAPE_DIMS)),
                        ("scalars", (g_count, STATIC_SCALARS))):
        if arr[name].shape != shape:
            fail(f"{name} has shape {arr[name].shape}, expected {shape}")
    if sum_n:
        op_ids = arr["op_ids"]
        bad = np.flatnonzero((op_ids < -1) | (op_ids >= NUM_OPS))
        if bad.size:
            fail(f"node {int(bad[0])} has op id {int(op_ids[bad[0]])} outside [-1, {NUM_OPS})")
    if edges.shape[1]:
        graph_of = np.repeat(np.arange(g_count), np.diff(edge_ptr))
        n = np.diff(node_ptr)[graph_of]
        src, dst = edges[0].astype(np.int64), edges[1].astype(np.int64)
        bad = np.flatnonzero((src < 0) | (src >= dst) | (dst >= n))
        if bad.size:
            e = int(bad[0])
            g = int(graph_of[e])
            fail(f"graph {g} edge {e - int(edge_ptr[g])} = ({src[e]}, {dst[e]}) breaks 0 <= src < dst < {n[e]} "
                 f"(local ids of its {n[e]} nodes, topological order)")
    entry, latency = records["entry"], records["latency"]
    bad = np.flatnonzero((entry < 0) | (entry >= g_count))
    if bad.size:
        r = int(bad[0])
        fail(f"record {r} has entry {int(entry[r])} outside [0, {g_count})")
    bad = np.flatnonzero(~(np.isfinite(latency) & (latency > 0)))
    if bad.size:
        r = int(bad[0])
        fail(f"record {r} has latency {float(latency[r])}; latencies must be positive and finite")


def _describe_job(job):
    path, batch_size = job
    from .onnx_features import describe_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = describe_onnx(path, batch_size)
    unknown = Counter(t for t, i in zip(g.op_types, g.op_ids) if i < 0)
    return (g.op_ids, g.attrs, g.shapes, g.edge_index, (g.batch_size, g.flops, g.params, g.macs)), unknown


# ---------------------------------------------------------------------------- dataset
class LatencyDataset(Dataset):
    """Latency records of whole networks, for :class:`nnformer_fast.NNFormerLatency`.

    ``LatencyDataset(root, file=None, *, families=None, platforms=None, stages=None,
    cache=True, cache_path=None, workers=None, progress=True)`` reads an NNLQP-layout
    folder: ``root`` holds the text file (``latency.txt``, ``gt.txt`` or the only ``*.txt``;
    or pass ``file``, or make ``root`` the text file itself) and the ONNX files at
    ``root/graph_path``. Filters keep the records whose model_type (family), platform and
    stage are in the given lists; a filter value that matches nothing raises ValueError
    listing the values present. ``workers`` processes parse the ONNX files (default: CPU
    count, at most 8; 0 = in this process).

    Item ``i``: ``(x (n, 192) float32, edge_index (2, e) int64, static (40,) float32,
    latency () float32 ms)``; batch them with :func:`collate_latency`.
    """

    def __init__(self, root: str | os.PathLike, file: str | None = None, *, families: Iterable[str] | None = None,
                 platforms: Iterable[str] | None = None, stages: Iterable[str] | None = None, cache: bool = True,
                 cache_path: str | os.PathLike | None = None, workers: int | None = None, progress: bool = True):
        root, text = _find_text_file(Path(root), file)
        lines = parse_latency_file(text)
        pairs = sorted({(r.graph_path, r.batch_size) for r in lines})
        entry_of = {p: k for k, p in enumerate(pairs)}
        for r in lines:
            if not (root / r.graph_path).is_file():
                raise FileNotFoundError(f"{text}: ONNX file of {r.speed_id} not found: {root / r.graph_path}")
        key = _source_key(text, root, pairs)
        cache_file = Path(cache_path) if cache_path else root / ".nnformer_cache" / (text.name + ".nnfc")
        store = None
        if cache:
            got = _read_raw(cache_file)
            if got is not None and got[0] == key:
                store = got[1]
        if store is None:
            store = _build_store([(str(root / p), b) for p, b in pairs], workers, progress)
            if cache:
                try:
                    _write_raw(cache_file, store, key)
                    store = _read_raw(cache_file)[1]
                except OSError as e:  # read-only dataset folder: keep the features in memory
                    warnings.warn(f"{text}: cannot write the feature cache {cache_file} ({e}); pass cache_path= "
                                  "to cache elsewhere", stacklevel=2)
        records = {
            "entry": np.array([entry_of[(r.graph_path, r.batch_size)] for r in lines], dtype=np.int64),
            "latency": np.array([r.latency_ms for r in lines], dtype=np.float32),
            "family": np.array([r.model_type for r in lines]),
            "platform": np.array([r.platform for r in lines]),
            "stage": np.array([r.stage for r in lines]),
            "speed_id": np.array([r.speed_id for r in lines]),
            "graph": np.array([r.graph_path for r in lines]),
        }
        _check_store(store, records, str(text))
        self._init(store, records, str(text))
        self._apply_filters(families, platforms, stages)

    # ------------------------------------------------------------------ construction
    def _init(self, store: dict, records: dict, source: str, derived: dict | None = None) -> None:
        self.store, self.records, self.source = store, records, source
        self.cache_path = None
        self._derived = {} if derived is None else derived  # computed from the store; views share it

    @classmethod
    def from_arrays(cls, store: dict, records: dict, source: str = "<arrays>", *, families=None, platforms=None,
                    stages=None) -> "LatencyDataset":
        """A dataset over given store arrays and record arrays (see the module docstring;
        records: entry, latency and optional family/platform/stage/speed_id arrays).
        Raises ValueError naming ``source`` and the graph or record when the arrays break
        the layout (:func:`_check_store`)."""
        missing = [k for k in _STORE_KEYS if k not in store] + [k for k in ("entry", "latency") if k not in records]
        if missing:
            raise ValueError(f"{source}: store or record arrays missing {missing}")
        n = len(records["entry"])
        for k, v in records.items():
            if np.shape(v)[:1] != (n,):
                raise ValueError(f"{source}: record column {k!r} has {np.shape(v)[:1]} rows, 'entry' has {n}")
        entry = np.asarray(records["entry"])
        if entry.size and entry.dtype.kind not in "iu":
            raise ValueError(f"{source}: record column 'entry' must hold integers, got {entry.dtype}")
        recs = {"entry": entry.astype(np.int64), "latency": np.asarray(records["latency"], dtype=np.float32)}
        for k in ("family", "platform", "stage", "speed_id"):
            recs[k] = np.asarray(records[k]) if k in records else np.full(n, "")
        recs["graph"] = (np.asarray(records["graph"]) if "graph" in records
                         else np.char.add("entry", recs["entry"].astype(str)))
        for k, v in records.items():  # extra per-record columns (e.g. the latency spread)
            if k not in recs:
                recs[k] = np.asarray(v)
        _check_store(store, recs, source)
        self = cls.__new__(cls)
        self._init(store, recs, source)
        self._apply_filters(families, platforms, stages)
        return self

    @classmethod
    def load(cls, path: str | os.PathLike, **filters) -> "LatencyDataset":
        """Read a dataset written by :meth:`save` (an ``.npz`` of plain arrays)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latency set not found: {path}")
        try:  # allow_pickle=False: an object array (a pickle) is refused, never unpickled
            with np.load(path, allow_pickle=False) as z:
                store = {k: z[k] for k in _STORE_KEYS if k in z.files}
                records = {k[4:]: z[k] for k in z.files if k.startswith("rec_")}
        except (ValueError, EOFError, OSError, TypeError, zipfile.BadZipFile) as e:  # TypeError: a .npy array
            raise ValueError(f"{path}: not a latency set written by LatencyDataset.save "
                             f"({type(e).__name__}: {str(e)[:120]})") from None
        return cls.from_arrays(store, records, str(path), **filters)

    def save(self, path: str | os.PathLike, compress: bool = True) -> None:
        """Write the records of this dataset and the entries they use to one ``.npz`` of
        plain arrays (compressed by default), atomically."""
        used = np.unique(self.records["entry"])
        graphs = [self._raw(int(g)) for g in used]
        store = _concat_store(graphs)
        remap = np.full(int(self.records["entry"].max()) + 1 if len(used) else 0, -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        recs = {"rec_" + k: v for k, v in self.records.items()}
        recs["rec_entry"] = remap[self.records["entry"]]
        with atomic_open(path) as f:
            (np.savez_compressed if compress else np.savez)(f, **store, **recs)

    def _apply_filters(self, families, platforms, stages) -> None:
        keep = np.ones(len(self), dtype=bool)
        for name, col, values in (("family", "family", families), ("platform", "platform", platforms),
                                  ("stage", "stage", stages)):
            if values is None:
                continue
            values = [values] if isinstance(values, str) else list(values)
            present = sorted(set(self.records[col].tolist()))
            bad = [v for v in values if v not in present]
            if bad:
                raise ValueError(f"{self.source}: unknown {name} filter {bad}; present: {present}")
            keep &= np.isin(self.records[col], values)
        if not keep.all():
            self.records = {k: v[keep] for k, v in self.records.items()}

    def subset(self, indices) -> "LatencyDataset":
        """A view on the records ``indices`` sharing this dataset's store."""
        idx = np.asarray(indices, dtype=np.int64)
        view = LatencyDataset.__new__(LatencyDataset)
        view._init(self.store, {k: v[idx] for k, v in self.records.items()}, self.source, self._derived)
        return view

    def node_feature_table(self) -> NodeFeatureTable:
        """The store's :class:`~nnformer_fast.data.onnx_features.NodeFeatureTable`, built on
        first use and shared by every view of the store (``subset``, the splits)."""
        table = self._derived.get("node_features")
        if table is None:
            s = self.store
            table = self._derived["node_features"] = NodeFeatureTable(s["op_ids"], s["attrs"], s["shapes"])
        return table

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.records["entry"])

    def _raw(self, g: int):
        s = self.store
        a, b = int(s["node_ptr"][g]), int(s["node_ptr"][g + 1])
        c, d = int(s["edge_ptr"][g]), int(s["edge_ptr"][g + 1])
        return (np.asarray(s["op_ids"][a:b]), np.asarray(s["attrs"][a:b]), np.asarray(s["shapes"][a:b]),
                np.asarray(s["edges"][:, c:d]), np.asarray(s["scalars"][g]))

    def graph_arrays(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Record ``i`` as numpy: (x (n, 192) float32, edge_index (2, e) int64, static (40,)
        float32, latency ms)."""
        op_ids, attrs, shapes, edges, sc = self._raw(int(self.records["entry"][i]))
        x = node_features(op_ids, attrs, shapes)
        static = static_features(*sc).astype(np.float32)
        return x, edges.astype(np.int64), static, float(self.records["latency"][i])

    def __getitem__(self, i):
        x, e, s, y = self.graph_arrays(int(i))
        return torch.from_numpy(x), torch.from_numpy(e), torch.from_numpy(s), torch.tensor(y, dtype=torch.float32)

    @property
    def latencies(self) -> np.ndarray:
        """(len,) float32 latencies in ms."""
        return self.records["latency"]

    @property
    def families(self) -> np.ndarray:
        """(len,) family (model_type) of each record."""
        return self.records["family"]

    @property
    def platforms(self) -> np.ndarray:
        return self.records["platform"]

    @property
    def num_nodes(self) -> np.ndarray:
        """(len,) int64 node count of each record's graph."""
        ptr = np.asarray(self.store["node_ptr"])
        e = self.records["entry"]
        return ptr[e + 1] - ptr[e]

    def __repr__(self) -> str:
        fams = Counter(self.records["family"].tolist())
        return f"LatencyDataset({len(self)} records, {len(fams)} families, source={self.source!r})"

    # ------------------------------------------------------------------ splits
    def _groups(self) -> np.ndarray:
        """Group id per record: the records of one network (one ONNX file or cell, any batch
        size, any platform) share a group, so splits never put a network on both sides."""
        return np.unique(self.records["graph"], return_inverse=True)[1]

    def split_in_domain(self, test_fraction: float = 0.2, val_fraction: float = 0.0, seed: int = 0):
        """Random split inside every family (whole networks go to one side): returns
        ``(train, test)`` or, with ``val_fraction > 0``, ``(train, val, test)`` datasets."""
        if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
            raise ValueError(f"bad split fractions test={test_fraction} val={val_fraction}")
        rng = np.random.default_rng(seed)
        groups = self._groups()
        parts = {"train": [], "val": [], "test": []}
        for fam in sorted(set(self.families.tolist())):
            fam_groups = np.unique(groups[self.families == fam])
            rng.shuffle(fam_groups)
            n = len(fam_groups)
            n_test = max(1, int(round(n * test_fraction))) if n > 1 else 0
            n_val = int(round(n * val_fraction)) if n - n_test > 1 else 0
            parts["test"].append(fam_groups[:n_test])
            parts["val"].append(fam_groups[n_test:n_test + n_val])
            parts["train"].append(fam_groups[n_test + n_val:])
        out = [self.subset(np.nonzero(np.isin(groups, np.concatenate(parts[k])))[0])
               for k in (("train", "val", "test") if val_fraction > 0 else ("train", "test"))]
        return tuple(out)

    def split_out_of_domain(self, test_families: Iterable[str]):
        """Hold out whole families: returns ``(train, test)`` with ``test`` = the records of
        ``test_families``. Unknown family names raise ValueError."""
        test_families = [test_families] if isinstance(test_families, str) else list(test_families)
        present = sorted(set(self.families.tolist()))
        bad = [f for f in test_families if f not in present]
        if bad or not test_families:
            raise ValueError(f"{self.source}: unknown test families {bad or test_families}; present: {present}")
        mask = np.isin(self.families, test_families)
        return self.subset(np.nonzero(~mask)[0]), self.subset(np.nonzero(mask)[0])


def _source_key(text: Path, root: Path, pairs) -> str:
    h = hashlib.sha256()
    h.update(f"feature_version={FEATURE_VERSION}\n".encode())
    h.update(hashlib.sha256(text.read_bytes()).digest())
    for p in sorted({p for p, _ in pairs}):
        st = (root / p).stat()
        h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _build_store(jobs, workers: int | None, progress: bool) -> dict[str, np.ndarray]:
    from tqdm.auto import tqdm

    workers = min(os.cpu_count() or 1, 8) if workers is None else int(workers)
    unknown: Counter = Counter()
    graphs = []
    bar = tqdm(total=len(jobs), desc="ONNX features", unit="graph", disable=not progress)
    try:
        if workers <= 0 or len(jobs) < 4:
            results = map(_describe_job, jobs)
            for g, u in results:
                graphs.append(g)
                unknown.update(u)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as ex:
                for g, u in ex.map(_describe_job, jobs, chunksize=max(1, len(jobs) // (workers * 8))):
                    graphs.append(g)
                    unknown.update(u)
                    bar.update(1)
    finally:
        bar.close()
    if unknown:
        warnings.warn(f"{sum(unknown.values())} nodes of op types outside OP_TYPES got a zero one-hot: "
                      f"{dict(sorted(unknown.items()))}", stacklevel=3)
    return _concat_store(graphs)


def pack_latency_set(root: str | os.PathLike, out: str | os.PathLike, *, workers: int | None = None,
                     progress: bool = True) -> "LatencyDataset":
    """Read a built NNLQP-layout folder (``nnformer-fast build-latency-set``) and write it as
    one compressed ``.npz`` of plain arrays (:meth:`LatencyDataset.save`), the form of the
    embedded default set. The builder's spread file, when present, adds the record columns
    ``p25_ms`` and ``p75_ms``. Returns the packed dataset."""
    ds = LatencyDataset(root, workers=workers, progress=progress, cache=False)
    spread = Path(ds.source).parent / "latency_spread.tsv"
    if spread.is_file():
        q = {}
        with open(spread, encoding="utf-8", errors="replace") as f:
            next(f, None)
            for lineno, line in enumerate(f, 2):
                p = line.split("\t")
                if len(p) >= 5:
                    try:
                        q[p[0]] = (float(p[3]), float(p[4]))
                    except ValueError:
                        raise ValueError(f"{spread}:{lineno}: p25_ms and p75_ms must be numbers, got "
                                         f"{p[3][:20]!r} and {p[4][:20]!r}") from None
        both = [q.get(sid, (np.nan, np.nan)) for sid in ds.records["speed_id"]]
        ds.records["p25_ms"] = np.array([b[0] for b in both], dtype=np.float32)
        ds.records["p75_ms"] = np.array([b[1] for b in both], dtype=np.float32)
    ds.save(out)
    return ds


# ---------------------------------------------------------------------------- collate
def collate_latency(samples):
    """Batch items of a :class:`LatencyDataset`: returns ``(x (N, 192) float32, GraphBatch,
    static (B, 40) float32, y (B,) float32)`` with the graphs packed in order."""
    from ..graph import GraphBatch

    if not samples:
        raise ValueError("collate_latency: empty batch")
    xs, es, ss, ys = zip(*samples)
    sizes = [x.shape[0] for x in xs]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    edge_index = torch.cat([e + int(o) for e, o in zip(es, offsets)], dim=1) if es else torch.zeros(2, 0)
    graph = GraphBatch.from_edge_index(edge_index.to(torch.int64), sizes)
    return torch.cat(xs), graph, torch.stack(ss), torch.stack([torch.as_tensor(y) for y in ys]).reshape(-1)


# ---------------------------------------------------------------------------- NAS-Bench-201
NB201_DEVICES = (
    "1080ti_1", "1080ti_32", "1080ti_256", "2080ti_1", "2080ti_32", "2080ti_256", "titanx_1", "titanx_32",
    "titanx_256", "titanxp_1", "titanxp_32", "titanxp_256", "titan_rtx_1", "titan_rtx_32", "titan_rtx_256",
    "gold_6226", "gold_6240", "silver_4114", "silver_4210r", "eyeriss", "fpga", "raspi4", "pixel3", "pixel2",
    "samsung_a50", "samsung_s7", "essential_ph_1",
)
# NB201 op code -> (kernel, pad) attributes; op one-hot position = the op code itself
_NB201_ATTRS = {0: (0, 0), 1: (1, 0), 2: (3, 1), 3: (3, 1), 4: (0, 0), 5: (0, 0), 6: (0, 0)}
#: one-hot position of a latency cell's node that is not live (``nb201_live_nodes``: its result does
#: not depend on the input or never reaches the output): conv1x1 7, conv3x3 8, avgpool 9, skip 10, and
#: the output of a cell cut off from its input 11. The op still runs (same attributes and counts), but a
#: runtime that folds constants and drops dead code may skip it. ``none`` (5) is never live and keeps
#: its code, the input keeps 0.
NB201_NOT_LIVE = {1: 7, 2: 8, 3: 9, 4: 10, 6: 11}


def _nb201_scalars(ops, batch_size: int):
    """(batch, FLOPs, params, MACs) of the NAS-Bench-201 CIFAR network (C=16, N=5, 32x32,
    10 classes) whose 15 cells all use the six edge ``ops`` (op codes 1..5); formulas of
    onnx_features. Every op the network executes counts, whether or not its output reaches
    the cell's output: ``none`` runs too (``x * 0``, one elementwise op)."""
    flops = params = macs = 0.0
    for s in range(3):
        c, hw = 16 * 2 ** s, (32 // 2 ** s) ** 2
        act = hw * c * batch_size
        for op in ops:
            if op in (1, 2):
                k2 = 1 if op == 1 else 9
                flops += 5 * (2 * act * c * k2 + 3 * act)  # ReLU + Conv + BN
                params += 5 * (c * c * k2 + 4 * c)
                macs += 5 * (4 * act + c * c * k2 + 4 * c)
            elif op == 3:
                flops += 5 * 9 * act
                macs += 5 * 2 * act
            elif op == 5:
                flops += 5 * act
                macs += 5 * 2 * act
    # stem, two residual reductions, head: the same for every cell
    flops += batch_size * (2 * 32 * 32 * 16 * 27 + 2 * 16 * 16 * 32 * 16 * 9 * 2 + 2 * 8 * 8 * 64 * 32 * 9 * 2)
    params += 16 * 27 + 32 * 16 * 9 + 32 * 32 * 9 + 64 * 32 * 9 + 64 * 64 * 9 + 64 * 10 + 10
    return float(batch_size), flops, params, macs


def nb201_cell_descriptor(arch, batch_size: int = 1):
    """(op_ids, attrs, shapes, edge_index, scalars) of a NAS-Bench-201 cell as the latency
    model reads it, in the 192-wide layout.

    arch: an arch string, the six edge ops (names or codes 1..5), or an unpruned
    :class:`Cell` (``nb201_cell(arch, prune=False)``). Latency cells keep every op the
    network executes (docs/DATA.md): all 8 nodes (input, the six edges, output), ``none``
    included, and the fixed adjacency; a pruned cell that lost nodes is refused.
    One-hot position = NB201 op code (input 0, conv1x1 1, conv3x3 2, avgpool 3, skip 4,
    none 5, output 6) of a live node, ``NB201_NOT_LIVE`` of the op code of one that is not
    (docs/DATA.md), kernel/pad attributes of the op (conv1x1 k=1; conv3x3 and avgpool
    k=3, pad 1; stride, dilation and group 1 for the three), output shapes all 0 (a cell has
    no single shape), static scalars of the whole CIFAR network built from the cell
    (:func:`_nb201_scalars`)."""
    from .cells import Cell, nb201_cell, nb201_live_nodes

    cell = arch if isinstance(arch, Cell) else nb201_cell(arch, prune=False)
    if cell.num_nodes != len(_NB201_ATTRS) + 1:
        raise ValueError(f"nb201_cell_descriptor: a latency cell keeps every executed op (8 nodes), got "
                         f"{cell.num_nodes} nodes; build it with nb201_cell(arch, prune=False)")
    ops = np.asarray(cell.ops, dtype=np.int64)
    live = nb201_live_nodes(ops)
    attrs = np.zeros((len(ops), 8), dtype=np.float32)
    for i, op in enumerate(ops):
        k, p = _NB201_ATTRS[int(op)]
        if k:
            attrs[i, :4] = (k, 1, p, 1)
            attrs[i, 4] = 1 if op in (1, 2) else 0
    codes = ops.copy()
    for i in np.flatnonzero(~live):
        codes[i] = NB201_NOT_LIVE.get(int(ops[i]), int(ops[i]))
    edge_index = np.stack(np.nonzero(np.asarray(cell.adjacency))).astype(np.int64)
    inner = [int(o) for o in ops[1:-1]]
    return codes.astype(np.int16), attrs, np.zeros((len(ops), 4), np.int32), edge_index, \
        _nb201_scalars(inner, batch_size)


def nb201_latency_set(archs: Sequence[str], latencies_ms, batch_size: int = 1, *, platform: str = "",
                      source: str = "<arrays>", ids: Sequence[str] | None = None) -> LatencyDataset:
    """A :class:`LatencyDataset` of NAS-Bench-201 networks measured on one device.

    archs: M arch strings (``|a~0|+|b~0|c~1|+|d~0|e~1|f~2|``), each at most once;
    latencies_ms: M positive latencies in ms; batch_size: the batch the latencies were
    measured at (a static feature). Cells are built with every executed op
    (:func:`nb201_cell_descriptor`). Family ``nasbench201``, platform ``platform``; ``ids``
    (default the row numbers) become the records' ``speed_id``. A bad arch string, a
    non-positive latency or a repeated arch raises ValueError naming its row."""
    archs = list(archs)
    lat = np.asarray(latencies_ms, dtype=np.float64).reshape(-1)
    ids = [str(i) for i in range(len(archs))] if ids is None else [str(i) for i in ids]
    if not len(lat) == len(archs) == len(ids):
        raise ValueError(f"{source}: {len(archs)} archs, {len(lat)} latencies and {len(ids)} ids; need one of each "
                         "per network")
    if not archs:
        raise ValueError(f"{source}: no latencies")
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{source}: batch_size must be an integer >= 1, got {batch_size!r}")
    row_of: dict[str, str] = {}
    graphs = []
    for arch, y, i in zip(archs, lat, ids):
        if not (np.isfinite(y) and y > 0):
            raise ValueError(f"{source} [{i}]: latency must be a positive number of ms, got {y}")
        if arch in row_of:
            raise ValueError(f"{source} [{i}]: arch {arch!r} repeats [{row_of[arch]}]")
        row_of[arch] = i
        try:
            graphs.append(_nb201_descriptor_cached(arch, int(batch_size)))
        except ValueError as e:
            raise ValueError(f"{source} [{i}]: {e}") from None
    n = len(graphs)
    records = {"entry": np.arange(n), "latency": lat.astype(np.float32), "family": np.full(n, "nasbench201"),
               "platform": np.full(n, platform), "stage": np.full(n, ""), "speed_id": np.array(ids),
               "graph": np.array(archs)}
    return LatencyDataset.from_arrays(_concat_store(graphs), records, source)


def load_nb201_latency_csv(path: str | os.PathLike, batch_size: int = 1) -> LatencyDataset:
    """A user's own NAS-Bench-201 latencies: a CSV file with the header ``arch,latency_ms``
    and one row per measured network (any subset of the 15625 cells, each at most once).
    Platform = the file's stem. A bad row raises ValueError naming the file and its line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latency CSV not found: {path}")
    archs, lats, lines = [], [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != ["arch", "latency_ms"]:
                raise ValueError(f"{path}:1: the header must be 'arch,latency_ms', got {','.join(header or [])!r}")
            for row in reader:
                if not row or not "".join(row).strip():
                    continue
                where = f"{path}:{reader.line_num}"
                if len(row) != 2:
                    raise ValueError(f"{where}: expected 'arch,latency_ms', got {len(row)} fields: {','.join(row)!r}")
                try:
                    lat = float(row[1])
                except ValueError:
                    raise ValueError(f"{where}: latency_ms must be a number, got {row[1]!r}") from None
                archs.append(row[0].strip())
                lats.append(lat)
                lines.append(f"line {reader.line_num}")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    if not archs:
        raise ValueError(f"{path}: no latency rows")
    return nb201_latency_set(archs, lats, batch_size, platform=path.stem, source=str(path), ids=lines)


@functools.lru_cache(maxsize=2 ** 16)
def _nb201_descriptor_cached(arch: str, batch_size: int):
    # the 27 HELP devices share their 15625 cells: build each (arch, batch) once per process
    return nb201_cell_descriptor(arch, batch_size)


def _torch_load(path: Path):
    """The plain list/dict of a HELP ``.pt`` file; no code runs (:func:`load_torch_file`)."""
    return load_torch_file(path, "NAS-Bench-201 latency file")


def load_nb201_latency(device: str, root: str | os.PathLike | None = None) -> LatencyDataset:
    """NAS-Bench-201 latencies of one device (HELP files ``nb201_latency/<device>.pt`` and
    ``str_arch2idx.pt`` under ``root``, default the shared data folder) as a
    :class:`LatencyDataset` over cell graphs (:func:`nb201_cell_descriptor`). Family
    ``nasbench201``, platform = ``device``, batch size from the device suffix (``_32`` ->
    32, else 1). Cells without a measurement (non-positive or NaN) are dropped. Cells keep
    every executed op (:func:`nb201_latency_set`)."""
    from .cells import default_data_dir

    if device not in NB201_DEVICES:
        raise ValueError(f"unknown NAS-Bench-201 device {device!r}; known: {', '.join(NB201_DEVICES)}")
    if root is None:
        base = default_data_dir()
        if base is None:
            raise FileNotFoundError("no data folder found (set NNFORMER_FAST_DATA)")
        root = base / "nb201_latency"
    root = Path(root)
    if (root / "nb201_latency").is_dir():
        root = root / "nb201_latency"
    lat_path, idx_path = root / f"{device}.pt", root / "str_arch2idx.pt"
    for p in (lat_path, idx_path):
        if not p.is_file():
            raise FileNotFoundError(f"NAS-Bench-201 latency file not found: {p}")
    raw = _torch_load(lat_path)
    try:
        lat = np.asarray(raw, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{lat_path}: expected a list of latencies (numbers), got {type(raw).__name__}") from None
    arch2idx = _torch_load(idx_path)
    if not isinstance(arch2idx, dict) or not all(isinstance(k, str) and type(v) is int and v >= 0
                                                 for k, v in arch2idx.items()):
        raise ValueError(f"{idx_path}: expected a dict arch string -> index (an int >= 0)")
    tail = device.rsplit("_", 1)[-1]
    bs = int(tail) if tail.isdigit() and device.count("_") >= 1 and not device.startswith(("gold", "silver")) else 1
    order = sorted(arch2idx.items(), key=lambda kv: kv[1])
    measured = [(a, i) for a, i in order if i < len(lat) and np.isfinite(lat[i]) and lat[i] > 0]
    if not measured:
        raise ValueError(f"{lat_path}: no valid latencies")
    return nb201_latency_set([a for a, _ in measured], lat[[i for _, i in measured]], bs, platform=device,
                             source=str(lat_path), ids=[str(i) for _, i in measured])
