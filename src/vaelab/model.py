"""The VAE: a prior p(z), an encoder q_phi(z|x) and a decoder p_theta(x|z), composed.

Everything a VAE computes goes through one primitive, :meth:`VAE.trace`: draw K
reparameterized samples z_k ~ q(z|x) for a batch of B inputs and score them,

    log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)        # [K, B]

The ELBO is the mean of ``log w`` over k, the IWAE bound and the importance-sampled
estimate of log p(x) are ``logsumexp_k log w_k - log K`` (see :mod:`vaelab.objectives` and
:mod:`vaelab.evaluation`). Samples come first, then the batch.

A conditional VAE (Sohn, Lee & Yan 2015) is the same class with a context: ``trace(x, k, c)``
turns c ``[B, P]`` into features h(c) with the model's :class:`~vaelab.context.ContextEncoder`
and scores

    log w_k = log p(x|z_k, c) + log p(z_k|c) - log q(z_k|x, c),

so every estimator gives log p(x|c) exactly as it gives log p(x). ``c=None`` is the
unconditional model, not a second code path.

The three parts honour the contracts :class:`Posterior`, :class:`Likelihood` and
:class:`Prior` (``typing.Protocol``): any ``nn.Module`` with those call signatures works.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution

from .context import ContextEncoder
from .errors import VaelabError
from .inputs import check_shape

__all__ = ["VAE", "Trace", "Posterior", "Likelihood", "Prior", "SampleWithDensity", "Classifier"]


class Posterior(Protocol):
    """q(z|x, c): ``encoder(x)`` or ``encoder(x, c)`` -> a distribution, batch ``[B]``, event ``[D]``,
    with ``rsample`` (or ``rsample_and_log_prob``)."""

    def __call__(self, x: Tensor, c: Tensor | None = None) -> Distribution: ...


class Likelihood(Protocol):
    """p(x|z, c): ``decoder(z)`` or ``decoder(z, c)`` -> a distribution with batch ``z.shape[:-1]``
    and event ``x_shape``; ``check(x, what)`` raises a VaelabError for data outside its support."""

    x_shape: tuple[int, ...]

    def __call__(self, z: Tensor, c: Tensor | None = None) -> Distribution: ...

    def check(self, x: Tensor, what: str = "data") -> None: ...


class Prior(Protocol):
    """p(z|c): ``prior()`` or ``prior(c)`` -> a distribution with event ``[D]``."""

    def __call__(self, c: Tensor | None = None) -> Distribution: ...


@runtime_checkable
class Classifier(Protocol):
    """A model with a classifier q(y|x) (the semi-supervised M2): ``classify(x)`` returns a
    ``Categorical`` with batch ``[B]``; evaluation reports its accuracy on labelled data."""

    def classify(self, x: Tensor) -> Distribution: ...


@runtime_checkable
class SampleWithDensity(Protocol):
    """A distribution whose samples come with their log-density from one pass (flows)."""

    def rsample_and_log_prob(self, sample_shape: Size = Size()) -> tuple[Tensor, Tensor]: ...


def _call(module: nn.Module, first: Tensor | None, h: Tensor | None) -> Distribution:
    args = () if first is None else (first,)
    return module(*args) if h is None else module(*args, h)


class Trace:
    """K posterior samples for a batch and their log-densities.

    Shapes: ``z`` is ``[K, B, D]``; every ``log_*`` is ``[K, B]``. ``posterior`` has batch
    shape ``[B]``, ``prior`` batch shape ``[]``, ``likelihood`` batch shape ``[K, B]``.

    ``log_likelihood`` is computed when the trace is made; ``log_prior`` and
    ``log_posterior`` when first read (then kept), unless given (a flow's density comes with
    its sample). An estimator that never reads them, such as the ELBO with the closed-form KL,
    does not pay for them, neither in the forward pass nor in the backward one.
    """

    def __init__(self, z: Tensor, log_likelihood: Tensor, posterior: Distribution, prior: Distribution,
                 likelihood: Distribution, log_prior: Tensor | None = None,
                 log_posterior: Tensor | None = None) -> None:
        self.z = z
        self.log_likelihood = log_likelihood  # log p(x|z_k)  [K, B]
        self.posterior = posterior
        self.prior = prior
        self.likelihood = likelihood
        self._log_prior = log_prior
        self._log_posterior = log_posterior

    @property
    def log_prior(self) -> Tensor:
        """log p(z_k), ``[K, B]``."""
        if self._log_prior is None:
            self._log_prior = self.prior.log_prob(self.z)
        return self._log_prior

    @property
    def log_posterior(self) -> Tensor:
        """log q(z_k|x), ``[K, B]``."""
        if self._log_posterior is None:
            self._log_posterior = self.posterior.log_prob(self.z)
        return self._log_posterior

    @property
    def log_weights(self) -> Tensor:
        """log p(x, z_k) - log q(z_k|x), shape ``[K, B]``."""
        return self.log_likelihood + self.log_prior - self.log_posterior


class VAE(nn.Module):
    """A VAE as a composition of three modules that each return a distribution.

    Args:
        encoder: q(z|x, c), a :class:`Posterior`.
        decoder: p(x|z, c), a :class:`Likelihood`.
        prior: p(z|c), a :class:`Prior`.
        context: turns the raw context c ``[B, P]`` into the features the three parts read;
            ``None`` for an unconditional model.

    Swapping any of the three (a flow posterior, a mixture prior, another likelihood)
    changes nothing here nor in the objectives.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior: nn.Module,
                 context: ContextEncoder | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.context = context

    @property
    def latent_dim(self) -> int:
        """D: the encoder's (or prior's) ``latent_dim``, else read off an unconditional prior."""
        for part in (self.encoder, self.prior):
            d = getattr(part, "latent_dim", None)
            if isinstance(d, int):
                return d
        return int(self.prior().event_shape[-1])

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.decoder.x_shape)

    def features(self, c: Tensor | None) -> Tensor | None:
        """h(c) ``[B, context_dim]`` for a conditional model, None for c = None; a VaelabError
        when c is given to an unconditional model or missing for a conditional one."""
        if c is None:
            if self.context is not None:
                names = ", ".join(v.name for v in self.context.variables)
                raise VaelabError(f"this model is conditional (on {names}): give c, one row per example")
            return None
        if self.context is None:
            raise VaelabError("this model is unconditional: c must be None")
        return self.context(c)

    def trace(self, x: Tensor, k: int = 1, c: Tensor | None = None) -> Trace:
        """Draw ``k`` samples z ~ q(z|x, c) by reparameterization and score them.

        Args:
            x: a batch ``[B, *x_shape]`` (another dtype is converted to the model's).
            k: samples per example.
            c: the context ``[B, P]`` of a conditional model, else None.

        The shapes of x and c and the number k are checked (a one-line VaelabError: a wrong
        shape would broadcast silently); the values of x are not, at every step: the
        estimators and the training loop check their data once (:mod:`vaelab.inputs`).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise VaelabError(f"k must be a whole number >= 1 (samples per example), got {k!r}")
        x = self._input(x, c)
        h = self.features(c)  # [B, C] or None
        q = _call(self.encoder, x, h)  # batch [B], event [D]
        log_q = None  # scored when first needed (see Trace)
        if isinstance(q, SampleWithDensity):  # flows: the density comes with the sample
            z, log_q = q.rsample_and_log_prob((k,))  # [K, B, D], [K, B]
        else:
            z = q.rsample((k,))  # [K, B, D]
        p_x = _call(self.decoder, z, h)  # batch [K, B], event x_shape
        return Trace(
            z=z,
            log_likelihood=p_x.log_prob(x),  # [K, B]
            posterior=q,
            prior=_call(self.prior, None, h),
            likelihood=p_x,
            log_posterior=log_q,  # [K, B] or None
        )

    def log_weights(self, x: Tensor, k: int = 1, c: Tensor | None = None) -> Tensor:
        """``log p(x, z_k | c) - log q(z_k|x, c)`` for k = 1..K, shape ``[K, B]``."""
        return self.trace(x, k, c).log_weights

    def encode(self, x: Tensor, c: Tensor | None = None) -> Distribution:
        """The approximate posterior q(z|x, c) for a batch ``[B, *x_shape]`` (shapes checked as
        in :meth:`trace`)."""
        return _call(self.encoder, self._input(x, c), self.features(c))

    def _input(self, x: Tensor, c: Tensor | None) -> Tensor:
        """``x`` ``[B, *x_shape]`` in the model's floating dtype, with one row of c per example:
        a one-line VaelabError for a shape that would broadcast (no data read)."""
        check_shape(self, x, empty=True)
        if c is not None and c.shape[0] != x.shape[0]:
            raise VaelabError(f"c has {c.shape[0]} rows but x has {x.shape[0]} examples: give one row of c per example")
        dtype = self._dtype()
        return x if dtype is None or x.dtype == dtype else x.to(dtype)

    def _dtype(self) -> torch.dtype | None:
        """The floating dtype of the model's parameters (None for a model without any)."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return None

    def decode(self, z: Tensor, c: Tensor | None = None) -> Distribution:
        """The likelihood p(x|z, c) for latents ``[..., B, D]`` (c ``[B, P]``)."""
        return _call(self.decoder, z, self.features(c))

    def prior_distribution(self, c: Tensor | None = None) -> Distribution:
        """p(z|c): batch ``[]`` (or ``[B]`` for a context of B rows), event ``[D]``."""
        return _call(self.prior, None, self.features(c))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, c: Tensor | None = None) -> Tensor:
        """Generate ``n`` examples: z ~ p(z|c), then the decoder's mean (or a draw) ``[n, *x_shape]``.

        ``c`` is ``[n, P]`` (a context per sample) or ``[P]`` (one for all) for a conditional model.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise VaelabError(f"n must be a whole number >= 0 (examples to generate), got {n!r}")
        if c is not None and c.ndim == 1:
            c = c.unsqueeze(0).expand(n, -1)
        h = self.features(c)
        p_z = _call(self.prior, None, h)
        z = p_z.sample(() if h is not None and p_z.batch_shape == (n,) else (n,))  # [n, D]
        p_x = _call(self.decoder, z, h)
        return p_x.mean if mean else p_x.sample()
