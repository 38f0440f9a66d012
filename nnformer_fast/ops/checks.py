"""Input checks at the public op boundary; kernels assume what these guarantee."""
from __future__ import annotations

import math
import numbers
import weakref
from collections import OrderedDict
from typing import Optional

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from ..graph import NUM_RELATIONS, GraphBatch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_float(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16/bfloat16/float32/float64, got {t.dtype}")


def _check_device(graph: GraphBatch, **tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t.device != graph.device:
            raise ValueError(f"{name} is on {t.device} but the graph is on {graph.device}; "
                             "move the graph with graph.to(device)")


def _check_graph(op: str, graph) -> None:
    if not isinstance(graph, GraphBatch):
        raise TypeError(f"{op}: graph must be a GraphBatch, got {type(graph).__name__}")


def _check_probability(op: str, name: str, p) -> None:
    """A real number in [0, 1)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{op}: {name} must be a float, got {type(p).__name__} {p!r}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{op}: {name} must lie in [0, 1), got {p}")


def check_attention(q: Tensor, k: Tensor, v: Tensor, graph: GraphBatch, dropout_p: float,
                    scale: Optional[float] = None) -> None:
    """q, k, v: (N, H, Dh) of one float dtype, H a multiple of 4, N = graph.num_nodes;
    dropout_p in [0, 1); scale None or a finite number."""
    _check_graph("dag_attention", graph)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_float(name, t)
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"dag_attention: q, k, v must share one (N, H, Dh) shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"dag_attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    n, h, dh = q.shape
    if n != graph.num_nodes:
        raise ValueError(f"dag_attention: q has {n} rows but the graph has {graph.num_nodes} nodes")
    if h == 0 or h % NUM_RELATIONS:
        raise ValueError(f"dag_attention: the head count must be a positive multiple of 4, got {h}")
    if dh == 0:
        raise ValueError("dag_attention: the head dim Dh must be at least 1, got 0")
    _check_probability("dag_attention", "dropout_p", dropout_p)
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"dag_attention: scale must be None or a float, got {type(scale).__name__} {scale!r}")
        if not math.isfinite(scale):
            raise ValueError(f"dag_attention: scale must be finite, got {scale}")
    _check_device(graph, q=q, k=k, v=v)


def check_bigin(h: Tensor, g: Tensor, graph: GraphBatch, bias_h: Optional[Tensor] = None,
                bias_g: Optional[Tensor] = None) -> None:
    """h, g: (N, M) of one float dtype, M even, N = graph.num_nodes; biases (M,) float or None."""
    _check_graph("bigin", graph)
    _check_float("h", h)
    _check_float("g", g)
    if h.dim() != 2 or g.shape != h.shape:
        raise ValueError(f"bigin: h and g must share one (N, M) shape, got {tuple(h.shape)} and {tuple(g.shape)}")
    if h.dtype != g.dtype:
        raise TypeError(f"bigin: h and g dtypes differ ({h.dtype}, {g.dtype})")
    if h.shape[0] != graph.num_nodes:
        raise ValueError(f"bigin: h has {h.shape[0]} rows but the graph has {graph.num_nodes} nodes")
    if h.shape[1] % 2:
        raise ValueError(f"bigin: the width M must be even (g splits into two halves), got {h.shape[1]}")
    biases = {name: b for name, b in (("bias_h", bias_h), ("bias_g", bias_g)) if b is not None}
    for name, b in biases.items():
        _check_float(name, b)
        if b.shape != (h.shape[1],):
            raise ValueError(f"bigin: {name} must have shape ({h.shape[1]},), got {tuple(b.shape)}")
    _check_device(graph, h=h, g=g, **biases)


def check_add_layer_norm(x: Tensor, y: Optional[Tensor], scale: Optional[Tensor], weight: Tensor, bias: Tensor,
                         eps: float, out_dtype: Optional[torch.dtype]) -> None:
    """x, y: (N, D) float (y optional); scale, weight, bias: (D,) float, scale given with y;
    one device; eps a finite number >= 0; out_dtype None or a float dtype."""
    op = "add_layer_norm"
    _check_float("x", x)
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be (N, D), got shape {tuple(x.shape)}")
    if (y is None) != (scale is None):
        raise ValueError(f"{op}: pass y and scale together (or neither)")
    tensors = {"x": x, "weight": weight, "bias": bias}
    if y is not None:
        _check_float("y", y)
        if y.shape != x.shape:
            raise ValueError(f"{op}: y must have the shape of x {tuple(x.shape)}, got {tuple(y.shape)}")
        tensors.update(y=y, scale=scale)
    for name in ("scale", "weight", "bias"):
        t = tensors.get(name)
        if t is None:
            continue
        _check_float(name, t)
        if t.shape != (x.shape[1],):
            raise ValueError(f"{op}: {name} must have shape ({x.shape[1]},), got {tuple(t.shape)}")
    for name, t in tensors.items():
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0.0 <= eps < math.inf:
        raise ValueError(f"{op}: eps must be a finite number >= 0, got {eps!r}")
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be float16/bfloat16/float32/float64, got {out_dtype}")


def check_dropout(x: Tensor, p: float) -> None:
    """x: any shape, a float dtype; p a number in [0, 1)."""
    _check_float("x", x)
    _check_probability("dropout", "p", p)


# ---------------------------------------------------------------------- graph index tensors
class _CheckedIndices:
    """GPU index tensors that passed a scan, remembered by identity (the Python twin of
    ``CheckedIndices`` in csrc/checks.h): the same live tensor object (held weakly) at the same
    version, data pointer, size and bounds is checked again on the device, without the
    device->host sync of a scan. One batch's CSRs serve every layer's ops. Inference tensors
    keep no version, so they are scanned every time."""

    def __init__(self, size: int = 64):
        self._entries: OrderedDict = OrderedDict()
        self._size = size
        self.scans = 0

    @staticmethod
    def _key(t: Tensor, bounds: tuple) -> tuple:
        return (t._version, t.data_ptr(), t.numel(), bounds)

    def contains(self, t: Tensor, bounds: tuple) -> bool:
        if t.is_inference():
            return False
        entry = self._entries.get(id(t))
        return entry is not None and entry[0]() is t and entry[1] == self._key(t, bounds)

    def insert(self, t: Tensor, bounds: tuple) -> None:
        if t.is_inference():
            return
        self._entries[id(t)] = (weakref.ref(t), self._key(t, bounds))
        self._entries.move_to_end(id(t))
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


_CHECKED = _CheckedIndices()


def index_scans() -> int:
    """How many index tensors :func:`check_graph_indices` has scanned with a host transfer so far
    (for tests): every CPU check, and GPU checks of tensors not remembered."""
    return _CHECKED.scans


def check_graph_indices(graph: GraphBatch, op: str) -> None:
    """The graph's index tensors that the non-native backends read (torch: ``rel_row``,
    ``rel_col``, ``rel_offsets``, ``adj*_row``, ``adj*_col``; Triton: the CSR offsets,
    columns and ``rel_tperm``) are valid (:func:`check_csr_indices`), and ``rel_offsets`` rises
    from 0 to the relation entries.

    op: ``"dag_attention"`` (the relation CSR) or ``"bigin"`` (the adjacency CSRs)."""
    n = graph.num_nodes
    if op == "dag_attention":
        nnz = graph.rel_col.numel()
        offsets = list(graph.rel_offsets)
        if len(offsets) != NUM_RELATIONS + 1 or offsets[0] != 0 or offsets[-1] != nnz or \
                any(b < a for a, b in zip(offsets, offsets[1:])):
            raise RuntimeError(f"{op}: rel_offsets {offsets} must rise from 0 to the {nnz} entries of rel_col")
        check_csr_indices(op, graph.device, n, [("rel", graph.rel_rowptr, graph.rel_col, graph.rel_row, NUM_RELATIONS * n)],
                          graph.rel_tperm)
    else:
        check_csr_indices(op, graph.device, n, [("adj", graph.adj_rowptr, graph.adj_col, graph.adj_row, n),
                                                ("adjt", graph.adjt_rowptr, graph.adjt_col, graph.adjt_row, n)])


def check_csr_indices(op: str, device: torch.device, n: int, csrs: list,
                      rel_tperm: Optional[Tensor] = None) -> None:
    """CSRs over ``n`` nodes, each ``(name, rowptr, col, row, rows)`` (``row``, the row id of
    each entry, may be None), and an optional ``rel_tperm`` indexing the entries of the first:
    1-D int64 on ``device``, of consistent sizes, offsets that start at 0, never decrease and
    end at the entry count, ids in range. Raises RuntimeError with the wording of the native
    checks (csrc/checks.h). Skipped while tracing (fake tensors hold no values).

    CPU tensors are scanned on every call, so a write the version counter misses (through
    ``.numpy()`` or ``.data``) is caught too. On a GPU, the tensors first seen by one call are
    scanned with one host transfer; one that passed, unchanged, is checked again by a
    device-side assert (no sync), which stops the stream before a kernel reads an id written
    behind the version counter."""
    if device.type == "meta" or torch.compiler.is_compiling() or is_fake(csrs[0][2]):
        return
    todo = []  # (kind, name, tensor, bound)
    for name, rowptr, col, row, rows in csrs:
        nnz = col.numel()
        _check_index(op, name + "_rowptr", rowptr, rows + 1, device)
        todo.append(("rowptr", name, rowptr, (rows, nnz)))
        for suffix, t in (("_col", col), ("_row", row)):
            if t is not None:
                _check_index(op, name + suffix, t, nnz if suffix == "_row" else -1, device)
                todo.append(("range", name + suffix, t, n))
    if rel_tperm is not None:
        nnz = csrs[0][2].numel()
        _check_index(op, "rel_tperm", rel_tperm, nnz, device)
        todo.append(("range", "rel_tperm", rel_tperm, nnz))
    todo = [item for item in todo if item[2].numel()]
    if device.type != "cpu":  # remembered GPU tensors: a device-side assert, no host sync
        remembered = [_CHECKED.contains(t, (kind, bound)) for kind, _, t, bound in todo]
        for (kind, _, t, bound), known in zip(todo, remembered):
            if known:
                torch._assert_async(_valid_on_device(kind, t, bound))
        todo = [item for item, known in zip(todo, remembered) if not known]
    if not todo:
        return
    stats = []
    for kind, _, t, _ in todo:
        if kind == "range":
            stats += list(torch.aminmax(t))
        else:
            step = (t[1:] - t[:-1]).min() if t.numel() > 1 else t.new_zeros(())
            stats += [t[0], t[-1], step]
    values = torch.stack(stats).tolist()  # the one host transfer (a sync on CUDA)
    at = 0
    for kind, name, t, bound in todo:
        if kind == "range":
            lo, hi = values[at:at + 2]
            at += 2
            if lo < 0 or hi >= bound:
                i = int(((t < 0) | (t >= bound)).nonzero()[0])
                raise RuntimeError(f"{op}: {name}[{i}] = {int(t[i])} lies outside [0, {bound})")
        else:
            first, last, step = values[at:at + 3]
            at += 3
            rp, cl = name + "_rowptr", name + "_col"
            if first != 0:
                raise RuntimeError(f"{op}: {rp}[0] must be 0, got {first}")
            if step < 0:
                i = int((t[1:] < t[:-1]).nonzero()[0])
                raise RuntimeError(f"{op}: {rp} must be non-decreasing, but {rp}[{i + 1}] = {int(t[i + 1])} < "
                                   f"{rp}[{i}] = {int(t[i])}")
            if last != bound[1]:
                raise RuntimeError(f"{op}: {rp}[-1] = {last} but {cl} has {bound[1]} entries")
        _CHECKED.scans += 1
        if device.type != "cpu":
            _CHECKED.insert(t, (kind, bound))


def _valid_on_device(kind: str, t: Tensor, bound) -> Tensor:
    """A bool scalar on t's device: ids in [0, bound) ("range"), or CSR offsets that start at 0,
    never decrease and end at the entry count ``bound[1]`` ("rowptr")."""
    if kind == "range":
        return ((t >= 0) & (t < bound)).all()
    ok = (t[0] == 0) & (t[-1] == bound[1])
    return ok & ((t[1:] - t[:-1]).min() >= 0) if t.numel() > 1 else ok


def _check_index(op: str, name: str, t: Tensor, size: int, device: torch.device) -> None:
    """A 1-D int64 tensor on ``device`` with ``size`` elements (size < 0: any)."""
    if not isinstance(t, Tensor) or t.dtype != torch.int64 or t.dim() != 1:
        raise RuntimeError(f"{op}: {name} must be a 1-D int64 tensor, got "
                           f"{f'{t.dtype} of shape {tuple(t.shape)}' if isinstance(t, Tensor) else type(t).__name__}")
    if t.device != device:
        raise RuntimeError(f"{op}: {name} is on {t.device} but the graph on {device}")
    if size >= 0 and t.numel() != size:
        raise RuntimeError(f"{op}: {name} must have {size} elements, got {t.numel()}")


def dropout_seed(seed, draw: bool) -> int:
    """The seed an op hands its backend: its low 32 bits, all any backend hashes (so seeds
    of 2**63 and more, like ``torch.initial_seed()``'s, reach the kernels' int64 argument;
    the masks are unchanged). ``None``: drawn from torch's generator when ``draw``, else 0.
    A traced (symbolic) seed passes as it is."""
    if seed is None:
        return int(torch.randint(0, 2**31 - 1, ())) if draw else 0
    if isinstance(seed, torch.SymInt):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
    return int(seed) & 0xFFFFFFFF
