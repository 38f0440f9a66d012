"""One harness for every backend of the public ops, against the dense float64 oracle.

Parametrised over the registered backends that can run here (``torch`` always; ``native``
when the extension is built; ``triton`` under TRITON_INTERPRET=1 on the CPU).
"""
import math

import pytest
import torch

from nnformer_fast import GraphBatch
from nnformer_fast.dense import dense_bigin, dense_dag_attention
from nnformer_fast.ops import ACTIVATIONS, bigin, dag_attention
from nnformer_fast.ops.backends import ENV_VAR, _REGISTRY
from nnformer_fast.testing import FAMILIES, TOLERANCES, assert_close, low_precision_error_ok, random_batch

BACKENDS = [name for name, b in _REGISTRY.items() if b.load_error is None]
LOW_PRECISION = (torch.bfloat16, torch.float16)
# The Triton interpreter is slow: run it on the small families only.
SLOW_ON_INTERPRETER = {"one_big"}


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv(ENV_VAR, request.param)
    return request.param


def _skip_unsupported(backend, op, *tensors):
    reasons = _REGISTRY[backend].reasons(op, *tensors)
    if reasons:
        pytest.skip(f"{backend} cannot run {op}: {'; '.join(reasons)}")


def _dense_mask(graph: GraphBatch) -> torch.Tensor:
    """(1, N, N) mask adjacency of the whole batch (block diagonal: graphs never mix)."""
    n = graph.num_nodes
    edges = graph.mask_edge_index if graph.mask_edge_index is not None else graph.edge_index
    m = torch.zeros(1, n, n, dtype=torch.float64)
    m[0, edges[0], edges[1]] = 1
    return m


def _dense_adj(graph: GraphBatch) -> torch.Tensor:
    n = graph.num_nodes
    a = torch.zeros(1, n, n, dtype=torch.float64)
    a[0, graph.edge_index[0], graph.edge_index[1]] = 1
    return a


def _attention_inputs(graph, heads, head_dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(graph.num_nodes, heads, head_dim, generator=g, dtype=torch.float64).to(dtype)
            for _ in range(3)]


def _oracle_attention(q, k, v, graph):
    q, k, v = (t.detach().double()[None].requires_grad_() for t in (q, k, v))
    return dense_dag_attention(q, k, v, _dense_mask(graph))[0], (q, k, v)


def _check_backend_vs_oracle(backend, family, dtype):
    graph = FAMILIES[family]()
    q, k, v = (t.requires_grad_() for t in _attention_inputs(graph, 8, 24, dtype))
    _skip_unsupported(backend, "dag_attention", q, k, v)
    out = dag_attention(q, k, v, graph)
    assert out.dtype == dtype and out.shape == q.shape
    grad_out = torch.randn_like(out, dtype=torch.float64).to(dtype)
    out.backward(grad_out)
    exact, leaves = _oracle_attention(q, k, v, graph)
    exact.backward(grad_out.double())
    if dtype in LOW_PRECISION:
        plain, plain_leaves = (lambda t: (dense_dag_attention(*[x[None] for x in t], _dense_mask(graph).to(dtype))[0], t))(
            [x.detach().clone().requires_grad_() for x in (q, k, v)])
        plain.backward(grad_out)
        low_precision_error_ok(out, plain, exact)
        for ours, theirs, ref in zip((q, k, v), plain_leaves, leaves):
            low_precision_error_ok(ours.grad, theirs.grad, ref.grad[0])
    else:
        atol, rtol = TOLERANCES[dtype]
        assert_close(out, exact, atol=atol, rtol=rtol, name=f"{backend} out")
        for name, ours, ref in zip("qkv", (q, k, v), leaves):
            assert_close(ours.grad, ref.grad[0], atol=atol * 10, rtol=rtol * 10, name=f"{backend} d{name}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_dag_attention_matches_dense_oracle(backend, family, dtype):
    if backend == "triton" and family in SLOW_ON_INTERPRETER:
        pytest.skip("too slow on the Triton interpreter")
    _check_backend_vs_oracle(backend, family, dtype)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_bigin_matches_dense_oracle(backend, family, act):
    if backend == "triton" and family in SLOW_ON_INTERPRETER:
        pytest.skip("too slow on the Triton interpreter")
    graph = FAMILIES[family]()
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(graph.num_nodes, 22, generator=gen, requires_grad=True)
    g = torch.randn(graph.num_nodes, 22, generator=gen, requires_grad=True)
    _skip_unsupported(backend, "bigin", h, g)
    out = bigin(h, g, graph, act=act)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    h64, g64 = (t.detach().double()[None].requires_grad_() for t in (h, g))
    exact = dense_bigin(h64, g64, _dense_adj(graph), act)[0]
    exact.backward(grad_out.double())
    atol, rtol = TOLERANCES[torch.float32]
    assert_close(out, exact, atol=atol, rtol=rtol, name=f"{backend} bigin {act}")
    assert_close(h.grad, h64.grad[0], atol=atol, rtol=rtol, name="dh")
    assert_close(g.grad, g64.grad[0], atol=atol, rtol=rtol, name="dg")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_bigin_low_precision(backend, dtype):
    graph = FAMILIES["odd_sizes"]()
    h, g = (torch.randn(graph.num_nodes, 16, dtype=torch.float64) for _ in range(2))
    _skip_unsupported(backend, "bigin", h.to(dtype), g.to(dtype))
    out = bigin(h.to(dtype), g.to(dtype), graph)
    assert out.dtype == dtype
    exact = dense_bigin(h[None], g[None], _dense_adj(graph), "relu")[0]
    plain = dense_bigin(h.to(dtype)[None], g.to(dtype)[None], _dense_adj(graph).to(dtype), "relu")[0]
    low_precision_error_ok(out, plain, exact)


def test_gradcheck_float64(backend):
    graph = random_batch([3, 5, 1], seed=7, global_token=False)
    q, k, v = (t.requires_grad_() for t in _attention_inputs(graph, 4, 3, torch.float64))
    _skip_unsupported(backend, "dag_attention", q, k, v)
    assert torch.autograd.gradcheck(lambda a, b, c: dag_attention(a, b, c, graph), (q, k, v))
    h = torch.randn(graph.num_nodes, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(graph.num_nodes, 6, dtype=torch.float64, requires_grad=True)
    # gelu is smooth: finite differences are exact enough everywhere
    assert torch.autograd.gradcheck(lambda a, b: bigin(a, b, graph, act="gelu"), (h, g))


def test_dropout_is_seeded_and_drops_about_p(backend):
    graph = random_batch([40, 60], seed=3)
    q, k, v = _attention_inputs(graph, 4, 8, torch.float32)
    _skip_unsupported(backend, "dag_attention", q, k, v)
    a = dag_attention(q, k, v, graph, dropout_p=0.3, seed=11)
    b = dag_attention(q, k, v, graph, dropout_p=0.3, seed=11)
    c = dag_attention(q, k, v, graph, dropout_p=0.3, seed=12)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # v = 1 everywhere: each output is the sum of kept weights / (1 - p); its mean is ~1
    ones = torch.ones_like(v)
    kept = dag_attention(q, k, ones, graph, dropout_p=0.3, seed=5)
    assert abs(kept.mean().item() - 1.0) < 0.05


def test_dropout_masks_agree_across_backends():
    graph = random_batch([30, 7], seed=8, global_token=True)
    q, k, v = _attention_inputs(graph, 8, 16, torch.float32)
    outs = {}
    for name in BACKENDS:
        if _REGISTRY[name].reasons("dag_attention", q, k, v):
            continue
        outs[name] = _REGISTRY[name].ops["dag_attention"](q, k, v, graph, dropout_p=0.25, scale=None, seed=99)
    for name, out in outs.items():
        assert_close(out, outs["torch"], atol=1e-5, rtol=1e-5, name=f"{name} vs torch with dropout")


def test_custom_scale(backend):
    graph = FAMILIES["diamond"]()
    q, k, v = _attention_inputs(graph, 4, 16, torch.float64)
    _skip_unsupported(backend, "dag_attention", q, k, v)
    out = dag_attention(q, k, v, graph, scale=0.3)
    # scaling q by 0.3 * sqrt(Dh) with the default scale is the same computation
    same = dag_attention(q * 0.3 * math.sqrt(16), k, v, graph)
    assert_close(out, same, atol=1e-10, rtol=1e-9, name="scale")


def test_bad_inputs_raise():
    graph = FAMILIES["chain"]()
    n = graph.num_nodes
    q = torch.randn(n, 4, 8)
    with pytest.raises(ValueError, match="share one"):
        dag_attention(q, q[:, :, :4], q, graph)
    with pytest.raises(ValueError, match="multiple of 4"):
        dag_attention(q[:, :3], q[:, :3], q[:, :3], graph)
    with pytest.raises(ValueError, match="the graph has 7 nodes"):
        dag_attention(q[:5], q[:5], q[:5], graph)
    with pytest.raises(TypeError, match="dtypes differ"):
        dag_attention(q, q.double(), q, graph)
    with pytest.raises(TypeError, match="float16/bfloat16"):
        dag_attention(q.long(), q.long(), q.long(), graph)
    with pytest.raises(ValueError, match="dropout_p"):
        dag_attention(q, q, q, graph, dropout_p=1.0)
    meta = q.to("meta")
    with pytest.raises(ValueError, match="graph.to"):
        dag_attention(meta, meta, meta, graph)
    h = torch.randn(n, 6)
    with pytest.raises(ValueError, match="even"):
        bigin(h[:, :5], h[:, :5], graph)
    with pytest.raises(ValueError, match="unknown activation"):
        bigin(h, h, graph, act="swish")
    with pytest.raises(ValueError, match="share one"):
        bigin(h, h[:4], graph)


def test_forcing_unknown_backend_lists_known(monkeypatch):
    graph = FAMILIES["chain"]()
    q = torch.randn(graph.num_nodes, 4, 8)
    monkeypatch.setenv(ENV_VAR, "cudnn")
    with pytest.raises(ValueError, match="unknown backend"):
        dag_attention(q, q, q, graph)
