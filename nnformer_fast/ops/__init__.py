"""Public ops: ``dag_attention`` (and ``dag_attention_qkv``), ``bigin``, ``add_layer_norm`` and
``dropout``, dispatched to the best available backend.

Backends: ``torch`` (always, :mod:`.reference`), ``native`` (the compiled extension) and
``triton`` register themselves in :mod:`.backends` when they load.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..graph import GraphBatch
from . import reference
from .backends import Backend, backends, register, select
from .checks import (check_add_layer_norm, check_attention, check_bigin, check_dropout, check_graph_indices,
                     dropout_seed)
from .reference import ACTIVATIONS

__all__ = ["dag_attention", "dag_attention_qkv", "bigin", "add_layer_norm", "dropout", "backends", "ACTIVATIONS"]

register(Backend("torch", ops={"dag_attention": reference.dag_attention, "bigin": reference.bigin,
                             "add_layer_norm": reference.add_layer_norm, "dropout": reference.dropout}))


def dag_attention(q: Tensor, k: Tensor, v: Tensor, graph: GraphBatch, *, dropout_p: float = 0.0,
                  scale: Optional[float] = None, seed: Optional[int] = None) -> Tensor:
    """Sparse DAG-masked attention (docs/DESIGN.md: dag_attention).

    Args:
        q, k, v: (N, H, Dh) float16/bfloat16/float32/float64, H a multiple of 4. Head h
            attends over relation h % 4 (children, parents, siblings, co-parents).
        graph: the packed batch the N nodes belong to.
        dropout_p: attention dropout on the normalised weights (pass 0 in eval mode).
        scale: score scale, default 1/sqrt(Dh).
        seed: dropout seed; default drawn from torch's generator. Every backend drops the
            same weights for the same seed.
    Returns:
        (N, H, Dh) in the dtype of q.
    """
    check_attention(q, k, v, graph, dropout_p, scale)
    seed = dropout_seed(seed, draw=dropout_p > 0.0)
    backend = select("dag_attention", q, k, v)
    if backend.name != "native":  # the native kernels check the graph's index tensors themselves
        check_graph_indices(graph, "dag_attention")
    return backend.ops["dag_attention"](q, k, v, graph, dropout_p=dropout_p, scale=scale, seed=seed)


def dag_attention_qkv(qkv: Tensor, graph: GraphBatch, *, dropout_p: float = 0.0, scale: Optional[float] = None,
                      seed: Optional[int] = None) -> Tensor:
    """:func:`dag_attention` on the packed output of a qkv Linear: ``dag_attention(*qkv.unbind(1), ...)``.

    Args:
        qkv: (N, 3, H, Dh), the (N, 3·H·Dh) output of a Linear viewed; the other arguments
            and the result as for :func:`dag_attention`.
    The kernel backends (native on the CPU and CUDA, Triton) read the three thirds in place and
    return one gradient, without copying q, k and v out of qkv or stacking their gradients back
    into one; the torch backend unpacks it.
    """
    if not isinstance(qkv, Tensor) or qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"dag_attention_qkv: qkv must have shape (N, 3, H, Dh), got "
                         f"{tuple(qkv.shape) if isinstance(qkv, Tensor) else type(qkv).__name__}")
    q, k, v = qkv.unbind(1)
    check_attention(q, k, v, graph, dropout_p, scale)
    seed = dropout_seed(seed, draw=dropout_p > 0.0)
    backend = select("dag_attention", q, k, v)
    if backend.name != "native":
        check_graph_indices(graph, "dag_attention")
    packed = backend.ops.get("dag_attention_qkv")
    if packed is not None:
        return packed(qkv, graph, dropout_p=dropout_p, scale=scale, seed=seed)
    return backend.ops["dag_attention"](q, k, v, graph, dropout_p=dropout_p, scale=scale, seed=seed)


def bigin(h: Tensor, g: Tensor, graph: GraphBatch, *, act: str = "relu", bias_h: Optional[Tensor] = None,
          bias_g: Optional[Tensor] = None) -> Tensor:
    """Fused bidirectional GIN aggregation (docs/DESIGN.md: bigin): ``act(h + [A·g1, Aᵀ·g2])``.

    Args:
        h: (N, M) output of fc1; g: (N, M) output of gcn; same float dtype, M even.
        graph: its GIN adjacency drives the aggregation.
        act: one of ``ACTIVATIONS``.
        bias_h, bias_g: optional (M,) float biases of fc1 and gcn, for h and g computed
            without them: the result is that of ``h + bias_h`` and ``g + bias_g``. The CPU
            kernels add them inside (in float32), which saves the pass over the (N, M) outputs
            a biased Linear makes, and sum their gradients in the backward pass.
    Returns:
        (N, M) in the dtype of h.
    """
    check_bigin(h, g, graph, bias_h, bias_g)
    if act not in ACTIVATIONS:
        raise ValueError(f"bigin: unknown activation {act!r}; expected one of {ACTIVATIONS}")
    backend = select("bigin", h, g)
    if backend.name != "native":
        check_graph_indices(graph, "bigin")
    return backend.ops["bigin"](h, g, graph, act=act, bias_h=bias_h, bias_g=bias_g)


def add_layer_norm(x: Tensor, y: Optional[Tensor], scale: Optional[Tensor], weight: Tensor, bias: Tensor, *,
                   eps: float = 1e-5, out_dtype: Optional[torch.dtype] = None) -> tuple[Tensor, Tensor]:
    """A residual add and the LayerNorm after it in one pass (docs/DESIGN.md: add_layer_norm).

    Args:
        x: (N, D) float, the residual stream.
        y, scale: (N, D) and (D,) float, the branch and its layer scale; both None: no add.
        weight, bias: (D,) float, the LayerNorm's affine parameters; eps its epsilon.
        out_dtype: dtype of the normalised rows, default s's. Under autocast, pass the
            autocast dtype: the next Linear reads them without a cast.
    Returns:
        ``(s, out)``: ``s = x + y * scale`` (x itself without y) in the dtype ``torch.addcmul``
        gives it, and ``out = layer_norm(s, weight, bias, eps)`` over the last dim, computed
        in float32 (float64 for float64 s) and rounded to out_dtype.
    """
    check_add_layer_norm(x, y, scale, weight, bias, eps, out_dtype)
    residual = () if y is None else (y, scale)
    if out_dtype is None:
        out_dtype = reference.residual_dtype(x, y, scale)
    return select("add_layer_norm", x, *residual).ops["add_layer_norm"](x, y, scale, weight, bias, eps=eps,
                                                                        out_dtype=out_dtype)


def dropout(x: Tensor, p: float, *, seed: Optional[int] = None) -> Tensor:
    """Counter-based dropout (the same mask on every backend; nothing is stored for backward).

    Args:
        x: any shape, float16/bfloat16/float32/float64.
        p: drop probability in [0, 1); 0 returns x itself.
        seed: default drawn from torch's generator. Element e (flat row-major index) is kept
            when ``reference.dropout_keep_mask(seed, e, 0, 1, p)``; kept values are scaled by
            ``1 / (1 - p)``, dropped ones are 0. The backward pass recomputes the mask.
    Returns:
        a tensor like x.
    """
    check_dropout(x, p)
    if p == 0.0:
        return x
    seed = dropout_seed(seed, draw=True)
    return select("dropout", x).ops["dropout"](x, p, seed=seed)

# The native backend registers itself on import; a broken install only loses that backend.
try:
    from . import native as _native  # noqa: E402,F401
except Exception as _exc:  # pragma: no cover - defensive: native.py already catches load errors
    import warnings as _warnings
    _warnings.warn(f"nnformer_fast: native backend disabled ({type(_exc).__name__}: {_exc})", RuntimeWarning)

# The Triton backend registers itself; it imports (with a load_error) when triton is missing.
from .. import triton as _triton_backend  # noqa: E402,F401
