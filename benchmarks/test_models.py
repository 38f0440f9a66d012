"""Model benchmarks: the packed sparse path against one graph at a time and the dense
formulation, on the same inputs, with a correctness check before timing.

Run: ``pytest benchmarks --benchmark-only`` (ratios are printed at the end).
"""
import pytest
import torch

from nnformer_fast import GraphBatch, NNFormer, NNFormerLatency
from nnformer_fast.dense import dense_nnformer, dense_nnformer_latency_batch
from nnformer_fast.models.buckets import bucketed
from nnformer_fast.testing import random_dag_edges
from nnformer_fast.train.host_memory import keep_freed_memory
from nnformer_fast.train.loop import TrainConfig, compile_model
from nnformer_fast.train.optim import make_optimizer

from gemm_floor import gemm_floor_step, record_linear_calls  # benchmarks/ is on sys.path under pytest

LATENCY_GRAPHS, LATENCY_NODES = 16, 200


def _latency_inputs(num_graphs, nodes, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(nodes * 3 // 4, nodes * 5 // 4 + 1, (num_graphs,), generator=g).tolist()
    edges, dense, offset = [], [], 0
    for n in sizes:
        e = random_dag_edges(n, 1.5, g, max_span=8)  # CNN-like: short skips
        a = torch.zeros(n, n)
        a[e[0], e[1]] = 1
        edges.append(e + offset)
        dense.append(a)
        offset += n
    x = torch.randn(offset, 192, generator=g)
    static = torch.randn(num_graphs, 40, generator=g)
    edge_index = torch.cat(edges, 1)
    return x, edge_index, sizes, static, dense


@pytest.fixture(scope="module")
def latency_setup():
    torch.manual_seed(0)
    model = NNFormerLatency()
    x, edge_index, sizes, static, dense = _latency_inputs(LATENCY_GRAPHS, LATENCY_NODES)
    return model, x, edge_index, sizes, static, dense


def _latency_packed_step(model, x, edge_index, sizes, static):
    graph = GraphBatch.from_edge_index(edge_index, sizes)  # built once per batch, inside the step
    out = model(x, graph, static)
    out.sum().backward()
    return out


def _latency_one_at_a_time_step(model, x, edge_index, sizes, static):
    outs, start = [], 0
    for b, n in enumerate(sizes):
        keep = (edge_index[0] >= start) & (edge_index[0] < start + n)
        graph = GraphBatch.from_edge_index(edge_index[:, keep] - start, [n])
        outs.append(model(x[start:start + n], graph, static[b:b + 1]))
        start += n
    out = torch.cat(outs)
    out.sum().backward()
    return out


def _latency_dense_loop_step(model, x, sizes, static, dense):
    graphs = list(zip(x.split(sizes), dense, static))
    out = dense_nnformer_latency_batch(dict(model.named_parameters()), graphs)
    out.sum().backward()
    return out


@pytest.mark.benchmark(group="latency model fwd+bwd, 16 graphs x ~200 nodes, fp32")
def test_latency_packed(benchmark, latency_setup):
    model, x, edge_index, sizes, static, dense = latency_setup
    model.eval()  # deterministic, so the three paths agree
    ref = _latency_dense_loop_step(model, x, sizes, static, dense).detach()
    torch.testing.assert_close(_latency_packed_step(model, x, edge_index, sizes, static).detach(), ref,
                               rtol=1e-4, atol=1e-5)
    benchmark(_latency_packed_step, model, x, edge_index, sizes, static)


@pytest.mark.benchmark(group="latency model fwd+bwd, 16 graphs x ~200 nodes, fp32")
def test_latency_one_graph_at_a_time(benchmark, latency_setup):
    model, x, edge_index, sizes, static, dense = latency_setup
    model.eval()
    benchmark(_latency_one_at_a_time_step, model, x, edge_index, sizes, static)


@pytest.mark.benchmark(group="latency model fwd+bwd, 16 graphs x ~200 nodes, fp32")
def test_latency_gemm_floor(benchmark, latency_setup):
    model, x, edge_index, sizes, static, _ = latency_setup
    graph = GraphBatch.from_edge_index(edge_index, sizes)
    calls = record_linear_calls(model, lambda: model(x, graph, static))
    benchmark(gemm_floor_step(calls, backward=True))


@pytest.mark.benchmark(group="latency model fwd+bwd, 16 graphs x ~200 nodes, fp32")
def test_latency_dense_reference_loop(benchmark, latency_setup):
    model, x, edge_index, sizes, static, dense = latency_setup
    model.eval()
    benchmark(_latency_dense_loop_step, model, x, sizes, static, dense)


def _nb101_like_cells(count, seed=0):
    """NAS-Bench-101-shaped cells (7 nodes, 5 op types); real cells when the data is present."""
    try:
        from nnformer_fast.data.cells import collate_same_size, load_nb101_naslib, tokenize
        from nnformer_fast.data.cells import default_data_dir

        cells = [c for c in load_nb101_naslib(default_data_dir() / "nb101_naslib_500.json")
                 if len(c.ops) == 7]
        cells = (cells * (count // len(cells) + 1))[:count]
        return collate_same_size([tokenize(c) for c in cells])
    except Exception:
        g = torch.Generator().manual_seed(seed)
        adj = torch.zeros(count, 7, 7)
        for b in range(count):
            e = random_dag_edges(7, 1.5, g)
            adj[b, e[0], e[1]] = 1
        code = torch.nn.functional.one_hot(torch.randint(0, 5, (count, 7), generator=g), 32).float()
        depth = torch.nn.functional.one_hot(torch.full((count, 1), 7), 32).float()
        return {"code": code, "code_depth": depth, "code_rel_pos": adj.long(), "code_adj": adj}


@pytest.fixture(scope="module")
def accuracy_setup():
    torch.manual_seed(0)
    model = NNFormer(depths=[12]).eval()
    sample = _nb101_like_cells(1024)
    if isinstance(sample, tuple):
        sample = sample[0]
    return model, sample


@pytest.mark.benchmark(group="accuracy model forward, 1024 NB101 cells, fp32")
def test_accuracy_packed(benchmark, accuracy_setup):
    model, sample = accuracy_setup
    with torch.no_grad():
        ours = model(sample, None)
        ref = dense_nnformer(model.state_dict(), sample, depth=12)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        benchmark(model, sample, None)


@pytest.mark.benchmark(group="accuracy model forward, 1024 NB101 cells, fp32")
def test_accuracy_gemm_floor(benchmark, accuracy_setup):
    model, sample = accuracy_setup
    with torch.no_grad():
        calls = record_linear_calls(model, lambda: model(sample, None))
        benchmark(gemm_floor_step(calls, backward=False))


@pytest.mark.benchmark(group="accuracy model forward, 1024 NB101 cells, fp32")
def test_accuracy_dense_reference(benchmark, accuracy_setup):
    model, sample = accuracy_setup
    params = model.state_dict()
    with torch.no_grad():
        benchmark(dense_nnformer, params, sample, depth=12)


# ---------------------------------------------------------------------------- training step vs GEMM floor
STEP_GROUP = "latency model training step, 16 graphs x ~200 nodes"


def _training_step(model, optimizer, x, graph, static, y, autocast_dtype):
    ctx = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else torch.autocast("cpu", enabled=False)
    with ctx:
        pred = model(x, graph, static).squeeze(1)
    loss = torch.nn.functional.mse_loss(pred.float() / y, torch.ones_like(y))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


# the default model (dim 512) and the demo's (dim 128, nnformer_fast.demo.MODEL)
MODEL_SIZES = {"dim 512": {}, "demo dim 128": dict(dim=128, n_layers=2, n_head=4, dropout=0.0)}


def _step_model(size):
    """A latency model of one of ``MODEL_SIZES`` (seed 1, training mode) and the optimizer
    that nnformer_fast.train.fit gives it (lr 1e-4, fit's weight decay)."""
    torch.manual_seed(1)
    model = NNFormerLatency(**MODEL_SIZES[size]).train()
    return model, make_optimizer(model, lr=1e-4, weight_decay=TrainConfig.weight_decay)


def _compiled(model):
    """model as ``fit(compile=True)`` and the demo (its default) run it: through
    ``compile_model`` inside the shape buckets (nnformer_fast/train/loop.py)."""
    return bucketed(compile_model(model))


def _step_floor(model, x, graph, static, autocast_dtype):
    """The GEMM floor of one training step of model: its Linear calls, forward and backward."""
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        calls = record_linear_calls(model, lambda: model(x, graph, static))
    return gemm_floor_step(calls, backward=True, autocast_dtype=autocast_dtype)


@pytest.fixture(scope="module", params=sorted(MODEL_SIZES))
def training_setup(request, latency_setup):
    _, x, edge_index, sizes, static, _ = latency_setup
    model, optimizer = _step_model(request.param)
    model.size_name = request.param
    graph = GraphBatch.from_edge_index(edge_index, sizes)
    y = torch.rand(len(sizes)) + 0.5
    torch.set_flush_denormal(True)  # as nnformer_fast.train.fit sets it
    keep_freed_memory()  # likewise (process-wide, kept)
    yield model, optimizer, x, graph, static, y
    torch.set_flush_denormal(False)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_step(benchmark, training_setup, precision):
    benchmark.group = f"{STEP_GROUP}, {training_setup[0].size_name}, {precision}"
    model, optimizer, x, graph, static, y = training_setup
    dtype = torch.bfloat16 if precision == "bf16" else None
    benchmark(_training_step, model, optimizer, x, graph, static, y, dtype)


def test_training_step_compiled(benchmark, training_setup):
    """The bf16 step through :func:`_compiled`: Inductor fuses the casts and elementwise work
    around the native ops (attention, bigin, add_layer_norm), which stay opaque calls. The first steps compile (a minute or
    two, cached after), outside the timing."""
    benchmark.group = f"{STEP_GROUP}, {training_setup[0].size_name}, bf16"
    model, optimizer, x, graph, static, y = training_setup
    compiled = _compiled(model)
    for _ in range(3):
        _training_step(compiled, optimizer, x, graph, static, y, torch.bfloat16)
    benchmark(_training_step, compiled, optimizer, x, graph, static, y, torch.bfloat16)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_step_gemm_floor(benchmark, training_setup, precision):
    benchmark.group = f"{STEP_GROUP}, {training_setup[0].size_name}, {precision}"
    model, _, x, graph, static, _ = training_setup
    dtype = torch.bfloat16 if precision == "bf16" else None
    benchmark(_step_floor(model, x, graph, static, dtype))


# ---------------------------------------------------------------------------- NAS-Bench-201 cells (mixed sizes)
NB201_GROUP = "accuracy model forward, 1024 NB201 cells of 2-8 nodes, fp32"


def _nb201_cells(count, seed=0):
    """Random NAS-Bench-201 cells (6 random edge operations): pruning leaves 2-8 nodes."""
    from nnformer_fast.data.cells import NB201_OPS, nb201_cell

    ops = [op for op in NB201_OPS if op not in ("input", "output")]
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(ops), (count, 6), generator=g).tolist()
    return [nb201_cell([ops[i] for i in row]) for row in picks]


@pytest.fixture(scope="module")
def nb201_setup():
    from nnformer_fast.data.cells import collate_padded, collate_same_size, group_by_size, tokenize

    torch.manual_seed(0)
    model = NNFormer(depths=[12]).eval()
    cells = _nb201_cells(1024)
    padded = collate_padded([tokenize(c) for c in cells])
    # the reference's batching: one batch per cell size
    same_size = [collate_same_size([tokenize(cells[i]) for i in idx]) for idx in group_by_size(cells).values()]
    return model, padded, same_size


@pytest.mark.benchmark(group=NB201_GROUP)
def test_nb201_packed_mixed_sizes(benchmark, nb201_setup):
    model, padded, same_size = nb201_setup
    with torch.no_grad():
        ours = torch.sort(model(padded, None).flatten()).values
        ref = torch.sort(torch.cat([dense_nnformer(model.state_dict(), s, depth=12) for s in same_size]).flatten()).values
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
        benchmark(model, padded, None)


@pytest.mark.benchmark(group=NB201_GROUP)
def test_nb201_dense_one_batch_per_size(benchmark, nb201_setup):
    model, _, same_size = nb201_setup
    params = model.state_dict()
    with torch.no_grad():
        benchmark(lambda: [dense_nnformer(params, s, depth=12) for s in same_size])
