"""Approximate posteriors q_phi(z|x): modules whose ``forward(x)`` returns a distribution.

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
from torch.distributions import Distribution, Independent, Normal

__all__ = ["GaussianEncoder", "diagonal_gaussian"]


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

    def forward(self, x: Tensor) -> Distribution:
        h = self.net(x)  # [B, 2D]
        if h.shape[-1] != 2 * self.latent_dim:
            raise ValueError(
                f"encoder network returned {h.shape[-1]} features; GaussianEncoder needs "
                f"2 * latent_dim = {2 * self.latent_dim}"
            )
        loc, raw = h.chunk(2, dim=-1)
        scale = nn.functional.softplus(raw) + self.min_scale
        return diagonal_gaussian(loc, scale)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, min_scale={self.min_scale}"


