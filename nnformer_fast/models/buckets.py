"""Round a packed batch up to one of a few repeated sizes (CPU shape bucketing).

On the CPU, oneDNN compiles a matmul kernel for every new shape it meets in bf16 or fp16.
Token-budget batches give every training step a new node count N, so every GEMM of every
step paid that compile: 3-4 ms each at N≈2000, D=128 (four times the matmul itself), most of
a bf16 step. Rounding N up to a geometric grid (less than 1/16 padding) makes shapes repeat and
the compiled kernels are reused. Padding nodes form one extra graph and see nothing
(:meth:`GraphBatch.pad_nodes`), so the real graphs' outputs, gradients and dropout masks do
not change.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..graph import GraphBatch

__all__ = ["bucket_size", "bucketed", "pad_to_buckets", "wants_buckets"]


def bucket_size(n: int) -> int:
    """``n`` rounded up to a multiple of ``2**(bit_length(n) - 5)``: 16 sizes per octave,
    less than ``n / 16`` padding."""
    step = 1 << max(0, n.bit_length() - 5)
    return -(-n // step) * step


def pad_to_buckets(x: Tensor, graph: GraphBatch, per_graph: Tensor) -> tuple[Tensor, GraphBatch, Tensor]:
    """Pad x (N, F) to ``bucket_size(N)`` zero rows, per_graph (B, S) to ``bucket_size(B + 1)``
    zero rows, and graph to match both (padding nodes in the first extra graph, any others
    empty): the padded inputs fit together as any batch does, and always hold at least two
    graphs (``torch.compile`` specialises a dimension of size 1).

    Row ``i < N`` of x and row ``b < B`` of per_graph keep their place, so slicing the first
    B outputs gives the unpadded result.
    """
    n, b = x.shape[0], per_graph.shape[0]
    k = bucket_size(n) - n
    rows = bucket_size(b + 1)
    return _zero_rows(x, k), graph.pad_nodes(k, rows - b), _zero_rows(per_graph, rows - b)


def _zero_rows(t: Tensor, k: int) -> Tensor:
    """t (R, F) and k zero rows: (R + k, F). One copy of t (``F.pad`` fills all R + k rows with
    zeros first, then copies t over them: 0.05 ms of a demo-size step for a (3139, 192) x)."""
    return torch.cat([t, t.new_zeros(k, *t.shape[1:])])


def bucketed(model: Callable[[Tensor, GraphBatch, Tensor], Tensor]) -> Callable[[Tensor, GraphBatch, Tensor], Tensor]:
    """``model(x, graph, static)`` called on the batch padded to bucket sizes where
    :func:`wants_buckets`, returning the rows of the B real graphs.

    :class:`NNFormerLatency` wraps its own layers with it; ``fit`` wraps a compiled model with
    it, since the compiled graph cannot pad for itself (the bucket size is computed from N in
    Python), so the padding runs outside it, in eager mode.
    """

    def call(x: Tensor, graph: GraphBatch, static: Tensor) -> Tensor:
        if not wants_buckets(x):
            return model(x, graph, static)
        return model(*pad_to_buckets(x, graph, static))[:graph.num_graphs]

    return call


def wants_buckets(x: Tensor) -> bool:
    """Bucketing pays where oneDNN runs the GEMMs: on the CPU in bf16 / fp16 (fp32 goes to
    MKL, which compiles nothing); not on CUDA, and not while torch.compile traces."""
    low = torch.is_autocast_enabled("cpu") or x.dtype in (torch.bfloat16, torch.float16)
    return x.device.type == "cpu" and low and not torch.compiler.is_compiling()
