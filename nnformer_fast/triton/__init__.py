"""The ``triton`` backend: Triton kernels for ``dag_attention``, ``bigin`` and ``dropout``.

One readable module per op (Liger-Kernel style): :mod:`.dag_attention`, :mod:`.bigin` and
:mod:`.dropout` hold the kernels, their launchers (``torch.library.triton_op``, so
``torch.compile`` traces through them) and their autograd. Importing this package registers
the backend; it always imports, and when Triton is missing (or fails to load) the backend
registers with a ``load_error``.

The backend runs CUDA tensors, and CPU tensors only under the Triton interpreter
(``TRITON_INTERPRET=1`` set before ``nnformer_fast`` is imported: ``triton.jit`` reads it when
the kernels are defined). Automatic selection only considers it on CUDA;
``NNFORMER_FAST_BACKEND=triton`` forces it.
"""
from __future__ import annotations

from ..ops.backends import Backend, register

__all__ = ["available", "load_error", "INTERPRET"]

_OPS: dict = {}
load_error = None
INTERPRET = False

try:
    import triton as _triton  # noqa: F401
except ImportError:
    load_error = "triton is not installed (pip install 'nnformer_fast[triton]')"
else:
    try:
        from ._common import INTERPRET
        from .bigin import bigin as _bigin
        from .dag_attention import MAX_HEAD_DIM
        from .dag_attention import dag_attention as _dag_attention
        from .dag_attention import dag_attention_qkv as _dag_attention_qkv
        from .dropout import dropout as _dropout
    except Exception as exc:  # an incompatible triton / torch pair must not break the package
        load_error = f"triton backend failed to load: {type(exc).__name__}: {exc}"
    else:
        _OPS = {"dag_attention": _dag_attention, "dag_attention_qkv": _dag_attention_qkv, "bigin": _bigin,
                "dropout": _dropout}

available = load_error is None


def _unsupported(op: str, *tensors) -> list:
    reasons = []
    device = tensors[0].device
    if device.type == "cpu":
        if not INTERPRET:
            reasons.append("runs CPU tensors only under the Triton interpreter (set TRITON_INTERPRET=1 "
                           "before importing nnformer_fast)")
    elif device.type != "cuda":
        reasons.append(f"runs on CUDA (or CPU under TRITON_INTERPRET=1), got {device.type}")
    if op == "dag_attention" and tensors[0].dim() == 3 and tensors[0].shape[-1] > MAX_HEAD_DIM:
        reasons.append(f"head dim {tensors[0].shape[-1]} > {MAX_HEAD_DIM}")
    return reasons


register(Backend("triton", ops=_OPS, load_error=load_error, unsupported=_unsupported, preferred_on=("cuda",)))
