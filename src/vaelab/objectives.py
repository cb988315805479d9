"""Objectives as functions of a :class:`~vaelab.model.Trace` (log weights ``[K, B]``).

ELBO (per example, in nats):

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))              reconstruction - KL
            = E_q[log p(x, z) - log q(z|x)]                     the Monte-Carlo form

The KL is taken in closed form when ``torch.distributions.kl_divergence`` knows the pair
(diagonal Gaussian posterior and standard normal prior, for instance) and by Monte Carlo,
``mean_k log q(z_k|x) - log p(z_k)``, otherwise. Both are unbiased for the ELBO; the closed
form has lower variance.

IWAE bound (Burda et al. 2016), and with large K the importance-sampled estimate of log p(x):

    L_K(x) = log (1/K) sum_k exp(log w_k)  <=  log p(x),   increasing in K.

Every quantity is a sum over the dimensions of x and z (never a mean) and is returned per
example, shape ``[B]``; a training loss is the negative mean over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.distributions import kl_divergence

from .model import VAE, Trace

__all__ = ["ELBO", "Objective", "elbo", "kl_term", "iwae", "log_mean_exp", "KLMethod"]

KLMethod = Literal["auto", "analytic", "mc"]


@dataclass
class ELBO:
    """The ELBO and its two terms, per example ``[B]``, in nats."""

    elbo: Tensor
    reconstruction: Tensor  # E_q[log p(x|z)]
    kl: Tensor  # KL(q(z|x) || p(z))

    def mean(self) -> dict[str, float]:
        """Batch means as plain floats (nats per example)."""
        return {
            "elbo": float(self.elbo.detach().mean()),
            "reconstruction": float(self.reconstruction.detach().mean()),
            "kl": float(self.kl.detach().mean()),
        }


def kl_term(trace: Trace, method: KLMethod = "auto") -> Tensor:
    """KL(q(z|x) || p(z)) per example ``[B]``: closed form when known, else Monte Carlo.

    ``method="analytic"`` raises ``NotImplementedError`` when no closed form is registered;
    ``"mc"`` always uses the samples in the trace.
    """
    if method not in ("auto", "analytic", "mc"):
        raise ValueError(f"KL method must be 'auto', 'analytic' or 'mc', got {method!r}")
    if method != "mc":
        try:
            return kl_divergence(trace.posterior, trace.prior)  # [B]
        except NotImplementedError:
            if method == "analytic":
                raise
    return (trace.log_posterior - trace.log_prior).mean(0)  # [B]


def elbo(trace: Trace, kl: KLMethod = "auto") -> ELBO:
    """The ELBO of each example in the trace, split into reconstruction and KL."""
    reconstruction = trace.log_likelihood.mean(0)  # [B]
    kl_value = kl_term(trace, kl)
    return ELBO(elbo=reconstruction - kl_value, reconstruction=reconstruction, kl=kl_value)


def log_mean_exp(x: Tensor, dim: int = 0) -> Tensor:
    """``log(mean(exp(x)))`` along ``dim``, computed stably with logsumexp."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def iwae(trace: Trace) -> Tensor:
    """The importance-weighted bound L_K per example ``[B]`` (K = samples in the trace)."""
    return log_mean_exp(trace.log_weights, dim=0)


@dataclass(frozen=True)
class Objective:
    """What training maximises, as one object the training loop calls.

    ``loss(model, x, progress)`` returns the scalar loss (mean over the batch, nats per
    example) and the true ELBO terms of the batch for logging; ``progress`` is the fraction
    of training done (epochs, fractional), for schedules.

    Args:
        kind: ``"elbo"`` maximises the ELBO; ``"iwae"`` the IWAE bound with ``k`` samples.
        k: posterior samples per example.
        kl: how the ELBO's KL term is computed (see :func:`kl_term`).
    """

    kind: Literal["elbo", "iwae"] = "elbo"
    k: int = 1
    kl: KLMethod = "auto"

    def loss(self, model: VAE, x: Tensor, progress: float = 0.0) -> tuple[Tensor, ELBO]:
        trace = model.trace(x, self.k)
        terms = elbo(trace, self.kl)
        if self.kind == "iwae":
            return -iwae(trace).mean(), terms
        return -terms.elbo.mean(), terms
