"""One property test over every posterior, prior and likelihood, and every combination in a VAE.

Each part is checked for the same things (float64, fixed seeds):

* shapes: samples ``[K, B, D]`` (likelihoods ``[K, B, *x_shape]``), log-densities ``[K, B]``;
* log_prob against a reference built independently: ``torch.distributions`` for the closed
  forms; for the flows, the change of variables log N(eps) - log |det J| with the Jacobian
  J = dz/deps from ``torch.autograd.functional.jacobian``;
* the density integrates to 1 (a midpoint-rule grid in 2 dimensions) or sums to 1 (every
  value of a discrete likelihood);
* gradients reach every parameter;
* ``state_dict`` -> safetensors -> a fresh module gives identical outputs under one seed.

Then every posterior x prior pair and every likelihood is built by ``build_vae`` and trains a
step, and two tiny runs go through ``vaelab.runs.train`` and ``vaelab.load``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    ContinuousBernoulli,
    Distribution,
    Laplace,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

import vaelab
from vaelab import registry
from vaelab.build import build_model, build_vae

POSTERIORS = registry.names("posterior")
PRIORS = [n for n, p in registry.parts("prior").items() if not p.conditional_only]
LIKELIHOODS = registry.names("likelihood")
from vaelab.config import TrainConfig
from vaelab.distributions import (
    BernoulliDecoder,
    ContinuousBernoulliDecoder,
    DiscretizedLogisticMixture,
    FullCovarianceEncoder,
    GaussianDecoder,
    GaussianEncoder,
    GaussianMixturePrior,
    IAFEncoder,
    LaplaceDecoder,
    LogisticMixtureDecoder,
    PlanarFlowEncoder,
    StandardNormalPrior,
    VampPrior,
)
from vaelab.errors import VaelabError
from vaelab.nets import MLP
from vaelab.objectives import elbo, kl_term

F64 = torch.float64
X_IN = 5  # input features of the encoders under test
B, K = 3, 4


def quiet(*args: Any) -> None:
    pass


# --- the parts ----------------------------------------------------------------------------


def make_encoder(name: str, d: int) -> nn.Module:
    if name == "gaussian":
        return GaussianEncoder(MLP(X_IN, [8], GaussianEncoder.outputs(d)), d)
    if name == "full-gaussian":
        return FullCovarianceEncoder(MLP(X_IN, [8], FullCovarianceEncoder.outputs(d)), d)
    if name == "planar":
        return PlanarFlowEncoder(MLP(X_IN, [8], PlanarFlowEncoder.outputs(d, 3)), d, steps=3)
    if name == "iaf":
        return IAFEncoder(MLP(X_IN, [8], IAFEncoder.outputs(d, 4)), d, context_dim=4, steps=2, hidden=16)
    raise KeyError(name)


ENCODERS = ["gaussian", "full-gaussian", "planar", "iaf"]
PRIOR_PARTS = ["normal", "mog", "vamp-gaussian", "vamp-full-gaussian", "vamp-planar", "vamp-iaf"]
LIKELIHOOD_PARTS = [
    "bernoulli", "continuous-bernoulli", "gaussian-fixed", "gaussian-global", "gaussian-feature",
    "laplace-fixed", "laplace-feature", "logistic-mixture",
]


class Holder(nn.Module):
    """Every module a part needs, so that one state_dict holds each tensor once."""

    def __init__(self, part: nn.Module, **others: nn.Module) -> None:
        super().__init__()
        self.part = part
        for key, module in others.items():
            self.add_module(key, module)


def make_prior(name: str, d: int) -> Holder:
    if name == "normal":
        return Holder(StandardNormalPrior(d))
    if name == "mog":
        return Holder(GaussianMixturePrior(d, components=3))
    encoder = make_encoder(name.removeprefix("vamp-"), d)
    return Holder(VampPrior(encoder, (X_IN,), components=3, unit_interval=True), encoder=encoder)


def make_decoder(name: str, d: int, x_shape: tuple[int, ...]) -> nn.Module:
    n = math.prod(x_shape)
    if name == "bernoulli":
        return BernoulliDecoder(MLP(d, [8], n), x_shape)
    if name == "continuous-bernoulli":
        return ContinuousBernoulliDecoder(MLP(d, [8], n), x_shape)
    if name == "logistic-mixture":
        return LogisticMixtureDecoder(MLP(d, [8], 3 * 2 * n), x_shape, mixtures=2)
    family, learn = name.split("-")
    cls = GaussianDecoder if family == "gaussian" else LaplaceDecoder
    return cls(MLP(d, [8], n), x_shape, scale=0.7, learn_scale=learn)


def likelihood_data(name: str, x_shape: tuple[int, ...], n: int = B, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    if name == "bernoulli":
        return torch.randint(0, 2, (n, *x_shape), generator=g).to(F64)
    if name == "continuous-bernoulli":
        return torch.rand((n, *x_shape), generator=g, dtype=F64)
    if name == "logistic-mixture":
        return torch.randint(0, 256, (n, *x_shape), generator=g).to(F64) / 255
    return torch.randn((n, *x_shape), generator=g, dtype=F64)


@dataclass
class Case:
    """One part under test: ``root`` holds every parameter, ``run(seed)`` gives its outputs."""

    kind: str
    name: str
    root: nn.Module
    draw: Callable[[], dict[str, Tensor]]  # samples and log-densities, random under the global seed


def sample_and_score(q: Distribution, k: int) -> tuple[Tensor, Tensor]:
    """What VAE.trace does: the flow's own density when it has one, else rsample + log_prob."""
    if hasattr(q, "rsample_and_log_prob"):
        return q.rsample_and_log_prob((k,))
    z = q.rsample((k,))
    return z, q.log_prob(z)


def encoder_input(seed: int = 1, n: int = B) -> Tensor:
    return torch.randn(n, X_IN, generator=torch.Generator().manual_seed(seed), dtype=F64)


def make_case(kind: str, name: str, seed: int, d: int = 2, x_shape: tuple[int, ...] = (2, 3)) -> Case:
    torch.manual_seed(seed)
    if kind == "posterior":
        root = make_encoder(name, d).to(F64)
        x = encoder_input()

        def draw() -> dict[str, Tensor]:
            z, log_q = sample_and_score(root(x), K)
            return {"z": z, "log_q": log_q}

    elif kind == "prior":
        root = make_prior(name, d).to(F64)
        z_fixed = torch.randn(K, B, d, generator=torch.Generator().manual_seed(2), dtype=F64)

        def draw() -> dict[str, Tensor]:
            p = root.part()
            z = p.sample((K, B))
            return {"z": z, "log_p": p.log_prob(z), "log_p_fixed": p.log_prob(z_fixed)}

    else:
        root = make_decoder(name, d, x_shape).to(F64)
        z = torch.randn(K, B, d, generator=torch.Generator().manual_seed(3), dtype=F64)
        x = likelihood_data(name, x_shape)

        def draw() -> dict[str, Tensor]:
            p = root(z)
            return {"x": p.sample(), "log_p": p.log_prob(x), "mean": p.mean}

    return Case(kind, name, root, draw)


ALL_PARTS = (
    [("posterior", n) for n in ENCODERS]
    + [("prior", n) for n in PRIOR_PARTS]
    + [("likelihood", n) for n in LIKELIHOOD_PARTS]
)
IDS = [f"{k}-{n}" for k, n in ALL_PARTS]


def part_of(case: Case) -> nn.Module:
    return case.root.part if isinstance(case.root, Holder) else case.root


# --- shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,name", ALL_PARTS, ids=IDS)
def test_shapes(kind, name):
    d, x_shape = 2, (2, 3)
    case = make_case(kind, name, seed=0, d=d, x_shape=x_shape)
    torch.manual_seed(4)
    out = case.draw()
    if kind == "posterior":
        q = case.root(encoder_input())
        assert q.batch_shape == (B,) and q.event_shape == (d,)
        assert out["z"].shape == (K, B, d) and out["log_q"].shape == (K, B)
        assert q.rsample((K,)).shape == (K, B, d)
        # the density that comes with the sample is log_prob at the sample (flows invert)
        torch.testing.assert_close(q.log_prob(out["z"]), out["log_q"], rtol=1e-9, atol=1e-9)
        assert q.mean.shape == (B, d) and q.stddev.shape == (B, d)
    elif kind == "prior":
        p = case.root.part()
        assert p.batch_shape == () and p.event_shape == (d,)
        assert out["z"].shape == (K, B, d) and out["log_p"].shape == (K, B)
    else:
        p = case.root(torch.zeros(K, B, d, dtype=F64))
        assert p.batch_shape == (K, B) and p.event_shape == x_shape
        assert out["x"].shape == (K, B, *x_shape) and out["log_p"].shape == (K, B)
        assert out["mean"].shape == (K, B, *x_shape)
        case.root.check(out["x"])  # samples lie in the likelihood's support
    for value in out.values():
        assert torch.isfinite(value).all()


# --- log_prob against a reference ---------------------------------------------------------


def reference_posterior_log_prob(name: str, encoder: nn.Module, x: Tensor, z: Tensor) -> Tensor:
    """log q(z|x) for the closed-form posteriors, from the network's outputs and torch."""
    d = encoder.latent_dim
    h = encoder.net(x)
    loc, scale = h[:, :d], nn.functional.softplus(h[:, d : 2 * d]) + encoder.min_scale
    if name == "gaussian":
        return Normal(loc, scale).log_prob(z).sum(-1)
    tril = torch.zeros(x.shape[0], d, d, dtype=x.dtype)
    entry = 2 * d
    for i in range(d):
        tril[:, i, i] = scale[:, i]
        for j in range(i):
            tril[:, i, j] = scale[:, i] * encoder.off_diagonal_scale * h[:, entry]  # L = diag(l) (I + M)
            entry += 1
    return MultivariateNormal(loc, covariance_matrix=tril @ tril.transpose(-1, -2)).log_prob(z)


@pytest.mark.parametrize("name", ["gaussian", "full-gaussian"])
def test_closed_form_posteriors_match_torch(name):
    case = make_case("posterior", name, seed=5, d=3)
    x = encoder_input()
    torch.manual_seed(6)
    q = case.root(x)
    z = q.rsample((K,))
    expected = reference_posterior_log_prob(name, case.root, x, z)
    torch.testing.assert_close(q.log_prob(z), expected, rtol=1e-10, atol=1e-10)
    # far from the mean too
    far = 5 * torch.randn(K, B, 3, dtype=F64)
    torch.testing.assert_close(q.log_prob(far), reference_posterior_log_prob(name, case.root, x, far), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["planar", "iaf"])
@pytest.mark.parametrize("d", [1, 3])
def test_flow_density_is_the_change_of_variables_with_an_autograd_jacobian(name, d):
    case = make_case("posterior", name, seed=7, d=d)
    x = encoder_input(n=1)
    q = case.root(x)  # batch [1]
    base = q.base.base_dist  # q0 = N(loc, diag(scale^2))

    def f(eps: Tensor) -> Tensor:  # [D] -> [D]: the sample as a function of the noise
        return q.forward_and_log_det(base.loc + base.scale * eps.unsqueeze(0))[0][0]

    g = torch.Generator().manual_seed(8)
    for _ in range(3):
        eps = torch.randn(d, generator=g, dtype=F64)
        z = f(eps)
        jac = torch.autograd.functional.jacobian(f, eps)  # [D, D]
        expected = Normal(0.0, 1.0).log_prob(eps).sum() - torch.linalg.slogdet(jac).logabsdet
        got_inverse = q.log_prob(z.unsqueeze(0))[0]  # by inverting the flow
        z0 = base.loc + base.scale * eps.unsqueeze(0)
        _, log_det = q.forward_and_log_det(z0)
        got_forward = q.base.log_prob(z0)[0] - log_det[0]  # what rsample_and_log_prob returns
        torch.testing.assert_close(got_forward, expected, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got_inverse, expected, rtol=1e-7, atol=1e-7)


def test_priors_match_references():
    d = 2
    z = 1.5 * torch.randn(K, B, d, generator=torch.Generator().manual_seed(9), dtype=F64)
    normal = make_case("prior", "normal", seed=0).root.part()
    reference = MultivariateNormal(torch.zeros(d, dtype=F64), torch.eye(d, dtype=F64))
    torch.testing.assert_close(normal.log_prob(z), reference.log_prob(z), rtol=1e-12, atol=1e-12)

    mog = make_case("prior", "mog", seed=10).root.part
    with torch.no_grad():
        mog.logits.copy_(torch.tensor([0.3, -1.0, 0.5]))
        mog.raw_scale.add_(torch.randn_like(mog.raw_scale))
    scale = nn.functional.softplus(mog.raw_scale) + mog.min_scale
    log_w = torch.log_softmax(mog.logits, 0)
    terms = [log_w[c] + MultivariateNormal(mog.loc[c], torch.diag(scale[c] ** 2)).log_prob(z) for c in range(3)]
    torch.testing.assert_close(mog().log_prob(z), torch.logsumexp(torch.stack(terms), 0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in PRIOR_PARTS if n.startswith("vamp")])
def test_vamp_prior_is_the_mean_of_the_posteriors_at_the_pseudo_inputs(name):
    holder = make_case("prior", name, seed=11).root
    prior, encoder = holder.part, holder.encoder
    z = 1.5 * torch.randn(K, B, 2, generator=torch.Generator().manual_seed(12), dtype=F64)
    u = prior.pseudo_inputs
    assert u.shape == (3, X_IN) and ((u > 0) & (u < 1)).all()
    terms = [encoder(u[c : c + 1]).log_prob(z.unsqueeze(-2)).squeeze(-1) for c in range(3)]  # each [K, B]
    expected = torch.logsumexp(torch.stack(terms), 0) - math.log(3)
    torch.testing.assert_close(prior().log_prob(z), expected, rtol=1e-8, atol=1e-8)


def reference_likelihood_log_prob(name: str, decoder: nn.Module, z: Tensor, x: Tensor) -> Tensor:
    out = decoder.net(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], -1)  # [K, B, P * n]
    x = x.reshape(x.shape[0], -1)  # [B, n]
    if name == "bernoulli":
        return Bernoulli(logits=out).log_prob(x).sum(-1)
    if name == "continuous-bernoulli":
        return ContinuousBernoulli(logits=out).log_prob(x).sum(-1)
    if name == "logistic-mixture":  # the textbook formula, in float64: cdf differences, edges to +-inf
        m, n = decoder.mixtures, x.shape[-1]
        logits, loc, raw = out.reshape(*out.shape[:-1], 3, m, n).unbind(-3)  # each [K, B, M, n]
        s = raw.exp() + decoder.min_scale
        xx = x.unsqueeze(-2)  # [B, 1, n]
        upper = torch.where(xx >= 1, 1.0, torch.sigmoid((xx + 0.5 / 255 - loc) / s))
        lower = torch.where(xx <= 0, 0.0, torch.sigmoid((xx - 0.5 / 255 - loc) / s))
        prob = (torch.softmax(logits, dim=-2) * (upper - lower)).sum(-2)  # [K, B, n]
        return prob.log().sum(-1)
    family = Normal if name.startswith("gaussian") else Laplace
    return family(out, decoder.scale.reshape(-1).detach()).log_prob(x).sum(-1)


@pytest.mark.parametrize("name", LIKELIHOOD_PARTS)
def test_likelihoods_match_references(name):
    x_shape = (2, 3)
    case = make_case("likelihood", name, seed=13, x_shape=x_shape)
    decoder = case.root
    if hasattr(decoder, "raw_scale"):  # learned scales away from their initial value
        with torch.no_grad():
            decoder.raw_scale.add_(0.3 * torch.randn_like(decoder.raw_scale))
    z = torch.randn(K, B, 2, generator=torch.Generator().manual_seed(14), dtype=F64)
    x = likelihood_data(name, x_shape, seed=15)
    x[0].view(-1)[:2] = torch.tensor([0.0, 1.0], dtype=F64) if name != "gaussian" else x[0].view(-1)[:2]
    expected = reference_likelihood_log_prob(name, decoder, z, x)
    torch.testing.assert_close(decoder(z).log_prob(x), expected, rtol=1e-9, atol=1e-9)


# --- densities integrate to 1 -------------------------------------------------------------


def grid_integral(dist: Distribution, lo: Tensor, hi: Tensor, n: int = 200) -> Tensor:
    """Midpoint rule for the integral of exp(log_prob) over the box [lo, hi] (2 dims, any batch)."""
    t = (torch.arange(n, dtype=F64) + 0.5) / n
    u = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)  # [P, 2] in [0, 1]^2
    u = u.reshape(-1, *([1] * (lo.ndim - 1)), 2)
    points = lo + (hi - lo) * u  # [P, *batch, 2]
    cell = ((hi - lo) / n).prod(-1)  # [*batch]
    with torch.no_grad():
        return dist.log_prob(points).exp().sum(0) * cell


def sample_box(dist: Distribution, width: float = 8.0) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        s = dist.sample((4000,))
    mean, std = s.mean(0), s.std(0)
    return mean - width * std, mean + width * std


@pytest.mark.parametrize("kind,name", [p for p in ALL_PARTS if p[0] != "likelihood"], ids=[i for p, i in zip(ALL_PARTS, IDS) if p[0] != "likelihood"])
def test_latent_densities_integrate_to_one(kind, name):
    case = make_case(kind, name, seed=16, d=2)
    torch.manual_seed(17)
    dist = case.root(encoder_input(n=2)) if kind == "posterior" else case.root.part()
    lo, hi = sample_box(dist)
    total = grid_integral(dist, lo, hi)
    # midpoint rule on a smooth density over +-8 standard deviations: error far below 1e-3
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=2e-3)


@pytest.mark.parametrize("name", LIKELIHOOD_PARTS)
def test_likelihoods_integrate_or_sum_to_one(name):
    case = make_case("likelihood", name, seed=18, x_shape=(2,))
    z = torch.randn(1, 2, 2, generator=torch.Generator().manual_seed(19), dtype=F64)
    with torch.no_grad():
        p = case.root(z)  # batch [1, 2], event [2]
    if name in ("bernoulli", "logistic-mixture"):  # sum over every value of x
        levels = torch.tensor([0.0, 1.0], dtype=F64) if name == "bernoulli" else torch.arange(256, dtype=F64) / 255
        grid = torch.stack(torch.meshgrid(levels, levels, indexing="ij"), -1).reshape(-1, 1, 1, 2)
        total = p.log_prob(grid).exp().sum(0)
        torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)
        return
    if name == "continuous-bernoulli":
        lo, hi = torch.zeros(1, 2, 2, dtype=F64), torch.ones(1, 2, 2, dtype=F64)
    else:
        lo, hi = p.mean - 14 * p.stddev, p.mean + 14 * p.stddev
    total = grid_integral(p, lo, hi, n=600)
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-3)


# --- gradients reach every parameter ------------------------------------------------------


@pytest.mark.parametrize("kind,name", ALL_PARTS, ids=IDS)
def test_gradients_reach_every_parameter(kind, name):
    case = make_case(kind, name, seed=20)
    torch.manual_seed(21)
    if kind == "posterior":  # the ELBO's q terms with a N(0, I) prior, by reparameterization
        z, log_q = sample_and_score(case.root(encoder_input()), K)
        loss = (log_q + 0.5 * z.pow(2).sum(-1)).sum()
    elif kind == "prior":
        z = torch.randn(K, B, 2, dtype=F64)
        loss = -case.root.part().log_prob(z).sum()
    else:
        z = torch.randn(K, B, 2, dtype=F64, requires_grad=True)
        loss = -case.root(z).log_prob(likelihood_data(name, (2, 3))).sum()
    if kind == "prior" and name == "normal":
        assert not list(case.root.parameters())  # nothing to learn
        return
    loss.backward()
    for pname, p in case.root.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all() and (p.grad != 0).any(), pname
    if kind == "likelihood":
        assert z.grad is not None and (z.grad != 0).any()


# --- save / load --------------------------------------------------------------------------


@pytest.mark.parametrize("kind,name", ALL_PARTS, ids=IDS)
def test_save_load_round_trips_through_safetensors(kind, name, tmp_path):
    case = make_case(kind, name, seed=22)
    with torch.no_grad():  # move parameters off their initial values, so loading matters
        for p in case.root.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "part.safetensors"
    save_file(case.root.state_dict(), str(path))  # refuses tensors stored twice
    fresh = make_case(kind, name, seed=23)

    def outputs(c: Case) -> dict[str, Tensor]:
        torch.manual_seed(24)
        with torch.no_grad():
            return c.draw()

    expected = outputs(case)
    if kind != "prior" or name != "normal":  # the standard normal has no state
        before = outputs(fresh)
        assert any(not torch.equal(before[k], expected[k]) for k in expected)
    fresh.root.load_state_dict(load_file(str(path)), strict=True)
    after = outputs(fresh)
    for key in expected:
        assert torch.equal(after[key], expected[key]), key


def test_vamp_prior_does_not_own_the_encoder():
    holder = make_case("prior", "vamp-gaussian", seed=25).root
    prior = holder.part
    assert list(prior.state_dict()) == ["raw_pseudo_inputs"]
    assert prior.encoder is holder.encoder
    assert not any(m is holder.encoder for m in prior.modules())
    x = torch.rand(3, X_IN, dtype=F64) * 0.8 + 0.1
    prior.set_pseudo_inputs(x)
    torch.testing.assert_close(prior.pseudo_inputs, x, rtol=1e-10, atol=1e-10)
    unbounded = VampPrior(holder.encoder, (X_IN,), components=3, unit_interval=False).to(F64)
    unbounded.set_pseudo_inputs(5 * x)
    torch.testing.assert_close(unbounded.pseudo_inputs, 5 * x)


# --- part-specific properties -------------------------------------------------------------


def test_full_covariance_kl_to_a_diagonal_gaussian_is_closed_form_and_exact():
    encoder = make_case("posterior", "full-gaussian", seed=26, d=3).root
    q = encoder(encoder_input())
    loc, scale = torch.tensor([0.5, -1.0, 0.0], dtype=F64), torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    diagonal = torch.distributions.Independent(Normal(loc, scale), 1)
    reference = MultivariateNormal(loc, torch.diag(scale**2))
    torch.testing.assert_close(kl_divergence(q, diagonal), kl_divergence(q, reference), rtol=1e-10, atol=1e-10)
    # and the objectives pick it up against the standard normal prior (kl="analytic" does not raise)
    vae = vaelab.VAE(encoder, BernoulliDecoder(MLP(3, [], X_IN), (X_IN,)), StandardNormalPrior(3)).to(F64)
    trace = vae.trace(torch.randint(0, 2, (B, X_IN)).to(F64), 2)
    standard = MultivariateNormal(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64))
    torch.testing.assert_close(kl_term(trace, "analytic"), kl_divergence(trace.posterior, standard))


def test_planar_steps_are_invertible_whatever_the_raw_u():
    """u = -5 w would fold the plane (w^T u = -5 < -1); u_hat keeps w^T u_hat > -1."""
    d, steps = 2, 2
    w = torch.tensor([[[1.0, 0.5], [-0.3, 2.0]]], dtype=F64)  # [1, K, D]
    from vaelab.distributions import PlanarFlow

    q = PlanarFlow(torch.zeros(1, d, dtype=F64), torch.ones(1, d, dtype=F64), -5 * w, w, torch.zeros(1, steps, dtype=F64))
    assert (q.wu_hat > -1).all()
    torch.manual_seed(27)
    z, log_q = q.rsample_and_log_prob((50,))
    assert torch.isfinite(log_q).all()
    torch.testing.assert_close(q.log_prob(z), log_q, rtol=1e-9, atol=1e-9)


def test_planar_flow_with_detached_parameters_differentiates_in_z_only():
    """What STL and DReG need (``detach_parameters``): same value, gradient in z, none in the parameters."""
    encoder = make_case("posterior", "planar", seed=36).root
    q = encoder(encoder_input())
    torch.manual_seed(37)
    z = q.sample((K,)).requires_grad_()  # a leaf: no path back to the parameters
    frozen = q.detach_parameters().log_prob(z)
    full = q.log_prob(z)
    torch.testing.assert_close(frozen, full, rtol=1e-9, atol=1e-9)
    grad_frozen = torch.autograd.grad(frozen.sum(), [z, *encoder.parameters()], allow_unused=True)
    grad_full = torch.autograd.grad(full.sum(), [z, *encoder.parameters()], allow_unused=True)
    torch.testing.assert_close(grad_frozen[0], grad_full[0], rtol=1e-9, atol=1e-9)
    assert all(g is None for g in grad_frozen[1:])
    assert any(g is not None and (g != 0).any() for g in grad_full[1:])  # the full one does depend on them


@pytest.mark.parametrize("name", ["planar", "iaf"])
def test_flow_moments_are_deterministic_monte_carlo_estimates(name):
    q = make_case("posterior", name, seed=28).root(encoder_input(n=2))
    mean, std = q.mean, q.stddev
    assert torch.equal(mean, q.mean) and torch.equal(std, q.stddev)
    torch.manual_seed(29)
    with torch.no_grad():
        s = q.sample((20000,))
    # the moments use 1000 draws: their error is about std / sqrt(1000)
    assert ((mean - s.mean(0)).abs() < 4 * s.std(0) / math.sqrt(1000)).all()
    assert ((std - s.std(0)).abs() < 0.15 * s.std(0)).all()


def test_discretized_logistic_is_exact_and_stable_for_extreme_parameters():
    levels = torch.arange(256, dtype=F64) / 255
    for dtype in (torch.float32, F64):
        for loc, scale in [(0.5, 1e-6), (0.5, 1e3), (-40.0, 0.01), (40.0, 0.01), (0.2, 1e-4)]:
            d = DiscretizedLogisticMixture(
                torch.zeros(1, dtype=dtype), torch.tensor([loc], dtype=dtype), torch.tensor([scale], dtype=dtype)
            )
            log_p = d.log_prob(levels.to(dtype))
            assert torch.isfinite(log_p).all() and (log_p <= 1e-6).all(), (loc, scale)
            assert float(torch.logsumexp(log_p.double(), 0)) == pytest.approx(0.0, abs=1e-5)
    # a tiny scale puts all the mass on the bin holding the location; the edges collect the tails
    sharp = DiscretizedLogisticMixture(torch.zeros(1, dtype=F64), torch.tensor([128 / 255], dtype=F64), torch.tensor([1e-6], dtype=F64))
    assert float(sharp.log_prob(torch.tensor(128 / 255, dtype=F64))) == pytest.approx(0.0, abs=1e-12)
    left = DiscretizedLogisticMixture(torch.zeros(1, dtype=F64), torch.tensor([-40.0], dtype=F64), torch.tensor([0.01], dtype=F64))
    assert float(left.log_prob(torch.tensor(0.0, dtype=F64))) == pytest.approx(0.0, abs=1e-12)


def test_discretized_logistic_mean_and_samples_follow_the_probabilities():
    g = torch.Generator().manual_seed(30)
    d = DiscretizedLogisticMixture(
        torch.randn(2, 3, generator=g, dtype=F64), torch.rand(2, 3, generator=g, dtype=F64),
        0.05 + 0.1 * torch.rand(2, 3, generator=g, dtype=F64),
    )
    levels = (torch.arange(256, dtype=F64) / 255)[:, None].expand(256, 2)
    prob = d.log_prob(levels).exp()  # [256, 2]
    torch.testing.assert_close(d.mean, (levels * prob).sum(0), rtol=1e-12, atol=1e-12)
    torch.manual_seed(31)
    n = 40000
    x = d.sample((n,))  # [n, 2]
    counts = torch.stack([(torch.round(x[:, j] * 255).long() == torch.arange(256)[:, None]).sum(1) for j in range(2)], 1)
    expected = n * prob
    # every bin within 5 binomial standard errors (plus one count), and the means agree
    assert ((counts - expected).abs() <= 5 * (expected * (1 - prob)).sqrt() + 1).all()
    assert ((x.mean(0) - d.mean).abs() < 5 * x.std(0) / math.sqrt(n)).all()


def test_likelihood_support_checks():
    cb = ContinuousBernoulliDecoder(MLP(2, [], 3), (3,))
    cb.check(torch.tensor([[0.0, 0.3, 1.0]]))
    with pytest.raises(VaelabError, match=r"continuous Bernoulli.*\[0, 1\]"):
        cb.check(torch.tensor([[0.0, 1.5, 1.0]]))
    lm = LogisticMixtureDecoder(MLP(2, [], 9), (3,), mixtures=1)
    lm.check(torch.tensor([[0.0, 17 / 255, 1.0]]))
    lm.check((torch.tensor([[0, 17, 255]]) / 255).float())  # float32 rounding of k/255 passes
    with pytest.raises(VaelabError, match="off the grid k/255"):
        lm.check(torch.tensor([[0.0, 0.5, 1.0]]))
    with pytest.raises(VaelabError, match=r"needs \[0, 1\]"):
        lm.check(torch.tensor([[0.0, 255.0, 1.0]]))
    with pytest.raises(VaelabError, match="NaN"):
        lm.check(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(VaelabError, match="Laplace likelihood scale must be > 0"):
        LaplaceDecoder(MLP(2, [], 3), (3,), scale=0.0)


# --- every combination in a VAE -----------------------------------------------------------


def vae_data(likelihood: str, x_shape: tuple[int, ...], n: int = 8) -> Tensor:
    g = torch.Generator().manual_seed(32)
    if likelihood in ("bernoulli", "continuous-bernoulli", "logistic-mixture"):
        return torch.randint(0, 256, (n, *x_shape), generator=g).float() / 255
    return torch.randn(n, *x_shape, generator=g)


def train_one_step(model: vaelab.VAE, x: Tensor) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    terms = elbo(model.trace(x, 2))
    loss = -terms.elbo.mean()
    assert torch.isfinite(loss) and torch.isfinite(terms.kl).all()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    optimizer.step()
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert torch.isfinite(model.log_weights(x, 2)).all()


@pytest.mark.parametrize("posterior,prior", list(itertools.product(POSTERIORS, PRIORS)))
def test_every_posterior_and_prior_trains_a_step_in_a_vae(posterior, prior, tmp_path):
    torch.manual_seed(33)
    kwargs = dict(latent_dim=2, hidden=[16], posterior=posterior, prior=prior, flow_steps=2, prior_components=3)
    model = build_vae((1, 8, 8), **kwargs)
    train_one_step(model, vae_data("bernoulli", (1, 8, 8)))
    assert model.sample(3).shape == (3, 1, 8, 8)
    # the weights save as safetensors (no tensor twice) and load into a fresh build
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    fresh = build_vae((1, 8, 8), **kwargs)
    fresh.load_state_dict(load_file(str(path)), strict=True)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_every_likelihood_trains_a_step_in_a_vae(likelihood, net):
    torch.manual_seed(34)
    x_shape = (1, 28, 28) if net == "conv" else (6,)
    model = build_vae(x_shape, latent_dim=2, hidden=[16], net=net, likelihood=likelihood, mixtures=2, learn_scale="feature")
    x = vae_data(likelihood, x_shape)
    model.decoder.check(x)
    train_one_step(model, x)
    assert model.sample(2).shape == (2, *x_shape)
    model.decoder.check(model.sample(2, mean=False))


def test_build_vae_and_config_defaults_are_the_classic_vae():
    config = TrainConfig()
    model = build_model(config.model_spec((1, 28, 28)))
    assert type(model.encoder) is GaussianEncoder and type(model.prior) is StandardNormalPrior
    assert type(model.decoder) is BernoulliDecoder
    with pytest.raises(VaelabError, match="unknown posterior 'radial'"):
        build_vae((4,), posterior="radial")  # type: ignore[arg-type]
    with pytest.raises(VaelabError, match="unknown prior"):
        build_vae((4,), prior="flow")  # type: ignore[arg-type]
    with pytest.raises(VaelabError, match="flow_steps"):
        build_vae((4,), posterior="planar", flow_steps=0)
    with pytest.raises(VaelabError, match="unknown value 'radial' for posterior"):
        TrainConfig(posterior="radial")
    with pytest.raises(VaelabError, match="prior_components"):
        TrainConfig.from_mapping({"prior_components": 0})
    spec = TrainConfig.from_mapping(dict(posterior="iaf", flow_steps=3, prior="vamp", prior_components=7,
                                         likelihood="logistic-mixture", mixtures=4)).model_spec((1, 28, 28))
    assert (spec.posterior.name, spec.posterior.options["flow_steps"]) == ("iaf", 3)
    assert (spec.prior.name, dict(spec.prior.options)) == ("vamp", {"prior_components": 7})
    assert (spec.likelihood.name, dict(spec.likelihood.options)) == ("logistic-mixture", {"mixtures": 4})


def test_cli_offers_every_part():
    from click.testing import CliRunner

    from vaelab.cli import cli

    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0
    for option in ("--posterior", "--flow-steps", "--prior", "--prior-components", "--mixtures"):
        assert option in result.output
    for value in ("full-gaussian", "iaf", "vamp", "mog", "logistic-mixture", "continuous-bernoulli", "laplace"):
        assert value in result.output


@pytest.mark.parametrize(
    "settings",
    [
        dict(posterior="iaf", flow_steps=2, prior="vamp", prior_components=5),
        dict(posterior="planar", flow_steps=2, prior="mog", prior_components=3, likelihood="continuous-bernoulli"),
    ],
    ids=["iaf-vamp", "planar-mog-cb"],
)
def test_train_and_load_round_trip(settings, tmp_path):
    config = TrainConfig.from_mapping(dict(data="digits", hidden=[32], latent_dim=2, epochs=1, eval_k=10,
                                           out=str(tmp_path), name="run", **settings))
    model, result = vaelab.runs.train(config, figures=False, progress=False, log=quiet)
    assert result.epochs_done == 1
    loaded = vaelab.load(model.run_dir)
    assert loaded.config == model.config
    assert type(loaded.vae.encoder) is type(model.vae.encoder) and type(loaded.vae.prior) is type(model.vae.prior)
    x = model.test_set()[0][:16]
    with torch.no_grad():
        torch.manual_seed(35)
        expected = model.vae.log_weights(model.as_batch(x), 3)
        torch.manual_seed(35)
        got = loaded.vae.log_weights(loaded.as_batch(x), 3)
    assert torch.isfinite(expected).all()
    assert torch.equal(got, expected)
    assert model.encode(x).mean.shape == (16, 2)  # the flows' Monte Carlo moments
    assert model.reconstruct(x[:2]).shape == (2, 1, 8, 8)


def test_full_covariance_off_diagonal_factor_is_the_scaled_network_output() -> None:
    """L = diag(l) (I + M) with M = off_diagonal_scale x the network's outputs for M: checked
    on set outputs, and M's outputs get gradients; a scale <= 0 is refused."""
    torch.manual_seed(0)
    d = 3
    enc = FullCovarianceEncoder(MLP(4, [8], FullCovarianceEncoder.outputs(d)), d)
    assert enc.off_diagonal_scale == 0.03
    last = [m for m in enc.net.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight[2 * d :] = 0.0
        last.bias[2 * d :] = 1.0  # every raw output for M is 1, so M_ij = off_diagonal_scale
    x = torch.randn(5, 4)
    q = enc(x)
    tril = q.scale_tril  # [5, 3, 3]
    diag = torch.diagonal(tril, dim1=-2, dim2=-1)  # [5, 3]
    assert (diag > 0).all()
    rows, cols = torch.tril_indices(d, d, -1)
    torch.testing.assert_close(tril[:, rows, cols], diag[:, rows] * 0.03)  # L_ij = l_i M_ij
    assert torch.count_nonzero(torch.triu(tril, diagonal=1)) == 0
    q.rsample((4,)).pow(2).sum().backward()  # a loss that depends on the correlations
    assert last.weight.grad[2 * d :].abs().sum() > 0  # M's outputs are being learned
    with pytest.raises(ValueError, match="off_diagonal_scale"):
        FullCovarianceEncoder(MLP(4, [8], FullCovarianceEncoder.outputs(d)), d, off_diagonal_scale=0)
