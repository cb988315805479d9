"""A small convolutional encoder and decoder for 28x28 images (MNIST, Fashion-MNIST).

Encoder: ``[B, C, 28, 28]`` -conv 4x4/2-> ``[B, 32, 14, 14]`` -conv 4x4/2-> ``[B, 64, 7, 7]``
-> flatten -> hidden -> out. The decoder mirrors it with transposed convolutions and returns
``[N, C, 28, 28]`` numbers (logits or means; the likelihood decides).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ConvEncoder", "ConvDecoder"]


class ConvEncoder(nn.Sequential):
    """``[B, channels, 28, 28] -> [B, out_features]``."""

    def __init__(self, out_features: int, channels: int = 1, hidden: int = 256) -> None:
        super().__init__(
            nn.Conv2d(channels, 32, 4, stride=2, padding=1),  # [B, 32, 14, 14]
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),  # [B, 64, 7, 7]
            nn.ReLU(),
            nn.Flatten(start_dim=1),
            nn.Linear(64 * 7 * 7, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_features),
        )

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)


class ConvDecoder(nn.Sequential):
    """``[N, latent_dim] -> [N, channels, 28, 28]``."""

    def __init__(self, latent_dim: int, channels: int = 1, hidden: int = 256) -> None:
        super().__init__(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 64 * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),  # [N, 32, 14, 14]
            nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, stride=2, padding=1),  # [N, C, 28, 28]
        )

    def forward(self, z: Tensor) -> Tensor:
        return super().forward(z)
