"""Approximate posteriors q_phi(z|x): modules whose ``forward(x)`` returns a distribution.

Gaussian posteriors live here: the diagonal Gaussian and the full-covariance Gaussian. Flow
posteriors (planar, IAF) are in :mod:`vaelab.distributions.flows`. Every encoder wraps a
network ``net(x) -> [B, n]`` and states the ``n`` it needs with ``outputs(latent_dim, ...)``;
a conditional encoder q(z|x, c) is the same module called as ``encoder(x, c)``: the context
features ``c`` ``[B, C]`` go to the network, ``net(x, c)`` (see :class:`vaelab.nets.MLP`).

The diagonal Gaussian of the seeds,

    q_phi(z|x) = N(z; mu_phi(x), diag(sigma_phi(x)^2)),

sampled by the reparameterization trick z = mu + sigma * eps, eps ~ N(0, I), so gradients of
E_q[f(z)] flow back into mu and sigma (``Distribution.rsample``).

The scale is ``sigma = softplus(s) + min_scale`` where ``s`` is the network's raw output. We
use softplus rather than ``exp(log_var / 2)`` because it grows linearly, not exponentially, for
large ``s`` (no overflow to inf early in training) and ``min_scale`` (default 1e-4, a
constructor argument, not a hidden constant) keeps ``log sigma`` finite when ``s`` is very
negative.
"""

from __future__ import annotations


import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, register_kl

from ..registry import Option, Shapes, register

__all__ = ["GaussianEncoder", "FullCovarianceEncoder", "diagonal_gaussian", "run_net", "MIN_SCALE"]

MIN_SCALE = Option("min_scale", float, 1e-4, "floor added to the posterior's scale (keeps log sigma finite)", low=0.0)


def run_net(net: nn.Module, x: Tensor, c: Tensor | None) -> Tensor:
    """``net(x)``, or ``net(x, c)`` with a context: plain networks need not know about contexts."""
    return net(x) if c is None else net(x, c)


def diagonal_gaussian(loc: Tensor, scale: Tensor) -> Distribution:
    """N(loc, diag(scale^2)) with the last dimension as the event: batch [..], event [D]."""
    return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)


class GaussianEncoder(nn.Module):
    """q(z|x) = N(mu(x), diag(sigma(x)^2)) from any network that maps x to 2 * latent_dim numbers.

    Args:
        net: maps a batch ``x`` of shape ``[B, *x_shape]`` to ``[B, 2 * latent_dim]``: the first
            half is the mean, the second half the raw scale ``s``.
        latent_dim: D, the number of latent dimensions.
        min_scale: floor added to ``softplus(s)``.

    Example:
        >>> enc = GaussianEncoder(MLP(784, [400], 40), latent_dim=20)
        >>> q = enc(torch.rand(8, 784))          # batch [8], event [20]
        >>> z = q.rsample((5,))                  # [5, 8, 20], differentiable
        >>> q.log_prob(z).shape                  # [5, 8]
    """

    def __init__(self, net: nn.Module, latent_dim: int, min_scale: float = 1e-4) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.net = net
        self.latent_dim = latent_dim
        self.min_scale = min_scale

    @staticmethod
    def outputs(latent_dim: int) -> int:
        """The number of outputs ``net`` must have: 2 D."""
        return 2 * latent_dim

    def forward(self, x: Tensor, c: Tensor | None = None) -> Distribution:
        h = run_net(self.net, x, c)  # [B, 2D]
        if h.shape[-1] != 2 * self.latent_dim:
            raise ValueError(
                f"encoder network returned {h.shape[-1]} features; GaussianEncoder needs "
                f"2 * latent_dim = {2 * self.latent_dim}"
            )
        loc, raw = h.chunk(2, dim=-1)
        scale = nn.functional.softplus(raw.contiguous()) + self.min_scale  # softplus is 8x slower on a strided view
        return diagonal_gaussian(loc, scale)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, min_scale={self.min_scale}"


class FullCovarianceEncoder(nn.Module):
    """q(z|x) = N(mu(x), L(x) L(x)^T) with a lower-triangular Cholesky factor L.

    The network's ``D + D + D(D-1)/2`` outputs are the mean, the raw diagonal ``s`` of L and
    the strictly-lower entries of a matrix M (row by row, in ``torch.tril_indices(D, D, -1)``
    order). With l = ``softplus(s) + min_scale`` > 0, L = diag(l) (I + M): lower triangular
    with diagonal l, so a valid Cholesky factor, and log det(L L^T) = 2 sum_i log l_i. Scaling
    row i by l_i keeps the off-diagonal entries in proportion to the posterior's width: random
    outputs of a fresh network then give mild correlations, not a covariance dominated by
    them (which trained markedly worse on MNIST). Samples z = mu + L eps,
    eps ~ N(0, I), are differentiable (``torch.distributions.MultivariateNormal``).

    M is ``off_diagonal_scale`` (default 0.03) times the network's outputs, so training starts
    close to the diagonal Gaussian and moves off it slowly: Adam's steps do not depend on the
    scale of a gradient, so the scale makes M learn about 30 times more slowly than the mean and
    the diagonal (scaling the gradient alone would not). On Fashion-MNIST a full-speed M left
    the model behind the diagonal VAE (+0.84 nats after 8 epochs), 0.1 brought it level, 0.03
    ahead (``benchmarks/richer.py``). M's gradient (through z = mu + L eps) is noisy; the
    sticking-the-landing estimator (``Objective(estimator="stl")``) cuts that noise and trained
    markedly better than the standard one on MNIST and Fashion-MNIST.

    Against a diagonal Gaussian prior (such as N(0, I)) the KL divergence has a closed form,
    registered with ``torch.distributions.kl.register_kl``: with p = N(m, diag(s^2)),

        KL(q || p) = 1/2 [sum_ij L_ij^2 / s_i^2 + sum_i (mu_i - m_i)^2 / s_i^2 - D
                          + 2 sum_i log s_i - 2 sum_i log L_ii].

    Args:
        net: maps ``[B, *x_shape]`` to ``[B, D + D(D+1)/2]``.
        latent_dim: D.
        min_scale: floor added to the diagonal of L.
        off_diagonal_scale: M = off_diagonal_scale * (the network's outputs for M).

    Example:
        >>> enc = FullCovarianceEncoder(MLP(784, [400], FullCovarianceEncoder.outputs(20)), 20)
        >>> q = enc(torch.rand(8, 784))          # batch [8], event [20]
        >>> q.rsample((5,)).shape                # [5, 8, 20]
    """

    def __init__(self, net: nn.Module, latent_dim: int, min_scale: float = 1e-4,
                 off_diagonal_scale: float = 0.03) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if not off_diagonal_scale > 0:
            raise ValueError(f"off_diagonal_scale must be > 0, got {off_diagonal_scale}")
        self.net = net
        self.latent_dim = latent_dim
        self.min_scale = min_scale
        self.off_diagonal_scale = off_diagonal_scale
        rows, cols = torch.tril_indices(latent_dim, latent_dim, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @staticmethod
    def outputs(latent_dim: int) -> int:
        """The number of outputs ``net`` must have: D + D(D+1)/2."""
        return latent_dim + latent_dim * (latent_dim + 1) // 2

    def forward(self, x: Tensor, c: Tensor | None = None) -> Distribution:
        d = self.latent_dim
        h = run_net(self.net, x, c)  # [B, D + D(D+1)/2]
        if h.shape[-1] != self.outputs(d):
            raise ValueError(
                f"encoder network returned {h.shape[-1]} features; FullCovarianceEncoder needs "
                f"D + D(D+1)/2 = {self.outputs(d)} for latent_dim = {d}"
            )
        loc, raw, off = h[..., :d], h[..., d : 2 * d], h[..., 2 * d :]
        off = off * self.off_diagonal_scale  # M: a slower learning rate under Adam (see above)
        diagonal = nn.functional.softplus(raw) + self.min_scale  # [B, D]
        unit = off.new_zeros(*off.shape[:-1], d, d)  # [B, D, D]
        unit[..., self.rows, self.cols] = off  # the strictly lower part of M
        # L = diag(l) (I + M): row i of L is scaled by its own diagonal l_i, so the network's
        # off-diagonal outputs are relative and shrink with the posterior's width
        tril = diagonal.unsqueeze(-1) * (unit + torch.eye(d, dtype=off.dtype, device=off.device))
        return MultivariateNormal(loc, scale_tril=tril, validate_args=False)

    def extra_repr(self) -> str:
        return (f"latent_dim={self.latent_dim}, min_scale={self.min_scale}, "
                f"off_diagonal_scale={self.off_diagonal_scale}")


@register_kl(MultivariateNormal, Independent)
def _kl_full_to_diagonal(q: MultivariateNormal, p: Independent) -> Tensor:
    """KL(N(mu, L L^T) || N(m, diag(s^2))) in closed form (see :class:`FullCovarianceEncoder`)."""
    if not isinstance(p.base_dist, Normal) or p.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    m, s = p.base_dist.loc, p.base_dist.scale  # [..., D]
    tril = q.scale_tril  # [..., D, D]
    trace = (tril.pow(2) / s.unsqueeze(-1).pow(2)).sum((-2, -1))
    mahalanobis = ((q.loc - m) / s).pow(2).sum(-1)
    log_det = 2 * torch.log(s).sum(-1) - 2 * torch.log(torch.diagonal(tril, dim1=-2, dim2=-1)).sum(-1)
    return 0.5 * (trace + mahalanobis - q.loc.shape[-1] + log_det)


@register("posterior", "gaussian", options=(MIN_SCALE,), help="diagonal Gaussian", cls=GaussianEncoder)
def _gaussian(shapes: Shapes, min_scale: float) -> nn.Module:
    d = shapes.latent_dim
    return GaussianEncoder(shapes.encoder_net(GaussianEncoder.outputs(d)), d, min_scale=min_scale)


@register("posterior", "full-gaussian", options=(MIN_SCALE,), help="full covariance (Cholesky factor)",
          cls=FullCovarianceEncoder)
def _full_gaussian(shapes: Shapes, min_scale: float) -> nn.Module:
    d = shapes.latent_dim
    return FullCovarianceEncoder(shapes.encoder_net(FullCovarianceEncoder.outputs(d)), d, min_scale=min_scale)
