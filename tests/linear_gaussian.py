"""The linear-Gaussian model: a VAE whose every number has a closed form (a test helper).

    p(z) = N(0, I_D),    p(x|z) = N(W z + b, s^2 I_P)

    p(x)   = N(b, W W^T + s^2 I_P)
    p(z|x) = N(m, S),    S = (I_D + W^T W / s^2)^{-1},    m = S W^T (x - b) / s^2

The model is built from vaelab parts (a ``GaussianDecoder`` on an ``nn.Linear``, a
``StandardNormalPrior``) with an encoder of our choosing, so tests compare what the library
computes with these formulas. Everything is float64.

For a Gaussian target N(m, S), the mean-field (diagonal) Gaussian q that minimises
KL(q || N(m, S)) has mean m and variances 1 / diag(S^{-1}); the ELBO of any q falls short of
log p(x) by exactly KL(q || p(z|x)), which :func:`kl_gaussians` gives in closed form.

The conditional model (:class:`ConditionalLinearGaussian`) adds a context c through its
features h = h(c) ``[N, C]`` (one-hot labels, standardised covariates, an embedding):

    p(z) = N(0, I_D),    p(x|z, c) = N(W z + B h + b, s^2 I_P)

so x - B h follows the unconditional model above: log p(x|c) = log N(x - B h; b, W W^T + s^2 I)
and p(z|x, c) = p(z|x - B h). With a prior p(z|c) = N(mu(h), diag(sigma(h)^2)) instead,
p(x|c) = N(W mu + B h + b, W diag(sigma^2) W^T + s^2 I).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, MultivariateNormal

from vaelab.build import build_vae
from vaelab.context import Variable
from vaelab.distributions import GaussianDecoder, StandardNormalPrior, diagonal_gaussian
from vaelab.model import VAE

__all__ = ["AffineGaussianEncoder", "LinearGaussian", "ConditionalLinearGaussian", "chi2_gaussians", "kl_gaussians",
           "inverse_softplus"]

DTYPE = torch.float64


def kl_gaussians(m_q: Tensor, cov_q: Tensor, m_p: Tensor, cov_p: Tensor) -> Tensor:
    """KL(N(m_q, cov_q) || N(m_p, cov_p)), batched over leading dims of the means ``[..., D]``.

    0.5 * [tr(cov_p^{-1} cov_q) + (m_p - m_q)^T cov_p^{-1} (m_p - m_q) - D
           + log det cov_p - log det cov_q]
    """
    d = m_q.shape[-1]
    prec_p = torch.linalg.inv(cov_p)
    diff = (m_p - m_q).unsqueeze(-1)  # [..., D, 1]
    trace = torch.diagonal(prec_p @ cov_q, dim1=-2, dim2=-1).sum(-1)
    maha = (diff.transpose(-1, -2) @ prec_p @ diff)[..., 0, 0]
    logdet = torch.logdet(cov_p) - torch.logdet(cov_q)
    return 0.5 * (trace + maha - d + logdet)


def chi2_gaussians(m_q: Tensor, cov_q: Tensor, m_p: Tensor, cov_p: Tensor) -> Tensor:
    """Var_q[p/q] = E_q[(p/q)^2] - 1 for normalised Gaussians p, q (inf when it diverges).

    E_q[(p/q)^2] = int p^2 / q; with precisions A = cov_p^{-1}, B = cov_q^{-1} and
    C = 2A - B (must be positive definite for the integral to be finite),

        log int p^2/q = -log det cov_p + 0.5 log det cov_q - 0.5 log det C
                        - 0.5 * (2 m_p^T A m_p - m_q^T B m_q - u^T C^{-1} u),
        u = 2 A m_p - B m_q.

    The variance of the normalised importance weights; the IWAE bias is about -chi2 / (2K).
    """
    a, bq = torch.linalg.inv(cov_p), torch.linalg.inv(cov_q)
    c = 2 * a - bq
    if torch.linalg.eigvalsh(c).min() <= 0:
        return torch.full(m_q.shape[:-1], math.inf, dtype=m_q.dtype)
    u = (2 * a @ m_p.unsqueeze(-1) - bq @ m_q.unsqueeze(-1))  # [..., D, 1]
    quad = (
        2 * (m_p.unsqueeze(-2) @ a @ m_p.unsqueeze(-1))
        - (m_q.unsqueeze(-2) @ bq @ m_q.unsqueeze(-1))
        - (u.transpose(-1, -2) @ torch.linalg.solve(c, u))
    )[..., 0, 0]
    log_int = -torch.logdet(cov_p) + 0.5 * torch.logdet(cov_q) - 0.5 * torch.logdet(c) - 0.5 * quad
    return torch.expm1(log_int)


class AffineGaussianEncoder(nn.Module):
    """q(z|x) = N(A x + c, cov), a Gaussian whose mean is affine in x; no trainable parameters.

    ``diagonal=True`` returns ``vaelab.distributions.diagonal_gaussian`` (cov must be
    diagonal), otherwise a full-covariance ``MultivariateNormal``; both have batch ``[B]``
    and event ``[D]``.
    """

    def __init__(self, a: Tensor, c: Tensor, cov: Tensor, diagonal: bool) -> None:
        super().__init__()
        self.register_buffer("a", a)  # [D, P]
        self.register_buffer("c", c)  # [D]
        self.register_buffer("cov", cov)  # [D, D]
        self.register_buffer("scale_tril", torch.linalg.cholesky(cov))  # [D, D]
        self.diagonal = diagonal

    def forward(self, x: Tensor) -> Distribution:
        loc = x @ self.a.T + self.c  # [B, D]
        if self.diagonal:
            scale = torch.diagonal(self.cov).sqrt().expand_as(loc)
            return diagonal_gaussian(loc, scale)
        return MultivariateNormal(loc, scale_tril=self.scale_tril, validate_args=False)


@dataclass
class LinearGaussian:
    """Parameters W ``[P, D]``, b ``[P]`` and noise scale s of the linear-Gaussian model."""

    w: Tensor
    b: Tensor
    s: float

    @classmethod
    def random(cls, latent_dim: int = 3, x_dim: int = 5, s: float = 0.7, seed: int = 0) -> LinearGaussian:
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(x_dim, latent_dim, generator=g, dtype=DTYPE)
        b = torch.randn(x_dim, generator=g, dtype=DTYPE)
        return cls(w=w, b=b, s=s)

    @property
    def latent_dim(self) -> int:
        return self.w.shape[1]

    @property
    def x_dim(self) -> int:
        return self.w.shape[0]

    # --- exact quantities -------------------------------------------------------------
    def marginal(self) -> MultivariateNormal:
        """p(x) = N(b, W W^T + s^2 I)."""
        cov = self.w @ self.w.T + self.s**2 * torch.eye(self.x_dim, dtype=DTYPE)
        return MultivariateNormal(self.b, covariance_matrix=cov)

    def log_px(self, x: Tensor) -> Tensor:
        """Exact log p(x), ``[B]``."""
        return self.marginal().log_prob(x)

    def sample_x(self, n: int, seed: int = 1) -> Tensor:
        """n draws from p(x), ``[n, P]``."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=g, dtype=DTYPE)
        eps = torch.randn(n, self.x_dim, generator=g, dtype=DTYPE)
        return z @ self.w.T + self.b + self.s * eps

    def posterior_precision(self) -> Tensor:
        """S^{-1} = I + W^T W / s^2, ``[D, D]``."""
        return torch.eye(self.latent_dim, dtype=DTYPE) + self.w.T @ self.w / self.s**2

    def posterior_gain(self) -> tuple[Tensor, Tensor]:
        """(A, c) with m(x) = A x + c: A = S W^T / s^2, c = -A b."""
        cov = self.posterior_cov()
        a = cov @ self.w.T / self.s**2
        return a, -a @ self.b

    def posterior_cov(self) -> Tensor:
        return torch.linalg.inv(self.posterior_precision())

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The exact posterior p(z|x) = N(m, S): m ``[B, D]``, S ``[D, D]``."""
        cov = self.posterior_cov()
        m = (x - self.b) @ self.w @ cov.T / self.s**2  # rows: S W^T (x - b) / s^2
        return m, cov

    def mean_field_cov(self) -> Tensor:
        """diag(1 / diag(S^{-1})): the KL(q||p)-optimal diagonal covariance."""
        return torch.diag(1.0 / torch.diagonal(self.posterior_precision()))

    def elbo_gap(self, x: Tensor, q_mean: Tensor, q_cov: Tensor) -> Tensor:
        """KL(q || p(z|x)) = log p(x) - ELBO(q), ``[B]``."""
        m, cov = self.posterior(x)
        return kl_gaussians(q_mean, q_cov.expand(m.shape[0], -1, -1), m, cov.expand(m.shape[0], -1, -1))

    # --- encoders and the VAE ---------------------------------------------------------
    def exact_encoder(self) -> AffineGaussianEncoder:
        """q(z|x) = p(z|x), full covariance."""
        a, c = self.posterior_gain()
        return AffineGaussianEncoder(a, c, self.posterior_cov(), diagonal=False)

    def mean_field_encoder(self, shift: float = 0.0, inflate: float = 1.0) -> AffineGaussianEncoder:
        """The optimal diagonal q, its mean moved by ``shift`` in every coordinate and its
        standard deviations multiplied by ``inflate``."""
        a, c = self.posterior_gain()
        cov = self.mean_field_cov() * inflate**2
        return AffineGaussianEncoder(a, c + shift, cov, diagonal=True)

    def vae(self, encoder: nn.Module) -> VAE:
        """A vaelab VAE with this decoder and prior, float64."""
        # Build under a float64 default: the decoder's fixed scale is a buffer made from a
        # Python float, which a float32 default would round before ``.to(float64)``.
        previous = torch.get_default_dtype()
        torch.set_default_dtype(DTYPE)
        try:
            linear = nn.Linear(self.latent_dim, self.x_dim)
            with torch.no_grad():
                linear.weight.copy_(self.w)
                linear.bias.copy_(self.b)
            decoder = GaussianDecoder(linear, x_shape=(self.x_dim,), scale=self.s, learn_scale="fixed")
            model = VAE(encoder, decoder, StandardNormalPrior(self.latent_dim))
        finally:
            torch.set_default_dtype(previous)
        return model.to(DTYPE)


def inverse_softplus(y: Tensor) -> Tensor:
    """The r with softplus(r) = y (y > 0), stable for large y."""
    return y + torch.log(-torch.expm1(-y))


@dataclass
class ConditionalLinearGaussian:
    """x = W z + B h(c) + b + s eps, z ~ N(0, I): the linear-Gaussian model with a context.

    ``base`` holds W, b and s; ``bmat`` is B ``[P, C]``. Every exact quantity is the
    unconditional one at the shifted data x - B h (see the module docstring).
    """

    base: LinearGaussian
    bmat: Tensor  # [P, C]

    @classmethod
    def random(cls, latent_dim: int = 3, x_dim: int = 5, context_dim: int = 4, s: float = 0.7,
               seed: int = 0) -> "ConditionalLinearGaussian":
        base = LinearGaussian.random(latent_dim, x_dim, s, seed)
        g = torch.Generator().manual_seed(seed + 1000)
        return cls(base, 2.0 * torch.randn(x_dim, context_dim, generator=g, dtype=DTYPE))

    @property
    def latent_dim(self) -> int:
        return self.base.latent_dim

    @property
    def x_dim(self) -> int:
        return self.base.x_dim

    @property
    def context_dim(self) -> int:
        return self.bmat.shape[1]

    def shift(self, x: Tensor, h: Tensor) -> Tensor:
        """x - B h ``[N, P]``: data that follow the unconditional model."""
        return x - h @ self.bmat.T

    # --- exact quantities -------------------------------------------------------------
    def log_px(self, x: Tensor, h: Tensor) -> Tensor:
        """Exact log p(x|c) = log N(x; B h + b, W W^T + s^2 I), ``[N]``."""
        return self.base.log_px(self.shift(x, h))

    def sample_x(self, h: Tensor, seed: int = 1) -> Tensor:
        """One draw of x ~ p(x|c) per row of h, ``[N, P]``."""
        return self.base.sample_x(h.shape[0], seed) + h @ self.bmat.T

    def posterior(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """The exact p(z|x, c) = N(m, S): m ``[N, D]``, S ``[D, D]``."""
        return self.base.posterior(self.shift(x, h))

    def elbo_gap(self, x: Tensor, h: Tensor, q_mean: Tensor, q_cov: Tensor) -> Tensor:
        """KL(q || p(z|x, c)) = log p(x|c) - ELBO(q), ``[N]`` (q_cov ``[D, D]`` or ``[N, D, D]``)."""
        return self.base.elbo_gap(self.shift(x, h), q_mean, q_cov)

    def log_px_with_prior(self, x: Tensor, h: Tensor, prior_loc: Tensor, prior_scale: Tensor) -> Tensor:
        """Exact log p(x|c) when z ~ N(prior_loc, diag(prior_scale^2)) (both ``[N, D]``)."""
        w, s = self.base.w, self.base.s
        loc = prior_loc @ w.T + h @ self.bmat.T + self.base.b  # [N, P]
        cov = (w * prior_scale.pow(2).unsqueeze(-2)) @ w.T + s**2 * torch.eye(self.x_dim, dtype=DTYPE)  # [N, P, P]
        return MultivariateNormal(loc, covariance_matrix=cov).log_prob(x)

    # --- the model from vaelab's registered parts ---------------------------------------
    def vae(self, variables: tuple[Variable, ...], posterior: str = "gaussian", prior: str = "normal") -> VAE:
        """``build_vae`` with a linear decoder (``hidden=[]``: one ``nn.Linear`` on [z, h]) set
        to W, B, b, and an affine encoder (on [x, h]) set to the exact posterior's mean: the
        mean-field optimum (``posterior="gaussian"``) or the exact posterior itself
        (``"full-gaussian"``). Float64."""
        previous = torch.get_default_dtype()
        torch.set_default_dtype(DTYPE)  # the decoder's fixed scale is made from a Python float
        try:
            model = build_vae((self.x_dim,), latent_dim=self.latent_dim, hidden=[], likelihood="gaussian",
                              gaussian_scale=self.base.s, posterior=posterior, prior=prior, context=variables)
        finally:
            torch.set_default_dtype(previous)
        model = model.to(DTYPE)
        assert model.context is not None and model.context.context_dim == self.context_dim
        with torch.no_grad():
            linear = model.decoder.net[-1]
            assert isinstance(linear, nn.Linear) and linear.in_features == self.latent_dim + self.context_dim
            linear.weight.copy_(torch.cat([self.base.w, self.bmat], 1))  # on [z, h]
            linear.bias.copy_(self.base.b)
        self.set_encoder(model, exact=posterior == "full-gaussian")
        return model

    def posterior_affine(self, prior: tuple[Tensor, Tensor, Tensor] | None = None
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The exact p(z|x, c) = N(A_x x + A_h h + a, S) as (A_x ``[D, P]``, A_h ``[D, C]``, a ``[D]``, S).

        ``prior``: (M ``[D, C]``, m0 ``[D]``, v ``[D]``) for p(z|c) = N(M h + m0, diag(v)), a
        conditional prior whose scale does not depend on c; None for N(0, I). With
        P = diag(1/v) + W^T W / s^2 and S = P^{-1}, the posterior mean is
        S (diag(1/v) (M h + m0) + W^T (x - B h - b) / s^2).
        """
        w, s = self.base.w, self.base.s
        d = self.latent_dim
        m, m0, v = prior if prior is not None else (torch.zeros(d, self.context_dim, dtype=DTYPE),
                                                     torch.zeros(d, dtype=DTYPE), torch.ones(d, dtype=DTYPE))
        cov = torch.linalg.inv(torch.diag(1 / v) + w.T @ w / s**2)
        a = cov @ w.T / s**2
        pulled = cov / v  # S diag(1/v)
        return a, pulled @ m - a @ self.bmat, pulled @ m0 - a @ self.base.b, cov

    def set_encoder(self, model: VAE, exact: bool = False, shift: float = 0.0, inflate: float = 1.0,
                    prior: tuple[Tensor, Tensor, Tensor] | None = None) -> None:
        """Set the affine encoder of ``model`` to the optimal q: the posterior mean (see
        :meth:`posterior_affine`; + ``shift``) and the mean-field variances 1 / diag(S^{-1}) (diagonal Gaussian; standard
        deviations times ``inflate``) or the exact covariance S (full-covariance encoder, whose
        Cholesky factor is L = diag(l) (I + M) with M = ``off_diagonal_scale`` x the network's
        outputs).

        The mean-field q is narrower than p(z|x, c) along correlated directions, so its
        importance weights may have infinite variance (:func:`chi2_gaussians` is inf);
        ``inflate`` > 1 widens it until they do not. ``prior``: that of :meth:`posterior_affine`."""
        enc = model.encoder
        linear = enc.net[-1]
        d, p = self.latent_dim, self.x_dim
        a_x, a_h, a0, cov = self.posterior_affine(prior)
        weight = torch.zeros_like(linear.weight)
        bias = torch.zeros_like(linear.bias)
        weight[:d, :p] = a_x  # the network reads [x, h]
        weight[:d, p:] = a_h
        bias[:d] = a0 + shift
        if exact:
            tril = torch.linalg.cholesky(cov)
            diag = torch.diagonal(tril)
            bias[d : 2 * d] = inverse_softplus(diag - enc.min_scale)
            rows, cols = torch.tril_indices(d, d, -1)
            bias[2 * d :] = tril[rows, cols] / diag[rows] / enc.off_diagonal_scale
        else:  # the mean-field variances 1 / diag(S^{-1})
            scale = torch.diagonal(torch.linalg.inv(cov)).rsqrt() * inflate
            bias[d:] = inverse_softplus(scale - enc.min_scale)
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
