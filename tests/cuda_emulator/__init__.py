"""The CUDA kernels of ``csrc/cuda``, run on the CPU by a warp emulator, as the test-only backend
``cuda_emulated``: the op harness of tests/test_ops.py runs them like every other backend.

``build`` compiles the unchanged ``.cu`` sources as host C++ with ``emulator.h`` included first
(``nvcc -x c++``: nvcc only supplies the CUDA headers) and ``launchers.cpp``, the C entry points
of the launchers, into one shared library, with UBSan's alignment check: a misaligned vector
load, which faults on a GPU, is reported on stderr. The glue below is what ``csrc/cuda_ops.cpp`` does on a
GPU: allocate outputs and workspaces, pass raw pointers, and attach the backward launchers as
autograd. Emulated warps are slow (32 threads each): meant for the small graph families.
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from nnformer_fast.graph import GraphBatch
from nnformer_fast.ops.backends import Backend, register
from nnformer_fast.ops.reference import add_biases

NAME = "cuda_emulated"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
_ACTS = {"relu": 0, "leaky_relu": 1, "gelu": 2, "square_relu": 3}


#: Set to 1, the emulator builds also carry AddressSanitizer: out-of-bounds reads and writes of
#: the kernels abort the process, which must then preload libasan (LD_PRELOAD; see
#: tests/test_cuda_emulator.py, which runs such a child process).
ASAN_VAR = "NNFF_EMULATOR_ASAN"


def compile_emulated(sources: list, lib: Path) -> Path:
    """Compile CUDA sources (and C++ beside them) for the emulator into the shared library ``lib``."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (it supplies the CUDA headers)")
    asan = os.environ.get(ASAN_VAR) == "1"
    sanitizers = "-fsanitize=address,-fsanitize=alignment,-fno-omit-frame-pointer" if asan else "-fsanitize=alignment"
    subprocess.run([nvcc, "-x", "c++", "-std=c++20", "-O1", "-shared", "-Xcompiler", f"-fPIC,{sanitizers}",
                    "-Xlinker", "-lasan,-lubsan" if asan else "-lubsan",
                    "-include", str(HERE / "emulator.h"), f"-I{ROOT / 'csrc'}", *map(str, sources), "-o", str(lib)],
                   check=True, capture_output=True, text=True)
    return lib


def build(out_dir: Path) -> Path:
    """Compile the kernels of csrc/cuda and their C entry points into ``out_dir``."""
    sources = sorted((ROOT / "csrc" / "cuda").glob("*.cu")) + [HERE / "launchers.cpp"]
    return compile_emulated(sources, out_dir / "libnnff_cuda_emulated.so")


class _Kernels:
    """The launchers of one built library; every call checks the return code and the emulator's
    error count (a shuffle with exited lanes, say)."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        self.lib.nnff_emu_errors.restype = ctypes.c_long

    def __call__(self, name: str, *args) -> None:
        before = self.lib.nnff_emu_errors()
        converted = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, Tensor)
                     else ctypes.c_double(a) if isinstance(a, float) else ctypes.c_int64(a) for a in args]
        rc = getattr(self.lib, f"nnff_emu_{name}")(*converted)
        errors = self.lib.nnff_emu_errors() - before
        if rc != 0 or errors:
            raise RuntimeError(f"cuda emulator: {name} returned {rc} with {errors} emulator errors")


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _backend(kernels: _Kernels) -> Backend:
    def attention_fwd(q, k, v, graph, scale, dropout_p, seed):
        """q, k, v: (N, H, Dh) with rows q.stride(0) apart (separate tensors or thirds of one qkv)."""
        n, heads, dh = q.shape
        out = torch.empty(n, heads, dh, dtype=q.dtype)
        lse = torch.empty(n, heads, dtype=_acc(q.dtype))
        kernels("dag_attention_fwd", _DTYPES[q.dtype], q, k, v, q.stride(0), graph.rel_rowptr, graph.rel_col,
                out, lse, n, heads, dh, scale, dropout_p, seed)
        return out, lse

    def attention_bwd(dout, q, k, v, lse, graph, scale, dropout_p, seed, dq, dk, dv):
        """Writes dq, dk, dv (laid out like q, k, v)."""
        n, heads, dh = q.shape
        nnz = graph.rel_col.numel()
        workspace = torch.empty(2 * nnz * (heads // 4), dtype=lse.dtype)
        kernels("dag_attention_bwd", _DTYPES[q.dtype], dout.contiguous(), q, k, v, q.stride(0), lse,
                graph.rel_rowptr, graph.rel_col, graph.rel_tperm, nnz, dq, dk, dv, workspace, n, heads, dh,
                scale, dropout_p, seed)

    class Attention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, graph, *args):
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            out, lse = attention_fwd(q, k, v, graph, *args)
            ctx.save_for_backward(q, k, v, lse)
            ctx.graph, ctx.args = graph, args
            return out

        @staticmethod
        def backward(ctx, dout):
            q, k, v, lse = ctx.saved_tensors
            dq, dk, dv = (torch.empty_like(q) for _ in range(3))
            attention_bwd(dout, q, k, v, lse, ctx.graph, *ctx.args, dq, dk, dv)
            return dq, dk, dv, None, None, None, None

    class PackedAttention(torch.autograd.Function):
        """q, k, v read in place from one (N, 3, H, Dh) qkv; the gradient is one dqkv."""

        @staticmethod
        def forward(ctx, qkv, graph, *args):
            qkv = qkv.contiguous()
            out, lse = attention_fwd(*qkv.unbind(1), graph, *args)
            ctx.save_for_backward(qkv, lse)
            ctx.graph, ctx.args = graph, args
            return out

        @staticmethod
        def backward(ctx, dout):
            qkv, lse = ctx.saved_tensors
            dqkv = torch.empty_like(qkv)
            attention_bwd(dout, *qkv.unbind(1), lse, ctx.graph, *ctx.args, *dqkv.unbind(1))
            return dqkv, None, None, None, None

    class Bigin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, g, graph, act):
            h, g = h.contiguous(), g.contiguous()
            y = torch.empty_like(h)
            csr = (graph.adj_rowptr, graph.adj_col, graph.adjt_rowptr, graph.adjt_col)
            kernels("bigin_fwd", _DTYPES[h.dtype], h, g, *csr, y, h.shape[0], h.shape[1], _ACTS[act])
            ctx.save_for_backward(h, g)
            ctx.csr, ctx.act = csr, act
            return y

        @staticmethod
        def backward(ctx, dy):
            h, g = ctx.saved_tensors
            dh, dg = torch.empty_like(h), torch.empty_like(g)
            kernels("bigin_bwd", _DTYPES[h.dtype], dy.contiguous(), h, g, *ctx.csr, dh, dg, h.shape[0], h.shape[1],
                    _ACTS[ctx.act])
            return dh, dg, None, None

    class Dropout(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, p, seed):
            ctx.args = (p, seed)
            return Dropout.apply_kernel(x, p, seed)

        @staticmethod
        def backward(ctx, dy):
            return Dropout.apply_kernel(dy, *ctx.args), None, None

        @staticmethod
        def apply_kernel(x, p, seed):
            x = x.contiguous()
            y = torch.empty_like(x)
            kernels("dropout_fwd", _DTYPES[x.dtype], x, y, x.numel(), p, seed)
            return y

    def dag_attention(q: Tensor, k: Tensor, v: Tensor, graph: GraphBatch, *, dropout_p: float = 0.0,
                      scale: Optional[float] = None, seed: int = 0) -> Tensor:
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        return Attention.apply(q, k, v, graph, scale, float(dropout_p), int(seed))

    def dag_attention_qkv(qkv: Tensor, graph: GraphBatch, *, dropout_p: float = 0.0, scale: Optional[float] = None,
                          seed: int = 0) -> Tensor:
        scale = 1.0 / math.sqrt(qkv.shape[-1]) if scale is None else float(scale)
        return PackedAttention.apply(qkv, graph, scale, float(dropout_p), int(seed))

    def bigin(h: Tensor, g: Tensor, graph: GraphBatch, *, act: str = "relu", bias_h: Optional[Tensor] = None,
              bias_g: Optional[Tensor] = None) -> Tensor:
        h, g = add_biases(h, g, bias_h, bias_g)  # as on a GPU: the CUDA kernels take no biases
        return Bigin.apply(h, g, graph, act)

    def dropout(x: Tensor, p: float, *, seed: int = 0) -> Tensor:
        return Dropout.apply(x, float(p), int(seed))

    def unsupported(op: str, *tensors: Tensor) -> list:
        return [] if tensors[0].device.type == "cpu" else ["runs CPU tensors (the emulated GPU)"]

    return Backend(NAME, ops={"dag_attention": dag_attention, "dag_attention_qkv": dag_attention_qkv, "bigin": bigin,
                        "dropout": dropout},
                   unsupported=unsupported, preferred_on=())


#: The launchers of the build ``register_backend`` registered, for tests that call them directly:
#: ``launchers("dag_attention_fwd", *args)`` with the arguments of csrc/cuda/kernels.h, less the stream.
launchers: Optional[_Kernels] = None


def register_backend(out_dir: Path) -> Optional[str]:
    """Build and register ``cuda_emulated``; returns why it could not be, or None."""
    global launchers
    try:
        launchers = _Kernels(build(out_dir))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr[-2000:] if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        register(Backend(NAME, load_error=f"cuda emulator not built: {detail}"))
        return detail
    register(_backend(launchers))
    return None


@functools.cache
def ensure_registered() -> Optional[str]:
    """``register_backend`` once per process, into a temporary folder removed at exit. Test
    modules call it before they list the backends (the build takes a few seconds)."""
    out_dir = Path(tempfile.mkdtemp(prefix="nnff_cuda_emulated_"))
    atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    return register_backend(out_dir)
