"""Plain networks (no distributions) that encoders and decoders wrap, and their registration.

Registered networks (``--net``): ``mlp`` (any data; ``hidden`` sets the widths, mirrored in
the decoder) and ``conv`` (28x28 images; ``hidden[0]`` sets its fully connected width). A
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
from .transform import InputTransform, Log1p

__all__ = ["MLP", "ConvEncoder", "ConvDecoder", "InputTransform", "Log1p", "HIDDEN"]

HIDDEN = Option("hidden", list, [400], "hidden layer widths, comma-separated (mirrored in the decoder; conv: the fully connected width)")


@register("net", "mlp", options=(HIDDEN,), help="multi-layer perceptron (any data)")
def _mlp(role: str, n_in: Any, n_out: Any, context_dim: int, hidden: list[int]) -> nn.Module:
    if role == "encoder":
        return MLP(math.prod(n_in), hidden, n_out, context=context_dim)
    return MLP(n_in, hidden[::-1], math.prod(n_out), context=context_dim)


@register("net", "conv", options=(HIDDEN,), help="convolutional nets for 28x28 images")
def _conv(role: str, n_in: Any, n_out: Any, context_dim: int, hidden: list[int]) -> nn.Module:
    shape = tuple(n_in) if role == "encoder" else tuple(n_out[1:])
    if len(shape) != 3 or shape[1:] != (28, 28):
        raise VaelabError(
            f"net 'conv' needs 28x28 images of shape (C, 28, 28), the data have shape {shape}; use --net mlp"
        )
    width = hidden[0] if hidden else 256
    if role == "encoder":
        return ConvEncoder(n_out, channels=shape[0], hidden=width, context=context_dim)
    return ConvDecoder(n_in, channels=n_out[0] * shape[0], hidden=width, context=context_dim)
