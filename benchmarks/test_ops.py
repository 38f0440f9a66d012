"""Op benchmarks: every backend that runs on this device and the dense formulation, on the
same inputs, forward and forward+backward, after a correctness check.

Shapes: latency (16 CNN-like graphs of 200–600 nodes, H=4, Dh=128; bigin M=1024 and 2048)
and accuracy (1024 cells of 7 nodes + 2 global tokens, H=4, Dh=40); add_layer_norm on the
rows of the latency graphs at the demo and default widths, as a bf16 autocast step calls it.
The header and the ratio summary name the CPU, its ISA flags and the native kernels' dispatch
level (conftest.py).
"""
import pytest
import torch

from nnformer_fast.dense import dense_bigin, dense_dag_attention
from nnformer_fast.ops import add_layer_norm, bigin, dag_attention
from nnformer_fast.ops.backends import ENV_VAR, _REGISTRY
from nnformer_fast.testing import random_batch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The Triton interpreter is a correctness tool, not a CPU backend worth timing.
BACKENDS = [n for n, b in _REGISTRY.items() if b.load_error is None and (DEVICE == "cuda" or n != "triton")]


def _latency_graph():
    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(200, 601, (16,), generator=g).tolist()
    return random_batch(sizes, avg_degree=1.5, seed=0, max_span=8)


def _accuracy_graph():
    return random_batch([9] * 1024, avg_degree=1.5, seed=0, global_token=True)


SHAPES = {"latency": (_latency_graph, 4, 128), "accuracy": (_accuracy_graph, 4, 40)}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def attention_case(request):
    build, heads, head_dim = SHAPES[request.param]
    graph = build().to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(graph.num_nodes, heads, head_dim, generator=gen).to(DEVICE) for _ in range(3))
    return request.param, graph, q, k, v


def _dense_layout(graph, *tensors):
    """Pad the packed tensors to (B, L, ...) plus the (B, L, L) mask, as the reference does."""
    b, l = graph.num_graphs, graph.max_nodes
    local = torch.arange(graph.num_nodes, device=graph.device) - graph.ptr[graph.batch]
    padded = []
    for t in tensors:
        p = t.new_zeros((b, l) + t.shape[1:])
        p[graph.batch, local] = t
        padded.append(p)
    mask = torch.zeros(b, l, l, device=graph.device)
    e = graph.edge_index
    mask[graph.batch[e[0]], local[e[0]], local[e[1]]] = 1
    valid = torch.zeros(b, l, dtype=torch.bool, device=graph.device)
    valid[graph.batch, local] = True
    return padded, mask, valid


def _run(fn, tensors, backward):
    if backward:
        for t in tensors:
            t.grad = None
        out = fn()
        out.backward(torch.ones_like(out))
    else:
        with torch.no_grad():
            fn()
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dag_attention(benchmark, attention_case, backend, backward, monkeypatch):
    name, graph, q, k, v = attention_case
    benchmark.group = f"dag_attention {name} {'fwd+bwd' if backward else 'fwd'} fp32"
    q, k, v = (t.clone().requires_grad_(backward) for t in (q, k, v))
    monkeypatch.setenv(ENV_VAR, "torch")
    expected = dag_attention(q, k, v, graph).detach()
    monkeypatch.setenv(ENV_VAR, backend)
    torch.testing.assert_close(dag_attention(q, k, v, graph).detach(), expected, rtol=1e-4, atol=1e-4)
    benchmark(_run, lambda: dag_attention(q, k, v, graph), (q, k, v), backward)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_dag_attention_dense(benchmark, attention_case, backward):
    name, graph, q, k, v = attention_case
    benchmark.group = f"dag_attention {name} {'fwd+bwd' if backward else 'fwd'} fp32"
    (qd, kd, vd), mask, valid = _dense_layout(graph, q, k, v)
    qd, kd, vd = (t.requires_grad_(backward) for t in (qd, kd, vd))
    benchmark(_run, lambda: dense_dag_attention(qd, kd, vd, mask, valid), (qd, kd, vd), backward)


@pytest.fixture(scope="module", params=[1024, 2048], ids=lambda m: f"M={m}")
def bigin_case(request):
    graph = _latency_graph().to(DEVICE)
    gen = torch.Generator().manual_seed(2)
    h, g = (torch.randn(graph.num_nodes, request.param, generator=gen).to(DEVICE) for _ in range(2))
    return graph, h, g


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bigin(benchmark, bigin_case, backend, backward, monkeypatch):
    graph, h, g = bigin_case
    benchmark.group = f"bigin latency M={h.shape[1]} {'fwd+bwd' if backward else 'fwd'} fp32"
    h, g = (t.clone().requires_grad_(backward) for t in (h, g))
    monkeypatch.setenv(ENV_VAR, "torch")
    expected = bigin(h, g, graph).detach()
    monkeypatch.setenv(ENV_VAR, backend)
    torch.testing.assert_close(bigin(h, g, graph).detach(), expected, rtol=1e-5, atol=1e-5)
    benchmark(_run, lambda: bigin(h, g, graph), (h, g), backward)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_bigin_dense(benchmark, bigin_case, backward):
    graph, h, g = bigin_case
    benchmark.group = f"bigin latency M={h.shape[1]} {'fwd+bwd' if backward else 'fwd'} fp32"
    (hd, gd), _, _ = _dense_layout(graph, h, g)
    b, l = graph.num_graphs, graph.max_nodes
    local = torch.arange(graph.num_nodes, device=graph.device) - graph.ptr[graph.batch]
    adj = torch.zeros(b, l, l, device=graph.device)
    e = graph.edge_index
    adj[graph.batch[e[0]], local[e[0]], local[e[1]]] = 1
    hd, gd = (t.requires_grad_(backward) for t in (hd, gd))
    benchmark(_run, lambda: dense_bigin(hd, gd, adj), (hd, gd), backward)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("backend", [b for b in BACKENDS if "add_layer_norm" in _REGISTRY[b].ops])
@pytest.mark.parametrize("width", [128, 512])
def test_add_layer_norm(benchmark, width, backend, backward, monkeypatch):
    """x (N, D) fp32 residual stream + y (N, D) bf16 branch * scale, normalised to bf16."""
    graph = _latency_graph()
    benchmark.group = f"add_layer_norm latency D={width} {'fwd+bwd' if backward else 'fwd'} bf16 branch"
    gen = torch.Generator().manual_seed(3)
    x, y = (torch.randn(graph.num_nodes, width, generator=gen).to(DEVICE) for _ in range(2))
    y = y.bfloat16()
    scale, weight, bias = (torch.rand(width, generator=gen).to(DEVICE) + 0.5 for _ in range(3))
    tensors = [t.requires_grad_(backward) for t in (x, y, scale, weight, bias)]
    ds, dout = torch.ones_like(x), torch.ones_like(y)  # the gradients of s and of out
    monkeypatch.setenv(ENV_VAR, backend)

    def step():
        with torch.set_grad_enabled(backward):
            s, out = add_layer_norm(*tensors, out_dtype=torch.bfloat16)
            if backward:
                for t in tensors:
                    t.grad = None
                torch.autograd.backward((s, out), (ds, dout))

    benchmark(step)


# The native ops check their CSRs on every call (an O(entries) read of int64 ids; nothing is
# remembered on the CPU, so a write that bumps no version counter is caught). Each group below
# times one op and that check alone on the same CSRs: the ratio is the check's share.
NATIVE = "native" in BACKENDS


@pytest.mark.skipif(not NATIVE, reason="native backend not built")
@pytest.mark.parametrize("what", ["op", "index check"])
def test_dag_attention_index_check(benchmark, attention_case, what, monkeypatch):
    from nnformer_fast import _C

    name, graph, q, k, v = attention_case
    benchmark.group = f"native dag_attention {name} fwd fp32: op vs its index check"
    if what == "op":
        monkeypatch.setenv(ENV_VAR, "native")
        benchmark(_run, lambda: dag_attention(q, k, v, graph), (q, k, v), False)
    else:
        benchmark(_C.check_csr, graph.rel_rowptr, graph.rel_col, 4 * graph.num_nodes, graph.num_nodes)


@pytest.mark.skipif(not NATIVE, reason="native backend not built")
@pytest.mark.parametrize("what", ["op", "index check"])
def test_bigin_index_check(benchmark, bigin_case, what, monkeypatch):
    from nnformer_fast import _C

    graph, h, g = bigin_case
    benchmark.group = f"native bigin latency M={h.shape[1]} fwd fp32: op vs its index checks"
    n = graph.num_nodes
    if what == "op":
        monkeypatch.setenv(ENV_VAR, "native")
        benchmark(_run, lambda: bigin(h, g, graph), (h, g), False)
    else:
        benchmark(lambda: (_C.check_csr(graph.adj_rowptr, graph.adj_col, n, n),
                           _C.check_csr(graph.adjt_rowptr, graph.adjt_col, n, n)))


@pytest.mark.parametrize("numbering", ["topological", "reversed"])
def test_graph_build_any_numbering(benchmark, numbering):
    """GraphBatch.from_edge_index on a 40,000-node chain: the cycle check is O(N + E) whether
    the ids follow the edges or run against them (it used to be quadratic in the latter case)."""
    from nnformer_fast import GraphBatch

    benchmark.group = "GraphBatch.from_edge_index, 40,000-node chain"
    n = 40_000
    ids = torch.arange(n)
    if numbering == "reversed":
        ids = ids.flip(0)
    edges = torch.stack([ids[:-1], ids[1:]])
    benchmark(GraphBatch.from_edge_index, edges, [n])
