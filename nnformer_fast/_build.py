"""What the native extension was built with: :func:`build_info`."""
from __future__ import annotations

import importlib
import importlib.util

import torch

__all__ = ["build_info"]


def build_info() -> dict:
    """A dict describing the native extension ``nnformer_fast._C``.

    Keys: ``native`` (bool, the extension imported), ``error`` (why not, else None; ``installed``
    says whether the file is there at all), ``built_torch`` (torch version it was compiled against),
    ``runtime_torch``, ``torch_match`` (bool), ``cuda`` (bool, CUDA kernels compiled in),
    ``cuda_version`` (CUDA toolkit of those kernels, '' without), ``torch_cuda`` (CUDA version of
    the running torch, None for a CPU build), ``cpu_flags`` (extra CPU code-generation flags),
    ``openmp`` (bool, the CPU kernels run on torch's intra-op threads).
    """
    info = {"native": False, "installed": False, "error": None, "built_torch": None,
            "runtime_torch": torch.__version__, "torch_match": False, "cuda": False, "cuda_version": "",
            "torch_cuda": torch.version.cuda, "cpu_flags": "", "openmp": False}
    if importlib.util.find_spec(f"{__package__}._C") is None:  # a pure-Python install (NNFF_SKIP_EXT=1)
        info["error"] = f"no compiled extension in this install ({__package__}._C)"
        return info
    info["installed"] = True
    try:
        _C = importlib.import_module(f"{__package__}._C")  # loading it registers the ops with torch
    except Exception as exc:  # an ABI mismatch (undefined symbol), a missing shared library
        info["error"] = f"{type(exc).__name__}: {exc}"
        return info
    info.update(native=True, built_torch=_C.torch_version(), cuda=bool(_C.with_cuda()),
                cuda_version=_C.cuda_version(), cpu_flags=_C.cpu_flags(), openmp=bool(_C.openmp()))
    info["torch_match"] = info["built_torch"] == torch.__version__
    return info
