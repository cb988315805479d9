"""Build a model from its spec, through the registry of parts.

``build_model(spec)`` is what :func:`vaelab.load` and ``vaelab train`` call;
``build_vae((1, 28, 28), latent_dim=20, net="mlp", hidden=[400], likelihood="bernoulli")`` is
the same from keyword arguments: the classic MNIST VAE, encoder 784-400-(20+20), decoder
20-400-784, N(0, I) prior. Users who want their own networks compose
:class:`~vaelab.model.VAE` directly from :mod:`vaelab.distributions` and any ``nn.Module``;
a new part registered in :mod:`vaelab.registry` is built here with no change to this file.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from . import registry
from .context import ContextEncoder, Variable
from .model import VAE
from .nets import InputTransform
from .spec import ModelSpec

__all__ = ["build_vae", "build_model", "build_parts", "net_builders"]


def net_builders(spec: ModelSpec, context_dim: int, decoder_latent: int | None = None
                 ) -> tuple[Callable[[int], nn.Module], Callable[[int], nn.Module]]:
    """``(encoder_net, decoder_net)``: the spec's ``net`` from x (and ``context_dim`` context
    numbers) to ``n_out`` numbers, and from ``decoder_latent`` latents (default: the spec's
    ``latent_dim``) to ``per_value * prod(x_shape)`` numbers (see :class:`vaelab.registry.Shapes`).

    When the likelihood's class has ``encoder_input(x_shape, **options)`` returning
    ``(module, feature_shape)``, every encoder-side network is built on ``feature_shape`` and
    reads ``module(x)`` (:class:`~vaelab.nets.InputTransform`): e.g. log1p of counts."""
    net = registry.get("net", spec.net.name)
    lik = registry.get("likelihood", spec.likelihood.name)
    x_shape = spec.x_shape
    latent = spec.latent_dim if decoder_latent is None else decoder_latent
    # a likelihood may ask the encoder to read a transform of x (counts: log1p; tables: one-hot + mask)
    make_input = getattr(lik.cls, "encoder_input", None)

    def encoder_net(n_out: int) -> nn.Module:
        if make_input is None:
            return net.build("encoder", x_shape, n_out, context_dim, **spec.net.options)
        module, feature_shape = make_input(x_shape, **spec.likelihood.options)  # a fresh module per network
        return InputTransform(module, net.build("encoder", tuple(feature_shape), n_out, context_dim, **spec.net.options))

    def decoder_net(per_value: int) -> nn.Module:
        return net.build("decoder", latent, (per_value, *x_shape), context_dim, **spec.net.options)

    return encoder_net, decoder_net


def build_parts(spec: ModelSpec, context_dim: int | None = None) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The encoder, decoder and prior a spec names (networks read ``context_dim`` context numbers;
    default: the spec's own context; the networks from :func:`net_builders`)."""
    cdim = spec.context_dim if context_dim is None else context_dim
    lik = registry.get("likelihood", spec.likelihood.name)
    x_shape = spec.x_shape
    encoder_net, decoder_net = net_builders(spec, cdim)
    shapes = registry.Shapes(x_shape, spec.latent_dim, cdim, encoder_net, decoder_net, likelihood=lik)
    # the encoder's network first, then the decoder's: the order of random initialisation of 0.1.0
    encoder = registry.get("posterior", spec.posterior.name).build(shapes, **spec.posterior.options)
    decoder = lik.build(shapes, **spec.likelihood.options)
    shapes = registry.Shapes(x_shape, spec.latent_dim, cdim, encoder_net, decoder_net, likelihood=lik, encoder=encoder)
    prior = registry.get("prior", spec.prior.name).build(shapes, **spec.prior.options)
    return encoder, decoder, prior


def build_model(spec: ModelSpec) -> nn.Module:
    """The model a spec describes, freshly initialised: a :class:`VAE` (family ``"vae"``; the
    ladder VAE of family ``"ladder"`` is one too, :mod:`vaelab.ladder`) or a
    :class:`~vaelab.m2.SemiSupervisedVAE` (family ``"m2"``)."""
    if spec.family == "m2":
        from .m2 import build_m2

        return build_m2(spec)
    if spec.family == "ladder":
        from .ladder import build_ladder

        return build_ladder(spec)
    encoder, decoder, prior = build_parts(spec)
    context = ContextEncoder(spec.context) if spec.context else None
    return VAE(encoder=encoder, decoder=decoder, prior=prior, context=context)


def build_vae(
    x_shape: Sequence[int],
    *,
    latent_dim: int = 20,
    net: str = "mlp",
    posterior: str = "gaussian",
    prior: str = "normal",
    likelihood: str = "bernoulli",
    context: Sequence[Variable] = (),
    **options: Any,
) -> VAE:
    """A VAE from named parts; the defaults are a diagonal Gaussian posterior, a standard
    normal prior and a Bernoulli likelihood.

    Args:
        x_shape: shape of one example, e.g. ``(1, 28, 28)`` or ``(64,)``.
        latent_dim: D.
        net, posterior, prior, likelihood: registered part names (:func:`vaelab.registry.names`).
        context: conditioning variables (a conditional VAE); empty for the unconditional one.
        **options: the parts' options by name (``hidden=[400]``, ``flow_steps=4``,
            ``prior_components=10``, ``gaussian_scale=1.0``, ``learn_scale="fixed"``,
            ``mixtures=5``, ``min_scale=1e-4``; ``vaelab train --help`` lists them all).
    """
    spec = ModelSpec.create(x_shape, latent_dim=latent_dim, net=net, posterior=posterior, prior=prior,
                            likelihood=likelihood, context=context, options=options)
    model = build_model(spec)
    assert isinstance(model, VAE)
    return model
