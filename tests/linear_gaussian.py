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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, MultivariateNormal

from vaelab.distributions import GaussianDecoder, StandardNormalPrior, diagonal_gaussian
from vaelab.model import VAE

__all__ = ["AffineGaussianEncoder", "LinearGaussian", "chi2_gaussians", "kl_gaussians"]

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
