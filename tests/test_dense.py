"""Tests of the dense oracle itself (nnformer_fast/dense.py) against hand-computed cases."""

import math

import pytest
import torch

from nnformer_fast.dense import (
    dense_bigin,
    dense_dag_attention,
    dense_nnformer,
    dense_nnformer_latency,
    dense_nnformer_latency_batch,
    dense_relations,
)

DT = torch.float64


def _t(rows, dtype=torch.bool):
    return torch.tensor(rows, dtype=dtype)


def _eye_plus(n, pairs):
    m = torch.eye(n, dtype=torch.bool)
    for i, j in pairs:
        m[i, j] = True
    return m


# --------------------------------------------------------------------------- relations


def test_relations_chain_by_hand():
    # 0 -> 1 -> 2
    m = torch.tensor([[[0, 1, 0], [0, 0, 1], [0, 0, 0]]])
    r = dense_relations(m)
    assert r.shape == (1, 4, 3, 3) and r.dtype == torch.bool
    assert torch.equal(r[0, 0], _t([[1, 1, 0], [0, 1, 1], [0, 0, 1]]))
    assert torch.equal(r[0, 1], _t([[1, 0, 0], [1, 1, 0], [0, 1, 1]]))
    # nobody shares a parent or a child with anyone else
    assert torch.equal(r[0, 2], torch.eye(3, dtype=torch.bool))
    assert torch.equal(r[0, 3], torch.eye(3, dtype=torch.bool))


def test_relations_diamond_by_hand():
    # 0 -> {1, 2} -> 3
    m = torch.zeros(1, 4, 4)
    for i, j in [(0, 1), (0, 2), (1, 3), (2, 3)]:
        m[0, i, j] = 1.0
    r = dense_relations(m)[0]
    assert torch.equal(r[0], _eye_plus(4, [(0, 1), (0, 2), (1, 3), (2, 3)]))
    assert torch.equal(r[1], _eye_plus(4, [(1, 0), (2, 0), (3, 1), (3, 2)]))
    assert torch.equal(r[2], _eye_plus(4, [(1, 2), (2, 1)]))  # siblings via parent 0
    assert torch.equal(r[3], _eye_plus(4, [(1, 2), (2, 1)]))  # co-parents via child 3


def test_relations_sib_vs_cop_distinguished():
    # 0 -> 2, 1 -> 2 (0, 1 co-parents); 2 -> 3, 2 -> 4 (3, 4 siblings)
    m = torch.zeros(2, 5, 5, dtype=torch.int64)
    for i, j in [(0, 2), (1, 2), (2, 3), (2, 4)]:
        m[0, i, j] = 7  # any nonzero value is an edge
    r = dense_relations(m)
    assert torch.equal(r[0, 2], _eye_plus(5, [(3, 4), (4, 3)]))
    assert torch.equal(r[0, 3], _eye_plus(5, [(0, 1), (1, 0)]))
    # second graph has no edges: all four relations are the identity
    for k in range(4):
        assert torch.equal(r[1, k], torch.eye(5, dtype=torch.bool))


def test_relations_global_token_makes_sib_cop_dense():
    # chain 1 -> 2 -> 3 plus global token 0 with full row and column (corner included)
    m = torch.zeros(1, 4, 4)
    m[0, 0, :] = 1
    m[0, :, 0] = 1
    m[0, 1, 2] = m[0, 2, 3] = 1
    r = dense_relations(m)[0]
    assert r[2].all() and r[3].all()
    expect_fwd = _eye_plus(4, [(0, 1), (0, 2), (0, 3), (1, 0), (2, 0), (3, 0), (1, 2), (2, 3)])
    assert torch.equal(r[0], expect_fwd)
    assert torch.equal(r[1], expect_fwd.T)


def test_relations_transpose_closure():
    g = torch.Generator().manual_seed(0)
    m = torch.triu((torch.rand(3, 9, 9, generator=g) < 0.3).float(), diagonal=1)
    r = dense_relations(m)
    assert torch.equal(r[:, 1], r[:, 0].transpose(-1, -2))
    assert torch.equal(r[:, 2], r[:, 2].transpose(-1, -2))
    assert torch.equal(r[:, 3], r[:, 3].transpose(-1, -2))


# --------------------------------------------------------------------------- attention


def _softmax2(a, b):
    ea, eb = math.exp(a), math.exp(b)
    return ea / (ea + eb), eb / (ea + eb)


def _two_node_case(H):
    # graph 0 -> 1; Dh = 2; per-head distinct values
    q = torch.zeros(1, 2, H, 2, dtype=DT)
    k = torch.zeros_like(q)
    v = torch.zeros_like(q)
    for h in range(H):
        q[0, 0, h] = torch.tensor([1.0 + h, 0.5])
        q[0, 1, h] = torch.tensor([-0.5, 2.0 - h])
        k[0, 0, h] = torch.tensor([0.3, -1.0])
        k[0, 1, h] = torch.tensor([1.5, 0.25 * h])
        v[0, 0, h] = torch.tensor([1.0, 2.0 + h])
        v[0, 1, h] = torch.tensor([-3.0, 4.0])
    mask = torch.tensor([[[0, 1], [0, 0]]])
    return q, k, v, mask


def _two_node_expected(q, k, v, h, scale):
    """By hand: fwd -> node 0 sees {0, 1}; bwd -> node 1 sees {0, 1}; sib/cop -> self only."""
    r = h % 4
    qv = q[0, :, h].tolist()
    kv = k[0, :, h].tolist()
    vv = v[0, :, h]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    out = torch.empty(2, 2, dtype=DT)
    out[0] = vv[0]
    out[1] = vv[1]
    if r == 0:
        w0, w1 = _softmax2(dot(qv[0], kv[0]) * scale, dot(qv[0], kv[1]) * scale)
        out[0] = w0 * vv[0] + w1 * vv[1]
    elif r == 1:
        w0, w1 = _softmax2(dot(qv[1], kv[0]) * scale, dot(qv[1], kv[1]) * scale)
        out[1] = w0 * vv[0] + w1 * vv[1]
    return out


@pytest.mark.parametrize("H", [4, 8])
def test_attention_two_nodes_by_hand(H):
    q, k, v, mask = _two_node_case(H)
    o = dense_dag_attention(q, k, v, mask)
    assert o.shape == (1, 2, H, 2) and o.dtype == DT
    for h in range(H):
        torch.testing.assert_close(o[0, :, h], _two_node_expected(q, k, v, h, 1 / math.sqrt(2)))


def test_attention_explicit_scale():
    q, k, v, mask = _two_node_case(4)
    o = dense_dag_attention(q, k, v, mask, scale=0.7)
    torch.testing.assert_close(o[0, :, 0], _two_node_expected(q, k, v, 0, 0.7))
    # head 0 node 0 really depends on the scale
    o2 = dense_dag_attention(q, k, v, mask)
    assert not torch.allclose(o[0, 0, 0], o2[0, 0, 0])


def test_attention_padding_keys_excluded():
    q, k, v, mask = _two_node_case(4)
    big = torch.full((1, 1, 4, 2), 50.0, dtype=DT)  # a padding token that would dominate
    q3, k3, v3 = (torch.cat([t, big], dim=1) for t in (q, k, v))
    mask3 = torch.ones(1, 3, 3)  # padding rows/cols are "edges" too: valid must win
    mask3[0, :2, :2] = mask[0]
    valid = torch.tensor([[True, True, False]])
    o = dense_dag_attention(q3, k3, v3, mask3, valid=valid)
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o[:, :2], dense_dag_attention(q, k, v, mask))
    assert (o[:, 2] == 0).all()


def test_attention_float32_matches_float64():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 7, 8, 5, generator=g, dtype=DT) for _ in range(3))
    m = torch.triu((torch.rand(2, 7, 7, generator=g) < 0.4).float(), diagonal=1)
    o64 = dense_dag_attention(q, k, v, m)
    o32 = dense_dag_attention(q.float(), k.float(), v.float(), m)
    assert o32.dtype == torch.float32
    torch.testing.assert_close(o32.double(), o64, atol=1e-5, rtol=1e-5)


def test_attention_gradcheck():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 4, 4, 3, generator=g, dtype=DT, requires_grad=True) for _ in range(3))
    m = torch.tensor([[[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]]])
    assert torch.autograd.gradcheck(lambda a, b, c: dense_dag_attention(a, b, c, m), (q, k, v))


# --------------------------------------------------------------------------- bigin


def test_bigin_chain_by_hand():
    # 0 -> 1 -> 2, M = 2: g1 = column 0 summed over children, g2 = column 1 over parents
    adj = torch.tensor([[[0.0, 1, 0], [0, 0, 1], [0, 0, 0]]], dtype=DT)
    g = torch.tensor([[[1.0, 10], [2, 20], [3, 30]]], dtype=DT)
    h = torch.tensor([[[0.5, -100], [-5, 1], [0.25, -31]]], dtype=DT)
    # children sums of g1: [2, 3, 0]; parent sums of g2: [0, 10, 20]
    pre = torch.tensor([[[0.5 + 2, -100 + 0], [-5 + 3, 1 + 10], [0.25 + 0, -31 + 20]]], dtype=DT)
    torch.testing.assert_close(dense_bigin(h, g, adj), pre.clamp_min(0))
    torch.testing.assert_close(dense_bigin(h, g, adj, act="leaky_relu"), torch.where(pre > 0, pre, 0.01 * pre))


def test_bigin_split_and_weights():
    # M = 4: the first half aggregates over children, the second over parents; weights count
    adj = torch.tensor([[[0.0, 2.0], [0.0, 0.0]]], dtype=DT)  # edge 0 -> 1 with weight 2
    g = torch.tensor([[[1.0, 2, 3, 4], [5, 6, 7, 8]]], dtype=DT)
    h = torch.zeros_like(g)
    expect = torch.tensor([[[10.0, 12, 0, 0], [0, 0, 6, 8]]], dtype=DT)
    torch.testing.assert_close(dense_bigin(h, g, adj), expect)


def test_activation_values():
    xs = [-2.0, -0.5, 0.0, 1.5]
    h = torch.tensor([[xs]], dtype=DT).reshape(1, 1, 4)
    g = torch.zeros_like(h)
    adj = torch.zeros(1, 1, 1, dtype=DT)
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
    cases = {
        "relu": [0.0, 0.0, 0.0, 1.5],
        "leaky_relu": [-0.02, -0.005, 0.0, 1.5],
        "gelu": [x * phi(x) for x in xs],
        "square_relu": [0.0, 0.0, 0.0, 2.25],
    }
    for act, want in cases.items():
        got = dense_bigin(h, g, adj, act=act).reshape(-1)
        torch.testing.assert_close(got, torch.tensor(want, dtype=DT), msg=act)
    # exact gelu, not the tanh approximation: -0.04540230591222 at x = -2
    assert abs(dense_bigin(h, g, adj, act="gelu")[0, 0, 0].item() - (-0.0455002638963584)) < 1e-12
    with pytest.raises(ValueError):
        dense_bigin(h, g, adj, act="swish")


# --------------------------------------------------------------------------- accuracy model


def _acc_params(depth, C=5, D=8, ratio=2, seed=0, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (0.5 * torch.randn(*s, generator=g)).to(dtype)
    ln = lambda name, p: p.update({name + ".weight": 1 + r(D), name + ".bias": r(D)})
    p = {"op_embed.weight": r(D, C), "depth_embed.weight": r(D, C), "cls_token": r(1, 1, D)}
    ln("norm", p)
    M = ratio * D
    for i in range(depth):
        pre = f"encoder.layers.{i}"
        ln(pre + ".self_attn.norm", p)
        p[pre + ".self_attn.attn.qkv.weight"] = r(3 * D, D)
        p[pre + ".self_attn.attn.proj.weight"] = r(D, D)
        ln(pre + ".feed_forward.norm", p)
        p[pre + ".feed_forward.mlp.fc1.weight"] = r(M, D)
        p[pre + ".feed_forward.mlp.gcn.weight"] = r(M, D)
        p[pre + ".feed_forward.mlp.fc2.weight"] = r(D, M)
    ln("encoder.norm", p)
    p["head.layer.weight"] = r(1, D)
    p["head.layer.bias"] = r(1)
    return p


def _random_dag(n, gen, p=0.4):
    return torch.triu((torch.rand(n, n, generator=gen) < p).long(), diagonal=1)


def _acc_sample(ns, L, C=5, seed=0):
    """Padded batch of random DAGs with node counts ns, padding filled with garbage."""
    g = torch.Generator().manual_seed(seed)
    B = len(ns)
    code = torch.randn(B, L, C, generator=g, dtype=DT)
    code_depth = torch.randn(B, 1, C, generator=g, dtype=DT)
    rel = torch.randint(-1, 10, (B, L, L), generator=g)  # garbage in the padding
    adj = torch.rand(B, L, L, generator=g, dtype=DT)
    for b, n in enumerate(ns):
        a = _random_dag(n, g)
        rel[b, :n, :n] = a
        adj[b, :n, :n] = a.to(DT)
    return {"code": code, "code_depth": code_depth, "code_rel_pos": rel, "code_adj": adj}


def test_nnformer_identity_blocks_by_hand():
    # zero proj and fc2: blocks are the identity, so the class-token readout is
    # head(LN_enc(LN_norm(cls))) + 0.5, whatever the graph.
    p = _acc_params(1)
    p["encoder.layers.0.self_attn.attn.proj.weight"].zero_()
    p["encoder.layers.0.feed_forward.mlp.fc2.weight"].zero_()
    s = _acc_sample([4, 4], 4)
    out = dense_nnformer(p, s, depth=1)
    assert out.shape == (2, 1) and out.dtype == DT

    def ln(x, name):
        mu = x.mean()
        var = ((x - mu) ** 2).mean()
        return (x - mu) / torch.sqrt(var + 1e-5) * p[name + ".weight"] + p[name + ".bias"]

    z = ln(ln(p["cls_token"].reshape(-1), "norm"), "encoder.norm")
    want = (p["head.layer.weight"].reshape(-1) * z).sum() + p["head.layer.bias"][0] + 0.5
    torch.testing.assert_close(out, want.reshape(1, 1).expand(2, 1))

    # avg_tokens: mean over the node tokens only (no cls, no depth token)
    out = dense_nnformer(p, s, depth=1, avg_tokens=True)
    for b in range(2):
        x = s["code"][b] @ p["op_embed.weight"].T
        zs = torch.stack([ln(ln(x[i], "norm"), "encoder.norm") for i in range(4)]).mean(0)
        want = (p["head.layer.weight"].reshape(-1) * zs).sum() + p["head.layer.bias"][0] + 0.5
        torch.testing.assert_close(out[b, 0], want)


@pytest.mark.parametrize("avg_tokens", [False, True])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_nnformer_permutation_invariance(avg_tokens, act):
    p = _acc_params(2)
    s = _acc_sample([6], 6, seed=3)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    sp = {
        "code": s["code"][:, perm],
        "code_depth": s["code_depth"],
        "code_rel_pos": s["code_rel_pos"][:, perm][:, :, perm],
        "code_adj": s["code_adj"][:, perm][:, :, perm],
    }
    kw = dict(depth=2, act=act, avg_tokens=avg_tokens)
    a, b = dense_nnformer(p, s, **kw), dense_nnformer(p, sp, **kw)
    torch.testing.assert_close(a, b)
    # and the graph matters: a different adjacency changes the output
    s2 = dict(s, code_adj=torch.zeros_like(s["code_adj"]))
    assert not torch.allclose(a, dense_nnformer(p, s2, **kw))


def test_nnformer_num_vertices_padding():
    p = _acc_params(2)
    ns = [3, 5, 1]
    s = _acc_sample(ns, 5, seed=4)
    padded = dense_nnformer(p, dict(s, num_vertices=torch.tensor(ns)), depth=2)
    assert padded.shape == (3, 1)
    for b, n in enumerate(ns):
        alone = {
            "code": s["code"][b : b + 1, :n],
            "code_depth": s["code_depth"][b : b + 1],
            "code_rel_pos": s["code_rel_pos"][b : b + 1, :n, :n],
            "code_adj": s["code_adj"][b : b + 1, :n, :n],
        }
        torch.testing.assert_close(padded[b : b + 1], dense_nnformer(p, alone, depth=2))
    # graph 1 is full size: num_vertices = L is the plain batched path
    full = dense_nnformer(p, {k: v[1:2] for k, v in s.items()}, depth=2)
    torch.testing.assert_close(padded[1:2], full)


@pytest.mark.parametrize("depth, avg", [(2, False), (1, True)])
def test_nnformer_rel_pos_distance_values_ignored(depth, avg):
    # rel_pos values 2..8 (and any fraction strictly between 1 and 9, as the reference's
    # masked_fill(1 < v < 9) reads a float rel_pos) count as "no edge"; 1, 9, -1, 0.5 and
    # 9.5 count as edges
    p = _acc_params(depth)
    s = _acc_sample([5], 5, seed=5)
    kw = dict(depth=depth, avg_tokens=avg)
    base = dense_nnformer(p, s, **kw)
    rel = s["code_rel_pos"].clone()
    rel[0, 4, 0] = 5
    rel[0, 3, 1] = 2
    rel[0, 2, 0] = 8
    torch.testing.assert_close(dense_nnformer(p, dict(s, code_rel_pos=rel), **kw), base)
    rel = s["code_rel_pos"].double()
    rel[0, 4, 0], rel[0, 3, 1] = 1.5, 8.5
    torch.testing.assert_close(dense_nnformer(p, dict(s, code_rel_pos=rel), **kw), base)
    for val in (1, 9, -1, 0.5, 9.5):
        rel2 = s["code_rel_pos"].double()
        rel2[0, 4, 0] = val
        assert not torch.allclose(dense_nnformer(p, dict(s, code_rel_pos=rel2), **kw), base)


def test_nnformer_depth1_class_readout_ignores_rel_pos():
    # The class token attends to every token under all four relations (its row is all ones
    # and it makes sib / cop dense) and has an empty adj row, so after ONE block its value
    # does not depend on rel_pos or adj at all. A second block makes it depend on them.
    s = _acc_sample([5], 5, seed=8)
    s2 = dict(s, code_rel_pos=1 - s["code_rel_pos"].triu(1), code_adj=torch.zeros_like(s["code_adj"]))
    p1 = _acc_params(1)
    torch.testing.assert_close(dense_nnformer(p1, s, depth=1), dense_nnformer(p1, s2, depth=1))
    p2 = _acc_params(2)
    assert not torch.allclose(dense_nnformer(p2, s, depth=2), dense_nnformer(p2, s2, depth=2))


def test_nnformer_flags_and_dtypes():
    p = _acc_params(1)
    s = _acc_sample([4, 4], 4, seed=6)
    outs = {}
    for cls in (True, False):
        for de in (True, False):
            for avg in (True, False):
                o = dense_nnformer(p, s, depth=1, class_token=cls, depth_embed=de, avg_tokens=avg)
                assert o.shape == (2, 1) and torch.isfinite(o).all()
                outs[cls, de, avg] = o
    assert not torch.allclose(outs[True, True, False], outs[True, False, False])
    assert not torch.allclose(outs[True, True, False], outs[False, True, False])
    # float32 params run in float32 and agree with float64
    p32 = {k: v.float() for k, v in p.items()}
    o32 = dense_nnformer(p32, s, depth=1)
    assert o32.dtype == torch.float32
    torch.testing.assert_close(o32.double(), outs[True, True, False], atol=1e-4, rtol=1e-4)


def test_nnformer_eight_heads():
    p = _acc_params(1, D=16)
    s = _acc_sample([5], 5, seed=7)
    o4 = dense_nnformer(p, s, depth=1, n_head=4)
    o8 = dense_nnformer(p, s, depth=1, n_head=8)
    assert torch.isfinite(o8).all() and not torch.allclose(o4, o8)


# --------------------------------------------------------------------------- latency model


def _lat_params(n_layers, Fw=6, D=8, ratio=2, seed=0, gating=False, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (0.5 * torch.randn(*s, generator=g)).to(dtype)
    p = {}

    def lin(name, fi, fo):
        p[name + ".weight"] = r(fo, fi)
        p[name + ".bias"] = r(fo)

    def ln(name):
        p[name + ".weight"] = 1 + r(D)
        p[name + ".bias"] = r(D)

    lin("embedding", Fw, D)
    for i in range(n_layers):
        ln(f"gnn_layers.{i}.norm")
        lin(f"gnn_layers.{i}.attn.qkv", D, 3 * D)
        lin(f"gnn_layers.{i}.attn.proj", D, D)
        if gating:
            lin(f"gnn_layers.{i}.attn.lin_d", 1, D)
        p[f"gnn_layers.{i}.layer_scale.scale"] = 1 + r(D)  # large, so the blocks matter
        ln(f"FFN_layers.{i}.norm")
        lin(f"FFN_layers.{i}.mlp.fc1", D, ratio * D)
        lin(f"FFN_layers.{i}.mlp.gcn", D, ratio * D)
        lin(f"FFN_layers.{i}.mlp.fc2", ratio * D, D)
        p[f"FFN_layers.{i}.layer_scale.scale"] = 1 + r(D)
    ln("pre_reduction.norm")
    lin("pre_reduction.mlp.0", D, 2 * D)
    lin("pre_reduction.mlp.3", 2 * D, D)
    lin("norm_sf_linear", 40, D)
    lin("predictor.0", 2 * D, D)
    lin("predictor.3", D, 1)
    return p


def _lat_graph(n, seed, Fw=6):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, Fw, generator=g, dtype=DT),
        _random_dag(n, g).to(DT),
        torch.randn(40, generator=g, dtype=DT),
    )


def test_latency_readout_by_hand_when_blocks_off():
    # zero layer scales: blocks are the identity and the graph structure drops out
    p = _lat_params(2)
    for k in p:
        if k.endswith("layer_scale.scale"):
            p[k].zero_()
    x, adj, st = _lat_graph(5, 0)
    out = dense_nnformer_latency(p, x, adj, st)
    assert out.shape == (1, 1) and out.dtype == DT and out.item() > 0
    h = x @ p["embedding.weight"].T + p["embedding.bias"]
    mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    y = (h - mu) / torch.sqrt(var + 1e-5) * p["pre_reduction.norm.weight"] + p["pre_reduction.norm.bias"]
    m = torch.relu(y @ p["pre_reduction.mlp.0.weight"].T + p["pre_reduction.mlp.0.bias"])
    m = m @ p["pre_reduction.mlp.3.weight"].T + p["pre_reduction.mlp.3.bias"]
    gv = (0.01 * (m + y)).sum(0)
    sv = torch.relu(st @ p["norm_sf_linear.weight"].T + p["norm_sf_linear.bias"])
    z = torch.relu(torch.cat([gv, sv]) @ p["predictor.0.weight"].T + p["predictor.0.bias"])
    z = z @ p["predictor.3.weight"].T + p["predictor.3.bias"]
    torch.testing.assert_close(out.reshape(-1), torch.log1p(torch.exp(z)))
    torch.testing.assert_close(dense_nnformer_latency(p, x, torch.zeros_like(adj), st), out)


@pytest.mark.parametrize("gating", [False, True])
def test_latency_permutation_invariance(gating):
    p = _lat_params(2, gating=gating, seed=1)
    x, adj, st = _lat_graph(7, 1)
    perm = torch.tensor([6, 2, 0, 4, 1, 5, 3])
    a = dense_nnformer_latency(p, x, adj, st, degree_gating=gating)
    b = dense_nnformer_latency(p, x[perm], adj[perm][:, perm], st, degree_gating=gating)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, dense_nnformer_latency(p, x, adj.T.contiguous(), st, degree_gating=gating))


def test_latency_degree_gating_saturated_is_identity():
    p = _lat_params(2, gating=True, seed=2)
    for i in range(2):
        p[f"gnn_layers.{i}.attn.lin_d.weight"].zero_()
        p[f"gnn_layers.{i}.attn.lin_d.bias"].fill_(60.0)  # sigmoid == 1 in float64
    x, adj, st = _lat_graph(6, 2)
    torch.testing.assert_close(
        dense_nnformer_latency(p, x, adj, st, degree_gating=True),
        dense_nnformer_latency(p, x, adj, st, degree_gating=False),
    )
    # a real gate depends on the out-degrees
    p2 = _lat_params(2, gating=True, seed=2)
    assert not torch.allclose(
        dense_nnformer_latency(p2, x, adj, st, degree_gating=True),
        dense_nnformer_latency(p2, x, adj, st, degree_gating=False),
    )


def test_latency_batch_is_the_loop():
    p = _lat_params(2, seed=3)
    graphs = [_lat_graph(n, 10 + n) for n in (1, 4, 9)]
    out = dense_nnformer_latency_batch(p, graphs, act="square_relu")
    assert out.shape == (3, 1)
    for i, (x, a, s) in enumerate(graphs):
        torch.testing.assert_close(out[i : i + 1], dense_nnformer_latency(p, x, a, s, act="square_relu"))


# --------------------------------------------------------------------------- written-out blocks


def _ln_vec(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w + b


def _two_node_attention_by_hand(y, Wqkv, bqkv, Wp, bp):
    """One attention block on the graph 0 -> 1 with D = H = 4 (Dh = 1), written out.

    Relations by hand: head 0 (fwd): node 0 sees {0, 1}, node 1 sees {1}; head 1 (bwd):
    node 0 sees {0}, node 1 sees {0, 1}; heads 2, 3 (sib, cop): self only.
    qkv columns: [q_h0..q_h3, k_h0..k_h3, v_h0..v_h3].
    """
    qkv = y @ Wqkv.T + bqkv  # (2, 12)
    o = torch.zeros(2, 4, dtype=DT)
    seen = {0: [[0, 1], [1]], 1: [[0], [0, 1]], 2: [[0], [1]], 3: [[0], [1]]}
    for h in range(4):
        for i in range(2):
            js = seen[h][i]
            s = torch.stack([qkv[i, h] * qkv[j, 4 + h] for j in js])  # scale 1/sqrt(1)
            w = torch.softmax(s, 0)
            o[i, h] = sum(w[n] * qkv[j, 8 + h] for n, j in enumerate(js))
    return o @ Wp.T + bp


def _two_node_ffn_by_hand(y, W1, b1, Wg, bg, W2, b2, adj01):
    """BiGIN FFN on the graph 0 -> 1 (edge weight adj01), M = 8, relu, written out."""
    h = y @ W1.T + b1
    g = y @ Wg.T + bg
    agg = torch.zeros(2, 8, dtype=DT)
    agg[0, :4] = adj01 * g[1, :4]  # node 0's child is node 1
    agg[1, 4:] = adj01 * g[0, 4:]  # node 1's parent is node 0
    return torch.relu(h + agg) @ W2.T + b2


def test_nnformer_one_block_written_out():
    # no global tokens, so the relations of the 2-node graph are those written above
    p = _acc_params(1, C=3, D=4, seed=11)
    g = torch.Generator().manual_seed(12)
    s = {
        "code": torch.randn(1, 2, 3, generator=g, dtype=DT),
        "code_depth": torch.randn(1, 1, 3, generator=g, dtype=DT),
        "code_rel_pos": torch.tensor([[[0, 1], [0, 0]]]),
        "code_adj": torch.tensor([[[0.0, 1.0], [0.0, 0.0]]], dtype=DT),
    }
    out = dense_nnformer(p, s, depth=1, class_token=False, depth_embed=False)
    L0 = "encoder.layers.0"
    x = s["code"][0] @ p["op_embed.weight"].T
    x = _ln_vec(x, p["norm.weight"], p["norm.bias"])
    y = _ln_vec(x, p[L0 + ".self_attn.norm.weight"], p[L0 + ".self_attn.norm.bias"])
    x = x + _two_node_attention_by_hand(
        y, p[L0 + ".self_attn.attn.qkv.weight"], 0.0, p[L0 + ".self_attn.attn.proj.weight"], 0.0
    )
    y = _ln_vec(x, p[L0 + ".feed_forward.norm.weight"], p[L0 + ".feed_forward.norm.bias"])
    mlp = L0 + ".feed_forward.mlp"
    x = x + _two_node_ffn_by_hand(
        y, p[mlp + ".fc1.weight"], 0.0, p[mlp + ".gcn.weight"], 0.0, p[mlp + ".fc2.weight"], 0.0, 1.0
    )
    z = _ln_vec(x[0], p["encoder.norm.weight"], p["encoder.norm.bias"])  # token 0 = node 0
    want = z @ p["head.layer.weight"][0] + p["head.layer.bias"][0] + 0.5
    torch.testing.assert_close(out.reshape(()), want)


def test_latency_one_layer_written_out_with_out_degree_gate():
    p = _lat_params(1, Fw=3, D=4, gating=True, seed=13)
    g = torch.Generator().manual_seed(14)
    x = torch.randn(2, 3, generator=g, dtype=DT)
    adj = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=DT)  # 0 -> 1: out-degrees [1, 0]
    st = torch.randn(40, generator=g, dtype=DT)
    out = dense_nnformer_latency(p, x, adj, st, n_layers=1, degree_gating=True)
    P = lambda name: (p[name + ".weight"], p[name + ".bias"])
    h = x @ p["embedding.weight"].T + p["embedding.bias"]
    y = _ln_vec(h, *P("gnn_layers.0.norm"))
    wd, bd = P("gnn_layers.0.attn.lin_d")
    deg = torch.tensor([[1.0], [0.0]], dtype=DT)
    y = y * torch.sigmoid(deg @ wd.T + bd)
    h = h + p["gnn_layers.0.layer_scale.scale"] * _two_node_attention_by_hand(
        y, *P("gnn_layers.0.attn.qkv"), *P("gnn_layers.0.attn.proj")
    )
    y = _ln_vec(h, *P("FFN_layers.0.norm"))
    h = h + p["FFN_layers.0.layer_scale.scale"] * _two_node_ffn_by_hand(
        y, *P("FFN_layers.0.mlp.fc1"), *P("FFN_layers.0.mlp.gcn"), *P("FFN_layers.0.mlp.fc2"), 1.0
    )
    y = _ln_vec(h, *P("pre_reduction.norm"))
    w0, b0 = P("pre_reduction.mlp.0")
    w3, b3 = P("pre_reduction.mlp.3")
    gv = (0.01 * (torch.relu(y @ w0.T + b0) @ w3.T + b3 + y)).sum(0)
    sv = torch.relu(st @ p["norm_sf_linear.weight"].T + p["norm_sf_linear.bias"])
    wa, ba = P("predictor.0")
    wb, bb = P("predictor.3")
    z = torch.relu(torch.cat([gv, sv]) @ wa.T + ba) @ wb.T + bb
    torch.testing.assert_close(out.reshape(-1), torch.nn.functional.softplus(z))
