"""Backend registry: which implementation runs each op.

Every backend names the ops it implements and says, per call, why it cannot run
(``unsupported``); an empty list means it can. ``select`` honours the environment variable
``NNFORMER_FAST_BACKEND`` (``native``, ``triton`` or ``torch``) for the ops that backend
implements (Triton has no ``add_layer_norm``), and otherwise takes the first backend that can
run in the order of the device type and op (``CUDA_PREFERENCE`` on CUDA). When a forced backend
cannot run an op it implements, the error lists every backend's reasons (xformers style).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["Backend", "register", "backends", "select", "ENV_VAR", "CUDA_PREFERENCE", "CPU_ONLY_OPS"]

ENV_VAR = "NNFORMER_FAST_BACKEND"


@dataclass
class Backend:
    """One implementation of the ops.

    ops: op name -> callable with the signature of the public op (after checks).
    load_error: why the backend is unusable on this install (None when it loaded).
    unsupported: ``(op, *tensors) -> list[str]`` reasons it cannot run these inputs.
    preferred_on: device types on which automatic selection may pick it.
    """

    name: str
    ops: dict[str, Callable] = field(default_factory=dict)
    load_error: Optional[str] = None
    unsupported: Callable[..., list] = lambda op, *tensors: []
    preferred_on: tuple = ("cpu", "cuda")

    def reasons(self, op: str, *tensors: Tensor) -> list:
        if self.load_error is not None:
            return [self.load_error]
        if op not in self.ops:
            return [f"does not implement {op}"]
        return list(self.unsupported(op, *tensors))


_REGISTRY: dict[str, Backend] = {}

#: CUDA backends per op, fastest first. Unmeasured: there was no GPU run yet, so CUDA C++ comes
#: first for every op. ``python benchmarks/gpu_check.py`` prints this table from its timings,
#: headed "chosen by measured speed on <card> (benchmarks/RESULTS.md)", to paste here.
CUDA_PREFERENCE: dict[str, tuple] = {
    "dag_attention": ("native", "triton", "torch"),
    "bigin": ("native", "triton", "torch"),
    "dropout": ("native", "triton", "torch"),
}
# Automatic choice per device type and op; a backend missing from the registry is skipped.
#: ops with native CPU kernels only: on CUDA the torch backend runs them (the default below).
CPU_ONLY_OPS = ("add_layer_norm",)
_PREFERENCE = {"cpu": dict.fromkeys((*CUDA_PREFERENCE, *CPU_ONLY_OPS), ("native", "torch")), "cuda": CUDA_PREFERENCE}


def register(backend: Backend) -> None:
    """Add or replace a backend (kernel modules call this when they import)."""
    _REGISTRY[backend.name] = backend


def backends() -> dict:
    """Name -> what automatic selection makes of the backend on this machine, readable at a glance:
    ``'ok'``, ``'CPU only'`` (no CUDA kernels in it although there is a GPU), ``'no GPU'``, or why
    it did not load; e.g. ``{'torch': 'ok', 'native': 'ok', 'triton': 'no GPU'}``."""
    gpu = torch.cuda.is_available()
    devices = ("cpu", "cuda") if gpu else ("cpu",)

    def status(b: Backend) -> str:
        if b.load_error is not None:
            return b.load_error
        if not any(d in b.preferred_on for d in devices):
            return "no GPU"
        return "CPU only" if gpu and "cuda" not in b.preferred_on else "ok"
    return {name: status(b) for name, b in _REGISTRY.items()}


def select(op: str, *tensors: Tensor) -> Backend:
    """The backend that runs ``op`` on ``tensors`` (see module docstring)."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced:
        backend = _REGISTRY.get(forced)
        if backend is None:
            raise ValueError(f"{ENV_VAR}={forced!r}: unknown backend; known: {sorted(_REGISTRY)}")
        if not backend.reasons(op, *tensors):
            return backend
        if op in backend.ops or backend.load_error is not None:
            raise RuntimeError(f"{ENV_VAR}={forced!r} cannot run {op}:\n" + _explain(op, tensors))
    device_type = tensors[0].device.type
    for name in _PREFERENCE.get(device_type, {}).get(op, ("torch",)):
        backend = _REGISTRY.get(name)
        if backend is not None and device_type in backend.preferred_on and not backend.reasons(op, *tensors):
            return backend
    raise RuntimeError(f"no backend can run {op} on {device_type}:\n" + _explain(op, tensors))


def _explain(op: str, tensors) -> str:
    return "\n".join(f"  {name}: {'; '.join(b.reasons(op, *tensors)) or 'ok'}" for name, b in _REGISTRY.items())
