"""Priors p(z): modules whose ``forward()`` returns a distribution over the latent space.

* :class:`StandardNormalPrior`: N(0, I), the seeds' prior.
* :class:`GaussianMixturePrior`: a learnable mixture of C diagonal Gaussians.
* :class:`VampPrior` (Tomczak & Welling 2018): the mixture of the encoder's posteriors at C
  learned pseudo-inputs, p(z) = (1/C) sum_c q(z|u_c).
* :class:`ConditionalGaussianPrior`: p(z|c) = N(m(c), diag(s(c)^2)), learned from the
  context (a conditional model's prior; it starts at N(0, I)).

Each is called as ``prior()`` or, in a conditional model, ``prior(c)`` with the context
features ``c`` ``[B, C]``. The first two ignore c; the VampPrior mixes q(z|u_j, c) under each
example's context. Without c they return batch shape ``[]``, with c ``[B]``; event shape
``[D]``; ``log_prob(z)`` takes any leading shape, e.g. ``[K, B, D] -> [K, B]``. No closed-form KL exists against the mixtures: the
ELBO takes the Monte Carlo KL there, with no change to the objective code.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch import Size
from torch.distributions import Categorical, Distribution, MixtureSameFamily, constraints

from ..errors import VaelabError
from ..registry import Option, Shapes, in_unit_interval, register
from .posteriors import diagonal_gaussian, run_net

__all__ = ["StandardNormalPrior", "GaussianMixturePrior", "VampPrior", "ConditionalGaussianPrior", "PRIOR_COMPONENTS"]

PRIOR_COMPONENTS = Option("prior_components", int, 10, "mog or vamp prior: number of components (Gaussians or pseudo-inputs)", low=1)


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) in ``latent_dim`` dimensions: batch [], event [D].

    The zeros and ones are buffers, so the prior follows the model to any device or dtype.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self, c: Tensor | None = None) -> Distribution:
        return diagonal_gaussian(self.loc, self.scale)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"


class GaussianMixturePrior(nn.Module):
    """p(z) = sum_c pi_c N(z; m_c, diag(s_c^2)) with learned weights, means and scales.

    ``pi = softmax(logits)`` (initially uniform), means initially N(0, I) draws, scales
    ``softplus(r) + min_scale`` (initially 1). A ``torch.distributions.MixtureSameFamily``:
    ``log p(z) = logsumexp_c [log pi_c + log N(z; m_c, diag(s_c^2))]``.

    Args:
        latent_dim: D.
        components: C.
        min_scale: floor of the component scales.

    Example:
        >>> p = GaussianMixturePrior(2, components=10)()
        >>> p.log_prob(torch.randn(5, 8, 2)).shape      # [5, 8]
    """

    def __init__(self, latent_dim: int, components: int = 10, min_scale: float = 1e-4) -> None:
        super().__init__()
        if latent_dim < 1 or components < 1:
            raise ValueError(f"latent_dim and components must be >= 1, got {latent_dim}, {components}")
        self.latent_dim = latent_dim
        self.components = components
        self.min_scale = min_scale
        self.logits = nn.Parameter(torch.zeros(components))
        self.loc = nn.Parameter(torch.randn(components, latent_dim))
        self.raw_scale = nn.Parameter(torch.full((components, latent_dim), math.log(math.expm1(1.0 - min_scale))))

    def forward(self, c: Tensor | None = None) -> Distribution:
        scale = nn.functional.softplus(self.raw_scale) + self.min_scale  # [C, D]
        return MixtureSameFamily(
            Categorical(logits=self.logits, validate_args=False),
            diagonal_gaussian(self.loc, scale),  # batch [C], event [D]
            validate_args=False,
        )

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, components={self.components}, min_scale={self.min_scale}"


class VampPrior(nn.Module):
    """The VampPrior: p(z) = (1/C) sum_c q(z|u_c) over C learned pseudo-inputs u_c.

    ``encoder(u)`` must return a distribution with batch ``[C]`` and event ``[D]`` whose
    ``log_prob`` takes any z (every posterior in vaelab does; the flows invert themselves).
    The prior is a ``MixtureSameFamily`` of those C posteriors with equal weights, so it
    follows the encoder as it trains; the gradient of log p(z) reaches the pseudo-inputs and
    the encoder.

    The encoder is *not* a submodule of the prior: the prior keeps a plain reference to it.
    The encoder's weights belong to the model that owns it (the VAE), so ``state_dict`` holds
    them once (safetensors refuses tensors stored twice) and the optimizer sees them once;
    the prior's own state is its pseudo-inputs. Moving the VAE moves both.

    Pseudo-inputs live in the data space, ``[C, *x_shape]``. With ``unit_interval=True``
    (Bernoulli-type likelihoods, data in [0, 1]) they are ``sigmoid(r)``, so they stay in
    [0, 1], initially uniform in [0.05, 0.95]; otherwise they are unconstrained, initially
    N(0, 1) (standardised real data). :meth:`set_pseudo_inputs` starts them from training
    examples instead.

    Args:
        encoder: the VAE's encoder, ``encoder(x)`` -> q(z|x).
        x_shape: the shape of one example.
        components: C.
        unit_interval: keep the pseudo-inputs in [0, 1].

    Example:
        >>> enc = GaussianEncoder(MLP(784, [400], 40), latent_dim=20)
        >>> prior = VampPrior(enc, (1, 28, 28), components=500)
        >>> vae = VAE(enc, BernoulliDecoder(MLP(20, [400], 784), (1, 28, 28)), prior)
    """

    def __init__(
        self, encoder: nn.Module, x_shape: Sequence[int], components: int = 10, unit_interval: bool = True
    ) -> None:
        super().__init__()
        if components < 1:
            raise ValueError(f"components must be >= 1, got {components}")
        object.__setattr__(self, "_encoder", encoder)  # a reference, not a submodule (see above)
        self.x_shape = tuple(int(s) for s in x_shape)
        self.components = components
        self.unit_interval = unit_interval
        shape = (components, *self.x_shape)
        if unit_interval:
            self.raw_pseudo_inputs = nn.Parameter(torch.logit(torch.empty(shape).uniform_(0.05, 0.95)))
        else:
            self.raw_pseudo_inputs = nn.Parameter(torch.randn(shape))

    @property
    def encoder(self) -> nn.Module:
        return self._encoder

    @property
    def pseudo_inputs(self) -> Tensor:
        """u_1..u_C, ``[C, *x_shape]``."""
        raw = self.raw_pseudo_inputs
        return torch.sigmoid(raw) if self.unit_interval else raw

    @torch.no_grad()
    def set_pseudo_inputs(self, x: Tensor, eps: float = 1e-3) -> None:
        """Start the pseudo-inputs from examples ``x`` ``[C, *x_shape]`` (clipped to [eps, 1 - eps]
        when they live in [0, 1], where sigmoid cannot reach 0 or 1)."""
        if tuple(x.shape) != tuple(self.raw_pseudo_inputs.shape):
            raise ValueError(f"need {tuple(self.raw_pseudo_inputs.shape)} examples, got {tuple(x.shape)}")
        x = x.to(self.raw_pseudo_inputs)
        self.raw_pseudo_inputs.copy_(torch.logit(x.clamp(eps, 1 - eps)) if self.unit_interval else x)

    def forward(self, c: Tensor | None = None) -> Distribution:
        u = self.pseudo_inputs  # [C, *x_shape]
        if c is None:
            q = self._encoder(u)  # batch [C], event [D]
            logits = self.raw_pseudo_inputs.new_zeros(self.components)
            return MixtureSameFamily(Categorical(logits=logits, validate_args=False), q, validate_args=False)
        b, n = c.shape[0], self.components
        u_rep = u.unsqueeze(0).expand(b, *u.shape).reshape(b * n, *self.x_shape)  # [B C, *x_shape], b-major
        q = run_net(self._encoder, u_rep, c.repeat_interleave(n, 0))  # q(z|u_j, c_b), batch [B C]
        return _EqualMixture(q, b, n)

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, components={self.components}, unit_interval={self.unit_interval}"


class _EqualMixture(Distribution):
    """p(z_b) = (1/C) sum_j q_{b j}(z_b): per example b, the equal-weight mixture of C
    components held as one distribution ``q`` of batch ``[B C]`` (b-major). Batch ``[B]``,
    event ``[D]``; any distribution over vectors works as ``q`` (flows too)."""

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.real_vector

    def __init__(self, q: Distribution, batch: int, components: int) -> None:
        self.q, self.b, self.n = q, batch, components
        super().__init__(Size([batch]), q.event_shape, validate_args=False)

    def log_prob(self, z: Tensor) -> Tensor:  # [*S, B, D] -> [*S, B]
        lead = z.shape[:-2]
        z_rep = z.unsqueeze(-2).expand(*lead, self.b, self.n, z.shape[-1]).reshape(*lead, self.b * self.n, z.shape[-1])
        lp = self.q.log_prob(z_rep).reshape(*lead, self.b, self.n)
        return torch.logsumexp(lp, -1) - math.log(self.n)

    def sample(self, sample_shape: Size = Size()) -> Tensor:
        with torch.no_grad():
            z = self.q.sample(sample_shape)  # [*S, B C, D]
            z = z.reshape(*z.shape[:-2], self.b, self.n, z.shape[-1])
            pick = torch.randint(self.n, z.shape[:-2], device=z.device)  # [*S, B]
            index = pick[..., None, None].expand(*pick.shape, 1, z.shape[-1])
            return z.gather(-2, index).squeeze(-2)  # [*S, B, D]


class ConditionalGaussianPrior(nn.Module):
    """p(z|c) = N(m(c), diag(s(c)^2)) with (m, log s) a linear map of the context features.

    The map starts at zero, so p(z|c) starts as N(0, I) for every c and moves only as far
    as the data ask. Needs a context (a conditional model). Against a diagonal Gaussian
    posterior the KL is closed-form (both are ``Independent(Normal)``, batch ``[B]``).

    Args:
        latent_dim: D.
        context_dim: the size of the context features c.
    """

    def __init__(self, latent_dim: int, context_dim: int) -> None:
        super().__init__()
        if context_dim < 1:
            raise ValueError("the conditional prior p(z|c) needs a context; train with a conditioning variable")
        self.latent_dim = latent_dim
        self.map = nn.Linear(context_dim, 2 * latent_dim)
        nn.init.zeros_(self.map.weight)
        nn.init.zeros_(self.map.bias)

    def forward(self, c: Tensor | None = None) -> Distribution:
        if c is None:
            raise ValueError("the conditional prior p(z|c) needs the context c")
        loc, log_scale = self.map(c).chunk(2, -1)  # [B, D] each
        return diagonal_gaussian(loc, log_scale.exp())

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"


@register("prior", "normal", help="N(0, I)", cls=StandardNormalPrior)
def _normal(shapes: Shapes) -> nn.Module:
    return StandardNormalPrior(shapes.latent_dim)


@register("prior", "mog", options=(PRIOR_COMPONENTS,), help="learned mixture of Gaussians", cls=GaussianMixturePrior)
def _mog(shapes: Shapes, prior_components: int) -> nn.Module:
    return GaussianMixturePrior(shapes.latent_dim, prior_components)


@register("prior", "vamp", options=(PRIOR_COMPONENTS,), help="VampPrior (learned pseudo-inputs)", cls=VampPrior)
def _vamp(shapes: Shapes, prior_components: int) -> nn.Module:
    assert shapes.encoder is not None
    if shapes.likelihood is not None and getattr(shapes.likelihood.cls, "tabular", False):
        raise VaelabError("prior 'vamp' learns pseudo-inputs in the space of x, which the level ids and counts of a "
                          "table (--likelihood mixed) are not; use --prior normal or mog")
    if shapes.likelihood is not None and getattr(shapes.likelihood.cls, "counts", False):
        raise VaelabError(f"prior 'vamp' learns real-valued pseudo-inputs in the space of x, which counts "
                          f"(--likelihood {shapes.likelihood.name}) are not; use --prior normal or mog")
    unit = in_unit_interval(shapes.likelihood.support if shapes.likelihood is not None else None)
    return VampPrior(shapes.encoder, shapes.x_shape, prior_components, unit_interval=unit)


@register("prior", "conditional", help="p(z|c): a Gaussian whose mean and scale depend on the context",
          cls=ConditionalGaussianPrior, conditional_only=True)
def _conditional(shapes: Shapes) -> nn.Module:
    return ConditionalGaussianPrior(shapes.latent_dim, shapes.context_dim)
