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
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from ..errors import VaelabError

__all__ = ["BernoulliDecoder", "GaussianDecoder", "Decoder"]


class Decoder(nn.Module):
    """Shared plumbing: run ``net`` on flattened latents and reshape to ``[*lead, *x_shape]``.

    Subclasses implement :meth:`distribution` (parameters -> distribution) and :meth:`check`.
    """

    support: str = "real"

    def __init__(self, net: nn.Module, x_shape: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.x_shape = tuple(int(s) for s in x_shape)

    def forward(self, z: Tensor) -> Distribution:
        lead = z.shape[:-1]
        out = self.net(z.reshape(-1, z.shape[-1]))  # [N, ...]
        params = out.reshape(*lead, *self.x_shape)  # [*lead, *x_shape]
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


class GaussianDecoder(Decoder):
    """p(x|z) = N(x; mu(z), sigma^2 I) with a fixed or learned scale.

    Args:
        net: maps ``[N, D]`` to ``[N, prod(x_shape)]`` means.
        x_shape: the shape of one example.
        scale: the fixed scale, or the initial value of a learned one (must be > 0).
        learn_scale: ``"fixed"`` keeps ``scale``; ``"global"`` learns one scale for all
            dimensions; ``"feature"`` learns one scale per dimension of x. Learned scales are
            ``softplus(s) + 1e-3 * scale``, so they cannot reach zero (where the density would
            blow up on a data point it fits exactly).
    """

    support = "real numbers"

    def __init__(
        self,
        net: nn.Module,
        x_shape: Sequence[int],
        scale: float = 1.0,
        learn_scale: Literal["fixed", "global", "feature"] = "fixed",
    ) -> None:
        super().__init__(net, x_shape)
        if not scale > 0:
            raise VaelabError(f"Gaussian likelihood scale must be > 0, got {scale}")
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
        return Normal(params, self.scale.expand_as(params), validate_args=False)

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, learn_scale={self.learn_scale!r}"
