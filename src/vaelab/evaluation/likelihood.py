"""Importance-sampled estimates of log p(x) and the ELBO over a whole data set.

For each example, with K samples z_k ~ q(z|x) and log weights log w_k (see
:meth:`vaelab.model.VAE.trace`),

    log p(x) ~= log (1/K) sum_k w_k,

a consistent estimator (biased low for finite K, by Jensen) that converges to log p(x) as
K grows. Samples are drawn ``k_chunk`` at a time and combined with a running logsumexp, so
memory is bounded by ``batch_size * k_chunk`` whatever K is.

How far the estimate can be trusted is told by the Pareto k-hat of the weights
(:mod:`~vaelab.evaluation.psis`, Vehtari et al.): the largest ``tail_length(K) + 1`` log weights
of each example are kept while streaming (a running top-M), and a generalized Pareto
distribution fitted to them. Above 0.7 the estimate is unreliable, whatever its ESS says.

The proposal need not be the encoder: ``proposal(xb, cb)`` may return any distribution over
z with ``sample`` and ``log_prob`` (e.g. the defensive mixture of
:mod:`~vaelab.evaluation.proposals`); the weights are then p(x, z) / proposal(z).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from typing import Callable

from torch.distributions import Distribution

from ..context import Batch
from ..errors import VaelabError
from ..model import VAE
from ..objectives import KLMethod, data_elbo
from .memory import check_fits
from .psis import MIN_TAIL, pareto_khat, tail_length
from .settings import DEFAULTS, K_CHUNK  # noqa: F401  (K_CHUNK: also importable from here, as in 0.1.0)

__all__ = ["LogLikelihood", "DatasetELBO", "log_likelihood", "dataset_elbo"]



@dataclass
class LogLikelihood:
    """Per-example estimates of log p(x) and their summary, in nats.

    ``stderr`` is the standard error of the mean over examples. ``ess`` is the effective
    sample size of the normalised importance weights, (sum w)^2 / sum w^2, per example;
    ``khat`` the Pareto k-hat of the weights per example (None when K < 5, or for AIS);
    ``estimator`` names how the estimate was made (``"is"``: importance sampling from the
    encoder, ``"mixture"``: from the defensive mixture, ``"ais"``: annealed IS with ``k``
    chains); ``seconds`` is the wall time it took.
    """

    per_example: Tensor  # [N]
    ess: Tensor  # [N]
    k: int
    khat: Tensor | None = None  # [N]
    estimator: str = "is"
    seconds: float = 0.0

    @property
    def mc_se(self) -> Tensor:
        """Per-example Monte-Carlo standard error sqrt(1/ESS - 1/K) ``[N]`` (delta method)."""
        return (1.0 / self.ess - 1.0 / self.k).clamp(min=0).sqrt()

    @property
    def mean(self) -> float:
        return float(self.per_example.mean())

    @property
    def stderr(self) -> float:
        n = self.per_example.numel()
        return float(self.per_example.std() / math.sqrt(n)) if n > 1 else float("nan")


@dataclass
class DatasetELBO:
    """ELBO and its terms averaged over a data set, in nats per example."""

    elbo: float
    reconstruction: float
    kl: float
    n: int


def _batches(x: Tensor, batch_size: int):
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size]


def _pairs(x: Tensor, c: Tensor | None, batch_size: int):
    """(x, c) slices of ``batch_size`` rows; c may be None (an unconditional model)."""
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size], None if c is None else c[i : i + batch_size]


@torch.no_grad()
def log_likelihood(
    model: VAE,
    x: Tensor,
    k: int = DEFAULTS.k,
    *,
    batch_size: int = DEFAULTS.batch_size,
    k_chunk: int = DEFAULTS.k_chunk,
    device: torch.device | str | None = None,
    c: Tensor | None = None,
    proposal: Callable[[Tensor, Tensor | None], Distribution] | None = None,
    estimator: str = "is",
) -> LogLikelihood:
    """Estimate log p(x) (log p(x|c) for a conditional model) for every example of ``x`` with
    ``k`` importance samples, and the Pareto k-hat of their weights.

    Args:
        model: the VAE (put in eval mode by the caller if it has dropout/batch norm).
        x: data ``[N, *x_shape]``.
        c: the context ``[N, P]`` of a conditional model, else None.
        k: importance samples per example (the literature uses 5000; 1000 is common).
        batch_size: examples per forward pass.
        k_chunk: samples per forward pass; memory grows with ``batch_size * k_chunk``.
        device: where to compute (default: the model's device).
        proposal: ``proposal(xb, cb)`` -> a distribution over z, batch ``[B]``, event ``[D]``,
            to sample from instead of the encoder (a :class:`~vaelab.model.VAE` only).
        estimator: the name recorded in the result (``"is"``, ``"mixture"``).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise VaelabError(f"k must be >= 1 (importance samples per example), got {k!r}")
    if isinstance(k_chunk, bool) or not isinstance(k_chunk, int) or k_chunk < 1:
        raise VaelabError(f"k_chunk must be a whole number >= 1, got {k_chunk!r}")
    if device is None:
        device = next(model.parameters()).device
    if isinstance(model, VAE) and x.shape[0] > 0:  # refuse a pass that will not fit, before it starts
        check_fits(model, x[:1].to(device), None if c is None else c[:1].to(device),
                   min(batch_size, x.shape[0]) * min(k_chunk, k),
                   what=f"log p(x) with {min(batch_size, x.shape[0])} examples x {min(k_chunk, k)} samples per pass",
                   fix="lower --batch-size or --k-chunk")
    began = time.perf_counter()
    keep = tail_length(k) + 1 if tail_length(k) >= MIN_TAIL else 0  # the largest log weights, for the Pareto fit
    per_example, ess, khat = [], [], []
    for xb, cb in _pairs(x, c, batch_size):
        xb = xb.to(device)
        cb = None if cb is None else cb.to(device)
        q = None if proposal is None else proposal(xb, cb)
        log_sum_w = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=device)  # log sum_k w_k
        log_sum_w2 = torch.full_like(log_sum_w, -math.inf)  # log sum_k w_k^2
        top = torch.empty((0, xb.shape[0]), device=device)  # [<=M+1, B]
        done = 0
        while done < k:
            kc = min(k_chunk, k - done)
            raw = model.log_weights(xb, kc, cb) if q is None else _proposal_weights(model, xb, cb, q, kc)  # [kc, B]
            lw = raw.double()
            log_sum_w = torch.logaddexp(log_sum_w, torch.logsumexp(lw, 0))
            log_sum_w2 = torch.logaddexp(log_sum_w2, torch.logsumexp(2 * lw, 0))
            if keep:
                both = torch.cat([top.to(raw.dtype), raw])  # the model's precision: k-hat's resolution
                top = torch.topk(both, min(keep, both.shape[0]), dim=0).values
            done += kc
        per_example.append((log_sum_w - math.log(k)).cpu())
        ess.append(torch.exp(2 * log_sum_w - log_sum_w2).cpu())
        if keep:
            khat.append(pareto_khat(top, total=k).cpu())
    return LogLikelihood(per_example=torch.cat(per_example), ess=torch.cat(ess), k=k,
                         khat=torch.cat(khat) if keep else None, estimator=estimator,
                         seconds=time.perf_counter() - began)


def _proposal_weights(model: VAE, x: Tensor, c: Tensor | None, q: Distribution, k: int) -> Tensor:
    """log p(x, z_k|c) - log q(z_k) for k draws of the proposal q, ``[k, B]``."""
    z = q.sample((k,))  # [k, B, D]
    return model.decode(z, c).log_prob(x) + model.prior_distribution(c).log_prob(z) - q.log_prob(z)


@torch.no_grad()
def dataset_elbo(
    model: VAE,
    x: Tensor,
    *,
    k: int = 1,
    kl: KLMethod = "auto",
    batch_size: int = 500,
    device: torch.device | str | None = None,
    c: Tensor | None = None,
) -> DatasetELBO:
    """The ELBO, reconstruction and KL terms averaged over ``x`` (``k`` samples per example;
    ``c`` the context of a conditional model)."""
    if device is None:
        device = next(model.parameters()).device
    sums = torch.zeros(3, dtype=torch.float64)
    for xb, cb in _pairs(x, c, batch_size):
        terms = data_elbo(model, Batch(xb.to(device), None if cb is None else cb.to(device)), k, kl)
        sums += torch.stack(
            [terms.elbo.sum(), terms.reconstruction.sum(), terms.kl.sum()]
        ).double().cpu()
    n = x.shape[0]
    e, r, kl_value = (sums / n).tolist()
    return DatasetELBO(elbo=e, reconstruction=r, kl=kl_value, n=n)
