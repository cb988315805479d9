"""The estimators against closed forms: ELBO, KL, IWAE and log p(x) on the linear-Gaussian model.

Every tolerance below is either float64 round-off (for identities that hold exactly) or a
multiple of the estimator's own standard error, computed from the samples (|est - truth| <
4 SE: a false alarm has probability about 6e-5 per comparison). Seeds are fixed.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from linear_gaussian import LinearGaussian, chi2_gaussians, kl_gaussians
from torch import Tensor, nn
from torch.distributions import Distribution

from vaelab.distributions import GaussianEncoder, StandardNormalPrior, diagonal_gaussian
from vaelab.evaluation import dataset_elbo, log_likelihood
from vaelab.model import VAE
from vaelab.objectives import elbo, iwae, kl_term, log_mean_exp

F64 = torch.float64
Z = 4.0  # standard errors allowed between a Monte-Carlo estimate and its exact value


@pytest.fixture
def lg() -> LinearGaussian:
    return LinearGaussian.random(latent_dim=3, x_dim=5, s=0.7, seed=0)


def se(values: Tensor, dim: int = 0) -> Tensor:
    """Standard error of the mean of ``values`` along ``dim``."""
    return values.std(dim) / math.sqrt(values.shape[dim])


# --- the ELBO -------------------------------------------------------------------------


@torch.no_grad()
def test_exact_posterior_gives_constant_log_weights_equal_to_log_px(lg):
    """With q = p(z|x), log w = log p(x, z) - log p(z|x) = log p(x) for every z."""
    torch.manual_seed(0)
    x = lg.sample_x(20)
    model = lg.vae(lg.exact_encoder())
    log_w = model.trace(x, 50).log_weights  # [50, 20]
    truth = lg.log_px(x)  # [20]
    assert log_w.shape == (50, 20)
    torch.testing.assert_close(log_w, truth.expand(50, -1), rtol=0, atol=1e-10)
    # even a single-sample Monte-Carlo ELBO is exact
    one = elbo(model.trace(x, 1), kl="mc").elbo
    torch.testing.assert_close(one, truth, rtol=0, atol=1e-10)


@torch.no_grad()
@pytest.mark.parametrize(
    "shift, inflate", [(0.0, 1.0), (0.1, 1.5)], ids=["optimal-mean-field", "shifted-inflated"]
)
@pytest.mark.parametrize("kl", ["mc", "analytic"])
def test_elbo_of_gaussian_q_is_log_px_minus_closed_form_gap(lg, shift, inflate, kl):
    """ELBO(q) = log p(x) - KL(q || p(z|x)) < log p(x) for a q that is not the posterior."""
    torch.manual_seed(1)
    k = 20_000
    x = lg.sample_x(8, seed=2)
    encoder = lg.mean_field_encoder(shift=shift, inflate=inflate)
    trace = lg.vae(encoder).trace(x, k)
    estimate = elbo(trace, kl=kl).elbo  # [8]
    if kl == "mc":
        per_sample = trace.log_weights  # [K, B]
    else:  # the KL is exact, only the reconstruction term is random
        per_sample = trace.log_likelihood
    stderr = se(per_sample)

    q = encoder(x)
    gap = lg.elbo_gap(x, q.mean, torch.diag_embed(q.variance))  # KL(q || p(z|x)), [8]
    log_px = lg.log_px(x)
    assert (gap > 0.25).all()
    assert (estimate + Z * stderr < log_px).all(), "the ELBO must lie below log p(x)"
    assert ((estimate - (log_px - gap)).abs() < Z * stderr).all()


def test_optimal_mean_field_gap_is_smaller_than_other_diagonal_gaussians(lg):
    """Variances 1/diag(S^-1) minimise KL(q || N(m, S)) over diagonal q: a check of the helper."""
    x = lg.sample_x(4)
    m, _ = lg.posterior(x)
    best = lg.elbo_gap(x, m, lg.mean_field_cov())
    for factor in (0.8, 0.95, 1.05, 1.25):
        assert (lg.elbo_gap(x, m, lg.mean_field_cov() * factor) > best).all()
    assert (lg.elbo_gap(x, m + 0.05, lg.mean_field_cov()) > best).all()


@torch.no_grad()
def test_elbo_decomposition(lg):
    torch.manual_seed(3)
    x = lg.sample_x(16)
    trace = lg.vae(lg.mean_field_encoder(shift=0.1, inflate=1.5)).trace(x, 7)
    for kl in ("auto", "analytic", "mc"):
        terms = elbo(trace, kl=kl)
        assert terms.elbo.shape == terms.reconstruction.shape == terms.kl.shape == (16,)
        torch.testing.assert_close(terms.elbo, terms.reconstruction - terms.kl, rtol=0, atol=0)
        torch.testing.assert_close(terms.reconstruction, trace.log_likelihood.mean(0), rtol=0, atol=0)
    # with the Monte-Carlo KL the ELBO is the mean log weight
    torch.testing.assert_close(
        elbo(trace, kl="mc").elbo, trace.log_weights.mean(0), rtol=0, atol=1e-12
    )
    means = elbo(trace).mean()
    assert set(means) == {"elbo", "reconstruction", "kl"}
    assert means["elbo"] == pytest.approx(float(elbo(trace).elbo.mean()), abs=1e-12)


@torch.no_grad()
def test_dataset_elbo_with_exact_posterior_is_mean_log_px(lg):
    """With q = p(z|x) and the Monte-Carlo KL, the ELBO is mean_k log w_k = log p(x) exactly."""
    torch.manual_seed(4)
    x = lg.sample_x(37, seed=5)
    model = lg.vae(lg.exact_encoder())
    result = dataset_elbo(model, x, k=3, kl="mc", batch_size=10)  # 4 batches, the last partial
    assert result.n == 37
    assert result.elbo == pytest.approx(float(lg.log_px(x).mean()), abs=1e-10)
    assert result.elbo == pytest.approx(result.reconstruction - result.kl, abs=1e-10)
    # the KL term is a k = 3 sample mean of log q - log p: within its SE of the closed form
    m, cov = lg.posterior(x)
    eye = torch.eye(lg.latent_dim, dtype=F64).expand(37, -1, -1)
    kl_exact = float(kl_gaussians(m, cov.expand(37, -1, -1), torch.zeros_like(m), eye).mean())
    probe = model.trace(x, 200)  # independent draws, for the per-example spread
    sd = (probe.log_posterior - probe.log_prior).std(0)  # [N]
    stderr = float(sd.pow(2).sum().sqrt()) / (math.sqrt(3) * 37)
    assert abs(result.kl - kl_exact) < Z * stderr


@torch.no_grad()
def test_dataset_elbo_terms_with_mean_field_posterior(lg):
    """Analytic KL(q || N(0, I)) is exact; the ELBO matches log p(x) - gap within its SE."""
    torch.manual_seed(6)
    x = lg.sample_x(40, seed=7)
    encoder = lg.mean_field_encoder(shift=0.1, inflate=1.5)
    model = lg.vae(encoder)
    k = 500
    result = dataset_elbo(model, x, k=k, batch_size=16)

    q = encoder(x)
    cov_q = torch.diag_embed(q.variance)
    eye = torch.eye(lg.latent_dim, dtype=F64).expand_as(cov_q)
    kl_prior = kl_gaussians(q.mean, cov_q, torch.zeros_like(q.mean), eye)
    assert result.kl == pytest.approx(float(kl_prior.mean()), abs=1e-10)

    truth = float((lg.log_px(x) - lg.elbo_gap(x, q.mean, cov_q)).mean())
    # SE of the data-set mean of per-example k-sample means of log p(x|z)
    sd = model.trace(x, k).log_likelihood.std(0)  # [N], an independent estimate
    stderr = float(sd.pow(2).sum().sqrt()) / (math.sqrt(k) * x.shape[0])
    assert abs(result.elbo - truth) < Z * stderr


# --- the KL term ----------------------------------------------------------------------


def _encoder_model(latent_dim: int = 4, x_dim: int = 6) -> VAE:
    """A VAE with a library GaussianEncoder on a random linear net (float64)."""
    torch.manual_seed(7)
    encoder = GaussianEncoder(nn.Linear(x_dim, 2 * latent_dim), latent_dim)
    lg = LinearGaussian.random(latent_dim=latent_dim, x_dim=x_dim, seed=3)
    return lg.vae(encoder.to(F64))


@torch.no_grad()
def test_analytic_kl_matches_monte_carlo_and_textbook_formula():
    model = _encoder_model()
    torch.manual_seed(8)
    x = torch.randn(6, 6, dtype=F64)
    k = 20_000
    trace = model.trace(x, k)
    analytic = kl_term(trace, "analytic")  # [6]
    mc = kl_term(trace, "mc")

    per_sample = trace.log_posterior - trace.log_prior  # [K, B]
    torch.testing.assert_close(mc, per_sample.mean(0), rtol=0, atol=1e-12)
    assert ((analytic - mc).abs() < Z * se(per_sample)).all()

    mu, sigma = trace.posterior.mean, trace.posterior.stddev  # [B, D]
    textbook = 0.5 * (mu**2 + sigma**2 - 1 - torch.log(sigma**2)).sum(-1)
    torch.testing.assert_close(analytic, textbook, rtol=1e-12, atol=1e-12)
    # "auto" uses the closed form for this pair: exactly the analytic value
    assert torch.equal(kl_term(trace, "auto"), analytic)
    assert torch.equal(elbo(trace, kl="auto").kl, analytic)
    assert torch.equal(elbo(trace, kl="auto").elbo, elbo(trace, kl="analytic").elbo)


class HandDiagonalGaussian(Distribution):
    """N(loc, diag(scale^2)) written by hand: a Distribution type with no registered KL."""

    arg_constraints: ClassVar[dict] = {}
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        self.loc, self.scale = loc, scale
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def log_prob(self, value: Tensor) -> Tensor:
        u = (value - self.loc) / self.scale
        return (-0.5 * u**2 - torch.log(self.scale) - 0.5 * math.log(2 * math.pi)).sum(-1)


class HandEncoder(nn.Module):
    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        super().__init__()
        self.register_buffer("loc", loc)
        self.register_buffer("scale", scale)

    def forward(self, x: Tensor) -> Distribution:
        return HandDiagonalGaussian(self.loc.expand(x.shape[0], -1), self.scale.expand(x.shape[0], -1))


@torch.no_grad()
def test_kl_falls_back_to_monte_carlo_without_a_closed_form(lg):
    loc = torch.tensor([0.5, -1.0, 0.2], dtype=F64)
    scale = torch.tensor([0.3, 1.4, 0.8], dtype=F64)
    model = lg.vae(HandEncoder(loc, scale))
    torch.manual_seed(9)
    x = lg.sample_x(3)
    trace = model.trace(x, 20_000)
    with pytest.raises(NotImplementedError):
        kl_term(trace, "analytic")
    with pytest.raises(NotImplementedError):
        elbo(trace, kl="analytic")
    per_sample = trace.log_posterior - trace.log_prior  # [K, B]
    auto = elbo(trace, kl="auto")
    torch.testing.assert_close(auto.kl, per_sample.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(auto.elbo, trace.log_weights.mean(0), rtol=0, atol=1e-12)
    # and it estimates the right number: KL(N(loc, diag scale^2) || N(0, I))
    exact = 0.5 * (loc**2 + scale**2 - 1 - torch.log(scale**2)).sum()
    assert ((auto.kl - exact).abs() < Z * se(per_sample)).all()


def test_unknown_kl_method_raises(lg):
    trace = lg.vae(lg.mean_field_encoder()).trace(lg.sample_x(2), 1)
    with pytest.raises(ValueError, match="KL method"):
        kl_term(trace, "exact")  # type: ignore[arg-type]


# --- IWAE and log p(x) ----------------------------------------------------------------


def test_log_mean_exp_matches_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(scale=3.0, size=(50, 7))
    direct = np.log(np.mean(np.exp(values), axis=0))
    got = log_mean_exp(torch.from_numpy(values), dim=0)
    np.testing.assert_allclose(got.numpy(), direct, rtol=1e-12, atol=1e-12)
    got1 = log_mean_exp(torch.from_numpy(values), dim=1)
    np.testing.assert_allclose(got1.numpy(), np.log(np.mean(np.exp(values), axis=1)), rtol=1e-12)
    # stable where the direct formula overflows: log mean exp(x + c) = log mean exp(x) + c
    shifted = log_mean_exp(torch.from_numpy(values + 5000.0), dim=0)
    assert torch.isfinite(shifted).all()
    np.testing.assert_allclose(shifted.numpy(), direct + 5000.0, rtol=1e-12)
    assert float(log_mean_exp(torch.tensor([-1e4, -1e4 - math.log(3.0)], dtype=F64))) == pytest.approx(
        -1e4 + math.log((1 + 1 / 3) / 2), abs=1e-9
    )


@pytest.fixture
def mediocre(lg):
    """The mean-field q, shifted by 0.1 and with standard deviations x1.5: the ELBO gap is
    about 1 nat and the importance weights have finite variance (chi^2 about 1.3)."""
    encoder = lg.mean_field_encoder(shift=0.1, inflate=1.5)
    return lg.vae(encoder), encoder


@torch.no_grad()
def test_iwae_increases_with_k_and_converges_to_log_px(lg, mediocre):
    """E[L_K] rises with K from the ELBO (K = 1) to log p(x); for large K the shortfall is
    about chi2 / 2K (delta method), chi2 = Var_q[w / p(x)] in closed form."""
    model, encoder = mediocre
    n = 500
    x = lg.sample_x(n, seed=11)
    log_px = lg.log_px(x)  # [N]
    torch.manual_seed(12)
    trace = model.trace(x, 1000)
    log_w = trace.log_weights  # [1000, N]

    # E[L_K] per example, from disjoint blocks of the same 1000 samples: [N] for each K
    errors = {}
    for k in (1, 10, 100, 1000):
        blocks = log_w.reshape(1000 // k, k, n)
        errors[k] = log_mean_exp(blocks, dim=1).mean(0) - log_px  # L_K - log p(x)
    torch.testing.assert_close(errors[1000], iwae(trace) - log_px, rtol=0, atol=1e-12)

    q = encoder(x)
    m, cov = lg.posterior(x)
    cov_q = torch.diag_embed(q.variance)
    gap = lg.elbo_gap(x, q.mean, cov_q)  # [N]
    chi2 = chi2_gaussians(q.mean, cov_q, m, cov.expand(n, -1, -1))  # [N]
    assert torch.isfinite(chi2).all()

    # K = 1 is the ELBO: its expected shortfall is the closed-form gap
    assert abs(float((errors[1] + gap).mean())) < Z * float(se(errors[1] + gap))

    # below log p(x) on average for small K (at K = 100 the shortfall, 0.0065, is about the
    # resolution here), rising with K (paired differences per example resolve every step)
    for k in (1, 10):
        assert float(errors[k].mean()) + Z * float(se(errors[k])) < 0, k
    for small, large in ((1, 10), (10, 100), (100, 1000)):
        rise = errors[large] - errors[small]
        assert float(rise.mean()) > Z * float(se(rise)), (small, large)

    # K = 100 and 1000: the shortfall is chi2 / 2K (0.0065 and 0.00065 nats here)
    for k in (100, 1000):
        residual = errors[k] + chi2 / (2 * k)
        assert abs(float(residual.mean())) < Z * float(se(errors[k])), k
    # and at K = 1000 it is below the resolution: the estimate has converged to log p(x)
    assert abs(float(errors[1000].mean())) < Z * float(se(errors[1000]))


def test_log_likelihood_estimator_converges(lg, mediocre):
    model, _ = mediocre
    n = 300
    x = lg.sample_x(n, seed=13)
    log_px = lg.log_px(x)
    torch.manual_seed(14)
    result = log_likelihood(model, x, k=1000, batch_size=150, k_chunk=250)
    assert result.per_example.shape == result.ess.shape == (n,)
    assert result.per_example.dtype == torch.float64
    assert result.k == 1000
    err = result.per_example - log_px
    assert abs(float(err.mean())) < Z * float(se(err))
    assert result.mean == pytest.approx(float(result.per_example.mean()), abs=1e-12)
    assert result.stderr == pytest.approx(float(se(result.per_example)), rel=1e-9)
    assert ((result.ess >= 1) & (result.ess <= 1000)).all()
    # a mediocre q wastes samples: well below K, far above 1
    assert 50 < float(result.ess.median()) < 950


def test_log_likelihood_is_exact_with_the_exact_posterior(lg):
    x = lg.sample_x(30, seed=15)
    model = lg.vae(lg.exact_encoder())
    result = log_likelihood(model, x, k=50, batch_size=7, k_chunk=9)
    torch.testing.assert_close(result.per_example, lg.log_px(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(result.ess, torch.full((30,), 50.0, dtype=F64), rtol=1e-10, atol=0)


@torch.no_grad()
def test_log_likelihood_chunking_is_exact_given_the_samples(lg, mediocre):
    """k=100 in chunks of 7 (14 chunks of 7 and one of 2) combines exactly the log weights
    of those chunks drawn by hand: log mean exp, and ESS = (sum w)^2 / sum w^2."""
    model, _ = mediocre
    x = lg.sample_x(25, seed=16)
    torch.manual_seed(17)
    result = log_likelihood(model, x, k=100, batch_size=100, k_chunk=7)
    torch.manual_seed(17)
    chunks = [model.log_weights(x, 7) for _ in range(14)] + [model.log_weights(x, 2)]
    log_w = torch.cat(chunks)  # [100, 25]
    torch.testing.assert_close(result.per_example, log_mean_exp(log_w, dim=0), rtol=0, atol=1e-12)
    w = torch.exp(log_w - log_w.max(0).values)  # normalised per example, ESS is scale-free
    torch.testing.assert_close(result.ess, w.sum(0) ** 2 / (w**2).sum(0), rtol=1e-10, atol=0)


def test_log_likelihood_chunk_size_does_not_change_the_estimate(lg, mediocre):
    model, _ = mediocre
    n = 1000
    x = lg.sample_x(n, seed=18)
    log_px = lg.log_px(x)
    torch.manual_seed(19)
    chunked = log_likelihood(model, x, k=300, batch_size=n, k_chunk=13).per_example
    torch.manual_seed(19)
    whole = log_likelihood(model, x, k=300, batch_size=n, k_chunk=300).per_example
    assert not torch.equal(chunked, whole)  # different draws ...
    diff = chunked - whole  # ... from the same distribution
    assert abs(float(diff.mean())) < Z * float(se(diff))
    for estimate in (chunked, whole):
        err = estimate - log_px
        assert abs(float(err.mean())) < Z * float(se(err))


def test_log_likelihood_rejects_k_below_one(lg, mediocre):
    model, _ = mediocre
    with pytest.raises(ValueError, match=r"k \(importance samples per example\) must be"):
        log_likelihood(model, lg.sample_x(2), k=0)


# --- reparameterized gradients ---------------------------------------------------------


def _quadratic(d: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, d, generator=g, dtype=F64)
    return (m + m.T) / 2, torch.randn(d, generator=g, dtype=F64)


def _batched_grads(loss_fn, params: list[Tensor], repeats: int) -> Tensor:
    """``repeats`` independent gradient estimates, flattened: ``[repeats, sum numel]``."""
    out = []
    for _ in range(repeats):
        grads = torch.autograd.grad(loss_fn(), params)
        out.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(out)


def test_reparameterized_gradient_of_a_quadratic_matches_closed_form():
    """E_q[z^T A z + c^T z] = mu^T A mu + tr(A diag(sigma^2)) + c^T mu, so the gradient is
    2 A mu + c in mu and 2 A_ii sigma_i in sigma."""
    d, k = 3, 2000
    a, c = _quadratic(d, seed=20)
    mu = torch.tensor([0.3, -0.7, 1.1], dtype=F64, requires_grad=True)
    sigma = torch.tensor([0.5, 1.2, 0.8], dtype=F64, requires_grad=True)

    def f(z: Tensor) -> Tensor:  # [K, D] -> [K]
        return torch.einsum("ki,ij,kj->k", z, a, z) + z @ c

    torch.manual_seed(21)
    value = f(diagonal_gaussian(mu, sigma).rsample((20_000,))).detach()
    exact_value = (mu @ a @ mu + (torch.diagonal(a) * sigma**2).sum() + c @ mu).detach()
    assert abs(float(value.mean() - exact_value)) < Z * float(se(value))

    grads = _batched_grads(
        lambda: f(diagonal_gaussian(mu, sigma).rsample((k,))).mean(), [mu, sigma], repeats=40
    )
    exact = torch.cat([2 * a @ mu + c, 2 * torch.diagonal(a) * sigma]).detach()
    assert ((grads.mean(0) - exact).abs() < Z * se(grads)).all()
    # the estimates are noisy but not degenerate: the check above has power
    assert (se(grads) > 0).all() and (se(grads) < 0.05 * exact.abs().max()).all()


class _Constant(nn.Module):
    """A 'network' that returns its parameter for every input: [B, *] -> [B, n]."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value)

    def forward(self, x: Tensor) -> Tensor:
        return self.value.expand(x.shape[0], -1)


def test_reparameterized_gradient_through_gaussian_encoder():
    """Through GaussianEncoder, sigma = softplus(s) + min_scale, so d/ds = 2 A_ii sigma_i * sigmoid(s)."""
    d, k = 3, 2000
    a, c = _quadratic(d, seed=22)
    loc = torch.tensor([0.3, -0.7, 1.1], dtype=F64)
    raw = torch.tensor([-0.5, 0.4, 1.5], dtype=F64)
    encoder = GaussianEncoder(_Constant(torch.cat([loc, raw])), latent_dim=d, min_scale=1e-4)
    x = torch.zeros(1, 5, dtype=F64)

    def loss() -> Tensor:
        z = encoder(x).rsample((k,))[:, 0]  # [K, D]
        return (torch.einsum("ki,ij,kj->k", z, a, z) + z @ c).mean()

    torch.manual_seed(23)
    grads = _batched_grads(loss, [encoder.net.value], repeats=40)  # [40, 2D]
    sigma = nn.functional.softplus(raw) + 1e-4
    exact = torch.cat([2 * a @ loc + c, 2 * torch.diagonal(a) * sigma * torch.sigmoid(raw)])
    assert ((grads.mean(0) - exact).abs() < Z * se(grads)).all()


class _FreeDiagonalEncoder(nn.Module):
    """q(z|x) = N(mu, diag(exp(log_sigma)^2)) for every x, with mu and log_sigma learned."""

    def __init__(self, mu: Tensor, log_sigma: Tensor) -> None:
        super().__init__()
        self.mu = nn.Parameter(mu)
        self.log_sigma = nn.Parameter(log_sigma)

    def forward(self, x: Tensor) -> Distribution:
        b = x.shape[0]
        return diagonal_gaussian(self.mu.expand(b, -1), self.log_sigma.exp().expand(b, -1))


@pytest.mark.parametrize("kl", ["mc", "analytic"])
def test_elbo_gradient_in_the_posterior_parameters_matches_closed_form(lg, kl):
    """ELBO(mu, sigma) = log p(x) - KL(q || N(m, S)), so with Lambda = S^{-1}:
    dELBO/dmu = -Lambda (mu - m) and dELBO/dlog sigma_i = 1 - sigma_i^2 Lambda_ii."""
    x = lg.sample_x(1, seed=24)
    m, cov = lg.posterior(x)
    precision = torch.linalg.inv(cov)
    mu = m[0] + torch.tensor([0.3, -0.2, 0.25], dtype=F64)
    log_sigma = torch.tensor([-1.6, -1.5, -1.0], dtype=F64)
    encoder = _FreeDiagonalEncoder(mu.clone(), log_sigma.clone())
    model = lg.vae(encoder)

    torch.manual_seed(25)
    params = [encoder.mu, encoder.log_sigma]
    grads = _batched_grads(lambda: elbo(model.trace(x, 500), kl=kl).elbo.sum(), params, repeats=40)
    sigma2 = torch.exp(2 * log_sigma)
    exact = torch.cat([-precision @ (mu - m[0]), 1 - sigma2 * torch.diagonal(precision)])
    assert ((grads.mean(0) - exact).abs() < Z * se(grads)).all(), (grads.mean(0), exact, se(grads))
    assert (exact.abs() > 10 * se(grads)).all()  # every component is resolved


def test_prior_log_prob_is_standard_normal_sum():
    prior = StandardNormalPrior(4).to(F64)
    z = torch.randn(3, 5, 4, dtype=F64)
    expected = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(prior().log_prob(z), expected, rtol=1e-12, atol=1e-12)
