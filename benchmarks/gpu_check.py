"""GPU check of the kernel backends (CUDA C++ ``native`` and ``triton``), in one run and one table.

    python benchmarks/gpu_check.py [--no-build]

1. builds the extension with the CUDA kernels (``NNFF_CUDA=1 pip install --no-build-isolation
   --no-deps -e .``) unless ``nnformer_fast.build_info()`` already reports CUDA kernels; a
   failed build prints its error lines and the check goes on without them;
2. checks each kernel backend against the reference on the GPU: dag_attention (also through
   the models' packed-qkv call) and bigin (forward + gradients over the graph families;
   fp32/fp64 against float64, fp16/bf16 by the flash-attention rule) and dropout (bit-exact
   with its gradient, and past 2**32 elements); and both models, forward and backward, against
   the same models on the CPU;
3. times every backend (native, triton, torch) and the dense formulation in bf16, the training
   default: dag_attention forward+backward (separate q, k, v and one packed qkv), bigin and
   dropout with their achieved memory bandwidth beside a device-to-device copy measured in the
   same run;
4. times training on the embedded default latency set (issue 6): the reference design's loop
   (one graph at a time, fp32, dense, the demo's sample) against ours (packed bf16 epochs at
   the demo's node budget and at GPU-sized ones, batches built by DataLoader workers; once
   more in fp16 with GradScaler, a path only a GPU runs), graphs/s and the ratio;
5. prints the table after each section (the last one is complete; a failing section adds a
   failed row and the others still run), then ``CUDA_PREFERENCE`` for
   ``nnformer_fast/ops/backends.py``: per op, the faster of CUDA C++ and Triton first.
Exit status 1 when a check fails. Meant to take < 5 minutes on one H100, most of it Triton's
first-call compilation and autotuning. On a lent device machine (a bare checkout, its own
torch), as one call: ``set -o pipefail; PYTHONUNBUFFERED=1 timeout 560 python3
benchmarks/gpu_check.py 2>&1 | tee $OUT/gpu_check.log``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a fresh GPU machine runs this from a checkout, nothing installed

import nnformer_fast  # noqa: E402
from nnformer_fast import testing  # noqa: E402
from nnformer_fast.demo import BASELINE_BATCH, BASELINE_STEPS, MAX_NODES, packed_rate, reference_rate  # noqa: E402
from nnformer_fast.dense import dense_bigin, dense_dag_attention  # noqa: E402
from nnformer_fast.ops import reference  # noqa: E402
from nnformer_fast.ops.backends import _REGISTRY, CUDA_PREFERENCE  # noqa: E402

KERNEL_BACKENDS = ("native", "triton")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
LOW_PRECISION = (torch.bfloat16, torch.float16)
#: Timed shapes: name -> (graph sizes, random_batch options, heads, head dim). bigin runs at
#: width M = 4 * heads * head_dim (mlp_ratio 4), dropout on (N, heads * head_dim).
SHAPES = {
    "latency 16x600": ([600] * 16, dict(avg_degree=2.0, max_span=12), 4, 128),
    "latency 16x200-600": (torch.randint(200, 601, (16,), generator=torch.Generator().manual_seed(0)).tolist(),
                           dict(avg_degree=2.5, max_span=10), 4, 128),
    "accuracy 1024x9, global token": ([9] * 1024, dict(avg_degree=2.0, global_token=True), 4, 40),
}


@dataclass
class Row:
    """One line of the table: a correctness check (``ok`` set) or a timing (``ms`` set)."""
    op: str
    case: str
    backend: str
    dtype: str
    ms: Optional[float] = None
    gbps: Optional[float] = None
    ok: Optional[bool] = None
    note: str = ""


def build_if_needed(skip: bool) -> Optional[str]:
    """Build the extension with the CUDA kernels and re-run this script on it. A failed build
    prints its error lines and the end of its log and returns the first error: the check goes
    on without the CUDA kernels."""
    if nnformer_fast.build_info()["cuda"] or skip:
        return None
    print("building the CUDA extension ...", flush=True)
    env = dict(os.environ, NNFF_CUDA="1", NNFF_CUDA_ARCHS=os.environ.get("NNFF_CUDA_ARCHS", "90"))
    # --no-deps: the GPU machine reaches no package index, and its image has numpy and tqdm
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e",
                            str(ROOT), "-q"], env=env, capture_output=True, text=True)
    if build.returncode != 0:
        log = (build.stdout + build.stderr).strip().splitlines() or ["(no output)"]
        errors = [line.strip() for line in log if re.search(r"error|fatal|FAILED", line, re.IGNORECASE)]
        print("\n".join(["CUDA extension build FAILED; its error lines:", *errors[:40], "its end:", *log[-15:]]),
              flush=True)
        return (errors or log)[0][:300]
    # a fresh interpreter picks up the new extension
    os.execv(sys.executable, [sys.executable, __file__, "--no-build"])


def bench(fn: Callable[[], object], reps: int = 20) -> float:
    """Median milliseconds of ``fn`` on the GPU, the L2 cache flushed before each run."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    for _ in range(3):  # warm-up, Triton autotuning included
        fn()
    times = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _runs(backend: str, op: str, *tensors) -> bool:
    return backend in _REGISTRY and not _REGISTRY[backend].reasons(op, *tensors)


def _fwd_bwd(fn: Callable, inputs: list, grad) -> list:
    out = fn(*inputs)
    return [out, *torch.autograd.grad(out, inputs, grad.to(out.dtype))]


def _dense_adjacency(graph, edge_index, dtype, padded: bool):
    """``edge_index`` as a dense adjacency: (B, L, L) padded per graph (L the largest graph),
    or the whole batch as one (1, N, N) graph."""
    src, dst = edge_index
    if padded:
        gid = graph.batch[src]
        shape, index = (graph.num_graphs, graph.max_nodes, graph.max_nodes), (gid, src - graph.ptr[gid],
                                                                               dst - graph.ptr[gid])
    else:
        shape, index = (1, graph.num_nodes, graph.num_nodes), (torch.zeros_like(src), src, dst)
    adj = torch.zeros(shape, dtype=dtype, device=src.device)
    adj[index] = 1
    return adj


def _mask_edges(graph):
    return graph.mask_edge_index if graph.mask_edge_index is not None else graph.edge_index


# ------------------------------------------------------------------------------- correctness
def _compare(got: list, exact: list, plain: Optional[list], dtype) -> float:
    """Max abs error of ``got`` (output, then gradients) against ``exact``; AssertionError past
    the tolerance: fp32/fp64 TOLERANCES (x10 for gradients), fp16/bf16 at most twice the error
    of ``plain``, plain PyTorch in the same precision."""
    for i, (a, c) in enumerate(zip(got, exact)):
        if dtype in LOW_PRECISION:
            testing.low_precision_error_ok(a, plain[i], c, floor=testing.TOLERANCES[dtype][0] / 10)
        else:
            atol, rtol = (t * (1 if i == 0 else 10) for t in testing.TOLERANCES[dtype])
            testing.assert_close(a, c, atol=atol, rtol=rtol, name="output" if i == 0 else f"gradient {i}")
    return max(((a.double() - c).abs().max().item() for a, c in zip(got, exact) if a.numel()), default=0.0)


def _check_attention(fn, graph, dtype) -> float:
    """(N, 8, 59) inputs; dropout 0.3 in fp32/fp64 (the dense low-precision baseline has none)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v, go = (torch.randn(graph.num_nodes, 8, 59, generator=gen, dtype=torch.float64).to(graph.device)
                   for _ in range(4))
    p = 0.0 if dtype in LOW_PRECISION else 0.3
    ins = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    got = _fwd_bwd(lambda *x: fn(*x, graph, dropout_p=p, scale=None, seed=5), ins, go)
    exact = _fwd_bwd(lambda *x: reference.dag_attention(*x, graph, dropout_p=p, seed=5),
                     [t.detach().double().requires_grad_() for t in ins], go)
    plain = None
    if dtype in LOW_PRECISION:
        mask = _dense_adjacency(graph, _mask_edges(graph), dtype, padded=False)
        plain = _fwd_bwd(lambda *x: dense_dag_attention(*(t[None] for t in x), mask)[0],
                         [t.detach().clone().requires_grad_() for t in ins], go)
    return _compare(got, exact, plain, dtype)


def _check_bigin(fn, graph, dtype) -> float:
    """(N, 46) inputs. Every activation in fp32; fp16/bf16 reuse its fp32 math (the kernels
    accumulate in fp32), so they and fp64 (its own erf) run gelu only."""
    gen = torch.Generator().manual_seed(1)
    h, g, dy = (torch.randn(graph.num_nodes, 46, generator=gen, dtype=torch.float64).to(graph.device)
                for _ in range(3))
    ins = [t.to(dtype).requires_grad_() for t in (h, g)]
    adj = _dense_adjacency(graph, graph.edge_index, dtype, padded=False)
    worst = 0.0
    for act in reference.ACTIVATIONS if dtype == torch.float32 else ("gelu",):
        got = _fwd_bwd(lambda *x: fn(*x, graph, act=act), ins, dy)
        exact = _fwd_bwd(lambda *x: reference.bigin(*x, graph, act=act),
                         [t.detach().double().requires_grad_() for t in ins], dy)
        plain = None
        if dtype in LOW_PRECISION:
            plain = _fwd_bwd(lambda *x: dense_bigin(*(t[None] for t in x), adj, act=act)[0],
                             [t.detach().clone().requires_grad_() for t in ins], dy)
        worst = max(worst, _compare(got, exact, plain, dtype))
    return worst


def _check_dropout(fn, device, dtype, subnormal: bool = True) -> None:
    """Output and gradient bit-exact with the reference, three p, seeds that wrap; with
    ``subnormal`` the first rows subnormal (a kernel that flushes them to zero fails)."""
    gen = torch.Generator().manual_seed(2)
    x, dy = (torch.randn(1000, 37, generator=gen, dtype=torch.float64).to(device, dtype) for _ in range(2))
    for t in (x, dy) if subnormal else ():
        t[:50] *= torch.finfo(dtype).tiny
    x.requires_grad_()
    for p in (0.1, 0.5, 0.9):
        for seed in (12345, -7, 2**40 + 3):
            got = _fwd_bwd(lambda t: fn(t, p, seed=seed), [x], dy)
            expected = _fwd_bwd(lambda t: reference.dropout(t, p, seed=seed), [x], dy)
            if not all(torch.equal(a, b) for a, b in zip(got, expected)):
                raise AssertionError(f"p={p} seed={seed}: not bit-exact with the reference")


def _check_dropout_past_2_32(fn, device) -> None:
    """The last elements of a (2**32 + 4099)-element fp16 tensor (8 GiB): int64 indexing and
    the hash of ``e mod 2**32``."""
    n, tail = 2**32 + 4099, 8192
    y = fn(torch.ones(n, dtype=torch.float16, device=device), 0.5, seed=3)[-tail:]
    zero = torch.zeros((), dtype=torch.int64, device=device)
    keep = reference.dropout_keep_mask(3, torch.arange(n - tail, n, device=device), zero, 1, 0.5)
    if not torch.equal(y, torch.where(keep, 2.0, 0.0).half()):
        raise AssertionError("not bit-exact with the reference")


@contextlib.contextmanager
def first_triton_configs():
    """Within the block each autotuned Triton kernel runs its first launch config only. The
    correctness checks (ten graph families, four dtypes) would otherwise compile and time every
    config for every new specialization: minutes of a short GPU lease. CI checks every config
    against the reference under the interpreter and compiles each one for sm_90; the timings
    autotune over all of them."""
    try:
        import triton
        from nnformer_fast.triton import bigin, dag_attention
    except ImportError:
        yield
        return
    kernels = [k for module in (bigin, dag_attention) for k in vars(module).values()
               if isinstance(k, triton.runtime.Autotuner)]
    saved = [k.configs for k in kernels]
    for kernel in kernels:
        kernel.configs = kernel.configs[:1]
    try:
        yield
    finally:
        for kernel, configs in zip(kernels, saved):
            kernel.configs = configs


def packed_attention(backend: str) -> Callable:
    """How ``ops.dag_attention_qkv`` (the models' call) runs on ``backend``: its packed op, which
    reads q, k, v in place from one (N, 3, H, Dh) qkv, else ``dag_attention`` on the thirds."""
    ops = _REGISTRY[backend].ops
    if "dag_attention_qkv" in ops:
        return ops["dag_attention_qkv"]
    return lambda qkv, graph, **kw: ops["dag_attention"](*qkv.unbind(1), graph, **kw)


def correctness_rows(backend: str, device, families=None, *, past_2_32: bool = True) -> list[Row]:
    """One row per (op, case, dtype): ``backend`` against the reference over ``families``
    (default: all of ``testing.FAMILIES``), attention also through the models' packed-qkv call;
    with ``past_2_32`` also dropout on 2**32 + 4099 elements."""
    ops = _REGISTRY[backend].ops
    packed = packed_attention(backend)
    checks = {("dag_attention", "graph families"): (_check_attention, ops["dag_attention"]),
              ("dag_attention", "packed qkv, graph families"): (
                  _check_attention, lambda q, k, v, graph, **kw: packed(torch.stack((q, k, v), 1), graph, **kw)),
              ("bigin", "graph families"): (_check_bigin, ops["bigin"])}
    failures, worst = defaultdict(list), defaultdict(float)
    for family in families or sorted(testing.FAMILIES):
        graph = testing.family_batch(family).to(device)
        for dtype in DTYPES:
            for key, (check, fn) in checks.items():
                try:
                    worst[key, dtype] = max(worst[key, dtype], check(fn, graph, dtype))
                except AssertionError as exc:
                    failures[key, dtype].append(f"{family}: {str(exc).splitlines()[0]}")
    rows = [Row(op, f"vs reference, {case}", backend, _name(dtype), ok=not failures[(op, case), dtype],
                note="; ".join(failures[(op, case), dtype][:2]) or f"max abs error {worst[(op, case), dtype]:.1e}")
            for op, case in checks for dtype in DTYPES]
    # the Triton interpreter (CPU) converts subnormal bf16 to fp32 wrongly; compiled kernels do not
    subnormal = not (backend == "triton" and torch.device(device).type == "cpu")
    cases = [(_name(dtype), "bit-exact, p 0.1/0.5/0.9, 3 seeds" + (", subnormals" if subnormal else ""),
              lambda d=dtype: _check_dropout(ops["dropout"], device, d, subnormal)) for dtype in DTYPES]
    if past_2_32:
        cases.append(("float16", "past 2**32 elements", lambda: _check_dropout_past_2_32(ops["dropout"], device)))
    for dtype, case, check in cases:
        try:
            check()
            rows.append(Row("dropout", case, backend, dtype, ok=True))
        except AssertionError as exc:
            rows.append(Row("dropout", case, backend, dtype, ok=False, note=str(exc)))
    return rows


def _moved(x, device):
    """A tensor, GraphBatch or dict of tensors on ``device``."""
    if isinstance(x, dict):
        return {k: v.to(device) for k, v in x.items()}
    return x.to(device)


def model_rows(device) -> list[Row]:
    """Both models, fp32, forward and backward on ``device`` against the same weights and
    inputs on the CPU: the models' and GraphBatch's own device code (the accuracy model builds
    its graph from device tensors), not only the ops. Eval mode: no dropout."""
    from nnformer_fast import NNFormer, NNFormerLatency

    torch.manual_seed(0)
    rows = []
    for name, model, inputs in (("latency", NNFormerLatency(dim=64, n_head=4, n_layers=2),
                                 testing.latency_inputs([9, 14, 5, 40], seed=11)),
                                ("accuracy", NNFormer(depths=[2], dim=64, n_head=4), (testing.random_cells(4, 7),))):
        model.eval()
        results = []
        for where in ("cpu", device):
            on = copy.deepcopy(model).to(where)
            out = on(*(_moved(x, where) for x in inputs))
            grads = torch.autograd.grad(out.square().sum(), list(on.parameters()), allow_unused=True)
            results.append([t.detach().cpu() for t in (out, *grads) if t is not None])
        worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(*results))
        rows.append(Row("model", f"{name} fwd+bwd vs the CPU", "auto", "float32", ok=worst < 1e-4,
                        note=f"worst relative error {worst:.1e} over the output and {len(results[0]) - 1} gradients"))
    return rows


# ------------------------------------------------------------------------------- timings
def copy_row(device, bench: Callable, nbytes: int = 256 * 2**20) -> Row:
    """Bandwidth of a device-to-device copy of ``nbytes`` (bytes read + bytes written)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return Row("copy", f"{nbytes / 2**20:.0f} MiB", "torch", "float32", ms=ms, gbps=2 * nbytes / ms / 1e6)


def timing_rows(device, bench: Callable, shapes: dict = SHAPES, dtype=torch.bfloat16) -> list[Row]:
    """Timings of every backend that runs here and of the dense formulation (padded per
    graph), ``dtype`` inputs. GB/s counts the ideal traffic: each tensor read or written once."""
    rows = []
    elt = torch.finfo(dtype).bits // 8
    for shape, (sizes, options, heads, dh) in shapes.items():
        graph = testing.random_batch(sizes, seed=1, **options).to(device)
        n, b, l = graph.num_nodes, graph.num_graphs, graph.max_nodes
        gen = torch.Generator().manual_seed(3)

        def randn(*size, grad=False):
            return torch.randn(*size, generator=gen).to(device, dtype).requires_grad_(grad)

        # dag_attention forward + backward
        q, k, v = (randn(n, heads, dh, grad=True) for _ in range(3))
        qp, kp, vp = (randn(b, l, heads, dh, grad=True) for _ in range(3))
        go, gop = randn(n, heads, dh), randn(b, l, heads, dh)
        mask = _dense_adjacency(graph, _mask_edges(graph), dtype, padded=True)
        steps = {name: lambda op=_REGISTRY[name].ops["dag_attention"]: _fwd_bwd(
                     lambda *x: op(*x, graph, dropout_p=0.0, scale=None, seed=0), [q, k, v], go)
                 for name in ("native", "triton", "torch") if _runs(name, "dag_attention", q, k, v)}
        steps["dense"] = lambda: _fwd_bwd(lambda *x: dense_dag_attention(*x, mask), [qp, kp, vp], gop)
        note = f"N={n}, H={heads}, Dh={dh}, {graph.rel_col.numel()} relation entries"
        rows += [Row("dag_attention", f"fwd+bwd {shape}", name, _name(dtype), ms=bench(fn), note=note)
                 for name, fn in steps.items()]
        # the models' call: q, k, v as thirds of one qkv projection
        qkv = randn(n, 3, heads, dh, grad=True)
        packed = {name: lambda op=packed_attention(name): _fwd_bwd(
                      lambda x: op(x, graph, dropout_p=0.0, scale=None, seed=0), [qkv], go)
                  for name in ("native", "triton", "torch") if _runs(name, "dag_attention", q, k, v)}
        rows += [Row("dag_attention", f"fwd+bwd {shape}, packed qkv", name, _name(dtype), ms=bench(fn), note=note)
                 for name, fn in packed.items()]

        # bigin forward and backward, bandwidth of the ideal traffic: forward reads h, g and
        # writes y; backward reads dy, h, g, writes dh, then reads dh and writes dg
        m = 4 * heads * dh
        h, g, dy = randn(n, m, grad=True), randn(n, m, grad=True), randn(n, m)
        hp, gp, dyp = randn(b, l, m, grad=True), randn(b, l, m, grad=True), randn(b, l, m)
        adj = _dense_adjacency(graph, graph.edge_index, dtype, padded=True)
        fwds = {name: (lambda op=_REGISTRY[name].ops["bigin"]: op(h, g, graph, act="relu"), (h, g), dy)
                for name in ("native", "triton", "torch") if _runs(name, "bigin", h, g)}
        fwds["dense"] = (lambda: dense_bigin(hp, gp, adj, act="relu"), (hp, gp), dyp)
        index_bytes = 2 * 8 * (graph.num_edges + n + 1)
        for name, (fwd, leaves, grad) in fwds.items():
            with torch.no_grad():
                ms = bench(fwd)
            rows.append(Row("bigin", f"fwd {shape}", name, _name(dtype), ms=ms,
                            gbps=(3 * n * m * elt + index_bytes) / ms / 1e6, note=f"M={m}"))
            y = fwd()
            ms = bench(lambda: torch.autograd.grad(y, leaves, grad, retain_graph=True))
            rows.append(Row("bigin", f"bwd {shape}", name, _name(dtype), ms=ms,
                            gbps=(6 * n * m * elt + 2 * index_bytes) / ms / 1e6, note=f"M={m}"))

        # dropout forward: reads x, writes y
        x = randn(n, heads * dh)
        for name in ("native", "triton", "torch"):
            if _runs(name, "dropout", x):
                ms = bench(lambda op=_REGISTRY[name].ops["dropout"]: op(x, 0.1, seed=1))
                rows.append(Row("dropout", f"fwd {shape}", name, _name(dtype), ms=ms,
                                gbps=2 * x.numel() * elt / ms / 1e6, note=f"p=0.1, {tuple(x.shape)}"))
    return rows


#: node budgets of the timed training epochs: the demo's (a CPU-sized step) and GPU-sized ones
TRAINING_BUDGETS = (MAX_NODES, 16384, 65536)
#: DataLoader workers building the batches on a GPU machine: in the training process a batch of
#: 16,384 nodes takes about 6 ms to build (this repository's CPU), longer than a GPU step of
#: the demo model, so the GPU would wait for it
GPU_LOADER_WORKERS = max(1, min(8, (os.cpu_count() or 2) - 2))


def training_rows(device, *, budgets=TRAINING_BUDGETS, train_limit: Optional[int] = None,
                  reference_steps: int = BASELINE_STEPS) -> list[Row]:
    """Training throughput on the embedded default latency set, measured as the demo measures
    it (``demo.reference_rate``, ``demo.packed_rate``): the reference design's loop against
    ours at each node budget (the backends dispatch as in training). graphs/s in the note,
    with ours as a multiple of the reference. ``train_limit``: the first that many training
    networks only (a quick run)."""
    from nnformer_fast.data.default import load_default_latency_set

    train_set, _ = load_default_latency_set().split_in_domain(test_fraction=0.2, seed=0)
    if train_limit is not None:
        train_set = train_set.subset(range(min(train_limit, len(train_set))))
    ref = reference_rate(train_set, steps=reference_steps, device=device)
    rows = [Row("training", f"reference loop, {BASELINE_BATCH} graphs a step", "dense", "float32",
                note=f"{ref:.1f} graphs/s")]
    print(rows[-1], flush=True)  # each row as it comes: a lease cut short keeps them
    workers = GPU_LOADER_WORKERS if torch.device(device).type == "cuda" else 0
    runs = [(budget, "bf16") for budget in budgets]
    if torch.device(device).type == "cuda":  # fp16 + GradScaler trains on a GPU only: run it once
        runs.append((budgets[-1], "fp16"))
    for budget, precision in runs:
        rate = packed_rate(train_set, max_nodes=budget, device=str(device), num_workers=workers,
                           precision=precision)
        rows.append(Row("training", f"packed, {budget} nodes a step, {workers} loader workers", "ours",
                        {"bf16": "bfloat16", "fp16": "float16"}[precision],
                        note=f"{rate:.1f} graphs/s, {rate / ref:.1f}x the reference loop"))
        print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------------- report
def format_table(rows: list[Row]) -> str:
    """Markdown table; time relative to CUDA C++ on the same case, bandwidth relative to the copy."""
    native = {(r.op, r.case, r.dtype): r.ms for r in rows if r.backend == "native" and r.ms}
    copy = next((r.gbps for r in rows if r.op == "copy"), None)
    lines = ["| op | case | backend | dtype | ms | x CUDA C++ | GB/s | % of copy | ok | note |",
             "|---|---|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        base = native.get((r.op, r.case, r.dtype))
        cells = [r.op, r.case, r.backend, r.dtype,
                 "" if r.ms is None else f"{r.ms:.3f}",
                 "" if r.ms is None or base is None else f"{r.ms / base:.2f}",
                 "" if r.gbps is None else f"{r.gbps:.0f}",
                 "" if r.gbps is None or not copy or r.op == "copy" else f"{100 * r.gbps / copy:.0f}%",
                 "" if r.ok is None else ("yes" if r.ok else "**NO**"), r.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recommend(rows: list[Row]) -> dict[str, tuple[tuple, str]]:
    """Per op of ``CUDA_PREFERENCE``: (order, reason). CUDA C++ and Triton are ordered by the
    geometric mean over the timed cases of Triton's time / CUDA C++'s time; a backend that
    failed a check for the op, or was not timed, goes second. torch stays last."""
    failed = {(r.op, r.backend) for r in rows if r.ok is False}
    result = {}
    for op in CUDA_PREFERENCE:
        times = defaultdict(dict)
        for r in rows:
            if r.op == op and r.ms is not None:
                times[r.backend][r.case, r.dtype] = r.ms
        common = times["native"].keys() & times["triton"].keys()
        bad = [name for name in KERNEL_BACKENDS if (op, name) in failed]
        if bad or not common:
            first = "triton" if bad == ["native"] and times["triton"] else "native"
            why = f"failed a check: {', '.join(bad)}" if bad else "not timed on both"
        else:
            ratio = math.exp(statistics.fmean(math.log(times["triton"][c] / times["native"][c]) for c in common))
            first = "triton" if ratio < 1.0 else "native"
            why = f"triton / native time {ratio:.2f} (geometric mean of {len(common)} cases)"
        result[op] = ((first, "native" if first == "triton" else "triton", "torch"), why)
    return result


def format_preference(recommended: dict, card: str) -> str:
    """``CUDA_PREFERENCE`` as Python source, to paste into nnformer_fast/ops/backends.py."""
    lines = [f"#: CUDA backends per op, fastest first: chosen by measured speed on {card} (benchmarks/RESULTS.md).",
             "CUDA_PREFERENCE: dict[str, tuple] = {"]
    for op, (order, why) in recommended.items():
        names = ", ".join(f'"{name}"' for name in order)
        lines.append(f'    "{op}": ({names}),  # {why}')
    return "\n".join(lines + ["}"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    build_error = build_if_needed(args.no_build)

    print("build:", nnformer_fast.build_info())
    print("backends:", nnformer_fast.ops.backends())
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    device = torch.device("cuda")
    card = torch.cuda.get_device_name()
    print(f"device: {card}, torch {torch.__version__}", flush=True)

    rows = [] if build_error is None else [Row("-", "CUDA extension build", "native", "-", ok=False, note=build_error)]
    start = time.perf_counter()

    def section(name: str, make_rows: Callable[[], list]) -> None:
        """Add a section's rows and print the table so far: a failing section, or a run cut
        short by the lease, keeps what came before."""
        try:
            rows.extend(make_rows())
        except Exception as exc:
            rows.append(Row(name, "section failed", "-", "-", ok=False, note=f"{type(exc).__name__}: {exc}"[:400]))
        print(f"\n{name}: done after {time.perf_counter() - start:.0f} s\n{format_table(rows)}", flush=True)

    probe = torch.zeros(1, device=device)
    for name in KERNEL_BACKENDS:
        reasons = _REGISTRY[name].reasons("dropout", probe) if name in _REGISTRY else ["not registered"]
        if reasons:
            rows.append(Row("-", "loads on CUDA", name, "-", ok=False, note="; ".join(reasons)))
            continue

        def checks(name=name):
            with first_triton_configs():
                return correctness_rows(name, device)
        section(f"correctness, {name}", checks)
    section("models", lambda: model_rows(device))
    section("kernel timings", lambda: [copy_row(device, bench), *timing_rows(device, bench)])
    section("training", lambda: training_rows(device))
    print()
    print(format_preference(recommend(rows), card))
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
