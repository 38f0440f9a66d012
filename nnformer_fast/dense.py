"""The dense formulation of NN-Former (docs/DESIGN.md).

This is how the public reference code computes the model: padded ``(B, L, L)`` masks,
relation matrices from ``L x L x L`` boolean mask products, full ``(L, L)`` score matrices
masked with ``-inf``. It has two jobs:

* the float64 oracle that every kernel and model is tested against, and
* the slow baseline that the benchmarks time (float32).

Pure torch, written straight from docs/DESIGN.md, with no dependency on any other
``nnformer_fast`` module. Every function is dtype-generic: it computes in the dtype of its
floating inputs / parameters. Eval mode only: no dropout, no drop path.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "activation",
    "dense_relations",
    "dense_dag_attention",
    "dense_bigin",
    "dense_nnformer",
    "dense_nnformer_latency",
    "dense_nnformer_latency_batch",
]

_LN_EPS = 1e-5
N_RELATIONS = 4


# --------------------------------------------------------------------------- activations


def _square_relu(x: Tensor) -> Tensor:
    return x * F.relu(x)


ACTIVATIONS = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, negative_slope=0.01),
    "gelu": lambda x: F.gelu(x, approximate="none"),  # exact erf gelu
    "square_relu": _square_relu,
}


def activation(name: str):
    """The activation named ``name`` (relu, leaky_relu (slope 0.01), gelu (erf), square_relu)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


# --------------------------------------------------------------------------- §1 relations


def dense_relations(mask: Tensor) -> Tensor:
    """The four NN-Former relations of a batch of padded masks (docs/DESIGN.md: the four relations).

    mask: (B, L, L) any dtype; nonzero at [b, i, j] means an edge i -> j.
    Returns (B, 4, L, L) bool: ``[M+I, Mᵀ+I, MᵀM+I, MMᵀ+I]`` (fwd, bwd, sib, cop), products
    taken as booleans. Like the reference, the products are float matmuls (the L³ cost)
    followed by ``> 0``; counts are at most L, exact in float32.
    """
    if mask.dim() != 3 or mask.shape[-1] != mask.shape[-2]:
        raise ValueError(f"mask must be (B, L, L), got {tuple(mask.shape)}")
    m = mask != 0
    mf = m.to(torch.float32)
    mt = mf.transpose(-1, -2)
    eye = torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    fwd = m | eye
    bwd = m.transpose(-1, -2) | eye
    sib = (mt @ mf > 0) | eye  # [i, j]: some k with k -> i and k -> j
    cop = (mf @ mt > 0) | eye  # [i, j]: some k with i -> k and j -> k
    return torch.stack([fwd, bwd, sib, cop], dim=1)


# --------------------------------------------------------------------------- §2 attention


def dense_dag_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    valid: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> Tensor:
    """DAG-masked multi-head attention, dense (docs/DESIGN.md: dag_attention).

    q, k, v: (B, L, H, Dh) float (any floating dtype; the result has q's dtype).
    mask: (B, L, L) any dtype, nonzero = edge i -> j; head h uses relation ``h % 4`` of
    :func:`dense_relations` (which always contains i itself).
    valid: optional (B, L) bool, True for real tokens; the mask's padding rows and columns
    are dropped before the relations are formed, so padding is never a key, never links two
    real tokens as siblings / co-parents, and its output rows are zero.
    scale: score scale, default ``1 / sqrt(Dh)``.
    Returns (B, L, H, Dh). Scores are formed in the input dtype; the softmax runs in at
    least float32 (as under autocast) and the weights are cast back. No dropout.
    """
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must be equal (B, L, H, Dh), got {q.shape}, {k.shape}, {v.shape}")
    B, L, H, Dh = q.shape
    if mask.shape != (B, L, L):
        raise ValueError(f"mask must be {(B, L, L)}, got {tuple(mask.shape)}")
    if scale is None:
        scale = 1.0 / math.sqrt(Dh)

    if valid is not None:
        valid = valid.to(torch.bool)
        # Padding must not create sibling / co-parent links between real tokens either.
        mask = (mask != 0) & valid[:, :, None] & valid[:, None, :]
    rel = dense_relations(mask)  # (B, 4, L, L)
    heads = torch.arange(H, device=q.device) % N_RELATIONS
    allowed = rel[:, heads]  # (B, H, L, L)
    if valid is not None:
        allowed = allowed & valid[:, None, None, :]

    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    sdtype = torch.promote_types(scores.dtype, torch.float32)
    scores = scores.to(sdtype).masked_fill(~allowed, float("-inf"))
    w = torch.softmax(scores, dim=-1)
    # A row with no allowed key (only a padding query) is all -inf -> NaN; define it as 0.
    w = torch.where(allowed.any(dim=-1, keepdim=True), w, torch.zeros_like(w)).to(v.dtype)
    out = torch.einsum("bhij,bjhd->bihd", w, v)
    if valid is not None:
        out = out * valid[:, :, None, None].to(out.dtype)
    return out


# --------------------------------------------------------------------------- §3 BiGIN


def dense_bigin(h: Tensor, g: Tensor, adj: Tensor, act: str = "relu") -> Tensor:
    """Bidirectional GIN aggregation, dense (docs/DESIGN.md: bigin): ``act(h + cat(A g1, Aᵀ g2))``.

    h, g: (B, L, M) float, M even; g1 = g[..., :M/2], g2 = g[..., M/2:].
    adj: (B, L, L) (cast to h's dtype; its values are used as weights, not booleans).
    Row i of ``A g1`` sums g1 over i's children, row i of ``Aᵀ g2`` sums g2 over i's parents.
    Returns (B, L, M) in h's dtype.
    """
    if h.shape != g.shape or h.dim() != 3:
        raise ValueError(f"h and g must be equal (B, L, M), got {tuple(h.shape)}, {tuple(g.shape)}")
    M = h.shape[-1]
    if M % 2:
        raise ValueError(f"M must be even, got {M}")
    a = adj.to(h.dtype)
    g1, g2 = g[..., : M // 2], g[..., M // 2 :]
    agg = torch.cat([a @ g1, a.transpose(-1, -2) @ g2], dim=-1)
    return activation(act)(h + agg)


# --------------------------------------------------------------------------- helpers


def _ln(x: Tensor, params: Mapping[str, Tensor], prefix: str) -> Tensor:
    w = params[prefix + ".weight"]
    return F.layer_norm(x, (x.shape[-1],), w, params.get(prefix + ".bias"), _LN_EPS)


def _lin(x: Tensor, params: Mapping[str, Tensor], prefix: str) -> Tensor:
    return F.linear(x, params[prefix + ".weight"], params.get(prefix + ".bias"))


def _attention_block(y: Tensor, mask: Tensor, params: Mapping[str, Tensor], prefix: str, n_head: int) -> Tensor:
    """qkv -> DAG attention -> proj. y: (B, L, D); prefix e.g. 'encoder.layers.0.self_attn.attn'."""
    B, L, D = y.shape
    if D % n_head:
        raise ValueError(f"dim {D} is not a multiple of n_head {n_head}")
    qkv = _lin(y, params, prefix + ".qkv").view(B, L, 3, n_head, D // n_head)
    o = dense_dag_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask)
    return _lin(o.reshape(B, L, D), params, prefix + ".proj")


def _ffn_block(y: Tensor, adj: Tensor, params: Mapping[str, Tensor], prefix: str, act: str) -> Tensor:
    """fc1 / gcn -> BiGIN -> fc2. y: (B, L, D); prefix e.g. 'encoder.layers.0.feed_forward.mlp'."""
    h = _lin(y, params, prefix + ".fc1")
    g = _lin(y, params, prefix + ".gcn")
    return _lin(dense_bigin(h, g, adj, act), params, prefix + ".fc2")


def _attention_mask(rel_pos: Tensor) -> Tensor:
    """M from rel_pos (docs/DESIGN.md: the models): nonzero, except that values strictly between 1 and 9 (the
    distances 2..8, and any fraction there) count as 0, as the reference masks them. Bool."""
    return (rel_pos != 0) & ~((rel_pos > 1) & (rel_pos < 9))


# --------------------------------------------------------------------------- §4 accuracy model


def _nnformer_equal_size(
    params: Mapping[str, Tensor],
    code: Tensor,
    code_depth: Tensor,
    rel_pos: Tensor,
    adj: Tensor,
    *,
    depth: int,
    n_head: int,
    act: str,
    avg_tokens: bool,
    class_token: bool,
    depth_embed: bool,
) -> Tensor:
    """The reference forward on a batch in which every token is real. Returns (B, 1)."""
    B, L, _ = code.shape
    x = F.linear(code, params["op_embed.weight"])  # (B, L, D)
    D = x.shape[-1]
    adj = adj.to(x.dtype)
    rel_pos = rel_pos if rel_pos.is_floating_point() else rel_pos.to(torch.long)
    n_front = 0
    if class_token:
        x = torch.cat([params["cls_token"].to(x.dtype).reshape(1, 1, D).expand(B, 1, D), x], dim=1)
        rel_pos = F.pad(rel_pos, (1, 0, 1, 0), value=1)
        adj = F.pad(adj, (1, 0, 1, 0), value=0.0)
        n_front = 1
    if depth_embed:
        x = torch.cat([x, F.linear(code_depth, params["depth_embed.weight"])], dim=1)
        rel_pos = F.pad(rel_pos, (0, 1, 0, 1), value=1)
        adj = F.pad(adj, (0, 1, 0, 1), value=0.0)
    x = _ln(x, params, "norm")
    mask = _attention_mask(rel_pos)

    for i in range(depth):
        p = f"encoder.layers.{i}"
        x = x + _attention_block(_ln(x, params, p + ".self_attn.norm"), mask, params, p + ".self_attn.attn", n_head)
        x = x + _ffn_block(_ln(x, params, p + ".feed_forward.norm"), adj, params, p + ".feed_forward.mlp", act)
    x = _ln(x, params, "encoder.norm")

    if avg_tokens:
        z = x[:, n_front : n_front + L].mean(dim=1)  # the graph's own nodes only
    else:
        z = x[:, 0]
    return F.linear(z, params["head.layer.weight"], params["head.layer.bias"]) + 0.5


def dense_nnformer(
    params: Mapping[str, Tensor],
    sample: Mapping[str, Tensor],
    *,
    depth: int,
    n_head: int = 4,
    act: str = "relu",
    avg_tokens: bool = False,
    class_token: bool = True,
    depth_embed: bool = True,
) -> Tensor:
    """The NN-Former accuracy model in eval mode, dense (docs/DESIGN.md: the models).

    params: a state_dict with the reference names (docs/DESIGN.md: the models); float32 or float64.
    sample: ``code`` (B, L, C) float, ``code_depth`` (B, 1, C) float, ``code_rel_pos``
    (B, L, L) int, ``code_adj`` (B, L, L) float, optional ``num_vertices`` (B,) int.
    Returns (B, 1) in the parameters' dtype (inputs are cast to ``op_embed.weight``'s dtype).

    Token order: ``[cls?, node_0 .. node_{n-1}, depth?]``; cls and depth tokens get rows and
    columns of ones in rel_pos (corners included) and zero rows/columns in adj.
    Readout: token 0 after ``encoder.norm`` — the class token, or the first node when
    ``class_token=False``; with ``avg_tokens`` the mean over the node tokens only (the
    class and depth tokens excluded whichever of them exist).
    With ``num_vertices``, graph b uses only its first ``num_vertices[b]`` nodes (rows and
    columns of rel_pos / adj); each graph is run alone on its unpadded slice, so padding
    cannot influence anything. Without it every token is real, as in the reference.
    """
    dt = params["op_embed.weight"].dtype
    code = sample["code"].to(dt)
    code_depth = sample["code_depth"].to(dt)
    rel_pos = sample["code_rel_pos"]
    adj = sample["code_adj"].to(dt)
    kw = dict(
        depth=depth,
        n_head=n_head,
        act=act,
        avg_tokens=avg_tokens,
        class_token=class_token,
        depth_embed=depth_embed,
    )
    nv = sample.get("num_vertices")
    if nv is None:
        return _nnformer_equal_size(params, code, code_depth, rel_pos, adj, **kw)
    outs = []
    for b, n in enumerate(torch.as_tensor(nv).reshape(-1).tolist()):
        n = int(n)
        outs.append(
            _nnformer_equal_size(
                params,
                code[b : b + 1, :n],
                code_depth[b : b + 1],
                rel_pos[b : b + 1, :n, :n],
                adj[b : b + 1, :n, :n],
                **kw,
            )
        )
    return torch.cat(outs, dim=0)


# --------------------------------------------------------------------------- §5 latency model


def dense_nnformer_latency(
    params: Mapping[str, Tensor],
    x: Tensor,
    adj: Tensor,
    static: Tensor,
    *,
    n_layers: int = 2,
    n_head: int = 4,
    act: str = "relu",
    degree_gating: bool = False,
) -> Tensor:
    """The NN-Former latency model in eval mode for ONE graph, dense (docs/DESIGN.md: the models).

    params: state_dict with the reference names (docs/DESIGN.md: the models), all Linear layers with biases.
    x: (L, F) node features; adj: (L, L) directed adjacency, used both as the attention
    mask (relations of §1) and as the GIN adjacency; static: (40,) static features.
    Inputs are cast to ``embedding.weight``'s dtype. Returns (1, 1), the latency in ms.

    Block i: ``x += gnn_layers.i.layer_scale.scale * proj(attn(gate(LN(x))))`` with the
    optional degree gate ``y * sigmoid(lin_d(out_degree[:, None]))`` (out_degree = row sums
    of adj) applied after the LayerNorm; then ``x += FFN_layers.i.layer_scale.scale *
    fc2(bigin(fc1(LN(x)), gcn(LN(x)), adj))``.
    Readout: ``y = LN(x); r = 0.01 * (mlp(y) + y)`` summed over nodes -> (D,);
    ``relu(norm_sf_linear(static))`` -> (D,); concat -> predictor -> softplus.
    """
    dt = params["embedding.weight"].dtype
    x = x.to(dt)
    adj = adj.to(dt)
    static = static.to(dt).reshape(1, -1)
    if x.dim() != 2 or adj.shape != (x.shape[0], x.shape[0]):
        raise ValueError(f"x must be (L, F) and adj (L, L), got {tuple(x.shape)}, {tuple(adj.shape)}")

    h = _lin(x, params, "embedding")[None]  # (1, L, D)
    a = adj[None]  # (1, L, L)
    out_degree = adj.sum(dim=1)[None, :, None]  # (1, L, 1)
    for i in range(n_layers):
        p = f"gnn_layers.{i}"
        y = _ln(h, params, p + ".norm")
        if degree_gating:
            y = y * torch.sigmoid(_lin(out_degree, params, p + ".attn.lin_d"))
        h = h + params[p + ".layer_scale.scale"] * _attention_block(y, a, params, p + ".attn", n_head)
        p = f"FFN_layers.{i}"
        y = _ln(h, params, p + ".norm")
        h = h + params[p + ".layer_scale.scale"] * _ffn_block(y, a, params, p + ".mlp", act)

    y = _ln(h, params, "pre_reduction.norm")
    m = _lin(F.relu(_lin(y, params, "pre_reduction.mlp.0")), params, "pre_reduction.mlp.3")
    graph_vec = (0.01 * (m + y)).sum(dim=1)  # (1, D)
    static_vec = F.relu(_lin(static, params, "norm_sf_linear"))  # (1, D)
    z = torch.cat([graph_vec, static_vec], dim=-1)  # (1, 2D)
    z = _lin(F.relu(_lin(z, params, "predictor.0")), params, "predictor.3")
    return F.softplus(z)  # (1, 1)


def dense_nnformer_latency_batch(
    params: Mapping[str, Tensor],
    graphs: Sequence[tuple[Tensor, Tensor, Tensor]],
    **kw,
) -> Tensor:
    """The reference's one-graph-at-a-time loop. graphs: [(x (L_b, F), adj (L_b, L_b),
    static (40,)), ...]; kw as :func:`dense_nnformer_latency`. Returns (B, 1)."""
    return torch.cat([dense_nnformer_latency(params, x, a, s, **kw) for x, a, s in graphs], dim=0)
