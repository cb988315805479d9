"""Flow posteriors: a diagonal Gaussian q0(z0|x) pushed through K invertible steps z = f(z0).

A posterior whose sample is a differentiable, invertible function of noise with a tractable
Jacobian plugs into the ELBO unchanged (Rezende & Mohamed 2015):

    z0 = mu(x) + sigma(x) * eps,  z = f_K o ... o f_1(z0),
    log q(z|x) = log q0(z0|x) - sum_k log |det d f_k / d z_{k-1}|.

Both distributions here provide ``rsample_and_log_prob(sample_shape)``, which returns the
samples ``[*sample_shape, B, D]`` with their log-densities ``[*sample_shape, B]`` from one
forward pass (what :meth:`vaelab.model.VAE.trace` calls), ``forward_and_log_det(z0)``, the one
method everything else derives from, and ``log_prob(z)`` for any z (by inverting the flow:
slower, used by the VampPrior and by tests). They have no closed-form moments: ``mean``,
``variance`` and ``stddev`` are Monte Carlo estimates over ``MOMENT_SAMPLES`` draws of a
fixed-seed noise, so the same inputs give the same numbers.

* :class:`PlanarFlowEncoder` (Rezende & Mohamed 2015): f(z) = z + u_hat tanh(w^T z + b),
  amortized: the encoder outputs u, w, b of every step for every example.
* :class:`IAFEncoder` (Kingma et al. 2016): inverse autoregressive steps
  z_t = mu_t(z_{t-1}, h) + sigma_t(z_{t-1}, h) * z_{t-1} with MADE networks conditioned on
  a context h from the encoder, built on zuko's masked autoregressive transforms.

Inverting an IAF step is sequential: z_{t-1, i} = (z_{t,i} - mu_t,i) / sigma_t,i needs
z_{t-1, <i} first, D dependent steps. zuko runs the whole MADE network once per dimension
(D full passes, each differentiated by autograd). :func:`iaf_inverse` computes the same
function with each hidden unit evaluated once: a MADE unit depends on the inputs up to some
position m of the order (its *level*), so it is final as soon as those m inputs are known.
With the units sorted by level, step i evaluates the units of level i from the inputs and
units already known and reads (mu_t,i, sigma_t,i): the D sequential steps together cost
about one MADE pass instead of D. The gradient is a hand-written reverse sweep of the same
shape (:class:`_StepInverse`), not autograd through D steps. Exact, not an approximation:
the densities equal zuko's to rounding (``tests/test_flows_vamp.py``). This is what makes the
VampPrior under an IAF posterior affordable: its density scores every z under the C flow
posteriors of the pseudo-inputs, each needing the inverse (``benchmarks/flows_vamp.py``).
"""

from __future__ import annotations

import itertools
import math
import weakref
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Size, Tensor, nn
from torch.autograd.function import once_differentiable
from torch.distributions import Distribution, constraints
from zuko.distributions import NormalizingFlow
from zuko.flows import MaskedAutoregressiveTransform
from zuko.nn import MaskedLinear
from zuko.transforms import ComposedTransform, MonotonicAffineTransform

from ..registry import Option, Shapes, register
from .posteriors import MIN_SCALE, diagonal_gaussian, run_net

__all__ = ["PlanarFlow", "PlanarFlowEncoder", "InverseAutoregressiveFlow", "IAFEncoder", "iaf_inverse",
           "MOMENT_SAMPLES", "FLOW_STEPS"]

MOMENT_SAMPLES = 1000  # draws behind the Monte Carlo mean and variance of a flow posterior
FLOW_STEPS = Option("flow_steps", int, 4, "planar or iaf posterior: number of flow steps", low=1)


def _monte_carlo_moments(
    push: Callable[[Tensor], Tensor], loc: Tensor, scale: Tensor, n: int = MOMENT_SAMPLES
) -> tuple[Tensor, Tensor]:
    """Mean and variance of push(loc + scale * eps), eps ~ N(0, I) from a fixed seed, ``[*batch, D]``.

    The draws come 100 at a time (memory: 100 x batch), from a generator seeded with 0, so
    the estimate is the same for the same parameters; its error is stddev / sqrt(n).
    """
    generator = torch.Generator(device=loc.device).manual_seed(0)
    total = torch.zeros_like(loc)
    total_sq = torch.zeros_like(loc)
    for start in range(0, n, 100):
        m = min(100, n - start)
        eps = torch.randn((m, *loc.shape), generator=generator, device=loc.device, dtype=loc.dtype)
        z = push(loc + scale * eps)  # [m, *batch, D]
        total = total + z.sum(0)
        total_sq = total_sq + z.pow(2).sum(0)
    mean = total / n
    return mean, (total_sq / n - mean.pow(2)).clamp_min(0) * n / (n - 1)


# --- planar flows -------------------------------------------------------------------------


class _MonteCarloMoments:
    """``mean`` and ``variance`` of a flow by Monte Carlo (fixed seed, ``MOMENT_SAMPLES``
    draws) from the subclass's ``_moments()``: flows have no closed-form moments."""

    @property
    def mean(self) -> Tensor:
        return self._moments()[0]

    @property
    def variance(self) -> Tensor:
        return self._moments()[1]


class PlanarFlow(_MonteCarloMoments, Distribution):
    """A diagonal Gaussian q0 pushed through K planar steps f_k(z) = z + u_hat_k tanh(w_k^T z + b_k).

    With psi_k = tanh'(w_k^T z + b_k) w_k, det(d f_k / dz) = 1 + u_hat_k^T psi_k, so

        log q(z_K) = log q0(z_0) - sum_k log |1 + u_hat_k^T psi_k(z_{k-1})|.

    Invertibility (Rezende & Mohamed 2015, appendix A): f_k is invertible when
    w^T u_hat >= -1; the raw u is mapped to

        u_hat = u + (m(w^T u) - w^T u) w / ||w||^2,   m(a) = -1 + softplus(a),

    so that w^T u_hat = m(w^T u) > -1 (||w||^2 is floored at the smallest positive float, so
    w = 0, a pure shift, gives no NaN). There is no closed-form inverse, but it reduces to one
    scalar equation per step: with alpha = w^T z_{k-1} and y = w^T z_k,
    alpha + (w^T u_hat) tanh(alpha + b) = y, increasing in alpha, with its root in
    [y - |w^T u_hat|, y + |w^T u_hat|]. :meth:`log_prob` finds it by Newton's method
    safeguarded by bisection (to machine precision, at most ``MAX_SOLVER_STEPS`` steps) and
    one last Newton step carries the gradient (the implicit function theorem:
    d alpha = -dg / g'), so ``log_prob(z)`` is exact and differentiable for any z. Sampling
    never needs the inverse.

    Args:
        loc, scale: the base q0 = N(loc, diag(scale^2)), ``[*batch, D]``.
        u, w: raw step vectors ``[*batch, K, D]`` (u is made invertible as above).
        b: step offsets ``[*batch, K]``.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.real_vector
    has_rsample = True
    MAX_SOLVER_STEPS = 100

    def __init__(self, loc: Tensor, scale: Tensor, u: Tensor, w: Tensor, b: Tensor) -> None:
        self.loc, self.scale = loc, scale
        self.base = diagonal_gaussian(loc, scale)  # q0: batch [*batch], event [D]
        wu = (w * u).sum(-1, keepdim=True)  # [*batch, K, 1]
        norm_sq = w.pow(2).sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        self.u_hat = u + (nn.functional.softplus(wu) - 1 - wu) * w / norm_sq  # [*batch, K, D]
        self.u, self.w, self.b = u, w, b
        self.wu_hat = (w * self.u_hat).sum(-1)  # w^T u_hat > -1, [*batch, K]
        super().__init__(self.base.batch_shape, self.base.event_shape, validate_args=False)

    @property
    def steps(self) -> int:
        return self.w.shape[-2]

    def forward_and_log_det(self, z0: Tensor) -> tuple[Tensor, Tensor]:
        """z = f(z0) and log |det dz/dz0| for z0 ``[..., *batch, D]``; returns ``[..., *batch, D]``, ``[..., *batch]``."""
        z, log_det = z0, torch.zeros_like(z0[..., 0])
        for k in range(self.steps):
            t = torch.tanh((z * self.w[..., k, :]).sum(-1) + self.b[..., k])  # [..., *batch]
            z = z + self.u_hat[..., k, :] * t.unsqueeze(-1)
            log_det = log_det + torch.log1p(self.wu_hat[..., k] * (1 - t.pow(2)))
        return z, log_det

    def _inverse_and_log_det(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z0 = f^{-1}(z) and log |det dz/dz0| (of the forward map, at z0)."""
        log_det = torch.zeros_like(z[..., 0])
        for k in reversed(range(self.steps)):
            w, u_hat, b, c = self.w[..., k, :], self.u_hat[..., k, :], self.b[..., k], self.wu_hat[..., k]
            y = (z * w).sum(-1)  # [..., *batch]
            alpha = self._solve(y, c, b)
            t = torch.tanh(alpha + b)
            z = z - u_hat * t.unsqueeze(-1)
            log_det = log_det + torch.log1p(c * (1 - t.pow(2)))
        return z, log_det

    def _solve(self, y: Tensor, c: Tensor, b: Tensor) -> Tensor:
        """The alpha with g(alpha) = alpha + c tanh(alpha + b) - y = 0 (c > -1).

        Newton's method kept inside a bracket that shrinks at every step (a bisection step
        whenever Newton would leave it): quadratic convergence, never divergence. The search
        runs without gradients; one final Newton step carries them (implicit function theorem).
        """
        with torch.no_grad():
            y0, c0, b0 = torch.broadcast_tensors(y.detach(), c.detach(), b.detach())
            lo, hi = y0 - c0.abs(), y0 + c0.abs()
            alpha = y0.clone()
            tol = 4 * torch.finfo(y0.dtype).eps
            for _ in range(self.MAX_SOLVER_STEPS):
                t = torch.tanh(alpha + b0)
                g = alpha + c0 * t - y0
                below = g < 0  # the root is above alpha
                lo, hi = torch.where(below, alpha, lo), torch.where(below, hi, alpha)
                newton = alpha - g / (1 + c0 * (1 - t.pow(2)))
                step = torch.where((newton >= lo) & (newton <= hi), newton, (lo + hi) / 2)
                done = bool(((step - alpha).abs() <= tol * (1 + alpha.abs())).all())
                alpha = step
                if done:
                    break
        t = torch.tanh(alpha + b)
        g = alpha + c * t - y  # ~0; its gradient is the implicit one
        return alpha - g / (1 + c * (1 - t.pow(2)))

    def detach_parameters(self) -> "PlanarFlow":
        """The same flow with every parameter cut from the autograd graph (for STL and DReG:
        its ``log_prob(z)`` differentiates in z only)."""
        return PlanarFlow(self.loc.detach(), self.scale.detach(), self.u.detach(), self.w.detach(), self.b.detach())

    def rsample_and_log_prob(self, sample_shape: Size | tuple[int, ...] = Size()) -> tuple[Tensor, Tensor]:
        z0 = self.base.rsample(sample_shape)  # [*S, *batch, D]
        z, log_det = self.forward_and_log_det(z0)
        return z, self.base.log_prob(z0) - log_det

    def rsample(self, sample_shape: Size | tuple[int, ...] = Size()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def log_prob(self, value: Tensor) -> Tensor:
        z0, log_det = self._inverse_and_log_det(value)
        return self.base.log_prob(z0) - log_det

    def _moments(self) -> tuple[Tensor, Tensor]:
        if not hasattr(self, "_cached_moments"):
            self._cached_moments = _monte_carlo_moments(lambda z0: self.forward_and_log_det(z0)[0], self.loc, self.scale)
        return self._cached_moments


    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, event_shape={tuple(self.event_shape)}, steps={self.steps})"


class PlanarFlowEncoder(nn.Module):
    """q(z|x): a diagonal Gaussian followed by ``steps`` planar flow steps, all amortized.

    The network outputs, per example, the base mean and raw scale (2 D numbers, as
    :class:`~vaelab.distributions.GaussianEncoder`) and then, for each step, u (D), w (D) and
    b (1): ``2 D + steps (2 D + 1)`` numbers in all. Amortized parameters, as in Rezende &
    Mohamed (2015): every example gets its own flow, at the price of a wider last layer.

    Args:
        net: maps ``[B, *x_shape]`` to ``[B, PlanarFlowEncoder.outputs(D, steps)]``.
        latent_dim: D.
        steps: K, the number of planar steps (K = 0 is the diagonal Gaussian).
        min_scale: floor of the base scale, ``softplus(s) + min_scale``.

    Example:
        >>> enc = PlanarFlowEncoder(MLP(784, [400], PlanarFlowEncoder.outputs(20, 4)), 20, 4)
        >>> z, log_q = enc(torch.rand(8, 784)).rsample_and_log_prob((5,))   # [5, 8, 20], [5, 8]
    """

    def __init__(self, net: nn.Module, latent_dim: int, steps: int, min_scale: float = 1e-4) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.net = net
        self.latent_dim = latent_dim
        self.steps = steps
        self.min_scale = min_scale

    @staticmethod
    def outputs(latent_dim: int, steps: int) -> int:
        """The number of outputs ``net`` must have: 2 D + K (2 D + 1)."""
        return 2 * latent_dim + steps * (2 * latent_dim + 1)

    def forward(self, x: Tensor, c: Tensor | None = None) -> PlanarFlow:
        d = self.latent_dim
        h = run_net(self.net, x, c)  # [B, 2D + K(2D + 1)]
        if h.shape[-1] != self.outputs(d, self.steps):
            raise ValueError(
                f"encoder network returned {h.shape[-1]} features; PlanarFlowEncoder needs "
                f"2 D + K (2 D + 1) = {self.outputs(d, self.steps)} for D = {d}, K = {self.steps}"
            )
        loc, raw = h[..., :d], h[..., d : 2 * d]
        flow = h[..., 2 * d :].unflatten(-1, (self.steps, 2 * d + 1))  # [B, K, 2D + 1]
        u, w, b = flow[..., :d], flow[..., d : 2 * d], flow[..., 2 * d]
        return PlanarFlow(loc, nn.functional.softplus(raw) + self.min_scale, u, w, b)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, steps={self.steps}, min_scale={self.min_scale}"


# --- inverse autoregressive flows ---------------------------------------------------------


class _MadePlan(NamedTuple):
    """How to invert one masked autoregressive step unit by unit (see :func:`iaf_inverse`).

    The sweep runs in the step's order: ``features[p]`` is the feature at position p,
    ``positions[f]`` the position of feature f (both None when the order is the identity)
    and ``out_rows`` the output rows (shift, raw log-scale) of each position in turn. For
    each hidden layer, ``perms[l]`` sorts its units by level (a unit of level m depends on
    the inputs at positions < m only) and ``starts[l][m]:starts[l][m + 1]`` are the units of
    level m.
    """

    features: Tensor | None  # [D]: the feature at each position (None: the identity)
    positions: Tensor | None  # [D]: the position of each feature (None: the identity)
    out_rows: Tensor  # [2 D]
    perms: tuple[Tensor, ...]  # per hidden layer, [H_l]
    starts: tuple[tuple[int, ...], ...]  # per hidden layer, D + 1 offsets


_PLANS: "weakref.WeakKeyDictionary[nn.Module, _MadePlan | None]" = weakref.WeakKeyDictionary()
_LOG_SCALE_BOUND = -math.log(1e-3)  # zuko's MonotonicAffineTransform: log sigma = a / (1 + |a| / 6.91)


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
                    plan = _MadePlan(None if identity else features, None if identity else position.clone(),
                                     out_rows, tuple(perms), tuple(starts))
    _PLANS[step] = plan
    return plan


class _StepInverse(torch.autograd.Function):
    """x = T^{-1}(y) and log |det dy/dx| = sum_p s_p of one affine MADE step, exactly.

    Inputs (hidden units sorted by level): y ``[N, D]``; ``first`` the first layer's
    pre-activation before the inputs (bias + context), ``[H_1, N]``; ``wx``
    ``[D, H_1]`` the first layer's weights from the inputs (transposed); ``weights[l]``
    ``[H_{l+1}, H_l]`` (nn.Linear's layout; the last one ``[2 D, H_L]``, to the outputs
    (mu, a) of position p at rows 2p, 2p + 1); ``biases[l]`` of layer l + 2 (the last one the
    outputs'); ``features``/``positions`` the step's order (None: the identity). Forward,
    for p = 0..D-1 (f the feature at position p):

        the units of level p, layer by layer: their pre-activation from the inputs of
        positions < p (first layer) or the units of levels <= p below, then ReLU;
        mu, a = outputs 2p, 2p + 1 (from the last layer's units of levels <= p);
        s_p = a / (1 + |a| / 6.91) (zuko's bound);  x_f = (y_f - mu) / exp(s_p).

    Backward is the same sweep in reverse, by hand (each unit once, no autograd graph of D
    steps). With x_bar_p = dL/dx_f + the first-layer adjoints of the units that read x_f
    (levels > p, done in earlier reverse steps) times their weights,

        dL/dmu = -x_bar_p e^{-s_p},  dL/da = (dL/dlogdet - x_bar_p x_f) / (1 + |a| / 6.91)^2,

    then the units of level p take their adjoints (all their readers are done; ReLU masks
    from the saved activations); at the end dL/dy_f = x_bar_p e^{-s_p} and the weight
    gradients are dense products. Buffers are ``[features, N]`` so that a level's units and
    a position's values are contiguous rows.
    """

    @staticmethod
    def forward(ctx, starts: tuple[tuple[int, ...], ...], features: Tensor | None, positions: Tensor | None,
                y: Tensor, first: Tensor, wx: Tensor, *params: Tensor) -> tuple[Tensor, Tensor]:
        n, d = y.shape
        layers = len(starts)
        weights, biases = params[:layers], params[layers:]
        # pre-activations [H_l, N], each level's rows turned into activations when evaluated
        act = [first.clone()] + [b[:, None].expand(-1, n).contiguous() for b in biases[:-1]]
        out = biases[-1][:, None].expand(-1, n).contiguous()  # [2D, N], position order
        y_p = _rows(y.t(), features).contiguous()  # [D, N], position order
        x = torch.empty_like(y_p)  # [D, N], position order
        wx_p = _rows(wx, features)  # [D, H1], position order
        ones = y.new_ones(n)
        # Views made up front, per position p: (the units of level p of each layer, in turn,
        # then the outputs of p; the weights into them; what they read: the inputs of
        # positions < p, or the units of levels <= p of the layer below).
        jobs: list[list[tuple[Tensor, Tensor | None, Tensor, bool]]] = [[] for _ in range(d)]
        for p in range(d):
            for l in range(layers):
                lo, hi = starts[l][p], starts[l][p + 1]
                if hi > lo:
                    if l == 0:
                        block, source = wx_p[:p, lo:hi].t(), x[:p]
                    else:
                        end = starts[l - 1][p + 1]
                        block, source = weights[l - 1][lo:hi, :end], act[l - 1][:end]
                    jobs[p].append((act[l][lo:hi], block if block.shape[1] else None, source, True))
            end = starts[-1][p + 1]
            block = weights[-1][2 * p : 2 * p + 2, :end] if end else None
            jobs[p].append((out[2 * p : 2 * p + 2], block, act[-1][:end], False))
        log_scales = []
        for p in range(d):
            for units, block, source, hidden in jobs[p]:  # level p is computable: evaluate it
                if block is not None:
                    units.addmm_(block, source)
                if hidden:
                    units.relu_()
            raw = out[2 * p + 1]
            log_scale = raw / torch.add(ones, torch.abs(raw), alpha=1 / _LOG_SCALE_BOUND)
            torch.sub(y_p[p], out[2 * p], out=x[p]).div_(torch.exp(log_scale))
            log_scales.append(log_scale)
        s = torch.stack(log_scales)  # [D, N], position order
        ctx.starts, ctx.features, ctx.positions = starts, features, positions
        ctx.save_for_backward(x, s, out, wx_p, *act, *weights)
        return _rows(x, positions).t(), s.sum(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x: Tensor | None, grad_log_det: Tensor | None) -> tuple[Tensor | None, ...]:
        starts, features, positions = ctx.starts, ctx.features, ctx.positions
        layers = len(starts)
        x, s, out, wx_p, *rest = ctx.saved_tensors  # [D, N], [D, N], [2D, N], [D, H1], ..., position order
        act, weights = rest[:layers], rest[layers:]
        d, n = x.shape
        adj_post = [torch.zeros_like(a) for a in act]  # dL/d activation, accumulated
        adj_pre: list[list[Tensor]] = [[] for _ in act]  # dL/d pre-activation, level by level
        adj_out: list[Tensor] = []  # [2, N] per position, last first
        # dL/dx, completed as the first-layer units that read x take their adjoints
        x_bar = _rows(grad_x.t(), features).contiguous() if grad_x is not None else torch.zeros_like(x)
        # With x_bar_p final, (dL/dmu_p, dL/da_p) = x_bar_p * gain_p + offset_p, [2, N] each:
        scale = torch.exp(-s)  # [D, N]
        slope = (out[1::2].abs() / _LOG_SCALE_BOUND + 1).pow(-2)  # ds/da, [D, N]
        gain = torch.stack([-scale, -x * slope], 1)  # [D, 2, N]
        offset = torch.zeros_like(gain)
        if grad_log_det is not None:
            offset[:, 1] = grad_log_det * slope
        # Views made up front, per position p: the weights to (and adjoints of) the last-layer
        # units of levels <= p from the outputs of p; per layer, the units of level p
        # (adjoints, activations) with the weights to (and adjoints of) the units below of
        # levels <= p -- for the first layer, the inputs of positions < p.
        heads = [(weights[-1][2 * p : 2 * p + 2, :end].t(), adj_post[-1][:end]) for p, end in enumerate(starts[-1][1:])]
        columns = [w.t() for w in weights[:-1]]  # [H_l, H_{l+1}]
        jobs: list[list[tuple[int, Tensor, Tensor, Tensor | None, Tensor]]] = [[] for _ in range(d)]
        for l in reversed(range(layers)):
            ends = starts[l - 1][1:] if l > 0 else range(d)
            below = adj_post[l - 1] if l > 0 else x_bar
            for p, (lo, hi, end) in enumerate(zip(starts[l][:-1], starts[l][1:], ends)):
                if hi > lo:
                    block = wx_p[:end, lo:hi] if l == 0 else columns[l - 1][:end, lo:hi]
                    jobs[p].append((l, adj_post[l][lo:hi], act[l][lo:hi], block if end else None, below[:end]))
        relu_backward = torch.ops.aten.threshold_backward
        for p in reversed(range(d)):
            # x_bar_p is final: the units that read x_p (levels > p) are done
            out_bar = torch.addcmul(offset[p], gain[p], x_bar[p])  # [2, N]
            w_out, post_last = heads[p]
            post_last.addmm_(w_out, out_bar)
            adj_out.append(out_bar)
            for l, post, units, block, post_below in jobs[p]:  # level p has all its readers: final
                adj = relu_backward(post, units, 0.0)
                adj_pre[l].append(adj)
                if block is not None:
                    post_below.addmm_(block, adj)
        grad_pre = [torch.cat(levels[::-1]) for levels in adj_pre]  # [H_l, N]
        grad_out = torch.cat(adj_out[::-1])  # [2D, N]
        hidden = [a.t() for a in act]  # [N, H_l], activations
        grad_weights = [grad_pre[l + 1] @ hidden[l] for l in range(layers - 1)] + [grad_out @ hidden[-1]]
        grad_biases = [a.sum(1) for a in grad_pre[1:]] + [grad_out.sum(1)]
        grad_y = _rows(x_bar * scale, positions).t()  # dL/dy = x_bar e^{-s}
        grad_wx = _rows(x @ grad_pre[0].t(), positions)
        return (None, None, None, grad_y, grad_pre[0], grad_wx, *grad_weights, *grad_biases)


def _rows(t: Tensor, index: Tensor | None) -> Tensor:
    """The rows ``index`` of ``t`` (``t`` itself when the index is the identity, None)."""
    return t if index is None else t.index_select(0, index)


def _invert_step(step: nn.Module, plan: _MadePlan, h: Tensor, y: Tensor, shape: Size) -> tuple[Tensor, Tensor]:
    """x = T^{-1}(y) and sum_i log sigma_i for one step, rows ``y`` ``[N, D]`` (N = prod(shape)),
    context ``h`` ``[*batch, C]`` broadcast to ``shape``: the step's masked weights, sorted by
    level (outputs in position order), through :class:`_StepInverse`."""
    linears = list(step.hyper)[0::2]
    n_rows, d = y.shape
    weights = [layer.weight * layer.mask for layer in linears]  # masked, as zuko's MaskedLinear
    w1 = weights[0].index_select(0, plan.perms[0])  # [H1, D + C]
    first = nn.functional.linear(h, w1[:, d:], linears[0].bias.index_select(0, plan.perms[0]))  # [*batch, H1]
    first = first.expand(*shape, first.shape[-1]).movedim(-1, 0).reshape(first.shape[-1], n_rows)  # [H1, N]
    hidden = [(weights[l].index_select(0, plan.perms[l]).index_select(1, plan.perms[l - 1]),
               linears[l].bias.index_select(0, plan.perms[l]))
              for l in range(1, len(linears) - 1)]  # [H_{l+1}, H_l], [H_{l+1}]
    w_out = weights[-1].index_select(0, plan.out_rows).index_select(1, plan.perms[-1])  # [2D, H_L], position order
    b_out = linears[-1].bias.index_select(0, plan.out_rows)
    return _StepInverse.apply(plan.starts, plan.features, plan.positions, y, first, w1[:, :d].t(),
                              *(w for w, _ in hidden), w_out, *(b for _, b in hidden), b_out)


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


class InverseAutoregressiveFlow(_MonteCarloMoments, NormalizingFlow):
    """An IAF posterior: zuko's ``NormalizingFlow`` with a Gaussian base and the sampling
    direction ``transform.inv`` (one network pass per step), plus Monte Carlo moments.

    zuko's convention is ``log_prob(z) = base.log_prob(transform(z)) + ladj``: here
    ``transform`` maps z back to z0 (sequential, D passes per step) and ``transform.inv``
    is the IAF itself, used by ``rsample`` and ``rsample_and_log_prob``. When the steps
    (``made``, in sampling order) and their context ``h`` are given, :meth:`log_prob`
    inverts them with :func:`iaf_inverse` (each MADE unit once) instead: same density.
    """

    def __init__(
        self, transform: ComposedTransform, base: Distribution,
        made: Sequence[nn.Module] = (), context: Tensor | None = None,
    ) -> None:
        super().__init__(transform, base)
        self.made, self.context = tuple(made), context

    def forward_and_log_det(self, z0: Tensor) -> tuple[Tensor, Tensor]:
        """z = f(z0) and log |det dz/dz0|, ``[..., D]`` and ``[...]``."""
        return self.transform.inv.call_and_ladj(z0)

    def log_prob(self, value: Tensor) -> Tensor:
        """log q(z) = log q0(z0) - log |det dz/dz0| at z0 = f^{-1}(z), ``[..., D] -> [...]``."""
        if not self.made or self.context is None:
            return super().log_prob(value)
        z0, log_det = iaf_inverse(self.made, self.context, value)
        return self.base.log_prob(z0) - log_det

    def _moments(self) -> tuple[Tensor, Tensor]:
        if not hasattr(self, "_cached_moments"):
            normal = self.base.base_dist
            self._cached_moments = _monte_carlo_moments(self.transform.inv, normal.loc, normal.scale)
        return self._cached_moments


class IAFEncoder(nn.Module):
    """q(z|x): a diagonal Gaussian followed by ``steps`` inverse autoregressive steps.

    The network returns ``2 D + context_dim`` numbers: the base mean and raw scale and a
    context h. Step t maps z_{t-1} to

        z_t = mu_t(z_{t-1}, h) + sigma_t(z_{t-1}, h) * z_{t-1},

    where (mu_t, log sigma_t)_i depends on z_{t-1, <i} (in the step's order) and on h through
    a MADE network, so the Jacobian is triangular and log |det| = sum_i log sigma_t,i:

        log q(z_T|x) = log q0(z_0|x) - sum_t sum_i log sigma_t,i.

    Orders alternate between steps (ascending, descending) so every dimension can depend
    on every other. Each step is a ``zuko.flows.MaskedAutoregressiveTransform`` with the
    context (zuko bounds log sigma softly to (-6.9, 6.9): sigma = exp(a / (1 + |a| / 6.9))).
    The parameters of the MADE networks are global (shared by all examples); the encoder
    conditions them on x through h.

    Args:
        net: maps ``[B, *x_shape]`` to ``[B, 2 D + context_dim]``.
        latent_dim: D.
        context_dim: the size of h.
        steps: T, the number of IAF steps.
        hidden: width of the two hidden layers of each MADE network.
        min_scale: floor of the base scale.

    Example:
        >>> enc = IAFEncoder(MLP(784, [400], IAFEncoder.outputs(20, 20)), 20, context_dim=20, steps=4)
        >>> z, log_q = enc(torch.rand(8, 784)).rsample_and_log_prob((5,))   # [5, 8, 20], [5, 8]
    """

    def __init__(
        self,
        net: nn.Module,
        latent_dim: int,
        context_dim: int,
        steps: int,
        hidden: int | Sequence[int] = 64,
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        if latent_dim < 1 or context_dim < 1 or steps < 1:
            raise ValueError(
                f"latent_dim, context_dim and steps must be >= 1, got {latent_dim}, {context_dim}, {steps}"
            )
        self.net = net
        self.latent_dim = latent_dim
        self.context_dim = context_dim
        self.min_scale = min_scale
        widths = (hidden, hidden) if isinstance(hidden, int) else tuple(hidden)
        orders = [torch.arange(latent_dim), torch.arange(latent_dim).flip(0)]
        self.transforms = nn.ModuleList(
            MaskedAutoregressiveTransform(
                features=latent_dim, context=context_dim, order=orders[t % 2], hidden_features=widths
            )
            for t in range(steps)
        )

    @staticmethod
    def outputs(latent_dim: int, context_dim: int) -> int:
        """The number of outputs ``net`` must have: 2 D + context_dim."""
        return 2 * latent_dim + context_dim

    def forward(self, x: Tensor, c: Tensor | None = None) -> InverseAutoregressiveFlow:
        d = self.latent_dim
        out = run_net(self.net, x, c)  # [B, 2D + C]
        if out.shape[-1] != self.outputs(d, self.context_dim):
            raise ValueError(
                f"encoder network returned {out.shape[-1]} features; IAFEncoder needs "
                f"2 D + context_dim = {self.outputs(d, self.context_dim)}"
            )
        loc, raw, h = out[..., :d], out[..., d : 2 * d], out[..., 2 * d :]
        base = diagonal_gaussian(loc, nn.functional.softplus(raw) + self.min_scale)
        sample_map = ComposedTransform(*(step(h) for step in self.transforms))  # z0 -> z_T
        return InverseAutoregressiveFlow(sample_map.inv, base, made=tuple(self.transforms), context=h)

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, context_dim={self.context_dim}, "
            f"steps={len(self.transforms)}, min_scale={self.min_scale}"
        )


@register("posterior", "planar", options=(FLOW_STEPS, MIN_SCALE), help="planar flow", cls=PlanarFlowEncoder)
def _planar(shapes: Shapes, flow_steps: int, min_scale: float) -> nn.Module:
    d = shapes.latent_dim
    net = shapes.encoder_net(PlanarFlowEncoder.outputs(d, flow_steps))
    return PlanarFlowEncoder(net, d, flow_steps, min_scale=min_scale)


@register("posterior", "iaf", options=(FLOW_STEPS, MIN_SCALE), cls=IAFEncoder,
          help="inverse autoregressive flow (context size max(16, D), MADE widths max(64, 4 D))")
def _iaf(shapes: Shapes, flow_steps: int, min_scale: float) -> nn.Module:
    d = shapes.latent_dim
    context_dim, hidden = max(16, d), max(64, 4 * d)
    net = shapes.encoder_net(IAFEncoder.outputs(d, context_dim))
    return IAFEncoder(net, d, context_dim, flow_steps, hidden=hidden, min_scale=min_scale)
