"""Bidirectional GIN aggregation (docs/DESIGN.md: bigin) in Triton, activation fused: forward, backward,
launchers and autograd.

``y = act(h + [A·g1, Aᵀ·g2])`` with ``g1, g2`` the two column halves of ``g``: row ``i`` adds
the sum of ``g1`` over its children (CSR ``adj``) and of ``g2`` over its parents (CSR
``adjt``). One kernel, :func:`_bigin_kernel`, does every pass: a program owns ``BLOCK_N``
nodes and ``BLOCK_M`` columns of one half, gathers the neighbour rows of that half in blocks of
``BLOCK_E`` neighbours (fp32 accumulation; fp64 for fp64 inputs), then

* forward: writes ``act(h + agg)``;
* backward, step 1: recomputes ``z = h + agg`` (nothing but the inputs is saved) and writes
  ``dz = dy * act'(z)``, which is also ``dh``;
* backward, step 2 (``HAS_X = False``, no activation): ``dg1 = Aᵀ·dz1`` and ``dg2 = A·dz2``,
  the same gather with the two adjacencies swapped (no atomics).

Activations: relu, leaky_relu (slope 0.01), gelu (exact erf), square_relu (``x·relu(x)``);
derivatives at 0 follow PyTorch autograd (relu' = 0, leaky' = 0.01, square_relu' = 0).

Autotuning (GPU only; the interpreter runs one config): ``BLOCK_N`` x ``BLOCK_M`` tiles and
``num_warps`` from ``BIGIN_CONFIGS``, keyed on the half width, the dtype and ``AVG_DEG``
(power-of-two bucket of the mean degree).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from ..graph import GraphBatch
from ..ops.checks import check_csr_indices
from ..ops.reference import add_biases
from ._common import _cast_out, acc_dtype_for, autotuned, avg_degree_bucket, kernel_op

__all__ = ["bigin", "bigin_fwd", "bigin_bwd", "ACT_CODES"]

#: activation name -> kernel code (0 is the identity, used by the dg gather)
ACT_CODES = {"relu": 1, "leaky_relu": 2, "gelu": 3, "square_relu": 4}

BIGIN_CONFIGS = [
    triton.Config({"BLOCK_N": 1, "BLOCK_M": 256, "BLOCK_E": 4}, num_warps=2),
    triton.Config({"BLOCK_N": 2, "BLOCK_M": 256, "BLOCK_E": 4}, num_warps=4),
    triton.Config({"BLOCK_N": 4, "BLOCK_M": 128, "BLOCK_E": 4}, num_warps=4),
    triton.Config({"BLOCK_N": 4, "BLOCK_M": 256, "BLOCK_E": 2}, num_warps=4),
    triton.Config({"BLOCK_N": 8, "BLOCK_M": 64, "BLOCK_E": 4}, num_warps=4),
    triton.Config({"BLOCK_N": 1, "BLOCK_M": 512, "BLOCK_E": 8}, num_warps=4),
]
INTERPRET_CONFIG = triton.Config({"BLOCK_N": 64, "BLOCK_M": 32, "BLOCK_E": 4})

# globals a kernel reads must be constexprs (the interpreter also takes plain floats; the GPU
# compiler does not)
_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _gather_sum(G, ROWPTR, COL, i, nmask, c, cmask, stride_g,
                ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    """Sum over each node's CSR row of the rows of ``G`` at columns ``c``: (BLOCK_N, BLOCK_M)."""
    start = tl.load(ROWPTR + i, mask=nmask, other=0)
    length = tl.load(ROWPTR + i + 1, mask=nmask, other=0) - start
    acc = tl.zeros([BLOCK_N, BLOCK_M], ACC)
    for off in range(0, tl.max(length, axis=0), BLOCK_E):
        ee = off + tl.arange(0, BLOCK_E)
        emask = ee[None, :] < length[:, None]
        nb = tl.load(COL + start[:, None] + ee[None, :], mask=emask, other=0)
        x = tl.load(G + nb[:, :, None] * stride_g + c[None, None, :],
                    mask=emask[:, :, None] & cmask[None, None, :], other=0.0)
        acc += tl.sum(x.to(ACC), axis=1)
    return acc


@autotuned(BIGIN_CONFIGS, ["HALF", "AVG_DEG"], INTERPRET_CONFIG)
@triton.jit
def _bigin_kernel(
    X, G, DY, OUT, ROWPTR1, COL1, ROWPTR2, COL2,
    N, HALF, stride_x, stride_g, stride_dy, stride_out, AVG_DEG,
    ACT: tl.constexpr, HAS_X: tl.constexpr, GRAD: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """OUT[:, :HALF] from G[:, :HALF] over CSR 1, OUT[:, HALF:] from G[:, HALF:] over CSR 2."""
    i = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = i < N
    blocks_per_half = tl.cdiv(HALF, BLOCK_M)
    pid_m = tl.program_id(1)
    second = pid_m >= blocks_per_half
    cb = pid_m - second.to(tl.int32) * blocks_per_half
    c_in = cb * BLOCK_M + tl.arange(0, BLOCK_M)
    cmask = c_in < HALF
    c = c_in + second.to(tl.int32) * HALF  # column in the full width
    if second:
        z = _gather_sum(G, ROWPTR2, COL2, i, nmask, c, cmask, stride_g, ACC, BLOCK_N, BLOCK_M, BLOCK_E)
    else:
        z = _gather_sum(G, ROWPTR1, COL1, i, nmask, c, cmask, stride_g, ACC, BLOCK_N, BLOCK_M, BLOCK_E)
    mask = nmask[:, None] & cmask[None, :]
    if HAS_X:
        z += tl.load(X + i[:, None] * stride_x + c[None, :], mask=mask, other=0.0).to(ACC)

    if GRAD:
        dy = tl.load(DY + i[:, None] * stride_dy + c[None, :], mask=mask, other=0.0).to(ACC)
        if ACT == 1:
            out = tl.where(z > 0, dy, 0.0)
        elif ACT == 2:
            out = tl.where(z > 0, dy, dy * 0.01)
        elif ACT == 3:
            cdf = 0.5 * (1.0 + tl.math.erf(z * _SQRT1_2))
            pdf = tl.exp(-0.5 * z * z) * _INV_SQRT_2PI
            out = dy * (cdf + z * pdf)
        elif ACT == 4:
            out = dy * 2.0 * tl.maximum(z, 0.0)
        else:
            out = dy
    else:
        if ACT == 1:
            out = tl.maximum(z, 0.0)
        elif ACT == 2:
            out = tl.where(z > 0, z, z * 0.01)
        elif ACT == 3:
            out = 0.5 * z * (1.0 + tl.math.erf(z * _SQRT1_2))
        elif ACT == 4:
            out = z * tl.maximum(z, 0.0)
        else:
            out = z
    tl.store(OUT + i[:, None] * stride_out + c[None, :], _cast_out(out, OUT.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------- launchers
def _rows_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _launch(x, g, dy, out, csr1, csr2, act_code: int, has_x: bool, grad: bool) -> None:
    n, m = g.shape
    half = m // 2
    if n == 0 or half == 0:
        return
    edges = csr1[1].shape[0] + csr2[1].shape[0]
    dummy = g  # unused pointer arguments still need a tensor
    wrap_triton(_bigin_kernel)[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), 2 * triton.cdiv(half, meta["BLOCK_M"]))](
        x if x is not None else dummy, g, dy if dy is not None else dummy, out,
        csr1[0], csr1[1], csr2[0], csr2[1],
        n, half,
        x.stride(0) if x is not None else 0, g.stride(0), dy.stride(0) if dy is not None else 0, out.stride(0),
        avg_degree_bucket(edges, 2 * n),
        ACT=act_code, HAS_X=has_x, GRAD=grad, ACC=acc_dtype_for(g.dtype),
    )


def _fwd_fake(h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, act):
    return h.new_empty(h.shape)


@kernel_op("nnformer_fast_triton::bigin_fwd", _fwd_fake)
def bigin_fwd(h: Tensor, g: Tensor, adj_rowptr: Tensor, adj_col: Tensor, adjt_rowptr: Tensor,
              adjt_col: Tensor, act: str) -> Tensor:
    """``act(h + [A·g1, Aᵀ·g2])``. h, g: (N, M) fp16/bf16/fp32/fp64, M even. Returns (N, M)
    in h's dtype."""
    h, g = _rows_contiguous(h), _rows_contiguous(g)
    out = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    _launch(h, g, None, out, (adj_rowptr, adj_col), (adjt_rowptr, adjt_col), ACT_CODES[act], True, False)
    return out


def _bwd_fake(grad_out, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, act):
    return h.new_empty(h.shape), h.new_empty(h.shape)


@kernel_op("nnformer_fast_triton::bigin_bwd", _bwd_fake)
def bigin_bwd(grad_out: Tensor, h: Tensor, g: Tensor, adj_rowptr: Tensor, adj_col: Tensor,
              adjt_rowptr: Tensor, adjt_col: Tensor, act: str) -> tuple[Tensor, Tensor]:
    """Gradients (dh, dg) of :func:`bigin_fwd`, each (N, M) in h's dtype."""
    h, g, grad_out = _rows_contiguous(h), _rows_contiguous(g), _rows_contiguous(grad_out)
    dh = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    dg = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    _launch(h, g, grad_out, dh, (adj_rowptr, adj_col), (adjt_rowptr, adjt_col), ACT_CODES[act], True, True)
    # dg1[j] = sum of dz1 over j's parents, dg2[j] = sum of dz2 over j's children
    _launch(None, dh, None, dg, (adjt_rowptr, adjt_col), (adj_rowptr, adj_col), 0, False, False)
    return dh, dg


def _setup_context(ctx, inputs, output):
    h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, act = inputs
    ctx.save_for_backward(h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col)
    ctx.act = act


def _backward(ctx, grad_out):
    h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col = ctx.saved_tensors
    # checked by the public op before the forward pass; a write the version counter misses
    # (``.numpy()``, ``.data``) may have changed them since
    check_csr_indices("bigin backward", h.device, h.shape[0], [("adj", adj_rowptr, adj_col, None, h.shape[0]),
                                                               ("adjt", adjt_rowptr, adjt_col, None, h.shape[0])])
    dh, dg = bigin_bwd(grad_out, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, ctx.act)
    return dh, dg, None, None, None, None, None


bigin_fwd.register_autograd(_backward, setup_context=_setup_context)


def bigin(h: Tensor, g: Tensor, graph: GraphBatch, *, act: str = "relu", bias_h: Optional[Tensor] = None,
          bias_g: Optional[Tensor] = None) -> Tensor:
    """Fused bidirectional GIN aggregation on the Triton backend (signature of
    ``nnformer_fast.ops.bigin``). h, g: (N, M) float16/bfloat16/float32/float64 on CUDA (or
    CPU under TRITON_INTERPRET=1), M even; the optional (M,) biases are added to h and g
    first. Returns (N, M) in h's dtype; differentiable in h, g and the biases."""
    h, g = add_biases(h, g, bias_h, bias_g)
    return bigin_fwd(h, g, graph.adj_rowptr, graph.adj_col, graph.adjt_rowptr, graph.adjt_col, act)
