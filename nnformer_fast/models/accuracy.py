"""The NN-Former accuracy predictor (docs/DESIGN.md: the models): a drop-in for the reference model."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graph import GraphBatch, _as_ints
from .blocks import AttentionBlock, BiGINMlp, DAGAttention, FeedForwardBlock
from .inputs import check_features, check_graph

__all__ = ["NNFormer"]

# The reference closes the attention mask where 1 < rel_pos < 9 (values it reserves for
# distances); every other nonzero value, 9 and negative ones included, opens it.
_DISTANCE_CODES = (1, 9)  # exclusive bounds


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, n_head: int, hidden: int, act: str, dropout: float, drop_path: float):
        super().__init__()
        attn = DAGAttention(dim, n_head, bias=False, attn_drop=dropout, proj_drop=dropout)
        mlp = BiGINMlp(dim, hidden, act=act, bias=False, drop=dropout)
        self.self_attn = AttentionBlock(dim, attn, drop_path=drop_path, layer_scale=None)
        self.feed_forward = FeedForwardBlock(dim, mlp, drop_path=drop_path, layer_scale=None)

    def forward(self, x: Tensor, graph: GraphBatch) -> Tensor:
        return self.feed_forward(self.self_attn(x, graph), graph)


class Encoder(nn.Module):
    def __init__(self, depths: Sequence[int], dim: int, n_head: int, hidden: int, act: str, dropout: float,
                 droppath: float):
        super().__init__()
        # As in the reference: the rates rise over sum(depths) blocks, of which the first
        # depths[0] are built.
        rates = torch.linspace(0, droppath, sum(depths)).tolist()[: depths[0]]
        self.layers = nn.ModuleList(EncoderLayer(dim, n_head, hidden, act, dropout, r) for r in rates)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, graph: GraphBatch) -> Tensor:
        for layer in self.layers:
            x = layer(x, graph)
        return self.norm(x)


class RegressionHead(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.layer = nn.Linear(dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x) + 0.5


class NNFormer(nn.Module):
    """NN-Former accuracy predictor; constructor, inputs and state_dict keys of the reference.

    ``forward(sample, static_feats=None)`` takes the padded dict (docs/DESIGN.md: the models) — ``code``
    (B, L, in_chans) float, ``code_depth`` (B, 1, in_chans) float, ``code_rel_pos`` (B, L, L)
    int, ``code_adj`` (B, L, L) float of 0s and 1s, optionally ``num_vertices`` (B,) int for mixed-size
    padded batches and ``graph`` (from :meth:`build_graph`) to reuse a prebuilt graph — and
    returns (B, 1). Internally the tokens are packed (no padding) and
    attention runs on the sparse relations of a :class:`GraphBatch`.
    """

    def __init__(self, depths: Sequence[int] = (12,), in_chans: int = 32, dim: int = 192, n_head: int = 4,
                 mlp_ratio: float = 4.0, act_layer: str = "relu", dropout: float = 0.1, droppath: float = 0.0,
                 avg_tokens: bool = False, class_token: bool = True, depth_embed: bool = True,
                 dataset: str = "nasbench"):
        super().__init__()
        if len(depths) == 0 or depths[0] < 1:
            raise ValueError(f"NNFormer: depths must start with the encoder's layer count (>= 1), got {depths}")
        if not (avg_tokens or class_token):  # the reference asserts the same
            raise ValueError("NNFormer: the readout needs class_token=True or avg_tokens=True")
        self.in_chans, self.dim, self.dataset = in_chans, dim, dataset
        self.avg_tokens, self.class_token, self.use_depth_embed = avg_tokens, class_token, depth_embed
        self.op_embed = nn.Linear(in_chans, dim, bias=False)
        self.depth_embed = nn.Linear(in_chans, dim, bias=False) if depth_embed else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.norm = nn.LayerNorm(dim)
        self.encoder = Encoder(depths, dim, n_head, int(dim * mlp_ratio), act_layer, dropout, droppath)
        self.head = RegressionHead(dim)
        self.apply(_init_weights)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, sample: dict, static_feats: Optional[Tensor] = None) -> Tensor:
        x, graph, num_vertices = self.embed(sample)
        x = self.encoder(x, graph)
        return self.head(self.readout(x, graph, num_vertices))

    def embed(self, sample: dict) -> tuple[Tensor, GraphBatch, Tensor]:
        """Packed, normalised tokens (N, dim), their graph, and the node count per cell (B,)."""
        if not isinstance(sample, dict):
            raise TypeError(f"NNFormer: sample must be a dict of tensors, got {type(sample).__name__}")
        code, rel_pos, adj = _check_sample(sample, self.in_chans, self.op_embed.weight,
                                           None if self.depth_embed is None else self.depth_embed.weight)
        b, l, _ = code.shape
        device = code.device
        num_vertices = sample.get("num_vertices")
        if num_vertices is None:
            num_vertices = torch.full((b,), l, dtype=torch.int64, device=device)
        else:
            num_vertices = _check_num_vertices(num_vertices, b, l, device)
        front, back = int(self.class_token), int(self.use_depth_embed)
        t = front + l + back
        pos = torch.arange(t, device=device)
        node = (pos >= front) & (pos[None, :] < front + num_vertices[:, None])  # (B, T)
        is_depth = (pos[None, :] == front + num_vertices[:, None]) & bool(back)
        is_global = is_depth | ((pos == 0) & bool(front))[None, :]
        valid = node | is_global

        parts = [self.cls_token.expand(b, 1, self.dim)] if front else []
        parts += [self.op_embed(code)]
        if back:
            parts += [code.new_zeros(b, 1, self.dim)]
        tokens = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        if back:
            tokens = torch.where(is_depth[..., None], self.depth_embed(sample["code_depth"]), tokens)

        pad = (front, back, front, back)
        inner_pair = node[:, :, None] & node[:, None, :]
        opens = (rel_pos != 0) & ~((rel_pos > _DISTANCE_CODES[0]) & (rel_pos < _DISTANCE_CODES[1]))
        mask = (F.pad(opens, pad) & inner_pair) | (is_global[:, :, None] & valid[:, None, :]) \
            | (valid[:, :, None] & is_global[:, None, :])
        gin_adj = F.pad(adj != 0, pad) & inner_pair
        graph = sample.get("graph")
        if graph is None:
            graph = GraphBatch.from_dense(gin_adj, mask=mask, num_vertices=valid.sum(1))
        check_graph("NNFormer", graph)
        if "num_vertices" not in sample:  # every token is real: no data-dependent indexing
            return self.norm(tokens.reshape(b * t, self.dim)), graph, num_vertices
        return self.norm(tokens[valid]), graph, num_vertices

    def build_graph(self, sample: dict) -> GraphBatch:
        """The :class:`GraphBatch` that :meth:`forward` builds from ``sample``; pass it back
        as ``sample["graph"]`` to skip rebuilding it (and for ``torch.compile(fullgraph=True)``,
        which cannot trace the data-dependent graph construction)."""
        return self.embed({k: v for k, v in sample.items() if k != "graph"})[1]

    def readout(self, x: Tensor, graph: GraphBatch, num_vertices: Tensor) -> Tensor:
        """(B, dim): the class token, or with ``avg_tokens`` the mean over the cell's nodes."""
        start = graph.ptr[:-1]
        if not self.avg_tokens:
            return x[start]
        front = int(self.class_token)
        node_of = torch.arange(x.shape[0], device=x.device) - start[graph.batch]
        is_node = (node_of >= front) & (node_of < front + num_vertices[graph.batch])
        sums = x.new_zeros(graph.num_graphs, x.shape[1]).index_add_(0, graph.batch[is_node], x[is_node])
        return sums / num_vertices[:, None].to(x.dtype)


def _check_sample(sample: dict, in_chans: int, embed_weight: Tensor,
                  depth_weight: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """The sample's tensors, checked; ``code`` and ``code_depth`` against the Linears that read them."""
    for key in ("code", "code_depth", "code_rel_pos", "code_adj"):
        if key not in sample:
            raise KeyError(f"NNFormer: sample lacks {key!r}")
        if not isinstance(sample[key], Tensor):
            raise TypeError(f"NNFormer: sample[{key!r}] must be a tensor, got {type(sample[key]).__name__}")
    check_features("NNFormer", "code", sample["code"], embed_weight)
    if depth_weight is not None:
        check_features("NNFormer", "code_depth", sample["code_depth"], depth_weight)
    code, rel_pos, adj = sample["code"], sample["code_rel_pos"], sample["code_adj"]
    if code.dim() != 3 or code.shape[-1] != in_chans:
        raise ValueError(f"NNFormer: code must be (B, L, {in_chans}), got {tuple(code.shape)}")
    b, l, _ = code.shape
    if l == 0:
        raise ValueError("NNFormer: code has L = 0 nodes; every cell needs at least one node")
    if sample["code_depth"].shape != (b, 1, in_chans):
        raise ValueError(f"NNFormer: code_depth must be ({b}, 1, {in_chans}), got {tuple(sample['code_depth'].shape)}")
    for name, t in (("code_rel_pos", rel_pos), ("code_adj", adj)):
        if t.shape != (b, l, l):
            raise ValueError(f"NNFormer: {name} must be ({b}, {l}, {l}), got {tuple(t.shape)}")
        if t.device != code.device:
            raise ValueError(f"NNFormer: {name} is on {t.device} but code on {code.device}")
    if torch.compiler.is_compiling():  # value checks would break the traced graph
        return code, rel_pos, adj
    for name in ("code", "code_depth", "code_rel_pos", "code_adj"):
        t = sample[name]
        if not (t.is_floating_point() or t.is_complex()):  # integer and bool tensors are finite
            continue
        bad = ~torch.isfinite(t).flatten(1).all(1)  # NaN != 0 would otherwise become an edge
        if bool(bad.any()):
            raise ValueError(f"NNFormer: {name} of sample {int(bad.nonzero()[0])} holds NaN or inf")
    if adj.dtype != torch.bool:
        # the reference multiplies by code_adj's values; the GIN kernels sum unweighted edges
        weighted = ((adj != 0) & (adj != 1)).nonzero()
        if weighted.numel():
            g, i, j = weighted[0].tolist()
            raise ValueError(f"NNFormer: code_adj of sample {g} holds {adj[g, i, j].item()} at ({i}, {j}); "
                             "entries must be 0 or 1 (the reference builds code_adj = (code_rel_pos == 1))")
    return code, rel_pos, adj


def _check_num_vertices(num_vertices, b: int, l: int, device: torch.device) -> Tensor:
    """num_vertices as a (B,) int64 tensor on ``device``; every value in [1, L] (a cell has
    nodes, and the depth token goes right after the last one, inside the padded length)."""
    nv = _as_ints(num_vertices, "num_vertices", "NNFormer").to(device)
    if nv.shape != (b,):
        raise ValueError(f"NNFormer: num_vertices must have shape ({b},), got {tuple(nv.shape)}")
    if not torch.compiler.is_compiling():  # value checks would break the traced graph
        bad = ((nv < 1) | (nv > l)).nonzero().flatten()
        if bad.numel():
            g = int(bad[0])
            raise ValueError(f"NNFormer: sample {g} has num_vertices={int(nv[g])}, outside [1, {l}] (L = {l})")
    return nv


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
