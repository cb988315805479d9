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
from vaelab.errors import VaelabError
from vaelab.evaluation import EvalSettings, evaluate, format_table, inference_gaps, latent_diagnostics, log_likelihood
from vaelab.evaluation.summary import EvaluationSummary
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
                    gap_eval_samples=2000, seed=0, estimator="is")


# --- log p(x) and the ELBO ---------------------------------------------------------------------


def test_log_px_matches_the_exact_value_within_its_standard_error(lg, x, evaluation) -> None:
    exact = lg.log_px(x)  # [N]
    ev = evaluation.summary()
    assert ev.k == 5000 and ev.n == 20
    assert abs(ev.log_px - float(exact.mean())) < Z * ev.log_px_mc_stderr
    # per example too, each within its own delta-method error sqrt(1/ESS - 1/K)
    se = evaluation.log_px_mc_se
    assert bool(((evaluation.likelihood.per_example - exact).abs() < Z * se + 1e-9).all())
    assert 1 <= ev.ess_min <= ev.ess_median <= 5000
    assert ev.log_px_stderr == pytest.approx(float(evaluation.likelihood.per_example.std() / math.sqrt(20)))
    assert ev.bits_per_dim is None  # a Gaussian likelihood on real data: a density, no bits
    assert "bits_per_dim" not in evaluation.to_dict()


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
    ev = evaluation.summary()
    assert ev.distortion == -ev.reconstruction and ev.elbo == pytest.approx(ev.reconstruction - ev.kl)


# --- the gap split ------------------------------------------------------------------------------


def test_gap_split_matches_closed_forms(lg, x, evaluation) -> None:
    gaps = evaluation.gaps
    g = gaps.summary()
    m, _ = lg.posterior(x)
    mean_field = lg.mean_field_cov()
    approximation = lg.elbo_gap(x, m, mean_field)  # KL(best mean-field q || p(z|x)), [N]
    inference = lg.elbo_gap(x, m + SHIFT, mean_field * INFLATE**2)  # KL(encoder q || p(z|x))
    assert float((inference - approximation).mean()) > 0.3  # the encoder is clearly suboptimal
    assert abs(g.approximation_gap - float(approximation.mean())) < Z * g.approximation_gap_mc_stderr
    assert abs(g.amortization_gap - float((inference - approximation).mean())) < Z * g.amortization_gap_mc_stderr + 0.01
    assert abs(g.inference_gap - float(inference.mean())) < Z * g.inference_gap_mc_stderr
    assert g.inference_gap == pytest.approx(g.approximation_gap + g.amortization_gap)


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


def test_collapse_is_graded_on_a_model_collapsed_on_purpose_and_on_a_healthy_one() -> None:
    x = _digits()[:300]
    torch.manual_seed(0)
    strong = latent_diagnostics(_train(kl_weight=50.0), x, mi_samples=300)  # beta = 50: collapsed on purpose
    torch.manual_seed(0)
    healthy = latent_diagnostics(_train(kl_weight=1.0, steps=600), x, mi_samples=300)
    torch.manual_seed(0)
    early = latent_diagnostics(_train(kl_weight=1.0), x, mi_samples=300)  # 150 steps: I(x;z) is 20 % of log N
    assert early.verdict == "mostly collapsed" and any(w.startswith("posterior mostly collapsed") for w in early.warnings)
    assert strong.verdict == "collapsed" and strong.mutual_information < 0.1 * math.log(300)
    (warning,) = [w for w in strong.warnings if w.startswith("posterior collapse")]
    for remedy in ("--free-bits", "--warmup", "--beta", "--hidden"):
        assert remedy in warning and any(remedy in r for r in strong.summary().remedies)
    assert healthy.verdict == "healthy" and healthy.summary().remedies == ()
    informative = healthy.summary().informative_units
    assert len(informative) >= 2 and all(float(healthy.kl_per_dim[i]) > 0.1 for i in informative)
    assert healthy.mutual_information > 0.3 * math.log(300)


@pytest.mark.parametrize("mi,rate,units,verdict", [
    (0.14, 0.22, 11, "collapsed"),  # the 3-epoch digits run of issue 14: 11 "active" units, 2 % of log N
    (0.5, 3.0, 0, "collapsed"),  # nothing above 0.1 nats in any unit
    (3.0, 0.4, 2, "collapsed"),  # a rate below 0.5 nats
    (1.4, 5.0, 3, "mostly collapsed"),  # 20 % of log N
    (5.0, 20.0, 10, "healthy"),
])
def test_collapse_verdict_reads_information_against_its_ceiling(mi: float, rate: float, units: int, verdict: str) -> None:
    from vaelab.evaluation.diagnostics import collapse_verdict

    assert collapse_verdict(mi, 1000, rate, units) == verdict  # log N = 6.91


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
    assert d.to_dict()["collapsed"] is True and d.summary().collapsed is True


# --- the result as data ----------------------------------------------------------------------


def test_evaluation_is_json_seeded_and_leaves_the_callers_random_state(lg, x) -> None:
    vae = lg.vae(lg.mean_field_encoder(shift=SHIFT))
    state = torch.random.get_rng_state()
    options = dict(k=50, mi_samples=100, gap_examples=4, gap_steps=20, gap_eval_samples=50, seed=3)
    result = evaluate(vae, x, **options)
    first = result.to_dict(per_example=True)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = evaluate(vae, x, **options)
    assert again.to_dict(per_example=True) == first  # wall times are attributes, not in the JSON
    assert again.summary().estimates[0].seconds > 0 and "seconds" not in first["estimates"][0]
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
    table = format_table(result.summary())
    for row in ("ELBO", "reconstruction", "KL", "-log p(x), K=50", "active units", "approximation gap", "nats"):
        assert row in table


def test_bits_per_dimension_only_for_discrete_data() -> None:
    vae = build_vae((64,), latent_dim=2, hidden=[8])
    binary = (_digits()[:10] > 0.5).float()
    ev = evaluate(vae, binary, k=5, mi_samples=10, gap_examples=0).summary()
    assert ev.bits_per_dim == pytest.approx(-ev.log_px / (64 * math.log(2)))
    assert ev.gaps is None and ev.to_dict()["gaps"] is None
    grey = evaluate(vae, _digits()[:10], k=5, mi_samples=10, gap_examples=0)
    assert grey.summary().bits_per_dim is None and "bits_per_dim" not in grey.to_dict()
    ll_free = evaluate(vae, binary, k=0, mi_samples=0)
    assert ll_free.summary().log_px is None and "log_px" not in ll_free.to_dict()


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
        assert g.inference_gap == pytest.approx(g.approximation_gap + g.amortization_gap)
    else:
        assert ev.gaps is None and any("diagonal Gaussian" in w for w in ev.warnings)


# --- the summary: typed across layers, JSON at the edge ------------------------------------------


@pytest.fixture(scope="module")
def small(lg: LinearGaussian, x: torch.Tensor):
    vae = lg.vae(lg.mean_field_encoder(shift=SHIFT))
    return evaluate(vae, x, k=50, mi_samples=100, gap_examples=4, gap_steps=20, gap_eval_samples=50, seed=3)


def test_summary_round_trips_through_json_and_holds_the_evaluations_numbers(small) -> None:
    summary = small.summary(data="twenty draws", per_example=True)
    doc = json.loads(json.dumps(summary.to_dict(), allow_nan=False))
    assert doc == small.to_dict(per_example=True) | {"data": "twenty draws"}  # the same JSON as before
    back = EvaluationSummary.from_dict(doc, source="eval.json")
    assert back == summary and back.to_dict() == doc
    # attributes, not keys: the figures themselves
    assert summary.n == 20 and summary.k == 50 and summary.units == "nats per example"
    assert summary.log_px == pytest.approx(float(small.likelihood.per_example.mean()), rel=1e-12)
    assert summary.nll == -summary.log_px and summary.kl == pytest.approx(float(small.terms.kl.mean()), rel=1e-12)
    assert summary.latents.active_units == small.latents.active_units
    assert summary.latents.kl_per_dim == pytest.approx(small.latents.kl_per_dim.tolist(), rel=1e-12)
    assert summary.gaps.n == 4 and summary.gaps.settings.steps == 20
    assert summary.settings == EvalSettings(k=50, mi_samples=100, gap_examples=4, gap_steps=20,
                                            gap_eval_samples=50, seed=3)
    assert summary.device == "cpu" and summary.per_example.log_px == tuple(small.likelihood.per_example.tolist())
    assert summary.accuracy is None and summary.conditional_on == () and summary.given == ""


def test_summary_reads_files_of_older_versions() -> None:
    # vaelab 0.1.0 wrote these keys only (TrainedModel.evaluate returned a dict)
    old = {"n": 180, "elbo": -40.5, "reconstruction": -38.0, "kl": 2.5, "units": "nats per example",
           "k": 1000, "log_px": -39.75, "log_px_stderr": 0.5, "nll": 39.75, "bits_per_dim": 0.9}
    ev = EvaluationSummary.from_dict(old, source="old/eval.json")
    assert (ev.n, ev.elbo, ev.k, ev.nll, ev.bits_per_dim) == (180, -40.5, 1000, 39.75, 0.9)
    assert ev.elbo_stderr is None and ev.log_px_mc_stderr is None and ev.ess_median is None
    assert ev.latents is None and ev.gaps is None and ev.settings is None and ev.warnings == ()
    table = format_table(ev)
    assert "-log p(x), K=1000" in table and "39.75 ± 0.50 nats" in table and "ESS" not in table
    assert format_table(old) == table  # the JSON itself is read the same way
    # a newer file's unknown keys are ignored; integers are accepted where numbers are declared
    newer = EvaluationSummary.from_dict({**old, "elbo": -40, "something_new": [1, 2]}, source="new.json")
    assert newer.elbo == -40.0 and isinstance(newer.elbo, float)


@pytest.mark.parametrize("change,named", [
    (lambda d: d.pop("elbo"), "elbo is missing"),
    (lambda d: d.update(n="180"), "n must be a whole number"),
    (lambda d: d.update(n=True), "n must be a whole number"),
    (lambda d: d["latents"]["active"].__setitem__(1, "yes"), r"latents\.active\[1\] must be true or false"),
    (lambda d: d["gaps"]["settings"].update(steps=2.5), r"gaps\.settings\.steps must be a whole number"),
    (lambda d: d["settings"].update(k=-1), "settings: evaluation setting k must be >= 0"),
    (lambda d: d.update(warnings="none"), "warnings must be a list"),
    (lambda d: d.update(latents=[]), "latents must be a JSON object"),
])
def test_a_malformed_file_is_one_line_naming_the_file_and_the_key(small, change, named: str) -> None:
    doc = json.loads(json.dumps(small.to_dict()))
    change(doc)
    with pytest.raises(VaelabError, match=named) as info:
        EvaluationSummary.from_dict(doc, source="runs/x/eval.json")
    assert str(info.value).startswith("'runs/x/eval.json': ") and "\n" not in str(info.value)
    with pytest.raises(VaelabError, match="must be a JSON object"):
        EvaluationSummary.from_dict([doc], source="runs/x/eval.json")


def test_read_names_a_missing_or_corrupt_file(small, tmp_path) -> None:
    path = tmp_path / "eval.json"
    with pytest.raises(VaelabError, match="not found"):
        EvaluationSummary.read(path)
    path.write_text("{not json")
    with pytest.raises(VaelabError, match="eval.json' is not readable JSON"):
        EvaluationSummary.read(path)
    path.write_text(json.dumps(small.to_dict()))
    assert EvaluationSummary.read(path) == small.summary()


def test_table_of_a_conditional_and_of_a_semi_supervised_evaluation(small) -> None:
    conditional = small.summary().replace(conditional_on=("label",))
    table = format_table(conditional)
    assert "-log p(x|label), K=50" in table and "KL(q(z|x,label) || p(z|label))" in table
    assert conditional.to_dict()["conditional_on"] == ["label"]
    # M2: the classifier's accuracy with its binomial standard error sqrt(a (1 - a) / N)
    m2 = small.summary().replace(accuracy=0.9, accuracy_stderr=math.sqrt(0.9 * 0.1 / 20))
    assert "classifier accuracy q(y|x)" in format_table(m2) and "90.00 ± 6.71 %" in format_table(m2)
    back = EvaluationSummary.from_dict(json.loads(json.dumps(m2.to_dict())))
    assert (back.accuracy, back.accuracy_stderr) == (0.9, m2.accuracy_stderr)
    assert "classifier accuracy" not in format_table(small)  # no classifier: no row
