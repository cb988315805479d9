"""A multi-layer perceptron that flattens its input: ``[B, *shape] -> [B, out_features]``.

With a context (``context > 0``) it reads ``forward(x, c)``: the flattened input and the
context vector ``c`` ``[B, context]`` are concatenated before the first layer (a conditional
MLP, as in the conditional VAE of Sohn et al. 2015).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """Linear layers with an activation between them, any depth and width.

    ``MLP(784, [400], 40)`` is the classic encoder body 784-400-(2x20);
    ``MLP(20, [400], 784)`` the classic decoder. ``hidden=[]`` gives a single linear map
    (the linear-Gaussian model's decoder). ``MLP(784, [400], 40, context=10)`` also reads a
    10-number context: ``mlp(x, c)``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: type[nn.Module] = nn.ReLU,
        context: int = 0,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten(start_dim=1)]
        sizes = [in_features + context, *hidden]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), activation()]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features
        self.context = context

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:  # [B, *shape] (+ [B, C]) -> [B, out]
        if self.context == 0:
            if c is not None:
                raise ValueError("this MLP was built without a context (context=0) but was given one")
            return super().forward(x)
        if c is None:
            raise ValueError(f"this MLP needs a context of {self.context} numbers: call it as net(x, c)")
        h = torch.cat([x.flatten(1), c.to(x.dtype)], -1)  # [B, in + C]
        for layer in list(self)[1:]:
            h = layer(h)
        return h
