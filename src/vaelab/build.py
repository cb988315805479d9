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

from .distributions import (
    BernoulliDecoder,
    ContinuousBernoulliDecoder,
    FullCovarianceEncoder,
    GaussianDecoder,
    GaussianEncoder,
    GaussianMixturePrior,
    IAFEncoder,
    LaplaceDecoder,
    LogisticMixtureDecoder,
    PlanarFlowEncoder,
    StandardNormalPrior,
    VampPrior,
)
from .errors import VaelabError
from .model import VAE
from .nets import MLP, ConvDecoder, ConvEncoder

__all__ = ["build_vae", "NETS", "LIKELIHOODS", "POSTERIORS", "PRIORS"]

NETS = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian", "laplace", "logistic-mixture")
POSTERIORS = ("gaussian", "full-gaussian", "planar", "iaf")
PRIORS = ("normal", "mog", "vamp")
UNIT_INTERVAL_LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "logistic-mixture")


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise VaelabError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def build_vae(
    x_shape: Sequence[int],
    *,
    latent_dim: int = 20,
    net: Literal["mlp", "conv"] = "mlp",
    hidden: Sequence[int] = (400,),
    likelihood: Literal["bernoulli", "continuous-bernoulli", "gaussian", "laplace", "logistic-mixture"] = "bernoulli",
    gaussian_scale: float = 1.0,
    learn_scale: Literal["fixed", "global", "feature"] = "fixed",
    min_scale: float = 1e-4,
    posterior: Literal["gaussian", "full-gaussian", "planar", "iaf"] = "gaussian",
    flow_steps: int = 4,
    prior: Literal["normal", "mog", "vamp"] = "normal",
    prior_components: int = 10,
    mixtures: int = 5,
) -> VAE:
    """A VAE from named parts; the defaults are a diagonal Gaussian posterior, a standard
    normal prior and a Bernoulli likelihood.

    Args:
        x_shape: shape of one example, e.g. ``(1, 28, 28)`` or ``(64,)``.
        latent_dim: D.
        net: ``"mlp"`` (any data; ``hidden`` sets the widths, mirrored in the decoder) or
            ``"conv"`` (28x28 images; ``hidden[0]`` sets its fully connected width).
        likelihood: ``"bernoulli"`` (data in [0, 1]), ``"continuous-bernoulli"`` (grey values
            in [0, 1]), ``"gaussian"`` or ``"laplace"`` (real data), ``"logistic-mixture"``
            (8-bit data k/255: a discretized mixture of ``mixtures`` logistics per value).
        gaussian_scale, learn_scale: the scale of the Gaussian or Laplace likelihood (see
            :class:`~vaelab.distributions.LocationScaleDecoder`).
        min_scale: floor of the posterior scale (see :class:`~vaelab.distributions.GaussianEncoder`).
        posterior: ``"gaussian"`` (diagonal), ``"full-gaussian"`` (Cholesky factor),
            ``"planar"`` (``flow_steps`` amortized planar steps) or ``"iaf"`` (``flow_steps``
            inverse autoregressive steps; context size max(16, D), MADE widths max(64, 4 D)).
        flow_steps: steps of the planar or IAF posterior.
        prior: ``"normal"`` (N(0, I)), ``"mog"`` (a learned mixture of ``prior_components``
            Gaussians) or ``"vamp"`` (VampPrior with ``prior_components`` pseudo-inputs, kept in
            [0, 1] for the Bernoulli-type likelihoods).
        mixtures: logistics per value of the ``"logistic-mixture"`` likelihood.
    """
    _choice("net", net, NETS)
    _choice("likelihood", likelihood, LIKELIHOODS)
    _choice("posterior", posterior, POSTERIORS)
    _choice("prior", prior, PRIORS)
    for name, value in (("flow_steps", flow_steps), ("prior_components", prior_components), ("mixtures", mixtures)):
        if int(value) < 1:
            raise VaelabError(f"{name} must be a positive integer, got {value}")
    x_shape = tuple(int(s) for s in x_shape)
    hidden = [int(h) for h in hidden]
    if latent_dim < 1:
        raise VaelabError(f"latent_dim must be a positive integer, got {latent_dim}")
    if any(h < 1 for h in hidden):
        raise VaelabError(f"hidden layer widths must be positive integers, got {hidden}")
    n_in = math.prod(x_shape)
    context_dim, flow_hidden = max(16, latent_dim), max(64, 4 * latent_dim)  # IAF sizes
    encoder_outputs = {
        "gaussian": GaussianEncoder.outputs(latent_dim),
        "full-gaussian": FullCovarianceEncoder.outputs(latent_dim),
        "planar": PlanarFlowEncoder.outputs(latent_dim, flow_steps),
        "iaf": IAFEncoder.outputs(latent_dim, context_dim),
    }[posterior]
    per_value = 3 * mixtures if likelihood == "logistic-mixture" else 1  # decoder outputs per value of x

    encoder_net: nn.Module
    decoder_net: nn.Module
    if net == "mlp":
        encoder_net = MLP(n_in, hidden, encoder_outputs)
        decoder_net = MLP(latent_dim, hidden[::-1], per_value * n_in)
    else:
        if len(x_shape) != 3 or x_shape[1:] != (28, 28):
            raise VaelabError(
                f"net 'conv' needs 28x28 images of shape (C, 28, 28), the data have shape "
                f"{x_shape}; use --net mlp"
            )
        width = hidden[0] if hidden else 256
        encoder_net = ConvEncoder(encoder_outputs, channels=x_shape[0], hidden=width)
        decoder_net = ConvDecoder(latent_dim, channels=per_value * x_shape[0], hidden=width)

    decoder: nn.Module
    if likelihood == "bernoulli":
        decoder = BernoulliDecoder(decoder_net, x_shape)
    elif likelihood == "continuous-bernoulli":
        decoder = ContinuousBernoulliDecoder(decoder_net, x_shape)
    elif likelihood == "gaussian":
        decoder = GaussianDecoder(decoder_net, x_shape, scale=gaussian_scale, learn_scale=learn_scale)
    elif likelihood == "laplace":
        decoder = LaplaceDecoder(decoder_net, x_shape, scale=gaussian_scale, learn_scale=learn_scale)
    else:
        decoder = LogisticMixtureDecoder(decoder_net, x_shape, mixtures=mixtures)

    encoder: nn.Module
    if posterior == "gaussian":
        encoder = GaussianEncoder(encoder_net, latent_dim, min_scale=min_scale)
    elif posterior == "full-gaussian":
        encoder = FullCovarianceEncoder(encoder_net, latent_dim, min_scale=min_scale)
    elif posterior == "planar":
        encoder = PlanarFlowEncoder(encoder_net, latent_dim, flow_steps, min_scale=min_scale)
    else:
        encoder = IAFEncoder(encoder_net, latent_dim, context_dim, flow_steps, hidden=flow_hidden, min_scale=min_scale)

    prior_module: nn.Module
    if prior == "normal":
        prior_module = StandardNormalPrior(latent_dim)
    elif prior == "mog":
        prior_module = GaussianMixturePrior(latent_dim, prior_components)
    else:
        prior_module = VampPrior(encoder, x_shape, prior_components, unit_interval=likelihood in UNIT_INTERVAL_LIKELIHOODS)
    return VAE(encoder=encoder, decoder=decoder, prior=prior_module)
