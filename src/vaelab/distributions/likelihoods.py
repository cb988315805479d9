"""Likelihoods p_theta(x|z): decoders whose ``forward(z)`` returns a distribution over x.

A decoder wraps a network that maps a batch of latents ``[N, D]`` to ``[N, prod(x_shape)]``
numbers (or directly to ``[N, *x_shape]``). Latents may carry any leading shape, e.g. samples
first then batch, ``[K, B, D]``; the decoder flattens them for the network and returns a
distribution with batch shape ``[K, B]`` and event shape ``x_shape``, so that
``decoder(z).log_prob(x)`` with ``x`` of shape ``[B, *x_shape]`` is ``log p(x|z_k)`` of shape
``[K, B]``, summed over every dimension of x (never averaged).

Each decoder states its support and checks data against it with :meth:`check`: data outside
the support is a :class:`~vaelab.errors.VaelabError`, never a silent NaN.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, ContinuousBernoulli, Distribution, Independent, Laplace, Normal

from ..errors import VaelabError
from .logistic import DiscretizedLogisticMixture

__all__ = [
    "Decoder",
    "BernoulliDecoder",
    "ContinuousBernoulliDecoder",
    "LocationScaleDecoder",
    "GaussianDecoder",
    "LaplaceDecoder",
    "LogisticMixtureDecoder",
]


class Decoder(nn.Module):
    """Shared plumbing: run ``net`` on flattened latents and reshape to ``[*lead, *x_shape]``.

    Subclasses implement :meth:`distribution` (parameters -> distribution) and :meth:`check`.
    A likelihood with several parameters per value of x (a mixture) sets ``params_per_value``
    to P: the network then returns ``[N, P * prod(x_shape)]`` numbers, handed to
    :meth:`distribution` as ``[*lead, P, *x_shape]``.
    """

    support: str = "real"
    params_per_value: int = 1
    discrete: bool = False  # True: log_prob is the log-probability of discrete values (gives bits/dim)

    def __init__(self, net: nn.Module, x_shape: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.x_shape = tuple(int(s) for s in x_shape)

    def forward(self, z: Tensor) -> Distribution:
        lead = z.shape[:-1]
        out = self.net(z.reshape(-1, z.shape[-1]))  # [N, ...]
        per_value = () if self.params_per_value == 1 else (self.params_per_value,)
        params = out.reshape(*lead, *per_value, *self.x_shape)  # [*lead, (P,) *x_shape]
        return Independent(self.distribution(params), len(self.x_shape), validate_args=False)

    def distribution(self, params: Tensor) -> Distribution:
        raise NotImplementedError

    def check(self, x: Tensor, what: str = "data") -> None:
        """Raise VaelabError unless every value of x is finite (subclasses narrow this)."""
        bad = ~torch.isfinite(x)
        if bad.any():
            raise VaelabError(
                f"{what} holds {int(bad.sum())} NaN/inf values; remove or impute them"
            )

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}"


class BernoulliDecoder(Decoder):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logit_i(z))), for x in [0, 1].

    log p(x|z) = sum_i x_i log p_i + (1 - x_i) log(1 - p_i), computed from logits (stable).
    Binary data is the model's own case; grey values in [0, 1] are accepted too (the
    cross-entropy of the seeds' texts), but then ``log p`` is not a normalised density of x.
    """

    support = "unit interval [0, 1]"

    def distribution(self, params: Tensor) -> Distribution:
        return Bernoulli(logits=params, validate_args=False)

    def check(self, x: Tensor, what: str = "data") -> None:
        super().check(x, what)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise VaelabError(
                f"{what} has values in [{lo:g}, {hi:g}] but the Bernoulli likelihood needs "
                "[0, 1]; rescale the data (e.g. divide 8-bit pixels by 255) or use "
                "--likelihood gaussian"
            )


class ContinuousBernoulliDecoder(Decoder):
    """p(x|z) = prod_i CB(x_i; lambda_i(z)), the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019).

    CB(x; lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x) on [0, 1]: the Bernoulli's
    cross-entropy with the normalising constant C(lambda) that makes it a density of grey
    values. Use it for [0, 1] data that is not binary; its mean is not lambda (see
    ``torch.distributions.ContinuousBernoulli``, whose stable log-normaliser this uses).
    """

    support = "unit interval [0, 1]"

    def distribution(self, params: Tensor) -> Distribution:
        return ContinuousBernoulli(logits=params, validate_args=False)

    def check(self, x: Tensor, what: str = "data") -> None:
        super().check(x, what)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise VaelabError(
                f"{what} has values in [{lo:g}, {hi:g}] but the continuous Bernoulli likelihood "
                "needs [0, 1]; rescale the data (e.g. divide 8-bit pixels by 255) or use "
                "--likelihood gaussian"
            )


class LocationScaleDecoder(Decoder):
    """p(x|z) = prod_i family(x_i; mu_i(z), s) with a fixed or learned scale s (abstract).

    Subclasses set ``family`` (a location-scale ``torch`` distribution) and ``name``.

    Args:
        net: maps ``[N, D]`` to ``[N, prod(x_shape)]`` locations.
        x_shape: the shape of one example.
        scale: the fixed scale, or the initial value of a learned one (must be > 0).
        learn_scale: ``"fixed"`` keeps ``scale``; ``"global"`` learns one scale for all
            dimensions; ``"feature"`` learns one scale per dimension of x. Learned scales are
            ``softplus(s) + 1e-3 * scale``, so they cannot reach zero (where the density would
            blow up on a data point it fits exactly).
    """

    support = "real numbers"
    family: type[Distribution]
    name: str

    def __init__(
        self,
        net: nn.Module,
        x_shape: Sequence[int],
        scale: float = 1.0,
        learn_scale: Literal["fixed", "global", "feature"] = "fixed",
    ) -> None:
        super().__init__(net, x_shape)
        if not scale > 0:
            raise VaelabError(f"{self.name} likelihood scale must be > 0, got {scale}")
        if learn_scale not in ("fixed", "global", "feature"):
            raise VaelabError(
                f"learn_scale must be 'fixed', 'global' or 'feature', got {learn_scale!r}"
            )
        self.learn_scale = learn_scale
        self.floor = 1e-3 * scale
        if learn_scale == "fixed":
            self.register_buffer("fixed_scale", torch.tensor(float(scale)), persistent=False)
        else:
            shape = () if learn_scale == "global" else self.x_shape
            raw = math.log(math.expm1(scale - self.floor))  # inverse softplus
            self.raw_scale = nn.Parameter(torch.full(shape, raw))

    @property
    def scale(self) -> Tensor:
        if self.learn_scale == "fixed":
            return self.fixed_scale
        return nn.functional.softplus(self.raw_scale) + self.floor

    def distribution(self, params: Tensor) -> Distribution:
        return self.family(params, self.scale.expand_as(params), validate_args=False)

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, learn_scale={self.learn_scale!r}"


class GaussianDecoder(LocationScaleDecoder):
    """p(x|z) = N(x; mu(z), sigma^2 I) with a fixed or learned scale (see :class:`LocationScaleDecoder`)."""

    family = Normal
    name = "Gaussian"


class LaplaceDecoder(LocationScaleDecoder):
    """p(x|z) = prod_i Laplace(x_i; mu_i(z), b) = prod_i exp(-|x_i - mu_i| / b) / (2 b).

    The L1 counterpart of :class:`GaussianDecoder` (same ``scale`` and ``learn_scale``):
    heavier tails, so outlying pixels cost less, and its mode is the median.
    """

    family = Laplace
    name = "Laplace"


class LogisticMixtureDecoder(Decoder):
    """p(x|z) = prod_i DLogMix(x_i; pi_i(z), mu_i(z), s_i(z)) for 8-bit data scaled to [0, 1].

    A per-value mixture of ``mixtures`` discretized logistics over ``bins`` levels
    (:class:`~vaelab.distributions.logistic.DiscretizedLogisticMixture`); ``log_prob`` is the
    log-probability of the 8-bit values, so it gives bits per dimension as reported in the
    literature.

    Args:
        net: maps ``[N, D]`` to ``[N, 3 * mixtures * prod(x_shape)]`` numbers, read as
            ``[N, 3 * mixtures, *x_shape]``: mixture logits, locations, raw log-scales (for a
            convolutional decoder, 3 * mixtures * C output channels).
        x_shape: the shape of one example.
        mixtures: M, the number of logistics per value.
        bins: the number of levels (256: data k / 255).
        min_scale: the logistic scales are ``exp(raw) + min_scale`` (data units; a bin is
            1 / (bins - 1) wide).
    """

    support = "the 1/255 grid of [0, 1] (8-bit values divided by 255)"
    discrete = True

    def __init__(
        self,
        net: nn.Module,
        x_shape: Sequence[int],
        mixtures: int = 5,
        bins: int = 256,
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__(net, x_shape)
        if mixtures < 1:
            raise VaelabError(f"mixtures must be a positive integer, got {mixtures}")
        if bins < 2:
            raise VaelabError(f"bins must be at least 2, got {bins}")
        self.mixtures = int(mixtures)
        self.bins = int(bins)
        self.min_scale = min_scale
        self.params_per_value = 3 * self.mixtures

    def distribution(self, params: Tensor) -> Distribution:
        params = params.movedim(-1 - len(self.x_shape), -1)  # [*lead, *x_shape, 3M]
        logits, loc, raw = params.chunk(3, dim=-1)
        scale = torch.exp(raw) + self.min_scale
        return DiscretizedLogisticMixture(logits, loc, scale, bins=self.bins)

    def check(self, x: Tensor, what: str = "data") -> None:
        super().check(x, what)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise VaelabError(
                f"{what} has values in [{lo:g}, {hi:g}] but the discretized logistic likelihood "
                f"needs [0, 1]; divide 8-bit pixels by {self.bins - 1}"
            )
        levels = x * (self.bins - 1)
        off = (levels - torch.round(levels)).abs()
        if bool((off > 1e-3).any()):
            worst = x.flatten()[int(off.flatten().argmax())]
            raise VaelabError(
                f"{what} has {int((off > 1e-3).sum())} values off the grid k/{self.bins - 1} "
                f"(e.g. {float(worst):.6g}) but the discretized logistic likelihood is for "
                f"{self.bins}-level data (8-bit pixels divided by {self.bins - 1}); use "
                "--likelihood continuous-bernoulli for other [0, 1] data"
            )

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, mixtures={self.mixtures}, bins={self.bins}"
