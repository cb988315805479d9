"""The VAE: a prior p(z), an encoder q_phi(z|x) and a decoder p_theta(x|z), composed.

Everything a VAE computes goes through one primitive, :meth:`VAE.trace`: draw K
reparameterized samples z_k ~ q(z|x) for a batch of B inputs and score them,

    log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)        # [K, B]

The ELBO is the mean of ``log w`` over k, the IWAE bound and the importance-sampled
estimate of log p(x) are ``logsumexp_k log w_k - log K`` (see :mod:`vaelab.objectives` and
:mod:`vaelab.evaluation`). Samples come first, then the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = ["VAE", "Trace"]


class Trace:
    """K posterior samples for a batch and their log-densities.

    Shapes: ``z`` is ``[K, B, D]``; every ``log_*`` is ``[K, B]``. ``posterior`` has batch
    shape ``[B]``, ``prior`` batch shape ``[]``, ``likelihood`` batch shape ``[K, B]``.

    ``log_likelihood`` is computed when the trace is made; ``log_prior`` and
    ``log_posterior`` when first read (then kept), unless given (a flow's density comes with
    its sample). An estimator that never reads them, such as the ELBO with the closed-form KL,
    does not pay for them, neither in the forward pass nor in the backward one.
    """

    def __init__(self, z: Tensor, log_likelihood: Tensor, posterior: Distribution, prior: Distribution,
                 likelihood: Distribution, log_prior: Tensor | None = None,
                 log_posterior: Tensor | None = None) -> None:
        self.z = z
        self.log_likelihood = log_likelihood  # log p(x|z_k)  [K, B]
        self.posterior = posterior
        self.prior = prior
        self.likelihood = likelihood
        self._log_prior = log_prior
        self._log_posterior = log_posterior

    @property
    def log_prior(self) -> Tensor:
        """log p(z_k), ``[K, B]``."""
        if self._log_prior is None:
            self._log_prior = self.prior.log_prob(self.z)
        return self._log_prior

    @property
    def log_posterior(self) -> Tensor:
        """log q(z_k|x), ``[K, B]``."""
        if self._log_posterior is None:
            self._log_posterior = self.posterior.log_prob(self.z)
        return self._log_posterior

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
        log_q = None  # scored when first needed (see Trace)
        if hasattr(q, "rsample_and_log_prob"):  # flows: the density comes with the sample
            z, log_q = q.rsample_and_log_prob((k,))  # [K, B, D], [K, B]
        else:
            z = q.rsample((k,))  # [K, B, D]
        p_x = self.decoder(z)  # batch [K, B], event x_shape
        return Trace(
            z=z,
            log_likelihood=p_x.log_prob(x),  # [K, B]
            posterior=q,
            prior=self.prior(),
            likelihood=p_x,
            log_posterior=log_q,  # [K, B] or None
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
