"""The CUDA emulator of tests/cuda_emulator, which runs the CUDA kernels in the op harness of
tests/test_ops.py (backend ``cuda_emulated``): it builds wherever nvcc is found, and it reports
the warp-level misuse that a GPU would leave undefined."""
from __future__ import annotations

import ctypes
import shutil

import pytest
import torch
from cuda_emulator import NAME, compile_emulated, ensure_registered

from nnformer_fast.ops.backends import _REGISTRY

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found (the CUDA headers)")

_WARP_SUM = r"""
#include "cuda/common.cuh"

__global__ void sum_over_lanes(float* out, int exited_lane) {
  if (static_cast<int>(threadIdx.x) == exited_lane) return;
  out[threadIdx.x] = nnff::cuda::warp_sum(static_cast<float>(threadIdx.x));
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
    source = tmp_path / "warp_sum.cu"
    source.write_text(_WARP_SUM)
    lib = ctypes.CDLL(str(compile_emulated([source], tmp_path / "libwarp_sum.so")))
    out = torch.zeros(64)
    assert lib.run(ctypes.c_void_p(out.data_ptr()), -1) == 0
    # every lane of each warp holds its warp's sum: 0 + ... + 31, and 32 + ... + 63
    assert torch.equal(out, torch.tensor([496.0] * 32 + [1520.0] * 32))
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
