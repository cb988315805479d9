"""A multi-layer perceptron that flattens its input: ``[B, *shape] -> [B, out_features]``."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """Linear layers with an activation between them, any depth and width.

    ``MLP(784, [400], 40)`` is the classic encoder body 784-400-(2x20);
    ``MLP(20, [400], 784)`` the classic decoder. ``hidden=[]`` gives a single linear map
    (the linear-Gaussian model's decoder).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten(start_dim=1)]
        sizes = [in_features, *hidden]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), activation()]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:  # [B, *shape] -> [B, out]
        return super().forward(x)
