"""Synthetic negative-binomial counts with known parameters: the built-in set ``synthetic-nb``.

The generative model is scVI's with the library size drawn, every parameter fixed by the seed:

    z_n      ~ N(0, I_d)                                         latent state of example n
    b_n      ~ Uniform{0, ..., batches - 1}                      its batch (the covariate)
    rho_n    = softmax(z_n W + a + s_{b_n})                      proportions over F features
    log l_n  ~ N(m, sd^2)                                        library size
    x_nf     ~ NB(mean l_n rho_nf, inverse dispersion theta_f)   counts

with W ``[d, F]`` ~ N(0, w^2), baseline logits a ``[F]`` ~ N(0, 1), batch shifts s ``[batches, F]``
~ N(0, 0.5^2) (s_0 = 0 when there is one batch), and log theta_f ~ Uniform(log 0.5, log 10).
The NB draw is the Gamma-Poisson mixture x ~ Poisson(lambda), lambda ~ Gamma(theta, scale mu / theta).

:func:`synthetic_nb` returns the counts with every true parameter (:class:`SyntheticNB`), for
tests that check what a model recovers; :func:`load_synthetic_nb` is the built-in set: 2,000
examples of 100 features from seed 0 (the data never change; the split follows ``seed``,
stratified by batch), with the categorical covariate ``batch`` (levels ``batch-0``,
``batch-1``) for ``--condition-on batch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vaelab.data.splits import DataSplits, make_splits, prepare_arrays
from vaelab.errors import VaelabError

__all__ = ["SyntheticNB", "synthetic_nb", "load_synthetic_nb", "SYNTHETIC_NB"]

SYNTHETIC_NB = "synthetic-nb"
_BUILTIN = {"n": 2000, "seed": 0, "features": 100, "latent_dim": 2, "batches": 2}


@dataclass(frozen=True)
class SyntheticNB:
    """The true parameters (and latent draws) behind :func:`synthetic_nb`'s counts."""

    z: np.ndarray  # [N, d] latent states
    batch: np.ndarray  # [N] int64 batch ids
    weights: np.ndarray  # [d, F] W
    baseline: np.ndarray  # [F] a
    batch_shift: np.ndarray  # [batches, F] s
    rho: np.ndarray  # [N, F] proportions (rows sum to 1)
    library: np.ndarray  # [N] the drawn l (the observed totals x.sum(1) scatter around it)
    theta: np.ndarray  # [F] inverse dispersion
    library_loc: float  # m
    library_scale: float  # sd

    @property
    def mean(self) -> np.ndarray:
        """mu = l rho ``[N, F]``, the mean of each count given l and z."""
        return self.library[:, None] * self.rho


def synthetic_nb(
    n: int,
    seed: int = 0,
    *,
    features: int = 100,
    latent_dim: int = 2,
    batches: int = 1,
    weight_scale: float = 1.0,
    library_loc: float = math.log(1000.0),
    library_scale: float = 0.3,
    theta: np.ndarray | float | None = None,
) -> tuple[np.ndarray, SyntheticNB]:
    """``n`` count vectors of ``features`` features from the model of the module docstring.

    Args:
        n: examples.
        seed: everything (parameters and draws) follows it.
        features: F.
        latent_dim: d; 0 gives one cell type: rho = softmax(a + s_b) for every example.
        batches: number of batches (1: no batch effect).
        weight_scale: w, the spread of W (how much rho varies with z).
        library_loc, library_scale: m and sd of log l.
        theta: the inverse dispersion per feature (a number or ``[F]``); default drawn
            log-uniform on [0.5, 10].

    Returns:
        counts int64 ``[n, F]`` and the :class:`SyntheticNB` parameters.

    >>> x, p = synthetic_nb(500, seed=1, features=20)
    >>> x.shape, p.rho.shape, p.theta.shape
    ((500, 20), (500, 20), (20,))
    """
    if n < 1 or features < 1 or latent_dim < 0 or batches < 1:
        raise VaelabError(f"synthetic_nb needs n >= 1, features >= 1, latent_dim >= 0 and batches >= 1; "
                          f"got n={n}, features={features}, latent_dim={latent_dim}, batches={batches}")
    rng = np.random.default_rng([seed, 7])
    weights = rng.normal(0.0, weight_scale, (latent_dim, features))
    baseline = rng.normal(0.0, 1.0, features)
    shift = rng.normal(0.0, 0.5, (batches, features))
    shift[0] = 0.0
    if theta is None:
        th = np.exp(rng.uniform(math.log(0.5), math.log(10.0), features))
    else:
        th = np.broadcast_to(np.asarray(theta, dtype=np.float64), (features,)).copy()
        if not (th > 0).all():
            raise VaelabError(f"synthetic_nb: theta must be > 0, got {th.min():g}")
    z = rng.normal(0.0, 1.0, (n, latent_dim))
    batch = rng.integers(0, batches, n)
    logits = z @ weights + baseline + shift[batch]  # [N, F]
    logits -= logits.max(1, keepdims=True)
    rho = np.exp(logits)
    rho /= rho.sum(1, keepdims=True)
    library = np.exp(rng.normal(library_loc, library_scale, n))
    mu = library[:, None] * rho
    rate = rng.gamma(th, mu / th)  # Gamma(shape theta, scale mu / theta): mean mu, variance mu^2 / theta
    counts = rng.poisson(rate).astype(np.int64)
    params = SyntheticNB(z=z, batch=batch.astype(np.int64), weights=weights, baseline=baseline, batch_shift=shift,
                         rho=rho, library=library, theta=th, library_loc=float(library_loc),
                         library_scale=float(library_scale))
    return counts, params


def load_synthetic_nb(
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    covariates: tuple[str, ...] | list[str] = (),
    counts: bool = True,
) -> DataSplits:
    """The built-in set ``synthetic-nb``: 2,000 x 100 counts of 2 batches from seed 0, split by
    ``seed`` (stratified by batch); ``covariates`` may name ``batch`` (categorical)."""
    unknown = [c for c in covariates if c != "batch"]
    if unknown:
        raise VaelabError(f"built-in data set '{SYNTHETIC_NB}' has no covariate '{unknown[0]}' (covariates: batch; "
                          "labels: none)")
    x, params = synthetic_nb(**_BUILTIN)
    (x,), levels = prepare_arrays([x], [f"built-in data '{SYNTHETIC_NB}'"], counts=counts)
    names = tuple(covariates)
    cov = params.batch[:, None].astype(np.float32) if names else None
    return make_splits(
        SYNTHETIC_NB, x, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, discrete_levels=levels,
        covariates=cov, covariate_names=names,
        covariate_classes=tuple(tuple(f"batch-{b}" for b in range(_BUILTIN["batches"])) for _ in names),
        strata=params.batch, counts=counts,
    )
