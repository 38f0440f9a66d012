"""Cell benchmarks (NAS-Bench-101, NAS-Bench-201): graphs, loaders, tokens, batching.

A cell is a small DAG in topological order: node 0 is the input, node L-1 the output and
``A[i, j] = 1`` means an edge i -> j (docs/DATA.md). Op codes:

- NAS-Bench-101: input 0, conv1x1-bn-relu 1, conv3x3-bn-relu 2, maxpool3x3 3, output 4.
- NAS-Bench-201: input 0, nor_conv_1x1 1, nor_conv_3x3 2, avg_pool_3x3 3, skip_connect 4,
  none 5, output 6. Each edge operation of the arch string is a node; ``nb201_cell`` builds
  the pruned graph (docs/DATA.md) or, with ``prune=False``, the authors' unpruned one. Pruning is for
  accuracy only: latency cells keep every op the network executes, so they are always
  unpruned, and mark the ops pruning would drop (``nb201_live_nodes``;
  ``nnformer_fast.data.latency.nb201_cell_descriptor``).

Accuracies are stored as fractions in [0, 1]; files that give percent are divided by 100.

Batching. ``tokenize`` turns one cell into the model's input dict (the reference's
``onehot_op`` encoding). ``CellDataset`` yields ``(inputs, target)`` pairs with ``target`` a
(1,) float32 tensor. Both collates take a list of such pairs, or of bare input dicts, and
return ``(batch, targets)`` with ``targets`` (B, 1) float32, or just ``batch``.
``collate_same_size`` matches the reference (equal node counts only; pair it with
``SameSizeBatchSampler``); ``collate_padded`` pads to the largest cell and adds
``num_vertices``.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = [
    "Cell",
    "NB101_OPS",
    "NB201_OPS",
    "parse_nb201_arch",
    "nb201_cell",
    "nb201_live_nodes",
    "nb101_cell",
    "default_data_dir",
    "load_nb101_json",
    "load_nb101_naslib",
    "load_nb201_csv",
    "load_nb201_naslib",
    "read_json_object",
    "tokenize",
    "collate_same_size",
    "collate_padded",
    "CellDataset",
    "group_by_size",
    "SameSizeBatchSampler",
]

NB101_OPS = ("input", "conv1x1-bn-relu", "conv3x3-bn-relu", "maxpool3x3", "output")
NB201_OPS = (
    "input",
    "nor_conv_1x1",
    "nor_conv_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "none",
    "output",
)
_NB201_EDGE_OPS = NB201_OPS[1:6]
_NB201_NONE = NB201_OPS.index("none")
_NB201_OUTPUT = NB201_OPS.index("output")

# Fixed 8-node NAS-Bench-201 graph: node 0 input, nodes 1..6 the arch-string edges
# e1..e6 = (0->1), (0->2), (1->2), (0->3), (1->3), (2->3) between NB201's 4 feature nodes,
# node 7 output. An edge-node feeds every edge-node that leaves its end node.
_NB201_EDGES = ((0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 6), (3, 6), (4, 7), (5, 7), (6, 7))
_NB201_ADJ = np.zeros((8, 8), dtype=np.int64)
_NB201_ADJ[tuple(np.array(_NB201_EDGES).T)] = 1

# NASLib orders (automl/NASLib): NB101 op ids, NB201 op ids, NB201 edge order.
_NASLIB_NB101_TO_OURS = (0, 4, 3, 1, 2)  # [input, output, maxpool3x3, conv1x1, conv3x3]
_NASLIB_NB201_OPS = ("skip_connect", "none", "nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3")
# NASLib edges (1,2),(1,3),(1,4),(2,3),(2,4),(3,4) (1-based nodes); arch-string edge k is
# NASLib edge _NASLIB_NB201_EDGE_PERM[k] (the arch string sorts edges by their end node).
_NASLIB_NB201_EDGE_PERM = (0, 1, 3, 2, 4, 5)

_NB201_CSV_COLUMNS = {
    "cifar10": "CIFAR10TestAccuracy200Epochs",
    "cifar100": "CIFAR100TestAccuracy200Epochs",
    "ImageNet16-120": "ImageNetTestAccuracy200Epochs",
}


@dataclass(eq=False)
class Cell:
    """One architecture cell.

    adjacency: (L, L) int64, 0/1, strictly upper triangular; ``adjacency[i, j] = 1`` is an
        edge i -> j. Node 0 is the input, node L-1 the output.
    ops: (L,) int64 op codes (NAS-Bench-101 or -201 codes, see the module docstring).
    accuracy: the training target as a fraction in [0, 1], or None.
    extra: further per-cell numbers from the source file (other accuracies as fractions,
        flops, params, zero-cost proxy scores), keyed by their source name.
    key: the cell's identity in its source file (arch string, JSON key), or None.
    depth: the integer >= 1 one-hot encoded in ``code_depth``; None means L (docs/DATA.md),
        and ``__post_init__`` puts L there. The authors' NAS-Bench-201 encoding counts only
        the non-``none`` nodes (see ``nb201_cell``).
    """

    adjacency: np.ndarray
    ops: np.ndarray
    accuracy: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    key: str | None = None
    depth: int | None = None

    def __post_init__(self) -> None:
        self.adjacency = np.asarray(self.adjacency, dtype=np.int64)
        self.ops = np.asarray(self.ops, dtype=np.int64)
        n = self.ops.shape[0] if self.ops.ndim == 1 else -1
        if n < 2 or self.adjacency.shape != (n, n):
            raise ValueError(
                f"Cell: need adjacency (L, L) and ops (L,) with L >= 2, got shapes "
                f"{self.adjacency.shape} and {self.ops.shape}"
            )
        if self.depth is None:
            self.depth = n
        elif not _is_int(self.depth) or self.depth < 1:
            raise ValueError(f"Cell: depth must be an integer >= 1 (one-hot in code_depth), got {self.depth!r}")
        self.depth = int(self.depth)

    @property
    def num_nodes(self) -> int:
        """L, the number of nodes."""
        return int(self.ops.shape[0])


def _is_int(op) -> bool:
    """An integer op code; bools are not (True would silently read as code 1)."""
    return isinstance(op, (int, np.integer)) and not isinstance(op, (bool, np.bool_))


def _on_path_mask(adjacency: np.ndarray) -> np.ndarray:
    """(L,) bool: nodes on some path 0 -> L-1 of a strictly upper-triangular adjacency."""
    n = adjacency.shape[0]
    edge = adjacency != 0
    from_input = np.zeros(n, dtype=bool)
    from_input[0] = True
    for j in range(1, n):
        from_input[j] = bool((from_input[:j] & edge[:j, j]).any())
    to_output = np.zeros(n, dtype=bool)
    to_output[n - 1] = True
    for i in range(n - 2, -1, -1):
        to_output[i] = bool((to_output[i + 1 :] & edge[i, i + 1 :]).any())
    return from_input & to_output


def _check_dag_adjacency(adjacency, name: str) -> np.ndarray:
    """Validate a square 0/1 strictly upper-triangular matrix; returns it as (L, L) int64."""
    try:
        a = np.asarray(adjacency)
    except ValueError:  # ragged rows
        raise ValueError(f"{name}: adjacency must be a square (L, L) matrix, got ragged rows") from None
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name}: adjacency must be square (L, L), got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"{name}: a cell needs at least input and output, got L={a.shape[0]}")
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name}: adjacency entries must be 0 or 1, got {np.unique(a).tolist()}")
    a = a.astype(np.int64)
    lower = np.argwhere(np.tril(a) != 0)
    if len(lower):
        raise ValueError(
            f"{name}: adjacency must be strictly upper triangular (a DAG in topological "
            f"order); edges i->j with j <= i: {[tuple(e) for e in lower.tolist()]}"
        )
    return a


def parse_nb201_arch(arch: str) -> list[str]:
    """Split ``|a~0|+|b~0|c~1|+|d~0|e~1|f~2|`` into its 6 edge ops, in string order."""
    if not isinstance(arch, str):
        raise ValueError(f"parse_nb201_arch: expected a str, got {type(arch).__name__}")

    def malformed(why: str) -> ValueError:
        return ValueError(f"malformed NAS-Bench-201 arch string ({why}): {arch!r}")

    groups = arch.split("+")
    if len(groups) != 3:
        raise malformed("need 3 '+'-separated nodes")
    ops = []
    for node, group in enumerate(groups, start=1):
        if len(group) < 2 or group[0] != "|" or group[-1] != "|":
            raise malformed(f"node {node}: {group!r}")
        items = group[1:-1].split("|")
        if len(items) != node:
            raise malformed(f"node {node} needs {node} inputs, got {len(items)}")
        for src, item in enumerate(items):
            op, sep, idx = item.partition("~")
            if not sep or idx != str(src):
                raise malformed(f"expected 'op~{src}', got {item!r}")
            if op not in _NB201_EDGE_OPS:
                raise ValueError(
                    f"unknown NAS-Bench-201 op {op!r} in {arch!r}; known: {_NB201_EDGE_OPS}"
                )
            ops.append(op)
    return ops


def _check_prune(prune) -> None:
    # a truthy string such as "reference" must not silently select the pruned encoding
    if not isinstance(prune, (bool, np.bool_)):
        raise ValueError(f"prune must be True or False, got {prune!r}")


def nb201_cell(
    arch_or_ops: str | Sequence[str] | Sequence[int],
    accuracy: float | None = None,
    extra: Mapping[str, float] | None = None,
    *,
    prune: bool = True,
) -> Cell:
    """Build a NAS-Bench-201 cell graph from the 8-node graph (input, e1..e6, output).

    arch_or_ops: an arch string, or the 6 edge ops in arch-string order as names or as op
        codes 1..5.
    prune=True (docs/DATA.md, the default): the graph loses its ``none`` nodes, then every
    node not on an input -> output path; depth = L. A cell whose output is cut off from its
    input (all paths pass through ``none``) becomes just the input and the output with no
    edge (L = 2).
    prune=False (the authors' encoding): all 8 nodes and the fixed adjacency, ``none`` nodes
    and their edges kept; depth = the number of non-``none`` nodes (input and output
    included). The authors' NAS-Bench-201 checkpoints were trained on this one, so their
    predictions need it.
    """
    _check_prune(prune)
    if isinstance(arch_or_ops, str):
        names = parse_nb201_arch(arch_or_ops)
        key = arch_or_ops
    else:
        names = []
        for op in arch_or_ops:
            if _is_int(op) and 1 <= op <= 5:
                names.append(NB201_OPS[op])
            elif op in _NB201_EDGE_OPS:
                names.append(op)
            else:
                raise ValueError(
                    f"unknown NAS-Bench-201 edge op {op!r}; known: {_NB201_EDGE_OPS} or codes 1..5"
                )
        if len(names) != 6:
            raise ValueError(f"a NAS-Bench-201 cell has 6 edge ops, got {len(names)}")
        key = "|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*names)
    ops = np.array([0] + [NB201_OPS.index(n) for n in names] + [_NB201_OUTPUT], dtype=np.int64)
    if not prune:
        depth = int((ops != _NB201_NONE).sum())
        return Cell(_NB201_ADJ.copy(), ops, accuracy, dict(extra or {}), key, depth)
    adj = _nb201_adjacency_without_none(ops)
    keep = _on_path_mask(adj)
    keep[[0, -1]] = True
    return Cell(adj[np.ix_(keep, keep)], ops[keep], accuracy, dict(extra or {}), key)


def _nb201_adjacency_without_none(ops: np.ndarray) -> np.ndarray:
    """(8, 8) the fixed NAS-Bench-201 adjacency less every edge into or out of a ``none`` node."""
    adj = _NB201_ADJ.copy()
    dead = ops == _NB201_NONE
    adj[dead, :] = 0
    adj[:, dead] = 0
    return adj


def nb201_live_nodes(ops) -> np.ndarray:
    """(8,) bool: the nodes of the 8-node NAS-Bench-201 graph (ops: (8,) op codes, input,
    e1..e6, output) on some input -> output path that passes no ``none`` node, i.e. whose
    result depends on the input and reaches the output. Pruning keeps these; in a cell whose
    output is cut off from its input none is live, input and output included."""
    ops = np.asarray(ops, dtype=np.int64)
    if ops.shape != (8,):
        raise ValueError(f"nb201_live_nodes: need the 8 op codes of the unpruned cell, got shape {ops.shape}")
    return _on_path_mask(_nb201_adjacency_without_none(ops))


def nb101_cell(
    adjacency,
    ops: Sequence[int] | Sequence[str],
    accuracy: float | None = None,
    extra: Mapping[str, float] | None = None,
    key: str | None = None,
) -> Cell:
    """Build a NAS-Bench-101 cell, pruned to the nodes on input -> output paths.

    adjacency: (L, L) 0/1, strictly upper triangular. ops: L op codes (the library's NB101 codes) or
    NB101 op names; the first must be input, the last output, no other input/output.
    Raises ValueError on malformed input or when no input -> output path exists (the
    NAS-Bench-101 API calls such a spec invalid).
    """
    a = _check_dag_adjacency(adjacency, "nb101_cell")
    codes = []
    for op in ops:
        if isinstance(op, str):
            if op not in NB101_OPS:
                raise ValueError(f"unknown NAS-Bench-101 op {op!r}; known: {NB101_OPS}")
            codes.append(NB101_OPS.index(op))
        elif _is_int(op) and 0 <= op < len(NB101_OPS):
            codes.append(int(op))
        else:
            raise ValueError(
                f"unknown NAS-Bench-101 op code {op!r}; codes are 0..{len(NB101_OPS) - 1}"
            )
    if len(codes) != a.shape[0]:
        raise ValueError(f"nb101_cell: {len(codes)} ops for a {a.shape[0]}-node adjacency")
    inner = codes[1:-1]
    if codes[0] != 0 or codes[-1] != 4 or 0 in inner or 4 in inner:
        raise ValueError(
            f"nb101_cell: ops must be input, ..., output with no other input/output, got {codes}"
        )
    keep = _on_path_mask(a)
    if not keep[0]:
        raise ValueError("nb101_cell: no path from input to output (invalid NAS-Bench-101 spec)")
    return Cell(a[np.ix_(keep, keep)], np.array(codes)[keep], accuracy, dict(extra or {}), key)


def default_data_dir() -> Path | None:
    """The benchmark data folder: ``$NNFORMER_FAST_DATA``, else ``../shared/data`` next to
    the working directory or to the repository, when it exists; None otherwise."""
    env = os.environ.get("NNFORMER_FAST_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), repo):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def _resolve(path: str | os.PathLike | None, filename: str) -> Path:
    if path is not None:
        return Path(path)
    root = default_data_dir()
    if root is None:
        raise FileNotFoundError(
            f"{filename}: no path given and no data folder found (set NNFORMER_FAST_DATA "
            "or place the data in ../shared/data)"
        )
    return root / filename


def _percent_to_fraction(value: float) -> float:
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"accuracy {value} is not a percentage in [0, 100]")
    return value / 100.0


def _number(value, name: str) -> float:
    """A JSON/CSV number as float; strings like "high", bools, None and lists raise ValueError."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise ValueError(f"{name} must be a number, got {_short(value)}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {_short(value)}") from None


def _load_records(path, items, build) -> list[Cell]:
    """``[build(key, item) for key, item in items]``, any error of a record re-raised as
    ValueError naming the file and the record's key; zero records raise too."""
    cells = []
    for key, item in items:
        where = f"{path} [{_cut(str(key))}]"
        try:
            if not isinstance(item, Mapping):
                raise ValueError(f"expected an object of fields, got {type(item).__name__}")
            cells.append(build(key, item))
        except KeyError as e:
            raise ValueError(f"{where}: missing field {_short(e.args[0])}") from None
        except (TypeError, ValueError, IndexError, RecursionError) as e:
            raise ValueError(f"{where}: {_cut(str(e), 200)}") from None
    if not cells:
        raise ValueError(f"{path}: no records")
    return cells


def _cut(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, so a message never echoes a whole record."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _short(value, limit: int = 60) -> str:
    """``repr(value)``, cut (:func:`_cut`)."""
    return _cut(repr(value), limit)


def _read_json(path: Path):
    """The JSON value in ``path``; ValueError naming the file when it is empty, not UTF-8
    (binary, UTF-16), not JSON (truncated) or nested too deeply to parse."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError(f"{path}: UTF-16 text; JSON files must be UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a JSON file (byte {e.start} is not UTF-8 text)") from None
    if not text.strip():
        raise ValueError(f"{path}: empty file, expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:  # its message never quotes the document
        raise ValueError(f"{path}: not a JSON file ({e.msg} at line {e.lineno} column {e.colno})") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise ValueError(f"{path}: not a readable JSON file ({_cut(str(e), 120)})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to read") from None


def read_json_object(path: str | os.PathLike, *keys: str) -> dict:
    """The JSON object of ``path`` at ``root[keys[0]][keys[1]]...``; ValueError naming the
    file when the file is not JSON or a level is not an object."""
    path = Path(path)
    data = _read_json(path)
    where = "root"
    for k in keys:
        if not isinstance(data, dict) or k not in data:
            raise ValueError(f"{path}: {where} must be an object with key {k!r}")
        data, where = data[k], f"[{k!r}]"
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {where} must be an object of records, got "
                         f"{'null' if data is None else type(data).__name__}")
    return data


def _naslib_ids(key: str, count: int | None = None) -> list[int]:
    """The integers of a NASLib tuple key ``"(0, 1, ...)"``."""
    try:
        ids = [int(v) for v in key.strip("()").split(",")]
    except ValueError:
        raise ValueError(f"key {key!r} is not a tuple of integers") from None
    if count is not None and len(ids) != count:
        raise ValueError(f"key {key!r} does not hold {count} op ids")
    return ids


def _lookup_ops(ids: Sequence[int], table: Sequence, what: str):
    bad = [i for i in ids if not 0 <= i < len(table)]
    if bad:
        raise ValueError(f"{what} op id {bad[0]} outside [0, {len(table)})")
    return [table[i] for i in ids]


def load_nb101_json(path: str | os.PathLike, target: str = "validation_accuracy") -> list[Cell]:
    """Load a cell JSON in the library's layout (``{"0": {module_adjacency, module_operations, ...}, ...}``).

    Accuracies are fractions already (NAS-Bench-101 convention); ``target`` picks the one
    stored in ``Cell.accuracy``, all ``*accuracy*`` fields also go to ``Cell.extra``.
    Cells are returned in key order 0, 1, ... A malformed record raises ValueError naming
    the file and its key.
    """
    path = Path(path)
    data = read_json_object(path)

    def order(key):
        try:
            return int(key)
        except ValueError:
            raise ValueError(f"{path} [{_cut(key)}]: keys must be integers (the cell index)") from None

    def build(key, item):
        extra = {k: _number(v, k) for k, v in item.items() if "accuracy" in k}
        for k, v in extra.items():
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{k}={v} is not a fraction in [0, 1]")
        if target not in extra:
            raise ValueError(f"no {target!r}; has {sorted(extra)}")
        return nb101_cell(item["module_adjacency"], item["module_operations"], extra[target], extra, key)

    return _load_records(path, ((k, data[k]) for k in sorted(data, key=order)), build)


def load_nb101_naslib(path: str | os.PathLike | None = None) -> list[Cell]:
    """Load NASLib's NAS-Bench-101 zero-cost file (``nb101_naslib_500.json``).

    Keys are the unpruned spec as a tuple string: L*L adjacency entries (row-major) then L
    NASLib op ids ``[input, output, maxpool3x3, conv1x1, conv3x3]``, mapped to the library's codes.
    Cells are pruned, so several keys can give the same graph. ``accuracy`` is cifar10
    ``val_accuracy`` / 100; flops, params and proxy scores go to ``extra``.
    """
    path = _resolve(path, "nb101_naslib_500.json")

    def build(key, item):
        values = _naslib_ids(key)
        n = int(round((np.sqrt(1 + 4 * len(values)) - 1) / 2))
        if n * n + n != len(values):
            raise ValueError(f"key with {len(values)} entries is not L*L + L")
        adj = np.array(values[: n * n]).reshape(n, n)
        ops = _lookup_ops(values[n * n :], _NASLIB_NB101_TO_OURS, "NASLib NAS-Bench-101")
        acc = _percent_to_fraction(_number(item["val_accuracy"], "val_accuracy"))
        extra = {k: _number(v, k) for k, v in item.items() if k != "val_accuracy"}
        return nb101_cell(adj, ops, acc, extra, key)

    return _load_records(path, read_json_object(path, "nasbench101", "cifar10").items(), build)


def load_nb201_csv(
    path: str | os.PathLike | None = None, dataset: str = "cifar10", *, prune: bool = True
) -> list[Cell]:
    """Load ``nb201_accuracy.csv`` (15625 rows; row i = NAS-Bench-201 index i).

    dataset: "cifar10", "cifar100" or "ImageNet16-120"; ``accuracy`` is that 200-epoch test
    accuracy / 100, and ``extra`` holds all three (fractions) under those names. A missing
    column, a malformed row (named by its line) or a file without rows raise ValueError.
    prune: the cell encoding (see ``nb201_cell``).
    """
    _check_prune(prune)
    if dataset not in _NB201_CSV_COLUMNS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {list(_NB201_CSV_COLUMNS)}")
    path = _resolve(path, "nb201_accuracy.csv")

    def build(key, row):
        if None in row or None in row.values():  # DictReader's restkey / restval
            raise ValueError(f"row has {'more' if None in row else 'fewer'} fields than the header ({len(header)})")
        extra = {name: _percent_to_fraction(_number(row[col], col)) for name, col in _NB201_CSV_COLUMNS.items()}
        return nb201_cell(row["ArchitectureString"], extra[dataset], extra, prune=prune)

    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames
            if not header:
                raise ValueError(f"{path}: empty file (no header row)")
            missing = [c for c in ("ArchitectureString", *_NB201_CSV_COLUMNS.values()) if c not in header]
            if missing:
                raise ValueError(f"{path}: header {_short(header, 120)} lacks the columns {missing}")
            return _load_records(path, ((f"line {reader.line_num}", row) for row in reader), build)
        except UnicodeDecodeError as e:  # binary or UTF-16
            raise ValueError(f"{path}: not a UTF-8 CSV file ({e.reason}; binary or UTF-16?)") from None
        except csv.Error as e:  # NUL bytes, a field over the size limit, ...
            raise ValueError(f"{path}:{reader.line_num}: not a CSV file ({e})") from None


def load_nb201_naslib(
    path: str | os.PathLike | None = None, dataset: str = "cifar10", *, prune: bool = True
) -> list[Cell]:
    """Load NASLib's NAS-Bench-201 zero-cost file (``nb201_naslib_725.json``).

    dataset: "cifar10" (cifar10-valid), "cifar100" or "ImageNet16-120". Keys are 6 NASLib op
    ids ``[skip, none, conv3x3, conv1x1, avgpool]`` on edges (1,2),(1,3),(1,4),(2,3),(2,4),
    (3,4); they are reordered to arch-string order (0,1),(0,2),(1,2),(0,3),(1,3),(2,3).
    ``accuracy`` is ``val_accuracy`` / 100; flops, params and proxy scores go to ``extra``.
    prune: the cell encoding (see ``nb201_cell``).
    """
    _check_prune(prune)
    path = _resolve(path, "nb201_naslib_725.json")
    root = read_json_object(path)
    if dataset not in root:
        raise ValueError(f"{path}: unknown dataset {dataset!r}; has {_short(list(root), 120)}")
    records = root[dataset]
    if not isinstance(records, dict):
        raise ValueError(f"{path}: [{dataset!r}] must be an object of records, got {type(records).__name__}")

    def build(key, item):
        ids = _naslib_ids(key, 6)
        names = _lookup_ops([ids[e] for e in _NASLIB_NB201_EDGE_PERM], _NASLIB_NB201_OPS, "NASLib NAS-Bench-201")
        acc = _percent_to_fraction(_number(item["val_accuracy"], "val_accuracy"))
        extra = {
            k: _number(v["score"] if isinstance(v, dict) else v, k)
            for k, v in item.items()
            if k not in ("val_accuracy", "idx", "arch")
        }
        return nb201_cell(names, acc, extra, prune=prune)

    return _load_records(path, records.items(), build)


def tokenize(cell: Cell, in_chans: int = 32) -> dict[str, torch.Tensor]:
    """The model's per-cell input (docs/DATA.md, ``onehot_op``).

    Returns ``code`` (L, in_chans) float32 one-hot of the op codes, ``code_depth``
    (1, in_chans) float32 one-hot of ``cell.depth`` (L unless the cell says otherwise),
    ``code_rel_pos`` (L, L) int64 adjacency and ``code_adj`` (L, L) float32
    ``code_rel_pos == 1``.
    """
    if cell.depth >= in_chans:
        what = f"node count L={cell.depth}" if cell.depth == cell.num_nodes else f"depth={cell.depth}"
        raise ValueError(f"tokenize: {what} must be < in_chans={in_chans} (code_depth is its one-hot)")
    if cell.ops.min() < 0 or cell.ops.max() >= in_chans:
        raise ValueError(f"tokenize: op codes {cell.ops.tolist()} must lie in [0, {in_chans})")
    ops = torch.from_numpy(cell.ops)
    rel_pos = torch.from_numpy(cell.adjacency).clone()
    return {
        "code": torch.nn.functional.one_hot(ops, in_chans).float(),
        "code_depth": torch.nn.functional.one_hot(torch.tensor([cell.depth]), in_chans).float(),
        "code_rel_pos": rel_pos,
        "code_adj": (rel_pos == 1).float(),
    }


def _split_samples(samples) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor | None]:
    if len(samples) == 0:
        raise ValueError("collate: empty batch")
    if isinstance(samples[0], Mapping):
        return list(samples), None
    inputs = [s[0] for s in samples]
    targets = torch.stack([torch.as_tensor(s[1], dtype=torch.float32).reshape(1) for s in samples])
    return inputs, targets


def collate_same_size(samples):
    """Stack samples of equal node count L into the reference batch.

    samples: list of ``tokenize`` dicts, or of ``(dict, target)`` pairs.
    Returns ``code`` (B, L, C), ``code_depth`` (B, 1, C), ``code_rel_pos`` (B, L, L) int64,
    ``code_adj`` (B, L, L); with targets, ``(batch, targets (B, 1) float32)``.
    """
    inputs, targets = _split_samples(samples)
    sizes = sorted({d["code"].shape[0] for d in inputs})
    if len(sizes) > 1:
        raise ValueError(
            f"collate_same_size: samples have different node counts {sizes}; use "
            "SameSizeBatchSampler or collate_padded"
        )
    keys = ("code", "code_depth", "code_rel_pos", "code_adj")
    batch = {k: torch.stack([d[k] for d in inputs]) for k in keys}
    return batch if targets is None else (batch, targets)


def collate_padded(samples):
    """Zero-pad samples of any node counts to the largest L.

    samples: list of ``tokenize`` dicts, or of ``(dict, target)`` pairs.
    Returns the ``collate_same_size`` keys (padded to L = max node count) plus
    ``num_vertices`` (B,) int64; with targets, ``(batch, targets (B, 1) float32)``.
    """
    inputs, targets = _split_samples(samples)
    sizes = [d["code"].shape[0] for d in inputs]
    n, c, b = max(sizes), inputs[0]["code"].shape[1], len(inputs)
    code = torch.zeros(b, n, c)
    rel_pos = torch.zeros(b, n, n, dtype=torch.int64)
    adj = torch.zeros(b, n, n)
    for i, (d, m) in enumerate(zip(inputs, sizes)):
        code[i, :m] = d["code"]
        rel_pos[i, :m, :m] = d["code_rel_pos"]
        adj[i, :m, :m] = d["code_adj"]
    batch = {
        "code": code,
        "code_depth": torch.stack([d["code_depth"] for d in inputs]),
        "code_rel_pos": rel_pos,
        "code_adj": adj,
        "num_vertices": torch.tensor(sizes, dtype=torch.int64),
    }
    return batch if targets is None else (batch, targets)


class CellDataset(Dataset):
    """Cells as ``(tokenize(cell, in_chans), target)``; target (1,) float32 = accuracy.

    Every cell must carry an accuracy. Tokenizing happens on access.
    """

    def __init__(self, cells: Sequence[Cell], in_chans: int = 32):
        missing = [i for i, c in enumerate(cells) if c.accuracy is None]
        if missing:
            raise ValueError(
                f"CellDataset: {len(missing)} cells have no accuracy (first: index {missing[0]})"
            )
        self.cells = list(cells)
        self.in_chans = in_chans

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        cell = self.cells[index]
        return tokenize(cell, self.in_chans), torch.tensor([cell.accuracy], dtype=torch.float32)


def group_by_size(cells: Sequence[Cell]) -> dict[int, list[int]]:
    """Indices of ``cells`` grouped by node count: {L: [i, ...]}, keys ascending."""
    return _group_sizes([c.num_nodes for c in cells])


def _group_sizes(sizes: Sequence[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(sizes):
        groups.setdefault(int(n), []).append(i)
    return dict(sorted(groups.items()))


class SameSizeBatchSampler(Sampler[list[int]]):
    """Batches of indices whose cells share one node count (for ``collate_same_size``).

    sizes: node count per dataset item (e.g. ``[c.num_nodes for c in cells]``).
    Each epoch shuffles within each size and shuffles the batch order (when ``shuffle``);
    the sequence of epochs is fixed by ``seed``. ``drop_last`` drops each size's
    incomplete final batch (the reference drops them).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.groups = _group_sizes(sizes)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        b = self.batch_size
        return sum(len(g) // b if self.drop_last else -(-len(g) // b) for g in self.groups.values())

    def __iter__(self) -> Iterator[list[int]]:
        batches = []
        for group in self.groups.values():
            idx = np.array(group)
            if self.shuffle:
                idx = self.rng.permutation(idx)
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s : s + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk.tolist())
        if self.shuffle:
            batches = [batches[i] for i in self.rng.permutation(len(batches))]
        return iter(batches)
