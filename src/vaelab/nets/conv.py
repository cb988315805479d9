"""Convolutional encoder and decoder for images ``(C, H, W)`` of any size.

Encoder (``channels = (c_1, ..., c_L)``): L stride-2 convolutions (4x4, padding 1) take the
image down to a small spatial size, each followed by an ELU (Clevert et al. 2016; the
activation of the IAF-VAE's networks, Kingma et al. 2016) and, when a network asks for them,
extra layers at that width (the residual blocks of :mod:`vaelab.nets.resnet`)::

    [B, C, H, W] -conv-> [B, c_1, H_1, W_1] -conv-> ... -> [B, c_L, H_L, W_L]
                 -> flatten (+ context) -> hidden -> out

with ``H_{i+1} = floor(H_i / 2)`` (the size of a 4x4/2 convolution with padding 1). The
decoder mirrors it: z (+ context) -> hidden -> ``[c_L, H_L, W_L]``, then 4x4 stride-2
transposed convolutions back up, each with the ``output_padding`` (0 or 1) that makes it land
exactly on ``H_{i-1} x W_{i-1}``, so any size whose smallest stage is at least one pixel is
reached exactly, odd sizes included; the last one gives ``per_value * C`` output channels,
read by the likelihood as ``[per_value, C, H, W]``. A size too small for L halvings is a
one-line error naming the size and the smallest that works (:func:`check_image_shape`).

No batch normalisation: each example's output depends on that example alone (log p(x) of
one image must not depend on the others in its batch). For 28x28 images the default
``channels = (32, 64)`` gives 28 -> 14 -> 7, the classic MNIST conv VAE.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..errors import VaelabError

__all__ = ["ConvEncoder", "ConvDecoder", "stage_sizes", "check_image_shape"]

Stage = Callable[[int], Sequence[nn.Module]]  # extra layers at a stage's width (residual blocks)


def _needs(context: int, c: Tensor | None, what: str) -> None:
    if context == 0 and c is not None:
        raise ValueError(f"this {what} was built without a context (context=0) but was given one")
    if context > 0 and c is None:
        raise ValueError(f"this {what} needs a context of {context} numbers: call it with c")


def stage_sizes(size: int, stages: int) -> list[int]:
    """``[s_0, s_1, ..., s_L]``: a side of ``size`` pixels after each 4x4/2 convolution
    (padding 1), ``s_{i+1} = floor(s_i / 2)``; a 0 means the side vanished.

    >>> stage_sizes(28, 2), stage_sizes(7, 2), stage_sizes(3, 2)
    ([28, 14, 7], [7, 3, 1], [3, 1, 0])
    """
    sizes = [int(size)]
    for _ in range(stages):
        sizes.append(sizes[-1] // 2)
    return sizes


def check_image_shape(shape: Sequence[int], net: str, channels: Sequence[int]) -> tuple[int, int, int]:
    """``shape`` as ``(C, H, W)``, or a one-line VaelabError: not an image, or too small for
    ``len(channels)`` halvings (the message names the smallest size that works)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise VaelabError(f"net '{net}' needs images of shape (C, H, W), the data have shape {shape}; use --net mlp")
    c, h, w = shape
    stages = len(channels)
    least = 2**stages
    if min(h, w) < least:
        listed = ",".join(map(str, channels))
        raise VaelabError(
            f"net '{net}' with {stages} stride-2 stages (--conv-channels {listed}) needs images of at least "
            f"{least}x{least} pixels, the data are {h}x{w}; the nearest size that works is "
            f"{max(h, least)}x{max(w, least)} (--resize for image folders), or use fewer --conv-channels"
        )
    return c, h, w


class _Head(nn.Module):
    """flatten (+ context) -> Linear -> ELU -> Linear: ``[B, *feature] (+ [B, P]) -> [B, out]``."""

    def __init__(self, in_features: int, hidden: int, out_features: int, context: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_features + context, hidden)
        self.out = nn.Linear(hidden, out_features)

    def forward(self, h: Tensor, c: Tensor | None) -> Tensor:
        h = h.flatten(1)  # [B, c_L * H_L * W_L]
        if c is not None:
            h = torch.cat([h, c.to(h.dtype)], -1)
        return self.out(nn.functional.elu(self.hidden(h)))


class ConvEncoder(nn.Module):
    """``[B, C, H, W]`` (and a context ``[B, context]``) ``-> [B, out_features]``.

    Args:
        in_shape: ``(C, H, W)`` of one input.
        out_features: numbers out (e.g. 2 D for a Gaussian posterior).
        channels: the widths ``c_1..c_L`` of the L stride-2 stages.
        hidden: width of the fully connected layer after the convolutions.
        context: numbers of context concatenated to the flattened features (0: none).
        stage: extra layers after each stage's convolution, given its width (None: none).
    """

    def __init__(self, in_shape: Sequence[int], out_features: int, channels: Sequence[int] = (32, 64),
                 hidden: int = 400, context: int = 0, stage: Stage | None = None, name: str = "conv") -> None:
        super().__init__()
        c, h, w = check_image_shape(in_shape, name, channels)
        layers: list[nn.Module] = []
        width = c
        for ch in channels:
            layers += [nn.Conv2d(width, ch, 4, stride=2, padding=1), nn.ELU()]  # halves H and W
            layers += list(stage(ch)) if stage is not None else []
            width = ch
        self.body = nn.Sequential(*layers)
        self.in_shape = (c, h, w)
        self.feature_shape = (width, stage_sizes(h, len(channels))[-1], stage_sizes(w, len(channels))[-1])
        self.head = _Head(width * self.feature_shape[1] * self.feature_shape[2], hidden, out_features, context)
        self.context = context

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        _needs(self.context, c, type(self).__name__)
        return self.head(self.body(x), c)  # [B, c_L, H_L, W_L] -> [B, out]


class ConvDecoder(nn.Module):
    """``[N, latent_dim]`` (and a context ``[N, context]``) ``-> [N, out_channels, H, W]``.

    Args:
        latent_dim: D.
        out_shape: ``(out_channels, H, W)``: ``per_value * C`` channels at the image's size.
        channels: the encoder's stage widths ``c_1..c_L`` (traversed in reverse).
        hidden: width of the fully connected layer after z.
        context: numbers of context concatenated to z (0: none).
        stage: extra layers before each stage's transposed convolution, given its width.
    """

    def __init__(self, latent_dim: int, out_shape: Sequence[int], channels: Sequence[int] = (32, 64),
                 hidden: int = 400, context: int = 0, stage: Stage | None = None, name: str = "conv") -> None:
        super().__init__()
        out_channels, h, w = check_image_shape(out_shape, name, channels)
        hs, ws = stage_sizes(h, len(channels)), stage_sizes(w, len(channels))
        self.start = (channels[-1], hs[-1], ws[-1])  # [c_L, H_L, W_L]
        self.fc = nn.Sequential(
            nn.Linear(latent_dim + context, hidden), nn.ELU(),
            nn.Linear(hidden, channels[-1] * hs[-1] * ws[-1]), nn.ELU(),
        )
        layers: list[nn.Module] = []
        widths = list(channels)
        for i in range(len(channels), 0, -1):  # stage i: c_i at H_i -> c_{i-1} (or the output) at H_{i-1}
            layers += list(stage(widths[i - 1])) if stage is not None else []
            to = widths[i - 2] if i > 1 else out_channels
            pad = (hs[i - 1] - 2 * hs[i], ws[i - 1] - 2 * ws[i])  # 0 or 1: lands exactly on H_{i-1} x W_{i-1}
            layers.append(nn.ConvTranspose2d(widths[i - 1], to, 4, stride=2, padding=1, output_padding=pad))
            if i > 1:
                layers.append(nn.ELU())
        self.body = nn.Sequential(*layers)
        self.out_shape = (out_channels, h, w)
        self.context = context

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        _needs(self.context, c, type(self).__name__)
        h = self.fc(z if c is None else torch.cat([z, c.to(z.dtype)], -1))  # [N, c_L * H_L * W_L]
        return self.body(h.reshape(len(h), *self.start))  # [N, out_channels, H, W]
