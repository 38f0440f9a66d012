"""What the native extension was built with: :func:`build_info`."""
from __future__ import annotations

import torch

__all__ = ["build_info"]


def build_info() -> dict:
    """A dict describing the native extension ``nnformer_fast._C``.

    Keys: ``native`` (bool, the extension imported), ``error`` (why not, else None),
    ``built_torch`` (torch version it was compiled against), ``runtime_torch``,
    ``torch_match`` (bool), ``cuda`` (bool, CUDA kernels compiled in), ``cuda_version``
    (CUDA toolkit of those kernels, '' without), ``torch_cuda`` (CUDA version of the running
    torch, None for a CPU build), ``cpu_flags`` (extra CPU code-generation flags),
    ``openmp`` (bool, the CPU kernels run on torch's intra-op threads).
    """
    info = {"native": False, "error": None, "built_torch": None, "runtime_torch": torch.__version__,
            "torch_match": False, "cuda": False, "cuda_version": "", "torch_cuda": torch.version.cuda,
            "cpu_flags": "", "openmp": False}
    try:
        from . import _C  # noqa: F401  (loading it registers the ops with torch)
    except Exception as exc:  # missing, or an ABI mismatch (undefined symbol)
        info["error"] = f"{type(exc).__name__}: {exc}"
        return info
    info.update(native=True, built_torch=_C.torch_version(), cuda=bool(_C.with_cuda()),
                cuda_version=_C.cuda_version(), cpu_flags=_C.cpu_flags(), openmp=bool(_C.openmp()))
    info["torch_match"] = info["built_torch"] == torch.__version__
    return info
