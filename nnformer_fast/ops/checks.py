"""Input checks at the public op boundary; kernels assume what these guarantee."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

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


def check_attention(q: Tensor, k: Tensor, v: Tensor, graph: GraphBatch, dropout_p: float) -> None:
    """q, k, v: (N, H, Dh) of one float dtype, H a multiple of 4, N = graph.num_nodes."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_float(name, t)
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"dag_attention: q, k, v must share one (N, H, Dh) shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"dag_attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    n, h, _ = q.shape
    if n != graph.num_nodes:
        raise ValueError(f"dag_attention: q has {n} rows but the graph has {graph.num_nodes} nodes")
    if h % NUM_RELATIONS:
        raise ValueError(f"dag_attention: the head count must be a multiple of 4, got {h}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dag_attention: dropout_p must lie in [0, 1), got {dropout_p}")
    _check_device(graph, q=q, k=k, v=v)


def check_bigin(h: Tensor, g: Tensor, graph: GraphBatch, bias_h: Optional[Tensor] = None,
                bias_g: Optional[Tensor] = None) -> None:
    """h, g: (N, M) of one float dtype, M even, N = graph.num_nodes; biases (M,) float or None."""
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


def check_dropout(x: Tensor, p: float) -> None:
    """x: any shape, a float dtype; p a number in [0, 1)."""
    _check_float("x", x)
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"dropout: p must be a float, got {type(p).__name__}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must lie in [0, 1), got {p}")
