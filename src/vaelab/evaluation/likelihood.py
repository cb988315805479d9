"""Importance-sampled estimates of log p(x) and the ELBO over a whole data set.

For each example, with K samples z_k ~ q(z|x) and log weights log w_k (see
:meth:`vaelab.model.VAE.trace`),

    log p(x) ~= log (1/K) sum_k w_k,

a consistent estimator (biased low for finite K, by Jensen) that converges to log p(x) as
K grows. Samples are drawn ``k_chunk`` at a time and combined with a running logsumexp, so
memory is bounded by ``batch_size * k_chunk`` whatever K is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..context import Batch
from ..model import VAE
from ..objectives import KLMethod, data_elbo
from .settings import DEFAULTS, K_CHUNK  # noqa: F401  (K_CHUNK: also importable from here, as in 0.1.0)

__all__ = ["LogLikelihood", "DatasetELBO", "log_likelihood", "dataset_elbo"]



@dataclass
class LogLikelihood:
    """Per-example estimates of log p(x) and their summary, in nats.

    ``stderr`` is the standard error of the mean over examples. ``ess`` is the effective
    sample size of the normalised importance weights, (sum w)^2 / sum w^2, per example.
    """

    per_example: Tensor  # [N]
    ess: Tensor  # [N]
    k: int

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
) -> LogLikelihood:
    """Estimate log p(x) (log p(x|c) for a conditional model) for every example of ``x`` with
    ``k`` importance samples.

    Args:
        model: the VAE (put in eval mode by the caller if it has dropout/batch norm).
        x: data ``[N, *x_shape]``.
        c: the context ``[N, P]`` of a conditional model, else None.
        k: importance samples per example (the literature uses 5000; 1000 is common).
        batch_size: examples per forward pass.
        k_chunk: samples per forward pass; memory grows with ``batch_size * k_chunk``.
        device: where to compute (default: the model's device).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if device is None:
        device = next(model.parameters()).device
    per_example, ess = [], []
    for xb, cb in _pairs(x, c, batch_size):
        xb = xb.to(device)
        cb = None if cb is None else cb.to(device)
        log_sum_w = torch.full((xb.shape[0],), -math.inf, device=device)  # log sum_k w_k
        log_sum_w2 = torch.full_like(log_sum_w, -math.inf)  # log sum_k w_k^2
        done = 0
        while done < k:
            kc = min(k_chunk, k - done)
            lw = model.log_weights(xb, kc, cb).double()  # [kc, B]
            log_sum_w = torch.logaddexp(log_sum_w, torch.logsumexp(lw, 0))
            log_sum_w2 = torch.logaddexp(log_sum_w2, torch.logsumexp(2 * lw, 0))
            done += kc
        per_example.append((log_sum_w - math.log(k)).cpu())
        ess.append(torch.exp(2 * log_sum_w - log_sum_w2).cpu())
    return LogLikelihood(per_example=torch.cat(per_example), ess=torch.cat(ess), k=k)


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
