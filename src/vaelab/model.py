"""The VAE: a prior p(z), an encoder q_phi(z|x) and a decoder p_theta(x|z), composed.

Everything a VAE computes goes through one primitive, :meth:`VAE.trace`: draw K
reparameterized samples z_k ~ q(z|x) for a batch of B inputs and score them,

    log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)        # [K, B]

The ELBO is the mean of ``log w`` over k, the IWAE bound and the importance-sampled
estimate of log p(x) are ``logsumexp_k log w_k - log K`` (see :mod:`vaelab.objectives` and
:mod:`vaelab.evaluation`). Samples come first, then the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = ["VAE", "Trace"]


@dataclass
class Trace:
    """K posterior samples for a batch and their log-densities.

    Shapes: ``z`` is ``[K, B, D]``; every ``log_*`` is ``[K, B]``. ``posterior`` has batch
    shape ``[B]``, ``prior`` batch shape ``[]``, ``likelihood`` batch shape ``[K, B]``.
    """

    z: Tensor
    log_likelihood: Tensor  # log p(x|z_k)
    log_prior: Tensor  # log p(z_k)
    log_posterior: Tensor  # log q(z_k|x)
    posterior: Distribution
    prior: Distribution
    likelihood: Distribution

    @property
    def log_weights(self) -> Tensor:
        """log p(x, z_k) - log q(z_k|x), shape ``[K, B]``."""
        return self.log_likelihood + self.log_prior - self.log_posterior


class VAE(nn.Module):
    """A VAE as a composition of three modules that each return a distribution.

    Args:
        encoder: ``encoder(x)`` returns q(z|x) with batch ``[B]`` and event ``[D]``, and
            supports ``rsample`` (or ``rsample_and_log_prob``, as flows do).
        decoder: ``decoder(z)`` returns p(x|z) with batch ``z.shape[:-1]`` and event
            ``x_shape``; it has a ``check(x, what)`` method for its support.
        prior: ``prior()`` returns p(z) with event ``[D]``.

    Swapping any of the three (a flow posterior, a mixture prior, another likelihood)
    changes nothing here nor in the objectives.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior

    @property
    def latent_dim(self) -> int:
        return int(self.prior().event_shape[-1])

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.decoder.x_shape)

    def trace(self, x: Tensor, k: int = 1) -> Trace:
        """Draw ``k`` samples z ~ q(z|x) by reparameterization and score them.

        Args:
            x: a batch ``[B, *x_shape]``.
            k: samples per example.
        """
        q = self.encoder(x)  # batch [B], event [D]
        if hasattr(q, "rsample_and_log_prob"):  # flows: the density comes with the sample
            z, log_q = q.rsample_and_log_prob((k,))  # [K, B, D], [K, B]
        else:
            z = q.rsample((k,))  # [K, B, D]
            log_q = q.log_prob(z)  # [K, B]
        p_z = self.prior()
        p_x = self.decoder(z)  # batch [K, B], event x_shape
        return Trace(
            z=z,
            log_likelihood=p_x.log_prob(x),  # [K, B]
            log_prior=p_z.log_prob(z),  # [K, B]
            log_posterior=log_q,  # [K, B]
            posterior=q,
            prior=p_z,
            likelihood=p_x,
        )

    def log_weights(self, x: Tensor, k: int = 1) -> Tensor:
        """``log p(x, z_k) - log q(z_k|x)`` for k = 1..K, shape ``[K, B]``."""
        return self.trace(x, k).log_weights

    def encode(self, x: Tensor) -> Distribution:
        """The approximate posterior q(z|x) for a batch ``[B, *x_shape]``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Distribution:
        """The likelihood p(x|z) for latents ``[..., D]``."""
        return self.decoder(z)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> Tensor:
        """Generate ``n`` examples: z ~ p(z), then the decoder's mean (or a draw) ``[n, *x_shape]``."""
        z = self.prior().sample((n,))  # [n, D]
        p_x = self.decoder(z)
        return p_x.mean if mean else p_x.sample()
