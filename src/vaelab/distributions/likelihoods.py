"""Likelihoods p_theta(x|z): decoders whose ``forward(z)`` returns a distribution over x.

A decoder wraps a network that maps a batch of latents ``[N, D]`` to ``[N, prod(x_shape)]``
numbers (or directly to ``[N, *x_shape]``). Latents may carry any leading shape, e.g. samples
first then batch, ``[K, B, D]``; the decoder flattens them for the network and returns a
distribution with batch shape ``[K, B]`` and event shape ``x_shape``, so that
``decoder(z).log_prob(x)`` with ``x`` of shape ``[B, *x_shape]`` is ``log p(x|z_k)`` of shape
``[K, B]``, summed over every dimension of x (never averaged).

Each decoder states its support as a ``torch.distributions.constraints`` object (the registry
reads it too) and checks data against it with :meth:`check`: data outside the support is a
:class:`~vaelab.errors.VaelabError`, never a silent NaN.

A conditional likelihood p(x|z, c) is the same module called as ``decoder(z, c)``: the
context features ``c`` ``[B, C]`` are broadcast over the samples and go to the network.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, ContinuousBernoulli, Distribution, Independent, Laplace, Normal, constraints

from ..errors import VaelabError
from ..registry import Option, Shapes, register
from .logistic import ChannelsFirst, DiscretizedLogisticMixture, RGBLogisticMixture

__all__ = [
    "Decoder",
    "BernoulliDecoder",
    "ContinuousBernoulliDecoder",
    "LocationScaleDecoder",
    "GaussianDecoder",
    "LaplaceDecoder",
    "LogisticMixtureDecoder",
    "Grid",
]

GAUSSIAN_SCALE = Option("gaussian_scale", float, 1.0, "Gaussian or Laplace likelihood: the fixed scale, or the initial learned one",
                        low=0.0, low_open=True)
LEARN_SCALE = Option("learn_scale", str, "fixed", "Gaussian or Laplace likelihood scale: fixed, global (one learned) or feature (one per dimension)",
                     choices=("fixed", "global", "feature"))
MIXTURES = Option("mixtures", int, 5, "logistic-mixture likelihood: logistics per value", low=1)


class Grid(constraints.Constraint):
    """The values k / (bins - 1), k = 0..bins-1: 8-bit pixels divided by 255 for ``bins=256``
    (to within 1e-3 of a level, the rounding of float32 data)."""

    is_discrete = True

    def __init__(self, bins: int = 256) -> None:
        self.bins = int(bins)
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        levels = value * (self.bins - 1)
        return (value >= 0) & (value <= 1) & ((levels - torch.round(levels)).abs() <= 1e-3)


class Decoder(nn.Module):
    """Shared plumbing: run ``net`` on flattened latents and reshape to ``[*lead, *x_shape]``.

    Subclasses implement :meth:`distribution` (parameters -> distribution) and :meth:`check`.
    A likelihood with several parameters per value of x (a mixture) sets ``params_per_value``
    to P: the network then returns ``[N, P * prod(x_shape)]`` numbers, handed to
    :meth:`distribution` as ``[*lead, P, *x_shape]``.
    """

    name: str = "this"
    support: constraints.Constraint = constraints.real
    support_text: str = "finite real numbers"
    support_hint: str = ""
    params_per_value: int = 1
    discrete: bool = False  # True: log_prob is the log-probability of discrete values (gives bits/dim)

    def __init__(self, net: nn.Module, x_shape: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.x_shape = tuple(int(s) for s in x_shape)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Distribution:
        lead = z.shape[:-1]
        if c is None:
            out = self.net(z.reshape(-1, z.shape[-1]))  # [N, ...]
        else:  # c [B, C] broadcast over the leading sample dimensions of z [*S, B, D]
            c = c.expand(*lead, c.shape[-1]).reshape(-1, c.shape[-1])
            out = self.net(z.reshape(-1, z.shape[-1]), c)
        per_value = () if self.params_per_value == 1 else (self.params_per_value,)
        params = out.reshape(*lead, *per_value, *self.x_shape)  # [*lead, (P,) *x_shape]
        dist = self.distribution(params)  # batch [*lead, *x_shape], or [*lead] with event x_shape (colour pixels)
        return Independent(dist, len(self.x_shape) - len(dist.event_shape), validate_args=False)

    def distribution(self, params: Tensor) -> Distribution:
        raise NotImplementedError

    def check(self, x: Tensor, what: str = "data") -> None:
        """Raise VaelabError unless every value of x is finite and in ``support``."""
        bad = ~torch.isfinite(x)
        if bad.any():
            raise VaelabError(
                f"{what} holds {int(bad.sum())} NaN/inf values; remove or impute them"
            )
        if not bool(self.support.check(x).all()):
            # the digits the data's precision holds (1 + 1e-6 is not shown as 1), + 0.0: no "-0"
            digits = 15 if x.dtype == torch.float64 else 7
            lo, hi = float(x.min()) + 0.0, float(x.max()) + 0.0
            raise VaelabError(
                f"{what} has values in [{lo:.{digits}g}, {hi:.{digits}g}] but the {self.name} likelihood needs "
                f"{self.support_text}; {self.support_hint}"
            )

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}"


class BernoulliDecoder(Decoder):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logit_i(z))), for x in [0, 1].

    log p(x|z) = sum_i x_i log p_i + (1 - x_i) log(1 - p_i), computed from logits (stable).
    Binary data is the model's own case; grey values in [0, 1] are accepted too (the
    cross-entropy of the seeds' texts), but then ``log p`` is not a normalised density of x.
    """

    name = "Bernoulli"
    support = constraints.unit_interval
    support_text = "[0, 1]"
    support_hint = "rescale the data (e.g. divide 8-bit pixels by 255) or use --likelihood gaussian"

    def distribution(self, params: Tensor) -> Distribution:
        return _Bernoulli(logits=params, validate_args=False)


class _Bernoulli(Bernoulli):
    """torch's Bernoulli with a leaner log-density, log p(x) = x l - softplus(l) for logits l:
    the value of torch's -BCE-with-logits (for any x in [0, 1]) in two elementwise passes
    instead of six; ``vaelab eval`` on the default mnist5k model ran its encoder IS 10 % faster
    (benchmarks/eval_speed.py)."""

    def log_prob(self, value: Tensor) -> Tensor:
        return value * self.logits - nn.functional.softplus(self.logits)


class ContinuousBernoulliDecoder(Decoder):
    """p(x|z) = prod_i CB(x_i; lambda_i(z)), the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019).

    CB(x; lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x) on [0, 1]: the Bernoulli's
    cross-entropy with the normalising constant C(lambda) that makes it a density of grey
    values. Use it for [0, 1] data that is not binary; its mean is not lambda (see
    ``torch.distributions.ContinuousBernoulli``, whose stable log-normaliser this uses).
    """

    name = "continuous Bernoulli"
    support = constraints.unit_interval
    support_text = "[0, 1]"
    support_hint = "rescale the data (e.g. divide 8-bit pixels by 255) or use --likelihood gaussian"

    def distribution(self, params: Tensor) -> Distribution:
        return ContinuousBernoulli(logits=params, validate_args=False)


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

    family: type[Distribution]

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
            self._fixed_value = float(scale)
            self.register_buffer("fixed_scale", torch.tensor(self._fixed_value), persistent=False)
        else:
            shape = () if learn_scale == "global" else self.x_shape
            raw = math.log(math.expm1(scale - self.floor))  # inverse softplus
            self.raw_scale = nn.Parameter(torch.full(shape, raw))

    def _apply(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        """``.double()``, ``.to(...)``: the fixed scale made anew from its exact value in the new dtype
        (cast from float32, 0.3 would stay 0.30000001192... in a float64 model)."""
        out = super()._apply(fn, *args, **kwargs)
        if self.learn_scale == "fixed":
            self.fixed_scale = torch.tensor(self._fixed_value, dtype=self.fixed_scale.dtype, device=self.fixed_scale.device)
        return out

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

    def check(self, x: Tensor, what: str = "data") -> None:
        """As :meth:`Decoder.check`, and refuse values whose square overflows float32 (|x| beyond
        about 1.8e19): ``Normal.log_prob`` squares x - mu, so the loss would be inf or NaN at the
        first step whatever the learning rate or the scale."""
        super().check(x, what)
        limit = math.sqrt(torch.finfo(torch.float32).max)  # 1.84e19
        if x.numel() and float(x.abs().max()) >= limit:
            raise VaelabError(
                f"{what} has values as large as {float(x.abs().max()):.3g} in absolute value; the Gaussian likelihood "
                f"squares them, which overflows float32 from {limit:.3g}; standardise the data (subtract each feature's "
                "mean, divide by its standard deviation) or rescale it"
            )


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

    Colour images ``(3, H, W)`` get PixelCNN++'s pixel instead
    (:class:`~vaelab.distributions.logistic.RGBLogisticMixture`): one mixture over whole RGB
    pixels, green and blue locations linear in the pixel's red (and green) value. The network
    then gives ``4 * mixtures`` numbers per value, ``[N, 4M, 3, H, W]``: per channel, a share of
    the mixture logits (the pixel's logits are the sum of its three channels' shares), the
    location, the raw log-scale, and one coupling coefficient (tanh; red's slot holds alpha,
    green's beta, blue's gamma): 12 M numbers per pixel where PixelCNN++ has 10 M.

    Args:
        net: maps ``[N, D]`` to ``[N, 3 * mixtures * prod(x_shape)]`` numbers, read as
            ``[N, 3 * mixtures, *x_shape]``: mixture logits, locations, raw log-scales (for a
            convolutional decoder, 3 * mixtures * C output channels); 4 * mixtures for colour.
        x_shape: the shape of one example.
        mixtures: M, the number of logistics per value.
        bins: the number of levels (256: data k / 255).
        min_scale: the logistic scales are ``exp(raw) + min_scale`` (data units; a bin is
            1 / (bins - 1) wide).
    """

    name = "discretized logistic"
    support = Grid(256)
    support_text = "[0, 1]"
    discrete = True

    @staticmethod
    def params_per_value_for(mixtures: int = 5, x_shape: Sequence[int] = (), **_: object) -> int:
        """Numbers per value of x: logits, locations and scales of each logistic, 3 M; for
        colour images ``(3, H, W)`` also a coupling coefficient, 4 M."""
        return (4 if LogisticMixtureDecoder.is_colour(x_shape) else 3) * int(mixtures)

    @staticmethod
    def is_colour(x_shape: Sequence[int]) -> bool:
        """Whether x of this shape is an RGB image, modelled with PixelCNN++'s coupled pixel."""
        return len(x_shape) == 3 and int(x_shape[0]) == 3

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
        self.colour = self.is_colour(self.x_shape)
        self.params_per_value = self.params_per_value_for(self.mixtures, self.x_shape)
        self.support = Grid(self.bins)
        self.support_hint = f"divide 8-bit pixels by {self.bins - 1}"

    def distribution(self, params: Tensor) -> Distribution:
        if self.colour:  # params [*lead, 4M, 3, H, W]
            share, loc, raw, coeff = params.movedim(-4, -1).movedim(-4, -2).chunk(4, dim=-1)  # [*lead, H, W, 3, M]
            pixels = RGBLogisticMixture(share.sum(-2), loc, torch.exp(raw) + self.min_scale, torch.tanh(coeff),
                                        bins=self.bins)  # batch [*lead, H, W], event [3]
            return ChannelsFirst(Independent(pixels, 2, validate_args=False))  # event [3, H, W]
        params = params.movedim(-1 - len(self.x_shape), -1)  # [*lead, *x_shape, 3M]
        logits, loc, raw = params.chunk(3, dim=-1)
        scale = torch.exp(raw) + self.min_scale
        return DiscretizedLogisticMixture(logits, loc, scale, bins=self.bins)

    def check(self, x: Tensor, what: str = "data") -> None:
        lo, hi = float(x.min()), float(x.max())
        if not (lo >= 0 and hi <= 1):  # NaN too
            super().check(x, what)
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


@register("likelihood", "bernoulli", help="data in [0, 1]", cls=BernoulliDecoder)
def _bernoulli(shapes: Shapes) -> nn.Module:
    return BernoulliDecoder(shapes.decoder_net(1), shapes.x_shape)


@register("likelihood", "continuous-bernoulli", help="grey values in [0, 1]", cls=ContinuousBernoulliDecoder)
def _continuous_bernoulli(shapes: Shapes) -> nn.Module:
    return ContinuousBernoulliDecoder(shapes.decoder_net(1), shapes.x_shape)


@register("likelihood", "gaussian", options=(GAUSSIAN_SCALE, LEARN_SCALE), help="real data", cls=GaussianDecoder)
def _gaussian(shapes: Shapes, gaussian_scale: float, learn_scale: str) -> nn.Module:
    return GaussianDecoder(shapes.decoder_net(1), shapes.x_shape, scale=gaussian_scale, learn_scale=learn_scale)  # type: ignore[arg-type]


@register("likelihood", "laplace", options=(GAUSSIAN_SCALE, LEARN_SCALE), help="real data, heavier tails",
          cls=LaplaceDecoder)
def _laplace(shapes: Shapes, gaussian_scale: float, learn_scale: str) -> nn.Module:
    return LaplaceDecoder(shapes.decoder_net(1), shapes.x_shape, scale=gaussian_scale, learn_scale=learn_scale)  # type: ignore[arg-type]


@register("likelihood", "logistic-mixture", options=(MIXTURES,), cls=LogisticMixtureDecoder,
          help="8-bit data k/255 (reports bits per dimension)")
def _logistic_mixture(shapes: Shapes, mixtures: int) -> nn.Module:
    per_value = LogisticMixtureDecoder.params_per_value_for(mixtures, shapes.x_shape)
    return LogisticMixtureDecoder(shapes.decoder_net(per_value), shapes.x_shape, mixtures=mixtures)
