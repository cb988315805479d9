"""Objectives and gradient estimators as functions of a :class:`~vaelab.model.Trace`.

ELBO (per example, in nats):

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))              reconstruction - KL
            = E_q[log p(x, z) - log q(z|x)]                     the Monte-Carlo form

The KL is taken in closed form when ``torch.distributions.kl_divergence`` knows the pair
(diagonal Gaussian posterior and standard normal prior, for instance) and by Monte Carlo,
``mean_k log q(z_k|x) - log p(z_k)``, otherwise. Both are unbiased for the ELBO; the closed
form has lower variance.

IWAE bound (Burda et al. 2016), and with large K the importance-sampled estimate of log p(x):

    L_K(x) = log (1/K) sum_k exp(log w_k)  <=  log p(x),   increasing in K.

Every quantity is a sum over the dimensions of x and z (never a mean) and is returned per
example, shape ``[B]``; a training loss is the negative mean over the batch.

Training objectives, gathered in :class:`Objective` (a loss whose *gradient* is the named
estimator; the ELBO it logs is always the true, unweighted one):

    beta-ELBO      loss = -(rec - beta_t KL),  beta_t = beta min(1, t / warmup)  (t in epochs)
                   (Higgins et al. 2017; linear KL warm-up: Bowman et al. 2016, Sønderby et al. 2016)
    free bits      KL replaced by sum_d max(lambda, mean_batch KL_d)            (Kingma et al. 2016)
    IWAE           loss = -L_K                                                  (Burda et al. 2016)
    STL            log q(z|x) scored with the posterior's parameters detached   (Roeder et al. 2017)
    DReG           the doubly reparameterized IWAE gradient                     (Tucker et al. 2019)

Gradient estimators. With z = z_phi(eps) reparameterized, the ELBO's gradient in the encoder
parameters phi has two parts,

    d/dphi [log p(x, z) - log q_phi(z|x)]
        = (d_z log p(x, z) - d_z log q_phi(z|x)) dz/dphi     the path term
          - d_phi log q_phi(z|x) |_(z fixed)                the score term, E_q[.] = 0

*Sticking the landing* (STL) drops the score term by scoring z with a copy of q whose
parameters are detached (:func:`frozen_log_posterior`); it stays unbiased, and when q is the
exact posterior the path term is zero for every eps, so the estimate is exactly zero.

For the IWAE bound the score term no longer has mean zero (it is weighted by the normalised
weights w~_k = w_k / sum_j w_j), so STL-IWAE (:func:`iwae_stl`) is *biased* for K > 1 (Tucker
et al. 2019). DReG rewrites that term by a second reparameterization and gets the unbiased

    d/dphi L_K = E[ sum_k w~_k^2 d_z log w_k dz_k/dphi ],

while the decoder and prior parameters theta keep the ordinary IWAE gradient
``sum_k w~_k d_theta log w_k`` (:func:`iwae_dreg`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.distributions import (
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from .context import Batch, as_batch
from .errors import VaelabError
from .model import VAE, Trace

__all__ = [
    "ELBO",
    "Objective",
    "OwnLoss",
    "Detachable",
    "data_elbo",
    "elbo",
    "kl_term",
    "kl_per_dim",
    "free_bits_kl",
    "kl_weight",
    "check_weights",
    "MAX_WEIGHT",
    "iwae",
    "log_mean_exp",
    "detach_parameters",
    "frozen_log_posterior",
    "elbo_stl",
    "iwae_stl",
    "iwae_dreg",
    "KLMethod",
    "Kind",
    "Estimator",
    "KINDS",
    "ESTIMATORS",
]

KLMethod = Literal["auto", "analytic", "mc"]
Kind = Literal["elbo", "iwae"]
Estimator = Literal["standard", "stl", "dreg"]
KINDS: tuple[str, ...] = ("elbo", "iwae")
ESTIMATORS: tuple[str, ...] = ("standard", "stl", "dreg")


# --- the ELBO and its KL term -------------------------------------------------------------


@dataclass
class ELBO:
    """The ELBO and its two terms, per example ``[B]``, in nats."""

    elbo: Tensor
    reconstruction: Tensor  # E_q[log p(x|z)]
    kl: Tensor  # KL(q(z|x) || p(z))

    def mean(self) -> dict[str, float]:
        """Batch means as plain floats (nats per example)."""
        return {
            "elbo": float(self.elbo.detach().mean()),
            "reconstruction": float(self.reconstruction.detach().mean()),
            "kl": float(self.kl.detach().mean()),
        }


def _check_kl_method(method: str) -> None:
    if method not in ("auto", "analytic", "mc"):
        raise ValueError(f"KL method must be 'auto', 'analytic' or 'mc', got {method!r}")


def kl_term(trace: Trace, method: KLMethod = "auto") -> Tensor:
    """KL(q(z|x) || p(z)) per example ``[B]``: closed form when known, else Monte Carlo.

    ``method="analytic"`` raises ``NotImplementedError`` when no closed form is registered;
    ``"mc"`` always uses the samples in the trace.
    """
    _check_kl_method(method)
    if method != "mc":
        try:
            return kl_divergence(trace.posterior, trace.prior)  # [B]
        except NotImplementedError:
            if method == "analytic":
                raise
    return (trace.log_posterior - trace.log_prior).mean(0)  # [B]


def elbo(trace: Trace, kl: KLMethod = "auto") -> ELBO:
    """The ELBO of each example in the trace, split into reconstruction and KL."""
    reconstruction = trace.log_likelihood.mean(0)  # [B]
    kl_value = kl_term(trace, kl)
    return ELBO(elbo=reconstruction - kl_value, reconstruction=reconstruction, kl=kl_value)


def kl_per_dim(trace: Trace, method: KLMethod = "auto") -> Tensor:
    """KL(q(z_d|x) || p(z_d)) for every example and latent dimension, ``[B, D]``.

    Defined when q and p both factorise over the dimensions of z (``Independent`` over a
    one-dimensional family, such as the diagonal Gaussian and N(0, I)); then it sums to
    :func:`kl_term` over ``d``. Closed form per dimension when ``kl_divergence`` knows the
    pair (``method="auto"`` or ``"analytic"``), else the Monte-Carlo average over the trace's
    samples of ``log q(z_kd|x) - log p(z_kd)``. A hierarchy (:mod:`vaelab.ladder`) gives each
    unit's closed-form KL given the layers above at the trace's samples, averaged over them
    (their sum is an unbiased estimate of the KL). A full-covariance posterior, a flow or a
    mixture prior has no per-dimension KL: :class:`~vaelab.errors.VaelabError`.

    Example:
        >>> kl_per_dim(model.trace(x, 1)).sum(-1)     # == kl_term(trace), [B]
    """
    _check_kl_method(method)
    q, p = trace.posterior, trace.prior
    if hasattr(q, "layer_kl"):  # a hierarchy (vaelab.ladder): each unit's KL given the layers above, in closed form
        return torch.cat(q.layer_kl(trace.z), -1).mean(0)  # [K, B, D] -> [B, D]; sums to KL(q || p) in expectation
    for name, dist in (("posterior", q), ("prior", p)):
        if not (isinstance(dist, Independent) and dist.reinterpreted_batch_ndims == 1
                and dist.base_dist.event_shape == ()):
            raise VaelabError(
                f"free bits needs the KL per latent dimension, so a factorised posterior and "
                f"prior (e.g. the diagonal Gaussian and N(0, I)); the {name} is "
                f"{type(dist).__name__}, which does not factorise; use free_bits 0"
            )
    q_d, p_d = q.base_dist, p.base_dist  # batch [B, D] and [D], event []
    if method != "mc":
        try:
            return kl_divergence(q_d, p_d).expand(q.batch_shape + q.event_shape)  # [B, D]
        except NotImplementedError:
            if method == "analytic":
                raise
    return (q_d.log_prob(trace.z) - p_d.log_prob(trace.z)).mean(0)  # [K, B, D] -> [B, D]


def free_bits_kl(kl_d: Tensor, free_bits: float) -> Tensor:
    """The free-bits KL term of a batch (Kingma et al. 2016), a scalar:

        sum_d max(lambda, (1/B) sum_b KL_bd)

    Each latent dimension's KL, averaged over the minibatch, counts at least ``lambda`` nats;
    a dimension below the floor contributes the constant ``lambda`` and so no gradient, so
    the optimiser need not push it towards the prior. ``kl_d`` is ``[B, D]``
    (:func:`kl_per_dim`); ``free_bits=0`` gives the mean KL of the batch.
    """
    return torch.clamp(kl_d.mean(0), min=free_bits).sum()  # [D] -> []


MAX_WEIGHT = 1e6  # beta, free bits and alpha beyond this: refused (see check_weights)


def check_weights(**weights: float) -> None:
    """Refuse a loss weight (``beta``, ``free_bits``, ``alpha``) above :data:`MAX_WEIGHT`: it
    swamps the rest of the loss, and beyond float32's range (3.4e38) it is infinite in the
    float32 loss (NaN at the first step, or a traceback), which the learning rate cannot fix."""
    for name, value in weights.items():
        if not value <= MAX_WEIGHT:
            raise VaelabError(f"{name} must be a number from 0 to {MAX_WEIGHT:g}, got {value:g}: a larger weight "
                              f"swamps the rest of the loss and from 3.4e+38 overflows its float32 numbers; "
                              f"choose a smaller --{name.replace('_', '-')}")


def kl_weight(progress: float, beta: float = 1.0, warmup: float = 0.0) -> float:
    """The weight of the KL term after ``progress`` epochs: a linear warm-up from 0 to beta.

        beta_t = beta * min(1, t / warmup)      (beta when warmup = 0)

    Bowman et al. (2016) and Sønderby et al. (2016): starting the KL weight at 0 lets the
    decoder learn to use z before the KL pulls q(z|x) to the prior. ``progress`` is in
    (fractional) epochs, as the training loop passes it.
    """
    if warmup <= 0:
        return float(beta)
    return float(beta) * min(1.0, max(0.0, float(progress)) / float(warmup))


# --- the IWAE bound -----------------------------------------------------------------------


def log_mean_exp(x: Tensor, dim: int = 0) -> Tensor:
    """``log(mean(exp(x)))`` along ``dim``, computed stably with logsumexp."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def iwae(trace: Trace) -> Tensor:
    """The importance-weighted bound L_K per example ``[B]`` (K = samples in the trace)."""
    return log_mean_exp(trace.log_weights, dim=0)


# --- gradient estimators ------------------------------------------------------------------


@runtime_checkable
class Detachable(Protocol):
    """A distribution that gives its own copy with parameters cut from the graph (STL, DReG)."""

    def detach_parameters(self) -> Distribution: ...


def detach_parameters(q: Distribution) -> Distribution:
    """The same distribution with its parameters cut from the autograd graph.

    ``detach_parameters(q).log_prob(z)`` has the value of ``q.log_prob(z)`` and still
    differentiates in ``z``, never in q's parameters: what STL and DReG need. Known:
    ``Normal``, ``Independent`` of a known one (the diagonal Gaussian), ``MultivariateNormal``
    and ``LowRankMultivariateNormal``; a distribution of another type may define a method
    ``detach_parameters()`` that returns its frozen copy. Anything else, flows included (their
    density at a given z needs the inverse of the flow), is a VaelabError.
    """
    if isinstance(q, Detachable):
        return q.detach_parameters()
    if isinstance(q, Independent):
        return Independent(detach_parameters(q.base_dist), q.reinterpreted_batch_ndims, validate_args=False)
    if isinstance(q, Normal):
        return Normal(q.loc.detach(), q.scale.detach(), validate_args=False)
    if isinstance(q, MultivariateNormal):
        return MultivariateNormal(q.loc.detach(), scale_tril=q.scale_tril.detach(), validate_args=False)
    if isinstance(q, LowRankMultivariateNormal):
        return LowRankMultivariateNormal(q.loc.detach(), q.cov_factor.detach(), q.cov_diag.detach(),
                                         validate_args=False)
    raise VaelabError(
        f"STL/DReG need a posterior whose log-density can be evaluated with frozen parameters: "
        f"gaussian or full-gaussian; this posterior is {type(q).__name__}; use estimator 'standard'"
    )


def frozen_log_posterior(trace: Trace) -> Tensor:
    """log q(z_k|x) scored with q's parameters detached, ``[K, B]``.

    Same value as ``trace.log_posterior``; its gradient reaches the encoder only through the
    samples z_k (the path term), never through the density's parameters (the score term).
    """
    return detach_parameters(trace.posterior).log_prob(trace.z)  # [K, B]


def _frozen_log_weights(trace: Trace) -> Tensor:
    return trace.log_likelihood + trace.log_prior - frozen_log_posterior(trace)  # [K, B]


def elbo_stl(trace: Trace, kl_weight: float = 1.0) -> Tensor:
    """The Monte-Carlo ELBO per example ``[B]`` whose gradient is STL (Roeder et al. 2017).

        mean_k [log p(x|z_k) - kl_weight * (log q(z_k|x) - log p(z_k))],  q's parameters detached

    Unbiased for the gradient of the (weighted) ELBO, and exactly zero at q = p(z|x) with
    ``kl_weight = 1``. The KL is the Monte-Carlo one: dropping the score term only makes
    sense there (a closed-form KL has no score term).
    """
    kl_path = (frozen_log_posterior(trace) - trace.log_prior).mean(0)  # [B]
    return trace.log_likelihood.mean(0) - kl_weight * kl_path


def iwae_stl(trace: Trace) -> Tensor:
    """The IWAE bound per example ``[B]``, its gradient the STL one: q's parameters detached.

    Its value is :func:`iwae`'s. The gradient is *biased* for K > 1 (Tucker et al. 2019): the
    dropped score term ``-sum_k w~_k d_phi log q(z_k|x)`` has mean zero only when K = 1. Use
    :func:`iwae_dreg` for an unbiased low-variance gradient.
    """
    return log_mean_exp(_frozen_log_weights(trace), dim=0)


def iwae_dreg(trace: Trace) -> Tensor:
    """The IWAE bound per example ``[B]``, its gradient the doubly reparameterized one (DReG).

    Value: :func:`iwae`'s. Gradient (Tucker et al. 2019, eq. 5 and the decoder's usual one):

        encoder phi:           sum_k w~_k^2 d_z log w_k dz_k/dphi
        decoder, prior theta:  sum_k w~_k   d_theta log w_k

    How: the bound is computed from log weights scored with q's parameters detached, so
    ``d L_K / d log w_k = w~_k`` and the encoder is reached only through z_k; a gradient hook
    on ``trace.z`` multiplies what flows into each z_k by another w~_k. Parameters reached
    directly (decoder, prior) keep the weight w~_k; those reached through z get w~_k^2. Each
    group gets its own estimator from one backward pass, whatever the networks share (a
    VampPrior's encoder parameters reached through the prior keep the IWAE weight).

    Because of the hook, backpropagate from one such bound per trace: calling this twice on
    the same trace is an error.
    """
    log_w = _frozen_log_weights(trace)  # [K, B]
    z = trace.z
    if z.requires_grad:
        if getattr(z, "_vaelab_dreg_hook", False):
            raise ValueError("iwae_dreg was already applied to this trace (it hooks trace.z); draw a new trace")
        w = torch.softmax(log_w.detach(), dim=0)  # [K, B], normalised weights w~
        w = w.reshape(w.shape + (1,) * (z.ndim - w.ndim))  # [K, B, 1]
        z.register_hook(lambda grad: grad * w)
        z._vaelab_dreg_hook = True  # type: ignore[attr-defined]
    return log_mean_exp(log_w, dim=0)


# --- the training objective ---------------------------------------------------------------


@runtime_checkable
class OwnLoss(Protocol):
    """A model whose training loss and ELBO are not those of one trace (the semi-supervised
    M2 sums over its label); :class:`Objective` and :func:`data_elbo` defer to it."""

    def loss(self, batch: Batch, objective: "Objective", progress: float) -> tuple[Tensor, ELBO]: ...

    def elbo_terms(self, batch: Batch, k: int, kl: KLMethod) -> ELBO: ...


def data_elbo(model: VAE, x: Tensor | Batch, k: int = 1, kl: KLMethod = "auto") -> ELBO:
    """The ELBO and its terms per example ``[B]`` of a batch, for any model (with its context)."""
    batch = as_batch(x)
    if isinstance(model, OwnLoss):
        return model.elbo_terms(batch, k, kl)
    return elbo(model.trace(batch.x, k, batch.c), kl)


@dataclass(frozen=True)
class Objective:
    """What training maximises, as one object the training loop calls.

    ``loss(model, x, progress)`` returns the scalar loss (mean over the batch, nats per
    example) and the true ELBO terms of the batch for logging (reconstruction and KL,
    unweighted, whatever beta, warm-up or free bits the loss uses); ``progress`` is the
    fraction of training done (epochs, fractional), for the warm-up.

    Args:
        kind: ``"elbo"`` maximises the ELBO; ``"iwae"`` the IWAE bound with ``k`` samples.
        k: posterior samples per example.
        kl: how the ELBO's KL term is computed (see :func:`kl_term`); also for the logged KL.
        beta: the weight of the KL term (beta-VAE; ``"elbo"`` only).
        warmup: epochs over which the KL weight rises linearly from 0 to ``beta`` (0: none).
        free_bits: lambda, nats per latent dimension below which the KL is not penalised
            (0: off). Needs a factorised posterior and prior (see :func:`kl_per_dim`).
        estimator: the gradient: ``"standard"`` (reparameterization), ``"stl"`` (sticking
            the landing; for the ELBO it uses the Monte-Carlo KL) or ``"dreg"`` (``"iwae"``
            only). STL and DReG need a Gaussian posterior (:func:`detach_parameters`).
        alpha, labelled_share: semi-supervised models (M2) only: the weight of the
            classification term, alpha / labelled_share per labelled example in the batch
            mean, i.e. the paper's alpha N / N_labelled (Kingma et al. 2014, eq. 9, with
            their alpha = 0.1 N); labelled_share is the expected share of labelled rows in a
            training batch: N_labelled / N, or :func:`vaelab.m2.batch_labelled_share` when
            labelled rows are added to every batch.

    Example:
        >>> objective = Objective(kind="iwae", k=5, estimator="dreg")
        >>> loss, terms = objective.loss(model, x)
        >>> loss.backward()
    """

    kind: Kind = "elbo"
    k: int = 1
    kl: KLMethod = "auto"
    beta: float = 1.0
    warmup: float = 0.0
    free_bits: float = 0.0
    estimator: Estimator = "standard"
    alpha: float = 0.1
    labelled_share: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise VaelabError(f"unknown objective {self.kind!r}; choose one of: {', '.join(KINDS)}")
        if self.estimator not in ESTIMATORS:
            raise VaelabError(f"unknown estimator {self.estimator!r}; choose one of: {', '.join(ESTIMATORS)}")
        if self.kl not in ("auto", "analytic", "mc"):
            raise VaelabError(f"unknown KL method {self.kl!r}; choose one of: auto, analytic, mc")
        if isinstance(self.k, bool) or int(self.k) != self.k or self.k < 1:
            raise VaelabError(f"k must be a positive integer, got {self.k!r}")
        if not (0 < self.labelled_share <= 1):
            raise VaelabError(f"labelled_share must be in (0, 1], got {self.labelled_share!r}")
        for name in ("beta", "warmup", "free_bits", "alpha"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise VaelabError(f"{name} must be a finite number >= 0, got {value!r}")
        check_weights(beta=self.beta, free_bits=self.free_bits, alpha=self.alpha)
        if self.estimator == "dreg" and self.kind != "iwae":
            raise VaelabError(
                f"estimator 'dreg' is the doubly reparameterized gradient of the IWAE bound; it "
                f"needs objective 'iwae', got objective {self.kind!r} (for the ELBO use estimator 'stl')"
            )
        if self.kind == "iwae":
            weighted = [f"{n} {getattr(self, n):g}" for n, off in (("beta", 1.0), ("warmup", 0.0), ("free_bits", 0.0))
                        if getattr(self, n) != off]
            if weighted:
                raise VaelabError(
                    f"{', '.join(weighted)} reshape the ELBO's KL term, which objective 'iwae' does not "
                    "have; use objective 'elbo', or leave beta 1, warmup 0 and free_bits 0"
                )
        if self.kind == "elbo" and self.estimator == "stl":
            if self.kl == "analytic":
                raise VaelabError(
                    "estimator 'stl' computes the KL by Monte Carlo along the samples (a closed-form "
                    "KL has no score term to drop); kl 'analytic' contradicts it: use kl 'auto' or 'mc'"
                )
            if self.free_bits > 0:
                raise VaelabError(
                    "free_bits takes the KL per dimension (closed form when known) and estimator "
                    "'stl' a Monte-Carlo KL: they do not combine; use estimator 'standard' with free bits"
                )

    def kl_weight(self, progress: float) -> float:
        """The KL weight after ``progress`` epochs (see :func:`kl_weight`)."""
        return kl_weight(progress, self.beta, self.warmup)

    def check(self, model: VAE, x: Tensor | Batch) -> None:
        """Raise now if ``model`` cannot be trained with this objective (STL with a flow
        posterior, free bits with a mixture prior): one pass on a few examples ``x``, in eval
        mode and without gradients, so nothing in the model changes."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                self.loss(model, x)
        except NotImplementedError as err:  # torch's kl_divergence: no closed form for this pair
            if self.kl != "analytic":
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise VaelabError(f"--kl analytic: the KL of this posterior and prior has no closed form ({first}); use "
                              "--kl auto (the closed form where one exists, else Monte Carlo) or --kl mc") from None
        finally:
            model.train(was_training)

    def loss(self, model: VAE, x: Tensor | Batch, progress: float = 0.0) -> tuple[Tensor, ELBO]:
        """Draw ``k`` samples per example of ``x`` (a tensor, or a :class:`~vaelab.context.Batch`
        with its context) and score them: :meth:`trace_loss`. A model with a loss of its own
        (the semi-supervised M2) computes it with these settings."""
        batch = as_batch(x)
        if isinstance(model, OwnLoss):
            return model.loss(batch, self, progress)
        return self.trace_loss(model.trace(batch.x, self.k, batch.c), progress)

    def trace_loss(self, trace: Trace, progress: float = 0.0) -> tuple[Tensor, ELBO]:
        """The loss of a trace (a scalar to minimise) and its true ELBO terms (for logging)."""
        terms = elbo(trace, self.kl)
        if self.kind == "iwae":
            bound = {"standard": iwae, "stl": iwae_stl, "dreg": iwae_dreg}[self.estimator](trace)
            return -bound.mean(), terms
        weight = self.kl_weight(progress)
        if self.estimator == "stl":
            return -elbo_stl(trace, weight).mean(), terms
        if self.free_bits > 0:
            kl = free_bits_kl(kl_per_dim(trace, self.kl), self.free_bits)
            return -(terms.reconstruction.mean() - weight * kl), terms
        return -(terms.reconstruction - weight * terms.kl).mean(), terms
