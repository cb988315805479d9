"""The exact inverse of inverse autoregressive flow steps, each MADE unit evaluated once.

Inverting an IAF step is sequential: z_{t-1, i} = (z_{t,i} - mu_t,i) / sigma_t,i needs
z_{t-1, <i} first, D dependent steps. zuko runs the whole MADE network once per dimension
(D full passes, each differentiated by autograd). :func:`iaf_inverse` computes the same
function with each hidden unit evaluated once: a MADE unit depends on the inputs up to some
position m of the order (its *level*), so it is final as soon as those m inputs are known.
With the units sorted by level, step i evaluates the units of level i from the inputs and
units already known and reads (mu_t,i, sigma_t,i): the D sequential steps together cost
about one MADE pass instead of D. The gradient is a hand-written reverse sweep of the same
shape (:class:`_StepInverse`), not autograd through D steps. What is left is dispatch: each
position costs a handful of small eager operations, so each sweep is a list of in-place
operations on views of buffers made once per shape and lent to each call (:class:`_Workspace`),
with nothing allocated or sliced inside it. Exact, not an approximation:
the densities equal zuko's to rounding (``tests/test_flows_vamp.py``). This is what makes the
VampPrior under an IAF posterior affordable: its density scores every z under the C flow
posteriors of the pseudo-inputs, each needing the inverse (``benchmarks/flows_vamp.py``).
"""

from __future__ import annotations

import itertools
import math
import weakref
from functools import partial
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Size, Tensor, nn
from torch.autograd.function import once_differentiable
from zuko.flows import MaskedAutoregressiveTransform
from zuko.nn import MaskedLinear
from zuko.transforms import MonotonicAffineTransform

__all__ = ["iaf_inverse"]


class _MadePlan(NamedTuple):
    """How to invert one masked autoregressive step unit by unit (see :func:`iaf_inverse`).

    The sweep runs in the step's order: ``features[p]`` is the feature at position p,
    ``positions[f]`` the position of feature f (both None when the order is the identity)
    and ``out_rows`` the output rows (shift, raw log-scale) of each position in turn. For
    each hidden layer, ``perms[l]`` sorts its units by level (a unit of level m depends on
    the inputs at positions < m only) and ``starts[l][m]:starts[l][m + 1]`` are the units of
    level m; ``unsort[l]`` is its inverse. ``gathers`` take each weight matrix into that
    layout in one ``torch.take`` (the first layer's input columns ``[D, H_1]`` in position
    order, each hidden layer's ``[H_{l+1}, H_l]``, the outputs' ``[2 D, H_L]``), paired with
    the inverse gather that returns a gradient to the module's layout. ``workspaces`` holds
    the reusable buffers of :class:`_Workspace`, per shape.
    """

    features: Tensor | None  # [D]: the feature at each position (None: the identity)
    positions: Tensor | None  # [D]: the position of each feature (None: the identity)
    out_rows: Tensor  # [2 D]
    perms: tuple[Tensor, ...]  # per hidden layer, [H_l]
    starts: tuple[tuple[int, ...], ...]  # per hidden layer, D + 1 offsets
    unsort: tuple[Tensor, ...]  # per hidden layer, [H_l]: argsort(perms[l])
    out_unsort: Tensor  # [2 D]: argsort(out_rows)
    gathers: tuple[tuple[Tensor, Tensor], ...]  # per weight matrix: (flat index, its inverse)
    workspaces: dict[tuple[object, ...], list["_Workspace"]]


_PLANS: "weakref.WeakKeyDictionary[nn.Module, _MadePlan | None]" = weakref.WeakKeyDictionary()
_LOG_SCALE_BOUND = -math.log(1e-3)  # zuko's MonotonicAffineTransform: log sigma = a / (1 + |a| / 6.91)
_WORKSPACE_BYTES = 16 << 20  # larger sweeps get buffers of their own (their cost is arithmetic)
_WORKSPACE_SHAPES = 3  # reusable buffers kept per step, for the most recent row counts
_SPARE_WORKSPACES = 2  # idle buffers kept per shape
_SWEEP_BLOCK = 0  # positions per block of a sweep (0: about 1.5 sqrt(D); see _Workspace)


def _made_plan(step: nn.Module) -> _MadePlan | None:
    """The plan of a zuko ``MaskedAutoregressiveTransform`` with an affine univariate map, a
    fully autoregressive order and a plain ReLU MADE (what :class:`IAFEncoder` builds), read
    from its masks and cached per module (and device); None for any other step (zuko's
    inverse is used then)."""
    plan = _PLANS.get(step, False)
    if plan is None or (plan is not False and plan.out_rows.device == step.order.device):
        return plan
    plan = None
    layers = list(getattr(step, "hyper", ()))
    linears, activations = layers[0::2], layers[1::2]
    if (
        isinstance(step, MaskedAutoregressiveTransform)
        and step.univariate is MonotonicAffineTransform
        and tuple(tuple(shape) for shape in step.shapes) == ((), ())
        and step.order is not None
        and len(linears) == len(activations) + 1 >= 2
        and all(isinstance(layer, MaskedLinear) for layer in linears)
        and all(type(layer) is nn.ReLU for layer in activations)
    ):
        d = step.order.numel()
        position = step.order  # [D] the position of each feature in the order
        if sorted(position.tolist()) == list(range(d)) and linears[-1].out_features == 2 * d:
            level = (linears[0].mask[:, :d].long() * (position + 1)).amax(1)  # [H1]
            perms, starts = [], []
            for i, layer in enumerate(linears[:-1]):
                if i > 0:
                    level = (layer.mask.long() * level).amax(1)  # [H_i]: the deepest input reached
                perms.append(torch.sort(level, stable=True).indices)
                counts = torch.bincount(level, minlength=d).tolist()
                starts.append(tuple(itertools.accumulate(counts, initial=0)))
                if len(counts) > d:  # a unit that needs every input feeds no output
                    break
            else:
                needs = (linears[-1].mask.long() * level).amax(1).view(d, 2).amax(1)  # [D]
                if bool((needs <= position).all()):  # output f reads only units of level <= its position
                    features = torch.argsort(position)
                    out_rows = torch.stack([2 * features, 2 * features + 1], -1).flatten()
                    identity = bool((position == torch.arange(d, device=position.device)).all())
                    flat = [perms[0] * d + features[:, None]]  # [D, H1]: W1[perm0[j], features[p]]
                    flat += [perms[l][:, None] * len(perms[l - 1]) + perms[l - 1] for l in range(1, len(perms))]
                    flat.append(out_rows[:, None] * len(perms[-1]) + perms[-1])  # [2D, H_L]
                    plan = _MadePlan(None if identity else features, None if identity else position.clone(),
                                     out_rows, tuple(perms), tuple(starts), tuple(torch.argsort(p) for p in perms),
                                     torch.argsort(out_rows), tuple((f, torch.argsort(f.flatten())) for f in flat), {})
    _PLANS[step] = plan
    return plan


class _Workspace:
    """The buffers of one step's sweep over N rows, and its operations, made once per shape.

    Each sweep is a fixed list of small in-place operations on views of these buffers
    (``forward_ops``; ``backward_ops()``, made at the first backward: argument-free callables),
    so a call only fills the buffers and runs the list: no view is made and nothing is
    allocated inside the sweep, where each of its D sequential positions costs a handful of
    eager operations. Layouts (position order; hidden units sorted by level), with a the raw
    log-scale output, t = 1 + |a| / bound and s = a / t = log sigma:

        act[l] [H_l, N]: pre-activations, then the units;   out [D, 4, N]: per position the rows
        (y - mu, 1 + a / bound, 1 - a / bound, -a) from the folded weights ``w_out4`` [D, 4, H_L],
        so that t = max(row 1, row 2), -s = row 3 / t, 1 / sigma = exp(-s), x = row 0 / sigma:
        four operations; x, t, neg_s, inv_scale [D, N].  Backward: adj[l] [H_l, N] dL/d
        pre-activation; live[l] the ReLU derivatives; x_bar [D, N] dL/dx; out_bar [D, 2, N]
        (dL/dmu, dL/da) = x_bar * gain + offset.

    Positions go in blocks of about 1.5 sqrt(D): what the positions before a block contribute
    to its units (backward: what the readers after it contribute) is one product per layer at
    the block's start, and inside the block a position reads only the block's own levels. The
    same sums, grouped so that the growing prefix is read once per block instead of once per
    position (about 1.8x faster sweeps at D = 64; a few per cent at D = 20).
    """

    def __init__(self, starts: tuple[tuple[int, ...], ...], d: int, n: int, dtype: torch.dtype,
                 device: torch.device, block: int = 0) -> None:
        self.starts, self.d, self.n, self.dtype, self.device = starts, d, n, dtype, device
        block = block or max(1, round(1.5 * math.sqrt(d)))
        self.blocks = [(s, min(s + block, d)) for s in range(0, d, block)]
        layers, widths = len(starts), [s[-1] for s in starts]
        act = self.act = [self._new(h, n) for h in widths]  # [H_l, N]
        out = self.out = self._new(d, 4, n)  # [D, 4, N]
        x, t, neg_s, inv_scale = self.x, self.t, self.neg_s, self.inv_scale = [self._new(d, n) for _ in range(4)]
        wx = self.wx = self._new(d, widths[0])  # [D, H1]: weights from the inputs, position order
        w = self.w = [self._new(widths[l + 1], widths[l]) for l in range(layers - 1)]  # [H_{l+1}, H_l]
        self.w_out = self._new(2 * d, widths[-1])  # [2D, H_L]: rows (mu, a) per position
        w_out4 = self.w_out4 = self._new(d, 4, widths[-1])  # [D, 4, H_L]: the rows of out
        fold = [[-1.0, 0.0], [0.0, 1 / _LOG_SCALE_BOUND], [0.0, -1 / _LOG_SCALE_BOUND], [0.0, -1.0]]
        self.fold = torch.tensor(fold, dtype=dtype, device=device)  # [4, 2]: (mu, a) -> rows of out
        self.fold_bias = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=dtype, device=device)  # [4]
        ops: list[Callable[[], object]] = []
        for s, e in self.blocks:
            if s > 0:  # the block's units (and outputs) from the levels before it
                lo, hi = starts[0][s], starts[0][e]
                if hi > lo:
                    ops.append(partial(act[0][lo:hi].addmm_, wx[:s, lo:hi].t(), x[:s]))
                for l in range(1, layers):
                    lo, hi, below = starts[l][s], starts[l][e], starts[l - 1][s]
                    if hi > lo and below:
                        ops.append(partial(act[l][lo:hi].addmm_, w[l - 1][lo:hi, :below], act[l - 1][:below]))
                below = starts[-1][s]
                if below:
                    ops.append(partial(out[s:e].view(-1, n).addmm_, w_out4[s:e].view(-1, widths[-1])[:, :below],
                                       act[-1][:below]))
            for p in range(s, e):  # x_p from the units of level p (module docstring)
                for l in range(layers):
                    lo, hi = starts[l][p], starts[l][p + 1]
                    if hi > lo:
                        if l == 0 and p > s:  # from the inputs of positions s..p-1
                            ops.append(partial(act[0][lo:hi].addmm_, wx[s:p, lo:hi].t(), x[s:p]))
                        elif l > 0 and starts[l - 1][p + 1] > starts[l - 1][s]:  # from the units of levels s..p below
                            b0, b1 = starts[l - 1][s], starts[l - 1][p + 1]
                            ops.append(partial(act[l][lo:hi].addmm_, w[l - 1][lo:hi, b0:b1], act[l - 1][b0:b1]))
                        ops.append(act[l][lo:hi].relu_)
                b0, b1 = starts[-1][s], starts[-1][p + 1]
                if b1 > b0:
                    ops.append(partial(out[p].addmm_, w_out4[p, :, b0:b1], act[-1][b0:b1]))
                ops += [partial(torch.maximum, out[p, 1], out[p, 2], out=t[p]),
                        partial(torch.div, out[p, 3], t[p], out=neg_s[p]),
                        partial(torch.exp, neg_s[p], out=inv_scale[p]),
                        partial(torch.mul, out[p, 0], inv_scale[p], out=x[p])]
        self.forward_ops = ops
        self._backward_ops: list[Callable[[], object]] | None = None

    def _new(self, *shape: int) -> Tensor:
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def backward_ops(self) -> list[Callable[[], object]]:
        """The reverse sweep's operations (and its buffers), made at the first call."""
        if self._backward_ops is not None:
            return self._backward_ops
        starts, d, n, w, wx = self.starts, self.d, self.n, self.w, self.wx
        layers, widths = len(starts), [s[-1] for s in starts]
        adj = self.adj = [self._new(h, n) for h in widths]  # [H_l, N]
        live = self.live = [self._new(h, n) for h in widths]  # [H_l, N]: 1 where a unit is active, else 0
        x_bar, out_bar = self.x_bar, self.out_bar = self._new(d, n), self._new(d, 2, n)
        gain, offset = self.gain, self.offset = self._new(d, 2, n), self._new(d, 2, n)
        out_flat, w_out = out_bar.view(2 * d, n), self.w_out
        ops: list[Callable[[], object]] = []
        for s, e in reversed(self.blocks):  # each adjoint pulled from its readers, all final by then
            k = starts[0][e]
            if e < d and k < widths[0]:  # x_s..x_{e-1} read by the first-layer units of levels >= e
                ops.append(partial(x_bar[s:e].addmm_, wx[s:e, k:], adj[0][k:]))
            for l in reversed(range(layers)):  # the block's units from their readers after it (or 0)
                lo, hi = starts[l][s], starts[l][e]
                if hi > lo:
                    if l == layers - 1:
                        block, source = w_out[2 * e :, lo:hi].t(), out_flat[2 * e :]
                    else:
                        block, source = w[l][starts[l + 1][e] :, lo:hi].t(), adj[l + 1][starts[l + 1][e] :]
                    ops.append(partial(torch.mm, block, source, out=adj[l][lo:hi]) if source.shape[0]
                               else adj[l][lo:hi].zero_)
            for p in reversed(range(s, e)):
                k0, k1 = starts[0][p + 1], starts[0][e]
                if k1 > k0:  # x_p read by the first-layer units of levels p+1..e-1
                    ops.append(partial(x_bar[p : p + 1].addmm_, wx[p : p + 1, k0:k1], adj[0][k0:k1]))
                ops.append(partial(torch.addcmul, offset[p], gain[p], x_bar[p], out=out_bar[p]))
                for l in reversed(range(layers)):
                    lo, hi = starts[l][p], starts[l][p + 1]
                    if hi > lo:  # level p: read by the outputs of positions p..e-1 or the units of levels p..e-1 above
                        if l == layers - 1:
                            block, source = w_out[2 * p : 2 * e, lo:hi].t(), out_flat[2 * p : 2 * e]
                        else:
                            u0, u1 = starts[l + 1][p], starts[l + 1][e]
                            block, source = w[l][u0:u1, lo:hi].t(), adj[l + 1][u0:u1]
                        if source.shape[0]:
                            ops.append(partial(adj[l][lo:hi].addmm_, block, source))
                        ops.append(partial(adj[l][lo:hi].mul_, live[l][lo:hi]))
        self._backward_ops = ops
        return ops


class _Lease:
    """A workspace lent to one sweep; back to its pool when the sweep's autograd context goes."""

    __slots__ = ("pool", "workspace")

    def __init__(self, pool: list[_Workspace] | None, workspace: _Workspace) -> None:
        self.pool, self.workspace = pool, workspace

    def __del__(self) -> None:
        if self.pool is not None and len(self.pool) < _SPARE_WORKSPACES:
            self.pool.append(self.workspace)


def _lease(plan: _MadePlan, d: int, n: int, dtype: torch.dtype, device: torch.device) -> _Lease:
    """A workspace for a sweep over n rows: an idle one of the same shape when the plan
    keeps one, else a new one (kept for reuse when small)."""
    if (3 * sum(s[-1] for s in plan.starts) + 16 * d) * n * dtype.itemsize > _WORKSPACE_BYTES:  # forward and backward
        return _Lease(None, _Workspace(plan.starts, d, n, dtype, device, _SWEEP_BLOCK))
    key = (n, dtype, device, torch.is_inference_mode_enabled())
    pools = plan.workspaces
    pool = pools.pop(key, [])  # re-inserted last: the most recently used shape
    pools[key] = pool
    while len(pools) > _WORKSPACE_SHAPES:
        del pools[next(iter(pools))]
    return _Lease(pool, pool.pop() if pool else _Workspace(plan.starts, d, n, dtype, device, _SWEEP_BLOCK))


class _StepInverse(torch.autograd.Function):
    """x = T^{-1}(y) and log |det dy/dx| = sum_p s_p of one affine MADE step, exactly.

    Inputs: the plan; y ``[N, D]``; ``first`` the first layer's pre-activation before the
    inputs (bias + context), ``[H_1, *shape]`` with N = prod(shape); ``wx`` ``[H_1, D]`` its
    weights from the inputs; the other layers' weights (nn.Linear's layout, the last one
    ``[2 D, H_L]`` to the outputs (mu, a) of feature f at rows 2f, 2f + 1) and biases, all
    masked, in the module's unit order. Forward, for p = 0..D-1 (f the feature at position p):

        the units of level p, layer by layer: their pre-activation from the inputs of
        positions < p (first layer) or the units of levels <= p below, then ReLU;
        mu, a = outputs 2f, 2f + 1 (from the last layer's units of levels <= p);
        s_p = a / (1 + |a| / 6.91) (zuko's bound);  x_f = (y_f - mu) / exp(s_p).

    Backward is the same sweep in reverse, by hand (each unit once, no autograd graph of D
    steps), each adjoint pulled from its readers: with x_bar_p = dL/dx_f plus the first-layer
    adjoints of the units that read x_f (levels > p, done in earlier reverse steps) times
    their weights,

        dL/dmu = -x_bar_p e^{-s_p},  dL/da = (dL/dlogdet - x_bar_p x_f) / (1 + |a| / 6.91)^2,

    then the units of level p take their adjoints from their readers (the outputs of positions
    >= p, or the units of levels >= p above; ReLU masks from the saved activations); at the
    end dL/dy_f = x_bar_p e^{-s_p} and the weight gradients are dense products. The buffers
    and the list of operations come from a :class:`_Workspace` made once per shape.
    """

    @staticmethod
    def forward(ctx, plan: _MadePlan, y: Tensor, first: Tensor, wx: Tensor, *params: Tensor) -> tuple[Tensor, Tensor]:
        n, d = y.shape
        layers = len(plan.starts)
        weights, biases = params[:layers], params[layers:]
        lease = _lease(plan, d, n, y.dtype, y.device)
        ws = lease.workspace
        # the weights and biases into the sweep's layout (units by level, outputs by position)
        torch.index_select(first, 0, plan.perms[0], out=ws.act[0].view(first.shape))
        torch.take(wx, plan.gathers[0][0], out=ws.wx)
        for l in range(1, layers):
            torch.take(weights[l - 1], plan.gathers[l][0], out=ws.w[l - 1])
            ws.act[l].copy_(biases[l - 1].index_select(0, plan.perms[l])[:, None])
        torch.take(weights[-1], plan.gathers[-1][0], out=ws.w_out)
        torch.matmul(ws.fold, ws.w_out.view(d, 2, -1), out=ws.w_out4)  # [D, 4, H_L]
        b_out = torch.addmm(ws.fold_bias, biases[-1].index_select(0, plan.out_rows).view(d, 2), ws.fold.t())  # [D, 4]
        ws.out.copy_(b_out[:, :, None])
        ws.out[:, 0].add_(_rows(y.t(), plan.features))  # y - mu
        for op in ws.forward_ops:
            op()
        ctx.lease, ctx.plan, ctx.first_shape = lease, plan, first.shape
        x = ws.x.clone() if plan.positions is None else ws.x.index_select(0, plan.positions)  # [D, N], features
        return x.t(), ws.neg_s.sum(0).neg_()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x: Tensor | None, grad_log_det: Tensor | None) -> tuple[Tensor | None, ...]:
        ws, plan = ctx.lease.workspace, ctx.plan
        d, n, layers = ws.d, ws.n, len(ws.act)
        ops = ws.backward_ops()  # (makes the buffers below at the first backward)
        if grad_x is None:
            ws.x_bar.zero_()
        else:
            ws.x_bar.copy_(_rows(grad_x.t(), plan.features))
        for act, live in zip(ws.act, ws.live):
            torch.sign(act, out=live)  # 1 where the unit is active, else 0 (act >= 0)
        slope = ws.t.pow(-2)  # ds/da, [D, N]
        torch.neg(ws.inv_scale, out=ws.gain[:, 0])
        torch.mul(ws.x, slope, out=ws.gain[:, 1]).neg_()
        if grad_log_det is None:
            ws.offset[:, 1].zero_()
        else:
            torch.mul(slope, grad_log_det, out=ws.offset[:, 1])
        for op in ops:
            op()
        out_bar = ws.out_bar.view(2 * d, n)  # [2D, N]
        grad_weights = [torch.take(ws.adj[l + 1] @ ws.act[l].t(), plan.gathers[l + 1][1]).view_as(ws.w[l])
                        for l in range(layers - 1)]
        grad_weights.append(torch.take(out_bar @ ws.act[-1].t(), plan.gathers[-1][1]).view_as(ws.w_out))
        grad_biases = [ws.adj[l].sum(1).index_select(0, plan.unsort[l]) for l in range(1, layers)]
        grad_biases.append(out_bar.sum(1).index_select(0, plan.out_unsort))
        grad_y = _rows(ws.out_bar[:, 0], plan.positions).neg().t()  # dL/dy = x_bar e^{-s} = -dL/dmu
        grad_wx = torch.take(ws.x @ ws.adj[0].t(), plan.gathers[0][1]).view(-1, d)  # [H1, D]
        grad_first = ws.adj[0].index_select(0, plan.unsort[0]).view(ctx.first_shape)
        return (None, grad_y, grad_first, grad_wx, *grad_weights, *grad_biases)


def _rows(t: Tensor, index: Tensor | None) -> Tensor:
    """The rows ``index`` of ``t`` (``t`` itself when the index is the identity, None)."""
    return t if index is None else t.index_select(0, index)


def _invert_step(step: nn.Module, plan: _MadePlan, h: Tensor, y: Tensor, shape: Size) -> tuple[Tensor, Tensor]:
    """x = T^{-1}(y) and sum_i log sigma_i for one step, rows ``y`` ``[N, D]`` (N = prod(shape)),
    context ``h`` ``[*batch, C]`` broadcast to ``shape``: the step's masked weights through
    :class:`_StepInverse` (which sorts them by level)."""
    linears = list(step.hyper)[0::2]
    d = y.shape[1]
    weights = [layer.weight * layer.mask for layer in linears]  # masked, as zuko's MaskedLinear
    first = nn.functional.linear(h, weights[0][:, d:], linears[0].bias)  # [*batch, H1]
    first = first.expand(*shape, first.shape[-1]).movedim(-1, 0)  # [H1, *shape]
    return _StepInverse.apply(plan, y, first, weights[0][:, :d], *weights[1:], *(l.bias for l in linears[1:]))


def iaf_inverse(steps: Sequence[nn.Module], h: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """z0 = f^{-1}(z) and log |det dz/dz0| for the IAF z = f(z0) = T_n(...T_1(z0; h)...; h).

    ``steps`` are zuko ``MaskedAutoregressiveTransform`` modules in sampling order, ``h`` the
    context ``[*batch, C]``, ``z`` ``[..., D]`` with ``...`` broadcastable to ``*batch``;
    returns ``[*shape, D]`` and ``[*shape]``, ``shape = broadcast(z.shape[:-1], batch)``.

    Each step y = T(x) has y_i = mu_i(x_<i) + sigma_i(x_<i) x_i, so

        x_i = (y_i - mu_i(x_<i)) / sigma_i(x_<i),   log |det dy/dx| = sum_i log sigma_i(x_<i),

    in the order of the step. Rather than D passes of the whole MADE network (zuko), every
    hidden unit is evaluated once, as soon as the inputs it depends on are known (module
    docstring): the same function, so the same numbers up to rounding, differentiable (once)
    in z, h and the weights through a hand-written reverse sweep (:class:`_StepInverse`).
    Steps of any other kind (not a fully autoregressive affine ReLU MADE) use zuko's inverse.

    Example:
        >>> flow = IAFEncoder(MLP(784, [400], IAFEncoder.outputs(20, 20)), 20, 20, 4)(x)   # batch [B]
        >>> z0, log_det = iaf_inverse(flow.made, flow.context, z)    # z [K, B, 20] -> [K, B, 20], [K, B]
    """
    d = z.shape[-1]
    shape = torch.broadcast_shapes(z.shape[:-1], h.shape[:-1])
    dtype = torch.promote_types(z.dtype, h.dtype)
    x = z.to(dtype).expand(*shape, d).reshape(-1, d)  # [N, D]
    log_det = x.new_zeros(x.shape[0])
    with torch.autocast(z.device.type, enabled=False):  # a density: full precision, like the KL
        for step in reversed(steps):
            plan = _made_plan(step)
            if plan is None:
                x_full, minus = step(h.to(dtype)).inv.call_and_ladj(x.reshape(*shape, d))  # zuko: D passes
                x, log_det = x_full.reshape(-1, d), log_det - minus.reshape(-1)
            else:
                x, step_log_det = _invert_step(step, plan, h.to(dtype), x, shape)
                log_det = log_det + step_log_det
    return x.reshape(*shape, d), log_det.reshape(shape)
