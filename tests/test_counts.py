"""Count likelihoods (Poisson, negative binomial, ZINB with an observed library size) and the
synthetic negative-binomial data, against references and exact answers.

* log_prob against scipy (``poisson``, ``nbinom``) and a hand-written ZINB, float64, at
  ordinary and extreme parameters (huge theta, tiny means, gates near 0 and 1);
* every count distribution sums to 1 over 0..T, with T the quantile that leaves at most
  1e-12 of mass behind (so the truncation holds at least 1 - 1e-9), and a count vector with
  its library fixed sums to 1 over a grid;
* gradients reach every parameter, the latent and the context, for every dispersion;
* the MLE of proportions and dispersions on synthetic NB data of one cell type lies within
  4 standard errors (inverse observed Fisher information) of the truth, and the standardised
  errors have about unit variance: a wrong parameterisation of theta or of the mean fails;
* the evaluation's importance-sampled log p(x) covers the exact marginal of a conjugate
  Poisson-Gamma model (the library is the Gamma latent; the marginal is negative binomial)
  and of a Dirichlet-Poisson model with the library observed, within its Monte-Carlo error;
* ``vaelab train/eval/report`` on a tiny count CSV and on ``synthetic-nb`` (conditional on
  its batch), save/load round trips, and bad input refused with exit status 2, one line,
  nothing written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import gammaln
from torch import Tensor, nn
from torch.distributions import Dirichlet, Gamma, Independent

import vaelab
from vaelab import registry
from vaelab.build import build_vae
from vaelab.context import Variable
from vaelab.data import load_data
from vaelab.data.synthetic import synthetic_nb
from vaelab.distributions import (
    LibraryCounts,
    NegativeBinomialDecoder,
    PoissonDecoder,
    ZeroInflatedNegativeBinomial,
    ZINBDecoder,
)
from vaelab.errors import VaelabError
from vaelab.evaluation import log_likelihood
from vaelab.model import VAE
from vaelab.nets import MLP, Log1p
from conftest import run_cli  # vaelab ARGV in-process: its exit status

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
Z = 4.0  # tolerance in standard errors
FAMILIES = ("poisson", "negative-binomial", "zinb")
DECODERS = {"poisson": PoissonDecoder, "negative-binomial": NegativeBinomialDecoder, "zinb": ZINBDecoder}


# --- reference log-probabilities --------------------------------------------------------------


def reference_log_prob(family: str, x: np.ndarray, mu: np.ndarray, theta: np.ndarray | None,
                       gate: np.ndarray | None) -> np.ndarray:
    """scipy's Poisson / NB (n = theta, p = theta / (theta + mu): mean mu) and the ZINB by hand."""
    if family == "poisson":
        return stats.poisson.logpmf(x, mu)
    assert theta is not None
    log_nb = stats.nbinom.logpmf(x, theta, theta / (theta + mu))
    if family == "negative-binomial":
        return log_nb
    assert gate is not None
    log_pi, log_keep = -np.logaddexp(0, -gate), -np.logaddexp(0, gate)  # log pi, log(1 - pi), pi = sigmoid(gate)
    return np.where(x == 0, np.logaddexp(log_pi, log_keep + log_nb), log_keep + log_nb)


def random_counts_case(family: str, seed: int, b: int = 6, f: int = 5) -> tuple[LibraryCounts, Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, f, generator=g, dtype=F64)
    log_theta = torch.randn(f, generator=g, dtype=F64) if family != "poisson" else None
    gate = 2 * torch.randn(b, f, generator=g, dtype=F64) if family == "zinb" else None
    x = torch.poisson(torch.full((b, f), 4.0, dtype=F64), generator=g)
    x[0] = 0.0  # an empty example too
    x[1, 0] = 0.0
    return LibraryCounts(family, logits, 1, log_theta=log_theta, gate_logits=gate), x  # type: ignore[arg-type]


@pytest.mark.parametrize("family", FAMILIES)
def test_log_prob_with_the_observed_library_matches_scipy(family: str) -> None:
    p, x = random_counts_case(family, seed=1)
    lib = x.sum(-1, keepdim=True).numpy()  # [B, 1]
    mu = lib * p.rho.numpy()
    theta = None if p.theta is None else p.theta.numpy()
    gate = None if p.gate_logits is None else p.gate_logits.numpy()
    expected = reference_log_prob(family, x.numpy(), mu, theta, gate).sum(-1)  # [B]
    expected[0] = 0.0  # l = 0: every mean is 0, all the mass at x = 0
    np.testing.assert_allclose(p.log_prob(x).numpy(), expected, rtol=1e-10, atol=1e-10)
    # samples first, then the batch: [K, B] from x [B, F]
    p2 = LibraryCounts(family, p.logits.expand(3, *p.logits.shape), 1, log_theta=p.log_theta,  # type: ignore[arg-type]
                       gate_logits=p.gate_logits)
    assert p2.log_prob(x).shape == (3, 6)
    np.testing.assert_allclose(p2.log_prob(x)[2].numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_fixed_library_is_used_instead_of_the_total(family: str) -> None:
    p, x = random_counts_case(family, seed=2)
    lib = torch.full((6,), 7.5, dtype=F64)
    mu = 7.5 * p.rho.numpy()
    theta = None if p.theta is None else p.theta.numpy()
    gate = None if p.gate_logits is None else p.gate_logits.numpy()
    expected = reference_log_prob(family, x.numpy(), mu, theta, gate).sum(-1)
    np.testing.assert_allclose(p.with_library(lib).log_prob(x).numpy(), expected, rtol=1e-10, atol=1e-10)
    zero = p.with_library(torch.zeros(6, dtype=F64)).log_prob(x)
    assert zero[0] == 0 and bool(torch.isinf(zero[1:]).all())  # l = 0 leaves no mass off x = 0


@pytest.mark.parametrize("mu,theta,gate", [(1e-8, 1.0, 0.0), (1e4, 1e6, -30.0), (50.0, 1e-3, 30.0), (3.0, 1e8, 5.0),
                                           (0.5, 0.2, -5.0)])
def test_zinb_is_stable_at_extreme_parameters(mu: float, theta: float, gate: float) -> None:
    x = torch.tensor([0.0, 1.0, 3.0, 40.0], dtype=F64)
    d = ZeroInflatedNegativeBinomial(torch.tensor(theta, dtype=F64), torch.tensor(math.log(mu / theta), dtype=F64),
                                     torch.tensor(gate, dtype=F64))
    got = d.log_prob(x)
    expected = reference_log_prob("zinb", x.numpy(), np.float64(mu), np.float64(theta), np.float64(gate))
    finite = np.isfinite(expected)
    assert bool(torch.isfinite(got[torch.from_numpy(finite)]).all())
    np.testing.assert_allclose(got.numpy()[finite], expected[finite], rtol=1e-7, atol=1e-9)
    params = [torch.tensor(v, dtype=F64, requires_grad=True) for v in (theta, math.log(mu / theta), gate)]
    ZeroInflatedNegativeBinomial(*params).log_prob(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad) for p in params)


def test_negative_binomial_is_torchs_with_logits_log_mu_over_theta() -> None:
    """NB(mean mu, inverse dispersion theta) is torch's NegativeBinomial(theta, logits=log(mu / theta)):
    its mean is mu and its variance mu + mu^2 / theta."""
    mu, theta = torch.tensor([0.3, 4.0, 250.0], dtype=F64), torch.tensor([0.5, 2.0, 40.0], dtype=F64)
    p = LibraryCounts("negative-binomial", mu.log(), 1, log_theta=theta.log(), library=torch.tensor(1.0, dtype=F64))
    nb = p.per_count(torch.log(mu))
    torch.testing.assert_close(nb.mean, mu)
    torch.testing.assert_close(nb.variance, mu + mu**2 / theta)


def test_zinb_samples_have_its_mean_variance_and_share_of_zeros() -> None:
    d = ZeroInflatedNegativeBinomial(torch.tensor([0.7, 5.0], dtype=F64), torch.tensor([1.5, -0.5], dtype=F64),
                                     torch.tensor([-0.5, 1.0], dtype=F64))
    torch.manual_seed(6)
    n = 200_000
    x = d.sample((n,))  # [n, 2]
    assert x.shape == (n, 2) and bool((x == x.round()).all() and (x >= 0).all())
    assert bool(((x.mean(0) - d.mean).abs() < Z * d.variance.sqrt() / math.sqrt(n)).all())
    fourth = (x - d.mean).pow(4).mean(0)  # SE of the sample variance: sqrt((m4 - var^2) / n)
    assert bool(((x.var(0) - d.variance).abs() < Z * ((fourth - d.variance**2) / n).sqrt()).all())
    p0 = d.log_prob(torch.zeros(2, dtype=F64)).exp()
    assert bool((((x == 0).double().mean(0) - p0).abs() < Z * (p0 * (1 - p0) / n).sqrt()).all())


# --- masses sum to one ---------------------------------------------------------------------


def truncation(family: str, mu: float, theta: float) -> int:
    """T with at most 1e-12 of the mass above it (the ZINB's tail is a share of the NB's)."""
    if family == "poisson":
        return int(stats.poisson.isf(1e-12, mu)) + 1
    return int(stats.nbinom.isf(1e-12, theta, theta / (theta + mu))) + 1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mu,theta,gate", [(0.05, 0.3, -2.0), (3.0, 1.0, 0.0), (80.0, 5.0, 1.5), (400.0, 50.0, -4.0)])
def test_each_count_distribution_sums_to_one(family: str, mu: float, theta: float, gate: float) -> None:
    t = truncation(family, mu, theta)
    x = torch.arange(t + 1, dtype=F64)
    p = LibraryCounts(family, torch.zeros(1, dtype=F64), 1, log_theta=torch.tensor([math.log(theta)], dtype=F64),  # type: ignore[arg-type]
                      gate_logits=torch.tensor([gate], dtype=F64), library=torch.tensor(mu, dtype=F64))
    total = p.per_count(torch.tensor([math.log(mu)], dtype=F64)).log_prob(x[:, None]).exp().sum()
    assert abs(float(total) - 1) < 1e-9  # the truncation holds >= 1 - 1e-12


@pytest.mark.parametrize("family", FAMILIES)
def test_a_count_vector_with_its_library_fixed_sums_to_one_over_a_grid(family: str) -> None:
    logits = torch.tensor([[0.3, -0.4]], dtype=F64)
    p = LibraryCounts(family, logits, 1, log_theta=torch.tensor([0.2, -0.5], dtype=F64),  # type: ignore[arg-type]
                      gate_logits=torch.tensor([[-1.0, 0.5]], dtype=F64), library=torch.tensor([4.0], dtype=F64))
    t = max(truncation(family, 4.0, math.exp(-0.5)), 10)
    levels = torch.arange(t + 1, dtype=F64)
    grid = torch.stack(torch.meshgrid(levels, levels, indexing="ij"), -1).reshape(-1, 1, 2)  # [P, 1, 2]
    total = p.log_prob(grid).exp().sum(0)
    assert abs(float(total) - 1) < 1e-9


# --- decoders: shapes, gradients, checks ----------------------------------------------------


def decoder(family: str, dispersion: str = "feature", x_shape: tuple[int, ...] = (2, 3), context: int = 0,
            seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cls = DECODERS[family]
    per_value = cls.params_per_value_for(dispersion=dispersion) if family != "poisson" else 1
    net = MLP(2, [8], per_value * math.prod(x_shape), context=context)
    if family == "poisson":
        return PoissonDecoder(net, x_shape).to(F64)
    return cls(net, x_shape, dispersion, context).to(F64)


CASES = [("poisson", "feature", 0), ("poisson", "feature", 3)] + [
    (f, d, c) for f in ("negative-binomial", "zinb") for d in ("feature", "feature-covariate", "example")
    for c in ((3,) if d == "feature-covariate" else (0, 3))]


@pytest.mark.parametrize("family,dispersion,context", CASES, ids=[f"{f}-{d}-c{c}" for f, d, c in CASES])
def test_gradients_reach_every_parameter_the_latent_and_the_context(family: str, dispersion: str, context: int) -> None:
    dec = decoder(family, dispersion, context=context)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(0.1 * torch.randn_like(p))
    g = torch.Generator().manual_seed(5)
    z = torch.randn(4, 3, 2, generator=g, dtype=F64, requires_grad=True)  # [K, B, D]
    h = torch.randn(3, context, generator=g, dtype=F64, requires_grad=True) if context else None
    x = torch.poisson(torch.full((3, 2, 3), 5.0, dtype=F64), generator=g)
    p = dec(z, h) if h is not None else dec(z)
    assert p.batch_shape == (4, 3) and p.event_shape == (2, 3) and p.mean.shape == (4, 3, 2, 3)
    assert p.sample().shape == (4, 3, 2, 3) and p.sample((2,)).shape == (2, 4, 3, 2, 3)
    dec.check(p.sample())
    lp = p.log_prob(x)
    assert lp.shape == (4, 3) and bool(torch.isfinite(lp).all())
    (-lp.sum()).backward()
    names = [n for n, _ in dec.named_parameters()]
    assert ("log_theta" in names) == (dispersion in ("feature", "feature-covariate") and family != "poisson")
    for name, param in dec.named_parameters():
        assert param.grad is not None and bool(torch.isfinite(param.grad).all()) and bool((param.grad != 0).any()), name
    assert z.grad is not None and bool((z.grad != 0).any())
    if h is not None:
        assert h.grad is not None and bool((h.grad != 0).any())


def test_feature_covariate_dispersion_is_one_theta_per_feature_and_class() -> None:
    dec = decoder("negative-binomial", "feature-covariate", x_shape=(4,), context=3)
    with torch.no_grad():
        dec.log_theta.copy_(torch.randn(3, 4, dtype=F64))
    onehot = torch.eye(3, dtype=F64)[[2, 0, 1, 2]]  # classes 2, 0, 1, 2
    p = dec(torch.zeros(4, 2, dtype=F64), onehot)
    torch.testing.assert_close(p.log_theta, dec.log_theta[[2, 0, 1, 2]])
    with pytest.raises(VaelabError, match="--condition-on"):
        decoder("zinb", "feature-covariate", context=0)
    with pytest.raises(VaelabError, match="--condition-on"):
        build_vae((5,), likelihood="negative-binomial", dispersion="feature-covariate")
    with pytest.raises(VaelabError, match="dispersion: unknown value 'gene'"):
        build_vae((5,), likelihood="negative-binomial", dispersion="gene")
    vae = build_vae((5,), likelihood="negative-binomial", dispersion="feature-covariate", hidden=[8],
                    context=(Variable("batch", "categorical", classes=3),))
    assert vae.decoder.log_theta.shape == (3, 5)


def test_the_registry_declares_counts_support_and_parameters_per_value() -> None:
    for name, cls in (("poisson", PoissonDecoder), ("negative-binomial", NegativeBinomialDecoder), ("zinb", ZINBDecoder)):
        part = registry.get("likelihood", name)
        assert part.cls is cls and cls.counts and cls.discrete
        assert part.support is torch.distributions.constraints.nonnegative_integer
    assert registry.get("likelihood", "poisson").params_per_value() == 1
    assert registry.get("likelihood", "negative-binomial").params_per_value(dispersion="example") == 2
    assert registry.get("likelihood", "zinb").params_per_value(dispersion="feature") == 2
    assert registry.get("likelihood", "zinb").params_per_value(dispersion="example") == 3


def test_count_supports_do_not_pass_for_the_unit_interval() -> None:
    """0 and 1 are counts and -0.5, 1.5 are not, but 2 is: counts are no [0, 1] data (the
    VampPrior squashes its pseudo-inputs into [0, 1] for those)."""
    for name in ("poisson", "negative-binomial", "zinb"):
        assert not registry.in_unit_interval(registry.get("likelihood", name).support), name


def test_the_encoder_reads_log1p_of_the_counts() -> None:
    torch.manual_seed(0)
    vae = build_vae((5,), latent_dim=2, hidden=[8], likelihood="zinb")
    net = vae.encoder.net
    assert isinstance(net.transform, Log1p)
    x = torch.tensor([[0.0, 1.0, 10.0, 100.0, 3.0]])
    torch.testing.assert_close(net(x), net.net(torch.log1p(x)))


@pytest.mark.parametrize("bad,problem,row,col", [(-1.0, "negative", 1, 2), (2.5, "not a whole number", 0, 4),
                                                  (float("nan"), "NaN/inf", 1, 0)])
def test_check_names_the_value_row_and_column(bad: float, problem: str, row: int, col: int) -> None:
    dec = decoder("negative-binomial", x_shape=(5,))
    x = torch.ones(2, 5)
    dec.check(x)
    x[row, col] = bad
    with pytest.raises(VaelabError) as info:
        dec.check(x, "data file 'c.csv'")
    message = str(info.value)
    assert "\n" not in message and message.startswith("data file 'c.csv': value ")
    assert f"at row {row}, column {col} is {problem}" in message and "negative binomial" in message


# --- the library size: its law, sampling and the mean ------------------------------------------


def test_library_prior_is_set_from_the_training_data_and_drives_sampling_and_the_mean() -> None:
    dec = decoder("poisson", x_shape=(4,))
    g = torch.Generator().manual_seed(3)
    lib = torch.exp(6.0 + 0.4 * torch.randn(500, generator=g, dtype=F64))
    x = torch.poisson(lib[:, None] * torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64), generator=g)
    x[:3] = 0  # empty examples are left out
    dec.set_library_prior(x)
    logs = x[3:].sum(-1).log()
    assert float(dec.log_library_loc) == pytest.approx(float(logs.mean()), rel=1e-12)
    assert float(dec.log_library_scale) == pytest.approx(float(logs.std()), rel=1e-12)
    p = dec(torch.zeros(1, 2, dtype=F64))
    m, s = float(dec.log_library_loc), float(dec.log_library_scale)
    torch.testing.assert_close(p.mean.sum(-1), torch.full((1,), math.exp(m + s * s / 2), dtype=F64))  # E[l] rho
    torch.manual_seed(4)
    totals = p.sample((20000,)).sum(-1).reshape(-1)  # l ~ logN(m, s^2), then Poisson
    assert abs(float(totals.mean()) - math.exp(m + s * s / 2)) < Z * float(totals.std()) / math.sqrt(20000)
    log_t = totals.log()
    assert abs(float(log_t.mean()) - m) < 0.02  # Poisson noise on l ~ 400: about 1/(2l) in log
    with pytest.raises(VaelabError, match="zero counts"):
        dec.set_library_prior(torch.zeros(3, 4))


# --- recovery of the true parameters on synthetic NB data ------------------------------------


class Constant(nn.Module):
    """A decoder network that ignores z: one learned logit per feature (one cell type)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(features, dtype=F64))

    def forward(self, z: Tensor) -> Tensor:
        return self.a.expand(z.shape[0], -1)


def test_synthetic_nb_mle_recovers_proportions_and_dispersions_within_their_standard_errors() -> None:
    """One cell type (latent_dim 0): x_nf ~ NB(l_n rho_f, theta_f) with l_n known. The MLE of
    (logits, log theta) through the NB decoder must lie within Z standard errors of the truth,
    the SEs from the inverse observed information (a pseudo-inverse: softmax logits are
    defined up to a shift; rho = softmax(a) by the delta method)."""
    n, f = 3000, 12
    x_np, truth = synthetic_nb(n, seed=11, features=f, latent_dim=0, library_loc=math.log(300.0))
    x = torch.from_numpy(x_np).to(F64)
    lib = torch.from_numpy(truth.library)
    dec = NegativeBinomialDecoder(Constant(f), (f,), "feature").to(F64)
    z = torch.zeros(n, 1, dtype=F64)

    def nll(a: Tensor, log_theta: Tensor) -> Tensor:
        p = LibraryCounts("negative-binomial", a.expand(n, f), 1, log_theta=log_theta, library=lib)
        return -p.log_prob(x).sum()

    params = [dec.net.a, dec.log_theta]
    opt = torch.optim.LBFGS(params, lr=1, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = -dec(z).with_library(lib).log_prob(x).sum()  # through the decoder
        loss.backward()
        return loss

    opt.step(closure)
    a_hat, b_hat = dec.net.a.detach().clone(), dec.log_theta.detach().clone()
    h = torch.autograd.functional.hessian(lambda v: nll(v[:f], v[f:]), torch.cat([a_hat, b_hat]))
    cov = torch.linalg.pinv(h, hermitian=True)
    rho_hat = torch.softmax(a_hat, 0)
    jac = torch.diag(rho_hat) - rho_hat[:, None] * rho_hat[None, :]  # d rho / d a
    se_rho = torch.diagonal(jac @ cov[:f, :f] @ jac.T).sqrt()
    se_log_theta = torch.diagonal(cov[f:, f:]).sqrt()
    z_rho = (rho_hat - torch.from_numpy(truth.rho[0])) / se_rho
    z_theta = (b_hat - torch.from_numpy(np.log(truth.theta))) / se_log_theta
    assert bool((z_rho.abs() < Z).all()), z_rho
    assert bool((z_theta.abs() < Z).all()), z_theta
    # the errors are standard-normal sized: neither hidden by inflated SEs nor biased
    standardized = torch.cat([z_rho, z_theta])
    assert 0.3 < float(standardized.pow(2).mean()) < 2.5
    # and the SEs are small enough to matter: most thetas off by 15% would be seen
    assert float(se_log_theta.median()) < math.log(1.15) / Z


def test_synthetic_nb_is_seeded_and_holds_its_parameters() -> None:
    x, p = synthetic_nb(400, seed=3, features=30, latent_dim=2, batches=3)
    x2, _ = synthetic_nb(400, seed=3, features=30, latent_dim=2, batches=3)
    np.testing.assert_array_equal(x, x2)
    assert x.dtype == np.int64 and x.shape == (400, 30) and (x >= 0).all()
    np.testing.assert_allclose(p.rho.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(p.rho, np.exp(p.z @ p.weights + p.baseline + p.batch_shift[p.batch])
                               / np.exp(p.z @ p.weights + p.baseline + p.batch_shift[p.batch]).sum(1, keepdims=True))
    assert set(np.unique(p.batch)) == {0, 1, 2} and p.theta.shape == (30,)
    # totals scatter around the drawn library sizes: E[sum x | l] = l
    resid = x.sum(1) - p.library
    assert abs(resid.mean()) < Z * resid.std() / math.sqrt(400)
    with pytest.raises(VaelabError, match="features >= 1"):
        synthetic_nb(10, features=0)


def test_the_built_in_set_has_counts_and_a_categorical_batch() -> None:
    d = load_data("synthetic-nb", counts=True, covariates=["batch"], seed=1)
    assert d.kind == "counts" and d.shape == (100,) and len(d.train) + len(d.val) + len(d.test) == 2000
    assert d.covariate_names == ("batch",) and d.covariate_classes == (("batch-0", "batch-1"),)
    assert bool((d.train == d.train.round()).all()) and float(d.train.max()) > 255  # kept as counts
    x, _ = synthetic_nb(2000, seed=0, features=100, latent_dim=2, batches=2)
    assert float(d.train.sum() + d.val.sum() + d.test.sum()) == float(x.sum())  # the same data whatever the split seed
    with pytest.raises(VaelabError, match="no covariate 'donor'"):
        load_data("synthetic-nb", counts=True, covariates=["donor"])
    with pytest.raises(VaelabError, match="has no covariates"):
        load_data("digits", covariates=["batch"])


# --- the evaluation on conjugate count models ------------------------------------------------


class GammaPrior(nn.Module):
    """p(lambda) = Gamma(a, b) on a one-dimensional latent."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self) -> Independent:
        return Independent(Gamma(torch.tensor([self.a], dtype=F64), torch.tensor([self.b], dtype=F64)), 1)


class PoissonGivenRate(nn.Module):
    """x_f ~ Poisson(lambda rho_f): LibraryCounts with the latent lambda as its (fixed) library."""

    def __init__(self, rho: Tensor) -> None:
        super().__init__()
        self.x_shape = (rho.numel(),)
        self.register_buffer("logits", rho.log())

    def forward(self, z: Tensor) -> LibraryCounts:  # z [K, B, 1]
        return LibraryCounts("poisson", self.logits.expand(*z.shape[:-1], -1), 1, library=z[..., 0])


class GammaEncoder(nn.Module):
    """q(lambda|x) = Gamma(c (a + S), c (b + 1)): the exact posterior's mean, 1/c times its variance."""

    def __init__(self, a: float, b: float, c: float) -> None:
        super().__init__()
        self.a, self.b, self.c = a, b, c
        self.latent_dim = 1
        self.dummy = nn.Parameter(torch.zeros((), dtype=F64))  # the evaluator reads the device off a parameter

    def forward(self, x: Tensor) -> Independent:
        s = x.sum(-1, keepdim=True)
        return Independent(Gamma(self.c * (self.a + s), torch.full_like(s, self.c * (self.b + 1))), 1)


def test_importance_sampled_log_px_covers_the_exact_poisson_gamma_marginal() -> None:
    """lambda ~ Gamma(a, b), x_f ~ Poisson(lambda rho_f): p(x) = prod_f rho_f^x_f / x_f! *
    b^a Gamma(a + S) / (Gamma(a) (b + 1)^(a + S)); for one feature, scipy's NB(a, b / (b + 1))."""
    a, b = 2.0, 0.5
    rho = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    g = torch.Generator().manual_seed(8)
    lam = torch.distributions.Gamma(torch.tensor(a, dtype=F64), torch.tensor(b, dtype=F64)).sample((25,))
    x = torch.poisson(lam[:, None] * rho, generator=g)  # [25, 3]
    s = x.sum(-1).numpy()
    exact = ((x.numpy() * np.log(rho.numpy())).sum(-1) - gammaln(x.numpy() + 1).sum(-1)
             + a * math.log(b) + gammaln(a + s) - gammaln(a) - (a + s) * math.log(b + 1))
    np.testing.assert_allclose(exact - (x.numpy() * np.log(rho.numpy())).sum(-1) + gammaln(x.numpy() + 1).sum(-1)
                               - gammaln(s + 1), stats.nbinom.logpmf(s, a, b / (b + 1)), rtol=1e-10)  # S ~ NB(a, b/(b+1))
    vae = VAE(GammaEncoder(a, b, c=0.4), PoissonGivenRate(rho), GammaPrior(a, b))
    torch.manual_seed(9)
    ll = log_likelihood(vae, x, k=3000, k_chunk=1000)
    err = (ll.per_example - torch.from_numpy(exact)).abs()
    assert bool((err < Z * ll.mc_se + 1e-9).all()), (err, ll.mc_se)
    assert float(ll.ess.median()) < 3000 * 0.95  # a real importance-sampling check, not an exact proposal
    mc = float(ll.mc_se.pow(2).sum().sqrt() / len(x))
    assert abs(ll.mean - float(exact.mean())) < Z * mc


class DirichletPrior(nn.Module):
    def __init__(self, alpha: Tensor) -> None:
        super().__init__()
        self.register_buffer("alpha", alpha)

    def forward(self) -> Dirichlet:
        return Dirichlet(self.alpha)


class ProportionsDecoder(nn.Module):
    """x ~ Poisson(l rho) with rho the latent itself and l = sum x observed."""

    def __init__(self, f: int) -> None:
        super().__init__()
        self.x_shape = (f,)

    def forward(self, z: Tensor) -> LibraryCounts:
        return LibraryCounts("poisson", z.log(), 1)


class DirichletEncoder(nn.Module):
    def __init__(self, alpha: Tensor, c: float) -> None:
        super().__init__()
        self.register_buffer("alpha", alpha)
        self.c = c
        self.latent_dim = alpha.numel()
        self.dummy = nn.Parameter(torch.zeros((), dtype=F64))

    def forward(self, x: Tensor) -> Dirichlet:
        return Dirichlet(self.c * (self.alpha + x))


def test_importance_sampled_log_px_covers_the_exact_dirichlet_poisson_marginal_with_an_observed_library() -> None:
    """rho ~ Dir(alpha), x_f ~ Poisson(l rho_f) with l = S = sum x observed:
    p(x | l) = S^S e^-S / prod x_f! * B(alpha + x) / B(alpha)."""
    alpha = torch.tensor([0.8, 1.5, 3.0, 0.5], dtype=F64)
    g = torch.Generator().manual_seed(12)
    x = torch.poisson(torch.full((20, 4), 6.0, dtype=F64), generator=g)

    def log_beta(v: np.ndarray) -> np.ndarray:
        return gammaln(v).sum(-1) - gammaln(v.sum(-1))

    xs, s = x.numpy(), x.sum(-1).numpy()
    exact = (s * np.log(s) - s - gammaln(xs + 1).sum(-1) + log_beta(alpha.numpy() + xs) - log_beta(alpha.numpy()))
    vae = VAE(DirichletEncoder(alpha, c=0.5), ProportionsDecoder(4), DirichletPrior(alpha))
    torch.manual_seed(13)
    ll = log_likelihood(vae, x, k=3000, k_chunk=1000)
    err = (ll.per_example - torch.from_numpy(exact)).abs()
    assert bool((err < Z * ll.mc_se + 1e-9).all()), (err, ll.mc_se)
    assert float(ll.ess.median()) < 3000 * 0.95


# --- runs: Python API and command line -------------------------------------------------------


def count_csv(path: Path, n: int = 80, f: int = 6, seed: int = 0) -> Path:
    x, _ = synthetic_nb(n, seed=seed, features=f, latent_dim=1, library_loc=math.log(60.0))
    header = ",".join(f"gene{j}" for j in range(f))
    np.savetxt(path, x, fmt="%d", delimiter=",", header=header, comments="")
    return path




TINY = ["--hidden", "16", "--latent-dim", "2", "--epochs", "2", "--batch-size", "32", "--threads", "1",
        "--device", "cpu", "--quiet"]


@pytest.mark.slow
def test_cli_trains_evaluates_and_reports_a_count_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = count_csv(tmp_path / "counts.csv")
    assert run_cli(["train", "--data", data, "--likelihood", "poisson", "--eval-k", "10", *TINY, "--out", tmp_path,
                    "--name", "p"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "bits per dimension" in out
    ev = json.loads((tmp_path / "p" / "eval.json").read_text())
    assert ev["k"] == 10 and ev["bits_per_dim"] == pytest.approx(-ev["log_px"] / (6 * math.log(2)))
    assert json.loads((tmp_path / "p" / "config.json").read_text())["data"]["kind"] == "counts"
    assert run_cli(["eval", tmp_path / "p", "--k", "5", "--gap-examples", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 8
    assert run_cli(["report", tmp_path / "p"]) == 0
    assert (tmp_path / "p" / "report.html").is_file()
    assert run_cli(["sample", tmp_path / "p", "-n", "3", "--draw", "-o", tmp_path / "s.png"]) == 0
    drawn = np.load(tmp_path / "s.npy")
    assert drawn.shape == (3, 6) and (drawn == np.round(drawn)).all() and (drawn >= 0).all()


@pytest.mark.slow
def test_cli_trains_a_conditional_negative_binomial_on_synthetic_nb(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--data", "synthetic-nb", "--likelihood", "zinb", "--dispersion", "feature-covariate",
            "--condition-on", "batch", "--eval-k", "5", *TINY, "--out", tmp_path, "--name", "nb"]
    assert run_cli(argv) == 0, capsys.readouterr().err
    assert "log p(x|batch)" in capsys.readouterr().out
    assert run_cli(["eval", tmp_path / "nb", "--k", "5", "--gap-examples", "0", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 200 and ev["conditional_on"] == ["batch"] and ev["bits_per_dim"] > 0
    model = vaelab.load(tmp_path / "nb")
    assert model.spec.likelihood.options == {"dispersion": "feature-covariate"}
    assert model.vae.decoder.log_theta.shape == (2, 100)
    assert run_cli(["sample", tmp_path / "nb", "-n", "2", "--context", "batch-1", "-o", tmp_path / "s.png"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (2, 100)


def test_a_trained_count_model_saves_loads_and_keeps_its_library_law(tmp_path: Path) -> None:
    data = count_csv(tmp_path / "counts.csv", seed=1)
    model, _ = vaelab.train(data=str(data), likelihood="negative-binomial", dispersion="example", hidden=[16],
                            latent_dim=2, epochs=1, batch_size=32, threads=1, device="cpu", eval_k=0, out=str(tmp_path),
                            name="r", progress=False, figures=False, log=lambda *a: None)
    loaded = vaelab.load(tmp_path / "r")
    train = loaded.data().train
    logs = train.sum(-1)[train.sum(-1) > 0].double().log()
    assert float(loaded.vae.decoder.log_library_loc) == pytest.approx(float(logs.mean()), rel=1e-6)
    assert float(loaded.vae.decoder.log_library_scale) == pytest.approx(float(logs.std()), rel=1e-6)
    x = train[:5]
    torch.manual_seed(0)
    a = model.vae.log_weights(x, 3)
    torch.manual_seed(0)
    b = loaded.vae.log_weights(x, 3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(model.sample(4, seed=1), loaded.sample(4, seed=1))
    # reconstructions are E[x | z, l] at each example's own library size: NB means add up to l
    torch.testing.assert_close(loaded.reconstruct(x).sum(-1), x.sum(-1), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("value,culprit", [("-1", "value -1 at row 3, column 2 is negative"),
                                           ("2.5", "value 2.5 at row 3, column 2 is not a whole number")])
def test_bad_counts_are_refused_naming_value_row_and_column(tmp_path: Path, refused, value: str, culprit: str) -> None:
    path = count_csv(tmp_path / "bad.csv")
    lines = path.read_text().splitlines()
    cells = lines[4].split(",")
    cells[2] = value
    lines[4] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    refused(["train", "--data", path, "--likelihood", "negative-binomial", *TINY, "--out", tmp_path, "--name", "bad"],
            culprit)
    assert not (tmp_path / "bad").exists()


def test_feature_covariate_without_a_covariate_and_an_unknown_covariate_are_refused(tmp_path: Path, refused) -> None:
    refused(["train", "--data", "synthetic-nb", "--likelihood", "negative-binomial", "--dispersion", "feature-covariate",
             *TINY, "--out", tmp_path, "--name", "x"], "--dispersion feature-covariate", "--condition-on")
    refused(["train", "--data", "synthetic-nb", "--likelihood", "poisson", "--condition-on", "donor", *TINY,
             "--out", tmp_path, "--name", "y"], "donor")
    assert not any(tmp_path.iterdir())


def test_evaluation_reports_nats_per_count_for_count_likelihoods() -> None:
    from vaelab.build import build_vae
    from vaelab.evaluation import evaluate

    torch.manual_seed(0)
    model = build_vae((6,), latent_dim=2, hidden=[8], likelihood="negative-binomial")
    x = torch.poisson(torch.full((30, 6), 4.0))
    ev = evaluate(model, x, k=20, mi_samples=0, gap_examples=0, estimator="is").summary()
    assert ev.nats_per_count is not None and ev.nll is not None
    assert ev.nats_per_count == pytest.approx(ev.nll / float(x.double().sum(-1).mean()), rel=1e-6)
    assert ev.to_dict()["nats_per_count"] == ev.nats_per_count
    plain = evaluate(build_vae((6,), latent_dim=2, hidden=[8], likelihood="gaussian"), x, k=20, mi_samples=0,
                     gap_examples=0, estimator="is").summary()
    assert plain.nats_per_count is None and "nats_per_count" not in plain.to_dict()
