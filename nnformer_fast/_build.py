"""What the native extension was built with: :func:`build_info`."""
from __future__ import annotations

import importlib
import importlib.util

import torch

__all__ = ["build_info"]


def build_info() -> dict:
    """A dict describing the native extension ``nnformer_fast._C``.

    Keys: ``native`` (bool, the extension imported), ``error`` (why not, or why its CPU kernels
    cannot run, else None; ``installed`` says whether the file is there at all), ``built_torch``
    (torch version it was compiled against), ``runtime_torch``, ``torch_match`` (bool), ``cuda``
    (bool, CUDA kernels compiled in), ``cuda_version`` (CUDA toolkit of those kernels, ''
    without), ``torch_cuda`` (CUDA version of the running torch, None for a CPU build),
    ``cpu_capability`` (instruction set of the CPU kernels that run: ``default``, ``avx2`` or
    ``avx512``, chosen at load time from what the CPU supports or forced with the environment
    variable ``NNFF_CPU_CAPABILITY``; None when that names one this build or CPU cannot run),
    ``cpu_capabilities`` (those compiled in that this CPU runs, lowest first), ``cpu_flags``
    (compile flags of the running capability's kernels), ``openmp`` (bool, the CPU kernels run
    on torch's intra-op threads).
    """
    info = {"native": False, "installed": False, "error": None, "built_torch": None,
            "runtime_torch": torch.__version__, "torch_match": False, "cuda": False, "cuda_version": "",
            "torch_cuda": torch.version.cuda, "cpu_capability": None, "cpu_capabilities": [], "cpu_flags": "",
            "openmp": False}
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
                cuda_version=_C.cuda_version(), cpu_capabilities=list(_C.cpu_capabilities()),
                openmp=bool(_C.openmp()))
    try:
        info.update(cpu_capability=_C.cpu_capability(), cpu_flags=_C.cpu_flags())
    except RuntimeError as exc:  # NNFF_CPU_CAPABILITY names one it cannot run
        info["error"] = str(exc)
    info["torch_match"] = info["built_torch"] == torch.__version__
    return info
