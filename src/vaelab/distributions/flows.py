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

An IAF's density at a z it did not sample needs the flow's inverse: D dependent steps per
flow step, computed exactly with each MADE unit evaluated once by :func:`iaf_inverse`
(:mod:`vaelab.distributions.iaf_inverse`). This is what makes the VampPrior under an IAF
posterior affordable: its density scores every z under the C flow posteriors of the
pseudo-inputs, each needing the inverse (``benchmarks/flows_vamp.py``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution, constraints
from zuko.distributions import NormalizingFlow
from zuko.flows import MaskedAutoregressiveTransform
from zuko.transforms import ComposedTransform

from ..registry import Option, Shapes, register
from .iaf_inverse import iaf_inverse
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
    the estimate is the same for the same parameters, and in antithetic pairs (eps, -eps): the
    part of push that is linear in eps averages out exactly, so only the curvature's share is
    left to the n draws (error at most stddev / sqrt(n); over 60 random 4-step planar flows
    the root-mean-square error was 0.33 of it, 0.37 with plain draws of the same seed).
    """
    generator = torch.Generator(device=loc.device).manual_seed(0)
    total = torch.zeros_like(loc)
    total_sq = torch.zeros_like(loc)
    n += n % 2  # whole pairs
    for start in range(0, n, 100):
        m = min(100, n - start)
        half = torch.randn((m // 2, *loc.shape), generator=generator, device=loc.device, dtype=loc.dtype)
        eps = torch.cat([half, -half])  # [m, *batch, D]
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
