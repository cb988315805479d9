"""Adam for the training loop: PyTorch's fused kernel, called without the per-step bookkeeping.

``torch.optim.Adam(fused=True)`` updates all parameters in one kernel, but every ``step()``
first runs Python bookkeeping: optimizer hooks, a profiler range, gathering the parameters
that have gradients and their state into lists, grouping those lists by device and dtype.
For the classic MLP VAE at batch 128 on a 2-core CPU that bookkeeping cost about 0.3 ms of a
6 ms step, as much as the update itself (``torch.profiler``; see ``benchmarks/speed.py``).

:class:`Adam` is ``torch.optim.Adam(fused=True)`` (same class, same ``state_dict``, so
checkpoints are unchanged) whose :meth:`Adam.step` takes a short path when it can: every
parameter of its one parameter group has a gradient and its state, all on one device and of
one dtype, no AMSGrad, no hooks, no closure. It then does exactly what the fused implementation does,

    step_i += 1;  torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, ..., lr, betas, eps)

and otherwise (the first step, which creates the state; a frozen parameter; several devices)
it calls ``torch.optim.Adam.step``. The result is bit-for-bit the same (tested).
:func:`make_optimizer` falls back to PyTorch's default Adam where no fused kernel exists.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from torch.optim import optimizer as torch_optimizer

__all__ = ["Adam", "make_optimizer"]


class Adam(torch.optim.Adam):
    """``torch.optim.Adam(params, lr, fused=True)`` with a lean :meth:`step` (module docstring)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(params, lr=lr, fused=True, **kwargs)
        self._fast: tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]] | None = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._fast = None  # the state tensors were replaced

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._fast = None

    def _fast_lists(self) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]] | None:
        """Parameters, exp_avg, exp_avg_sq and step tensors of the one parameter group, when
        the short path applies (else None)."""
        if self._fast is None and len(self.param_groups) == 1:
            group = self.param_groups[0]
            params = list(group["params"])
            plain = not (group["amsgrad"] or group["maximize"] or group["differentiable"]
                         or group["decoupled_weight_decay"])
            started = all("exp_avg" in self.state.get(p, {}) for p in params)  # made by the first step
            if plain and started and len({(p.device, p.dtype) for p in params}) == 1:
                states = [self.state[p] for p in params]
                self._fast = (params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                              [s["step"] for s in states])
        return self._fast

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients (``set_to_none``, the default) without the profiler range and
        hook checks of ``torch.optim.Optimizer.zero_grad``; zeroing in place goes there."""
        if not set_to_none:
            return super().zero_grad(set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        lists = None if closure is not None or _hooked(self) else self._fast_lists()
        grads = None if lists is None else [p.grad for p in lists[0]]
        if lists is None or any(g is None for g in grads):  # or a parameter without gradient
            return _torch_step(self, closure)
        params, exp_avgs, exp_avg_sqs, steps = lists
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                           beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                           maximize=False, grad_scale=None, found_inf=None)
        return None

    # torch.optim.Optimizer wraps a subclass's step in its profiler range and hook calls; this
    # one calls torch's own (wrapped) step whenever hooks are set, so it must not be wrapped
    step.hooked = True  # type: ignore[attr-defined]


def _torch_step(optimizer: Adam, closure: Callable[[], float] | None) -> float | None:
    """``torch.optim.Adam.step`` with its profiler range and its step hooks, run once."""
    step = torch.optim.Adam.step
    if not getattr(step, "hooked", False):  # torch wraps it when its first Adam is made
        step = torch.optim.Optimizer.profile_hook_step(step)
    return step(optimizer, closure)


def _hooked(optimizer: torch.optim.Optimizer) -> bool:
    """Whether step hooks (this optimizer's or global ones) must run around each step."""
    return bool(optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or torch_optimizer._global_optimizer_pre_hooks or torch_optimizer._global_optimizer_post_hooks)


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam: the fused kernel with the lean step (:class:`Adam`) where PyTorch has one for the
    model's device and dtype, else PyTorch's default implementation. The same algorithm."""
    params = list(model.parameters())
    try:
        return Adam(params, lr=lr)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.Adam(params, lr=lr)
