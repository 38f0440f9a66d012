"""The native backend (nnformer_fast._C): C++ ops against the pure-PyTorch reference.

Skipped as a whole when the extension is not built (or built against another torch).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import nnformer_fast
from nnformer_fast import GraphBatch, testing
from nnformer_fast.ops import reference

INFO = nnformer_fast.build_info()
if not (INFO["native"] and INFO["torch_match"]):
    pytest.skip(f"native extension not usable: {INFO['error'] or INFO}", allow_module_level=True)

from nnformer_fast import _C  # noqa: E402
from nnformer_fast.ops import native  # noqa: E402

ops = torch.ops.nnformer_fast
_GRAPHS: dict = {}


def graph_of(name: str) -> GraphBatch:
    if name not in _GRAPHS:
        _GRAPHS[name] = testing.FAMILIES[name]()
    return _GRAPHS[name]


def qkv(n: int, heads: int, dh: int, dtype=torch.float32, seed: int = 0, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, heads, dh, generator=g).to(dtype).requires_grad_(requires_grad) for _ in range(3)]


def hg(n: int, m: int, dtype=torch.float32, seed: int = 0, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, m, generator=g).to(dtype).requires_grad_(requires_grad) for _ in range(2)]


def attn_args(q, k, v, graph, scale=None, p=0.0, seed=0):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return (q, k, v, graph.rel_rowptr, graph.rel_col, graph.rel_tperm, scale, p, seed)


def bigin_csr(graph):
    return (graph.adj_rowptr, graph.adj_col, graph.adjt_rowptr, graph.adjt_col)


# ---------------------------------------------------------------------- opcheck
@pytest.mark.parametrize("family", ["diamond", "global_tokens"])
def test_opcheck(family):
    graph = graph_of(family)
    n = graph.num_nodes
    q, k, v = qkv(n, 4, 8, requires_grad=True)
    torch.library.opcheck(ops.dag_attention_fwd, attn_args(q, k, v, graph))
    torch.library.opcheck(ops.dag_attention_fwd, attn_args(q, k, v, graph, p=0.25, seed=3))
    qd, kd, vd = (t.detach() for t in (q, k, v))
    out, lse, w = ops.dag_attention_fwd(*attn_args(qd, kd, vd, graph, p=0.25, seed=3))
    dout = torch.randn_like(out)
    torch.library.opcheck(ops.dag_attention_bwd, (dout, qd, kd, vd, out, lse, w, graph.rel_rowptr, graph.rel_col,
                                                  graph.rel_tperm, 0.3, 0.25, 3))
    packed = torch.stack([qd, kd, vd], 1).requires_grad_()
    rel = (graph.rel_rowptr, graph.rel_col, graph.rel_tperm)
    torch.library.opcheck(ops.dag_attention_qkv_fwd, (packed, *rel, 0.3, 0.0, 0))
    torch.library.opcheck(ops.dag_attention_qkv_fwd, (packed, *rel, 0.3, 0.25, 3))
    out, lse, w = ops.dag_attention_qkv_fwd(packed.detach(), *rel, 0.3, 0.25, 3)
    torch.library.opcheck(ops.dag_attention_qkv_bwd, (dout, packed.detach(), out, lse, w, *rel, 0.3, 0.25, 3))
    h, g = hg(n, 6, requires_grad=True)
    for act in reference.ACTIVATIONS:
        torch.library.opcheck(ops.bigin_fwd, (h, g, *bigin_csr(graph), act))
    torch.library.opcheck(ops.bigin_bwd, (torch.randn(n, 6), h.detach(), g.detach(), *bigin_csr(graph), "gelu"))
    bias_h, bias_g = (torch.randn(6, requires_grad=True) for _ in range(2))
    torch.library.opcheck(ops.bigin_fwd, (h, g, *bigin_csr(graph), "relu", bias_h, bias_g))
    torch.library.opcheck(ops.bigin_fwd, (h, g, *bigin_csr(graph), "gelu", None, bias_g))
    torch.library.opcheck(ops.bigin_bwd, (torch.randn(n, 6), h.detach(), g.detach(), *bigin_csr(graph), "gelu",
                                          bias_h.detach(), None))
    out = ops.bigin_fwd(h.detach(), g.detach(), *bigin_csr(graph), "relu")
    torch.library.opcheck(ops.bigin_bwd, (torch.randn(n, 6), None, None, *bigin_csr(graph), "relu",
                                          bias_h.detach(), bias_g.detach(), out))
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(n, 3, 5).to(dtype).requires_grad_()
        torch.library.opcheck(ops.dropout_fwd, (x, 0.3, 5))
        torch.library.opcheck(ops.dropout_fwd, (x, 0.0, -2))



# ---------------------------------------------------------------------- index checks, every call
def test_cpu_index_tensors_are_scanned_on_every_call():
    """No check is remembered on the CPU: a write that bumps no version counter (through
    .numpy()) is caught by the next op (tests/test_index_safety.py runs the public ops in a
    child process)."""
    graph = testing.random_batch([7, 5], seed=1)
    n = graph.num_nodes
    q, k, v = qkv(n, 4, 8)
    h, g = hg(n, 6)
    rowptr, col, tperm = graph.rel_rowptr, graph.rel_col, graph.rel_tperm
    csr = bigin_csr(graph)
    before = _C.index_scans()
    for _ in range(3):
        out, lse, w = ops.dag_attention_fwd(q, k, v, rowptr, col, tperm, 0.3, 0.0, 0)
        ops.bigin_fwd(h, g, *csr, "relu")
    ops.dag_attention_bwd(out, q, k, v, out, lse, w, rowptr, col, tperm, 0.3, 0.0, 0)
    # rel: offsets + columns; adj and adjt: offsets + columns each; backward: + rel_tperm
    assert _C.index_scans() - before == 3 * (2 + 4) + 3
    col.numpy()[0] = n + 5
    with pytest.raises(RuntimeError, match=rf"rel_col\[0\] = {n + 5} lies outside \[0, {n}\)"):
        ops.dag_attention_fwd(q, k, v, rowptr, col, tperm, 0.3, 0.0, 0)
    csr[0].numpy()[1] = 10**6
    with pytest.raises(RuntimeError, match="non-decreasing"):
        ops.bigin_fwd(h, g, *csr, "relu")


@pytest.mark.parametrize("bad", [[0], [1_100_000, 2_500_000], [2_999_999], [2_097_152, 1_048_576]])
def test_parallel_index_scan_names_the_first_bad_entry(bad):
    """The scan runs over chunks of 2^20 entries in parallel; the error names the first bad
    entry, whichever chunk finds one first."""
    n, nnz = 50, 3_000_000
    h, g = hg(n, 2)
    col = torch.randint(0, n, (nnz,), generator=torch.Generator().manual_seed(0))
    rowptr = torch.arange(n + 1) * (nnz // n)
    col[bad] = torch.tensor([-1, n][:len(bad)])
    with pytest.raises(RuntimeError, match=rf"adj_col\[{min(bad)}\] = {int(col[min(bad)])} lies outside"):
        ops.bigin_fwd(h, g, rowptr, col, rowptr, col, "relu")


def test_malformed_inputs_raise():
    graph = graph_of("diamond")
    n = graph.num_nodes
    q, k, v = qkv(n, 4, 8)
    good = list(attn_args(q, k, v, graph))
    cases = {
        "rel_rowptr must have": (3, graph.rel_rowptr[:-1]),
        "non-decreasing": (3, graph.rel_rowptr.clone().index_fill_(0, torch.tensor([1]), 1000)),
        "entries": (3, graph.rel_rowptr.clone().index_fill_(0, torch.tensor([4 * n]), 10**6)),
        "outside": (4, graph.rel_col.clone().index_fill_(0, torch.tensor([0]), n + 5)),
        "int64": (4, graph.rel_col.int()),
        "one shape": (1, k[:-1]),
        "multiple of 4": (0, q[:, :3].contiguous()),
        "contiguous": (0, q.transpose(1, 2).contiguous().transpose(1, 2)),
        "dtype": (2, v.double()),
        "head dim": (0, torch.randn(n, 4, 300)),
        "rel_tperm must have": (5, graph.rel_tperm[:-1]),
    }
    for msg, (pos, bad) in cases.items():
        args = list(good)
        args[pos] = bad
        if msg in ("multiple of 4", "head dim"):
            args[1] = args[2] = bad
        with pytest.raises(RuntimeError, match=msg):
            ops.dag_attention_fwd(*args)
    out, lse, w = ops.dag_attention_fwd(*good)
    bad_tperm = graph.rel_tperm.clone().index_fill_(0, torch.tensor([1]), -1)
    with pytest.raises(RuntimeError, match="rel_tperm"):
        ops.dag_attention_bwd(out, q, k, v, out, lse, w, graph.rel_rowptr, graph.rel_col, bad_tperm, 0.3, 0.0, 0)
    with pytest.raises(RuntimeError, match="lse"):
        ops.dag_attention_bwd(out, q, k, v, out, lse[:-1], w, graph.rel_rowptr, graph.rel_col, graph.rel_tperm,
                              0.3, 0.0, 0)
    for bad_w in (w[:-1], w.double(), w[:, None]):  # the backward reads one weight per entry and head group
        with pytest.raises(RuntimeError, match=r"p must be a contiguous \(\d+,\) Float tensor on cpu"):
            ops.dag_attention_bwd(out, q, k, v, out, lse, bad_w, graph.rel_rowptr, graph.rel_col, graph.rel_tperm,
                                  0.3, 0.0, 0)
    packed = torch.stack([q, k, v], 1)
    rel = (graph.rel_rowptr, graph.rel_col, graph.rel_tperm)
    with pytest.raises(RuntimeError, match=r"qkv must have shape \(N, 3, H, Dh\)"):
        ops.dag_attention_qkv_fwd(packed[:, :2].contiguous(), *rel, 0.3, 0.0, 0)
    with pytest.raises(RuntimeError, match="qkv must be contiguous"):
        ops.dag_attention_qkv_fwd(packed.transpose(0, 1).contiguous().transpose(0, 1), *rel, 0.3, 0.0, 0)
    with pytest.raises(RuntimeError, match="multiple of 4"):
        ops.dag_attention_qkv_fwd(packed[:, :, :3].contiguous(), *rel, 0.3, 0.0, 0)
    with pytest.raises(RuntimeError, match="lse"):
        ops.dag_attention_qkv_bwd(out, packed, out, lse[:-1], w, *rel, 0.3, 0.0, 0)
    with pytest.raises(RuntimeError, match="dout must have shape"):
        ops.dag_attention_qkv_bwd(out[:, :2].contiguous(), packed, out, lse, w, *rel, 0.3, 0.0, 0)
    with pytest.raises(RuntimeError, match=r"p must be a contiguous \(\d+,\) Float tensor on cpu"):
        ops.dag_attention_qkv_bwd(out, packed, out, lse, w[1:], *rel, 0.3, 0.0, 0)
    h, g = hg(n, 6)
    csr = list(bigin_csr(graph))
    with pytest.raises(RuntimeError, match="outside"):
        ops.bigin_fwd(h, g, csr[0], csr[1] + n, csr[2], csr[3], "relu")
    with pytest.raises(RuntimeError, match="adjt_rowptr"):
        ops.bigin_fwd(h, g, csr[0], csr[1], csr[2][:-1], csr[3], "relu")
    with pytest.raises(RuntimeError, match="even"):
        ops.bigin_fwd(h[:, :5].contiguous(), g[:, :5].contiguous(), *csr, "relu")
    with pytest.raises(RuntimeError, match="activation"):
        ops.bigin_fwd(h, g, *csr, "tanh")
    with pytest.raises(RuntimeError, match="one shape"):
        ops.bigin_bwd(h[:-1], h, g, *csr, "relu")
    y = ops.bigin_fwd(h, g, *csr, "relu")
    with pytest.raises(RuntimeError, match="only for relu and leaky_relu"):
        ops.bigin_bwd(h, None, None, *csr, "gelu", None, None, y)
    with pytest.raises(RuntimeError, match="pass h and g"):
        ops.bigin_bwd(h, None, g, *csr, "relu")
    with pytest.raises(RuntimeError, match="one shape"):
        ops.bigin_bwd(h, None, None, *csr, "relu", None, None, y[:-1])
    bias = torch.randn(6)
    for name, bad in {"shape": torch.randn(5), "dtype": bias.double(), "contiguous": torch.randn(6, 2)[:, 0]}.items():
        with pytest.raises(RuntimeError, match="bias_g must be a contiguous"):
            ops.bigin_fwd(h, g, *csr, "relu", bias, bad)
        with pytest.raises(RuntimeError, match="bias_h must be a contiguous"):
            ops.bigin_bwd(h, h, g, *csr, "relu", bad, None)


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bigin_backward_from_the_output_matches_the_recomputed_one(act, dtype):
    """For relu and leaky_relu the backward may read the sign of the pre-activation off the
    forward output: the same gradients, bit for bit, as recomputing it from h and g."""
    graph = graph_of("odd_sizes")
    n = graph.num_nodes
    h, g = hg(n, 40, dtype, seed=4)
    dy = hg(n, 40, dtype, seed=5)[0]
    csr = bigin_csr(graph)
    for bias_h, bias_g in [(None, None), tuple(hg(1, 40, seed=6)[i][0] for i in range(2))]:
        out = ops.bigin_fwd(h, g, *csr, act, bias_h, bias_g)
        recomputed = ops.bigin_bwd(dy, h, g, *csr, act, bias_h, bias_g)
        from_out = ops.bigin_bwd(dy, None, None, *csr, act, bias_h, bias_g, out)
        for a, b in zip(recomputed, from_out):
            assert torch.equal(a, b)


def test_relu_bigin_keeps_its_output_not_its_inputs_for_backward():
    """Activation memory: with relu the autograd graph holds the output (which fc2 holds
    anyway), not h and g; with gelu it needs h and g."""
    graph = graph_of("odd_sizes")
    h, g = hg(graph.num_nodes, 40, requires_grad=True)
    for act, keeps_inputs in (("relu", False), ("gelu", True)):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            y = native.bigin(h, g, graph, act=act)
        pointers = {t.data_ptr() for t in saved}
        assert (h.data_ptr() in pointers and g.data_ptr() in pointers) == keeps_inputs
        assert (y.data_ptr() in pointers) != keeps_inputs


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_fp16_bigin_backward_takes_the_sign_of_the_pre_activation(act):
    """A positive pre-activation too small for fp16 rounds to an output of 0: the derivative
    is still the positive side's (fp16 recomputes the pre-activation, as torch's autograd does)."""
    graph = graph_of("odd_sizes")
    n = graph.num_nodes
    h = torch.zeros(n, 4, dtype=torch.float16, requires_grad=True)
    g = torch.zeros(n, 4, dtype=torch.float16)
    bias = torch.full((4,), 1e-9)  # pre-activation 1e-9 > 0; in fp16 the output is 0
    y = native.bigin(h, g, graph, act=act, bias_h=bias)
    y.float().sum().backward()
    assert torch.equal(y, torch.zeros_like(y))
    assert torch.equal(h.grad, torch.ones_like(h.grad))


@pytest.mark.parametrize("op", ["dag_attention", "dag_attention_qkv", "bigin"])
def test_double_backward_raises(op):
    """The native backward ops have no derivative: differentiating through them (a gradient
    penalty) raises instead of returning zero second-order terms; a plain create_graph=True
    gradient still works."""
    graph = graph_of("odd_sizes")
    n = graph.num_nodes
    if op == "bigin":
        h, g = hg(n, 8, torch.float64, requires_grad=True)
        inputs, out = (h, g), native.bigin(h, g, graph, act="gelu")
    elif op == "dag_attention":
        inputs = qkv(n, 4, 8, torch.float64, requires_grad=True)
        out = native.dag_attention(*inputs, graph)
    else:
        inputs = (torch.randn(n, 3, 4, 8, dtype=torch.float64, requires_grad=True),)
        out = native.dag_attention_qkv(inputs[0], graph)
    grads = torch.autograd.grad(out.square().sum(), inputs, create_graph=True)
    assert all(gr.requires_grad for gr in grads)
    penalty = sum(gr.square().sum() for gr in grads)
    op_name = op.replace("_qkv", "")
    with pytest.raises(RuntimeError, match=f"the native {op_name} has no second derivative"):
        penalty.backward()


# ---------------------------------------------------------------------- gradients written over
def _norm_inputs(n: int, d: int, seed: int = 0):
    """x, y (N, D) and scale, weight, bias (D,), float32 leaves that require grad."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g).requires_grad_() for shape in ((n, d), (n, d), (d,), (d,), (d,))]


def test_opcheck_donated_overloads():
    """The "_donated" ops write dh over dy (bigin) and dx over ds (add_layer_norm), as
    their schemas declare, and return the other gradients, as the plain ops compute them."""
    graph = graph_of("odd_sizes")
    n = graph.num_nodes
    h, g = hg(n, 6)
    out = ops.bigin_fwd(h, g, *bigin_csr(graph), "relu")
    for args in ((h, g, *bigin_csr(graph), "gelu"), (None, None, *bigin_csr(graph), "relu", None, None, out)):
        torch.library.opcheck(ops.bigin_bwd_donated, (torch.randn(n, 6), *args))
        dy = torch.randn(n, 6)
        expected = ops.bigin_bwd(dy, *args)
        got = ops.bigin_bwd_donated(dy, *args)
        assert all(torch.equal(a, b) for a, b in zip(expected, (dy, *got)))
    x, y, scale, weight, bias = (t.detach() for t in _norm_inputs(n, 8))
    s, _, mean, rstd = ops.add_layer_norm_fwd(x, y, scale, weight, bias, 1e-5, torch.float32)
    args = (torch.randn(n, 8), s, y, scale, weight, mean, rstd, torch.float32)
    torch.library.opcheck(ops.add_layer_norm_bwd_donated, (torch.randn(n, 8), *args))
    ds = torch.randn(n, 8)
    expected = ops.add_layer_norm_bwd(ds, *args)
    got = ops.add_layer_norm_bwd_donated(ds, *args)
    assert all(torch.equal(a, b) for a, b in zip(expected, (ds, *got)))
    with pytest.raises(RuntimeError, match="must have x's dtype"):
        ops.add_layer_norm_bwd_donated(torch.randn(n, 8), *args[:-1], torch.bfloat16)


def _bigin_then_linear(keep=None):
    """Gradients of h and g through bigin and a Linear; ``keep(y)`` may hold y's gradient."""
    graph = graph_of("odd_sizes")
    h, g = hg(graph.num_nodes, 8, seed=3, requires_grad=True)
    y = native.bigin(h, g, graph, act="relu")
    if keep is not None:
        keep(y)
    torch.nn.functional.linear(y, torch.ones(3, 8)).square().sum().backward()
    return h.grad, g.grad


def _two_norms(keep=None):
    """Gradients through two add_layer_norms, the second's x the first's s: s1's gradient is
    the second's dx, which nothing but the autograd engine holds unless ``keep(s1)``."""
    x, y1, scale, weight, bias = _norm_inputs(graph_of("odd_sizes").num_nodes, 8, seed=1)
    y2 = _norm_inputs(graph_of("odd_sizes").num_nodes, 8, seed=2)[1]
    s1, h1 = native.add_layer_norm(x, y1, scale, weight, bias, eps=1e-5, out_dtype=torch.float32)
    if keep is not None:
        keep(s1)
    _, h2 = native.add_layer_norm(s1, y2, scale, weight, bias, eps=1e-5, out_dtype=torch.float32)
    (h1.square().sum() + (h2 * torch.arange(8.0)).sum()).backward()
    return x.grad, y1.grad, y2.grad, scale.grad, weight.grad, bias.grad


@pytest.mark.parametrize("run", [_bigin_then_linear, _two_norms])
def test_backward_writes_over_a_gradient_only_when_nothing_else_holds_it(run):
    """A gradient that only the autograd engine holds takes the backward's result (one
    donation); one that a hook keeps stays intact (no donation), as does the copy retain_grad
    stores. Every gradient is the same bit for bit either way."""
    before = _C.donated_grads()
    plain = run()
    assert _C.donated_grads() == before + 1
    kept = []
    held = run(lambda t: t.register_hook(lambda grad: kept.append((grad, grad.clone()))))
    assert _C.donated_grads() == before + 1
    retained = run(lambda t: t.retain_grad() or kept.append(t))
    (grad, copy), tensor = kept
    assert torch.equal(grad, copy) and torch.equal(tensor.grad, copy)
    for a, b, c in zip(plain, held, retained):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_a_gradient_asked_for_stays_intact():
    """torch.autograd.grad returns the gradient of bigin's output that the engine captured: the
    backward must not write dh over it."""
    graph = graph_of("odd_sizes")
    h, g = hg(graph.num_nodes, 8, seed=3, requires_grad=True)
    y = native.bigin(h, g, graph, act="relu")
    loss = torch.nn.functional.linear(y, torch.ones(3, 8)).square().sum()
    before = _C.donated_grads()
    dy, _ = torch.autograd.grad(loss, (y, h), retain_graph=True)
    assert _C.donated_grads() == before
    assert torch.equal(dy, torch.autograd.grad(loss, y)[0])


def test_no_donation_under_create_graph():
    graph = graph_of("odd_sizes")
    h, g = hg(graph.num_nodes, 8, requires_grad=True)
    y = native.bigin(h, g, graph, act="relu")
    before = _C.donated_grads()
    torch.autograd.grad(y.square().sum(), (h, g), create_graph=True)
    assert _C.donated_grads() == before


def test_demo_step_donates_its_gradient_buffers():
    """The bf16 latency-model step (2 layers): both bigin backwards and the two norms whose x is
    the float32 stream write over their incoming gradients (the first norm's x is the
    embedding's bf16 output, whose gradient is bf16, and the last norm's s has none)."""
    from nnformer_fast import NNFormerLatency

    graph = graph_of("odd_sizes")
    torch.manual_seed(0)
    model = NNFormerLatency(dim=32, n_layers=2, n_head=4, dropout=0.0).train()
    x = torch.randn(graph.num_nodes, 192)
    static = torch.randn(graph.num_graphs, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = model(x, graph, static)
    before = _C.donated_grads()
    pred.float().sum().backward()
    assert _C.donated_grads() == before + 4


# ---------------------------------------------------------------------- dispatch, compile
# (the relation builder is compared with the torch builder in tests/test_graph.py)
def test_public_ops_dispatch_to_native(monkeypatch):
    from nnformer_fast.ops import backends, dag_attention, select
    assert backends()["native"] == "ok"
    graph = graph_of("diamond")
    q, k, v = qkv(graph.num_nodes, 4, 8)
    assert select("dag_attention", q, k, v).name == "native"
    monkeypatch.setenv("NNFORMER_FAST_BACKEND", "native")
    testing.assert_close(dag_attention(q, k, v, graph), reference.dag_attention(q, k, v, graph),
                         atol=2e-5, rtol=2e-5, name="public op")


def test_compile_caches_tagged_with_the_schemas():
    """torch.compile's cache keys carry a hash of the live op schemas (a graph compiled against
    another build is not reused), one that any change of a schema changes, and a user's own tag
    is kept."""
    live = [str(getattr(ops, name).default._schema) for name in native.NATIVE_OPS]
    assert native.COMPILE_CACHE_TAG == native.schemas_tag(live)
    assert native.COMPILE_CACHE_TAG in torch.compiler.config.cache_key_tag.split("+")
    older = [schema.replace("-> (Tensor, Tensor, Tensor)", "-> (Tensor, Tensor)") for schema in live]
    assert older != live and native.schemas_tag(older) != native.COMPILE_CACHE_TAG
    script = "import torch, nnformer_fast; print(torch.compiler.config.cache_key_tag)"
    env = {**os.environ, "TORCH_COMPILE_CACHE_KEY_TAG": "mine"}
    tag = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert tag.stdout.split() == [f"mine+{native.COMPILE_CACHE_TAG}"]


def test_compile_fullgraph():
    graph = graph_of("global_tokens")
    n = graph.num_nodes

    def step(x, w):
        q, k, v = (x @ w).view(n, 3, 4, 8).unbind(1)
        o = native.dag_attention(q, k, v, graph).reshape(n, 32)
        y = native.bigin(o, o * 2, graph, act="gelu")
        return y.square().sum()

    x = torch.randn(n, 32)
    w = torch.randn(32, 96, requires_grad=True)
    eager = torch.autograd.grad(step(x, w), w)[0]
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, w), w)[0]
    testing.assert_close(got, eager, atol=1e-4, rtol=1e-4, name="compiled grad")


def test_compile_models_fullgraph():
    from nnformer_fast import NNFormer, NNFormerLatency
    x, graph, static = testing.latency_inputs([12, 20], seed=8)
    lat = NNFormerLatency(dim=32, n_head=4, n_layers=1)
    torch._dynamo.reset()
    compiled = torch.compile(lat, fullgraph=True, backend="aot_eager")
    lat.eval()
    testing.assert_close(compiled(x, graph, static), lat(x, graph, static), atol=1e-5, rtol=1e-5, name="latency")
    lat.train()
    compiled(x, graph, static).sum().backward()  # dropout seeds drawn inside the graph

    sample = testing.random_cells(3, 6)
    acc = NNFormer(depths=[1], dim=32).eval()
    expected = acc(sample)
    sample["graph"] = acc.build_graph(sample)  # graph building is data-dependent: done outside
    compiled = torch.compile(acc, fullgraph=True, backend="aot_eager")
    testing.assert_close(compiled(sample), expected, atol=1e-5, rtol=1e-5, name="accuracy")


# ---------------------------------------------------------------------- float -> bf16 / fp16
def _special_pairs(dtype):
    """(a, b) of `dtype` whose float32 sum a + b hits the rounding corner cases of `dtype`."""
    fi = torch.finfo(dtype)
    mant = 7 if dtype == torch.bfloat16 else 10
    ulp1, big_ulp = 2.0 ** -mant, 2.0 ** (math.floor(math.log2(fi.max)) - mant)
    tiny = fi.smallest_normal * 2.0 ** -mant  # smallest subnormal
    inf, nan = float("inf"), float("nan")
    pairs = [(0.0, 0.0), (-0.0, -0.0), (-0.0, 0.0), (tiny, 0.0), (-tiny, 0.0), (3 * tiny, tiny),
             (fi.smallest_normal, -tiny), (1.0, ulp1 / 2), (1.0 + ulp1, ulp1 / 2), (-1.0, -ulp1 / 2),
             (1.0, ulp1 / 4), (1.0, 3 * ulp1 / 4), (2.0, ulp1 / 2), (1.0, ulp1 / 2 + ulp1 / 8),
             (fi.max, 0.0), (-fi.max, 0.0), (fi.max, big_ulp / 2), (-fi.max, -big_ulp / 2),
             (fi.max, big_ulp / 4), (fi.max, fi.max), (inf, 0.0), (-inf, 0.0), (inf, -inf),
             (nan, 0.0), (1.0, nan), (-nan, 1.0)]
    g = torch.Generator().manual_seed(0)
    scales = 2.0 ** torch.randint(-30, 30, (256,), generator=g).double()
    rand = (torch.randn(256, 2, generator=g, dtype=torch.float64) * scales[:, None]).tolist()
    a, b = zip(*(pairs + [tuple(r) for r in rand]))
    return torch.tensor(a).to(dtype), torch.tensor(b).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_stores_match_torch_bitwise(dtype):
    """The CPU kernels' float -> bf16 / fp16 stores round like torch (nearest even, to inf).

    bigin_fwd with node 2k's only child 2k+1 and g zero elsewhere computes, in float32,
    z = h + g and y = leaky_relu(z), then one rounding to `dtype`: torch's
    ``.to(dtype)`` of the same float32 values must give the same bits (NaN: any NaN).
    """
    a, b = _special_pairs(dtype)
    k = a.numel()
    h = torch.stack([a, -a.abs()], 1).repeat_interleave(2, 0)  # rows 2k and 2k+1; ch1 < 0: leaky path
    g = torch.zeros_like(h)
    g[1::2, 0] = b
    ar = torch.arange(k)
    adj_rowptr = torch.stack([ar, ar + 1], 1).flatten()
    adj_rowptr = torch.cat([adj_rowptr, adj_rowptr.new_tensor([k])])
    adj_col = 2 * ar + 1
    adjt_rowptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.stack([ar, ar + 1], 1).flatten()])
    adjt_col = 2 * ar
    y = ops.bigin_fwd(h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, "leaky_relu")
    z = h.float()
    z[0::2, 0] += g[1::2, 0].float()
    z[1::2, 1] += g[0::2, 1].float()
    expected = torch.nn.functional.leaky_relu(z, 0.01).to(dtype)
    nan = expected.isnan()
    assert torch.equal(y.isnan(), nan)
    bits = torch.int16
    mismatch = (y.view(bits) != expected.view(bits)) & ~nan
    assert not mismatch.any(), (z[mismatch], y[mismatch], expected[mismatch])
    # the corner cases really occur: ties, overflow to inf, subnormal results
    assert expected[0::2, 0].isinf().sum() >= 4 and (expected.abs() < torch.finfo(dtype).smallest_normal).any()
    # the same rounding through dropout_fwd (x * 1 / (1 - p) in float32, then a store)
    x = torch.cat([a, b, -a.abs() * 0.37])
    out = ops.dropout_fwd(x, 0.5, 3)
    keep = reference.dropout_keep_mask(3, torch.arange(x.numel()), torch.tensor(0), 1, 0.5)
    exp = torch.where(keep, x.float() * 2.0, 0.0).to(dtype)
    assert torch.equal(out.isnan(), exp.isnan())
    assert torch.equal(out.view(bits)[~exp.isnan()], exp.view(bits)[~exp.isnan()])


# ---------------------------------------------------------------------- threads
@pytest.mark.skipif(sys.platform != "linux", reason="OpenMP is only required of the Linux (GCC) build")
def test_built_with_openmp():
    """Without OpenMP at::parallel_for (header code) silently runs every kernel on one thread."""
    assert INFO["openmp"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_results_do_not_depend_on_thread_count(dtype):
    """Every kernel writes each output element from one thread (gathers, no atomics): one
    thread and two give bit-identical forward and backward results."""
    graph = testing.random_batch([300, 5, 700, 64], seed=1)  # several parallel chunks per kernel
    n = graph.num_nodes
    q, k, v = qkv(n, 8, 32, dtype, requires_grad=True)
    h, g = hg(n, 64, dtype, requires_grad=True)
    bias_h, bias_g = hg(1, 64, torch.float32, seed=3, requires_grad=True)
    leaves = (q, k, v, h, g, bias_h, bias_g)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            for x in leaves:
                x.grad = None
            out = native.dag_attention(q, k, v, graph, dropout_p=0.1, seed=5)
            y = native.bigin(h, g, graph)
            y_biased = native.bigin(h, g, graph, bias_h=bias_h[0], bias_g=bias_g[0])
            (out.float().square().sum() + y.float().square().sum() + y_biased.float().square().sum()).backward()
            results.append([out, y, y_biased] + [x.grad for x in leaves])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)
