"""Counter-based elementwise dropout in Triton: kernel, launcher and autograd.

Element ``e`` (flat row-major index) is kept when ``hash32((e mod 2**32) ^ hash32(seed)) >> 8
>= int(p * 2**24)`` (the attention-dropout hash of :mod:`._common` with one head) and scaled by
``1 / (1 - p)`` in float32 (float64 for float64 inputs); dropped elements are +0. Bit-exact
with :func:`nnformer_fast.ops.reference.dropout`. Nothing is saved: the backward pass is the
same op on the gradient.
"""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from ._common import INTERPRET, _cast_out, _dropout_keep, acc_dtype_for, dropout_threshold, kernel_op, seed_salt

__all__ = ["dropout", "dropout_fwd"]

# The interpreter's cost is per program: few programs with big blocks.
BLOCK = 1 << 14 if INTERPRET else 1024


@triton.jit
def _dropout_kernel(X, Y, n, salt, threshold, scale_bits, ACC: tl.constexpr, BLOCK: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < n
    # the scale arrives as float64 bits (a Python float argument would be rounded to float32)
    scale = scale_bits.to(tl.float64, bitcast=True).to(ACC)
    x = tl.load(X + e, mask=mask, other=0.0).to(ACC)
    y = tl.where(_dropout_keep(e, 0, 1, salt, threshold), x * scale, 0.0)
    tl.store(Y + e, _cast_out(y, Y.dtype.element_ty), mask=mask)


def _fwd_fake(x, p, seed):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@kernel_op("nnformer_fast_triton::dropout_fwd", _fwd_fake)
def dropout_fwd(x: Tensor, p: float, seed: int) -> Tensor:
    """x: any shape, fp16/bf16/fp32/fp64 (copied when not contiguous). Returns a contiguous
    tensor like x."""
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return y
    scale_bits = struct.unpack("<q", struct.pack("<d", 1.0 / (1.0 - p)))[0]
    wrap_triton(_dropout_kernel)[(triton.cdiv(n, BLOCK),)](
        x, y, n, seed_salt(seed), dropout_threshold(p), scale_bits, ACC=acc_dtype_for(x.dtype), BLOCK=BLOCK)
    return y


def _setup_context(ctx, inputs, output):
    _, ctx.p, ctx.seed = inputs


def _backward(ctx, grad):
    return dropout_fwd(grad, ctx.p, ctx.seed), None, None


dropout_fwd.register_autograd(_backward, setup_context=_setup_context)


def dropout(x: Tensor, p: float, *, seed: int = 0) -> Tensor:
    """Dropout on the Triton backend (signature of ``nnformer_fast.ops.dropout``). x: any shape,
    float16/bfloat16/float32/float64 on CUDA (or CPU under TRITON_INTERPRET=1)."""
    return dropout_fwd(x, float(p), int(seed))
