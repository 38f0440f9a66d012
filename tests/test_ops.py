"""One harness for every backend of the public ops, against the dense float64 oracle.

Parametrised over the registered backends that can run here (``torch`` always; ``native``
when the extension is built; ``triton`` under TRITON_INTERPRET=1 on the CPU; the CUDA kernels
as ``cuda_emulated`` on the CPU where nvcc is found, tests/cuda_emulator).
"""
import contextlib
import math
import os

import pytest
import torch
from cuda_emulator import NAME as CUDA_EMULATED
from cuda_emulator import ensure_registered

from nnformer_fast import GraphBatch
from nnformer_fast.dense import dense_bigin, dense_dag_attention
from nnformer_fast.ops import ACTIVATIONS, bigin, dag_attention, dag_attention_qkv, dropout
from nnformer_fast.ops import reference
from nnformer_fast.ops.backends import ENV_VAR, _REGISTRY
from nnformer_fast.testing import (FAMILIES, TOLERANCES, assert_close, latency_inputs, low_precision_error_ok,
                                   random_batch, random_cells)

ensure_registered()  # the CUDA kernels on the CPU, where nvcc is found (tests/cuda_emulator)
BACKENDS = [name for name, b in _REGISTRY.items() if b.load_error is None]
LOW_PRECISION = (torch.bfloat16, torch.float16)
# The Triton interpreter is slow: run it on the small families only.
SLOW_ON_INTERPRETER = {"one_big"}
#: Backends that run one kernel program or warp at a time on the CPU (the Triton interpreter, the
#: CUDA emulator): too slow for the largest batches.
EMULATED = ({"triton"} if not torch.cuda.is_available() else set()) | {CUDA_EMULATED}


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
    q, k, v = (t.requires_grad_() for t in _attention_inputs(graph, 8, 59, dtype))
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


@pytest.mark.parametrize("family", ["diamond", "global_tokens", "odd_sizes"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dag_attention_qkv_is_dag_attention_on_the_thirds(backend, family, dtype):
    """The packed op reads q, k, v in place (native, CPU) or unpacks them: bit for bit the same
    outputs and gradients as dag_attention on qkv.unbind(1), dropout included."""
    graph = FAMILIES[family]()
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(graph.num_nodes, 3, 8, 24, generator=gen).to(dtype)
    _skip_unsupported(backend, "dag_attention", *qkv.unbind(1))
    grad_out = torch.randn(graph.num_nodes, 8, 24, generator=gen).to(dtype)
    results = []
    for packed in (True, False):
        leaf = qkv.clone().requires_grad_()
        out = (dag_attention_qkv(leaf, graph, dropout_p=0.2, seed=9) if packed
               else dag_attention(*leaf.unbind(1), graph, dropout_p=0.2, seed=9))
        out.backward(grad_out)
        results.append((out, leaf.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_dag_attention_qkv_rejects_unpacked_input():
    graph = FAMILIES["diamond"]()
    with pytest.raises(ValueError, match=r"\(N, 3, H, Dh\)"):
        dag_attention_qkv(torch.randn(graph.num_nodes, 4, 8), graph)
    with pytest.raises(ValueError, match=r"\(N, 3, H, Dh\)"):
        dag_attention_qkv(torch.randn(graph.num_nodes, 2, 4, 8), graph)


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


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_bigin_low_precision(backend, dtype, act):
    graph = FAMILIES["odd_sizes"]()
    gen = torch.Generator().manual_seed(6)
    h, g, grad_out = (torch.randn(graph.num_nodes, 38, generator=gen, dtype=torch.float64) for _ in range(3))
    _skip_unsupported(backend, "bigin", h.to(dtype), g.to(dtype))
    hl, gl = (t.to(dtype).requires_grad_() for t in (h, g))
    out = bigin(hl, gl, graph, act=act)
    assert out.dtype == dtype
    out.backward(grad_out.to(dtype))
    # the exact result of the same (rounded) inputs: relu-like kinks make a gradient
    # ill-conditioned where rounding the inputs moves the pre-activation across 0
    h64, g64 = (t.detach().double()[None].requires_grad_() for t in (hl, gl))
    exact = dense_bigin(h64, g64, _dense_adj(graph), act)[0]
    exact.backward(grad_out)
    hp, gp = (t.detach().clone()[None].requires_grad_() for t in (hl, gl))
    plain = dense_bigin(hp, gp, _dense_adj(graph).to(dtype), act)[0]
    plain.backward(grad_out.to(dtype))
    low_precision_error_ok(out, plain, exact)
    low_precision_error_ok(hl.grad, hp.grad[0], h64.grad[0])
    low_precision_error_ok(gl.grad, gp.grad[0], g64.grad[0])


def _bigin_inputs(graph, width, dtype, seed):
    """h, g (N, width) in dtype and float32 biases (width,), all leaves."""
    gen = torch.Generator().manual_seed(seed)
    h, g = (torch.randn(graph.num_nodes, width, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
            for _ in range(2))
    bias_h, bias_g = (torch.randn(width, generator=gen).requires_grad_() for _ in range(2))
    return h, g, bias_h, bias_g


def _dense_bigin_biased(h, g, bias_h, bias_g, graph, act, dtype=torch.float64):
    """The dense oracle on h + bias_h and g + bias_g in ``dtype``; returns (out, leaves)."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (h, g, bias_h, bias_g)]
    hb, gb = leaves[0] + leaves[2], leaves[1] + leaves[3]
    return dense_bigin(hb[None], gb[None], _dense_adj(graph).to(dtype), act)[0], leaves


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_bigin_biases_match_dense_oracle(backend, family, act):
    if backend == "triton" and family in SLOW_ON_INTERPRETER:
        pytest.skip("too slow on the Triton interpreter")
    graph = FAMILIES[family]()
    h, g, bias_h, bias_g = _bigin_inputs(graph, 22, torch.float32, seed=2)
    _skip_unsupported(backend, "bigin", h, g)
    out = bigin(h, g, graph, act=act, bias_h=bias_h, bias_g=bias_g)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    exact, leaves = _dense_bigin_biased(h, g, bias_h, bias_g, graph, act)
    exact.backward(grad_out.double())
    atol, rtol = TOLERANCES[torch.float32]
    assert_close(out, exact, atol=atol, rtol=rtol, name=f"{backend} biased bigin {act}")
    for name, ours, ref in zip(("dh", "dg", "dbias_h", "dbias_g"), (h, g, bias_h, bias_g), leaves):
        # the bias gradients sum over every node: scale the tolerance with the node count
        scale = graph.num_nodes if name.startswith("dbias") else 1
        assert_close(ours.grad, ref.grad, atol=atol * scale, rtol=rtol, name=f"{backend} {name}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_bigin_float32_biases_on_low_precision_inputs(backend, dtype):
    """The autocast case: fc1 / gcn outputs in bf16 / fp16, their biases float32 parameters.
    (gelu: a relu kink turns the few pre-activations that round across 0 into gradient errors
    of the size of the output gradient, for the kernel and for plain PyTorch alike.)"""
    graph = FAMILIES["odd_sizes"]()
    h, g, bias_h, bias_g = _bigin_inputs(graph, 38, dtype, seed=7)
    _skip_unsupported(backend, "bigin", h, g)
    out = bigin(h, g, graph, act="gelu", bias_h=bias_h, bias_g=bias_g)
    assert out.dtype == dtype
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    out.backward(grad_out.to(dtype))
    assert bias_h.grad.dtype == bias_g.grad.dtype == torch.float32
    exact, leaves = _dense_bigin_biased(h, g, bias_h, bias_g, graph, "gelu")
    exact.backward(grad_out)
    plain, plain_leaves = _dense_bigin_biased(h, g, bias_h, bias_g, graph, "gelu", dtype=dtype)
    plain.backward(grad_out.to(dtype))
    low_precision_error_ok(out, plain, exact)
    for ours, theirs, ref in zip((h, g, bias_h, bias_g), plain_leaves, leaves):
        low_precision_error_ok(ours.grad, theirs.grad, ref.grad)


def test_gradcheck_float64(backend):
    if backend in EMULATED:
        pytest.skip("hundreds of emulated launches; the gradients are compared with the fp64 oracle above")
    graph = random_batch([3, 5, 1], seed=7, global_token=False)
    q, k, v = (t.requires_grad_() for t in _attention_inputs(graph, 4, 3, torch.float64))
    _skip_unsupported(backend, "dag_attention", q, k, v)
    for p in (0.0, 0.3):
        assert torch.autograd.gradcheck(lambda a, b, c: dag_attention(a, b, c, graph, dropout_p=p, seed=11),
                                        (q, k, v))
        qkv = torch.stack([q, k, v], 1).detach().requires_grad_()
        assert torch.autograd.gradcheck(lambda t: dag_attention_qkv(t, graph, dropout_p=p, seed=11), (qkv,))
    gen = torch.Generator().manual_seed(8)
    h, g = (torch.randn(graph.num_nodes, 6, generator=gen, dtype=torch.float64, requires_grad=True)
            for _ in range(2))
    bias_h, bias_g = (torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    for act in ACTIVATIONS:  # random inputs stay off relu's kink with probability 1
        assert torch.autograd.gradcheck(lambda a, b: bigin(a, b, graph, act=act), (h, g))
        assert torch.autograd.gradcheck(lambda a, b, c, d: bigin(a, b, graph, act=act, bias_h=c, bias_g=d),
                                        (h, g, bias_h, bias_g))
    assert torch.autograd.gradcheck(lambda a, b, d: bigin(a, b, graph, bias_g=d), (h, g, bias_g))


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


# ---------------------------------------------------------------------------------------
# Kernel backends against the reference: properties the torch backend has by construction.
KERNELS = [b for b in BACKENDS if b != "torch"]


@pytest.fixture(params=KERNELS or [pytest.param("none", marks=pytest.mark.skip("no kernel backend loaded"))])
def kernel(request, monkeypatch):
    monkeypatch.setenv(ENV_VAR, request.param)
    return request.param


def _attention_and_grads(q, k, v, graph, grad_out, **kw):
    out = dag_attention(q, k, v, graph, **kw)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


@contextlib.contextmanager
def _forced(backend):
    """Run the public ops on ``backend``; restores the previous choice afterwards."""
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = backend
    try:
        yield
    finally:
        if previous is None:
            del os.environ[ENV_VAR]
        else:
            os.environ[ENV_VAR] = previous


def _compare_attention(kernel, graph, heads, head_dim, dtype, atol, rtol, **kw):
    q, k, v = (t.requires_grad_() for t in _attention_inputs(graph, heads, head_dim, dtype, seed=3))
    grad_out = torch.randn_like(q)
    with _forced(kernel):
        ours = _attention_and_grads(q, k, v, graph, grad_out, **kw)
    with _forced("torch"):
        ref = _attention_and_grads(q, k, v, graph, grad_out, **kw)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref):
        assert_close(a, b, atol=atol, rtol=rtol, name=f"{kernel} {name}")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kernel_dropout_matches_reference(kernel, p):
    graph = FAMILIES["odd_sizes"]()
    for seed in (12345, -7, 2**40 + 3):  # negative and > 64-bit-hash-width seeds wrap identically
        _compare_attention(kernel, graph, 8, 16, torch.float64, 1e-10, 1e-9, dropout_p=p, seed=seed)


def test_kernel_strided_qkv_from_one_projection(kernel):
    """q, k, v as views of one (N, 3, H, Dh) projection, the way the models call the op."""
    graph = FAMILIES["global_tokens"]()
    qkv = torch.randn(graph.num_nodes, 3, 4, 8, dtype=torch.float64)
    q, k, v = qkv.unbind(1)
    assert not q.is_contiguous()
    ours = dag_attention(q, k, v, graph)
    expected = dense_dag_attention(q[None], k[None], v[None], _dense_mask(graph))[0]
    assert_close(ours, expected, atol=1e-12, rtol=1e-10, name="strided q, k, v")


def test_models_train_the_same_on_every_kernel_backend(kernel):
    """A training step of both models (dropout on) on ``kernel`` against the torch backend: loss
    and every parameter's gradient, with the kernels inside the real models (packed qkv, folded
    biases, dropout seeds drawn by the models)."""
    from nnformer_fast import NNFormer, NNFormerLatency

    torch.manual_seed(0)
    for model, inputs in ((NNFormerLatency(dim=32, n_head=4, n_layers=2, dropout=0.1), latency_inputs([9, 14, 5], 11)),
                          (NNFormer(depths=[2], dim=32, n_head=4), (random_cells(3, 6),))):
        model.train()
        params = list(model.parameters())
        results = {}
        for backend in (kernel, "torch"):
            with _forced(backend):
                torch.manual_seed(1)  # the same dropout seeds on both
                loss = model(*inputs).square().sum()
                results[backend] = [loss, *torch.autograd.grad(loss, params, allow_unused=True)]
        for i, (ours, ref) in enumerate(zip(results[kernel], results["torch"])):
            assert (ours is None) == (ref is None), i
            if ours is not None:
                assert_close(ours, ref, atol=1e-4, rtol=1e-4, name=f"{type(model).__name__} {kernel} output {i}")


def test_kernel_deterministic(kernel):
    graph = random_batch([30, 41, 7], avg_degree=3.0, seed=7, max_span=8, global_token=True)
    q, k, v = (t.requires_grad_() for t in _attention_inputs(graph, 8, 40, torch.float32))
    grad_out = torch.randn_like(q)
    runs = [_attention_and_grads(q, k, v, graph, grad_out, dropout_p=0.1, seed=4) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    h, g = (torch.randn(graph.num_nodes, 64, requires_grad=True) for _ in range(2))
    runs = [torch.autograd.grad(bigin(h, g, graph, act="gelu"), (h, g), torch.ones(graph.num_nodes, 64))
            for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("sizes", [[20011], [1 + (i * 7) % 5 for i in range(4096)]], ids=["20k_nodes", "4096_tiny"])
def test_kernel_extreme_sizes(kernel, sizes):
    if kernel in EMULATED:
        pytest.skip("too slow emulated")
    graph = random_batch(sizes, avg_degree=2.5, seed=5, max_span=10)
    _compare_attention(kernel, graph, 4, 16, torch.float32, 5e-5, 5e-5, dropout_p=0.2, seed=9)
    h, g = (torch.randn(graph.num_nodes, 16, requires_grad=True) for _ in range(2))
    dy = torch.randn(graph.num_nodes, 16)
    results = {}
    for backend in (kernel, "torch"):
        with _forced(backend):
            y = bigin(h, g, graph)
            results[backend] = (y, *torch.autograd.grad(y, (h, g), dy))
    ours, ref = results[kernel], results["torch"]
    for a, b in zip(ours, ref):
        assert_close(a, b, atol=5e-5, rtol=5e-5, name=f"{kernel} bigin")



# ---------------------------------------------------------------------------------------
# Counter-based elementwise dropout: every backend against the torch reference.
DROPOUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dropout_input(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", DROPOUT_DTYPES, ids=str)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_matches_reference_bitwise(backend, p, dtype):
    x = _dropout_input((37, 3, 29), dtype)
    _skip_unsupported(backend, "dropout", x)
    for seed in (0, 12345, -7, 2**40 + 3):  # negative and > 2**32 seeds wrap like the reference
        ours = dropout(x, p, seed=seed)
        expected = reference.dropout(x, p, seed=seed)
        assert ours.dtype == dtype and ours.shape == x.shape
        assert torch.equal(ours, expected), f"{backend} p={p} seed={seed}"
        # the mask is dropout_keep_mask on the flat index, the scale 1 / (1 - p)
        keep = reference.dropout_keep_mask(seed, torch.arange(x.numel()), torch.tensor(0), 1, p).view(x.shape)
        assert torch.equal(ours != 0, keep & (x != 0))
    xt = x.transpose(0, 2)  # non-contiguous: the flat index is the row-major index of xt
    assert torch.equal(dropout(xt, p, seed=5), reference.dropout(xt, p, seed=5))


def test_dropout_keeps_about_1_minus_p(backend):
    x = torch.ones(1 << 20)
    _skip_unsupported(backend, "dropout", x)
    for p in (0.1, 0.5, 0.9):
        y = dropout(x, p, seed=3)
        kept = (y != 0).double().mean().item()
        assert abs(kept - (1 - p)) < 3e-3, (p, kept)
        assert torch.equal(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))


@pytest.mark.parametrize("dtype", DROPOUT_DTYPES, ids=str)
def test_dropout_gradient_is_mask_times_grad(backend, dtype):
    x = _dropout_input((64, 33), dtype).requires_grad_()
    _skip_unsupported(backend, "dropout", x)
    dy = _dropout_input((64, 33), dtype, seed=1)
    y = dropout(x, 0.3, seed=21)
    (dx,) = torch.autograd.grad(y, x, dy)
    keep = reference.dropout_keep_mask(21, torch.arange(x.numel()), torch.tensor(0), 1, 0.3).view(x.shape)
    compute = torch.promote_types(dtype, torch.float32)
    expected = torch.where(keep, dy.to(compute) * (1 / 0.7), 0).to(dtype)
    assert torch.equal(dx, expected)
    if dtype == torch.float64:
        xs = _dropout_input((5, 7), torch.float64).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: dropout(t, 0.4, seed=5), (xs,))


def test_dropout_seeding_and_p_zero(backend):
    x = _dropout_input((100, 10), torch.float32)
    _skip_unsupported(backend, "dropout", x)
    assert torch.equal(dropout(x, 0.3, seed=4), dropout(x, 0.3, seed=4))
    assert not torch.equal(dropout(x, 0.3, seed=4), dropout(x, 0.3, seed=5))
    assert dropout(x, 0.0) is x
    torch.manual_seed(0)
    a = dropout(x, 0.3)
    torch.manual_seed(0)
    assert torch.equal(a, dropout(x, 0.3))  # the default seed comes from torch's generator


def test_dropout_bad_inputs_raise():
    x = torch.randn(4, 4)
    for p in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p must lie in"):
            dropout(x, p)
    with pytest.raises(TypeError, match="float16/bfloat16"):
        dropout(x.long(), 0.1)
    from nnformer_fast.models.blocks import HashDropout
    with pytest.raises(ValueError, match="p must lie in"):
        HashDropout(1.0)


def test_hash_dropout_module(backend):
    from nnformer_fast.models.blocks import HashDropout
    x = _dropout_input((50, 8), torch.float32)
    _skip_unsupported(backend, "dropout", x)
    m = HashDropout(0.25)
    assert list(m.parameters()) == [] and m.state_dict() == {}
    assert m.eval()(x) is x and HashDropout(0.0).train()(x) is x
    m.train()
    torch.manual_seed(7)
    a = m(x)
    torch.manual_seed(7)
    b = m(x)
    assert torch.equal(a, b) and not torch.equal(a, m(x))
    assert 0 < (a == 0).sum() < x.numel()


def test_dropout_select_falls_through_for_unimplemented_ops():
    """A backend without "dropout" says so, and automatic selection skips it."""
    from nnformer_fast.ops.backends import Backend, select
    x = torch.randn(3)
    assert Backend("partial", ops={"bigin": None}).reasons("dropout", x) == ["does not implement dropout"]
    assert select("dropout", x).name in ("native", "torch")

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    given = None

if given is not None:
    @settings(max_examples=25, deadline=None)
    @given(sizes=st.lists(st.integers(1, 24), min_size=1, max_size=6), degree=st.floats(0.5, 4.0),
           span=st.one_of(st.none(), st.integers(1, 6)), glob=st.booleans(), heads=st.sampled_from([4, 8, 12]),
           dh=st.integers(1, 70), p=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 2**31 - 1),
           act=st.sampled_from(ACTIVATIONS))
    def test_kernel_random_batches(sizes, degree, span, glob, heads, dh, p, seed, act):
        """Random DAG batches (sizes, degrees, global tokens, head counts) vs the reference."""
        graph = random_batch(sizes, avg_degree=degree, seed=seed % 1000, max_span=span, global_token=glob)
        q, k, v = (t.requires_grad_() for t in _attention_inputs(graph, heads, dh, torch.float64, seed=seed % 997))
        grad_out = torch.randn_like(q)
        h, g = (torch.randn(graph.num_nodes, 2 * (1 + dh % 9), dtype=torch.float64, requires_grad=True)
                for _ in range(2))
        dy = torch.randn_like(h)
        for name in KERNELS:
            if name in EMULATED:
                continue
            results = {}
            for backend in (name, "torch"):
                with _forced(backend):
                    y = bigin(h, g, graph, act=act)
                    results[backend] = (*_attention_and_grads(q, k, v, graph, grad_out, dropout_p=p, seed=seed),
                                        y, *torch.autograd.grad(y, (h, g), dy))
            for i, (a, b) in enumerate(zip(results[name], results["torch"])):
                assert_close(a, b, atol=1e-10, rtol=1e-9, name=f"{name} output {i}")


def test_padding_nodes_change_nothing(backend):
    """Rows added by ``GraphBatch.pad_nodes`` (shape bucketing) see nothing and are seen by
    nothing: the real rows' outputs, gradients and dropout masks are those of the unpadded
    batch, the padding rows of dag_attention are zero."""
    graph = random_batch([6, 9, 4], avg_degree=2.0, seed=11, global_token=True)
    n, pad = graph.num_nodes, 5
    padded = graph.pad_nodes(pad)
    q, k, v = (torch.cat([t, torch.randn(pad, 8, 16, dtype=torch.float64)]).requires_grad_()
               for t in _attention_inputs(graph, 8, 16, torch.float64, seed=5))
    h, g = (torch.randn(n + pad, 32, dtype=torch.float64, requires_grad=True) for _ in range(2))
    _skip_unsupported(backend, "dag_attention", q, k, v)
    grad_out, grad_y = torch.randn_like(q), torch.randn_like(h)
    full = _attention_and_grads(q, k, v, padded, grad_out, dropout_p=0.3, seed=9)
    real = _attention_and_grads(*(t[:n].detach().requires_grad_() for t in (q, k, v)), graph, grad_out[:n],
                                dropout_p=0.3, seed=9)
    for name, a, b in zip(("out", "dq", "dk", "dv"), full, real):
        assert_close(a[:n], b, atol=1e-12, rtol=1e-10, name=f"{backend} padded {name}")
        assert a[n:].eq(0).all(), f"{backend}: padding rows of {name} are not zero"
    y_full = torch.autograd.grad(bigin(h, g, padded), (h, g), grad_y)
    y_real = torch.autograd.grad(bigin(h[:n], g[:n], graph), (h, g), grad_y[:n])
    for name, a, b in zip(("dh", "dg"), y_full, y_real):
        assert_close(a[:n], b[:n], atol=1e-12, rtol=1e-10, name=f"{backend} padded bigin {name}")


# ---------------------------------------------------------------------- argument types
@pytest.mark.parametrize("call, error, message", [
    (lambda q, h, g: dag_attention(q, q, q, None), TypeError, "dag_attention: graph must be a GraphBatch, got NoneType"),
    (lambda q, h, g: dag_attention_qkv(torch.stack([q, q, q], 1), "g"), TypeError,
     "dag_attention: graph must be a GraphBatch, got str"),
    (lambda q, h, g: bigin(h, h, None), TypeError, "bigin: graph must be a GraphBatch, got NoneType"),
    (lambda q, h, g: dag_attention(q, q, q, g, dropout_p="0.1"), TypeError,
     "dag_attention: dropout_p must be a float, got str '0.1'"),
    (lambda q, h, g: dag_attention(q, q, q, g, dropout_p=None), TypeError, "dropout_p must be a float, got NoneType"),
    (lambda q, h, g: dag_attention(q, q, q, g, dropout_p=float("nan")), ValueError, r"must lie in \[0, 1\), got nan"),
    (lambda q, h, g: dag_attention(q, q, q, g, scale="1"), TypeError, "scale must be None or a float, got str '1'"),
    (lambda q, h, g: dag_attention(q, q, q, g, scale=float("inf")), ValueError, "scale must be finite, got inf"),
    (lambda q, h, g: dropout(h, "0.1"), TypeError, "dropout: p must be a float, got str '0.1'"),
])
def test_bad_argument_types_raise_clear_errors(backend, call, error, message):
    graph = FAMILIES["diamond"]()
    q = torch.randn(graph.num_nodes, 4, 8)
    h = torch.randn(graph.num_nodes, 6)
    with pytest.raises(error, match=message):
        call(q, h, graph)
