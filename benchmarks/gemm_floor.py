"""The GEMM floor of a model: the time of its Linear layers alone, on the shapes and dtypes
one real step feeds them, forward (+ backward). A step's time over its floor says how much
the non-GEMM work (attention, aggregation, norms, graph building) costs."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn


def record_linear_calls(model: nn.Module, run: Callable[[], object]) -> list:
    """[(linear, input shape, input dtype, input requires grad)] of every Linear call in ``run``,
    recorded with the model's shape bucketing off: the floor is the unpadded work."""
    calls = []
    buckets = getattr(model, "shape_buckets", None)

    def hook(module, inputs, _output):
        x = inputs[0]
        calls.append((module, tuple(x.shape), x.dtype, x.requires_grad))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    if buckets is not None:
        model.shape_buckets = False
    try:
        run()
    finally:
        for h in handles:
            h.remove()
        if buckets is not None:
            model.shape_buckets = buckets
    return calls


def gemm_floor_step(calls: list, *, backward: bool, autocast_dtype=None) -> Callable[[], None]:
    """A function running every recorded Linear call once, forward then (with ``backward``)
    its backward, one call at a time so that no more memory is live than in the model.
    Inputs and output gradients are made once, outside the timing."""
    device = next(calls[0][0].parameters()).device

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()

    inputs = [torch.randn(shape, device=device).to(dtype).requires_grad_(needs_grad and backward)
              for _, shape, dtype, needs_grad in calls]
    with autocast(), torch.no_grad():
        grads = [torch.randn_like(module(x)) for (module, *_), x in zip(calls, inputs)]

    def step():
        with autocast(), torch.set_grad_enabled(backward):
            for (module, *_), x, grad in zip(calls, inputs, grads):
                out = module(x)
                if backward:
                    out.backward(grad)

    return step
