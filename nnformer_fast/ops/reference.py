"""Plain-PyTorch ``dag_attention``, ``bigin`` (docs/DESIGN.md: dag_attention, bigin) and counter-based ``dropout``.

The CPU fallback and the oracle every kernel backend is tested against. Time and memory are
linear in the relation entries (gather, segment softmax, ``index_add``); no (N, N) tensor.
Low-precision inputs are computed in float32 and returned in the input dtype.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..graph import NUM_RELATIONS, GraphBatch

__all__ = ["dag_attention", "bigin", "add_biases", "add_layer_norm", "residual_dtype", "dropout", "activation",
           "dropout_keep_mask", "ACTIVATIONS"]

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "square_relu")
_MASK32 = 0xFFFFFFFF


def activation(x: Tensor, act: str) -> Tensor:
    """The channel-mixer activation (docs/DESIGN.md: bigin; leaky slope 0.01, exact gelu)."""
    if act == "relu":
        return F.relu(x)
    if act == "leaky_relu":
        return F.leaky_relu(x, 0.01)
    if act == "gelu":
        return F.gelu(x)
    if act == "square_relu":
        return x * F.relu(x)
    raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


def _hash32(x: Tensor) -> Tensor:
    """lowbias32 integer hash on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def dropout_keep_mask(seed: int, entry: Tensor, head: Tensor, num_heads: int, p: float) -> Tensor:
    """Counter-based attention-dropout mask shared by every backend.

    An attention weight (relation entry ``entry``, head ``head``) is kept when
    ``hash32((entry * H + head) ^ hash32(seed)) >> 8 >= p * 2**24``, so a kernel can
    recompute the same mask in its backward pass and all backends drop the same weights.
    ``entry``: (R, 1) int64, ``head``: (1, h) int64 → (R, h) bool.
    """
    salt = _hash32(torch.tensor(seed & _MASK32, dtype=torch.int64))
    x = ((entry * num_heads + head) & _MASK32) ^ salt
    return (_hash32(x) >> 8) >= int(p * (1 << 24))


def dag_attention(q: Tensor, k: Tensor, v: Tensor, graph: GraphBatch, *, dropout_p: float = 0.0,
                  scale: Optional[float] = None, seed: int = 0) -> Tensor:
    """DAG-masked attention (docs/DESIGN.md: dag_attention).

    q, k, v: (N, H, Dh) float16/bfloat16/float32/float64, H a multiple of 4; head h attends
    over relation h % 4 of ``graph``. Returns (N, H, Dh) in the dtype of q.
    """
    n, h, dh = q.shape
    scale = 1.0 / math.sqrt(dh) if scale is None else scale
    compute = torch.promote_types(q.dtype, torch.float32)
    heads_per_rel = h // NUM_RELATIONS
    # (4, N, H/4, Dh): relation r's heads contiguous, so the row gathers read whole rows
    per_rel = [t.to(compute).view(n, heads_per_rel, NUM_RELATIONS, dh).permute(2, 0, 1, 3).contiguous()
               for t in (q, k, v)]
    outs = []
    for r in range(NUM_RELATIONS):
        rows, cols = graph.relation(r)
        qr, kr, vr = (t[r] for t in per_rel)
        scores = (qr.index_select(0, rows) * kr.index_select(0, cols)).sum(-1) * scale  # (R_r, H/4)
        row_max = torch.full((n, heads_per_rel), float("-inf"), dtype=compute, device=q.device)
        row_max = row_max.scatter_reduce(0, rows[:, None].expand_as(scores), scores.detach(), "amax")
        weights = torch.exp(scores - row_max.index_select(0, rows))
        denom = torch.zeros_like(row_max).index_add_(0, rows, weights)
        weights = weights / denom.index_select(0, rows)
        if dropout_p > 0.0:
            entry = torch.arange(graph.rel_offsets[r], graph.rel_offsets[r + 1], device=q.device)[:, None]
            head = torch.arange(r, h, NUM_RELATIONS, device=q.device)[None, :]
            keep = dropout_keep_mask(seed, entry, head, h, dropout_p)
            weights = weights * keep / (1.0 - dropout_p)
        out = torch.zeros(n, heads_per_rel, dh, dtype=compute, device=q.device)
        outs.append(out.index_add_(0, rows, weights[..., None] * vr.index_select(0, cols)))
    # head h = g * 4 + r  <->  stacked index (g, r)
    return torch.stack(outs, dim=2).reshape(n, h, dh).to(q.dtype)


def bigin(h: Tensor, g: Tensor, graph: GraphBatch, *, act: str = "relu", bias_h: Optional[Tensor] = None,
          bias_g: Optional[Tensor] = None) -> Tensor:
    """Fused bidirectional GIN aggregation (docs/DESIGN.md: bigin): ``act(h + [A·g1, Aᵀ·g2])``.

    h, g: (N, M) float16/bfloat16/float32/float64, M even; row i adds the sum of g1 over its
    children and of g2 over its parents. bias_h, bias_g: optional (M,) biases of fc1 and gcn,
    added to h and g first. Returns (N, M) in the dtype of h.
    """
    half = g.shape[1] // 2
    compute = torch.promote_types(h.dtype, torch.float32)
    hc, gc = add_biases(h.to(compute), g.to(compute), bias_h, bias_g)
    g1, g2 = gc[:, :half], gc[:, half:]
    from_children = torch.zeros_like(g1).index_add_(0, graph.adj_row, g1.index_select(0, graph.adj_col))
    from_parents = torch.zeros_like(g2).index_add_(0, graph.adjt_row, g2.index_select(0, graph.adjt_col))
    return activation(hc + torch.cat([from_children, from_parents], 1), act).to(h.dtype)


def add_biases(h: Tensor, g: Tensor, bias_h: Optional[Tensor] = None,
               bias_g: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """``(h + bias_h, g + bias_g)`` in the dtypes of h and g; a missing bias adds nothing. What
    every ``bigin`` computes first; kernels that do not fold the biases in call this."""
    if bias_h is not None:
        h = h + bias_h.to(h.dtype)
    if bias_g is not None:
        g = g + bias_g.to(g.dtype)
    return h, g


def residual_dtype(x: Tensor, y: Optional[Tensor] = None, scale: Optional[Tensor] = None) -> torch.dtype:
    """The dtype of ``s = x + y * scale`` as ``torch.addcmul`` promotes it; x's without y."""
    return x.dtype if y is None else torch.promote_types(torch.promote_types(x.dtype, y.dtype), scale.dtype)


def add_layer_norm(x: Tensor, y: Optional[Tensor], scale: Optional[Tensor], weight: Tensor, bias: Tensor, *,
                   eps: float, out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Residual add and LayerNorm (docs/DESIGN.md: add_layer_norm): ``s = x + y * scale`` (x
    itself without y) and ``layer_norm(s)`` over the last dim, computed in float32 or wider and
    returned in out_dtype. s has the dtype torch's type promotion gives ``addcmul``."""
    s = x if y is None else torch.addcmul(x, y, scale)
    compute = torch.promote_types(s.dtype, torch.float32)
    n = F.layer_norm(s.to(compute), s.shape[-1:], weight.to(compute), bias.to(compute), eps)
    return s, n.to(out_dtype)


def dropout(x: Tensor, p: float, *, seed: int = 0) -> Tensor:
    """Counter-based elementwise dropout: the oracle of every backend's ``dropout``.

    Element ``e`` (flat index of x in row-major order) is kept when
    ``dropout_keep_mask(seed, e, 0, 1, p)``, i.e. ``hash32(e ^ hash32(seed)) >> 8 >= p * 2**24``,
    and scaled by ``1 / (1 - p)`` (in float32, float64 for float64 inputs); dropped elements
    are exactly 0. The backward pass is the same mask (autograd of ``where``) times the
    gradient. Returns a tensor like x.
    """
    if p == 0.0:
        return x
    entry = torch.arange(x.numel(), device=x.device).view(x.shape)
    keep = dropout_keep_mask(seed, entry, torch.zeros((), dtype=torch.int64, device=x.device), 1, p)
    compute = torch.promote_types(x.dtype, torch.float32)
    y = x.to(compute) * (1.0 / (1.0 - p))
    return torch.where(keep, y, y.new_zeros(())).to(x.dtype)
