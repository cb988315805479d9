"""Latent health: KL per dimension, active units, mutual information, posterior collapse.

For a data set x_1..x_N (the empirical distribution p_d(x)) and an encoder q(z|x):

* **KL per dimension**, (1/N) sum_n KL(q(z_d|x_n) || p(z_d)), in closed form when q is a
  diagonal Gaussian (``Independent(Normal)``) and p a factorised Normal; the total KL is
  then their sum. For other posteriors (full covariance, flows) a per-dimension KL is not
  defined: the marginals q(z_d|x) do not add up to KL(q || p) unless q factorises, so only
  the total is reported (``kl_per_dim`` is ``None``).
* **Active units** (Burda et al. 2016): dimension d is active when the posterior mean
  moves with the input, Var_n(E_q[z_d | x_n]) > 0.01.
* **ELBO surgery** (Hoffman & Johnson 2016): with the aggregate posterior
  q(z) = (1/N) sum_m q(z|x_m), the average KL splits into

      (1/N) sum_n KL(q(z|x_n) || p(z)) = I(x; z) + KL(q(z) || p(z)),

  the mutual information between data index and code under q, and the marginal KL.
  Both are estimated by Monte Carlo: draw n uniformly, z ~ q(z|x_n), and

      log q(z) = logsumexp_m log q(z|x_m) - log N        (over ALL N examples, chunked)
      I        ~= mean[log q(z|x_n) - log q(z)],   KL(q(z)||p(z)) ~= mean[log q(z) - log p(z)].

  Because the mixture is taken over the whole data set (not a minibatch), log q(z) is exact
  for the empirical aggregate posterior and both estimators are unbiased for it; their
  standard errors are the Monte-Carlo ones. The quantity itself is bounded: I <= log N,
  so with few examples and sharp posteriors it saturates at log N and underestimates the
  information the encoder would carry about a larger population of x. (Minibatch
  estimators that mix over M < N components are biased further: log q(z) is overestimated
  by up to log(N/M) for the sample's own component.)

A **collapsed** posterior ignores x: q(z|x) ~= p(z), no active units, KL near zero. It is
flagged when no unit is active or the average KL is below ``collapse_kl`` nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, kl_divergence

from ..model import VAE
from .likelihood import _batches, _pairs

__all__ = ["LatentDiagnostics", "LatentSummary", "latent_diagnostics", "kl_per_dimension", "ACTIVE_THRESHOLD"]

ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016): Var_x(E_q[z_d]) above this is an active unit
COLLAPSE_KL = 0.1  # nats per example: below this the posterior carries (almost) nothing


@dataclass
class LatentDiagnostics:
    """How much the latent code is used, per dimension and in total (nats per example).

    ``activity`` is Var_n(E_q[z_d|x_n]) ``[D]``; ``kl_per_dim`` ``[D]`` is ``None`` when the
    posterior is not a diagonal Gaussian. ``*_stderr`` are Monte-Carlo standard errors.
    """

    n: int
    kl: float
    kl_per_dim: Tensor | None  # [D]
    activity: Tensor  # [D]
    threshold: float
    mutual_information: float
    mutual_information_stderr: float
    marginal_kl: float
    marginal_kl_stderr: float
    mi_samples: int
    collapse_kl: float
    warnings: list[str] = field(default_factory=list)

    @property
    def latent_dim(self) -> int:
        return int(self.activity.numel())

    @property
    def active(self) -> Tensor:
        """``[D]`` bool: which dimensions are active units."""
        return self.activity > self.threshold

    @property
    def active_units(self) -> int:
        return int(self.active.sum())

    @property
    def collapsed(self) -> bool:
        return self.active_units == 0 or self.kl < self.collapse_kl

    def summary(self) -> "LatentSummary":
        """The numbers without the tensors: what ``eval.json`` keeps under ``latents``."""
        return LatentSummary(
            latent_dim=self.latent_dim,
            kl=self.kl,
            kl_per_dim=None if self.kl_per_dim is None else tuple(self.kl_per_dim.tolist()),
            activity=tuple(self.activity.tolist()),
            active_threshold=self.threshold,
            active_units=self.active_units,
            active=tuple(self.active.tolist()),
            mutual_information=self.mutual_information,
            mutual_information_stderr=self.mutual_information_stderr,
            mutual_information_max=math.log(self.n),
            marginal_kl=self.marginal_kl,
            marginal_kl_stderr=self.marginal_kl_stderr,
            mi_samples=self.mi_samples,
            collapse_kl=self.collapse_kl,
            collapsed=self.collapsed,
            warnings=tuple(self.warnings),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (:meth:`LatentSummary.to_dict`)."""
        return self.summary().to_dict()


@dataclass(frozen=True)
class LatentSummary:
    """Latent health as plain numbers (nats per example), the form that crosses into the
    report and the explorer; :meth:`to_dict` is its JSON (``eval.json``'s ``latents``).

    ``kl_per_dim`` ``[D]`` is ``None`` when the posterior is not a diagonal Gaussian;
    ``activity`` ``[D]`` is Var_n(E_q[z_d|x_n]) and ``active`` ``[D]`` whether it exceeds
    ``active_threshold``; ``mutual_information_max`` is log N, the ceiling of I(x; z).
    """

    latent_dim: int
    kl: float
    kl_per_dim: tuple[float, ...] | None
    activity: tuple[float, ...]
    active_threshold: float
    active_units: int
    active: tuple[bool, ...]
    mutual_information: float
    mutual_information_stderr: float
    mutual_information_max: float
    marginal_kl: float
    marginal_kl_stderr: float
    mi_samples: int
    collapse_kl: float
    collapsed: bool
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values: tuples become lists."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def kl_per_dimension(q: Distribution, p: Distribution) -> Tensor | None:
    """KL(q(z_d|x) || p(z_d)) ``[B, D]`` when both factorise over dimensions, else ``None``.

    Factorised means ``Independent(Normal)`` (or any pair of ``Independent`` wrappers whose
    base distributions have a registered closed-form KL) with one reinterpreted dimension.
    """
    if not (isinstance(q, Independent) and isinstance(p, Independent)):
        return None
    if q.reinterpreted_batch_ndims != 1 or p.reinterpreted_batch_ndims != 1:
        return None
    try:
        return kl_divergence(q.base_dist, p.base_dist)  # [B, D]
    except NotImplementedError:
        return None


def _posterior_mean(q: Distribution, samples: int = 64) -> Tensor:
    """E_q[z] ``[B, D]``: exact when the distribution knows it, else a Monte-Carlo mean."""
    try:
        return q.mean
    except NotImplementedError:
        return q.sample((samples,)).mean(0)


@torch.no_grad()
def latent_diagnostics(
    model: VAE,
    x: Tensor,
    *,
    mi_samples: int = 1000,
    threshold: float = ACTIVE_THRESHOLD,
    collapse_kl: float = COLLAPSE_KL,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    c: Tensor | None = None,
) -> LatentDiagnostics:
    """KL per dimension, active units, I(x;z) and KL(q(z)||p(z)) over the examples ``x``.

    Uses the global random number generator (seed it for reproducible numbers).

    Args:
        model: the VAE.
        x: data ``[N, *x_shape]``, N >= 2.
        mi_samples: Monte-Carlo draws (n uniform, z ~ q(z|x_n)) for I(x;z) and the marginal
            KL; each costs N posterior density evaluations.
        threshold: activity above which a dimension counts as active.
        collapse_kl: average KL (nats) below which the posterior counts as collapsed.
        batch_size: examples encoded per pass.
        device: where to compute (default: the model's device).
        c: the context ``[N, P]`` of a conditional model: q(z|x, c) and p(z|c); the
            aggregate posterior mixes over the (x, c) pairs, so I is the information z carries
            about the example given its context's prior.

    Example:
        >>> d = latent_diagnostics(model, x_test)
        >>> d.active_units, d.mutual_information, d.collapsed
    """
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"latent diagnostics need at least 2 examples, got {n}")
    if mi_samples < 1:
        raise ValueError(f"mi_samples must be >= 1, got {mi_samples}")
    if device is None:
        device = next(model.parameters()).device
    def on(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(device)

    posteriors, means, kls, kl_dims = [], [], [], []
    for xb, cb in _pairs(x, c, batch_size):
        q = model.encode(xb.to(device), on(cb))  # batch [b], event [D]
        prior = model.prior_distribution(on(cb))
        posteriors.append(q)
        means.append(_posterior_mean(q).double())  # [b, D]
        per_dim = kl_per_dimension(q, prior)
        if per_dim is not None:
            kl_dims.append(per_dim.double())
            kls.append(per_dim.double().sum(-1))
        else:
            try:
                kls.append(kl_divergence(q, prior).double())  # [b]
            except NotImplementedError:
                kls = []  # no closed form: the Monte-Carlo estimate below is used
    activity = torch.cat(means).var(0, unbiased=True).cpu()  # [D]
    kl_per_dim = torch.cat(kl_dims).mean(0).cpu() if len(kl_dims) == len(posteriors) else None

    # --- ELBO surgery by Monte Carlo over (n, z ~ q(z|x_n)) pairs -------------------------
    idx = torch.randint(n, (mi_samples,))  # [M]
    log_q_own, log_q_agg, log_p = [], [], []
    for ib in _batches(idx, batch_size):
        cb = None if c is None else on(c[ib])
        q = model.encode(x[ib].to(device), cb)
        prior = model.prior_distribution(cb)
        z = q.sample()  # [m, D]
        log_q_own.append(q.log_prob(z).double())  # [m]
        log_p.append(prior.log_prob(z).double())  # [m]
        running = torch.full((z.shape[0],), -math.inf, dtype=torch.float64, device=z.device)
        for qc in posteriors:  # every component of the aggregate posterior
            lq = qc.log_prob(z[:, None, :]).double()  # [m, b]
            running = torch.logaddexp(running, torch.logsumexp(lq, dim=1))
        log_q_agg.append(running - math.log(n))
    own, agg, lp = torch.cat(log_q_own).cpu(), torch.cat(log_q_agg).cpu(), torch.cat(log_p).cpu()
    mi_terms, marginal_terms = own - agg, agg - lp  # [M] each
    kl = float(torch.cat(kls).mean()) if kls else float((own - lp).mean())

    def se(t: Tensor) -> float:
        return float(t.std() / math.sqrt(t.numel())) if t.numel() > 1 else 0.0

    result = LatentDiagnostics(
        n=n, kl=kl, kl_per_dim=kl_per_dim, activity=activity, threshold=threshold,
        mutual_information=float(mi_terms.mean()), mutual_information_stderr=se(mi_terms),
        marginal_kl=float(marginal_terms.mean()), marginal_kl_stderr=se(marginal_terms),
        mi_samples=mi_samples, collapse_kl=collapse_kl,
    )
    result.warnings.extend(_warnings(result))
    return result


def _warnings(d: LatentDiagnostics) -> list[str]:
    a, dim = d.active_units, d.latent_dim
    if d.collapsed:
        return [
            f"posterior collapse: {a} of {dim} latent dimensions are active and the average "
            f"KL(q(z|x) || p(z)) is {d.kl:.3g} nats: q(z|x) is (almost) the prior whatever x is, "
            "so the code carries no information and the decoder models the data alone "
            "(try a smaller KL weight, KL annealing, or a weaker decoder)"
        ]
    out = []
    if a < dim / 2:
        out.append(
            f"only {a} of {dim} latent dimensions are active (Var_x(E_q[z_d]) > {d.threshold:g}); "
            "the others are unused and could be dropped"
        )
    if d.mutual_information > 0.9 * math.log(d.n):
        out.append(
            f"I(x;z) = {d.mutual_information:.2f} nats is close to its ceiling log N = "
            f"{math.log(d.n):.2f} for N = {d.n} examples: evaluate more examples to measure it"
        )
    return out
