"""Tight log-likelihoods checked against exact answers: Pareto k-hat, AIS, BDMC, the mixture proposal.

On the linear-Gaussian model (``linear_gaussian.py``) log p(x) and the posterior are known in
closed form, so every estimator is checked against the truth within the standard errors it
reports itself (Z of them). The proposal of the encoder is made bad on purpose (mean moved,
scales halved: too narrow), so that importance sampling from it is visibly loose and the
better estimators have something to fix. Float64, fixed seeds.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from linear_gaussian import DTYPE, ConditionalLinearGaussian, LinearGaussian
from vaelab.build import build_vae
from vaelab.context import Variable
from vaelab.errors import VaelabError
from vaelab.evaluation import EvalSettings, evaluate, format_table, log_likelihood
from vaelab.evaluation.ais import AUTO_MIN_STEPS, ais, ais_unavailable, auto_steps, bdmc, sigmoid_schedule
from vaelab.evaluation.proposals import laplace_posterior, mixture_proposal
from vaelab.evaluation.psis import KHAT_BAD, KHAT_GOOD, pareto_khat, tail_length
from vaelab.evaluation.summary import EvaluationSummary
from vaelab.m2 import build_m2
from vaelab.spec import ModelSpec

Z = 4.0  # tolerance in standard errors

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SHIFT, NARROW = 0.5, 0.5  # the bad encoder: mean moved by 0.5, standard deviations halved


@pytest.fixture(scope="module")
def lg() -> LinearGaussian:
    return LinearGaussian.random(latent_dim=3, x_dim=5, s=0.7, seed=0)


@pytest.fixture(scope="module")
def x(lg: LinearGaussian) -> torch.Tensor:
    return lg.sample_x(20, seed=1)


@pytest.fixture(scope="module")
def bad(lg: LinearGaussian):
    return lg.vae(lg.mean_field_encoder(shift=SHIFT, inflate=NARROW))


def mc_error_of_mean(se: torch.Tensor) -> float:
    """Monte-Carlo standard error of a mean of per-example estimates with errors ``se`` ``[N]``."""
    return float(se.double().pow(2).sum().sqrt() / se.numel())


# --- PSIS: the Pareto k-hat ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [0.2, 0.5, 0.9])
def test_khat_recovers_the_tail_shape_of_pareto_weights(shape: float) -> None:
    # w = U^(-k) has a generalized Pareto tail of shape exactly k
    g = torch.Generator().manual_seed(0)
    u = torch.rand(4000, 200, generator=g, dtype=DTYPE)
    khat = pareto_khat(-shape * u.log())  # [200]
    se = float(khat.std() / math.sqrt(200))
    # the estimator's bias (the prior's pull towards 0.5, M = 190) is below 0.02 here
    assert abs(float(khat.mean()) - shape) < Z * se + 0.02
    assert tail_length(4000) == 190


def test_khat_is_low_for_the_exact_posterior_and_high_for_a_too_narrow_proposal(lg, x, bad) -> None:
    torch.manual_seed(0)
    exact = log_likelihood(lg.vae(lg.exact_encoder()), x, k=2000)
    assert float(exact.khat.max()) < KHAT_GOOD  # constant weights: no tail at all
    torch.manual_seed(0)
    wide = log_likelihood(lg.vae(lg.mean_field_encoder(inflate=1.5)), x, k=2000)
    assert float(wide.khat.median()) < KHAT_GOOD  # wider than the posterior: bounded weights
    torch.manual_seed(0)
    narrow = log_likelihood(bad, x, k=2000)
    assert float(narrow.khat.median()) > KHAT_BAD  # too narrow: infinite-variance weights
    # streamed in chunks, the k-hat is that of all K weights at once
    torch.manual_seed(0)
    lw = torch.cat([bad.log_weights(x, 50).double() for _ in range(40)])  # [2000, 20], the same draws
    torch.testing.assert_close(narrow.khat, pareto_khat(lw))


def test_khat_is_in_the_summary_the_json_the_table_and_warned_about(bad, x) -> None:
    ev = evaluate(bad, x, k=500, mi_samples=0, gap_examples=0, estimator="is")
    s = ev.summary(per_example=True)
    assert s.khat_bad_share is not None and s.khat_bad_share > 0.5 and s.khat_median > KHAT_BAD
    doc = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert doc["khat_median"] == s.khat_median and len(doc["per_example"]["khat"]) == 20
    assert EvaluationSummary.from_dict(doc) == s
    assert "Pareto k-hat" in format_table(s)
    assert any("Pareto k-hat" in w and "above 0.7" in w for w in s.warnings)


# --- AIS -------------------------------------------------------------------------------------


def test_sigmoid_schedule_runs_from_0_to_1_upwards() -> None:
    b = sigmoid_schedule(100)
    assert b.shape == (101,) and b[0] == 0 and b[-1] == 1 and bool((b.diff() > 0).all())
    assert sigmoid_schedule(1).tolist() == [0.0, 1.0]


@pytest.mark.slow
def test_ais_converges_to_the_exact_log_px_and_is_not_above_it(lg, x, bad) -> None:
    exact = lg.log_px(x)  # [N]
    torch.manual_seed(0)
    short = ais(bad, x, steps=10, chains=16)
    torch.manual_seed(1)
    long = ais(bad, x, steps=500, chains=16, ladder=2)
    # T = 500: the error is within the reported Monte-Carlo error (4.5 s on one core)
    err, se = float((long.per_example - exact).mean()), mc_error_of_mean(long.mc_se)
    assert abs(err) < Z * se and se < 0.05
    # T = 10 is still clearly below: AIS approaches log p(x) from below
    assert float((short.per_example - exact).mean()) < -Z * mc_error_of_mean(short.mc_se)
    assert sorted(long.trace) == [125, 250, 500]
    gaps = [float((exact - long.trace[t]).mean()) for t in (125, 250, 500)]
    assert gaps[0] > gaps[2] - Z * se  # the trace approaches from below as T grows
    assert 0.4 < float(long.acceptance.mean()) < 0.95  # tuned towards 0.65


def test_ais_with_one_step_is_importance_sampling(lg, x, bad) -> None:
    torch.manual_seed(0)
    r = ais(bad, x, steps=1, chains=64)
    assert r.acceptance.abs().max() == 0  # no transition
    exact = lg.log_px(x)
    torch.manual_seed(0)
    ll = log_likelihood(bad, x, k=64)
    # both are IS with 64 draws from the encoder: the same bias, within the noise
    assert abs(float((r.per_example - ll.per_example).mean())) < Z * math.hypot(
        mc_error_of_mean(r.mc_se), mc_error_of_mean(ll.mc_se))
    assert float((r.per_example - exact).mean()) < 0


@pytest.mark.slow
def test_ais_from_the_prior_and_mixture_importance_sampling_with_a_context(lg) -> None:
    # the conditional model: x = W z + B h(c) + b + s eps; p(x|c) in closed form
    label = Variable("label", "categorical", classes=3)
    truth = ConditionalLinearGaussian.random(latent_dim=3, x_dim=5, context_dim=3, seed=2)
    model = truth.vae((label,))
    c = torch.arange(12, dtype=DTYPE).remainder(3)[:, None]  # [12, 1] label ids
    with torch.no_grad():
        h = model.context(c)
    xc = truth.sample_x(h, seed=3)
    exact = truth.log_px(xc, h)
    for start, seed in (("encoder", 0), ("prior", 1)):
        torch.manual_seed(seed)
        r = ais(model, xc, c=c, steps=200, chains=16, start=start)
        err, se = float((r.per_example - exact).mean()), mc_error_of_mean(r.mc_se)
        assert abs(err) < Z * se + 0.01, (start, err, se)
    torch.manual_seed(2)  # the defensive mixture, given each example's context
    mix = log_likelihood(model, xc, 500, c=c, proposal=lambda xb, cb: mixture_proposal(model, xb, cb, steps=50),
                         estimator="mixture")
    assert abs(float((mix.per_example - exact).mean())) < Z * mc_error_of_mean(mix.mc_se) + 1e-3


@pytest.mark.slow
def test_bdmc_brackets_the_exact_log_px_of_simulated_data(lg, bad) -> None:
    torch.manual_seed(0)
    b = bdmc(bad, 20, steps=200, chains=8)
    exact = lg.log_px(b.x.double())  # [20]
    lo, up = b.lower.per_example, b.upper.per_example
    se_lo, se_up = mc_error_of_mean(b.lower.mc_se), mc_error_of_mean(b.upper.mc_se)
    assert float(lo.mean()) < float(exact.mean()) + Z * se_lo
    assert float(up.mean()) > float(exact.mean()) - Z * se_up
    # converged: the width is zero within the noise of the two bounds
    assert abs(float(b.width.mean())) < Z * math.hypot(se_lo, se_up)
    assert b.upper.direction == "reverse"
    torch.manual_seed(0)
    short = bdmc(bad, 20, steps=3, chains=8)  # far from converged: a wide bracket, the alarm BDMC raises
    se = math.hypot(mc_error_of_mean(short.lower.mc_se), mc_error_of_mean(short.upper.mc_se))
    assert float(short.width.mean()) > 1.0 and float(short.width.mean()) > Z * se


# --- the mixture proposal ----------------------------------------------------------------------


def test_laplace_at_the_posterior_mean_is_the_exact_posterior(lg, x, bad) -> None:
    m, cov = lg.posterior(x)
    lap = laplace_posterior(bad, x, m)
    torch.testing.assert_close(lap.covariance_matrix, cov.expand(20, 3, 3))


def test_mixture_importance_sampling_is_tight_where_the_encoder_is_not(lg, x, bad) -> None:
    exact = lg.log_px(x)
    torch.manual_seed(0)
    mix = log_likelihood(bad, x, 1000, proposal=lambda xb, cb: mixture_proposal(bad, xb, cb, steps=100),
                         estimator="mixture")
    err, se = float((mix.per_example - exact).mean()), mc_error_of_mean(mix.mc_se)
    assert abs(err) < Z * se + 1e-3 and float(mix.khat.max()) < KHAT_BAD
    torch.manual_seed(0)
    encoder = log_likelihood(bad, x, 1000)
    assert float((exact - encoder.per_example).mean()) > 0.5  # the encoder alone is loose


def test_evaluate_reports_the_estimates_side_by_side_and_splits_the_gap_with_the_tightest(lg, x, bad) -> None:
    ev = evaluate(bad, x, estimator="ais", k=200, steps=100, chains=8, ais_ladder=1, bdmc_examples=5,
                  mi_samples=0, gap_examples=5, gap_steps=30, gap_eval_samples=100)
    s = ev.summary()
    assert s.estimator == "ais" and [e.estimator for e in s.estimates] == ["is", "ais"]
    by = {e.estimator: e for e in s.estimates}
    assert by["ais"].log_px > by["is"].log_px  # AIS is the tighter one here
    assert s.log_px == by["ais"].log_px and s.gaps.settings.log_px_estimator == "ais"
    assert s.ais.steps == 100 and [t.steps for t in s.ais.trace] == [50, 100] and s.bdmc.n == 5
    doc = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert EvaluationSummary.from_dict(doc) == s
    table = format_table(s)
    for row in ("AIS, S=8, T=100", "encoder IS, K=200", "BDMC bracket", "log p(x) of the split from      AIS"):
        assert row in table, row


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("change,named", [
    (dict(steps=0), "steps must be >= 1"), (dict(chains=-1), "chains must be >= 1"),
    (dict(k=-5), "k must be >= 0"), (dict(step_size=float("nan")), "step_size must be > 0"),
    (dict(step_size=0.0), "step_size must be > 0"), (dict(step_size=1e9), "step_size must be <= 10"),
    (dict(steps=10**9), "steps must be <= 1,000,000"), (dict(k=10**12), "k must be <= 10,000,000"),
    (dict(estimator="best"), "estimator must be auto, is, mixture or ais"),
    (dict(target_accept=1.0), "target_accept must be < 1"), (dict(steps=2.5), "steps must be a whole number"),
])
def test_bad_settings_are_one_line_errors(change, named: str) -> None:
    with pytest.raises(VaelabError, match=named) as info:
        EvalSettings(**change)
    assert "\n" not in str(info.value)


def test_ais_refuses_what_will_not_fit_in_memory_before_starting(bad, x) -> None:
    with pytest.raises(VaelabError, match="needs about .* GiB .* lower --batch-size or --chains"):
        ais(bad, x.repeat(50, 1), chains=100_000, batch_size=1000)


def _tiny_m2():
    torch.manual_seed(0)
    spec = ModelSpec.create((6,), latent_dim=2, family="m2", options={"hidden": [8]},
                            context=[Variable("label", "categorical", classes=3)])
    return build_m2(spec).double()


def test_m2_is_refused_by_ais_and_the_mixture_but_importance_sampling_works() -> None:
    model = _tiny_m2()
    x = (torch.rand(10, 6, generator=torch.Generator().manual_seed(1), dtype=DTYPE) < 0.5).double()
    for estimator in ("ais", "mixture"):
        with pytest.raises(VaelabError, match="discrete") as info:
            evaluate(model, x, estimator=estimator, k=10, mi_samples=0, gap_examples=0)
        assert "\n" not in str(info.value)
    with pytest.raises(VaelabError, match="partly discrete"):
        ais(model, x, steps=2)
    ev = evaluate(model, x, k=1000, mi_samples=0, gap_examples=0).summary()  # auto: encoder IS for M2
    assert ev.estimator == "is" and math.isfinite(ev.log_px) and ev.khat_median is not None


def test_auto_runs_ais_at_the_cost_of_k_where_it_applies_and_encoder_is_elsewhere(lg, x, bad) -> None:
    exact = float(lg.log_px(x).mean())
    steps = auto_steps(2000, 4, 5)
    assert steps == 50 and auto_steps(1000, 4, 5) == 25 and auto_steps(100, 4, 5) < AUTO_MIN_STEPS
    ev = evaluate(bad, x, k=2000, mi_samples=0, gap_examples=0).summary()  # the default: auto
    assert ev.settings.estimator == "auto" and ev.estimator == "ais" and ev.ais is not None and ev.ais.steps == steps
    assert ev.how() == f"AIS, S=4, T={steps}"
    by_name = {e.estimator: e for e in ev.estimates}
    assert set(by_name) == {"is", "ais"} and by_name["is"].k == 2000  # encoder IS beside it, with its k-hat
    assert by_name["is"].khat_median is not None and by_name["is"].khat_median > KHAT_BAD
    # the warning about the encoder's weights says the headline is not made from them
    khat_warnings = [w for w in ev.warnings if "Pareto k-hat of the encoder IS weights" in w]
    assert len(khat_warnings) == 1 and "the headline -log p(x) is by AIS" in khat_warnings[0]
    assert not any("dominated by a few samples" in w for w in ev.warnings)
    # at the same budget the annealed estimate is the tighter one here, and not above the truth
    assert by_name["ais"].log_px > by_name["is"].log_px
    assert ev.log_px < exact + Z * max(ev.log_px_mc_stderr, 1e-3)
    # too small a K for ten steps: encoder IS, as with --estimator is
    small = evaluate(bad, x, k=100, mi_samples=0, gap_examples=0).summary()
    same = evaluate(bad, x, k=100, mi_samples=0, gap_examples=0, estimator="is").summary()
    assert small.estimator == "is" and small.log_px == same.log_px
    assert ais_unavailable(bad, x) is None  # (models AIS refuses: see the two tests below)
    # a flow posterior: AIS applies (from its inverse) but would cost far more than K samples
    iaf = build_vae((5,), latent_dim=3, hidden=[8], posterior="iaf", likelihood="gaussian").double()
    assert ais_unavailable(iaf, x) is None
    assert evaluate(iaf, x, k=1000, mi_samples=0, gap_examples=0).summary().estimator == "is"


def test_a_model_whose_decoder_cannot_be_differentiated_is_refused() -> None:
    vae = build_vae((4,), latent_dim=2, hidden=[4], likelihood="gaussian")

    class Frozen(torch.nn.Module):  # a decoder that detaches z: no gradient reaches it
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, z: torch.Tensor):
            return self.inner(z.detach())

    vae.decoder = Frozen(vae.decoder)
    with pytest.raises(VaelabError, match="decoder Frozen cannot be differentiated"):
        ais(vae, torch.randn(3, 4), steps=2)
    assert "decoder Frozen cannot be differentiated" in str(ais_unavailable(vae, torch.randn(3, 4)))
    ev = evaluate(vae, torch.randn(3, 4), k=1000, mi_samples=0, gap_examples=0).summary()
    assert ev.settings.estimator == "auto" and ev.estimator == "is"  # auto falls back to encoder IS


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import vaelab

    out = tmp_path_factory.mktemp("runs")
    model, _ = vaelab.train(data="digits", epochs=1, hidden=[16], latent_dim=2, eval_k=0, threads=1, out=str(out),
                            name="tiny", progress=False, figures=False, log=lambda *a: None)
    return model.run_dir


QUICK = ["--k", "30", "--mi-samples", "0", "--gap-examples", "0"]


def test_cli_eval_with_ais_writes_the_estimates_side_by_side(tiny_run, capsys) -> None:
    from vaelab.cli import main

    with pytest.raises(SystemExit) as info:
        main(["eval", str(tiny_run), *QUICK, "--estimator", "ais", "--steps", "5", "--chains", "2",
              "--bdmc-examples", "3", "--ais-ladder", "1"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for row in ("-log p(x), AIS, S=2, T=5", "encoder IS, K=30", "AIS, S=2", "BDMC bracket (3 simulated)",
                "-log p(x) as T grows", "Pareto k-hat"):
        assert row in out, row
    doc = json.loads((tiny_run / "eval.json").read_text())
    assert doc["estimator"] == "ais" and [e["estimator"] for e in doc["estimates"]] == ["is", "ais"]
    assert doc["ais"]["steps"] == 5 and doc["bdmc"]["n"] == 3 and doc["settings"]["chains"] == 2


@pytest.mark.parametrize("argv,culprit", [
    (["--estimator", "ais", "--steps", "0"], "--steps"),
    (["--estimator", "ais", "--chains", "-1"], "--chains"),
    (["--estimator", "ais", "--step-size", "nan"], "step_size"),
    (["--estimator", "ais", "--step-size", "1e9"], "--step-size"),
    (["--k", "-3"], "--k"),
    (["--k", "100000000000"], "--k"),
    (["--estimator", "ais", "--steps", "99999999"], "--steps"),
    (["--estimator", "ais", "--chains", "100000", "--batch-size", "100000"], "GiB of memory"),
    (["--estimator", "magic"], "--estimator"),
])
def test_cli_refuses_bad_estimator_settings_and_writes_nothing(tiny_run, refused, argv, culprit: str) -> None:
    before = (tiny_run / "eval.json").read_bytes() if (tiny_run / "eval.json").exists() else None
    refused(["eval", tiny_run, *QUICK, *argv], culprit)
    after = (tiny_run / "eval.json").read_bytes() if (tiny_run / "eval.json").exists() else None
    assert after == before


def test_auto_reports_encoder_is_when_a_short_anneal_comes_out_looser(lg, x, bad, monkeypatch) -> None:
    """A short AIS run can be looser than the encoder IS beside it (found on a 2-D digits model:
    T=25 0.053 nats below the exact log p(x), encoder IS 0.016): auto's headline is then the
    tighter of the two, with a note; where AIS is the tighter it stays the headline."""
    from dataclasses import replace as replaced

    from vaelab.evaluation import suite

    exact = float(lg.log_px(x).mean())
    real = suite.ais

    def looser(*args, **kwargs):  # the same anneal, every chain's weight 3 nats lower: a loose short run
        result = real(*args, **kwargs)
        return replaced(result, per_example=result.per_example - 3.0, log_weights=result.log_weights - 3.0)

    monkeypatch.setattr(suite, "ais", looser)
    ev = evaluate(bad, x, k=2000, mi_samples=0, gap_examples=0)
    by_name = {e.estimator: e for e in ev.summary().estimates}
    assert by_name["ais"].log_px < by_name["is"].log_px - 0.5  # both run, AIS the looser
    summary = ev.summary()
    assert summary.estimator == "is" and summary.log_px == by_name["is"].log_px
    assert summary.log_px < exact + Z * max(summary.log_px_mc_stderr, 1e-3)
    note = [w for w in summary.warnings if "--estimator auto: AIS with T=50 came out" in w]
    assert len(note) == 1 and "the headline -log p(x) is encoder IS's" in note[0]
    monkeypatch.setattr(suite, "ais", real)  # the real anneal is the tighter here: it stays the headline
    assert evaluate(bad, x, k=2000, mi_samples=0, gap_examples=0).summary().estimator == "ais"


def test_the_tighter_of_two_estimates_notes_only_a_difference_beyond_their_error() -> None:
    from vaelab.evaluation.likelihood import LogLikelihood
    from vaelab.evaluation.suite import _tighter_of

    def est(mean: float, ess: float, name: str) -> LogLikelihood:
        return LogLikelihood(per_example=torch.full((100,), mean, dtype=torch.float64),
                             ess=torch.full((100,), ess, dtype=torch.float64), k=1000, estimator=name)

    enc, low = est(-10.0, 10.0, "is"), est(-10.3, 2.0, "ais")  # error of the mean: sqrt(100 (0.099 + 0.499)) / 100
    notes: list[str] = []
    assert _tighter_of(enc, low, 25, 1000, notes) is enc and len(notes) == 1 and "0.300 nats below" in notes[0]
    notes.clear()
    assert _tighter_of(enc, est(-10.1, 2.0, "ais"), 25, 1000, notes) is enc and notes == []  # within 2 errors (0.155)
    assert _tighter_of(enc, est(-9.9, 2.0, "ais"), 25, 1000, notes).estimator == "ais" and notes == []


def test_the_ais_monte_carlo_error_matches_the_spread_over_seeds() -> None:
    # 30 seeds of AIS with the default 4 chains on a linear-Gaussian model with a poor start: the
    # reported per-example MC error must match the estimates' actual spread over seeds. The delta
    # method over 4 chain weights alone came out 2.3x too small here (mean of 16 examples: 2.2x)
    lg = LinearGaussian.random(3, 5, 0.7, 2)
    x = lg.sample_x(16, seed=3)
    vae = lg.vae(lg.mean_field_encoder(shift=1.0, inflate=2.0))
    estimates, errors, deltas = [], [], []
    for seed in range(30):
        torch.manual_seed(700 + seed)
        r = ais(vae, x, steps=10, chains=4)
        estimates.append(r.per_example)
        errors.append(r.mc_se)
        deltas.append((1.0 / r.ess - 1.0 / 4).clamp(min=0).sqrt())
        torch.testing.assert_close(r.as_likelihood().mc_se, r.mc_se)  # what the summaries read
    e, se = torch.stack(estimates), torch.stack(errors)  # [30, 16]
    spread = e.std(0)
    assert 0.8 < float((spread / se.mean(0)).median()) < 1.25
    real = float(e.mean(1).std())  # the data set's mean
    reported = float((se.pow(2).sum(1).sqrt() / 16).mean())
    assert 0.75 < real / reported < 1.33, (real, reported)
    assert float((spread / torch.stack(deltas).mean(0)).median()) > 1.5  # what the delta method alone said
