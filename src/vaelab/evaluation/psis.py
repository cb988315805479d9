"""Pareto k-hat of importance weights: how far an importance-sampled log p(x) can be trusted.

Vehtari, Simpson, Gelman, Yao & Gabry (2024), "Pareto smoothed importance sampling" (JMLR).
The right tail of the importance weights w_k = p(x, z_k) / q(z_k|x) is modelled as a
generalized Pareto distribution (GPD),

    p(w - u | w > u) = (1/sigma) (1 + k (w - u) / sigma)^(-1/k - 1),

fitted to the M = ceil(min(K / 5, 3 sqrt(K))) largest of the K weights, above the threshold u
(the (M+1)-th largest). The shape k says how heavy the tail is: the weights have 1/k finite
moments, so

* k-hat < 0.5: finite variance, the estimate converges at the usual Monte-Carlo rate;
* 0.5 <= k-hat < 0.7: infinite variance, but the estimate is still usable in practice;
* k-hat >= 0.7: the estimate is unreliable, its bias may be large and its reported error
  meaningless; a better proposal (or AIS) is needed.

The fit is Zhang & Stephens (2009) (an empirical-Bayes quadrature over the GPD's
b = -k / sigma with ``30 + sqrt(M)`` nodes), then the weakly informative prior of Vehtari et
al. pulls k towards 0.5: k-hat = (M k + 10 * 0.5) / (M + 10); the same estimator as the
paper's reference code (``loo``, ``arviz.psislw``), written here in torch and batched over
examples.

Weights that are constant to floating-point precision (the proposal is the exact posterior;
the M + 1 largest log weights lie within 1000 machine epsilons of the input's precision of
each other) have no tail to fit, only rounding noise: their k-hat is :data:`KHAT_FLOOR` (= -1, the shape of a uniform tail;
every k-hat is clipped below there, as nothing lighter-tailed matters for trust).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["pareto_khat", "tail_length", "KHAT_FLOOR", "KHAT_BAD", "KHAT_GOOD", "MIN_TAIL"]

KHAT_GOOD = 0.5  # below: finite variance of the weights
KHAT_BAD = 0.7  # above: the importance-sampling estimate is not to be trusted
MIN_TAIL = 5  # fewer tail weights than this (K < 25) give no k-hat (as in arviz)
KHAT_FLOOR = -1.0  # reported for weights without a tail (constant to floating-point precision)


def tail_length(k: int) -> int:
    """M = ceil(min(K / 5, 3 sqrt(K))): how many of the K largest weights the GPD is fitted to."""
    return int(math.ceil(min(0.2 * k, 3.0 * math.sqrt(k))))


def _gpd_fit(tail: Tensor) -> Tensor:
    """Shape k of a GPD fitted to exceedances ``tail`` ``[B, M]`` (sorted ascending, >= 0).

    Zhang & Stephens (2009) with the weakly informative prior of Vehtari et al.; rows whose
    exceedances are all 0 give ``-inf``.
    """
    b_rows, m = tail.shape
    n_nodes = 30 + int(math.sqrt(m))
    j = torch.arange(1, n_nodes + 1, dtype=tail.dtype, device=tail.device)  # [J]
    quartile = tail[:, int(m / 4 + 0.5) - 1].clamp(min=torch.finfo(tail.dtype).tiny)  # [B]
    largest = tail[:, -1]  # [B]
    ok = largest > 0
    safe_largest = torch.where(ok, largest, torch.ones_like(largest))
    b = (1 - torch.sqrt(n_nodes / (j - 0.5)))[None, :] / (3 * quartile[:, None]) + 1 / safe_largest[:, None]  # [B, J]
    k = torch.log1p(-b[:, :, None] * tail[:, None, :]).mean(-1)  # [B, J]
    profile = m * (torch.log(-(b / k)) - k - 1)  # [B, J]: profile log-likelihood at each node
    weights = torch.softmax(profile, dim=-1)  # [B, J]: posterior weights of the nodes
    weights = torch.where(weights >= 10 * torch.finfo(tail.dtype).eps, weights, torch.zeros_like(weights))
    weights = weights / weights.sum(-1, keepdim=True)
    b_post = (b * weights).sum(-1)  # [B]
    k_post = torch.log1p(-b_post[:, None] * tail).mean(-1)  # [B]
    k_hat = (m * k_post + 10 * 0.5) / (m + 10)
    return torch.where(ok, k_hat, torch.full_like(k_hat, -math.inf))


def pareto_khat(log_weights: Tensor, *, total: int | None = None) -> Tensor:
    """Pareto k-hat of each column of importance log weights ``[K, B]`` (or ``[M+1, B]``).

    Args:
        log_weights: log w ``[K, B]`` for B examples; only the M + 1 largest of each column
            are used, so a caller that streams the weights may pass just those (their top
            ``tail_length(total) + 1``) and say how many there were in ``total``.
        total: K, the number of weights each column summarises (default: ``log_weights.shape[0]``).

    Returns:
        k-hat ``[B]`` (float64), clipped below at :data:`KHAT_FLOOR`; NaN for a column with a NaN weight.

    Example:
        >>> lw = model.log_weights(x, 5000)  # [K, B]
        >>> (pareto_khat(lw) > KHAT_BAD).float().mean()  # share of untrustworthy examples
    """
    if log_weights.ndim != 2:
        raise ValueError(f"Pareto k-hat needs log weights [K, B] (samples first, then examples), "
                         f"got shape {tuple(log_weights.shape)}")
    k = log_weights.shape[0] if total is None else total
    m = tail_length(k)
    if m < MIN_TAIL or log_weights.shape[0] < m + 1:
        raise ValueError(f"Pareto k-hat needs K >= 25 weights and the {m + 1} largest of each column, "
                         f"got {log_weights.shape[0]} of K = {k}")
    lw = log_weights.double()
    top = torch.topk(lw, m + 1, dim=0).values.flip(0)  # [M+1, B], ascending
    # weights equal up to rounding (the proposal is the posterior): differences of log w below
    # what the input's precision resolves are noise, and a tail fitted to them meaningless
    resolution = 1e3 * torch.finfo(log_weights.dtype).eps * top[-1].abs().clamp(min=1.0)  # [B]
    flat = (top[-1] - top[0]) < resolution  # [B]
    top = top - top[-1:]  # log w - max log w, so the largest weight is 1
    cutoff = top[0].clamp(min=math.log(torch.finfo(torch.float64).tiny))  # [B]: log u
    tail = (top[1:].exp() - cutoff.exp()[None, :]).clamp(min=0).T.contiguous()  # [B, M] exceedances, ascending
    khat = _gpd_fit(tail).clamp(min=KHAT_FLOOR)
    khat = torch.where(flat, torch.full_like(khat, KHAT_FLOOR), khat)
    # a NaN weight leaves nothing to judge: NaN, never the floor (which would read as reliable)
    return torch.where(torch.isnan(lw).any(0), torch.full_like(khat, math.nan), khat)
