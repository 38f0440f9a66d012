"""Both models against the dense float64 oracle of nnformer_fast.dense (SPEC §4–5)."""
import pytest
import torch

from nnformer_fast import GraphBatch, NNFormer, NNFormerLatency
from nnformer_fast.dense import dense_nnformer, dense_nnformer_latency_batch
from nnformer_fast.models.buckets import bucket_size, bucketed, wants_buckets
from nnformer_fast.testing import assert_close, random_dag_edges

ACCURACY_KEYS_PER_LAYER = [
    "self_attn.norm.weight", "self_attn.norm.bias", "self_attn.attn.qkv.weight", "self_attn.attn.proj.weight",
    "feed_forward.norm.weight", "feed_forward.norm.bias", "feed_forward.mlp.fc1.weight",
    "feed_forward.mlp.gcn.weight", "feed_forward.mlp.fc2.weight",
]


def cell_sample(sizes, in_chans=32, seed=0, distance_codes=False, pad_to=None):
    """A padded batch of random cells; graph b has sizes[b] nodes (rest is padding)."""
    g = torch.Generator().manual_seed(seed)
    b, l = len(sizes), pad_to or max(sizes)
    adj = torch.zeros(b, l, l)
    for i, n in enumerate(sizes):
        e = random_dag_edges(n, 1.5, g)
        adj[i, e[0], e[1]] = 1
    rel_pos = adj.long()
    if distance_codes:  # values 2..8 are distances: they must not open the mask
        far = torch.triu(torch.randint(2, 9, (b, l, l), generator=g), 2) * (adj == 0)
        rel_pos = rel_pos + far
    code = torch.randn(b, l, in_chans, generator=g)
    depth = torch.randn(b, 1, in_chans, generator=g)
    sample = {"code": code, "code_depth": depth, "code_rel_pos": rel_pos, "code_adj": adj}
    if len(set(sizes)) > 1 or pad_to:
        sample["num_vertices"] = torch.tensor(sizes)
    return sample


def _double(sample):
    return {k: v.double() if v.is_floating_point() else v for k, v in sample.items()}


CONFIGS = [
    dict(),
    dict(avg_tokens=True),
    dict(class_token=False, avg_tokens=True),
    dict(depth_embed=False, act_layer="gelu"),
    dict(class_token=False, depth_embed=False, avg_tokens=True, act_layer="leaky_relu"),
    dict(n_head=8, act_layer="square_relu"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_accuracy_model_matches_dense_oracle(config):
    torch.manual_seed(0)
    model = NNFormer(depths=[3], dim=64, **config).double().eval()
    sample = cell_sample([7] * 5, distance_codes=True)
    ours = model(_double(sample), None)
    oracle = dense_nnformer(model.state_dict(), _double(sample), depth=3, n_head=config.get("n_head", 4),
                            act=config.get("act_layer", "relu"), avg_tokens=config.get("avg_tokens", False),
                            class_token=config.get("class_token", True), depth_embed=config.get("depth_embed", True))
    assert ours.shape == (5, 1)
    assert_close(ours, oracle, atol=1e-12, rtol=1e-10, name="NNFormer float64")


def test_accuracy_model_float32_matches_dense_float32():
    torch.manual_seed(1)
    model = NNFormer(depths=[4]).eval()  # reference sizes: dim 192, 4 heads
    sample = cell_sample([7] * 8, seed=3)
    ours = model(sample, None)
    oracle = dense_nnformer(model.state_dict(), sample, depth=4)
    assert_close(ours, oracle, atol=1e-6, rtol=1e-6, name="NNFormer float32")


def test_padding_never_changes_real_tokens():
    torch.manual_seed(2)
    model = NNFormer(depths=[2], dim=32, avg_tokens=True).double().eval()
    sample = _double(cell_sample([4, 7, 2, 6], seed=5, pad_to=9))
    out = model(sample, None)
    # garbage in the padding changes nothing
    noisy = {k: v.clone() for k, v in sample.items()}
    for b, n in enumerate(sample["num_vertices"].tolist()):
        noisy["code"][b, n:] = 1e3
        noisy["code_rel_pos"][b, n:, :] = 1
        noisy["code_adj"][b, :n, n:] = 1
    assert_close(model(noisy, None), out, atol=1e-12, rtol=1e-10, name="padding garbage")
    oracle = dense_nnformer(model.state_dict(), sample, depth=2, avg_tokens=True)
    assert_close(out, oracle, atol=1e-12, rtol=1e-10, name="padded vs alone")


def test_attention_mask_follows_the_references_rule():
    """The reference closes the mask where 1 < rel_pos < 9 and opens it for every other
    nonzero value: 9, negative values and fractions outside (1, 9) open it, 1.5 and 8.5 do not."""
    torch.manual_seed(6)
    model = NNFormer(depths=[2], dim=32).double().eval()
    sample = _double(cell_sample([7] * 4, seed=7))
    rel_pos = sample["code_rel_pos"].double()
    g = torch.Generator().manual_seed(8)
    free = (rel_pos == 0) & torch.ones(7, 7, dtype=torch.bool).triu(1)
    values = torch.tensor([1.5, 8.5, 9.0, -1.0, 0.5, 12.0], dtype=torch.float64)
    rel_pos[free] = values[torch.randint(0, len(values), (int(free.sum()),), generator=g)]
    sample["code_rel_pos"] = rel_pos
    oracle = dense_nnformer(model.state_dict(), sample, depth=2)
    assert_close(model(sample, None), oracle, atol=1e-12, rtol=1e-10, name="rel_pos values")
    closed = sample | {"code_rel_pos": torch.where((rel_pos > 1) & (rel_pos < 9), 0.0, rel_pos)}
    assert_close(model(closed, None), oracle, atol=1e-12, rtol=1e-10, name="(1, 9) closes the mask")


def test_droppath_rates_rise_over_all_depths_as_in_the_reference():
    model = NNFormer(depths=[4, 4], dim=32, droppath=0.35)
    rates = [layer.self_attn.drop_path.p for layer in model.encoder.layers]
    assert rates == pytest.approx(torch.linspace(0, 0.35, 8).tolist()[:4])
    assert [layer.feed_forward.drop_path.p for layer in model.encoder.layers] == rates
    assert [l.self_attn.drop_path.p for l in NNFormer(depths=[3], droppath=0.2).encoder.layers] \
        == pytest.approx([0.0, 0.1, 0.2])


def test_accuracy_state_dict_keys_are_the_references():
    model = NNFormer(depths=[2])
    expected = {"op_embed.weight", "depth_embed.weight", "cls_token", "norm.weight", "norm.bias",
                "encoder.norm.weight", "encoder.norm.bias", "head.layer.weight", "head.layer.bias"}
    expected |= {f"encoder.layers.{i}.{k}" for i in range(2) for k in ACCURACY_KEYS_PER_LAYER}
    assert set(model.state_dict()) == expected
    # a reference checkpoint (same names and shapes) loads strictly
    checkpoint = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    NNFormer(depths=[2]).load_state_dict(checkpoint, strict=True)


def test_accuracy_model_trains_and_runs_under_autocast():
    torch.manual_seed(3)
    model = NNFormer(depths=[2], dim=64, droppath=0.2)
    sample = cell_sample([5, 7, 3], seed=1)
    model.train()
    model(sample, None).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    model.eval()
    exact = model(sample, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(sample, None)
    assert_close(low.float(), exact, atol=5e-2, rtol=5e-2, name="bf16 autocast")


@pytest.mark.parametrize("bad, message", [
    (lambda s: s.pop("code_adj"), "lacks 'code_adj'"),
    (lambda s: s.update(code=s["code"][..., :8]), r"code must be \(B, L, 32\)"),
    (lambda s: s.update(code_rel_pos=s["code_rel_pos"][:, :3]), "code_rel_pos must be"),
    (lambda s: s["code"].__setitem__((1, 0, 0), float("nan")), "code of sample 1 holds NaN"),
    (lambda s: s["code_adj"].__setitem__((0, 0, 0), 1.0), "self loop"),
    (lambda s: s["code_adj"].__setitem__((1, 0, 3), 2.0), r"code_adj of sample 1 holds 2.0 at \(0, 3\)"),
    (lambda s: s["code_adj"].__setitem__((0, 1, 2), 0.5), r"code_adj of sample 0 holds 0.5 at \(1, 2\)"),
])
def test_accuracy_model_bad_input(bad, message):
    model = NNFormer(depths=[1], dim=32)
    sample = cell_sample([5, 5])
    bad(sample)
    with pytest.raises((KeyError, ValueError), match=message):
        model(sample, None)


# ---------------------------------------------------------------------------- latency model
def latency_batch(sizes, seed=0, features=192):
    g = torch.Generator().manual_seed(seed)
    edges, offset, dense = [], 0, []
    for n in sizes:
        e = random_dag_edges(n, 2.0, g, max_span=5)
        a = torch.zeros(n, n)
        a[e[0], e[1]] = 1
        dense.append(a)
        edges.append(e + offset)
        offset += n
    x = torch.randn(offset, features, generator=g)
    static = torch.randn(len(sizes), 40, generator=g)
    return x, GraphBatch.from_edge_index(torch.cat(edges, 1), sizes), static, dense


@pytest.mark.parametrize("degree_gating", [False, True])
def test_latency_model_matches_one_graph_at_a_time_oracle(degree_gating):
    torch.manual_seed(4)
    model = NNFormerLatency(dim=64, n_layers=2, degree_gating=degree_gating).double().eval()
    # layer scale 1e-4 would hide errors in the blocks: make them count
    for name, p in model.named_parameters():
        if name.endswith("layer_scale.scale"):
            p.data.fill_(0.5)
    x, graph, static, dense = latency_batch([12, 1, 30, 7], seed=2)
    ours = model(x.double(), graph, static.double())
    graphs = [(xb, a, s) for xb, a, s in zip(x.double().split(graph.num_nodes_per_graph.tolist()), dense,
                                               static.double())]
    oracle = dense_nnformer_latency_batch(model.state_dict(), graphs, n_layers=2, degree_gating=degree_gating)
    assert ours.shape == (4, 1)
    assert_close(ours, oracle, atol=1e-12, rtol=1e-10, name="NNFormerLatency float64")


def test_latency_packed_equals_alone():
    torch.manual_seed(5)
    model = NNFormerLatency(dim=32).eval()
    x, graph, static, _ = latency_batch([20, 3, 9], seed=3)
    packed = model(x, graph, static)
    alone = []
    for b, xb in enumerate(x.split(graph.num_nodes_per_graph.tolist())):
        one = GraphBatch.from_edge_index(graph.edge_index[:, graph.batch[graph.edge_index[0]] == b]
                                         - graph.ptr[b], [xb.shape[0]])
        alone.append(model(xb, one, static[b:b + 1]))
    assert_close(packed, torch.cat(alone), atol=1e-6, rtol=1e-5, name="packed vs alone")


def test_latency_state_dict_keys_are_the_references():
    model = NNFormerLatency(n_layers=2, degree_gating=True)
    prefixes = {k.rsplit(".", 1)[0] for k in model.state_dict()}
    expected = {"embedding", "pre_reduction.norm", "pre_reduction.mlp.0", "pre_reduction.mlp.3", "norm_sf_linear",
                "predictor.0", "predictor.3"}
    for i in range(2):
        expected |= {f"gnn_layers.{i}.{k}" for k in ("norm", "attn.qkv", "attn.proj", "attn.lin_d", "layer_scale")}
        expected |= {f"FFN_layers.{i}.{k}" for k in ("norm", "mlp.fc1", "mlp.gcn", "mlp.fc2", "layer_scale")}
    assert prefixes == expected
    assert model.gnn_layers[0].layer_scale.scale.eq(1e-4).all()
    checkpoint = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    NNFormerLatency(n_layers=2, degree_gating=True).load_state_dict(checkpoint, strict=True)


def test_pre_reduction_drops_before_relu_with_the_references_values():
    """The readout applies its first dropout before the ReLU (so that the ReLU's output is what
    the next Linear keeps): the same seed gives the bits of the reference order."""
    torch.manual_seed(2)
    model = NNFormerLatency(dim=32, dropout=0.3).train()
    lin0, drop0, _, lin3, drop3 = model.pre_reduction.mlp
    y = torch.randn(50, 32)
    torch.manual_seed(7)
    ours = model.pre_reduction.mlp(y)
    torch.manual_seed(7)
    reference = drop3(lin3(drop0(torch.relu(lin0(y)))))
    assert bool((ours != 0).any()) and torch.equal(ours, reference)


def test_pre_reduction_pooled_sums_its_readout():
    """The latency model pools with ``pooled``, which scales the per-graph sums rather than the
    node rows: in float64 the sums of ``readout`` (a graph without nodes sums to zeros)."""
    from nnformer_fast.models.latency import PreReduction
    from nnformer_fast.models.pooling import graph_sum

    torch.manual_seed(0)
    pre = PreReduction(32, 0.0).double()
    y = torch.randn(50, 32, dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(4), torch.tensor([10, 0, 25, 15]))
    assert_close(pre.pooled(y, batch, 4), graph_sum(pre.readout(y), batch, 4), atol=1e-14, rtol=1e-12,
                 name="pooled")


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile does not run here")
def test_graph_sum_compiles_to_the_eager_bits():
    """Traced by Inductor, ``zeros(B, D).index_add_`` became atomic adds, whose order (so the
    bits) changed from run to run at 2 threads; ``graph_sum`` stays one ATen call: compiled,
    the bits of eager mode, and a backward of grad[batch]. Eager mode skips the op: same bits,
    same gradient."""
    from nnformer_fast.models.pooling import graph_sum, graph_sum_op

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        lengths = torch.randint(100, 200, (12,), generator=g)
        lengths[5] = 0  # a graph without nodes sums to zeros
        batch = torch.repeat_interleave(torch.arange(12), lengths)
        nodes = torch.randn(int(lengths.sum()), 48, generator=g, requires_grad=True)
        compiled = torch.compile(lambda x, b, n: graph_sum(x, b, n) * 2, dynamic=True, fullgraph=True)
        out = compiled(nodes, batch, 12)
        assert torch.equal(out, nodes.new_zeros(12, 48).index_add_(0, batch, nodes) * 2)
        assert torch.equal(out[5], torch.zeros(48))
        grad = torch.randn(12, 48, generator=g)
        out.backward(grad)
        assert torch.equal(nodes.grad, (grad * 2)[batch])
        eager_nodes = nodes.detach().requires_grad_()
        eager = graph_sum(eager_nodes, batch, 12)
        assert eager.grad_fn.name() == "IndexAddBackward0"  # ATen's own, not the custom op's
        assert torch.equal(eager * 2, out)
        (eager * 2).backward(grad)
        assert torch.equal(eager_nodes.grad, nodes.grad)
        torch.library.opcheck(graph_sum_op, (nodes.detach().requires_grad_(), batch, 12))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_run_blocks_fused_adds_equal_the_blocks_one_by_one(autocast):
    """The latency model runs each residual add with the next LayerNorm in one add_layer_norm
    (models/blocks.py: run_blocks): outputs and every gradient as the blocks called one by one.
    Under autocast within bf16 rounding: the fused norms hand bf16 rows to the Linear layers
    (the cast they would make), so the input gradients of fc1 and gcn, which read one such row,
    meet in bf16 rather than each cast to fp32 first."""
    from nnformer_fast.models.blocks import run_blocks

    torch.manual_seed(3)
    model = NNFormerLatency(dim=64, n_layers=2).train()
    for name, p in model.named_parameters():  # make the branches count and each norm its own
        if name.endswith("layer_scale.scale") or name.endswith("norm.weight"):
            p.data.uniform_(0.5, 1.5)
        elif name.endswith("norm.bias"):
            p.data.normal_()
    blocks = [b for pair in zip(model.gnn_layers, model.FFN_layers) for b in pair]
    x, graph, static, _ = latency_batch([15, 8, 21], seed=4)
    params = list(model.parameters())
    results = []
    for fused in (True, False):
        torch.manual_seed(9)  # the same dropout seeds
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            h = model.embedding(x)
            if fused:
                out = run_blocks(blocks, h, graph, model.pre_reduction.norm)
            else:
                for block in blocks:
                    h = block(h, graph)
                out = model.pre_reduction.norm(h)
        assert out.dtype == torch.float32
        results.append([out, *torch.autograd.grad(out.square().sum(), params, allow_unused=True)])
    tol = dict(atol=3e-2, rtol=3e-2) if autocast else dict(atol=1e-5, rtol=1e-4)
    names = ["out"] + [n for n, _ in model.named_parameters()]
    for name, ours, ref in zip(names, *results):
        assert (ours is None) == (ref is None), name
        if ours is not None:
            scale = max(1.0, ref.abs().max().item())
            assert_close(ours, ref, atol=tol["atol"] * scale, rtol=tol["rtol"], name=name)


def test_latency_model_autocast_and_backward():
    torch.manual_seed(6)
    model = NNFormerLatency(dim=64)
    x, graph, static, _ = latency_batch([15, 8], seed=4)
    model.train()
    model(x, graph, static).sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, graph, static)
    assert_close(low.float(), model(x, graph, static), atol=5e-2, rtol=5e-2, name="bf16 autocast")


def test_latency_model_bad_input():
    model = NNFormerLatency(dim=32)
    x, graph, static, _ = latency_batch([5, 6])
    with pytest.raises(ValueError, match=r"x must be \(11, 192\)"):
        model(x[:, :10], graph, static)
    with pytest.raises(ValueError, match=r"static must be \(2, 40\)"):
        model(x, graph, static[:1])
    x[7, 3] = float("inf")
    with pytest.raises(ValueError, match="x of graph 1 holds NaN or inf"):
        model(x, graph, static)


def test_bucket_sizes_repeat_and_pad_little():
    sizes = [bucket_size(n) for n in range(1, 5000)]
    assert all(b >= n and b - n < max(1, n / 16) for n, b in zip(range(1, 5000), sizes))
    assert sizes == sorted(sizes) and len({b for b in sizes if 1024 <= b < 2048}) == 16
    assert [bucket_size(b) for b in sizes] == sizes  # a bucket size is its own bucket


def test_latency_shape_buckets_change_nothing(monkeypatch):
    """Padded to a bucket (one padding graph, zero rows): the same outputs and gradients as
    unpadded, dropout included, and the layers really see the bucket size. (Float64 here, so
    bucketing, normally only for bf16 / fp16 on the CPU, is forced.)"""
    monkeypatch.setattr("nnformer_fast.models.buckets.wants_buckets", lambda x: True)
    x, graph, static, _ = latency_batch([12, 1, 30, 8], seed=7)  # 51 nodes -> 52; 4 graphs + padding = 5
    results = []
    for buckets in (False, True):
        torch.manual_seed(8)
        model = NNFormerLatency(dim=32, dropout=0.2).double().train()
        model.shape_buckets = buckets
        seen = []
        model.embedding.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
        model.predictor[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
        out = model(x.double(), graph, static.double())
        out.square().sum().backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
        assert seen == ([51, 4] if not buckets else [52, 5])
    (plain, plain_grads), (padded, padded_grads) = results
    assert padded.shape == (4, 1)
    assert_close(padded, plain, atol=1e-12, rtol=1e-12, name="bucketed output")
    for name, grad in plain_grads.items():
        assert_close(padded_grads[name], grad, atol=1e-12, rtol=1e-10, name=f"bucketed grad of {name}")


def test_bucketed_call_pads_graphs_too(monkeypatch):
    """``bucketed`` (how fit calls a compiled model) pads nodes AND graphs (here 40 graphs + 2,
    one holding the padding nodes, one empty) and returns the unpadded result."""
    monkeypatch.setattr("nnformer_fast.models.buckets.wants_buckets", lambda x: True)
    sizes = [2 + i % 5 if i < 4 else 3 + i % 5 for i in range(40)]  # 196 nodes -> 200
    x, graph, static, _ = latency_batch(sizes, seed=3)
    torch.manual_seed(0)
    model = NNFormerLatency(dim=32, dropout=0.0).double().eval()
    model.shape_buckets = False  # as inside a compiled graph
    seen = []
    model.predictor[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    model.embedding.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    got = bucketed(model)(x.double(), graph, static.double())
    assert seen == [200, 42]
    assert_close(got, model(x.double(), graph, static.double()), atol=1e-12, rtol=1e-12, name="bucketed call")


def test_shape_buckets_only_for_low_precision_cpu_gemms():
    x = torch.randn(3, 4)
    assert not wants_buckets(x) and wants_buckets(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert wants_buckets(x)


# ---------------------------------------------------------------------------- inputs the models refuse
@pytest.mark.parametrize("bad, error, message", [
    (lambda m, x, g, s: (m.to("meta"), x, g, s), ValueError, "x is on cpu but the model on meta"),
    (lambda m, x, g, s: (m, x.to("meta"), g, s), ValueError, "x is on meta but the model on cpu"),
    (lambda m, x, g, s: (m.to("meta"), x.to("meta"), g.to("meta"), s.to("meta")), ValueError,
     "x is a meta tensor, which holds no values"),
    (lambda m, x, g, s: (m, x.double(), g, s), ValueError,
     "x is torch.float64 but the model's weights are torch.float32"),
    (lambda m, x, g, s: (m, x, g, s.half()), ValueError, "static is torch.float16 but the model's weights"),
    (lambda m, x, g, s: (m, x.long(), g, s), ValueError, "x must be a float tensor, got torch.int64"),
    (lambda m, x, g, s: (m, x, None, s), TypeError, "graph must be a GraphBatch, got NoneType"),
    (lambda m, x, g, s: (m, x.tolist(), g, s), TypeError, "x must be a tensor, got list"),
])
def test_latency_model_refuses_mixed_devices_dtypes_and_non_graphs(bad, error, message):
    x, graph, static, _ = latency_batch([5, 6])
    model, x, graph, static = bad(NNFormerLatency(dim=32), x, graph, static)
    with pytest.raises(error, match=f"NNFormerLatency: {message}"):
        model(x, graph, static)


@pytest.mark.parametrize("bad, error, message", [
    (lambda m, s: (m.to("meta"), s), ValueError, "code is on cpu but the model on meta"),
    (lambda m, s: (m, {k: v.to("meta") for k, v in s.items()}), ValueError, "code is on meta but the model on cpu"),
    (lambda m, s: (m, {**s, "code": s["code"].double()}), ValueError, "code is torch.float64 but the model's"),
    (lambda m, s: (m, {**s, "code_depth": s["code_depth"].long()}), ValueError, "code_depth must be a float tensor"),
    (lambda m, s: (m, None), TypeError, "sample must be a dict of tensors, got NoneType"),
    (lambda m, s: (m, {**s, "code_adj": 3}), TypeError, r"sample\['code_adj'\] must be a tensor, got int"),
    (lambda m, s: (m, {**s, "graph": "g"}), TypeError, "graph must be a GraphBatch, got str"),
])
def test_accuracy_model_refuses_mixed_devices_dtypes_and_non_samples(bad, error, message):
    model, sample = bad(NNFormer(depths=[1], dim=32), cell_sample([5, 5]))
    with pytest.raises(error, match=f"NNFormer: {message}"):
        model(sample, None)


def test_models_take_other_dtypes_under_autocast():
    x, graph, static, _ = latency_batch([5, 6])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert NNFormerLatency(dim=32).eval()(x.bfloat16(), graph, static).shape == (2, 1)
