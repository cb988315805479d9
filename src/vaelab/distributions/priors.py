"""Priors p(z): modules whose ``forward()`` returns a distribution over the latent space.

* :class:`StandardNormalPrior`: N(0, I), the seeds' prior.
* :class:`GaussianMixturePrior`: a learnable mixture of C diagonal Gaussians.
* :class:`VampPrior` (Tomczak & Welling 2018): the mixture of the encoder's posteriors at C
  learned pseudo-inputs, p(z) = (1/C) sum_c q(z|u_c).

Each returns batch shape ``[]`` and event shape ``[D]``; ``log_prob(z)`` takes any leading
shape, e.g. ``[K, B, D] -> [K, B]``. No closed-form KL exists against the mixtures: the
ELBO takes the Monte Carlo KL there, with no change to the objective code.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, MixtureSameFamily

from .posteriors import diagonal_gaussian

__all__ = ["StandardNormalPrior", "GaussianMixturePrior", "VampPrior"]


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


class GaussianMixturePrior(nn.Module):
    """p(z) = sum_c pi_c N(z; m_c, diag(s_c^2)) with learned weights, means and scales.

    ``pi = softmax(logits)`` (initially uniform), means initially N(0, I) draws, scales
    ``softplus(r) + min_scale`` (initially 1). A ``torch.distributions.MixtureSameFamily``:
    ``log p(z) = logsumexp_c [log pi_c + log N(z; m_c, diag(s_c^2))]``.

    Args:
        latent_dim: D.
        components: C.
        min_scale: floor of the component scales.

    Example:
        >>> p = GaussianMixturePrior(2, components=10)()
        >>> p.log_prob(torch.randn(5, 8, 2)).shape      # [5, 8]
    """

    def __init__(self, latent_dim: int, components: int = 10, min_scale: float = 1e-4) -> None:
        super().__init__()
        if latent_dim < 1 or components < 1:
            raise ValueError(f"latent_dim and components must be >= 1, got {latent_dim}, {components}")
        self.latent_dim = latent_dim
        self.components = components
        self.min_scale = min_scale
        self.logits = nn.Parameter(torch.zeros(components))
        self.loc = nn.Parameter(torch.randn(components, latent_dim))
        self.raw_scale = nn.Parameter(torch.full((components, latent_dim), math.log(math.expm1(1.0 - min_scale))))

    def forward(self) -> Distribution:
        scale = nn.functional.softplus(self.raw_scale) + self.min_scale  # [C, D]
        return MixtureSameFamily(
            Categorical(logits=self.logits, validate_args=False),
            diagonal_gaussian(self.loc, scale),  # batch [C], event [D]
            validate_args=False,
        )

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, components={self.components}, min_scale={self.min_scale}"


class VampPrior(nn.Module):
    """The VampPrior: p(z) = (1/C) sum_c q(z|u_c) over C learned pseudo-inputs u_c.

    ``encoder(u)`` must return a distribution with batch ``[C]`` and event ``[D]`` whose
    ``log_prob`` takes any z (every posterior in vaelab does; the flows invert themselves).
    The prior is a ``MixtureSameFamily`` of those C posteriors with equal weights, so it
    follows the encoder as it trains; the gradient of log p(z) reaches the pseudo-inputs and
    the encoder.

    The encoder is *not* a submodule of the prior: the prior keeps a plain reference to it.
    The encoder's weights belong to the model that owns it (the VAE), so ``state_dict`` holds
    them once (safetensors refuses tensors stored twice) and the optimizer sees them once;
    the prior's own state is its pseudo-inputs. Moving the VAE moves both.

    Pseudo-inputs live in the data space, ``[C, *x_shape]``. With ``unit_interval=True``
    (Bernoulli-type likelihoods, data in [0, 1]) they are ``sigmoid(r)``, so they stay in
    [0, 1], initially uniform in [0.05, 0.95]; otherwise they are unconstrained, initially
    N(0, 1) (standardised real data). :meth:`set_pseudo_inputs` starts them from training
    examples instead.

    Args:
        encoder: the VAE's encoder, ``encoder(x)`` -> q(z|x).
        x_shape: the shape of one example.
        components: C.
        unit_interval: keep the pseudo-inputs in [0, 1].

    Example:
        >>> enc = GaussianEncoder(MLP(784, [400], 40), latent_dim=20)
        >>> prior = VampPrior(enc, (1, 28, 28), components=500)
        >>> vae = VAE(enc, BernoulliDecoder(MLP(20, [400], 784), (1, 28, 28)), prior)
    """

    def __init__(
        self, encoder: nn.Module, x_shape: Sequence[int], components: int = 10, unit_interval: bool = True
    ) -> None:
        super().__init__()
        if components < 1:
            raise ValueError(f"components must be >= 1, got {components}")
        object.__setattr__(self, "_encoder", encoder)  # a reference, not a submodule (see above)
        self.x_shape = tuple(int(s) for s in x_shape)
        self.components = components
        self.unit_interval = unit_interval
        shape = (components, *self.x_shape)
        if unit_interval:
            self.raw_pseudo_inputs = nn.Parameter(torch.logit(torch.empty(shape).uniform_(0.05, 0.95)))
        else:
            self.raw_pseudo_inputs = nn.Parameter(torch.randn(shape))

    @property
    def encoder(self) -> nn.Module:
        return self._encoder

    @property
    def pseudo_inputs(self) -> Tensor:
        """u_1..u_C, ``[C, *x_shape]``."""
        raw = self.raw_pseudo_inputs
        return torch.sigmoid(raw) if self.unit_interval else raw

    @torch.no_grad()
    def set_pseudo_inputs(self, x: Tensor, eps: float = 1e-3) -> None:
        """Start the pseudo-inputs from examples ``x`` ``[C, *x_shape]`` (clipped to [eps, 1 - eps]
        when they live in [0, 1], where sigmoid cannot reach 0 or 1)."""
        if tuple(x.shape) != tuple(self.raw_pseudo_inputs.shape):
            raise ValueError(f"need {tuple(self.raw_pseudo_inputs.shape)} examples, got {tuple(x.shape)}")
        x = x.to(self.raw_pseudo_inputs)
        self.raw_pseudo_inputs.copy_(torch.logit(x.clamp(eps, 1 - eps)) if self.unit_interval else x)

    def forward(self) -> Distribution:
        q = self._encoder(self.pseudo_inputs)  # batch [C], event [D]
        logits = self.raw_pseudo_inputs.new_zeros(self.components)
        return MixtureSameFamily(Categorical(logits=logits, validate_args=False), q, validate_args=False)

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, components={self.components}, unit_interval={self.unit_interval}"
