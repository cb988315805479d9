"""Plain networks (no distributions) that encoders and decoders wrap."""

from .conv import ConvDecoder, ConvEncoder
from .mlp import MLP

__all__ = ["MLP", "ConvEncoder", "ConvDecoder"]
