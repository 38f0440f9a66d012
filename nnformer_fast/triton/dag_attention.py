"""DAG-masked attention (docs/DESIGN.md: dag_attention) in Triton: forward, backward, launchers and autograd.

Layout. ``q, k, v``: (N, H, Dh), last dim contiguous; head ``h`` attends over relation
``r = h % 4`` of the graph, whose neighbour lists are the rows ``r*N + i`` of the
relation-major CSR ``rel_rowptr / rel_col`` (see :class:`nnformer_fast.graph.GraphBatch`).

Forward. A program owns ``BLOCK_N`` consecutive nodes ``i`` and one head ``h``; their query
rows stay in registers, their neighbour lists are walked together in blocks of ``BLOCK_J``
entries (up to the longest list of the block, shorter lists masked), each block's keys and
values are gathered, and an online softmax (running max ``m``, running sum ``l``) accumulates
the output (flash-attention recipe, fp32 accumulation; fp64 for fp64 inputs). The row
log-sum-exp ``lse = m + log(l)`` is written for the backward pass. The head dim is padded to a
power of two ``BLOCK_D`` with masks, so any ``Dh <= 256`` works.

Backward. ``P_ij = exp(s_ij - lse_i)`` is recomputed, never stored.
* ``_bwd_dq_kernel`` (per (i, h)): ``dq_i = scale * Σ_j P_ij (dP_ij - delta_i) k_j`` over
  relation ``r``, with ``delta_i = Σ_j P_ij dP_ij`` accumulated in the same pass (exact in
  fp32, unlike ``dO_i · O_i`` from a rounded bf16 ``O``; ``O`` is not even saved); writes
  ``delta`` for the next kernel.
* ``_bwd_dkdv_kernel`` (per (j, h)): the rows ``i`` that attend to ``j`` are exactly row ``j``
  of the transposed relation ``(1, 0, 2, 3)[r]``, so ``dk_j`` and ``dv_j`` are gathered there
  (no atomics, deterministic). ``rel_tperm`` maps each transposed entry back to the entry
  ``(i, j)`` of relation ``r``, which the dropout hash needs.

Dropout. Weight (entry ``e``, head ``h``) is kept when
``hash32(((e*H + h) mod 2**32) ^ hash32(seed)) >> 8 >= int(p * 2**24)`` and kept weights are
scaled by ``1/(1-p)``: bit-exact with :func:`nnformer_fast.ops.reference.dropout_keep_mask`.
The softmax denominator is taken before dropout, as in standard attention.

Autotuning (GPU only): ``ATTENTION_CONFIGS``, six (``BLOCK_N``, ``BLOCK_J``, ``num_warps``)
choices from one row x 16-64 neighbours (long rows: the dense sibling / co-parent rows that
global tokens create) to 8 rows x 4 neighbours (CNN-like DAGs with 2-4 neighbours per row),
keyed on ``BLOCK_D`` (head dim), the input dtype (added by the autotuner) and ``AVG_DEG``
(power-of-two bucket of the mean neighbour-list length). The interpreter runs only
``INTERPRET_CONFIG`` (32 rows per program: its cost is per program and per op).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from ..graph import NUM_RELATIONS, GraphBatch
from ..ops.checks import check_csr_indices
from ._common import (_cast_out, _dropout_keep, acc_dtype_for, autotuned, avg_degree_bucket, dropout_threshold,
                      kernel_op, seed_salt)

__all__ = ["dag_attention", "dag_attention_qkv", "dag_attention_fwd", "dag_attention_bwd", "dag_attention_qkv_fwd",
           "dag_attention_qkv_bwd", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 256

#: Launch configurations: ``BLOCK_N`` rows (nodes) per program, ``BLOCK_J`` neighbours per
#: block of a row's list. The autotuner picks per (head dim, dtype, average degree). At head
#: dim 128 each thread holds 32 elements of a (BLOCK_N, BLOCK_J, BLOCK_D) tile: with 4 warps
#: the two 8,192-element tiles spilled registers in every kernel (compiled for sm_90,
#: ``python -m nnformer_fast.triton.compile_check``), with 8 they do not.
ATTENTION_CONFIGS = [
    triton.Config({"BLOCK_N": 1, "BLOCK_J": 16}, num_warps=2),
    triton.Config({"BLOCK_N": 2, "BLOCK_J": 8}, num_warps=2),
    triton.Config({"BLOCK_N": 4, "BLOCK_J": 8}, num_warps=4),
    triton.Config({"BLOCK_N": 8, "BLOCK_J": 4}, num_warps=4),
    triton.Config({"BLOCK_N": 4, "BLOCK_J": 16}, num_warps=8),
    triton.Config({"BLOCK_N": 1, "BLOCK_J": 64}, num_warps=8),
]
INTERPRET_CONFIG = triton.Config({"BLOCK_N": 32, "BLOCK_J": 8})
_KEY = ["BLOCK_D", "AVG_DEG"]


# ------------------------------------------------------------------------------- kernels
@triton.jit
def _row_block(ROWPTR, rel, N, BLOCK_N: tl.constexpr):
    """Nodes ``i`` of this program, their row start in relation ``rel`` and row lengths
    (0 past the last node); the loop bound is the longest row of the block."""
    i = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = i < N
    row = rel * N + i
    start = tl.load(ROWPTR + row, mask=nmask, other=0)
    length = tl.load(ROWPTR + row + 1, mask=nmask, other=0) - start
    return i, nmask, start, length


@autotuned(ATTENTION_CONFIGS, _KEY, INTERPRET_CONFIG)
@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, ROWPTR, COL,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_on, stride_oh,
    N, H, HEAD_DIM, scale, salt, threshold, keep_scale, AVG_DEG,
    HAS_DROPOUT: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr,
):
    h = tl.program_id(1)
    i, nmask, start, length = _row_block(ROWPTR, h % 4, N, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    q_mask = nmask[:, None] & dmask[None, :]
    q = tl.load(Q + i[:, None] * stride_qn + h * stride_qh + d[None, :], mask=q_mask, other=0.0).to(ACC) * scale

    m_i = tl.full([BLOCK_N], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_N], ACC)
    acc = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    for off in range(0, tl.max(length, axis=0), BLOCK_J):
        jj = off + tl.arange(0, BLOCK_J)
        emask = jj[None, :] < length[:, None]  # (BLOCK_N, BLOCK_J)
        e = start[:, None] + jj[None, :]
        j = tl.load(COL + e, mask=emask, other=0)
        kv_mask = emask[:, :, None] & dmask[None, None, :]
        kv_off = j[:, :, None] * stride_kn + h * stride_kh + d[None, None, :]
        k = tl.load(K + kv_off, mask=kv_mask, other=0.0).to(ACC)
        s = tl.sum(k * q[:, None, :], axis=2)
        s = tl.where(emask, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # rows that are finished (or past N) keep m = -inf or see an all -inf block:
        # shift by a finite value so no inf - inf appears
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if HAS_DROPOUT:
            p = tl.where(_dropout_keep(e, h, H, salt, threshold), p, 0.0)
        v_off = j[:, :, None] * stride_vn + h * stride_vh + d[None, None, :]
        v = tl.load(V + v_off, mask=kv_mask, other=0.0).to(ACC)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v, axis=1)
        m_i = m_new

    l_safe = tl.where(l_i > 0, l_i, 1.0)  # empty rows (padding nodes, past N): out 0, lse -inf
    out = acc / l_safe[:, None]
    if HAS_DROPOUT:
        out = out * keep_scale
    tl.store(O + i[:, None] * stride_on + h * stride_oh + d[None, :], _cast_out(out, O.dtype.element_ty), mask=q_mask)
    tl.store(LSE + i * H + h, m_i + tl.log(l_safe), mask=nmask)


@autotuned(ATTENTION_CONFIGS, _KEY, INTERPRET_CONFIG)
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, ROWPTR, COL,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
    stride_don, stride_doh, stride_dqn, stride_dqh,
    N, H, HEAD_DIM, scale, salt, threshold, keep_scale, AVG_DEG,
    HAS_DROPOUT: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr,
):
    h = tl.program_id(1)
    i, nmask, start, length = _row_block(ROWPTR, h % 4, N, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    q_mask = nmask[:, None] & dmask[None, :]
    q = tl.load(Q + i[:, None] * stride_qn + h * stride_qh + d[None, :], mask=q_mask, other=0.0).to(ACC) * scale
    do = tl.load(DO + i[:, None] * stride_don + h * stride_doh + d[None, :], mask=q_mask, other=0.0).to(ACC)
    lse = tl.load(LSE + i * H + h, mask=nmask, other=0.0)

    # dq_i = sum_j P_ij (dP_ij - delta_i) k_j with delta_i = sum_j P_ij dP_ij, accumulated in
    # one pass as  sum_j P dP k  -  delta * sum_j P k.  delta comes out in full precision
    # (flash-attention's dO . O would inherit the rounding of the stored low-precision O).
    pdpk = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    pk = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    delta = tl.zeros([BLOCK_N], ACC)
    for off in range(0, tl.max(length, axis=0), BLOCK_J):
        jj = off + tl.arange(0, BLOCK_J)
        emask = jj[None, :] < length[:, None]
        e = start[:, None] + jj[None, :]
        j = tl.load(COL + e, mask=emask, other=0)
        kv_mask = emask[:, :, None] & dmask[None, None, :]
        k = tl.load(K + j[:, :, None] * stride_kn + h * stride_kh + d[None, None, :], mask=kv_mask, other=0.0).to(ACC)
        v = tl.load(V + j[:, :, None] * stride_vn + h * stride_vh + d[None, None, :], mask=kv_mask, other=0.0).to(ACC)
        p = tl.exp(tl.sum(k * q[:, None, :], axis=2) - lse[:, None])
        p = tl.where(emask, p, 0.0)
        dp = tl.sum(v * do[:, None, :], axis=2)
        if HAS_DROPOUT:
            dp = tl.where(_dropout_keep(e, h, H, salt, threshold), dp * keep_scale, 0.0)
        pdp = p * dp
        delta += tl.sum(pdp, axis=1)
        pdpk += tl.sum(pdp[:, :, None] * k, axis=1)
        pk += tl.sum(p[:, :, None] * k, axis=1)
    tl.store(DELTA + i * H + h, delta, mask=nmask)
    dq = (pdpk - delta[:, None] * pk) * scale
    tl.store(DQ + i[:, None] * stride_dqn + h * stride_dqh + d[None, :], _cast_out(dq, DQ.dtype.element_ty), mask=q_mask)


@autotuned(ATTENTION_CONFIGS, _KEY, INTERPRET_CONFIG)
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, ROWPTR, COL, TPERM,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
    stride_don, stride_doh, stride_dkn, stride_dkh, stride_dvn, stride_dvh,
    N, H, HEAD_DIM, scale, salt, threshold, keep_scale, AVG_DEG,
    HAS_DROPOUT: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr,
):
    h = tl.program_id(1)
    r = h % 4
    rt = tl.where(r < 2, 1 - r, r)  # transposed relation: fwd <-> bwd, sib and cop symmetric
    # row j of relation rt lists the nodes i that attend to j under relation r
    j, nmask, start, length = _row_block(ROWPTR, rt, N, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    kv_mask = nmask[:, None] & dmask[None, :]
    k = tl.load(K + j[:, None] * stride_kn + h * stride_kh + d[None, :], mask=kv_mask, other=0.0).to(ACC)
    v = tl.load(V + j[:, None] * stride_vn + h * stride_vh + d[None, :], mask=kv_mask, other=0.0).to(ACC)

    dk = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    for off in range(0, tl.max(length, axis=0), BLOCK_J):
        jj = off + tl.arange(0, BLOCK_J)
        emask = jj[None, :] < length[:, None]
        et = start[:, None] + jj[None, :]
        i = tl.load(COL + et, mask=emask, other=0)
        qo_mask = emask[:, :, None] & dmask[None, None, :]
        q = tl.load(Q + i[:, :, None] * stride_qn + h * stride_qh + d[None, None, :], mask=qo_mask,
                    other=0.0).to(ACC) * scale
        do = tl.load(DO + i[:, :, None] * stride_don + h * stride_doh + d[None, None, :], mask=qo_mask,
                     other=0.0).to(ACC)
        lse = tl.load(LSE + i * H + h, mask=emask, other=0.0)
        delta = tl.load(DELTA + i * H + h, mask=emask, other=0.0)
        p = tl.exp(tl.sum(q * k[:, None, :], axis=2) - lse)
        p = tl.where(emask, p, 0.0)
        dp = tl.sum(do * v[:, None, :], axis=2)
        if HAS_DROPOUT:
            e = tl.load(TPERM + et, mask=emask, other=0)  # entry (i, j) of relation r
            z = tl.where(_dropout_keep(e, h, H, salt, threshold), 1.0, 0.0).to(ACC) * keep_scale
            dv += tl.sum((p * z)[:, :, None] * do, axis=1)
            dp = dp * z
        else:
            dv += tl.sum(p[:, :, None] * do, axis=1)
        ds = p * (dp - delta)
        dk += tl.sum(ds[:, :, None] * q, axis=1)  # q already carries the scale
    tl.store(DK + j[:, None] * stride_dkn + h * stride_dkh + d[None, :], _cast_out(dk, DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + j[:, None] * stride_dvn + h * stride_dvh + d[None, :], _cast_out(dv, DV.dtype.element_ty), mask=kv_mask)


# ------------------------------------------------------------------------------- launchers
def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _acc_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _dropout_args(dropout_p: float, seed: int) -> tuple:
    """(salt, threshold, keep_scale, HAS_DROPOUT)."""
    if dropout_p <= 0.0:
        return 0, 0, 1.0, False
    return seed_salt(seed), dropout_threshold(dropout_p), 1.0 / (1.0 - dropout_p), True


def _common_meta(q: Tensor, rel_col: Tensor) -> dict:
    n, _, dh = q.shape
    return dict(
        AVG_DEG=avg_degree_bucket(rel_col.shape[0], 4 * n),
        ACC=acc_dtype_for(q.dtype),
        BLOCK_D=max(16, triton.next_power_of_2(dh)),
    )


def _launch_fwd(q: Tensor, k: Tensor, v: Tensor, rel_rowptr: Tensor, rel_col: Tensor, dropout_p: float,
                scale: float, seed: int) -> tuple[Tensor, Tensor]:
    """The forward kernel on q, k, v (N, H, Dh) with unit last stride (separate tensors or the
    thirds of one qkv). Returns ``out`` (N, H, Dh) in q's dtype and ``lse`` (N, H) float32
    (float64 for fp64)."""
    n, h, dh = q.shape
    out = torch.empty((n, h, dh), dtype=q.dtype, device=q.device)
    lse = torch.empty((n, h), dtype=_acc_torch_dtype(q.dtype), device=q.device)
    if n == 0:
        return out, lse
    salt, threshold, keep_scale, has_dropout = _dropout_args(dropout_p, seed)
    wrap_triton(_fwd_kernel)[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), h)](
        q, k, v, out, lse, rel_rowptr, rel_col,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        n, h, dh, scale, salt, threshold, keep_scale,
        HAS_DROPOUT=has_dropout, **_common_meta(q, rel_col),
    )
    return out, lse


def _launch_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, lse: Tensor, rel_rowptr: Tensor,
                rel_col: Tensor, rel_tperm: Tensor, dropout_p: float, scale: float, seed: int,
                dq: Tensor, dk: Tensor, dv: Tensor) -> None:
    """The backward kernels (dq, then dk and dv over the transposed relation) into dq, dk, dv;
    every (N, H, Dh) argument has unit last stride."""
    n, h, dh = q.shape
    if n == 0:
        return
    delta = torch.empty((n, h), dtype=lse.dtype, device=q.device)
    salt, threshold, keep_scale, has_dropout = _dropout_args(dropout_p, seed)
    meta = _common_meta(q, rel_col)
    wrap_triton(_bwd_dq_kernel)[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), h)](
        q, k, v, grad_out, lse, delta, dq, rel_rowptr, rel_col,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        grad_out.stride(0), grad_out.stride(1), dq.stride(0), dq.stride(1),
        n, h, dh, scale, salt, threshold, keep_scale,
        HAS_DROPOUT=has_dropout, **meta,
    )
    wrap_triton(_bwd_dkdv_kernel)[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), h)](
        q, k, v, grad_out, lse, delta, dk, dv, rel_rowptr, rel_col, rel_tperm,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        grad_out.stride(0), grad_out.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        n, h, dh, scale, salt, threshold, keep_scale,
        HAS_DROPOUT=has_dropout, **meta,
    )


def _fwd_fake(q, k, v, rel_rowptr, rel_col, rel_tperm, dropout_p, scale, seed):
    n, h, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((n, h), dtype=_acc_torch_dtype(q.dtype))


@kernel_op("nnformer_fast_triton::dag_attention_fwd", _fwd_fake)
def dag_attention_fwd(q: Tensor, k: Tensor, v: Tensor, rel_rowptr: Tensor, rel_col: Tensor,
                      rel_tperm: Tensor, dropout_p: float, scale: float, seed: int) -> tuple[Tensor, Tensor]:
    """Forward. q, k, v: (N, H, Dh) fp16/bf16/fp32/fp64 (last dim contiguous or copied);
    relation CSR as in GraphBatch (``rel_tperm`` is only kept for backward). Returns ``out``
    (N, H, Dh) in q's dtype and ``lse`` (N, H) float32 (float64 for fp64)."""
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    return _launch_fwd(q, k, v, rel_rowptr, rel_col, dropout_p, scale, seed)


def _bwd_fake(grad_out, q, k, v, lse, rel_rowptr, rel_col, rel_tperm, dropout_p, scale, seed):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


@kernel_op("nnformer_fast_triton::dag_attention_bwd", _bwd_fake)
def dag_attention_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, lse: Tensor,
                      rel_rowptr: Tensor, rel_col: Tensor, rel_tperm: Tensor, dropout_p: float, scale: float,
                      seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of :func:`dag_attention_fwd`. Returns (dq, dk, dv), each (N, H, Dh) in q's dtype."""
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    _launch_bwd(_last_dim_contiguous(grad_out), q, k, v, lse, rel_rowptr, rel_col, rel_tperm, dropout_p, scale,
                seed, dq, dk, dv)
    return dq, dk, dv


def _qkv_fwd_fake(qkv, rel_rowptr, rel_col, rel_tperm, dropout_p, scale, seed):
    n, _, h, dh = qkv.shape
    return qkv.new_empty((n, h, dh)), qkv.new_empty((n, h), dtype=_acc_torch_dtype(qkv.dtype))


@kernel_op("nnformer_fast_triton::dag_attention_qkv_fwd", _qkv_fwd_fake)
def dag_attention_qkv_fwd(qkv: Tensor, rel_rowptr: Tensor, rel_col: Tensor, rel_tperm: Tensor, dropout_p: float,
                          scale: float, seed: int) -> tuple[Tensor, Tensor]:
    """:func:`dag_attention_fwd` on the thirds of one qkv (N, 3, H, Dh), read in place."""
    return _launch_fwd(*_last_dim_contiguous(qkv).unbind(1), rel_rowptr, rel_col, dropout_p, scale, seed)


def _qkv_bwd_fake(grad_out, qkv, lse, rel_rowptr, rel_col, rel_tperm, dropout_p, scale, seed):
    return qkv.new_empty(qkv.shape)


@kernel_op("nnformer_fast_triton::dag_attention_qkv_bwd", _qkv_bwd_fake)
def dag_attention_qkv_bwd(grad_out: Tensor, qkv: Tensor, lse: Tensor, rel_rowptr: Tensor, rel_col: Tensor,
                          rel_tperm: Tensor, dropout_p: float, scale: float, seed: int) -> Tensor:
    """Backward of :func:`dag_attention_qkv_fwd`: dq, dk, dv written into one dqkv like qkv."""
    qkv = _last_dim_contiguous(qkv)
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    _launch_bwd(_last_dim_contiguous(grad_out), *qkv.unbind(1), lse, rel_rowptr, rel_col, rel_tperm, dropout_p,
                scale, seed, *dqkv.unbind(1))
    return dqkv


def _setup_context(ctx, inputs, output):
    *tensors, rel_rowptr, rel_col, rel_tperm, dropout_p, scale, seed = inputs
    ctx.save_for_backward(*tensors, output[1], rel_rowptr, rel_col, rel_tperm)
    ctx.dropout_p, ctx.scale, ctx.seed = dropout_p, scale, seed


def _check_saved_relation(q: Tensor, rel_rowptr: Tensor, rel_col: Tensor, rel_tperm: Tensor) -> None:
    """The public op checked the relation CSR before the forward pass; a write the version
    counter misses (``.numpy()``, ``.data``) may have changed it since."""
    n = q.shape[0]
    check_csr_indices("dag_attention backward", q.device, n,
                      [("rel", rel_rowptr, rel_col, None, NUM_RELATIONS * n)], rel_tperm)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, lse, rel_rowptr, rel_col, rel_tperm = ctx.saved_tensors
    _check_saved_relation(q, rel_rowptr, rel_col, rel_tperm)
    dq, dk, dv = dag_attention_bwd(grad_out, q, k, v, lse, rel_rowptr, rel_col, rel_tperm,
                                   ctx.dropout_p, ctx.scale, ctx.seed)
    return dq, dk, dv, None, None, None, None, None, None


def _qkv_backward(ctx, grad_out, grad_lse):
    qkv, lse, rel_rowptr, rel_col, rel_tperm = ctx.saved_tensors
    _check_saved_relation(qkv, rel_rowptr, rel_col, rel_tperm)
    dqkv = dag_attention_qkv_bwd(grad_out, qkv, lse, rel_rowptr, rel_col, rel_tperm,
                                 ctx.dropout_p, ctx.scale, ctx.seed)
    return dqkv, None, None, None, None, None, None


dag_attention_fwd.register_autograd(_backward, setup_context=_setup_context)
dag_attention_qkv_fwd.register_autograd(_qkv_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------- public op
def dag_attention(q: Tensor, k: Tensor, v: Tensor, graph: GraphBatch, *, dropout_p: float = 0.0,
                  scale: Optional[float] = None, seed: int = 0) -> Tensor:
    """DAG-masked attention on the Triton backend (signature of ``nnformer_fast.ops.dag_attention``).

    q, k, v: (N, H, Dh) float16/bfloat16/float32/float64 on CUDA (or CPU under
    TRITON_INTERPRET=1), H a multiple of 4, Dh <= 256. Returns (N, H, Dh) in q's dtype;
    differentiable in q, k, v.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, _ = dag_attention_fwd(q, k, v, graph.rel_rowptr, graph.rel_col, graph.rel_tperm,
                               float(dropout_p), scale, int(seed))
    return out


def dag_attention_qkv(qkv: Tensor, graph: GraphBatch, *, dropout_p: float = 0.0, scale: Optional[float] = None,
                      seed: int = 0) -> Tensor:
    """:func:`dag_attention` on the packed output of a qkv Linear (signature of
    ``nnformer_fast.ops.dag_attention_qkv``): q, k, v read in place from qkv (N, 3, H, Dh), whose
    gradient comes back as one tensor. Returns (N, H, Dh) in qkv's dtype."""
    scale = 1.0 / math.sqrt(qkv.shape[-1]) if scale is None else float(scale)
    out, _ = dag_attention_qkv_fwd(qkv, graph.rel_rowptr, graph.rel_col, graph.rel_tperm,
                                   float(dropout_p), scale, int(seed))
    return out
