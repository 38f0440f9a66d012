"""The NN-Former latency predictor (docs/DESIGN.md: the models) on packed batches of whole networks."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..graph import GraphBatch
from .buckets import bucketed
from .inputs import check_features, check_graph
from .pooling import graph_sum
from .blocks import (
    AttentionBlock,
    BiGINMlp,
    DAGAttention,
    FeedForwardBlock,
    HashDropout,
    run_blocks,
)

__all__ = ["NNFormerLatency", "STATIC_FEATURES"]

STATIC_FEATURES = 40


class PreReduction(nn.Module):
    """Per-node readout ``0.01 * (mlp(LN(x)) + LN(x))``: (N, dim) → (N, dim).

    The reference's mlp is Linear, ReLU, Dropout, Linear, Dropout; here the first dropout comes
    before the ReLU, which gives the same values (dropout scales by a positive factor and
    zeroes) and the same state-dict keys. Then the ReLU's output is the second Linear's input,
    which the backward keeps anyway; after the dropout it was not, and ``torch.compile`` kept a
    boolean mask of it instead, whose Inductor CPU kernels took 33 ms of a 500 ms default-model
    step.
    """

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), HashDropout(dropout), nn.ReLU(),
                                 nn.Linear(2 * dim, dim), HashDropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.norm(x))

    def readout(self, y: Tensor) -> Tensor:
        """The readout of the normalised rows y = norm(x)."""
        return 0.01 * (self.mlp(y) + y)

    def pooled(self, y: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """``graph_sum(readout(y), batch, num_graphs)``: (N, dim) → (num_graphs, dim), scaled by
        0.01 after the sum, on B rows instead of N (the same up to float32 rounding; forward
        and backward, 0.1 ms of a 24 ms demo-size training step at 2 threads)."""
        return 0.01 * graph_sum(self.mlp(y) + y, batch, num_graphs)


class NNFormerLatency(nn.Module):
    """Latency predictor for a packed batch of networks; parameter names of the reference.

    ``forward(x, graph, static)``: x (N, in_features) node features, graph the
    :class:`GraphBatch` of the B networks (its adjacency is both the attention mask and the
    GIN adjacency), static (B, 40) static features → (B, 1) predicted latency in ms. Every
    graph gets the output it would get alone.

    ``shape_buckets`` (default on): in bf16 / fp16 on the CPU, pad each batch to one of a few
    repeated sizes so oneDNN reuses its compiled GEMMs (see :mod:`nnformer_fast.models.buckets`).
    """

    shape_buckets: bool = True

    def __init__(self, in_features: int = 192, dim: int = 512, n_layers: int = 2, n_head: int = 4,
                 mlp_ratio: float = 4.0, act: str = "relu", dropout: float = 0.05,
                 degree_gating: bool = False, layer_scale_init: float = 1e-4,
                 static_features: int = STATIC_FEATURES):
        super().__init__()
        self.in_features, self.static_features = in_features, static_features
        hidden = int(dim * mlp_ratio)
        self.embedding = nn.Linear(in_features, dim)
        self.gnn_layers = nn.ModuleList(
            AttentionBlock(dim, DAGAttention(dim, n_head, bias=True, attn_drop=dropout, proj_drop=dropout,
                                             degree_gating=degree_gating),
                           drop_path=0.0, layer_scale=layer_scale_init)
            for _ in range(n_layers))
        self.FFN_layers = nn.ModuleList(
            FeedForwardBlock(dim, BiGINMlp(dim, hidden, act=act, bias=True, drop=dropout),
                             drop_path=0.0, layer_scale=layer_scale_init)
            for _ in range(n_layers))
        self.pre_reduction = PreReduction(dim, dropout)
        self.norm_sf_linear = nn.Linear(static_features, dim)
        self.norm_sf_drop = HashDropout(dropout)
        self.predictor = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), HashDropout(dropout),
                                       nn.Linear(dim, 1), nn.Softplus())
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, graph: GraphBatch, static: Tensor) -> Tensor:
        check_graph("NNFormerLatency", graph)
        check_features("NNFormerLatency", "x", x, self.embedding.weight)
        check_features("NNFormerLatency", "static", static, self.norm_sf_linear.weight)
        _check_inputs(x, graph, static, self.in_features, self.static_features)
        return (bucketed(self._predict) if self.shape_buckets else self._predict)(x, graph, static)

    def _predict(self, x: Tensor, graph: GraphBatch, static: Tensor) -> Tensor:
        blocks = [block for pair in zip(self.gnn_layers, self.FFN_layers) for block in pair]
        nodes = run_blocks(blocks, self.embedding(x), graph, self.pre_reduction.norm)
        pooled = self.pre_reduction.pooled(nodes, graph.batch, static.shape[0])
        static_vec = torch.relu(self.norm_sf_drop(self.norm_sf_linear(static)))
        return self.predictor(torch.cat([pooled.to(static_vec.dtype), static_vec], 1))


def _check_inputs(x: Tensor, graph: GraphBatch, static: Tensor, in_features: int, static_features: int) -> None:
    if x.dim() != 2 or x.shape != (graph.num_nodes, in_features):
        raise ValueError(f"NNFormerLatency: x must be ({graph.num_nodes}, {in_features}), got {tuple(x.shape)}")
    if static.shape != (graph.num_graphs, static_features):
        raise ValueError(f"NNFormerLatency: static must be ({graph.num_graphs}, {static_features}), "
                         f"got {tuple(static.shape)}")
    for name, t in (("x", x), ("static", static)):
        if t.device != graph.device:
            raise ValueError(f"NNFormerLatency: {name} is on {t.device} but the graph on {graph.device}")
        # value checks force a host sync / graph break: skipped while torch.compile traces.
        # A finite sum proves every value finite in one pass; only a non-finite sum (a bad
        # value, or an overflow of huge ones) pays for the element-wise check.
        if (not torch.compiler.is_compiling() and not bool(torch.isfinite(t.sum()))
                and not bool(torch.isfinite(t).all())):
            row = int((~torch.isfinite(t)).any(1).nonzero()[0])
            where = f"graph {int(graph.batch[row])}" if name == "x" else f"graph {row}"
            raise ValueError(f"NNFormerLatency: {name} of {where} holds NaN or inf")
