"""An encoder network that reads a transformed x: ``net(transform(x), c)``.

Some likelihoods want the encoder to see x differently from how the likelihood scores it:
count likelihoods feed the encoder ``log1p(x)`` (as scVI does), a mixed tabular likelihood a
zero-filled x with its missingness mask and one-hot categorical columns. The likelihood's
class declares it (``encoder_input(x_shape, **options) -> (module, feature_shape)``, see
:func:`vaelab.build.build_parts`), and the encoder's network is built on the feature shape and
wrapped in :class:`InputTransform`; posteriors and priors see one network as before.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["InputTransform", "Log1p"]


class InputTransform(nn.Module):
    """``forward(x, c=None) = net(transform(x), c)``: x ``[B, *x_shape]`` -> ``[B, n_out]``."""

    def __init__(self, transform: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.transform = transform
        self.net = net

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        h = self.transform(x)  # [B, *feature_shape]
        return self.net(h) if c is None else self.net(h, c)


class Log1p(nn.Module):
    """x -> log(1 + x), elementwise (counts to the scale an encoder learns from)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.log1p(x)
