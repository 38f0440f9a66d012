"""The ``native`` backend: C++ / CUDA kernels of the extension ``nnformer_fast._C``.

Schemas are declared once in C++ (``csrc/nnformer_fast.cpp``) and so is autograd
(``csrc/autograd.cpp``); this module adds what ``torch.compile`` needs, ``register_fake`` for
every op, and registers the backend. When the
extension is missing or was built against another torch, importing this module still works:
it warns once and registers the backend with ``load_error`` set, so ``torch`` runs.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from typing import Iterable, Optional

import torch
from torch import Tensor

from .._build import build_info
from ..graph import GraphBatch
from .backends import Backend, register
from .reference import add_biases, residual_dtype

__all__ = ["dag_attention", "dag_attention_qkv", "bigin", "add_layer_norm", "dropout", "LOAD_ERROR", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 256
_BUILD = build_info()
_REBUILD = "rebuild it against this torch with `pip install --no-build-isolation` (README: Install)"
if not _BUILD["installed"]:  # a pure-Python install (NNFF_SKIP_EXT=1): chosen, not broken
    LOAD_ERROR: Optional[str] = "not installed (pure-Python install)"
elif not _BUILD["native"]:
    LOAD_ERROR = f"the compiled extension failed to load ({_BUILD['error']}); {_REBUILD}"
elif not _BUILD["torch_match"]:
    LOAD_ERROR = f"built against torch {_BUILD['built_torch']}, running {_BUILD['runtime_torch']}; {_REBUILD}"
else:
    LOAD_ERROR = None
if LOAD_ERROR is not None:
    warnings.warn(f"nnformer_fast: native backend: {LOAD_ERROR}; the ops run on the torch backend",
                  RuntimeWarning, stacklevel=2)

#: the extension's ops (schemas in csrc/nnformer_fast.cpp)
NATIVE_OPS = ("dag_attention_fwd", "dag_attention_bwd", "dag_attention_qkv_fwd", "dag_attention_qkv_bwd", "bigin_fwd",
              "bigin_bwd", "bigin_bwd_donated", "add_layer_norm_fwd", "add_layer_norm_bwd", "add_layer_norm_bwd_donated",
              "dropout_fwd", "build_relations")
_OPS_READY = LOAD_ERROR is None and hasattr(torch.ops, "nnformer_fast") \
    and all(hasattr(torch.ops.nnformer_fast, op) for op in NATIVE_OPS)


def schemas_tag(schemas: Iterable[str]) -> str:
    """``nnformer_fast-<16 hex digits of sha256>`` of the op schemas, in the order given."""
    return "nnformer_fast-" + hashlib.sha256("\n".join(schemas).encode()).hexdigest()[:16]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels (the dtype of lse and of the bigin biases)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


if _OPS_READY:
    _ops = torch.ops.nnformer_fast

    # ------------------------------------------------------------------ fake (meta) kernels
    def _attn_side_outputs(q, rel_col):
        """lse (N, H) and the weights p the CPU forward keeps for its backward ((0,) on CUDA)."""
        n, heads = q.shape[:2]
        lse = q.new_empty(n, heads, dtype=_acc_dtype(q.dtype))
        return lse, lse.new_empty(rel_col.shape[0] * (heads // 4) if q.device.type == "cpu" else 0)

    @torch.library.register_fake("nnformer_fast::dag_attention_fwd")
    def _attn_fwd_fake(q, k, v, rel_rowptr, rel_col, rel_tperm, scale, dropout_p, seed):
        return torch.empty_like(q), *_attn_side_outputs(q, rel_col)

    @torch.library.register_fake("nnformer_fast::dag_attention_bwd")
    def _attn_bwd_fake(dout, q, k, v, out, lse, p, rel_rowptr, rel_col, rel_tperm, scale, dropout_p, seed):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    @torch.library.register_fake("nnformer_fast::dag_attention_qkv_fwd")
    def _attn_qkv_fwd_fake(qkv, rel_rowptr, rel_col, rel_tperm, scale, dropout_p, seed):
        q = qkv.select(1, 0)
        return torch.empty_like(q, memory_format=torch.contiguous_format), *_attn_side_outputs(q, rel_col)

    @torch.library.register_fake("nnformer_fast::dag_attention_qkv_bwd")
    def _attn_qkv_bwd_fake(dout, qkv, out, lse, p, rel_rowptr, rel_col, rel_tperm, scale, dropout_p, seed):
        return torch.empty_like(qkv)

    @torch.library.register_fake("nnformer_fast::bigin_fwd")
    def _bigin_fwd_fake(h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, act, bias_h=None, bias_g=None):
        return torch.empty_like(h)

    @torch.library.register_fake("nnformer_fast::bigin_bwd")
    def _bigin_bwd_fake(dy, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, act, bias_h=None, bias_g=None,
                        out=None):
        def bias_grad(bias):
            return dy.new_empty(dy.shape[1] if bias is not None else 0, dtype=_acc_dtype(dy.dtype))

        return torch.empty_like(dy), torch.empty_like(dy), bias_grad(bias_h), bias_grad(bias_g)

    @torch.library.register_fake("nnformer_fast::bigin_bwd_donated")
    def _bigin_bwd_donated_fake(dy, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, act, bias_h=None, bias_g=None,
                                out=None):
        return _bigin_bwd_fake(dy, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, act, bias_h, bias_g, out)[1:]

    @torch.library.register_fake("nnformer_fast::add_layer_norm_fwd")
    def _add_norm_fwd_fake(x, y, scale, weight, bias, eps, out_dtype):
        acc = weight.dtype
        s = torch.empty_like(x, dtype=acc) if y is not None else x.new_empty(0, dtype=acc)
        mean = x.new_empty(x.shape[0], dtype=acc)
        return s, torch.empty_like(x, dtype=out_dtype), mean, torch.empty_like(mean)

    @torch.library.register_fake("nnformer_fast::add_layer_norm_bwd")
    def _add_norm_bwd_fake(ds, dout, s, y, scale, weight, mean, rstd, x_dtype):
        def vector(present):
            return weight.new_empty(weight.shape[0] if present else 0)

        dy = torch.empty_like(y) if y is not None else s.new_empty(0, dtype=dout.dtype)
        return (torch.empty_like(s, dtype=x_dtype), dy, vector(y is not None), vector(True), vector(True))

    @torch.library.register_fake("nnformer_fast::add_layer_norm_bwd_donated")
    def _add_norm_bwd_donated_fake(ds, dout, s, y, scale, weight, mean, rstd, x_dtype):
        return _add_norm_bwd_fake(ds, dout, s, y, scale, weight, mean, rstd, x_dtype)[1:]

    @torch.library.register_fake("nnformer_fast::dropout_fwd")
    def _dropout_fake(x, p, seed):
        return torch.empty_like(x)

    @torch.library.register_fake("nnformer_fast::build_relations")
    def _relations_fake(src, dst, num_nodes):
        ctx = torch.library.get_ctx()
        r = ctx.new_dynamic_size()
        return (src.new_empty(4 * num_nodes + 1), src.new_empty(r), src.new_empty(r), src.new_empty(r),
                src.new_empty(5))

    # torch.compile's on-disk caches key a graph by its code, which names these ops but not their
    # schemas: a graph compiled against an earlier build (a forward op that returned fewer
    # outputs) would be reused and fail. Their tag names the schemas (added to a user's own tag).
    COMPILE_CACHE_TAG = schemas_tag(str(getattr(_ops, name).default._schema) for name in NATIVE_OPS)
    if COMPILE_CACHE_TAG not in torch.compiler.config.cache_key_tag.split("+"):
        torch.compiler.config.cache_key_tag = "+".join(
            t for t in (torch.compiler.config.cache_key_tag, COMPILE_CACHE_TAG) if t)


# ---------------------------------------------------------------------- public-op adapters
def dag_attention(q: Tensor, k: Tensor, v: Tensor, graph: GraphBatch, *, dropout_p: float = 0.0,
                  scale: Optional[float] = None, seed: int = 0) -> Tensor:
    """Native ``dag_attention`` (signature of :func:`nnformer_fast.ops.dag_attention`).

    q, k, v: (N, H, Dh) float16/bfloat16/float32/float64, H % 4 == 0, Dh <= 256 (made
    contiguous here). Returns (N, H, Dh) in q's dtype.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, _, _ = torch.ops.nnformer_fast.dag_attention_fwd(
        q.contiguous(), k.contiguous(), v.contiguous(), graph.rel_rowptr, graph.rel_col, graph.rel_tperm,
        scale, float(dropout_p), seed)
    return out


def dag_attention_qkv(qkv: Tensor, graph: GraphBatch, *, dropout_p: float = 0.0, scale: Optional[float] = None,
                      seed: int = 0) -> Tensor:
    """Native ``dag_attention`` on a packed qkv (N, 3, H, Dh) → (N, H, Dh): the kernels read q,
    k, v in place and the backward returns one dqkv."""
    scale = 1.0 / math.sqrt(qkv.shape[-1]) if scale is None else float(scale)
    out, _, _ = torch.ops.nnformer_fast.dag_attention_qkv_fwd(qkv.contiguous(), graph.rel_rowptr, graph.rel_col,
                                                           graph.rel_tperm, scale, float(dropout_p), seed)
    return out


def bigin(h: Tensor, g: Tensor, graph: GraphBatch, *, act: str = "relu", bias_h: Optional[Tensor] = None,
          bias_g: Optional[Tensor] = None) -> Tensor:
    """Native ``bigin``: h, g (N, M) of one float dtype, M even, optional (M,) biases → (N, M)
    in h's dtype. The CPU kernels fold the biases in (taken in the accumulation dtype, float32
    or float64); on CUDA they are added to h and g first."""
    if h.device.type != "cpu":
        h, g = add_biases(h, g, bias_h, bias_g)
        bias_h = bias_g = None
    acc = _acc_dtype(h.dtype)
    bias_h, bias_g = (None if b is None else b.to(acc).contiguous() for b in (bias_h, bias_g))
    return torch.ops.nnformer_fast.bigin_fwd(h.contiguous(), g.contiguous(), graph.adj_rowptr, graph.adj_col,
                                             graph.adjt_rowptr, graph.adjt_col, act, bias_h, bias_g)


def add_layer_norm(x: Tensor, y: Optional[Tensor], scale: Optional[Tensor], weight: Tensor, bias: Tensor, *,
                   eps: float, out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Native ``add_layer_norm`` (CPU): with y, s in float32 or float64, the dtype ``addcmul``
    gives it for the inputs this backend takes (``_unsupported``); without y, s is x itself, of
    any float dtype, and the kernel only normalises it. The kernel's low dtype is y's (without
    y, out_dtype's) where s is its accumulation type, else s's own; x and the output travel in
    either, y in the low one. Other dtypes are converted on the way in (exactly) or on the way
    out (one rounding of the float32 / float64 result, as the reference's)."""
    acc = _acc_dtype(residual_dtype(x, y, scale))  # s's dtype with y (float32 / float64)
    low = y.dtype if y is not None else out_dtype
    low = low if _acc_dtype(low) == acc else acc
    kernel_out = out_dtype if out_dtype in (low, acc) else acc
    s, out, _, _ = torch.ops.nnformer_fast.add_layer_norm_fwd(
        (x if x.dtype in (low, acc) else x.to(acc)).contiguous(),
        None if y is None else y.to(low).contiguous(), None if scale is None else scale.to(acc).contiguous(),
        weight.to(acc).contiguous(), bias.to(acc).contiguous(), float(eps), kernel_out)
    return (x if y is None else s), out.to(out_dtype)


def dropout(x: Tensor, p: float, *, seed: int = 0) -> Tensor:
    """Native counter-based ``dropout`` (signature of :func:`nnformer_fast.ops.dropout`)."""
    return torch.ops.nnformer_fast.dropout_fwd(x.contiguous(), float(p), seed)

def _unsupported(op: str, *tensors: Tensor) -> list:
    reasons = []
    t = tensors[0]
    if t.device.type == "cuda" and not _BUILD["cuda"]:
        reasons.append("the extension was built without CUDA kernels (rebuild with NNFF_CUDA=1)")
    elif t.device.type not in ("cpu", "cuda"):
        reasons.append(f"no kernels for device type {t.device.type}")
    if op == "add_layer_norm":
        if t.device.type != "cpu":
            return [f"no add_layer_norm kernel for {t.device.type} tensors"]
        if len(tensors) > 1:  # (x, y, scale): the kernel keeps s = x + y * scale; without y, s is x
            s_dtype = residual_dtype(*tensors)
            if s_dtype not in (torch.float32, torch.float64):
                reasons.append(f"keeps s in float32 / float64, not {s_dtype}")
    if op == "dag_attention" and t.dim() == 3 and t.shape[-1] > MAX_HEAD_DIM:
        reasons.append(f"head dim {t.shape[-1]} > {MAX_HEAD_DIM}")
    return reasons


register(Backend(
    "native",
    ops={"dag_attention": dag_attention, "dag_attention_qkv": dag_attention_qkv, "bigin": bigin,
         "add_layer_norm": add_layer_norm, "dropout": dropout},
    load_error=LOAD_ERROR if LOAD_ERROR is not None or _OPS_READY else "native ops did not register",
    unsupported=_unsupported,
    preferred_on=("cpu", "cuda") if _BUILD["cuda"] else ("cpu",),
))
