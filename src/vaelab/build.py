"""Build a VAE from plain, JSON-serialisable settings (what a run folder stores).

``build_vae((1, 28, 28), latent_dim=20, net="mlp", hidden=[400], likelihood="bernoulli")``
is the classic MNIST VAE: encoder 784-400-(20+20), decoder 20-400-784, N(0, I) prior.
Users who want their own networks compose :class:`~vaelab.model.VAE` directly from
:mod:`vaelab.distributions` and any ``nn.Module``; this function only covers the built-in
choices, so that :func:`vaelab.load` can rebuild a model from its saved settings.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

from torch import nn

from .distributions import BernoulliDecoder, GaussianDecoder, GaussianEncoder, StandardNormalPrior
from .errors import VaelabError
from .model import VAE
from .nets import MLP, ConvDecoder, ConvEncoder

__all__ = ["build_vae", "NETS", "LIKELIHOODS"]

NETS = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise VaelabError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def build_vae(
    x_shape: Sequence[int],
    *,
    latent_dim: int = 20,
    net: Literal["mlp", "conv"] = "mlp",
    hidden: Sequence[int] = (400,),
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
    gaussian_scale: float = 1.0,
    learn_scale: Literal["fixed", "global", "feature"] = "fixed",
    min_scale: float = 1e-4,
) -> VAE:
    """A VAE with a diagonal Gaussian posterior and a standard normal prior.

    Args:
        x_shape: shape of one example, e.g. ``(1, 28, 28)`` or ``(64,)``.
        latent_dim: D.
        net: ``"mlp"`` (any data; ``hidden`` sets the widths, mirrored in the decoder) or
            ``"conv"`` (28x28 images; ``hidden[0]`` sets its fully connected width).
        likelihood: ``"bernoulli"`` (data in [0, 1]) or ``"gaussian"`` (real data).
        gaussian_scale, learn_scale: see :class:`~vaelab.distributions.GaussianDecoder`.
        min_scale: floor of the posterior scale (see :class:`~vaelab.distributions.GaussianEncoder`).
    """
    _choice("net", net, NETS)
    _choice("likelihood", likelihood, LIKELIHOODS)
    x_shape = tuple(int(s) for s in x_shape)
    hidden = [int(h) for h in hidden]
    if latent_dim < 1:
        raise VaelabError(f"latent_dim must be a positive integer, got {latent_dim}")
    if any(h < 1 for h in hidden):
        raise VaelabError(f"hidden layer widths must be positive integers, got {hidden}")
    n_in = math.prod(x_shape)

    encoder_net: nn.Module
    decoder_net: nn.Module
    if net == "mlp":
        encoder_net = MLP(n_in, hidden, 2 * latent_dim)
        decoder_net = MLP(latent_dim, hidden[::-1], n_in)
    else:
        if len(x_shape) != 3 or x_shape[1:] != (28, 28):
            raise VaelabError(
                f"net 'conv' needs 28x28 images of shape (C, 28, 28), the data have shape "
                f"{x_shape}; use --net mlp"
            )
        width = hidden[0] if hidden else 256
        encoder_net = ConvEncoder(2 * latent_dim, channels=x_shape[0], hidden=width)
        decoder_net = ConvDecoder(latent_dim, channels=x_shape[0], hidden=width)

    decoder: nn.Module
    if likelihood == "bernoulli":
        decoder = BernoulliDecoder(decoder_net, x_shape)
    else:
        decoder = GaussianDecoder(decoder_net, x_shape, scale=gaussian_scale, learn_scale=learn_scale)
    return VAE(
        encoder=GaussianEncoder(encoder_net, latent_dim, min_scale=min_scale),
        decoder=decoder,
        prior=StandardNormalPrior(latent_dim),
    )
