"""Blocks shared by the accuracy and the latency model; parameter names follow the reference."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graph import GraphBatch
from ..ops import ACTIVATIONS, add_layer_norm, bigin, dag_attention_qkv, dropout

__all__ = ["HashDropout", "DAGAttention", "BiGINMlp", "LayerScale", "DropPath", "AttentionBlock", "FeedForwardBlock",
           "run_blocks"]


class HashDropout(nn.Module):
    """Drop-in for ``nn.Dropout`` on :func:`nnformer_fast.ops.dropout` (counter-based mask).

    Each training forward draws a seed from torch's generator (``torch.randint``), so runs
    are reproducible under ``torch.manual_seed``; the mask is recomputed from the seed in the
    backward pass instead of being stored. Identity in eval mode or when ``p == 0``.
    No parameters or buffers: state dicts match ``nn.Dropout``'s.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"HashDropout: p must lie in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        seed = int(torch.randint(0, 2**31 - 1, ()))
        return dropout(x, self.p, seed=seed)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DAGAttention(nn.Module):
    """Multi-head attention masked to the four DAG relations.

    x: (N, dim) → (N, dim). ``qkv``: Linear(dim, 3·dim), ``proj``: Linear(dim, dim); with
    ``degree_gating`` the input is first scaled by ``sigmoid(lin_d(out_degree))``.
    """

    def __init__(self, dim: int, n_head: int, *, bias: bool, attn_drop: float, proj_drop: float,
                 degree_gating: bool = False):
        super().__init__()
        if n_head <= 0 or n_head % 4 or dim % n_head:
            raise ValueError(f"dim ({dim}) must be divisible by n_head ({n_head}), a positive multiple of 4")
        self.n_head = n_head
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.lin_d = nn.Linear(1, dim) if degree_gating else None
        self.attn_drop = attn_drop
        self.proj_drop = HashDropout(proj_drop)

    def forward(self, x: Tensor, graph: GraphBatch) -> Tensor:
        if self.lin_d is not None:
            degree = graph.out_degree().to(x.dtype)[:, None]
            x = x * torch.sigmoid(self.lin_d(degree))
        n, dim = x.shape
        qkv = self.qkv(x).view(n, 3, self.n_head, dim // self.n_head)
        p = self.attn_drop if self.training else 0.0
        out = dag_attention_qkv(qkv, graph, dropout_p=p)
        return self.proj_drop(self.proj(out.reshape(n, dim)))


class BiGINMlp(nn.Module):
    """Bidirectional-GIN feed-forward network (docs/DESIGN.md: bigin): x (N, dim) → (N, dim).

    On the CPU, fc1 and gcn run without their biases, which the ``bigin`` kernel adds (and
    whose gradients it sums) inside its passes: 1.03-1.04x per bf16 training step of the
    demo model. The CUDA kernels do not fold them in, so there the Linear layers keep them
    (cuBLAS adds a bias in the GEMM's epilogue).
    """

    def __init__(self, dim: int, hidden: int, *, act: str, bias: bool, drop: float):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.gcn = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.act = act
        self.drop = HashDropout(drop)

    def forward(self, x: Tensor, graph: GraphBatch) -> Tensor:
        if x.device.type == "cpu":
            y = bigin(F.linear(x, self.fc1.weight), F.linear(x, self.gcn.weight), graph, act=self.act,
                      bias_h=self.fc1.bias, bias_g=self.gcn.bias)
        else:
            y = bigin(self.fc1(x), self.gcn(x), graph, act=self.act)
        return self.drop(self.fc2(self.drop(y)))


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` (parameter name ``scale``)."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class DropPath(nn.Module):
    """Stochastic depth per graph: a graph's whole branch is dropped with probability ``p``."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    @property
    def active(self) -> bool:
        """Whether forward drops anything (training with ``p > 0``)."""
        return self.training and self.p > 0.0

    def forward(self, x: Tensor, graph: GraphBatch) -> Tensor:
        if not self.active:
            return x
        keep = torch.rand(graph.num_graphs, device=x.device) >= self.p
        return x * (keep.to(x.dtype) / (1.0 - self.p))[graph.batch, None]


class _ResidualBlock(nn.Module):
    """``x + drop_path(layer_scale(inner(norm(x))))``; the inner module is set by subclasses."""

    inner_name: str

    def __init__(self, dim: int, inner: nn.Module, *, drop_path: float, layer_scale: Optional[float]):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        setattr(self, self.inner_name, inner)
        self.layer_scale = LayerScale(dim, layer_scale) if layer_scale is not None else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, graph: GraphBatch) -> Tensor:
        y = getattr(self, self.inner_name)(self.norm(x), graph)
        if self.layer_scale is not None and not self.drop_path.active:
            return torch.addcmul(x, y, self.layer_scale.scale)  # x + y * scale in one pass
        if self.layer_scale is not None:
            y = self.layer_scale(y)
        return x + self.drop_path(y, graph)


class AttentionBlock(_ResidualBlock):
    """Pre-norm residual DAG attention; submodules ``norm``, ``attn``, ``layer_scale``."""

    inner_name = "attn"


class FeedForwardBlock(_ResidualBlock):
    """Pre-norm residual BiGIN feed-forward; submodules ``norm``, ``mlp``, ``layer_scale``."""

    inner_name = "mlp"


def run_blocks(blocks: Sequence[_ResidualBlock], x: Tensor, graph: GraphBatch, final_norm: nn.LayerNorm) -> Tensor:
    """``final_norm(x)`` after the residual blocks in order: (N, dim) → (N, dim).

    Each block's residual add runs with the norm that follows it (the next block's, at the end
    ``final_norm``) in one :func:`~nnformer_fast.ops.add_layer_norm`, instead of an addcmul, a
    LayerNorm and a cast, each with its backward. Under autocast the blocks' norms hand their
    Linear layers rows in the autocast dtype, which they would cast them to, and final_norm
    gives float32, as a LayerNorm under autocast does. x may come in the autocast dtype (the
    embedding's output): the first residual add makes the stream float32, as ``x + y * scale``
    does, and x's gradient goes back in x's dtype. Blocks without a layer scale or with an
    active drop path run one by one, and so do all blocks of a model run in float16 / bfloat16
    without autocast (its residual stream is then in that dtype, which add_layer_norm's kernel
    does not keep).
    """
    device = x.device.type
    low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    wide = low is not None or x.dtype in (torch.float32, torch.float64)
    if not wide or not all(block.layer_scale is not None and not block.drop_path.active for block in blocks):
        for block in blocks:
            x = block(x, graph)
        return final_norm(x)
    norms = [block.norm for block in blocks[1:]] + [final_norm]
    first = blocks[0].norm
    s, h = add_layer_norm(x, None, None, first.weight, first.bias, eps=first.eps, out_dtype=low)
    for block, norm in zip(blocks, norms):
        y = getattr(block, block.inner_name)(h, graph)
        out_dtype = None if low is None else (low if norm is not final_norm else torch.float32)
        s, h = add_layer_norm(s, y, block.layer_scale.scale, norm.weight, norm.bias, eps=norm.eps, out_dtype=out_dtype)
    return h
