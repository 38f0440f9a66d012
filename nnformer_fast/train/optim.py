"""The optimizer ``fit`` trains with: AdamW on two parameter groups, one or two fused kernel calls a group.

:func:`make_optimizer` splits a model's parameters into those with weight decay and those
without; on the CPU it returns a :class:`FlatAdamW`, elsewhere ``torch.optim.AdamW(fused=True)``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

__all__ = ["FlatAdamW", "FLAT_MAX_NUMEL", "make_optimizer", "decays"]


def decays(name: str, p: nn.Parameter) -> bool:
    """Whether ``fit`` applies weight decay to the parameter: not to biases, norms, layer
    scales or the class token."""
    return p.ndim >= 2 and not name.endswith(".scale") and "cls_token" not in name


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters in two groups, ``weight_decay`` and none (:func:`decays`):
    a :class:`FlatAdamW` when the parameters are on the CPU, else ``torch.optim.AdamW(fused=True)``.
    Both give the same parameters bit for bit, and their state dicts load into each other."""
    named = list(model.named_parameters())
    groups = [{"params": [p for name, p in named if decays(name, p)], "weight_decay": weight_decay},
              {"params": [p for name, p in named if not decays(name, p)], "weight_decay": 0.0}]
    if all(p.device.type == "cpu" for _, p in named):
        return FlatAdamW(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr, fused=True)


#: Parameters of up to this many elements (64 KB in float32) are held back to back, each group's
#: in one buffer; a larger one keeps its own storage. Copying a gradient into the buffer costs
#: a pass over it (about 0.1 ns an element at 2 threads on the AMD EPYC of RESULTS.md), a
#: tensor of torch's step about 3 µs: they break even near 30,000 elements. With every tensor
#: in the buffers, the default latency model's step (its weights up to 1 M elements) was 1-2 %
#: slower than with torch's AdamW; with this limit it runs as fast.
FLAT_MAX_NUMEL = 1 << 14


class _Layout(NamedTuple):
    """How FlatAdamW holds one parameter group: ``small`` parameters back to back in ``params``,
    their moments in ``exp_avg`` / ``exp_avg_sq`` ((P,) buffers; None without small ones); the
    ``large`` ones in their own tensors (``large_state``: their exp_avg, exp_avg_sq and step
    lists); ``steps`` (n,) float32 every parameter's step count; ``state`` the tensors of each
    parameter's state, in the group's order."""
    small: list
    params: Optional[Tensor]
    exp_avg: Optional[Tensor]
    exp_avg_sq: Optional[Tensor]
    large: list
    large_state: tuple
    steps: Tensor
    state: list


class FlatAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW(fused=True)`` that updates each parameter group with one or two kernel calls.

    Each group's parameters of up to :data:`FLAT_MAX_NUMEL` elements move into one contiguous
    buffer: they stay the same ``nn.Parameter`` objects, now views of it (``.data``
    reassigned; their values unchanged). Their moments ``exp_avg`` / ``exp_avg_sq`` are views
    of two more buffers, created here; every step count is a view of one float32 vector. A
    step increments that vector, concatenates the small parameters' gradients and runs torch's
    fused AdamW kernel (``torch._fused_adamw_``) once on the buffers, and once on the list of
    larger parameters. The kernel's arithmetic is element by element, so parameters and state
    are bit-identical to ``torch.optim.AdamW(fused=True)``, whose state-dict format this keeps
    (checkpoints load into either).

    A step that this cannot take runs torch's per-parameter fused step on the same tensors: a
    parameter without a gradient (its step count then falls behind, and the group keeps the
    per-parameter step), a sparse gradient, ``amsgrad``, a tensor ``lr`` or betas, or a
    ``GradScaler``'s ``grad_scale`` / ``found_inf``.

    Why: torch's step runs the kernel once per tensor, each in its own parallel region, after a
    Python loop over the parameters and one step increment per tensor. On the demo-size latency
    model (46 tensors; 34 small, in two buffers, and 12 weight matrices of 24,576 to 65,536
    elements) the training step is about 1 % faster at 2 threads (benchmarks/RESULTS.md).

    Parameters of one group must share dtype and device (``ValueError`` otherwise).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        self._layouts: list[Optional[_Layout]] = []  # one per group; filled by add_param_group
        self._steps_even = True  # every group's step counts known equal (False: check)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._layouts.append(self._lay_out(self.param_groups[-1]["params"]))

    @torch.no_grad()
    def _lay_out(self, params: list) -> Optional[_Layout]:
        """Moves the group's small parameters into a buffer and creates every parameter's state."""
        if not params:
            return None
        first = params[0]
        if any(p.dtype != first.dtype or p.device != first.device for p in params):
            raise ValueError("FlatAdamW: the parameters of one group must share dtype and device, got "
                             f"{sorted({f'{p.dtype} on {p.device}' for p in params})}")
        small = [p for p in params if p.numel() <= FLAT_MAX_NUMEL]
        large = [p for p in params if p.numel() > FLAT_MAX_NUMEL]
        buffers = [None] * 3
        if small:
            buffers = [torch.cat([p.detach().reshape(-1) for p in small]),
                       *(first.new_zeros(sum(p.numel() for p in small)) for _ in range(2))]
            for p, view in zip(small, _views(small, buffers[0])):
                p.data = view
            moments = dict(zip(small, zip(_views(small, buffers[1]), _views(small, buffers[2]))))
        else:
            moments = {}
        moments.update((p, (torch.zeros_like(p), torch.zeros_like(p))) for p in large)
        steps = torch.zeros(len(params), dtype=torch.float32, device=first.device)
        state = [{"step": steps[i], "exp_avg": moments[p][0], "exp_avg_sq": moments[p][1]}
                 for i, p in enumerate(params)]
        for p, mine in zip(params, state):
            self.state[p] = dict(mine)
        large_state = tuple([self.state[p][key] for p in large] for key in ("exp_avg", "exp_avg_sq", "step"))
        return _Layout(small, *buffers, large, large_state, steps, state)

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load, then the loaded state copied into this optimizer's tensors (zeros where a
        parameter has none yet)."""
        super().load_state_dict(state_dict)
        for group, layout in zip(self.param_groups, self._layouts):
            if layout is None:
                continue
            for p, mine in zip(group["params"], layout.state):
                loaded = self.state.get(p, {})
                for key, tensor in mine.items():
                    if key in loaded:
                        tensor.copy_(torch.as_tensor(loaded[key]))
                    else:
                        tensor.zero_()
                self.state[p] = {**loaded, **mine}
        self._steps_even = False

    def _flat_step_ok(self) -> bool:
        """Whether this step can run on the buffers (see the class docstring)."""
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            return False
        for group, layout in zip(self.param_groups, self._layouts):
            if layout is None:
                continue
            grads = [p.grad for p in group["params"]]
            if group["amsgrad"] or any(isinstance(v, Tensor) for v in (group["lr"], *group["betas"])) or \
                    any(g is None or g.is_sparse for g in grads):
                return False
        if not self._steps_even:
            self._steps_even = all(bool((layout.steps == layout.steps[0]).all())
                                   for layout in self._layouts if layout is not None)
        return self._steps_even

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``; with ``set_to_none`` (the default) a plain loop, without the
        profiler range torch's opens (0.3 % of a demo-size step at 2 threads)."""
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._flat_step_ok():
            self._steps_even = False
            super().step()
            return loss
        for group, layout in zip(self.param_groups, self._layouts):
            if layout is None:
                continue
            layout.steps.add_(1)
            hyper = dict(lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                         weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
                         maximize=group["maximize"])
            if layout.small:
                grads = torch.cat([p.grad.reshape(-1) for p in layout.small])
                torch._fused_adamw_([layout.params], [grads], [layout.exp_avg], [layout.exp_avg_sq], [],
                                    [layout.steps[:1]], **hyper)
            if layout.large:
                exp_avg, exp_avg_sq, steps = layout.large_state
                torch._fused_adamw_(layout.large, [p.grad for p in layout.large], exp_avg, exp_avg_sq, [], steps,
                                    **hyper)
        return loss


def _views(params: list, buffer: Tensor) -> list[Tensor]:
    """Views of ``buffer`` shaped like ``params``, back to back."""
    views, at = [], 0
    for p in params:
        views.append(buffer[at:at + p.numel()].view_as(p))
        at += p.numel()
    return views
