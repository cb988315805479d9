"""Evaluation checked against closed forms: log p(x), the gap split and latent health.

On the linear-Gaussian model (``linear_gaussian.py``) log p(x), the exact posterior and the
best mean-field posterior are known, so the estimates must match them within the
Monte-Carlo errors the library itself reports. Collapse is checked on a model whose
posterior is the prior by construction, on one trained with a huge KL weight, and on a
healthy one. Float64 where the maths is checked; seeds fixed.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from linear_gaussian import LinearGaussian, kl_gaussians
from vaelab.build import build_vae
from vaelab.data import load_data
from vaelab.evaluation import evaluate, format_table, inference_gaps, latent_diagnostics, log_likelihood
from vaelab.objectives import elbo

Z = 4.0  # tolerance in standard errors


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def lg() -> LinearGaussian:
    return LinearGaussian.random(latent_dim=3, x_dim=5, s=0.7, seed=0)


@pytest.fixture(scope="module")
def x(lg: LinearGaussian) -> torch.Tensor:
    return lg.sample_x(20, seed=1)


SHIFT, INFLATE = 0.2, 1.3  # the deliberately suboptimal encoder: mean moved, scales inflated


@pytest.fixture(scope="module")
def evaluation(lg: LinearGaussian, x: torch.Tensor):
    vae = lg.vae(lg.mean_field_encoder(shift=SHIFT, inflate=INFLATE))
    return evaluate(vae, x, k=5000, k_chunk=1000, mi_samples=2000, gap_examples=20, gap_steps=300,
                    gap_eval_samples=2000, seed=0)


# --- log p(x) and the ELBO ---------------------------------------------------------------------


def test_log_px_matches_the_exact_value_within_its_standard_error(lg, x, evaluation) -> None:
    exact = lg.log_px(x)  # [N]
    ev = evaluation.to_dict()
    assert ev["k"] == 5000 and ev["n"] == 20
    assert abs(ev["log_px"] - float(exact.mean())) < Z * ev["log_px_mc_stderr"]
    # per example too, each within its own delta-method error sqrt(1/ESS - 1/K)
    se = evaluation.log_px_mc_se
    assert bool(((evaluation.likelihood.per_example - exact).abs() < Z * se + 1e-9).all())
    assert 1 <= ev["ess_min"] <= ev["ess_median"] <= 5000
    assert ev["log_px_stderr"] == pytest.approx(float(evaluation.likelihood.per_example.std() / math.sqrt(20)))
    assert "bits_per_dim" not in ev  # a Gaussian likelihood on real data: a density, no bits


def test_exact_posterior_as_proposal_gives_log_px_exactly_and_full_ess(lg, x) -> None:
    torch.manual_seed(0)
    ll = log_likelihood(lg.vae(lg.exact_encoder()), x, k=300, k_chunk=70)  # chunks of 70, 70, 70, 70, 20
    torch.testing.assert_close(ll.per_example, lg.log_px(x), rtol=0, atol=1e-9)
    torch.testing.assert_close(ll.ess, torch.full((20,), 300.0, dtype=torch.float64), rtol=1e-9, atol=0)


def test_elbo_and_its_terms_match_closed_forms(lg, x, evaluation) -> None:
    m, _ = lg.posterior(x)
    q_mean, q_cov = m + SHIFT, lg.mean_field_cov() * INFLATE**2
    exact_elbo = lg.log_px(x) - lg.elbo_gap(x, q_mean, q_cov)  # [N]
    exact_kl = kl_gaussians(q_mean, q_cov.expand(20, 3, 3), torch.zeros(20, 3, dtype=torch.float64),
                            torch.eye(3, dtype=torch.float64).expand(20, 3, 3))
    terms = evaluation.terms
    torch.testing.assert_close(terms.kl, exact_kl)  # closed form, no noise
    torch.testing.assert_close(terms.elbo, terms.reconstruction - terms.kl)
    err = terms.elbo - exact_elbo  # Monte Carlo only
    assert abs(float(err.mean())) < Z * float(err.std()) / math.sqrt(20)
    ev = evaluation.to_dict()
    assert ev["distortion"] == -ev["reconstruction"] and ev["elbo"] == pytest.approx(ev["reconstruction"] - ev["kl"])


# --- the gap split ------------------------------------------------------------------------------


def test_gap_split_matches_closed_forms(lg, x, evaluation) -> None:
    gaps = evaluation.gaps
    g = gaps.summary()
    m, _ = lg.posterior(x)
    mean_field = lg.mean_field_cov()
    approximation = lg.elbo_gap(x, m, mean_field)  # KL(best mean-field q || p(z|x)), [N]
    inference = lg.elbo_gap(x, m + SHIFT, mean_field * INFLATE**2)  # KL(encoder q || p(z|x))
    assert float((inference - approximation).mean()) > 0.3  # the encoder is clearly suboptimal
    assert abs(g["approximation_gap"] - float(approximation.mean())) < Z * g["approximation_gap_mc_stderr"]
    assert abs(g["amortization_gap"] - float((inference - approximation).mean())) < Z * g["amortization_gap_mc_stderr"] + 0.01
    assert abs(g["inference_gap"] - float(inference.mean())) < Z * g["inference_gap_mc_stderr"]
    assert g["inference_gap"] == pytest.approx(g["approximation_gap"] + g["amortization_gap"])


def test_local_optimisation_finds_the_optimal_mean_field_posterior(lg, x, evaluation) -> None:
    gaps = evaluation.gaps
    m, _ = lg.posterior(x)
    idx = gaps.indices
    found = lg.elbo_gap(x[idx], gaps.loc, torch.diag_embed(gaps.scale**2))  # KL(q* || p(z|x)) exactly
    best = lg.elbo_gap(x[idx], m[idx], lg.mean_field_cov())
    assert float((found - best).max()) < 0.01  # nats: q* is as good as the optimum, example by example
    sd = lg.mean_field_cov().diagonal().sqrt()
    assert float(((gaps.loc - m[idx]) / sd).abs().max()) < 0.2
    assert float((gaps.scale / sd - 1).abs().max()) < 0.1


def test_gap_split_needs_a_diagonal_gaussian_encoder(lg, x) -> None:
    with pytest.raises(ValueError, match="diagonal Gaussian"):
        inference_gaps(lg.vae(lg.exact_encoder()), x, n=2, k=10, steps=1)
    ev = evaluate(lg.vae(lg.exact_encoder()), x, k=10, mi_samples=50, gap_examples=5)
    assert ev.gaps is None and any("gap split skipped" in w for w in ev.warnings)
    assert ev.latents.kl_per_dim is None  # a full-covariance posterior has no per-dimension KL
    assert json.loads(json.dumps(ev.to_dict()))["gaps"] is None


# --- latent health ------------------------------------------------------------------------------


def test_elbo_surgery_adds_up_and_kl_per_dimension_sums_to_kl(lg, x, evaluation) -> None:
    lat = evaluation.latents
    assert lat.kl_per_dim.shape == (3,)
    assert float(lat.kl_per_dim.sum()) == pytest.approx(float(evaluation.terms.kl.mean()), rel=1e-12)
    se = math.hypot(lat.mutual_information_stderr, lat.marginal_kl_stderr)
    assert abs(lat.mutual_information + lat.marginal_kl - lat.kl) < Z * se
    assert 0 < lat.mutual_information <= math.log(20)
    assert lat.active_units == 3 and not lat.collapsed


def _digits() -> torch.Tensor:
    return load_data("digits", seed=0).train.reshape(-1, 64)[:512]  # [512, 64] in [0, 1]


def _train(kl_weight: float, steps: int = 150) -> nn.Module:
    """A tiny VAE trained with loss = -(reconstruction - kl_weight * KL): a custom loop."""
    torch.manual_seed(0)
    data = _digits()
    vae = build_vae((64,), latent_dim=4, hidden=[32])
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for step in range(steps):
        xb = data[torch.randint(len(data), (128,))]
        terms = elbo(vae.trace(xb))
        loss = -(terms.reconstruction - kl_weight * terms.kl).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return vae.eval()


def test_huge_kl_weight_is_reported_as_collapsed_and_a_healthy_model_is_not() -> None:
    x = _digits()[:200]
    torch.manual_seed(0)
    collapsed = latent_diagnostics(_train(kl_weight=100.0), x, mi_samples=200)
    torch.manual_seed(0)
    healthy = latent_diagnostics(_train(kl_weight=1.0), x, mi_samples=200)
    assert collapsed.collapsed and collapsed.active_units == 0 and collapsed.kl < 0.1
    assert any("posterior collapse" in w for w in collapsed.warnings)
    assert not healthy.collapsed and healthy.active_units >= 2 and healthy.kl > 0.5
    assert not any("posterior collapse" in w for w in healthy.warnings)
    assert healthy.mutual_information > 10 * max(collapsed.mutual_information, 1e-3)


def test_posterior_equal_to_the_prior_is_collapsed() -> None:
    vae = build_vae((64,), latent_dim=3, hidden=[16])
    last = vae.encoder.net[-1]
    with torch.no_grad():  # loc = 0 and softplus(raw) + min_scale = 1 whatever x is: q = p(z)
        last.weight.zero_()
        last.bias[:3] = 0.0
        last.bias[3:] = math.log(math.expm1(1.0 - vae.encoder.min_scale))
    torch.manual_seed(0)
    d = latent_diagnostics(vae, _digits()[:100], mi_samples=100)
    assert d.collapsed and d.active_units == 0
    assert d.kl == pytest.approx(0.0, abs=1e-6) and d.mutual_information == pytest.approx(0.0, abs=1e-9)
    assert "posterior collapse" in d.warnings[0]
    assert d.to_dict()["collapsed"] is True


# --- the result as data ----------------------------------------------------------------------


def test_evaluation_is_json_seeded_and_leaves_the_callers_random_state(lg, x) -> None:
    vae = lg.vae(lg.mean_field_encoder(shift=SHIFT))
    state = torch.random.get_rng_state()
    options = dict(k=50, mi_samples=100, gap_examples=4, gap_steps=20, gap_eval_samples=50, seed=3)
    first = evaluate(vae, x, **options).to_dict(per_example=True)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert evaluate(vae, x, **options).to_dict(per_example=True) == first
    json.dumps(first, allow_nan=False)  # no NaN anywhere
    for key in ("n", "units", "elbo", "elbo_stderr", "reconstruction", "distortion", "kl", "k", "log_px",
                "log_px_stderr", "log_px_mc_stderr", "nll", "ess_median", "latents", "gaps", "warnings", "settings"):
        assert key in first, key
    for key in ("kl_per_dim", "activity", "active_units", "mutual_information", "marginal_kl", "collapsed"):
        assert key in first["latents"], key
    for key in ("approximation_gap", "amortization_gap", "inference_gap", "approximation_gap_mc_stderr"):
        assert key in first["gaps"], key
    assert first["settings"] | options == first["settings"]  # every setting is recorded
    assert len(first["per_example"]["log_px"]) == 20
    table = format_table(first)
    for row in ("ELBO", "reconstruction", "KL", "-log p(x), K=50", "active units", "approximation gap", "nats"):
        assert row in table


def test_bits_per_dimension_only_for_discrete_data() -> None:
    vae = build_vae((64,), latent_dim=2, hidden=[8])
    binary = (_digits()[:10] > 0.5).float()
    ev = evaluate(vae, binary, k=5, mi_samples=10, gap_examples=0).to_dict()
    assert ev["bits_per_dim"] == pytest.approx(-ev["log_px"] / (64 * math.log(2)))
    assert ev["gaps"] is None
    grey = evaluate(vae, _digits()[:10], k=5, mi_samples=10, gap_examples=0).to_dict()
    assert "bits_per_dim" not in grey
    assert "log_px" not in evaluate(vae, binary, k=0, mi_samples=0).to_dict()


@pytest.mark.parametrize("posterior,prior", [("iaf", "normal"), ("gaussian", "mog")])
def test_flows_and_mixture_priors_get_latent_health_and_the_gaps_they_allow(posterior: str, prior: str) -> None:
    torch.manual_seed(0)
    vae = build_vae((64,), latent_dim=3, hidden=[16], posterior=posterior, prior=prior)
    ev = evaluate(vae, _digits()[:30], k=20, mi_samples=100, gap_examples=3, gap_steps=5, gap_eval_samples=20)
    lat = ev.latents
    assert lat.kl_per_dim is None  # not a factorised posterior and prior: no per-dimension KL
    assert math.isfinite(lat.mutual_information) and lat.mutual_information <= math.log(30) + 1e-9
    # without a closed-form KL the average KL comes from the same draws: the split is exact
    assert lat.mutual_information + lat.marginal_kl == pytest.approx(lat.kl, abs=1e-9)
    if posterior == "gaussian":  # diagonal encoder, Monte-Carlo KL against the mixture prior
        g = ev.gaps.summary()
        assert g["inference_gap"] == pytest.approx(g["approximation_gap"] + g["amortization_gap"])
    else:
        assert ev.gaps is None and any("diagonal Gaussian" in w for w in ev.warnings)
