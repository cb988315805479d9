"""Priors p(z): modules whose ``forward()`` returns a distribution over the latent space."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution

from .posteriors import diagonal_gaussian

__all__ = ["StandardNormalPrior"]


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) in ``latent_dim`` dimensions: batch [], event [D].

    The zeros and ones are buffers, so the prior follows the model to any device or dtype.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self) -> Distribution:
        return diagonal_gaussian(self.loc, self.scale)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"
