"""GPU check of the kernel backends (CUDA C++ ``native`` and ``triton``), in one run and one table.

    python benchmarks/gpu_check.py [--no-build]

1. builds the extension with the CUDA kernels (``NNFF_CUDA=1 pip install --no-build-isolation
   --no-deps -e .``, for ``NNFF_CUDA_ARCHS``, default 90, at most ``BUILD_TIMEOUT_S``) unless
   ``nnformer_fast.build_info()`` already reports CUDA kernels; a failed build prints its error
   lines and the check goes on without them;
2. checks each kernel backend against the reference on the GPU, each in a child process (a
   memory fault poisons its process's CUDA context; a backend whose child dies, times out or
   leaves its device broken is marked unusable, and the timings and training go on without
   it; one that fails a check on numbers alone is still timed, and ranked second):
   dag_attention (also through the models' packed-qkv call) and bigin (forward + gradients
   over the graph families; fp32/fp64 against float64, fp16/bf16 by the flash-attention rule)
   and dropout (bit-exact with its gradient, and past 2**32 elements); and both models, forward
   and backward, against the same models on the CPU;
3. times every backend (native, triton, torch) and the dense formulation in bf16, the training
   default: dag_attention forward+backward (separate q, k, v and one packed qkv), bigin and
   dropout with their achieved memory bandwidth beside a device-to-device copy measured in the
   same run; a measurement that fails adds a failed row and the others still run;
4. times training on the embedded default latency set (issue 6): the reference design's loop
   (one graph at a time, fp32, dense, the demo's sample) against ours (packed bf16 epochs at
   the demo's node budget and at GPU-sized ones, batches built by DataLoader workers, rerun
   without workers if they fail; once more in fp16 with GradScaler, a path only a GPU runs),
   graphs/s and the ratio; past ``SKIP_AFTER_S`` the largest budget and fp16 are skipped;
5. prints each row as it comes and the table after each section (the last one is complete; a
   failing section adds a failed row and the others still run), and ``CUDA_PREFERENCE`` for
   ``nnformer_fast/ops/backends.py`` (per op, the faster of CUDA C++ and Triton first, a backend
   that failed or skipped its checks second) after the timings and at the end. SIGTERM (the
   lease's ``timeout``) prints the table so far and the preference, and exits 124.
Exit status 1 when a check fails. Meant to take < 5 minutes on one H100, most of it Triton's
first-call compilation and autotuning. On a lent device machine (a bare checkout, its own
torch), as one call: ``set -o pipefail; PYTHONUNBUFFERED=1 timeout 560 python3
benchmarks/gpu_check.py 2>&1 | tee $OUT/gpu_check.log``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

#: When the check started (before torch's import): kept across the re-exec after the build, so
#: the time guards below count from the start of the lease's ``timeout 560``.
T0 = float(os.environ.get("NNFF_GPU_CHECK_T0", time.time()))

import torch  # noqa: E402

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
#: the lease's ``timeout 560``; past ``SKIP_AFTER_S`` the least important training runs are skipped
BUDGET_S, SKIP_AFTER_S = 560, 420
#: the build's limit (a timed-out build is a failed one) and each correctness child's (at most)
BUILD_TIMEOUT_S, CORRECTNESS_TIMEOUT_S = 300, 240
BROKEN_DEVICE_EXIT = 3  # a correctness child whose device no longer runs a tiny op
#: rows of a backend that did not build or load on CUDA: it runs nothing
UNAVAILABLE = ("CUDA extension build", "loads on CUDA")
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


def elapsed() -> float:
    """Seconds since the check started (its first process, before the build)."""
    return time.time() - T0


def _describe(exc: BaseException) -> str:
    """The first line of ``exc``'s message (a check's AssertionError), else its type first."""
    first = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, AssertionError) and first:
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def torch_arch_list(archs: str) -> str:
    """``NNFF_CUDA_ARCHS`` as torch names them: "80;90a" -> "8.0;9.0a" (as CMakeLists.txt does)."""
    return re.sub(r"([0-9])([a-z]?)(;|$)", r".\1\2\3", archs)


def build_env(environ: dict) -> dict:
    """The build's environment: CUDA kernels for ``NNFF_CUDA_ARCHS`` (default 90) and torch's
    -gencode flags for the same list. CMakeLists.txt derives TORCH_CUDA_ARCH_LIST only when the
    environment has none, and an image may export a long one (a slower build, or old archs
    that nvcc 13 rejects)."""
    archs = environ.get("NNFF_CUDA_ARCHS", "90")
    return dict(environ, NNFF_CUDA="1", NNFF_CUDA_ARCHS=archs, TORCH_CUDA_ARCH_LIST=torch_arch_list(archs))


def run_build(cmd: list, env: dict, timeout: float) -> tuple[str, Optional[str]]:
    """Run ``cmd``; (its output, None) or (its output, why it failed). On timeout its whole
    process group is killed: pip's compilers too, which would hold the CPUs and the pipe."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        return log, f"timed out after {timeout:.0f} s"
    return log, None if proc.returncode == 0 else f"exit status {proc.returncode}"


def build_if_needed(skip: bool) -> Optional[str]:
    """Build the extension with the CUDA kernels and re-run this script on it. A failed build
    prints its error lines and the end of its log and returns the first error: the check goes
    on without the CUDA kernels."""
    if nnformer_fast.build_info()["cuda"] or skip:
        return None
    env = build_env(os.environ)
    print(f"building the CUDA extension for {env['NNFF_CUDA_ARCHS']} ...", flush=True)
    started = time.time()
    # --no-deps: the GPU machine reaches no package index, and its image has numpy and tqdm
    log, failure = run_build([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                              "--disable-pip-version-check", "-e", str(ROOT), "-q"], env, BUILD_TIMEOUT_S)
    took = time.time() - started
    if failure is not None:
        log = log.strip().splitlines() or ["(no output)"]
        errors = [line.strip() for line in log if re.search(r"error|fatal|FAILED", line, re.IGNORECASE)]
        print("\n".join([f"CUDA extension build FAILED ({failure}, {took:.0f} s); its error lines:", *errors[:40],
                         "its end:", *log[-15:]]), flush=True)
        return f"{failure}: {(errors or log)[0]}"[:300]
    print(f"CUDA extension built in {took:.0f} s", flush=True)
    # a fresh interpreter picks up the new extension; it keeps T0 (the time guards)
    os.environ["NNFF_GPU_CHECK_T0"] = str(T0)
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
        print(f"  {backend}: {family}", flush=True)  # where a crash happened
        graph = testing.family_batch(family).to(device)
        for dtype in DTYPES:
            for key, (check, fn) in checks.items():
                try:
                    worst[key, dtype] = max(worst[key, dtype], check(fn, graph, dtype))
                except Exception as exc:  # a kernel's error (a CUDA error, a refused launch) fails the check too
                    failures[key, dtype].append(f"{family}: {_describe(exc)}")
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
        except Exception as exc:
            rows.append(Row("dropout", case, backend, dtype, ok=False, note=_describe(exc)))
    return rows


def check_in_child(backend: str, device, families=None, *, past_2_32: bool = True,
                   timeout: float = CORRECTNESS_TIMEOUT_S) -> list[Row]:
    """``correctness_rows`` run by a child process (this script with ``--correctness``): a
    kernel's memory fault poisons the CUDA context of its process, which must not end the
    whole check. A child that dies, times out or ends with a broken device (a CUDA error that
    a check caught) adds a failed row and marks the backend unusable here (its
    ``load_error`` set, so neither the timings nor dispatch use it), and a row says so. A
    check that failed on numbers alone keeps the backend in the timings; ``recommend`` ranks
    it after the backends that passed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, __file__, "--correctness", backend, "--device", str(device), "--rows-out", str(out)]
        cmd += ["--families", ",".join(families)] if families else []
        cmd += [] if past_2_32 else ["--no-past-2-32"]
        sys.stdout.flush()
        try:
            code = subprocess.run(cmd, timeout=timeout).returncode
            death = (None if code == 0 else "a CUDA call failed after its checks" if code == BROKEN_DEVICE_EXIT
                     else f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}")
        except subprocess.TimeoutExpired:
            death = f"timed out after {timeout:.0f} s"
        rows = [Row(**r) for r in json.loads(out.read_text())] if out.exists() else []
    if death is not None or not rows:
        rows.append(Row("-", "correctness pass", backend, "-", ok=False,
                        note=f"its child process: {death or 'no rows'}"))
        failed = [r for r in rows if r.ok is False]
        first = failed[0]
        _REGISTRY[backend].load_error = (f"its correctness pass ended badly on this device ({len(failed)} failed "
                                         f"rows, the first: {first.op}, {first.case}: {first.note})")[:300]
        rows.append(Row("-", "not used after its correctness pass", backend, "-",
                        note="no timings; dispatch (models, training) takes the next backend"))
    return rows


def correctness_child(args) -> int:
    """The child of ``check_in_child``: its rows as JSON in ``args.rows_out``."""
    families = args.families.split(",") if args.families else None
    with first_triton_configs():
        rows = correctness_rows(args.correctness, args.device, families, past_2_32=not args.no_past_2_32)
    Path(args.rows_out).write_text(json.dumps([dataclasses.asdict(r) for r in rows]))
    return 0 if _device_still_works(args.device) else BROKEN_DEVICE_EXIT


def _device_still_works(device) -> bool:
    """Whether a tiny op still runs: after a kernel's memory fault every later CUDA call
    fails, though the check that met it was caught."""
    try:
        return torch.ones(2, device=device).sum().item() == 2.0
    except RuntimeError:
        return False


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
def _timed(op: str, case: str, backend: str, dtype: str, measure: Callable[[], tuple], note: str = "") -> Row:
    """A timing row from ``measure() -> (ms, GB/s or None)``; when it raises, a failed row
    naming the exception (the other timings still run)."""
    try:
        ms, gbps = measure()
    except Exception as exc:
        return Row(op, case, backend, dtype, ok=False, note=_describe(exc)[:300])
    return Row(op, case, backend, dtype, ms=ms, gbps=gbps, note=note)


def copy_row(device, bench: Callable, nbytes: int = 256 * 2**20) -> Row:
    """Bandwidth of a device-to-device copy of ``nbytes`` (bytes read + bytes written)."""
    def measure():
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        ms = bench(lambda: dst.copy_(src))
        return ms, 2 * nbytes / ms / 1e6
    return _timed("copy", f"{nbytes / 2**20:.0f} MiB", "torch", "float32", measure)


def timing_rows(device, bench: Callable, shapes: dict = SHAPES, dtype=torch.bfloat16) -> Iterator[Row]:
    """Timings of every backend that runs here and of the dense formulation (padded per
    graph), ``dtype`` inputs, one row at a time as measured: a measurement that fails gives a
    failed row and the others still run. GB/s counts the ideal traffic: each tensor read or
    written once."""
    for shape, (sizes, options, heads, dh) in shapes.items():
        try:
            yield from _shape_timings(device, bench, shape, sizes, options, heads, dh, dtype)
        except Exception as exc:  # the inputs (every measurement catches its own)
            yield Row("-", f"inputs of {shape}", "-", _name(dtype), ok=False, note=_describe(exc)[:300])


def _shape_timings(device, bench: Callable, shape: str, sizes, options, heads, dh, dtype) -> Iterator[Row]:
    """The rows of ``timing_rows`` for one shape; each measurement is called before its row is yielded."""
    elt, dt = torch.finfo(dtype).bits // 8, _name(dtype)
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
    for name, fn in steps.items():
        yield _timed("dag_attention", f"fwd+bwd {shape}", name, dt, lambda: (bench(fn), None), note)
    # the models' call: q, k, v as thirds of one qkv projection
    qkv = randn(n, 3, heads, dh, grad=True)
    for name in ("native", "triton", "torch"):
        if _runs(name, "dag_attention", q, k, v):
            op = packed_attention(name)

            def step():
                return _fwd_bwd(lambda x: op(x, graph, dropout_p=0.0, scale=None, seed=0), [qkv], go)
            yield _timed("dag_attention", f"fwd+bwd {shape}, packed qkv", name, dt, lambda: (bench(step), None), note)

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
        def forward():
            with torch.no_grad():
                ms = bench(fwd)
            return ms, (3 * n * m * elt + index_bytes) / ms / 1e6

        def backward():
            y = fwd()
            ms = bench(lambda: torch.autograd.grad(y, leaves, grad, retain_graph=True))
            return ms, (6 * n * m * elt + 2 * index_bytes) / ms / 1e6
        yield _timed("bigin", f"fwd {shape}", name, dt, forward, f"M={m}")
        yield _timed("bigin", f"bwd {shape}", name, dt, backward, f"M={m}")

    # dropout forward: reads x, writes y
    x = randn(n, heads * dh)
    for name in ("native", "triton", "torch"):
        if _runs(name, "dropout", x):
            op = _REGISTRY[name].ops["dropout"]

            def forward():
                ms = bench(lambda: op(x, 0.1, seed=1))
                return ms, 2 * x.numel() * elt / ms / 1e6
            yield _timed("dropout", f"fwd {shape}", name, dt, forward, f"p=0.1, {tuple(x.shape)}")


#: node budgets of the timed training epochs: the demo's (a CPU-sized step) and GPU-sized ones
TRAINING_BUDGETS = (MAX_NODES, 16384, 65536)
#: DataLoader workers building the batches on a GPU machine: in the training process a batch of
#: 16,384 nodes takes about 6 ms to build (this repository's CPU), longer than a GPU step of
#: the demo model, so the GPU would wait for it
GPU_LOADER_WORKERS = max(1, min(8, (os.cpu_count() or 2) - 2))


def training_rows(device, *, budgets=TRAINING_BUDGETS, train_limit: Optional[int] = None,
                  reference_steps: int = BASELINE_STEPS, workers: Optional[int] = None,
                  skip_reason: Callable[[], Optional[str]] = lambda: None) -> Iterator[Row]:
    """Training throughput on the embedded default latency set, measured as the demo measures
    it (``demo.reference_rate``, ``demo.packed_rate``): the reference design's loop against
    ours at each node budget (the backends dispatch as in training), one row at a time.
    graphs/s in the note, with ours as a multiple of the reference. ``train_limit``: the first
    that many training networks only (a quick run). ``workers``: DataLoader workers building
    the batches (default ``GPU_LOADER_WORKERS`` on CUDA, else 0); a run whose workers fail runs
    once more without. The least important runs (the largest of several budgets, fp16) are
    skipped, a row saying why, when ``skip_reason()`` gives a reason (the lease runs short)."""
    from nnformer_fast.data.default import load_default_latency_set

    train_set, _ = load_default_latency_set().split_in_domain(test_fraction=0.2, seed=0)
    if train_limit is not None:
        train_set = train_set.subset(range(min(train_limit, len(train_set))))
    ref = reference_rate(train_set, steps=reference_steps, device=device)
    yield Row("training", f"reference loop, {BASELINE_BATCH} graphs a step", "dense", "float32",
              note=f"{ref:.1f} graphs/s")
    cuda = torch.device(device).type == "cuda"
    if workers is None:
        workers = GPU_LOADER_WORKERS if cuda else 0
    runs = [(budget, "bf16") for budget in budgets]
    if cuda:  # fp16 + GradScaler trains on a GPU only: run it once
        runs.append((budgets[-1], "fp16"))
    for budget, precision in runs:
        dtype = {"bf16": "bfloat16", "fp16": "float16"}[precision]
        optional = precision == "fp16" or (len(budgets) > 1 and budget == budgets[-1])
        reason = skip_reason() if optional else None
        if reason is not None:
            yield Row("training", f"packed, {budget} nodes a step", "ours", dtype, note=f"skipped: {reason}")
            continue
        try:
            rate, used, retry = _packed_rate(train_set, workers, max_nodes=budget, device=str(device),
                                             precision=precision)
        except Exception as exc:
            yield Row("training", f"packed, {budget} nodes a step", "ours", dtype, ok=False,
                      note=_describe(exc)[:300])
            continue
        yield Row("training", f"packed, {budget} nodes a step, {used} loader workers", "ours", dtype,
                  note=f"{rate:.1f} graphs/s, {rate / ref:.1f}x the reference loop{retry}")


def _packed_rate(train_set, workers: int, **kwargs) -> tuple[float, int, str]:
    """``demo.packed_rate`` with ``workers`` DataLoader workers, once more without them when
    they fail: (graphs/s, the workers used, a note on the rerun or "")."""
    try:
        return packed_rate(train_set, num_workers=workers, **kwargs), workers, ""
    except Exception as exc:
        if workers == 0:
            raise
        why = _describe(exc)[:200]
        print(f"  {workers} loader workers failed ({why}): once more without", flush=True)
        return packed_rate(train_set, num_workers=0, **kwargs), 0, f"; rerun without workers, {workers} failed: {why}"


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


def _standing(rows: list[Row], op: str, backend: str) -> tuple[int, str]:
    """(rank, why) of a kernel backend for ``op``: 2 when it did not build or load on CUDA; 1
    when it failed a check of ``op`` or one of no op (its correctness pass crashed, timed out,
    or its section failed), or has no checked row for ``op`` (the pass never ran); else 0."""
    mine = [r for r in rows if r.backend == backend and r.ok is not None]
    if any(r.ok is False and r.case in UNAVAILABLE for r in mine):
        return 2, "did not build or load"
    if any(r.ok is False and (r.op == op or r.op not in CUDA_PREFERENCE) for r in mine):
        return 1, "failed a check"
    if not any(r.op == op for r in mine):
        return 1, "not checked"
    return 0, ""


def recommend(rows: list[Row]) -> dict[str, tuple[tuple, str]]:
    """Per op of ``CUDA_PREFERENCE``: (order, reason). A kernel backend that failed (or never
    passed) its checks goes after one that passed them, one that did not build or load last of
    the two (``_standing``); two that passed are ordered by the geometric mean over the cases
    timed for both of Triton's time / CUDA C++'s time, else CUDA C++ first. torch stays last."""
    result = {}
    for op in CUDA_PREFERENCE:
        times = defaultdict(dict)
        for r in rows:
            if r.op == op and r.ms is not None:
                times[r.backend][r.case, r.dtype] = r.ms
        common = times["native"].keys() & times["triton"].keys()
        standing = {name: _standing(rows, op, name) for name in KERNEL_BACKENDS}
        if any(rank for rank, _ in standing.values()) or not common:
            first = min(KERNEL_BACKENDS, key=lambda name: standing[name][0])  # a tie keeps native first
            why = "; ".join(f"{name} {why}" for name, (rank, why) in standing.items() if rank) or "not timed on both"
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


def run_section(rows: list[Row], name: str, make_rows: Callable[[], Iterable[Row]], backend: str = "-") -> None:
    """Add a section's rows to ``rows``, printing each as it comes, then the table so far. A
    failing section adds a failed row (charged to ``backend``) and keeps the rows before it."""
    try:
        for row in make_rows():
            rows.append(row)
            print(f"  {row}", flush=True)
    except Exception as exc:
        rows.append(Row(name, "section failed", backend, "-", ok=False, note=_describe(exc)[:400]))
    print(f"\n{name}: done after {elapsed():.0f} s\n{format_table(rows)}", flush=True)


def report_on_sigterm(rows: list[Row], card: str) -> None:
    """On SIGTERM (the lease's ``timeout``): print the table of ``rows`` so far and the
    preference, and exit 124, as ``timeout`` does."""
    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:  # a forked DataLoader worker inherits the handler
            os._exit(128 + signum)
        try:
            text = format_table(rows) + "\n\n" + format_preference(recommend(rows), card)
        except Exception as exc:
            text = f"(no table: {_describe(exc)})"
        text = f"\nSIGTERM after {elapsed():.0f} s; the table so far:\n{text}\n"
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        data = text.encode()
        while data:  # os.write: the handler may interrupt a print, and the buffered stream refuses re-entry
            data = data[os.write(sys.stdout.fileno(), data):]
        os._exit(124)

    signal.signal(signal.SIGTERM, handler)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-build", action="store_true")
    child = parser.add_argument_group("the correctness child process (check_in_child)")
    child.add_argument("--correctness", metavar="BACKEND")
    child.add_argument("--rows-out", metavar="PATH")
    child.add_argument("--device", default="cuda")
    child.add_argument("--families", metavar="A,B")
    child.add_argument("--no-past-2-32", action="store_true")
    args = parser.parse_args(argv)
    if args.correctness:
        return correctness_child(args)
    build_error = build_if_needed(args.no_build)

    print("build:", nnformer_fast.build_info())
    print("backends:", nnformer_fast.ops.backends())
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    card = torch.cuda.get_device_name()
    print(f"device: {card}, torch {torch.__version__}", flush=True)
    return check(torch.device("cuda"), card, build_error)


def check(device, card: str, build_error: Optional[str] = None) -> int:
    """The sections after the build, on ``device``: correctness (a child process per kernel
    backend), models, kernel timings, training; 1 when a check failed."""
    rows = [] if build_error is None else [Row("-", "CUDA extension build", "native", "-", ok=False, note=build_error)]
    report_on_sigterm(rows, card)
    probe = torch.zeros(1, device=device)
    for name in KERNEL_BACKENDS:
        reasons = _REGISTRY[name].reasons("dropout", probe) if name in _REGISTRY else ["not registered"]
        if reasons:
            rows.append(Row("-", "loads on CUDA", name, "-", ok=False, note="; ".join(reasons)))
            continue
        # what is left of the lease after the timings and some training
        timeout = max(30.0, min(CORRECTNESS_TIMEOUT_S, BUDGET_S - 150 - elapsed()))
        run_section(rows, f"correctness, {name}", lambda name=name: check_in_child(name, device, timeout=timeout),
                    backend=name)
    print("backends:", nnformer_fast.ops.backends())
    run_section(rows, "models", lambda: model_rows(device))

    def kernel_timings():
        yield copy_row(device, bench)
        yield from timing_rows(device, bench)
    run_section(rows, "kernel timings", kernel_timings)
    print("\n" + format_preference(recommend(rows), card), flush=True)

    def late() -> Optional[str]:
        return f"{elapsed():.0f} s of the lease's {BUDGET_S} s gone" if elapsed() > SKIP_AFTER_S else None
    run_section(rows, "training", lambda: training_rows(device, skip_reason=late))
    print()
    print(format_preference(recommend(rows), card))
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
