"""Adam for the training loop: PyTorch's fused kernel, called without the per-step bookkeeping.

``torch.optim.Adam(fused=True)`` updates all parameters in one kernel, but every ``step()``
first runs Python bookkeeping: optimizer hooks, a profiler range, gathering the parameters
that have gradients and their state into lists, grouping those lists by device and dtype.
For the classic MLP VAE at batch 128 on a 2-core CPU that bookkeeping cost about 0.3 ms of a
6 ms step, as much as the update itself (``torch.profiler``; see ``benchmarks/speed.py``).

:class:`Adam` is ``torch.optim.Adam(fused=True)`` (same class, same ``state_dict``, so
checkpoints are unchanged) whose :meth:`Adam.step` takes a short path when it can: every
parameter of one group has a gradient and its state, all on one device and of one dtype, no
AMSGrad, no hooks, no closure. It then does exactly what the fused implementation does,

    step_i += 1;  torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, ..., lr, betas, eps)

and otherwise (the first step, which creates the state; a frozen parameter; several devices)
it calls ``torch.optim.Adam.step``. The result is bit-for-bit the same (tested).
:func:`make_optimizer` falls back to PyTorch's default Adam where no fused kernel exists.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

__all__ = ["Adam", "make_optimizer"]


class Adam(torch.optim.Adam):
    """``torch.optim.Adam(params, lr, fused=True)`` with a lean :meth:`step` (module docstring)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(params, lr=lr, fused=True, **kwargs)
        self._fast: list[tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]] | None = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._fast = None  # the state tensors were replaced

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._fast = None

    def _fast_lists(self) -> list[tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]] | None:
        """Per group: parameters, exp_avg, exp_avg_sq and step tensors, when the short path applies."""
        if self._fast is not None:
            return self._fast
        lists = []
        for group in self.param_groups:
            params = list(group["params"])
            if group["amsgrad"] or group["maximize"] or group["differentiable"] or group["decoupled_weight_decay"]:
                return None
            if any(p not in self.state or "exp_avg" not in self.state[p] for p in params):
                return None  # the state is created by the first full step
            if len({(p.device, p.dtype) for p in params}) > 1:
                return None
            states = [self.state[p] for p in params]
            lists.append((params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                          [s["step"] for s in states]))
        self._fast = lists
        return lists

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
        if lists is None:
            return _torch_step(self, closure)
        grads_per_group = []
        for params, *_ in lists:
            grads = [p.grad for p in params]
            if any(g is None for g in grads):  # a parameter without gradient this step
                return _torch_step(self, None)
            grads_per_group.append(grads)
        for group, (params, exp_avgs, exp_avg_sqs, steps), grads in zip(self.param_groups, lists, grads_per_group):
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                               lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                               eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)
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
    from torch.optim import optimizer as module

    return bool(optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or module._global_optimizer_pre_hooks or module._global_optimizer_post_hooks)


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam: the fused kernel with the lean step (:class:`Adam`) where PyTorch has one for the
    model's device and dtype, else PyTorch's default implementation. The same algorithm."""
    params = list(model.parameters())
    try:
        return Adam(params, lr=lr)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.Adam(params, lr=lr)
