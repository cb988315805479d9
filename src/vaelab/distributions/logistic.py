"""The discretized mixture of logistics (Salimans et al. 2017, PixelCNN++), for 8-bit data.

A pixel takes one of ``bins`` values on the grid x = k / (bins - 1), k = 0..bins-1, of [0, 1]
(8-bit images divided by 255: ``bins = 256``). Its probability is the mass that a mixture of
M logistic densities puts on the pixel's bin, [x - delta, x + delta] with delta = 1 / (2 (bins
- 1)); the two edge bins reach out to -inf and +inf, so the bins cover the real line and the
probabilities of the ``bins`` values sum to exactly 1:

    P(x) = sum_m pi_m [F_m(x + delta) - F_m(x - delta)],     F_m(t) = sigmoid((t - mu_m) / s_m)
    P(0) = sum_m pi_m F_m(delta),        P(1) = sum_m pi_m [1 - F_m(1 - delta)]

Because P is a probability of the 8-bit value itself, -log P(x) / (D ln 2) summed over the D
pixels is the bits per dimension the literature reports, with no change-of-variables term.

The difference of two sigmoids is computed without cancellation from the identity
sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(-(a - b))), a > b, so

    log [F(x + delta) - F(x - delta)] = logsigmoid(a) + logsigmoid(-b) + log(-expm1(-(a - b)))

with a - b = 2 delta / s taken directly from the scale: exact for any location and any scale,
no threshold and no fallback to the density at the bin's centre.

Colour pixels: :class:`RGBLogisticMixture` is PixelCNN++'s mixture over whole RGB pixels, each
component a product of three such channel probabilities with the green and blue locations
shifted linearly by the red (and green) value of the same pixel; :class:`ChannelsFirst` shows
a distribution over ``(H, W, 3)`` images as one over ``(3, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Size, Tensor
from torch.distributions import Categorical, Distribution, constraints

__all__ = ["DiscretizedLogisticMixture", "RGBLogisticMixture", "ChannelsFirst"]


def _bin_log_prob(x: Tensor, loc: Tensor, scale: Tensor, bins: int) -> Tensor:
    """log of the mass a logistic (loc, scale) puts on the bin of x (on the grid k / (bins - 1)),
    the edge bins reaching out to -inf and +inf; broadcast shapes."""
    half = 0.5 / (bins - 1)
    a = (x + half - loc) / scale  # upper edge of the bin, standardised
    b = (x - half - loc) / scale  # lower edge
    width = (2 * half) / scale  # a - b, without the subtraction
    middle = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-width))
    level = torch.round(x * (bins - 1))
    first = F.logsigmoid(a)  # F(x + delta) - F(-inf)
    last = F.logsigmoid(-b)  # F(+inf) - F(x - delta)
    return torch.where(level <= 0, first, torch.where(level >= bins - 1, last, middle))


def _bin_mean(loc: Tensor, scale: Tensor, bins: int) -> Tensor:
    """E[x] of one discretized logistic, exactly: (1 / n) sum_{k=1}^{n} sigmoid((mu - (k - 1/2) / n) / s),
    n = bins - 1 (the levels summed 32 at a time: memory 32 times the parameters)."""
    total = torch.zeros_like(loc)
    n = bins - 1
    for start in range(1, bins, 32):
        k = torch.arange(start, min(start + 32, bins), dtype=loc.dtype, device=loc.device)
        edges = (k - 0.5) / n  # [J]
        total = total + torch.sigmoid((loc.unsqueeze(-1) - edges) / scale.unsqueeze(-1)).sum(-1)  # [..., J] summed
    return total / n


def _logistic_level(loc: Tensor, scale: Tensor, bins: int) -> Tensor:
    """A logistic draw x = mu + s log(u / (1 - u)) rounded to its level k / (bins - 1)."""
    u = torch.rand_like(loc)
    x = loc + scale * (torch.log(u) - torch.log1p(-u))  # u = 0 gives -inf: the first bin
    return torch.clamp(torch.round(x * (bins - 1)), 0, bins - 1) / (bins - 1)


class DiscretizedLogisticMixture(Distribution):
    """A mixture of M discretized logistics per value, over ``bins`` levels of [0, 1].

    Args:
        logits: mixture weights (unnormalised log pi), ``[*batch, M]``.
        loc: logistic locations mu_m in data units, ``[*batch, M]``.
        scale: logistic scales s_m > 0 in data units, ``[*batch, M]``.
        bins: number of levels (256 for 8-bit data).

    Batch shape ``[*batch]``, event shape ``[]`` (wrap in ``Independent`` for images).

    Example:
        >>> d = DiscretizedLogisticMixture(torch.zeros(3, 2), torch.rand(3, 2), torch.full((3, 2), 0.1))
        >>> x = torch.arange(256.0)[:, None].expand(256, 3) / 255     # every level, [256, 3]
        >>> d.log_prob(x).exp().sum(0)                               # tensor([1., 1., 1.])
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, logits: Tensor, loc: Tensor, scale: Tensor, bins: int = 256, validate_args: bool | None = False) -> None:
        if bins < 2:
            raise ValueError(f"a discretized logistic needs at least 2 bins, got {bins}")
        self.logits, self.loc, self.scale = torch.broadcast_tensors(logits, loc, scale)
        self.bins = int(bins)
        super().__init__(self.logits.shape[:-1], Size(), validate_args=validate_args)

    @property
    def mixtures(self) -> int:
        return self.logits.shape[-1]

    def _component_log_prob(self, x: Tensor) -> Tensor:
        """log P_m(x) for every component, ``[..., M]``; x is on the grid, ``[...]``."""
        return _bin_log_prob(x.unsqueeze(-1), self.loc, self.scale, self.bins)

    def log_prob(self, value: Tensor) -> Tensor:
        """log P(x) for x on the grid k / (bins - 1); shape ``broadcast(value, batch)``."""
        log_pi = torch.log_softmax(self.logits, dim=-1)
        return torch.logsumexp(log_pi + self._component_log_prob(value), dim=-1)

    def sample(self, sample_shape: Size | tuple[int, ...] = Size()) -> Tensor:
        """Draw a component, a logistic value x = mu + s log(u / (1 - u)), and round it to its bin."""
        shape = Size(sample_shape)
        with torch.no_grad():
            m = Categorical(logits=self.logits, validate_args=False).sample(shape)  # [*shape, *batch]
            loc = self.loc.expand(shape + self.loc.shape).gather(-1, m.unsqueeze(-1)).squeeze(-1)
            scale = self.scale.expand(shape + self.scale.shape).gather(-1, m.unsqueeze(-1)).squeeze(-1)
            return _logistic_level(loc, scale, self.bins)

    @property
    def mean(self) -> Tensor:
        """E[x] = (1 / (bins - 1)) sum_{k=1}^{bins-1} P(x >= k / (bins - 1)), exactly.

        P(x >= level k) = sum_m pi_m sigmoid((mu_m - (k - 1/2) / (bins - 1)) / s_m); the levels
        are summed 32 at a time so memory stays at 32 times the parameters.
        """
        pi = torch.softmax(self.logits, dim=-1)  # [..., M]
        return (pi * _bin_mean(self.loc, self.scale, self.bins)).sum(-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, mixtures={self.mixtures}, bins={self.bins})"



class RGBLogisticMixture(Distribution):
    """The colour pixel of PixelCNN++ (Salimans et al. 2017, eq. 3): a mixture over whole RGB
    pixels, the green and blue locations depending linearly on the red (and green) value of
    the same pixel.

    Component m draws red, then green given red, then blue given both, each a discretized
    logistic over ``bins`` levels of [0, 1] (as in :class:`DiscretizedLogisticMixture`):

        mu_r = l_r,   mu_g = l_g + alpha x_r,   mu_b = l_b + beta x_r + gamma x_g
        P(x) = sum_m pi_m P_m(x_r | mu_r) P_m(x_g | mu_g) P_m(x_b | mu_b)

    with alpha, beta, gamma in (-1, 1) per component (tanh of the network's numbers, in data
    units). The probabilities of the bins^3 colours of a pixel sum to 1 (each factor is a
    distribution over its channel's levels given the earlier ones).

    Args:
        logits: mixture weights (unnormalised log pi), ``[*batch, M]``.
        loc: ``l_r, l_g, l_b``, ``[*batch, 3, M]``.
        scale: logistic scales > 0 of the three channels, ``[*batch, 3, M]``.
        coeffs: ``alpha, beta, gamma``, ``[*batch, 3, M]``.
        bins: levels per channel (256 for 8-bit data).

    Batch shape ``[*batch]``, event shape ``[3]``: a value is one pixel, channels last.

    ``mean`` is exact for red; for green and blue it evaluates the component's conditional mean
    at the expected red (and green) value, E[x_g | m] ~ E_logistic[l_g + alpha E[x_r | m]], which is
    exact when the coefficients are 0 and, since a discretized logistic's mean is linear in its
    location away from the edges of [0, 1], accurate for pixels not saturated at 0 or 1 (the
    exact value would sum over the bins^2 red and green levels of each pixel). It is what
    pictures show; log_prob and sample are exact.

    Example:
        >>> d = RGBLogisticMixture(torch.zeros(2), torch.rand(3, 2), torch.full((3, 2), 0.2), torch.zeros(3, 2), bins=4)
        >>> levels = torch.arange(4.0) / 3
        >>> x = torch.cartesian_prod(levels, levels, levels)       # every colour, [64, 3]
        >>> round(float(d.log_prob(x).exp().sum()), 6)
        1.0
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.independent(constraints.unit_interval, 1)
    has_rsample = False

    def __init__(self, logits: Tensor, loc: Tensor, scale: Tensor, coeffs: Tensor, bins: int = 256,
                 validate_args: bool | None = False) -> None:
        if bins < 2:
            raise ValueError(f"a discretized logistic needs at least 2 bins, got {bins}")
        if loc.shape[-2:-1] != (3,):
            raise ValueError(f"loc must be [*batch, 3, M], got {tuple(loc.shape)}")
        batch = torch.broadcast_shapes(logits.shape[:-1], loc.shape[:-2], scale.shape[:-2], coeffs.shape[:-2])
        m = logits.shape[-1]
        self.logits = logits.expand(*batch, m)  # [*batch, M]
        self.loc, self.scale, self.coeffs = (t.expand(*batch, 3, m) for t in (loc, scale, coeffs))  # [*batch, 3, M]
        self.bins = int(bins)
        super().__init__(batch, Size([3]), validate_args=validate_args)

    @property
    def mixtures(self) -> int:
        return self.logits.shape[-1]

    def _locations(self, red: Tensor, green: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """mu_r, mu_g, mu_b ``[..., M]`` given red and green values ``[..., 1]`` (or ``[..., M]``)."""
        l_r, l_g, l_b = self.loc.unbind(-2)
        alpha, beta, gamma = self.coeffs.unbind(-2)
        return l_r, l_g + alpha * red, l_b + beta * red + gamma * green

    def log_prob(self, value: Tensor) -> Tensor:
        """log P(x) of pixels ``[..., 3]`` on the grid k / (bins - 1); shape ``broadcast(value[..., 0], batch)``."""
        x = value.unsqueeze(-1)  # [..., 3, 1]
        red, green, blue = x.unbind(-2)  # each [..., 1]
        mu_r, mu_g, mu_b = self._locations(red, green)  # each [..., M]
        s_r, s_g, s_b = self.scale.unbind(-2)
        log_p = (_bin_log_prob(red, mu_r, s_r, self.bins) + _bin_log_prob(green, mu_g, s_g, self.bins)
                 + _bin_log_prob(blue, mu_b, s_b, self.bins))  # [..., M]
        return torch.logsumexp(torch.log_softmax(self.logits, dim=-1) + log_p, dim=-1)

    def sample(self, sample_shape: Size | tuple[int, ...] = Size()) -> Tensor:
        """Draw a component per pixel, then red, green given red, blue given both, each rounded to its level."""
        shape = Size(sample_shape)
        with torch.no_grad():
            m = Categorical(logits=self.logits, validate_args=False).sample(shape)  # [*shape, *batch]
            index = m[..., None, None].expand(*m.shape, 3, 1)

            def pick(t: Tensor) -> Tensor:  # [*shape, *batch, 3]: component m's numbers
                return t.expand(shape + t.shape).gather(-1, index).squeeze(-1)

            loc, scale, coeffs = pick(self.loc), pick(self.scale), pick(self.coeffs)
            red = _logistic_level(loc[..., 0], scale[..., 0], self.bins)
            green = _logistic_level(loc[..., 1] + coeffs[..., 0] * red, scale[..., 1], self.bins)
            blue = _logistic_level(loc[..., 2] + coeffs[..., 1] * red + coeffs[..., 2] * green, scale[..., 2], self.bins)
            return torch.stack([red, green, blue], -1)

    @property
    def mean(self) -> Tensor:
        """``[*batch, 3]``: exact for red, the plug-in value for green and blue (class docstring)."""
        pi = torch.softmax(self.logits, dim=-1)  # [..., M]
        s_r, s_g, s_b = self.scale.unbind(-2)
        l_r = self.loc[..., 0, :]
        red = _bin_mean(l_r, s_r, self.bins)  # [..., M]: E[x_r | m]
        _, mu_g, _ = self._locations(red, red)
        green = _bin_mean(mu_g, s_g, self.bins)
        _, _, mu_b = self._locations(red, green)
        blue = _bin_mean(mu_b, s_b, self.bins)
        return (pi.unsqueeze(-2) * torch.stack([red, green, blue], -2)).sum(-1)  # [..., 3]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, mixtures={self.mixtures}, bins={self.bins})"


class ChannelsFirst(Distribution):
    """A distribution over images with event shape ``(H, W, C)`` seen as ``(C, H, W)``: values,
    samples and means have their channel axis moved from last to third from last (for
    :class:`RGBLogisticMixture` pixels wrapped in ``Independent(..., 2)``)."""

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, base: Distribution) -> None:
        if len(base.event_shape) != 3:
            raise ValueError(f"ChannelsFirst needs a base of event shape (H, W, C), got {tuple(base.event_shape)}")
        h, w, c = base.event_shape
        self.base = base
        super().__init__(base.batch_shape, Size([c, h, w]), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return self.base.support

    def log_prob(self, value: Tensor) -> Tensor:
        return self.base.log_prob(value.movedim(-3, -1))

    def sample(self, sample_shape: Size | tuple[int, ...] = Size()) -> Tensor:
        return self.base.sample(sample_shape).movedim(-1, -3)

    @property
    def mean(self) -> Tensor:
        return self.base.mean.movedim(-1, -3)
