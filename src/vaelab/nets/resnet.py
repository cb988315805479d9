"""Residual convolutional encoder and decoder for images ``(C, H, W)`` of any size.

The convolutional nets of :mod:`vaelab.nets.conv` with ``blocks`` residual blocks at every
stage (after each stride-2 convolution of the encoder, before each transposed convolution
of the decoder), in the manner of the ResNet VAE of the IAF paper (Kingma et al. 2016):
batch-free blocks of ELU and 3x3 convolutions at constant width,

    h -> h + conv3x3(ELU(conv3x3(ELU(h))))

The IAF-VAE used weight normalisation with a data-dependent initialisation; here instead the
second convolution of every block starts at zero, so that each block starts as the identity
and a deep stack trains without normalisation (Fixup, Zhang et al. 2019; SkipInit, De &
Smith 2020). No batch normalisation, so log p(x) of an example never depends on its batch.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn

from .conv import ConvDecoder, ConvEncoder

__all__ = ["ResidualBlock", "ResNetEncoder", "ResNetDecoder"]


class ResidualBlock(nn.Module):
    """``[B, width, H, W] -> [B, width, H, W]``: ``h + conv(ELU(conv(ELU(h))))``, 3x3 same-size
    convolutions; the second starts at zero (the block starts as the identity)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: Tensor) -> Tensor:
        act = nn.functional.elu
        return h + self.conv2(act(self.conv1(act(h))))


def _blocks(n: int) -> Callable[[int], list[nn.Module]]:
    return lambda width: [ResidualBlock(width) for _ in range(n)]


class ResNetEncoder(ConvEncoder):
    """:class:`~vaelab.nets.conv.ConvEncoder` with ``blocks`` residual blocks after each stage."""

    def __init__(self, in_shape: Sequence[int], out_features: int, channels: Sequence[int] = (32, 64),
                 hidden: int = 400, context: int = 0, blocks: int = 2) -> None:
        super().__init__(in_shape, out_features, channels, hidden, context, stage=_blocks(blocks), name="resnet")


class ResNetDecoder(ConvDecoder):
    """:class:`~vaelab.nets.conv.ConvDecoder` with ``blocks`` residual blocks before each
    transposed convolution."""

    def __init__(self, latent_dim: int, out_shape: Sequence[int], channels: Sequence[int] = (32, 64),
                 hidden: int = 400, context: int = 0, blocks: int = 2) -> None:
        super().__init__(latent_dim, out_shape, channels, hidden, context, stage=_blocks(blocks), name="resnet")
