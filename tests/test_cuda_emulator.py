"""The CUDA emulator of tests/cuda_emulator, which runs the CUDA kernels in the op harness of
tests/test_ops.py (backend ``cuda_emulated``): it builds wherever nvcc is found, and it reports
the warp-level misuse that a GPU would leave undefined."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys

import pytest
import torch
from cuda_emulator import ASAN_VAR, HERE, NAME, compile_emulated, ensure_registered

from nnformer_fast.ops.backends import _REGISTRY

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found (the CUDA headers)")

_LANE_SUMS = r"""
#include "cuda/common.cuh"

// out[0]: warp sums; out[1]: sums over groups of 8 lanes; out[2]: sums across those groups.
__global__ void sum_over_lanes(float* out, int exited_lane) {
  if (static_cast<int>(threadIdx.x) == exited_lane) return;
  const float x = static_cast<float>(threadIdx.x);
  out[threadIdx.x] = nnff::cuda::group_sum<32>(x);
  out[64 + threadIdx.x] = nnff::cuda::group_sum<8>(x);
  out[128 + threadIdx.x] = nnff::cuda::across_groups_sum<8>(x);
}

extern "C" long run(float* out, int exited_lane) {
  const long before = nnff_emu::errors.load();
  NNFF_LAUNCH(1, 64, nullptr, sum_over_lanes)(out, exited_lane);
  return nnff_emu::errors.load() - before;
}
"""


def test_the_cuda_kernels_build_for_the_emulator():
    assert ensure_registered() is None
    assert _REGISTRY[NAME].load_error is None, _REGISTRY[NAME].load_error


def test_the_emulator_shuffles_like_a_warp_and_reports_exited_lanes(tmp_path):
    source = tmp_path / "lane_sums.cu"
    source.write_text(_LANE_SUMS)
    lib = ctypes.CDLL(str(compile_emulated([source], tmp_path / "liblane_sums.so")))
    out = torch.zeros(3, 64)
    assert lib.run(ctypes.c_void_p(out.data_ptr()), -1) == 0
    lane = torch.arange(64.0)
    # every lane of each warp holds its warp's sum: 0 + ... + 31, and 32 + ... + 63
    assert torch.equal(out[0], torch.tensor([496.0] * 32 + [1520.0] * 32))
    # groups of 8 lanes: lanes 8g..8g+7 hold 64g + 28; across them lane l holds the sum of
    # the lanes of its warp with the same l % 8
    assert torch.equal(out[1], (lane // 8) * 64 + 28)
    warp = (lane // 32) * 32
    assert torch.equal(out[2], 4 * (warp + lane % 8) + 48)
    # lane 5 returned before the shuffles: undefined on a GPU, an error here
    assert lib.run(ctypes.c_void_p(out.data_ptr()), 5) > 0


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)],
                         ids=["float64", "float32", "bfloat16"])
def test_misaligned_rows_take_the_scalar_loads(dtype, tol, monkeypatch, capfd):
    """q, k, v and the gradient one element into their buffers: contiguous but not 16-byte
    aligned, where a vector load faults on a GPU. The emulator is built with UBSan's alignment
    check, which reports any such load; the results match aligned copies (up to summation
    order: the scalar path splits the head dim across lanes differently)."""
    from nnformer_fast.ops import dag_attention
    from nnformer_fast.ops.backends import ENV_VAR
    from nnformer_fast.testing import assert_close, random_batch

    assert ensure_registered() is None
    monkeypatch.setenv(ENV_VAR, NAME)
    graph = random_batch([6, 9], avg_degree=2.0, seed=2, global_token=True)
    shape = (graph.num_nodes, 4, 64)

    def shifted(t):
        view = torch.empty(t.numel() + 1, dtype=t.dtype)[1:].view(shape)
        view.copy_(t)
        return view

    gen = torch.Generator().manual_seed(0)
    aligned = [torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(4)]
    results = []
    for q, k, v, grad in (aligned, [shifted(t) for t in aligned]):
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = dag_attention(*leaves, graph, dropout_p=0.1, seed=3)
        results.append([out, *torch.autograd.grad(out, leaves, grad)])
    assert "misaligned" not in capfd.readouterr().err
    for name, a, b in zip(("out", "dq", "dk", "dv"), *results):
        assert_close(a, b, atol=tol, rtol=tol, name=name)


def _emulated_and_float64(op, inputs, grad, monkeypatch):
    """op(*leaves) and the gradients of the leaves on ``cuda_emulated``, then on the torch
    backend from the same values in float64."""
    from nnformer_fast.ops.backends import ENV_VAR

    results = []
    for backend, dtype in ((NAME, None), ("torch", torch.float64)):
        monkeypatch.setenv(ENV_VAR, backend)
        leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in inputs]
        out = op(*leaves)
        results.append([out, *torch.autograd.grad(out, leaves, grad.to(out.dtype))])
    return results


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 4e-3)],
                         ids=["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("head_dim", [8, 40, 128, 256])
@pytest.mark.parametrize("packed", [False, True], ids=["separate", "packed_qkv"])
def test_attention_lane_groups(head_dim, dtype, tol, packed, monkeypatch):
    """Each lanes-per-row width (8, 16 and 32 lanes for head dims up to 64, 128 and 256) with
    16-byte loads (fp32, bf16, fp16), on separate q, k, v and on the thirds of one packed qkv
    (rows 3·H·Dh apart). A global token's long neighbour list spreads over all groups of its
    warp, short lists leave groups idle, the one-node graph's rows are empty; dropout on; 12
    heads (3 a relation)."""
    from nnformer_fast.ops import dag_attention, dag_attention_qkv
    from nnformer_fast.testing import assert_close, random_batch

    assert ensure_registered() is None
    graph = random_batch([5, 13, 1], avg_degree=3.0, seed=4, global_token=True)
    gen = torch.Generator().manual_seed(head_dim)
    qkv = torch.randn(graph.num_nodes, 3, 12, head_dim, generator=gen, dtype=torch.float64).to(dtype)
    grad = torch.randn(graph.num_nodes, 12, head_dim, generator=gen, dtype=torch.float64)

    def attention(t):
        if packed:
            return dag_attention_qkv(t, graph, dropout_p=0.2, seed=5)
        return dag_attention(*t.unbind(1), graph, dropout_p=0.2, seed=5)

    ours, expected = _emulated_and_float64(attention, [qkv], grad, monkeypatch)
    for name, a, b in zip(("out", "dqkv"), ours, expected):
        assert a.dtype == dtype
        assert_close(a.double(), b, atol=tol, rtol=tol, name=f"{name}, head dim {head_dim}")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 4e-3)],
                         ids=["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("width", [2, 6, 48, 2056, 2060, 2064])
def test_bigin_row_widths(width, dtype, tol, monkeypatch):
    """Rows of 1 to 256 threads, and rows wider than a block (a thread takes several vectors);
    16-byte vectors where each half of a row is whole vectors (48 and 2064 in both dtypes, 2056 in
    float32), one element per thread otherwise."""
    from nnformer_fast.ops import bigin
    from nnformer_fast.testing import assert_close, random_batch

    assert ensure_registered() is None
    graph = random_batch([5, 13, 1], avg_degree=3.0, seed=4, global_token=True)
    gen = torch.Generator().manual_seed(width)
    h, g, grad = (torch.randn(graph.num_nodes, width, generator=gen, dtype=torch.float64) for _ in range(3))
    ours, expected = _emulated_and_float64(lambda h, g: bigin(h, g, graph, act="gelu"),
                                           [h.to(dtype), g.to(dtype)], grad, monkeypatch)
    for name, a, b in zip(("y", "dh", "dg"), ours, expected):
        assert a.dtype == dtype
        assert_close(a.double(), b, atol=tol, rtol=tol, name=f"{name}, width {width}")


def test_gpu_check_correctness_pass_on_the_emulated_kernels():
    """The correctness pass that benchmarks/gpu_check.py runs on the GPU, here on the same CUDA
    kernels emulated: every dtype, attention also through the packed-qkv call, bigin, dropout."""
    import importlib
    import sys
    from pathlib import Path

    assert ensure_registered() is None
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        gpu_check = importlib.import_module("gpu_check")
    finally:
        sys.path.pop(0)
    rows = gpu_check.correctness_rows(NAME, "cpu", ["diamond", "global_tokens"], past_2_32=False)
    assert {r.case for r in rows if r.op == "dag_attention"} == {
        "vs reference, graph families", "vs reference, packed qkv, graph families"}
    assert len(rows) == 4 * len(gpu_check.DTYPES) and all(r.ok for r in rows), [r for r in rows if not r.ok]


_OUT_OF_BOUNDS = r"""
#include "cuda/common.cuh"

__global__ void read_one_past(const float* x, float* y, int n) { y[threadIdx.x] = x[threadIdx.x + n - 31]; }

extern "C" void run(const float* x, float* y, int n) { NNFF_LAUNCH(1, 32, nullptr, read_one_past)(x, y, n); }
"""


def _libasan() -> str:
    """Path of gcc's libasan, or "" when there is none."""
    try:
        path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
    return path if os.path.isabs(path) and os.path.exists(path) else ""


def _run_under_asan(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` in the repository with libasan preloaded and the emulator built with it."""
    env = {**os.environ, ASAN_VAR: "1", "LD_PRELOAD": _libasan(),
           "ASAN_OPTIONS": "detect_leaks=0:verify_asan_link_order=0"}
    return subprocess.run([sys.executable, "-c", code], cwd=HERE.parents[1], env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.skipif(not _libasan(), reason="gcc's libasan not found")
def test_kernels_stay_in_bounds_under_address_sanitizer(tmp_path):
    """The lane-group and row-width cases above, and the gpu_check correctness pass, with the
    emulated kernels built with AddressSanitizer (in a child process that preloads it): no read or
    write outside the tensors. A planted read one element past a buffer is reported."""
    tests = "tests/test_cuda_emulator.py"
    result = _run_under_asan(
        "import sys, pytest; sys.exit(pytest.main(['-q', '-x', '-p', 'no:cacheprovider', "
        f"'{tests}', '-k', 'lane_groups or row_widths or gpu_check_correctness']))")
    assert result.returncode == 0 and "ERROR: AddressSanitizer" not in result.stderr, result.stderr[-3000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout, result.stdout[-2000:]

    source = tmp_path / "out_of_bounds.cu"
    source.write_text(_OUT_OF_BOUNDS)
    planted = _run_under_asan(
        "import ctypes, sys, torch; sys.path.insert(0, 'tests')\n"
        "from pathlib import Path\nfrom cuda_emulator import compile_emulated\n"
        f"lib = ctypes.CDLL(str(compile_emulated([Path('{source}')], Path('{tmp_path}') / 'liboob.so')))\n"
        "x, y = torch.zeros(64), torch.zeros(32)\n"
        "lib.run(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()), ctypes.c_int(64))")
    assert "heap-buffer-overflow" in planted.stderr, planted.stderr[-3000:]


def test_attention_launchers_refuse_2_32_pairs():
    """The kernels split a warp's (node, head) pair index in 32 bits: 2^32 pairs or more are
    refused (cudaErrorInvalidValue = 1) before any memory is touched (null pointers here)."""
    import cuda_emulator

    assert ensure_registered() is None
    n, heads, dh = 2**30, 4, 8
    null = 0
    with pytest.raises(RuntimeError, match="dag_attention_fwd returned 1 "):
        cuda_emulator.launchers("dag_attention_fwd", 0, null, null, null, heads * dh, null, null, null, null,
                                n, heads, dh, 1.0, 0.0, 0)
    with pytest.raises(RuntimeError, match="dag_attention_bwd returned 1 "):
        cuda_emulator.launchers("dag_attention_bwd", 0, null, null, null, null, heads * dh, null, null, null,
                                null, 0, null, null, null, null, n, heads, dh, 1.0, 0.0, 0)
