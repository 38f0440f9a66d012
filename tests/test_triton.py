"""The Triton backend against the reference (float64 oracle), on the CPU interpreter in CI.

Runs with ``TRITON_INTERPRET=1`` set before ``nnformer_fast`` is imported (tests/conftest.py
does it when there is no GPU), or on CUDA. The interpreter is slow (its cost is per program
and per op), so shapes are small: Dh 8-12, 4 or 8 heads. The whole file stays under a minute
on two cores.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types

import pytest
import torch

if not torch.cuda.is_available():
    # only effective when nothing imported nnformer_fast before (conftest normally sets it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import nnformer_fast.ops as ops  # noqa: E402
import nnformer_fast.triton as tbackend  # noqa: E402
from nnformer_fast.ops import reference  # noqa: E402
from nnformer_fast.ops.backends import _REGISTRY, CPU_ONLY_OPS, CUDA_PREFERENCE, ENV_VAR, Backend, select  # noqa: E402
from nnformer_fast.testing import assert_close, family_batch, random_batch  # noqa: E402

if not tbackend.available:
    pytest.skip(f"triton backend unavailable: {tbackend.load_error}", allow_module_level=True)
if not tbackend.INTERPRET and not torch.cuda.is_available():
    pytest.skip("no GPU and TRITON_INTERPRET=1 was not set before nnformer_fast was imported",
                allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from nnformer_fast.triton import bigin as tbigin  # noqa: E402
from nnformer_fast.triton._common import _dropout_keep, dropout_threshold, seed_salt  # noqa: E402
from nnformer_fast.triton import dag_attention as tattn  # noqa: E402
from nnformer_fast.triton import dropout as tdropout  # noqa: E402

DEVICE = "cpu" if tbackend.INTERPRET else "cuda"


def _graph(name):
    return family_batch(name).to(DEVICE)


def _qkv(n, h, dh, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, h, dh, generator=gen, dtype=torch.float64).to(DEVICE, dtype).requires_grad_()
            for _ in range(3)]


def _hg(n, m, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, m, generator=gen, dtype=torch.float64).to(DEVICE, dtype).requires_grad_()
            for _ in range(2)]


# ------------------------------------------------------------------------------- dropout hash
@triton.jit
def _keep_kernel(ENTRY, OUT, n, head, num_heads, salt, threshold, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    e = tl.load(ENTRY + offs, mask=offs < n, other=0)
    tl.store(OUT + offs, _dropout_keep(e, head, num_heads, salt, threshold).to(tl.int8), mask=offs < n)


def test_dropout_hash_bit_exact():
    """The kernel-side hash equals ``reference.dropout_keep_mask`` on entries past 2**32 / H
    (where ``entry * H + h`` wraps) and on seeds whose salt has the top bit set."""
    entries = torch.tensor([0, 1, 2, 1000, 2**30 + 3, 2**32 // 8 + 1, 2**33 + 17, 2**40 + 12345], device=DEVICE)
    for seed in (0, 123, 2**31 + 1, -1):
        for p in (0.1, 0.5, 0.9):
            for head, heads in ((0, 8), (5, 8), (0, 1)):  # (0, 1): elementwise dropout's flat index
                out = torch.empty(entries.numel(), dtype=torch.int8, device=DEVICE)
                _keep_kernel[(1,)](entries, out, entries.numel(), head, heads, seed_salt(seed),
                                   dropout_threshold(p), BLOCK=8)
                ref = reference.dropout_keep_mask(seed, entries[:, None], torch.tensor([[head]], device=DEVICE),
                                                  heads, p)
                assert torch.equal(out.bool(), ref[:, 0]), (seed, p, head, heads)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_dropout_bit_exact_and_backward(dtype):
    """Output and gradient equal the reference bit for bit, on sizes around the block size
    (partial last blocks) and many seeds; element indices past 2**32 are covered by the hash
    test above (the kernel indexes in int64 and hashes ``e mod 2**32``)."""
    gen = torch.Generator().manual_seed(0)
    seeds = [0, -7, 2**31 + 1, 2**40 + 3] + torch.randint(0, 2**62, (12,), generator=gen).tolist()
    block = tdropout.BLOCK
    for n in (1, 999, block - 1, block + 3):
        x = torch.randn(n, generator=gen, dtype=torch.float64).to(DEVICE, dtype).requires_grad_()
        dy = torch.randn(n, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
        for i, seed in enumerate(seeds):
            p = (0.1, 0.5, 0.9, 1 / 3)[i % 4]
            y = tdropout.dropout(x, p, seed=seed)
            y_ref = reference.dropout(x, p, seed=seed)
            assert torch.equal(y, y_ref), (n, seed, p)
            (dx,) = torch.autograd.grad(y, x, dy)
            (dx_ref,) = torch.autograd.grad(y_ref, x, dy)
            assert torch.equal(dx, dx_ref), (n, seed, p)


# ------------------------------------------------------------------------------- launch configs
def _config_id(config) -> str:
    return ",".join(f"{k}={v}" for k, v in config.kwargs.items()) + f",w={config.num_warps}"


@pytest.mark.parametrize("config", tattn.ATTENTION_CONFIGS, ids=_config_id)
def test_every_attention_launch_config_matches_the_reference(config, monkeypatch):
    """The interpreter runs ``INTERPRET_CONFIG``; a GPU autotunes over ``ATTENTION_CONFIGS``.
    Each of those, forced, gives the reference's output and gradients with dropout, on lists
    shorter and longer than a block (global tokens make dense rows)."""
    for kernel in (tattn._fwd_kernel, tattn._bwd_dq_kernel, tattn._bwd_dkdv_kernel):
        monkeypatch.setattr(kernel, "configs", [config])
    graph = random_batch([1, 6, 13], avg_degree=2.0, seed=3, global_token=True).to(DEVICE)
    q, k, v = _qkv(graph.num_nodes, 4, 24, torch.float32)
    dy = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out = tattn.dag_attention(q, k, v, graph, dropout_p=0.2, seed=5)
    grads = torch.autograd.grad(out, (q, k, v), dy)
    ref = reference.dag_attention(q, k, v, graph, dropout_p=0.2, seed=5)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dy)
    for name, actual, expected in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads)):
        assert_close(actual, expected, atol=2e-5, rtol=2e-5, name=name)


@pytest.mark.parametrize("config", tbigin.BIGIN_CONFIGS, ids=_config_id)
def test_every_bigin_launch_config_matches_the_reference(config, monkeypatch):
    """As above for ``BIGIN_CONFIGS``: gelu forward and backward, a width that is not a
    multiple of any ``BLOCK_M`` and nodes with more parents than ``BLOCK_E``."""
    monkeypatch.setattr(tbigin._bigin_kernel, "configs", [config])
    graph = random_batch([1, 6, 13], avg_degree=3.0, seed=3).to(DEVICE)
    h, g = _hg(graph.num_nodes, 2 * 37, torch.float32)
    dy = torch.randn(h.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out = tbigin.bigin(h, g, graph, act="gelu")
    grads = torch.autograd.grad(out, (h, g), dy)
    ref = reference.bigin(h, g, graph, act="gelu")
    ref_grads = torch.autograd.grad(ref, (h, g), dy)
    for name, actual, expected in zip(("out", "dh", "dg"), (out, *grads), (ref, *ref_grads)):
        assert_close(actual, expected, atol=2e-5, rtol=2e-5, name=name)


# ------------------------------------------------------------------------------- registration
def test_forced_backend_and_public_ops(monkeypatch):
    graph = _graph("diamond")
    q, k, v = _qkv(graph.num_nodes, 4, 8, torch.float32)
    h, g = _hg(graph.num_nodes, 8, torch.float32)
    monkeypatch.setenv(ENV_VAR, "triton")
    assert select("dag_attention", q, k, v).name == "triton"
    assert select("bigin", h, g).name == "triton"
    assert select("dropout", h).name == "triton"
    assert_close(ops.dag_attention(q, k, v, graph), reference.dag_attention(q, k, v, graph), atol=2e-5, rtol=2e-5)
    assert_close(ops.bigin(h, g, graph), reference.bigin(h, g, graph), atol=2e-5, rtol=2e-5)
    assert torch.equal(ops.dropout(h, 0.3, seed=2), reference.dropout(h, 0.3, seed=2))
    # too large a head dim: the forced backend refuses with its reason
    big = torch.zeros(graph.num_nodes, 4, 300, device=DEVICE)
    with pytest.raises(RuntimeError, match="head dim 300"):
        ops.dag_attention(big, big, big, graph)


def test_cuda_order_is_per_op(monkeypatch):
    """Automatic selection on CUDA follows ``CUDA_PREFERENCE[op]``, falls through to the next
    backend that can run, and the environment variable still forces a backend. Fake backends
    and a stand-in for a CUDA tensor (selection reads only ``.device``) run it without a GPU."""
    on_cuda = types.SimpleNamespace(device=torch.device("cuda"))
    fake = {name: Backend(name, ops=dict.fromkeys(CUDA_PREFERENCE)) for name in ("native", "triton", "torch")}
    monkeypatch.setattr(importlib.import_module("nnformer_fast.ops.backends"), "_REGISTRY", fake)
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setitem(CUDA_PREFERENCE, "bigin", ("triton", "native", "torch"))
    monkeypatch.setitem(CUDA_PREFERENCE, "dropout", ("torch", "native", "triton"))
    assert [select(op, on_cuda).name for op in ("bigin", "dropout")] == ["triton", "torch"]
    assert select("dag_attention", on_cuda).name == CUDA_PREFERENCE["dag_attention"][0]
    fake["triton"] = Backend("triton", ops=dict.fromkeys(CUDA_PREFERENCE), unsupported=lambda op, *t: ["no"])
    assert select("bigin", on_cuda).name == "native"
    monkeypatch.setenv(ENV_VAR, "torch")
    assert select("bigin", on_cuda).name == "torch"


def test_cuda_preference_table_covers_every_op():
    """Every op of the torch backend but the CPU-only ones has a CUDA order over all three
    backends (a pasted table from benchmarks/gpu_check.py must keep that shape)."""
    assert set(CUDA_PREFERENCE) == set(_REGISTRY["torch"].ops) - set(CPU_ONLY_OPS)
    for op, order in CUDA_PREFERENCE.items():
        assert sorted(order) == ["native", "torch", "triton"], op


def test_never_chosen_automatically_on_cpu(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    x = torch.zeros(3, 4, 8)
    assert select("dag_attention", x, x, x).name != "triton"
    monkeypatch.setattr(tbackend, "INTERPRET", False)
    assert any("TRITON_INTERPRET" in r for r in _REGISTRY["triton"].reasons("dag_attention", x, x, x))


def test_opcheck_and_compile():
    """``torch.library.opcheck`` on every op (schema, fake, autograd registration) and a
    ``torch.compile(fullgraph=True)`` trace through all of them (aot_eager: no graph breaks)."""
    graph = _graph("diamond")
    q, k, v = _qkv(graph.num_nodes, 4, 8, torch.float32)
    h, g = _hg(graph.num_nodes, 8, torch.float32)
    tests = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(tattn.dag_attention_fwd,
                          (q, k, v, graph.rel_rowptr, graph.rel_col, graph.rel_tperm, 0.0, 0.35, 0),
                          test_utils=tests)
    packed = torch.stack((q, k, v), 1).detach().requires_grad_()
    torch.library.opcheck(tattn.dag_attention_qkv_fwd,
                          (packed, graph.rel_rowptr, graph.rel_col, graph.rel_tperm, 0.2, 0.35, 3),
                          test_utils=tests)
    torch.library.opcheck(tbigin.bigin_fwd, (h, g, graph.adj_rowptr, graph.adj_col, graph.adjt_rowptr,
                                             graph.adjt_col, "gelu"), test_utils=tests)
    torch.library.opcheck(tdropout.dropout_fwd, (h, 0.3, 7), test_utils=tests)

    def block(q, k, v, h, g):
        a = tattn.dag_attention(q, k, v, graph) + tattn.dag_attention_qkv(torch.stack((q, k, v), 1), graph)
        return a.sum() + tdropout.dropout(tbigin.bigin(h, g, graph, act="relu"), 0.3, seed=7).sum()

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    loss = compiled(q, k, v, h, g)
    loss.backward()
    assert q.grad is not None and g.grad is not None
    assert torch.allclose(loss, block(q, k, v, h, g), atol=1e-5)


def test_imports_without_triton():
    """With triton unimportable the package still imports and the backend says why."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "import nnformer_fast.ops as o\n"
            "print(o.backends()['triton'])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stderr
    assert "triton is not installed" in res.stdout


# ------------------------------------------------------------------------------- compiled for a GPU
def _without_interpreter(args: list, timeout: int) -> subprocess.CompletedProcess:
    """Run ``python args`` with TRITON_INTERPRET unset, so the real kernels are defined."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_every_kernel_and_launch_config_compiles_for_hopper():
    """The interpreter never compiles a kernel and runs one config per kernel: here every
    kernel is lowered to an sm_90 cubin with every autotune config at the training default, and
    with one config for the other dtypes and head dims (no GPU needed)."""
    res = _without_interpreter(["-m", "nnformer_fast.triton.compile_check", "--quick", "--jobs", "2"], timeout=900)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    for kernel in ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel", "_bigin_kernel", "_dropout_kernel"):
        compiled = [line for line in res.stdout.splitlines() if f".{kernel} " in line]
        configs = 1 if kernel == "_dropout_kernel" else len(tattn.ATTENTION_CONFIGS)
        assert len(compiled) >= configs, f"{kernel}: {len(compiled)} compiles\n{res.stdout[-3000:]}"


def test_compile_check_reports_what_only_a_gpu_rejects():
    """A global read by a kernel must be a constexpr on the GPU, not under the interpreter
    (the bug this check first found, in bigin's gelu): the check names the failing kernels."""
    code = ("import torch\n"
            "import nnformer_fast.triton.bigin as b\n"
            "from nnformer_fast.triton import compile_check as c\n"
            "b._SQRT1_2 = 0.7071067811865476\n"
            "for job in c.jobs_for(c.Case(torch.float32, 16, False)):\n"
            "    if job.kernel == '_bigin_kernel' and job.num_warps == 2:\n"
            "        try:\n"
            "            c.compile_job(job, 90)\n"
            "            print(job.name, job.constexprs['ACT'], 'ok')\n"
            "        except Exception:\n"
            "            print(job.name, job.constexprs['ACT'], 'FAILED')\n")
    res = _without_interpreter(["-c", code], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    gelu = [line for line in lines if line.startswith("bigin._bigin_kernel 3 ")]
    assert len(gelu) == 2 and all(line.endswith("FAILED") for line in gelu), res.stdout  # forward, backward
    others = [line for line in lines if line not in gelu]
    assert others and all(line.endswith("ok") for line in others), res.stdout


# ------------------------------------------------------------------------------- benchmarks/gpu_check.py
@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    try:
        return importlib.import_module("gpu_check")
    finally:
        sys.path.pop(0)


def test_gpu_check_rows_run_here(gpu_check):
    """The GPU check's row builders and table on this device (Triton interpreted on the CPU),
    with a stand-in timer that runs each step once: the code paths, not the numbers."""
    rows = gpu_check.correctness_rows("triton", DEVICE, ["diamond"], past_2_32=False)
    assert len(rows) == 4 * len(gpu_check.DTYPES) and all(r.ok for r in rows), [r for r in rows if not r.ok]

    def once(fn):
        fn()
        return 2.0

    rows.append(gpu_check.copy_row(DEVICE, once, nbytes=2**20))
    rows += gpu_check.timing_rows(DEVICE, once, {"tiny": ([5, 3, 7], dict(avg_degree=1.5, global_token=True), 4, 8)})
    timed = {(r.op, r.backend) for r in rows if r.ms is not None}
    assert {(op, name) for op in ("dag_attention", "bigin", "dropout") for name in ("triton", "torch")} <= timed
    assert {"triton", "torch"} <= {r.backend for r in rows if r.case == "fwd+bwd tiny, packed qkv"}
    assert {("dag_attention", "dense"), ("bigin", "dense"), ("copy", "torch")} <= timed
    assert gpu_check.format_table(rows).count("\n") == len(rows) + 1


def test_gpu_check_model_rows_run_here(gpu_check):
    """The models' device check runs its whole path here (CPU against CPU: equal)."""
    rows = gpu_check.model_rows("cpu")
    assert [r.op for r in rows] == ["model", "model"] and all(r.ok for r in rows), rows


def test_gpu_check_checks_correctness_on_the_first_triton_configs(gpu_check, monkeypatch):
    """The GPU check's correctness pass runs each autotuned kernel on its first config only
    (no autotuning over ten families and four dtypes), then restores every config."""
    kernels = {tattn._fwd_kernel: tattn.ATTENTION_CONFIGS, tbigin._bigin_kernel: tbigin.BIGIN_CONFIGS}
    for kernel, configs in kernels.items():
        monkeypatch.setattr(kernel, "configs", list(configs))
    with gpu_check.first_triton_configs():
        assert all(kernel.configs == configs[:1] for kernel, configs in kernels.items())
    assert all(kernel.configs == configs for kernel, configs in kernels.items())


def test_gpu_check_training_rows_run_here(gpu_check):
    """The GPU check's training comparison on the CPU, on a slice of the default set: one row
    for the reference loop, one per node budget for ours, each with its graphs/s (and ours
    with its multiple of the reference), measured by the same functions as the demo."""
    rows = list(gpu_check.training_rows("cpu", budgets=(512, 1024), train_limit=48, reference_steps=1))
    assert [(r.op, r.backend) for r in rows] == [("training", "dense"), ("training", "ours"), ("training", "ours")]
    ref = float(rows[0].note.split()[0])
    for r in rows[1:]:
        rate, ratio = float(r.note.split()[0]), float(r.note.split(", ")[1].split("x")[0])
        # all three printed to one decimal: the ratio's rounding plus what the rates' moves it
        slack = 0.05 + rate / ref * (0.05 / rate + 0.05 / ref) + 1e-9
        assert rate > 0 and ratio == pytest.approx(rate / ref, abs=slack)
    assert gpu_check.format_table(rows).count("\n") == len(rows) + 1


def test_gpu_check_recommendation(gpu_check):
    """Per op the faster kernel backend comes first, unless it failed a check; the printed table
    is Python that evaluates to the recommendation."""
    row, KERNELS = gpu_check.Row, gpu_check.KERNEL_BACKENDS
    times = {"dag_attention": (2.0, 1.0), "bigin": (1.0, 3.0), "dropout": (2.0, 1.0)}  # native, triton ms
    rows = [row(op, "vs reference", name, "float32", ok=True) for op in times for name in KERNELS]
    rows += [row(op, "a", name, "bfloat16", ms=ms) for op, pair in times.items() for name, ms in zip(KERNELS, pair)]
    rows.append(row("dropout", "bit-exact", "triton", "float16", ok=False))
    recommended = gpu_check.recommend(rows)
    orders = {op: order for op, (order, _) in recommended.items()}
    assert orders == {"dag_attention": ("triton", "native", "torch"), "bigin": ("native", "triton", "torch"),
                      "dropout": ("native", "triton", "torch")}
    namespace = {}
    exec(gpu_check.format_preference(recommended, "Some GPU"), namespace)
    assert namespace["CUDA_PREFERENCE"] == orders
    assert "| 0.50 |" in gpu_check.format_table(rows)  # Triton's time relative to CUDA C++
