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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Size, Tensor
from torch.distributions import Categorical, Distribution, constraints

__all__ = ["DiscretizedLogisticMixture"]


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
        half = 0.5 / (self.bins - 1)
        x = x.unsqueeze(-1)  # [..., 1]
        a = (x + half - self.loc) / self.scale  # upper edge of the bin, standardised
        b = (x - half - self.loc) / self.scale  # lower edge
        width = (2 * half) / self.scale  # a - b, without the subtraction
        middle = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-width))
        level = torch.round(x * (self.bins - 1))
        first = F.logsigmoid(a)  # F(x + delta) - F(-inf)
        last = F.logsigmoid(-b)  # F(+inf) - F(x - delta)
        return torch.where(level <= 0, first, torch.where(level >= self.bins - 1, last, middle))

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
            u = torch.rand_like(loc)
            x = loc + scale * (torch.log(u) - torch.log1p(-u))  # u = 0 gives -inf: the first bin
            level = torch.clamp(torch.round(x * (self.bins - 1)), 0, self.bins - 1)
            return level / (self.bins - 1)

    @property
    def mean(self) -> Tensor:
        """E[x] = (1 / (bins - 1)) sum_{k=1}^{bins-1} P(x >= k / (bins - 1)), exactly.

        P(x >= level k) = sum_m pi_m sigmoid((mu_m - (k - 1/2) / (bins - 1)) / s_m); the levels
        are summed 32 at a time so memory stays at 32 times the parameters.
        """
        pi = torch.softmax(self.logits, dim=-1)  # [..., M]
        total = torch.zeros_like(self.loc)
        n = self.bins - 1
        for start in range(1, self.bins, 32):
            k = torch.arange(start, min(start + 32, self.bins), dtype=self.loc.dtype, device=self.loc.device)
            edges = (k - 0.5) / n  # [J]
            upper = torch.sigmoid((self.loc.unsqueeze(-1) - edges) / self.scale.unsqueeze(-1))  # [..., M, J]
            total = total + upper.sum(-1)
        return (pi * total).sum(-1) / n

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, mixtures={self.mixtures}, bins={self.bins})"

