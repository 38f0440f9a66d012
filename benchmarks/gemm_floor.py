"""The GEMM floor of a model: the time of its Linear layers alone, on the shapes and dtypes
one real step feeds them, forward (+ backward). A step's time over its floor says how much
the non-GEMM work (attention, aggregation, norms, graph building) costs."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


class _LinearCalls(TorchFunctionMode):
    """Records every ``F.linear`` call: nn.Linear modules and the bias-free fc1 / gcn GEMMs the
    BiGIN feed-forward makes on the CPU (their biases go to the bigin kernel)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            self.calls.append((weight, bias, tuple(x.shape), x.dtype, x.requires_grad))
        return func(*args, **kwargs)


def record_linear_calls(model: nn.Module, run: Callable[[], object]) -> list:
    """[(weight, bias or None, input shape, input dtype, input requires grad)] of every linear
    layer call in ``run``, recorded with the model's shape bucketing off: the floor is the
    unpadded work."""
    buckets = getattr(model, "shape_buckets", None)
    if buckets is not None:
        model.shape_buckets = False
    try:
        with _LinearCalls() as recorder:
            run()
    finally:
        if buckets is not None:
            model.shape_buckets = buckets
    return recorder.calls


def gemm_floor_step(calls: list, *, backward: bool, autocast_dtype=None) -> Callable[[], None]:
    """A function running every recorded linear call once, forward then (with ``backward``)
    its backward, one call at a time so that no more memory is live than in the model.
    Inputs and output gradients are made once, outside the timing."""
    device = calls[0][0].device

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()

    inputs = [torch.randn(shape, device=device).to(dtype).requires_grad_(needs_grad and backward)
              for _, _, shape, dtype, needs_grad in calls]
    with autocast(), torch.no_grad():
        grads = [torch.randn_like(F.linear(x, weight, bias)) for (weight, bias, *_), x in zip(calls, inputs)]

    # leaves whose .grad a backward writes: cleared each step, as a training step's
    # zero_grad(set_to_none=True) clears the parameters' (else every step adds into them)
    leaves = [t for weight, bias, *_ in calls for t in (weight, bias) if t is not None and t.requires_grad]
    leaves += [x for x in inputs if x.requires_grad]

    def step():
        for t in leaves:
            t.grad = None
        with autocast(), torch.set_grad_enabled(backward):
            for (weight, bias, *_), x, grad in zip(calls, inputs, grads):
                out = F.linear(x, weight, bias)
                if backward:
                    out.backward(grad)

    return step
