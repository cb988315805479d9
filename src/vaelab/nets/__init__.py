"""Plain networks (no distributions) that encoders and decoders wrap, and their registration.

Registered networks (``--net``): ``mlp`` (any data; ``hidden`` sets the widths, mirrored in
the decoder), ``conv`` (images ``(C, H, W)`` of any size: ``conv_channels`` sets the widths of
its stride-2 stages, ``hidden[0]`` its fully connected width) and ``resnet`` (the same with
``res_blocks`` residual blocks per stage). A
network factory is ``build(role, n_in, n_out, context_dim, hidden=...)``: role ``"encoder"``
maps x of shape ``n_in`` (and the context) to ``n_out`` numbers; role ``"decoder"`` maps
``n_in`` latents (and the context) to ``n_out = (per_value, *x_shape)`` numbers.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..errors import VaelabError
from ..registry import Option, register
from .conv import ConvDecoder, ConvEncoder
from .mlp import MLP
from .resnet import ResidualBlock, ResNetDecoder, ResNetEncoder
from .transform import InputTransform, Log1p

__all__ = ["MLP", "ConvEncoder", "ConvDecoder", "ResNetEncoder", "ResNetDecoder", "ResidualBlock", "InputTransform",
           "Log1p", "HIDDEN", "CONV_CHANNELS", "RES_BLOCKS"]

HIDDEN = Option("hidden", list, [400], "hidden layer widths, comma-separated (mirrored in the decoder; conv, resnet: the fully connected width, hidden[0])")
CONV_CHANNELS = Option("conv_channels", list, [32, 64], "conv/resnet: widths of the stride-2 stages, comma-separated; "
                       "each halves the image (28x28: 14, 7), so images need at least 2^stages pixels a side")
RES_BLOCKS = Option("res_blocks", int, 2, "resnet: residual blocks per stage", low=1)


@register("net", "mlp", options=(HIDDEN,), help="multi-layer perceptron (any data)")
def _mlp(role: str, n_in: Any, n_out: Any, context_dim: int, hidden: list[int]) -> nn.Module:
    if role == "encoder":
        return MLP(math.prod(n_in), hidden, n_out, context=context_dim)
    return MLP(n_in, hidden[::-1], math.prod(n_out), context=context_dim)


@register("net", "conv", options=(HIDDEN, CONV_CHANNELS), help="convolutional nets for images (C, H, W) of any size")
def _conv(role: str, n_in: Any, n_out: Any, context_dim: int, hidden: list[int], conv_channels: list[int]) -> nn.Module:
    width = hidden[0] if hidden else 400
    if role == "encoder":
        return ConvEncoder(tuple(n_in), n_out, conv_channels, width, context_dim)
    per_value, *shape = n_out
    out_shape = (per_value * shape[0], *shape[1:]) if len(shape) == 3 else tuple(shape)  # checked by the net
    return ConvDecoder(n_in, out_shape, conv_channels, width, context_dim)


@register("net", "conv-0.1", options=(HIDDEN,), help="the 28x28-only conv nets of vaelab 0.1 (their run folders load as it)")
def _conv_legacy(role: str, n_in: Any, n_out: Any, context_dim: int, hidden: list[int]) -> nn.Module:
    from .conv_legacy import LegacyConvDecoder, LegacyConvEncoder

    shape = tuple(n_in) if role == "encoder" else tuple(n_out[1:])
    if len(shape) != 3 or shape[1:] != (28, 28):
        raise VaelabError(f"net 'conv-0.1' needs 28x28 images of shape (C, 28, 28), the data have shape {shape}; "
                          "use --net conv")
    width = hidden[0] if hidden else 256
    if role == "encoder":
        return LegacyConvEncoder(n_out, channels=shape[0], hidden=width, context=context_dim)
    return LegacyConvDecoder(n_in, channels=n_out[0] * shape[0], hidden=width, context=context_dim)


@register("net", "resnet", options=(HIDDEN, CONV_CHANNELS, RES_BLOCKS),
          help="residual convolutional nets for images (C, H, W) of any size")
def _resnet(role: str, n_in: Any, n_out: Any, context_dim: int, hidden: list[int], conv_channels: list[int],
            res_blocks: int) -> nn.Module:
    width = hidden[0] if hidden else 400
    if role == "encoder":
        return ResNetEncoder(tuple(n_in), n_out, conv_channels, width, context_dim, blocks=res_blocks)
    per_value, *shape = n_out
    out_shape = (per_value * shape[0], *shape[1:]) if len(shape) == 3 else tuple(shape)
    return ResNetDecoder(n_in, out_shape, conv_channels, width, context_dim, blocks=res_blocks)
