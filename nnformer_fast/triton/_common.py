"""Shared pieces of the Triton backend: interpreter detection, the launch-config helper and
the counter-based dropout hash (bit-exact with :func:`nnformer_fast.ops.reference.dropout_keep_mask`).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

#: ``triton.jit`` reads TRITON_INTERPRET when a kernel is decorated, i.e. when this package is
#: imported; the value seen then decides for the whole process.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_MASK32 = 0xFFFFFFFF


def autotuned(configs: list, key: list, interpret_config: "triton.Config"):
    """``triton.autotune`` over ``configs`` on a GPU. Under the interpreter only
    ``interpret_config`` runs (a single config is never benchmarked): the interpreter's cost
    is per program and per op, not per element, so it wants few programs with big tiles."""
    return triton.autotune(configs=[interpret_config] if INTERPRET else configs, key=key)


def host_hash32(x: int) -> int:
    """lowbias32 on a Python int (the seed salt is hashed once on the host)."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def seed_salt(seed: int) -> int:
    """``hash32(seed)`` as a signed int32 bit pattern, so the kernel argument always has the
    same type (no recompilation per seed); the kernel bitcasts it back to uint32."""
    s = host_hash32(seed)
    return s - (1 << 32) if s >= (1 << 31) else s


def dropout_threshold(p: float) -> int:
    """Keep a weight when ``hash >> 8 >= threshold`` (the reference's ``int(p * 2**24)``)."""
    return int(p * (1 << 24))


def avg_degree_bucket(entries: int, rows: int) -> int:
    """Power-of-two bucket of the mean row length: an autotune key that changes rarely.
    Symbolic sizes (torch.compile with dynamic shapes) get a fixed bucket instead of a guard."""
    if not isinstance(entries, int) or not isinstance(rows, int):
        return 4
    mean = max(1, -(-entries // max(rows, 1)))
    return 1 << (mean - 1).bit_length()


def acc_dtype_for(dtype: torch.dtype):
    """Accumulator dtype: float64 for float64 inputs, else float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _hash32(x):
    """lowbias32 on uint32 (wrapping multiply, logical shifts)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _dropout_keep(entry, head, num_heads, salt, threshold):
    """Keep mask of the attention weights at relation entries ``entry`` (int64 tensor) for
    ``head``: ``hash32(((entry * H + head) mod 2**32) ^ salt) >> 8 >= threshold``."""
    # tl.cast also accepts ints that the compiler specialised to constexprs (e.g. 1)
    x = tl.cast(entry, tl.uint32) * tl.cast(num_heads, tl.uint32) + tl.cast(head, tl.uint32)
    x = x ^ tl.cast(salt, tl.uint32, bitcast=True)
    return (_hash32(x) >> 8) >= tl.cast(threshold, tl.uint32)


@triton.jit
def _cast_out(x, dtype: tl.constexpr):
    """``x.to(dtype)`` rounding to nearest-even everywhere. The GPU rounds fp32 -> bf16 to
    nearest-even, but the interpreter (triton 3.x) truncates; rounding the fp32 bits first
    makes the final cast exact on both, so interpreter tests see the GPU's numerics."""
    if dtype == tl.bfloat16:
        if x.dtype == tl.float32:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            x = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    return x.to(dtype)


def kernel_op(name: str, fake):
    """Register a launcher as the op ``name``.

    On a GPU: ``torch.library.triton_op`` (its body is the fake kernel, and ``torch.compile``
    sees the Triton kernels inside). Under the interpreter ``wrap_triton`` hands back the bare
    kernel, which would then run on fake tensors while tracing, so the launcher becomes an
    opaque ``torch.library.custom_op`` with the explicit ``fake`` instead; compiled graphs then
    call the interpreted kernels at run time.
    """
    def decorate(fn):
        if INTERPRET:
            op = torch.library.custom_op(name, mutates_args=())(fn)
            op.register_fake(fake)
            return op
        from torch.library import triton_op
        return triton_op(name, mutates_args=())(fn)
    return decorate
