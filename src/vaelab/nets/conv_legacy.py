"""The convolutional nets of vaelab 0.1 (28x28 images only), kept so their run folders load.

Registered as net ``conv-0.1``: a ``model.json`` whose net is ``conv`` without the
``conv_channels`` option (written before :mod:`vaelab.nets.conv` took images of any size) is
read as this net (:meth:`vaelab.spec.ModelSpec.from_dict`), with its ReLUs and its layer
names, so old weights load and compute what they computed. New runs use ``--net conv``.

Encoder: ``[B, C, 28, 28]`` -conv 4x4/2-> ``[B, 32, 14, 14]`` -conv 4x4/2-> ``[B, 64, 7, 7]``
-> flatten (+ context) -> hidden -> out. The decoder mirrors it with transposed convolutions
and returns ``[N, C, 28, 28]`` numbers (logits or means; the likelihood decides); a context is
concatenated to z before its first layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LegacyConvEncoder", "LegacyConvDecoder"]


def _needs(context: int, c: Tensor | None, what: str) -> None:
    if context == 0 and c is not None:
        raise ValueError(f"this {what} was built without a context (context=0) but was given one")
    if context > 0 and c is None:
        raise ValueError(f"this {what} needs a context of {context} numbers: call it with c")


class LegacyConvEncoder(nn.Sequential):
    """``[B, channels, 28, 28]`` (and a context ``[B, context]``) ``-> [B, out_features]``."""

    def __init__(self, out_features: int, channels: int = 1, hidden: int = 256, context: int = 0) -> None:
        super().__init__(
            nn.Conv2d(channels, 32, 4, stride=2, padding=1),  # [B, 32, 14, 14]
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),  # [B, 64, 7, 7]
            nn.ReLU(),
            nn.Flatten(start_dim=1),
            nn.Linear(64 * 7 * 7 + context, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_features),
        )
        self.context = context

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        _needs(self.context, c, "LegacyConvEncoder")
        layers = list(self)
        h = x
        for layer in layers[:5]:  # the convolutions and the flatten: [B, 64 * 7 * 7]
            h = layer(h)
        if c is not None:
            h = torch.cat([h, c.to(h.dtype)], -1)
        for layer in layers[5:]:
            h = layer(h)
        return h


class LegacyConvDecoder(nn.Sequential):
    """``[N, latent_dim]`` (and a context ``[N, context]``) ``-> [N, channels, 28, 28]``."""

    def __init__(self, latent_dim: int, channels: int = 1, hidden: int = 256, context: int = 0) -> None:
        super().__init__(
            nn.Linear(latent_dim + context, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 64 * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),  # [N, 32, 14, 14]
            nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, stride=2, padding=1),  # [N, C, 28, 28]
        )
        self.context = context

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        _needs(self.context, c, "LegacyConvDecoder")
        return super().forward(z if c is None else torch.cat([z, c.to(z.dtype)], -1))
