"""The ladder VAE (Sønderby et al. 2016): a hierarchy of L >= 2 Gaussian latent layers.

Generative model, top down, with z = (z_1, ..., z_L) and z_1 the layer nearest the data:

    p(z) = N(z_L; 0, I) prod_{i<L} N(z_i; mu_i(z_{i+1}), diag(sigma_i(z_{i+1})^2))
    p(x|z) = p(x|z_1)                                       (any registered likelihood)

Inference: a deterministic bottom-up pass d_1 = f_1(x), d_i = f_i(d_{i-1}) gives for every
layer a Gaussian message N(mu^_i, sigma^_i^2) from the data; the top-down pass samples
z_L ~ N(mu^_L, sigma^_L^2) and then, for i = L-1 .. 1, combines the message with the
generative p(z_i|z_{i+1}) by the paper's precision-weighted merge

    sigma_q^-2 = sigma^_i^-2 + sigma_i(z_{i+1})^-2
    mu_q       = (mu^_i sigma^_i^-2 + mu_i(z_{i+1}) sigma_i(z_{i+1})^-2) sigma_q^2
    q(z_i | z_{i+1}, x) = N(mu_q, diag(sigma_q^2)),

so the posterior shares the generative top-down networks, as in the paper.

The ingredients (``spec.ladder``, :data:`vaelab.spec.LADDER_OPTIONS`, ``--ladder-<name>`` on the
CLI; the defaults are the ladder above):

- ``inference``: ``precision`` (the merge above); ``residual`` (NVAE, Vahdat & Kautz 2020: q is
  written relative to the prior, q(z_i | z_{i+1}, x) = N(mu_i(z_{i+1}) + dmu_i, sigma_i(z_{i+1}) dsigma_i)
  with dmu_i = mu^_i + U_i z_{i+1} and dsigma_i = sigma^_i, U_i a linear map from the layer above,
  zero at the start; the top layer's prior is N(0, I), so there q is the message as before); or
  ``independent`` (q(z_i | x) = N(mu^_i, sigma^_i^2), the bottom-up message alone, no merge).
  On a linear-Gaussian hierarchy with a constant sigma_i the exact posterior has
  mu_q - mu_i(z_{i+1}) linear in x and z_{i+1} and sigma_q / sigma_i constant, so the residual
  family holds it as the precision merge does; the independent one does not (its z_1 ignores z_2).
- ``activation``: ``relu``, ``tanh`` or ``elu`` in every network (the spec's encoder and decoder
  networks too: each of their ``nn.ReLU`` modules is swapped).
- ``norm``: ``layer`` puts a layer norm before every activation of the bottom-up and top-down
  paths' own layers (after the spec's encoder network, on the bottom-up layers above it and in
  the top-down MLPs). Batch norm is left out: it would make log p(x) of an example depend on
  the batch it is scored in.
- ``skip``: the likelihood reads the whole z (every layer) instead of z_1 alone, so an upper
  layer reaches the data without passing through the layers below.
- ``init``: ``prior`` zeroes the last layer of every message head and top-down network (biases
  giving mean 0 and scale 1): p(z_i | z_{i+1}) = N(0, I) and every message N(0, I) at the
  start, so with residual inference q(z|x) = p(z) and the KL is 0 before the first step.

How it fits the rest of vaelab: the posterior and the prior are distributions over the
concatenated z ``[.., D_1 + ... + D_L]`` (bottom layer first). :class:`LadderPosterior` samples
with its log-density in one pass (``rsample_and_log_prob``, like a flow) and
:class:`LadderPriorDistribution` scores and samples the joint prior; the likelihood reads the
first ``D_1`` numbers (its network is wrapped in :class:`~vaelab.nets.InputTransform` with
:class:`FirstUnits`). So :class:`~vaelab.model.VAE` composes them unchanged, and every
estimator built on the log weights ``log p(x, z_k) - log q(z_k|x)`` (the ELBO with a
Monte-Carlo KL, IWAE, importance-sampled log p(x) with SE and ESS, over the joint posterior
of all layers) works as for one layer.

Per-layer diagnostics: :meth:`LadderPosterior.layer_kl` gives, per layer and unit, the KL of
q(z_i|z_{i+1}, x) from p(z_i|z_{i+1}) at the posterior's own upper-layer sample (closed form for
each Gaussian pair); by the chain rule of the KL, its expectation under q summed over layers
and units is KL(q(z|x) || p(z)). A lower-layer unit whose marginal posterior mean varies over x
only because the layer above varies carries no information of its own: its conditional KL
is ~0 although its activity is not, which is why active units per layer are counted by KL too.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Sequence

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution, constraints

from . import registry
from .build import net_builders
from .context import ContextEncoder
from .errors import VaelabError
from .model import VAE
from .nets import MLP, InputTransform
from .spec import LADDER_OPTIONS, ModelSpec

__all__ = [
    "FirstUnits",
    "TopDown",
    "LadderPrior",
    "LadderPriorDistribution",
    "LadderEncoder",
    "LadderPosterior",
    "build_ladder",
    "layer_slices",
    "layer_of",
    "unit_name",
    "hierarchical_samples",
    "colour",
    "whiten",
    "noise_view",
    "INFERENCE",
    "ACTIVATIONS",
]

# the inference parameterisations and activations the spec's ladder options name (spec.LADDER_OPTIONS)
INFERENCE: tuple[str, ...] = next(o.choices or () for o in LADDER_OPTIONS if o.name == "inference")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def layer_slices(dims: Sequence[int]) -> list[slice]:
    """Where each layer's units sit in the concatenated z (bottom layer first)."""
    out, start = [], 0
    for d in dims:
        out.append(slice(start, start + int(d)))
        start += int(d)
    return out


def _split(z: Tensor, dims: Sequence[int]) -> list[Tensor]:
    return list(z.split(list(dims), dim=-1))


def _normal_log_prob(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """sum_d log N(z_d; loc_d, scale_d^2) over the last dimension."""
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - _HALF_LOG_2PI).sum(-1)


def _normal_kl(loc_q: Tensor, scale_q: Tensor, loc_p: Tensor, scale_p: Tensor) -> Tensor:
    """KL(N(loc_q, scale_q^2) || N(loc_p, scale_p^2)) per unit (no sum)."""
    ratio = (scale_q / scale_p) ** 2
    return 0.5 * (ratio + ((loc_q - loc_p) / scale_p) ** 2 - 1 - ratio.log())


def _run(net: nn.Module, x: Tensor, h: Tensor | None) -> Tensor:
    """``net`` on inputs with any leading shape ``[*S, B, n]``; the context h ``[B, C]`` is
    broadcast over the leading sample dimensions."""
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    if h is None:
        out = net(flat)
    else:
        out = net(flat, h.expand(*lead, h.shape[-1]).reshape(-1, h.shape[-1]))
    return out.reshape(*lead, out.shape[-1])


class FirstUnits(nn.Module):
    """z ``[N, D_1 + ...]`` -> z_1 ``[N, D_1]``: what the likelihood of a ladder VAE reads."""

    def __init__(self, units: int) -> None:
        super().__init__()
        self.units = int(units)

    def forward(self, z: Tensor) -> Tensor:
        return z[..., : self.units]

    def extra_repr(self) -> str:
        return f"units={self.units}"


class TopDown(nn.Module):
    """p(z_i | z_{i+1}, c) = N(mu(z_{i+1}), diag(sigma(z_{i+1})^2)), sigma = softplus + min_scale.

    ``net`` maps z_{i+1} (and the context features) to ``2 D_i`` numbers: means, raw scales.
    """

    def __init__(self, net: nn.Module, latent_dim: int, min_scale: float = 1e-4) -> None:
        super().__init__()
        self.net = net
        self.latent_dim = int(latent_dim)
        self.min_scale = float(min_scale)

    def forward(self, z_above: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out = _run(self.net, z_above, h)  # [*S, B, 2 D_i]
        loc, raw = out.chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw) + self.min_scale


class LadderPriorDistribution(Distribution):
    """The joint prior p(z_1, ..., z_L) over the concatenated z (event ``[sum D_i]``).

    Batch shape ``[]`` for an unconditional model, ``[B]`` with a context of B rows.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, prior: "LadderPrior", h: Tensor | None) -> None:
        self.prior = prior
        self.h = h
        batch = Size(()) if h is None else Size(h.shape[:1])
        super().__init__(batch, Size((sum(prior.dims),)), validate_args=False)

    def log_prob(self, z: Tensor) -> Tensor:  # [*S, (B,) D] -> [*S, (B)]
        parts = _split(z, self.prior.dims)
        total = _normal_log_prob(parts[-1], torch.zeros_like(parts[-1]), torch.ones_like(parts[-1]))
        for i in reversed(range(len(parts) - 1)):
            loc, scale = self.prior.top_down[i](parts[i + 1], self.h)
            total = total + _normal_log_prob(parts[i], loc, scale)
        return total

    def rsample(self, sample_shape: Size = Size()) -> Tensor:
        """Ancestral sampling: z_L ~ N(0, I), then z_i ~ p(z_i | z_{i+1})."""
        dims = self.prior.dims
        shape = Size(sample_shape) + self.batch_shape
        ref = self.prior.reference()
        zs: list[Tensor] = [torch.empty(0)] * len(dims)
        zs[-1] = torch.randn(*shape, dims[-1], device=ref.device, dtype=ref.dtype)
        for i in reversed(range(len(dims) - 1)):
            loc, scale = self.prior.top_down[i](zs[i + 1], self.h)
            zs[i] = loc + scale * torch.randn_like(loc)
        return torch.cat(zs, -1)

    def sample(self, sample_shape: Size = Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    @property
    def mean(self) -> Tensor:
        """The mean path (z_L = 0, then each layer's conditional mean): not the exact mean of
        the joint for nonlinear top-down networks, but what "the centre of the prior" shows."""
        dims = self.prior.dims
        ref = self.prior.reference()
        zs: list[Tensor] = [torch.empty(0)] * len(dims)
        zs[-1] = torch.zeros(*self.batch_shape, dims[-1], device=ref.device, dtype=ref.dtype)
        for i in reversed(range(len(dims) - 1)):
            zs[i] = self.prior.top_down[i](zs[i + 1], self.h)[0]
        return torch.cat(zs, -1)


class LadderPrior(nn.Module):
    """The generative top-down path: ``prior(h)`` returns :class:`LadderPriorDistribution`.

    Args:
        dims: latent sizes bottom to top, ``(D_1, ..., D_L)``, L >= 2.
        top_down: L - 1 :class:`TopDown` modules; ``top_down[i]`` is p(z_{i+1} | z_{i+2}) in
            1-based layer numbers, i.e. it reads layer i + 1 (0-based) and gives layer i.
    """

    def __init__(self, dims: Sequence[int], top_down: Sequence[TopDown]) -> None:
        super().__init__()
        self.dims = tuple(int(d) for d in dims)
        if len(self.dims) < 2 or any(d < 1 for d in self.dims):
            raise VaelabError(f"a ladder VAE needs at least two layers of positive sizes, got {list(self.dims)}")
        if len(top_down) != len(self.dims) - 1:
            raise ValueError(f"{len(self.dims)} layers need {len(self.dims) - 1} top-down modules, got {len(top_down)}")
        self.top_down = nn.ModuleList(top_down)

    @property
    def latent_dim(self) -> int:
        return sum(self.dims)

    def reference(self) -> Tensor:
        """A parameter, for the device and dtype of fresh samples."""
        return next(self.parameters())

    def forward(self, h: Tensor | None = None) -> Distribution:
        return LadderPriorDistribution(self, h)

    def extra_repr(self) -> str:
        return f"dims={list(self.dims)}"


class LadderPosterior(Distribution):
    """q(z_1, ..., z_L | x) over the concatenated z: batch ``[B]``, event ``[sum D_i]``.

    ``messages[i]`` is the bottom-up Gaussian (mu^_i, sigma^_i) of layer i, ``[B, D_i]`` each;
    ``inference`` how a layer's q is made of it and p(z_i | z_{i+1}) (module docstring), ``mix``
    the residual inference's L - 1 maps U_i from z_{i+1} to ``D_i`` numbers.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, messages: Sequence[tuple[Tensor, Tensor]], prior: LadderPrior, h: Tensor | None,
                 inference: str = "precision", mix: Sequence[nn.Module] | None = None) -> None:
        if inference not in INFERENCE:
            raise VaelabError(f"unknown ladder inference {inference!r}; choose one of: {', '.join(INFERENCE)}")
        if inference == "residual" and (mix is None or len(mix) != len(prior.dims) - 1):
            raise ValueError(f"residual inference over {len(prior.dims)} layers needs {len(prior.dims) - 1} mix maps")
        self.messages = list(messages)
        self.prior = prior
        self.h = h
        self.inference = inference
        self.mix = mix
        super().__init__(Size(messages[0][0].shape[:1]), Size((sum(prior.dims),)), validate_args=False)

    def with_messages(self, messages: Sequence[tuple[Tensor, Tensor]]) -> "LadderPosterior":
        """The same posterior (prior, context, inference) with other bottom-up messages."""
        return LadderPosterior(messages, self.prior, self.h, self.inference, self.mix)

    def _layer(self, i: int, z_above: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """q(z_i | z_{i+1}, x) as (loc, scale) and the prior p(z_i | z_{i+1}) it merged with
        (None for the top layer, whose prior is N(0, I))."""
        loc_m, scale_m = self.messages[i]
        if z_above is None:
            return loc_m, scale_m, None, None
        loc_p, scale_p = self.prior.top_down[i](z_above, self.h)  # [*S, B, D_i]
        if self.inference == "independent":  # q(z_i | x): the message alone
            return loc_m, scale_m, loc_p, scale_p
        if self.inference == "residual":  # N(mu_p + mu^ + U z_{i+1}, sigma_p sigma^)
            assert self.mix is not None
            return loc_p + loc_m + _run(self.mix[i], z_above, None), scale_p * scale_m, loc_p, scale_p
        prec_m, prec_p = scale_m.pow(-2), scale_p.pow(-2)
        prec = prec_m + prec_p
        loc = (loc_m * prec_m + loc_p * prec_p) / prec
        return loc, prec.rsqrt(), loc_p, scale_p

    def _walk(self, sample_shape: Size, given: Tensor | None, noise: bool,
              eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Top-down pass: draw (or read from ``given``, or make from the noise ``eps``) each
        layer; return z and log q(z|x)."""
        dims = self.prior.dims
        parts = None if given is None else _split(given, dims)
        noises = None if eps is None else _split(eps, dims)
        zs: list[Tensor] = [torch.empty(0)] * len(dims)
        terms: list[Tensor] = []  # log q of each layer, [*S, B]
        for i in reversed(range(len(dims))):
            loc, scale, _, _ = self._layer(i, None if i == len(dims) - 1 else zs[i + 1])
            if parts is not None:
                z = parts[i]
                terms.append(_normal_log_prob(z, loc, scale))
            else:
                # a q that does not read z_{i+1} (the top layer; independent: every layer): [*S, B, D_i]
                loc = loc.expand(*sample_shape, *loc.shape[-2:]) if loc.dim() == 2 else loc
                if noise:
                    e = torch.randn_like(loc) if noises is None else noises[i]
                    z = loc + scale * e
                    terms.append((-0.5 * e**2 - scale.log() - _HALF_LOG_2PI).sum(-1))
                else:
                    z = loc
            zs[i] = z
        return torch.cat(zs, -1), sum(terms[1:], terms[0]) if terms else torch.zeros(())

    def rsample_and_log_prob(self, sample_shape: Size = Size()) -> tuple[Tensor, Tensor]:
        """z ``[*S, B, D]`` by the top-down reparameterized pass, and log q(z|x) ``[*S, B]``."""
        return self._walk(Size(sample_shape), None, True)

    def rsample(self, sample_shape: Size = Size()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def from_noise(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        """z and log q(z|x) ``[S, B]`` made from given standard-normal noise ``eps``
        ``[S, B, D]`` (the reparameterization with the draws fixed: two posteriors fed the same
        eps give paired samples)."""
        return self._walk(Size(eps.shape[:-2]), None, True, eps)

    def log_prob(self, z: Tensor) -> Tensor:  # [*S, B, D] -> [*S, B]
        return self._walk(Size(), z, True)[1]

    @property
    def stddev(self) -> Tensor:
        """Each layer's conditional standard deviation along the mean path (the scales of
        q(z_i | z_{i+1}, x) at the upper layers' means): the spread of each unit given the
        layers above, not of its marginal."""
        mean = self.mean
        parts = _split(mean, self.prior.dims)
        scales = [self._layer(i, parts[i + 1] if i + 1 < len(parts) else None)[1].expand_as(parts[i])
                  for i in range(len(parts))]
        return torch.cat(scales, -1)

    @property
    def mean(self) -> Tensor:
        """The mean path: z_L = mu^_L, then each layer's merged mean given the one above
        (exact for the top layer; for lower layers the mean given the upper layers' means)."""
        return self._walk(Size(), None, False)[0]

    def mean_given(self, z: Tensor, layer: int) -> Tensor:
        """z ``[*S, B, D]`` with the layers below ``layer`` (0-based, bottom first) replaced by
        their merged posterior means given the layers above, top down: what a traversal of a
        unit of ``layer`` decodes, the lower layers following it as inference would."""
        parts = _split(z, self.prior.dims)
        for i in reversed(range(layer)):
            parts[i] = self._layer(i, parts[i + 1])[0].expand_as(parts[i])
        return torch.cat(parts, -1)

    def layer_kl(self, z: Tensor) -> list[Tensor]:
        """Per layer, KL(q(z_i | z_{i+1}, x) || p(z_i | z_{i+1})) per unit at the upper layers of
        the sample ``z`` ``[*S, B, D]``: a list of ``[*S, B, D_i]``, bottom layer first. Their
        sum over layers and units has expectation KL(q(z|x) || p(z)) under z ~ q."""
        parts = _split(z, self.prior.dims)
        out: list[Tensor] = []
        for i in range(len(parts)):
            loc, scale, loc_p, scale_p = self._layer(i, parts[i + 1] if i + 1 < len(parts) else None)
            if loc_p is None or scale_p is None:
                loc_p, scale_p = torch.zeros_like(loc), torch.ones_like(scale)
            out.append(_normal_kl(loc, scale, loc_p, scale_p).expand(*z.shape[:-1], loc.shape[-1]))
        return out


class LadderEncoder(nn.Module):
    """The bottom-up pass and the messages of every layer: ``encoder(x, h)`` returns
    :class:`LadderPosterior`, which runs the top-down pass through ``prior``'s networks.

    Args:
        bottom_up: L networks; ``bottom_up[0]`` reads x (and the context features), each next
            one the previous output: d_i = bottom_up[i](d_{i-1}).
        heads: L networks d_i -> ``2 D_i`` (means and raw scales of the messages).
        prior: the model's :class:`LadderPrior` (held by reference, not as a submodule: its
            parameters belong to the prior, whose networks the inference pass shares).
        min_scale: floor added to the messages' softplus scales.
        inference: ``precision``, ``residual`` or ``independent`` (module docstring).
        mix: residual inference: L - 1 maps, ``mix[i]`` from z_{i+1} ``[N, D_{i+1}]`` to ``[N, D_i]``
            (default: bias-free linear maps, zero at the start); other inference: none.
    """

    def __init__(self, bottom_up: Sequence[nn.Module], heads: Sequence[nn.Module], prior: LadderPrior,
                 min_scale: float = 1e-4, inference: str = "precision", mix: Sequence[nn.Module] | None = None) -> None:
        super().__init__()
        if not len(bottom_up) == len(heads) == len(prior.dims):
            raise ValueError(f"{len(prior.dims)} layers need as many bottom-up networks and heads, "
                             f"got {len(bottom_up)} and {len(heads)}")
        if inference not in INFERENCE:
            raise VaelabError(f"unknown ladder inference {inference!r}; choose one of: {', '.join(INFERENCE)}")
        if mix is not None and inference != "residual":
            raise ValueError(f"mix maps belong to residual inference, not {inference!r}")
        self.bottom_up = nn.ModuleList(bottom_up)
        self.heads = nn.ModuleList(heads)
        object.__setattr__(self, "_prior", prior)  # shared, not registered twice (one copy in the weights)
        self.min_scale = float(min_scale)
        self.inference = inference
        if inference == "residual":
            if mix is None:
                dims = prior.dims
                mix = [nn.Linear(dims[i + 1], dims[i], bias=False) for i in range(len(dims) - 1)]
                for m in mix:
                    nn.init.zeros_(m.weight)
                ref = next(iter(self.heads.parameters()), None)
                if ref is not None:
                    mix = [m.to(ref.dtype) for m in mix]
            self.mix: nn.ModuleList | None = nn.ModuleList(mix)
        else:
            self.mix = None

    @property
    def dims(self) -> tuple[int, ...]:
        return self._prior.dims

    @property
    def latent_dim(self) -> int:
        return sum(self._prior.dims)

    def forward(self, x: Tensor, h: Tensor | None = None) -> LadderPosterior:
        messages = []
        d = x
        for i, (net, head) in enumerate(zip(self.bottom_up, self.heads)):
            d = net(d) if (i > 0 or h is None) else net(d, h)  # [B, width_i]
            loc, raw = head(d).chunk(2, dim=-1)
            messages.append((loc, nn.functional.softplus(raw) + self.min_scale))
        return LadderPosterior(messages, self._prior, h, self.inference, self.mix)

    def extra_repr(self) -> str:
        return f"dims={list(self.dims)}, min_scale={self.min_scale}, inference={self.inference}"


class _Activated(nn.Module):
    """``act(net(x, c))``: a registry encoder network as the first bottom-up layer."""

    def __init__(self, net: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.activation = activation

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return self.activation(self.net(x) if c is None else self.net(x, c))


def layer_of(dims: Sequence[int], unit: int) -> int:
    """The layer (0-based, bottom first) of unit ``unit`` of the concatenated z."""
    for i, piece in enumerate(layer_slices(dims)):
        if piece.start <= unit < piece.stop:
            return i
    raise IndexError(f"unit {unit} is outside a z of {sum(dims)} units")


def unit_name(dims: Sequence[int], unit: int) -> str:
    """``"z2.3"``: unit 3 (0-based, within its layer) of layer 2 (1-based, bottom first)."""
    i = layer_of(dims, unit)
    return f"z{i + 1}.{unit - layer_slices(dims)[i].start}"


@torch.no_grad()
def hierarchical_samples(prior: LadderPrior, rows: int, columns: int, h: Tensor | None = None) -> Tensor:
    """z ``[rows, columns, D]`` from the prior: each row one draw of the top layer; in the
    first column the layers below at their conditional means (their noise held at 0), in the
    others drawn afresh, so a row shows what the top layer fixes and what the lower ones add.
    ``h`` (context features ``[1, C]``) for a conditional model."""
    dims = prior.dims
    ref = prior.reference()
    top = torch.randn(rows, 1, dims[-1], device=ref.device, dtype=ref.dtype).expand(rows, columns, dims[-1])
    zs: list[Tensor] = [torch.empty(0)] * len(dims)
    zs[-1] = top
    noise = torch.ones(columns, 1, device=ref.device, dtype=ref.dtype)
    noise[0] = 0.0  # the first column: conditional means
    for i in reversed(range(len(dims) - 1)):
        loc, scale = prior.top_down[i](zs[i + 1], h)  # h [1, C] broadcast over rows and columns
        zs[i] = loc + scale * torch.randn_like(loc) * noise
    return torch.cat(zs, -1)


def colour(prior: LadderPrior, eps: Tensor, h: Tensor | None = None) -> Tensor:
    """z from the prior's standard-normal noise ``eps`` ``[*S, B, D]`` (the prior's own
    reparameterization): z_L = eps_L, then z_i = mu_i(z_{i+1}) + sigma_i(z_{i+1}) eps_i.
    ``eps ~ N(0, I)`` gives z ~ p(z); varying an upper layer's eps with the lower ones held
    moves the lower layers as the top-down path says."""
    parts = _split(eps, prior.dims)
    zs: list[Tensor] = [torch.empty(0)] * len(parts)
    zs[-1] = parts[-1]
    for i in reversed(range(len(parts) - 1)):
        loc, scale = prior.top_down[i](zs[i + 1], h)
        zs[i] = loc + scale * parts[i]
    return torch.cat(zs, -1)


def whiten(prior: LadderPrior, z: Tensor, h: Tensor | None = None) -> Tensor:
    """The inverse of :func:`colour`: eps_L = z_L, eps_i = (z_i - mu_i(z_{i+1})) / sigma_i(z_{i+1})."""
    parts = _split(z, prior.dims)
    out = list(parts)
    for i in range(len(parts) - 1):
        loc, scale = prior.top_down[i](parts[i + 1], h)
        out[i] = (parts[i] - loc) / scale
    return torch.cat(out, -1)


def noise_view(q: LadderPosterior, prior: LadderPrior, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The posterior's mean path as the prior's noise, eps = whiten(mean) ``[B, D]``, and each
    unit's conditional spread in noise units, the scale of q(z_i | z_{i+1}, x) over that of
    p(z_i | z_{i+1}) at the upper layers' means ``[B, D]`` (what the explorer shows)."""
    mean = q.mean
    parts = _split(mean, prior.dims)
    spread = []
    for i, part in enumerate(parts):
        above = parts[i + 1] if i + 1 < len(parts) else None
        scale = q._layer(i, above)[1].expand_as(part)
        prior_scale = torch.ones_like(part) if above is None else prior.top_down[i](above, h)[1]
        spread.append(scale / prior_scale)
    return whiten(prior, mean, h), torch.cat(spread, -1)


def _swap_relu(module: nn.Module, activation: type[nn.Module]) -> nn.Module:
    """``module`` with every ``nn.ReLU`` inside it replaced by ``activation()`` (in place)."""
    if activation is nn.ReLU:
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, activation())
        else:
            _swap_relu(child, activation)
    return module


def _activation(activation: type[nn.Module], norm: bool, width: int) -> nn.Module:
    """The nonlinearity after a linear layer of ``width`` units, with a layer norm before it if ``norm``."""
    return nn.Sequential(nn.LayerNorm(width), activation()) if norm else activation()


def _start_at_prior(last: nn.Linear, min_scale: float) -> None:
    """Zero ``last`` (a layer giving means and raw scales) so that it gives mean 0 and scale 1."""
    half = last.out_features // 2
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[half:] = math.log(math.expm1(1.0 - min_scale))  # softplus(b) + min_scale = 1


def build_ladder(spec: ModelSpec) -> VAE:
    """The ladder VAE a spec of family ``"ladder"`` describes (``spec.latent_dims``, bottom
    first; ``spec.ladder`` its ingredients, module docstring). Networks: the first bottom-up
    layer is the spec's ``net`` from x to ``W`` units (W = the last of ``hidden``), then
    ``Linear(W, W)`` per layer above; the top-down networks are MLPs of width W, the message
    heads linear; all with the chosen activation (ReLU by default). The likelihood is the
    spec's, reading z_1 (or, with ``skip``, every layer)."""
    dims = spec.latent_dims
    if spec.family != "ladder" or len(dims) < 2:
        raise VaelabError("build_ladder needs a model spec of family 'ladder' with two or more latent_dims")
    opts: dict[str, Any] = dict(spec.ladder)
    act = ACTIVATIONS[opts.get("activation", "relu")]
    norm = opts.get("norm", "none") == "layer"
    skip = bool(opts.get("skip", False))
    cdim = spec.context_dim
    lik = registry.get("likelihood", spec.likelihood.name)
    hidden = list(spec.net.options.get("hidden", [400])) or [400]
    width = int(hidden[-1])
    min_scale = float(spec.posterior.options.get("min_scale", 1e-4))
    x_shape = spec.x_shape
    read = sum(dims) if skip else dims[0]  # the z units the likelihood reads
    encoder_net, first_layer_net = net_builders(spec, cdim, decoder_latent=read)

    def decoder_net(per_value: int) -> nn.Module:  # the likelihood reads z_1, the first D_1 numbers of z (skip: all)
        net = _swap_relu(first_layer_net(per_value), act)
        return net if skip else InputTransform(FirstUnits(dims[0]), net)

    # the encoder's networks first, then the decoder's, then the top-down path
    bottom_up: list[nn.Module] = [_Activated(_swap_relu(encoder_net(width), act), _activation(act, norm, width))]
    bottom_up += [nn.Sequential(nn.Linear(width, width), _activation(act, norm, width)) for _ in dims[1:]]
    heads = [nn.Linear(width, 2 * d) for d in dims]
    shapes = registry.Shapes(x_shape, read, cdim, encoder_net, decoder_net, likelihood=lik)
    decoder = lik.build(shapes, **spec.likelihood.options)
    hidden_act: Callable[[], nn.Module] = partial(_activation, act, norm, width)
    top_down = [TopDown(MLP(dims[i + 1], [width], 2 * dims[i], activation=hidden_act,  # type: ignore[arg-type]
                            context=cdim), dims[i], min_scale) for i in range(len(dims) - 1)]
    if opts.get("init", "default") == "prior":
        for layer in [*heads, *(t.net[-1] for t in top_down)]:
            _start_at_prior(layer, min_scale)
    prior = LadderPrior(dims, top_down)
    encoder = LadderEncoder(bottom_up, heads, prior, min_scale, inference=opts.get("inference", "precision"))
    context = ContextEncoder(spec.context) if spec.context else None
    return VAE(encoder=encoder, decoder=decoder, prior=prior, context=context)
