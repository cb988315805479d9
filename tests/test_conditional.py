"""The conditional model seam, against exact answers: log p(x|c), the posterior, the KL of
p(z|c), the context features, and conditional runs end to end.

The exact model is the linear-Gaussian one with a context (``tests/linear_gaussian.py``),

    z ~ N(0, I),    x | z, c ~ N(W z + B h(c) + b, s^2 I),

built from vaelab's own parts (``build_vae(..., context=[Variable(...)], hidden=[])``: an
affine encoder and a linear decoder on [z, h(c)], a standard normal prior, the
:class:`~vaelab.context.ContextEncoder`). Then log p(x|c) = log N(x; B h + b, W W^T + s^2 I)
and p(z|x, c) are closed-form, and every estimate the library makes is checked against
them with a tolerance of a few of its own standard errors (float64, fixed seeds).

Then: tiny conditional runs through ``vaelab.train`` and the CLI on ``digits``, a CSV with
class *names* and a covariate, and an npz with labels and a covariate per part; run folders
of vaelab 0.1.0; and every way bad conditioning input must be refused (exit status 2, one
line, nothing written; a one-line ``VaelabError`` from Python).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.distributions import MultivariateNormal, kl_divergence

import vaelab
from linear_gaussian import DTYPE, ConditionalLinearGaussian, chi2_gaussians
from vaelab.build import build_model
from vaelab.context import Batch, ContextEncoder, Variable
from vaelab.data import context_columns, context_variables, load_data
from vaelab.distributions import ConditionalGaussianPrior, diagonal_gaussian
from vaelab.errors import VaelabError
from vaelab.evaluation import EvalSettings, evaluate, log_likelihood
from vaelab.objectives import data_elbo, kl_term
from vaelab.spec import ModelSpec

pytestmark = pytest.mark.usefixtures("one_thread")

N = 200  # examples of the exact-model tests
LABEL = Variable("label", "categorical", classes=3)
DOSE = Variable("dose", "continuous", mean=0.5, std=2.0)  # exactly representable: float32 buffers hold them exactly
CONTEXTS: dict[str, tuple[Variable, ...]] = {
    "label": (LABEL,),
    "embedding": (Variable("label", "categorical", classes=3, embedding=2),),
    "dose": (DOSE,),
    "label+dose": (LABEL, DOSE),
}


def quiet(*args: Any) -> None:
    pass


def raw_context(variables: tuple[Variable, ...], n: int, seed: int) -> Tensor:
    """c ``[n, P]``: class ids drawn uniformly, covariates from N(mean, std^2)."""
    g = torch.Generator().manual_seed(seed)
    cols = [torch.randint(0, v.classes, (n,), generator=g).to(DTYPE) if v.kind == "categorical"
            else v.mean + v.std * torch.randn(n, generator=g, dtype=DTYPE) for v in variables]
    return torch.stack(cols, 1)


def exact_setup(context: str, posterior: str = "gaussian", orthogonal: bool = False, seed: int = 0
                ) -> tuple[ConditionalLinearGaussian, vaelab.VAE, Tensor, Tensor, Tensor]:
    """The truth, the vaelab model set to it, and N examples: x ``[N, P]``, c ``[N, P_c]``, h(c)."""
    variables = CONTEXTS[context]
    torch.manual_seed(seed)  # the embedding's initial (random, then fixed) weights
    context_dim = sum(v.width for v in variables)
    truth = ConditionalLinearGaussian.random(latent_dim=3, x_dim=5, context_dim=context_dim, seed=seed)
    if orthogonal:  # W with orthogonal columns: S is diagonal, the diagonal Gaussian family is exact
        q, _ = torch.linalg.qr(torch.randn(5, 3, generator=torch.Generator().manual_seed(seed), dtype=DTYPE))
        truth.base.w = q * torch.tensor([2.0, 1.0, 0.5], dtype=DTYPE)
    model = truth.vae(variables, posterior=posterior)
    c = raw_context(variables, N, seed + 1)
    with torch.no_grad():
        h = model.context(c)  # [N, C]
    x = truth.sample_x(h, seed=seed + 2)
    return truth, model, x, c, h


def q_moments(model: vaelab.VAE, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``[N, D]`` and covariance ``[N, D, D]`` of the (Gaussian) encoder."""
    with torch.no_grad():
        q = model.encode(x, c)
    cov = q.covariance_matrix if isinstance(q, MultivariateNormal) else torch.diag_embed(q.variance)
    return q.mean, cov


# --- the exact model ------------------------------------------------------------------------


@pytest.mark.parametrize("context", list(CONTEXTS))
def test_elbo_is_below_log_px_given_c_for_every_example(context: str) -> None:
    truth, model, x, c, h = exact_setup(context)
    truth.set_encoder(model, shift=0.3)  # a q off the optimum, so the gap is not small
    exact = truth.log_px(x, h)  # [N]
    torch.manual_seed(3)
    with torch.no_grad():
        lw = model.log_weights(x, 400, c)  # [K, N]
    elbo, se = lw.mean(0), lw.std(0) / math.sqrt(lw.shape[0])
    assert (elbo <= exact + 4 * se).all()
    # the ELBO's gap is KL(q || p(z|x, c)) in closed form: the Monte Carlo ELBO agrees on average
    mean, cov = q_moments(model, x, c)
    closed = exact - truth.elbo_gap(x, h, mean, cov)
    assert (closed < exact).all()
    tol = 4 * se.pow(2).sum().sqrt() / N
    assert abs(float((elbo - closed).mean())) < tol
    # so does the objective's ELBO (closed-form KL against N(0, I), Monte Carlo reconstruction)
    torch.manual_seed(4)
    with torch.no_grad():
        terms = data_elbo(model, Batch(x, c), k=400, kl="analytic")
    assert abs(float((terms.elbo - closed).mean())) < tol


@pytest.mark.parametrize("context", list(CONTEXTS))
def test_importance_sampled_log_px_given_c_matches_the_exact_value(context: str) -> None:
    truth, model, x, c, h = exact_setup(context)
    truth.set_encoder(model, inflate=1.5)  # wider than p(z|x, c): importance weights of finite variance
    exact = truth.log_px(x, h)
    k = 1000
    mean, cov = q_moments(model, x, c)
    m_post, s_post = truth.posterior(x, h)
    chi2 = chi2_gaussians(mean, cov, m_post, s_post.expand(N, -1, -1))  # [N]: Var_q[p(z|x,c) / q]
    assert torch.isfinite(chi2).all()
    bias = -chi2 / (2 * k)  # the estimator's leading-order bias, E log p_hat - log p = -chi2 / 2K
    torch.manual_seed(5)
    ll = log_likelihood(model, x, k, c=c, batch_size=64)
    diff = ll.per_example.double() - exact
    se = diff.std() / math.sqrt(N)
    assert abs(float(diff.mean() - bias.mean())) < 4 * float(se)
    # the Monte Carlo error the estimator reports (from the ESS) is the size of the real one
    mc_se = (1 / ll.ess - 1 / k).clamp(min=0).sqrt()
    assert 0.5 < float(diff.std() / mc_se.pow(2).mean().sqrt()) < 2.0
    # evaluate: the same estimate (log p(x|c)), named conditional, within its reported error
    ev = evaluate(model, x, c=c, k=k, gap_examples=0, mi_samples=0, batch_size=64)
    out = ev.to_dict()
    assert out["conditional_on"] == [v.name for v in CONTEXTS[context]]
    assert abs(out["log_px"] - float(exact.mean()) - float(bias.mean())) < 4 * out["log_px_mc_stderr"]
    assert out["elbo"] < float(exact.mean())


@pytest.mark.parametrize("posterior,orthogonal", [("full-gaussian", False), ("gaussian", True)],
                         ids=["full-covariance", "diagonal-orthogonal-W"])
@pytest.mark.parametrize("context", ["label+dose", "embedding"])
def test_the_exact_posterior_makes_every_log_weight_log_px_given_c(context: str, posterior: str,
                                                                   orthogonal: bool) -> None:
    """q(z|x, c) = p(z|x, c): log w = log p(x|c) for every sample (zero variance), so the ELBO,
    the IWAE bound and the importance-sampled estimate are all exact, with ESS = K."""
    truth, model, x, c, h = exact_setup(context, posterior=posterior, orthogonal=orthogonal)
    exact = truth.log_px(x, h)
    torch.manual_seed(6)
    with torch.no_grad():
        lw = model.log_weights(x, 16, c)  # [K, N]
    torch.testing.assert_close(lw, exact.expand_as(lw), rtol=0, atol=1e-9)
    ll = log_likelihood(model, x, 32, c=c)
    torch.testing.assert_close(ll.per_example.double(), exact, rtol=0, atol=1e-9)
    torch.testing.assert_close(ll.ess.double(), torch.full((N,), 32.0, dtype=DTYPE), rtol=0, atol=1e-6)
    # the context matters: the same x under other contexts is scored by other densities
    wrong = c.flip(0)
    with torch.no_grad():
        lw_wrong = model.log_weights(x, 4, wrong)
    assert not torch.allclose(lw_wrong[0], exact)


def test_a_trained_encoder_reaches_the_mean_field_optimum() -> None:
    """A few hundred Adam steps on the ELBO, decoder fixed at the true W, B, b, from a random
    affine encoder: the mean gap KL(q || p(z|x, c)) comes within 0.02 nats of the family's
    optimum (mean m(x, c), variances 1 / diag(S^{-1}); its own gap is about 0.3 nats here)."""
    truth, model, x, c, h = exact_setup("label+dose")
    mean_opt, cov_opt = q_moments(model, x, c)
    optimum = truth.elbo_gap(x, h, mean_opt, cov_opt)  # [N], the family's minimum per example
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.normal_(0.0, 0.1)
    for p in model.decoder.parameters():
        p.requires_grad_(False)
    start = float(truth.elbo_gap(x, h, *q_moments(model, x, c)).mean())
    steps = 400
    optimizer = torch.optim.Adam(model.encoder.parameters(), lr=0.05)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    batch = Batch(x, c)
    for _ in range(steps):
        loss = -data_elbo(model, batch, k=16, kl="analytic").elbo.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    mean, cov = q_moments(model, x, c)
    gap = truth.elbo_gap(x, h, mean, cov)
    excess = float((gap - optimum).mean())
    assert start > 10.0  # it started far away
    assert 0.0 <= excess < 0.02, excess
    # the excess is exactly a mean part, 1/2 (m - m*)^T S^{-1} (m - m*), plus a variance part,
    # 1/2 sum_d (r_d - 1 - log r_d) with r_d = var_d / var*_d: both are small, not one hiding the other
    delta = (mean - mean_opt).unsqueeze(-1)  # [N, D, 1]
    mean_part = 0.5 * (delta.transpose(-1, -2) @ truth.base.posterior_precision() @ delta)[:, 0, 0]
    r = torch.diagonal(cov, dim1=-2, dim2=-1) / torch.diagonal(cov_opt, dim1=-2, dim2=-1)  # [N, D]
    variance_part = 0.5 * (r - 1 - r.log()).sum(-1)
    torch.testing.assert_close(mean_part + variance_part, gap - optimum, rtol=1e-8, atol=1e-10)
    assert float(mean_part.mean()) < 0.02 and float(variance_part.mean()) < 0.02


# --- the conditional prior p(z|c) -------------------------------------------------------------


def random_conditional_prior(latent_dim: int, context_dim: int, seed: int) -> ConditionalGaussianPrior:
    prior = ConditionalGaussianPrior(latent_dim, context_dim).to(DTYPE)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # away from its N(0, I) start
        prior.map.weight.copy_(0.5 * torch.randn(prior.map.weight.shape, generator=g, dtype=DTYPE))
        prior.map.bias.copy_(0.3 * torch.randn(prior.map.bias.shape, generator=g, dtype=DTYPE))
    return prior


def test_conditional_prior_kl_against_the_diagonal_posterior_is_closed_form_and_exact() -> None:
    d, cdim, n = 3, 4, 6
    prior = random_conditional_prior(d, cdim, seed=8)
    g = torch.Generator().manual_seed(9)
    h = torch.randn(n, cdim, generator=g, dtype=DTYPE)
    p = prior(h)  # batch [n], event [D]
    assert p.batch_shape == (n,) and p.event_shape == (d,)
    loc, log_scale = prior.map(h).chunk(2, -1)
    torch.testing.assert_close(p.mean, loc)
    torch.testing.assert_close(p.stddev, log_scale.exp())
    q = diagonal_gaussian(torch.randn(n, d, generator=g, dtype=DTYPE), 0.3 + torch.rand(n, d, generator=g, dtype=DTYPE))
    closed = kl_divergence(q, p)  # [n]
    # torch's closed form for the equivalent full-covariance Normals
    reference = kl_divergence(MultivariateNormal(q.mean, torch.diag_embed(q.variance)),
                              MultivariateNormal(p.mean, torch.diag_embed(p.variance)))
    torch.testing.assert_close(closed, reference, rtol=1e-12, atol=1e-12)
    # a Monte Carlo estimate agrees within 4 standard errors, for every example
    torch.manual_seed(10)
    z = q.sample((20000,))
    terms = q.log_prob(z) - p.log_prob(z)  # [S, n]
    se = terms.std(0) / math.sqrt(z.shape[0])
    assert ((terms.mean(0) - closed).abs() < 4 * se).all()


def test_with_the_conditional_prior_log_px_given_c_is_exact_and_the_kl_closed_form() -> None:
    """The linear model under p(z|c) = N(M h + m0, diag(v)) (``prior="conditional"``, its scale
    made constant so that p(z|x, c) has one covariance): the encoder set to the exact posterior
    gives log w = log p(x|c) = log N(x; W mu + B h + b, W diag(v) W^T + s^2 I) for every
    sample, and kl="analytic" is the closed form KL(q(z|x, c) || p(z|c))."""
    variables = CONTEXTS["label+dose"]
    truth = ConditionalLinearGaussian.random(3, 5, 4, seed=11)
    model = truth.vae(variables, posterior="full-gaussian", prior="conditional")
    prior = random_conditional_prior(3, 4, seed=12)
    with torch.no_grad():
        prior.map.weight[3:] = 0.0  # log-scales: constant in c
    model.prior.load_state_dict(prior.state_dict())
    m, m0, v = prior.map.weight[:3], prior.map.bias[:3], (2 * prior.map.bias[3:]).exp()
    truth.set_encoder(model, exact=True, prior=(m, m0, v))
    c = raw_context(variables, N, seed=13)
    with torch.no_grad():
        h = model.context(c)
        p = model.prior_distribution(c)  # batch [N]
    assert p.batch_shape == (N,)
    torch.testing.assert_close(p.mean, h @ m.T + m0)
    loc, scale = p.mean, p.stddev
    g = torch.Generator().manual_seed(14)
    z = loc + scale * torch.randn(N, 3, generator=g, dtype=DTYPE)
    x = z @ truth.base.w.T + h @ truth.bmat.T + truth.base.b + truth.base.s * torch.randn(N, 5, generator=g, dtype=DTYPE)
    exact = truth.log_px_with_prior(x, h, loc, scale)
    assert not torch.allclose(exact, truth.log_px(x, h))  # the prior's context dependence matters
    torch.manual_seed(16)
    with torch.no_grad():
        trace = model.trace(x, 16, c)
    torch.testing.assert_close(trace.log_weights, exact.expand(16, N), rtol=0, atol=1e-9)
    q = trace.posterior
    reference = kl_divergence(MultivariateNormal(q.mean, q.covariance_matrix), MultivariateNormal(loc, torch.diag_embed(scale**2)))
    torch.testing.assert_close(kl_term(trace, "analytic"), reference, rtol=1e-10, atol=1e-10)
    # the estimate of log p(x|c) is then exact, and a q off the optimum stays below it
    torch.testing.assert_close(log_likelihood(model, x, 8, c=c).per_example.double(), exact, rtol=0, atol=1e-9)
    truth.set_encoder(model, exact=True, shift=0.5, prior=(m, m0, v))
    torch.manual_seed(17)
    with torch.no_grad():
        lw = model.log_weights(x, 400, c)
    assert (lw.mean(0) <= exact + 4 * lw.std(0) / math.sqrt(400)).all()
    assert float((exact - lw.mean(0)).mean()) > 0.1


# --- the context features h(c) ---------------------------------------------------------------


def test_context_features_one_hot_embedding_and_standardised_covariates() -> None:
    torch.manual_seed(18)
    variables = [Variable("label", "categorical", classes=4), Variable("dose", "continuous", mean=1.5, std=0.5),
                 Variable("batch", "categorical", classes=3, embedding=2)]
    ctx = ContextEncoder(variables).to(DTYPE)
    assert (ctx.width, ctx.context_dim) == (3, 4 + 1 + 2)
    c = torch.tensor([[2.0, 2.0, 1.0], [0.0, 1.0, 2.0], [3.0, -0.5, 0.0]], dtype=DTYPE)
    h = ctx(c)  # [3, 7]
    assert h.shape == (3, 7) and h.dtype == DTYPE
    emb = ctx.embeddings["batch"].weight  # [3, 2]
    expected = torch.cat([torch.eye(4, dtype=DTYPE)[[2, 0, 3]], ((c[:, 1] - 1.5) / 0.5)[:, None], emb[[1, 2, 0]]], 1)
    torch.testing.assert_close(h, expected, rtol=0, atol=0)
    h.sum().backward()  # the embedding is learned
    assert emb.grad is not None and (emb.grad != 0).any()
    # one variable alone gives its own features; names and widths follow the declaration
    assert ContextEncoder([variables[0]])(c[:, :1]).tolist() == torch.eye(4, dtype=DTYPE)[[2, 0, 3]].tolist()
    assert [v.width for v in variables] == [4, 1, 2]


@pytest.mark.parametrize("bad,culprit", [
    (torch.tensor([[4.0, 1.0, 0.0]]), "label 4 at row 0"),
    (torch.tensor([[1.5, 1.0, 0.0]]), "label 1.5"),
    (torch.tensor([[-1.0, 1.0, 0.0]]), "label -1"),
    (torch.tensor([[1.0, float("nan"), 0.0]]), "dose is NaN"),
    (torch.tensor([[1.0, 1.0, 3.0]]), "batch 3 at row 0"),
    (torch.tensor([[1.0, 1.0]]), "shape (1, 2)"),
])
def test_context_check_names_the_bad_value(bad: Tensor, culprit: str) -> None:
    ctx = ContextEncoder([Variable("label", "categorical", classes=4), Variable("dose", "continuous"),
                          Variable("batch", "categorical", classes=3, embedding=2)])
    with pytest.raises(VaelabError, match=None) as info:
        ctx.check(bad, 1)
    assert culprit in str(info.value) and "\n" not in str(info.value)


def test_class_given_by_name_or_id() -> None:
    v = Variable("label", "categorical", classes=2, class_names=("cat", "dog"))
    assert [v.class_id("dog"), v.class_id(1), v.class_id(np.int64(1)), v.class_id("1"), v.class_id("cat")] == [1, 1, 1, 1, 0]
    for bad in ("emu", 2, "12", -1, True):
        with pytest.raises(VaelabError, match="cat, dog"):
            v.class_id(bad)


def test_covariates_are_standardised_with_the_training_split_statistics(tmp_path: Path) -> None:
    """context_variables keeps the *training split's* mean and std (not the validation's or the
    test's: the test doses here are shifted by +10), the spec keeps them through JSON, and a
    model built from the spec standardises with them."""
    rng = np.random.default_rng(19)
    train_dose, test_dose = rng.normal(3.0, 2.0, 80), rng.normal(13.0, 2.0, 20)
    path = tmp_path / "d.npz"
    np.savez(path, train=rng.random((80, 4)), test=rng.random((20, 4)), train_labels=rng.integers(0, 2, 80),
             test_labels=rng.integers(0, 2, 20), train_dose=train_dose, test_dose=test_dose)
    data = load_data(str(path), val_fraction=0.25, covariates=["dose"])
    (label, dose) = context_variables(data, ["label", "dose"])
    train_split = data.train_covariates[:, 0].numpy().astype(np.float64)
    assert len(train_split) == 60
    assert dose.mean == pytest.approx(np.mean(train_split), rel=1e-6)
    assert dose.std == pytest.approx(np.std(train_split, ddof=1), rel=1e-6)
    assert dose.mean != pytest.approx(np.mean(train_dose), rel=1e-6)  # the validation rows are not in it
    assert (label.kind, label.classes, dose.kind) == ("categorical", 2, "continuous")
    spec = ModelSpec.create((4,), latent_dim=2, context=(label, dose), options={"hidden": [4]})
    again = ModelSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec and again.context[1].mean == dose.mean and again.context[1].std == dose.std
    model = build_model(again)
    c = context_columns(data, again.context, "test")  # [20, 2]
    h = model.context(c)
    torch.testing.assert_close(h[:, 2], ((c[:, 1].double() - dose.mean) / dose.std).float(), rtol=1e-6, atol=1e-6)
    assert float(h[:, 2].mean()) > 3  # the test doses sit 5 training standard deviations high


# --- end to end: conditional runs ---------------------------------------------------------------

TINY = dict(hidden=[16], latent_dim=2, epochs=1, eval_k=0, device="cpu", threads=1, batch_size=32)
PROTOS = np.random.default_rng(20).random((3, 8))


def features(labels: np.ndarray, dose: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[N, 8] in (0, 1): a prototype per class, shifted by the dose, plus noise."""
    logits = 3 * (PROTOS[labels] - 0.5) + 0.5 * dose[:, None] + 0.3 * rng.normal(size=(len(labels), 8))
    return np.round(1 / (1 + np.exp(-logits)), 3)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("conditional-data")
    rng = np.random.default_rng(21)
    # a CSV: label column of names, a covariate column, 8 feature columns
    names = np.array(["cat", "dog"])
    y = rng.integers(0, 2, 150)
    dose = np.round(rng.normal(1.0, 1.5, 150), 3)
    x = features(y, dose, rng)
    rows = ["label,dose," + ",".join(f"f{i}" for i in range(8))]
    rows += [f"{names[a]},{b}," + ",".join(map(str, r)) for a, b, r in zip(y, dose, x)]
    paths = {"csv": d / "pets.csv", "csv-label": d / "pets-without-dose.csv"}
    paths["csv"].write_text("\n".join(rows) + "\n")
    # the same without the dose (a column not conditioned on would be a feature)
    paths["csv-label"].write_text("\n".join(",".join(r.split(",")[:1] + r.split(",")[2:]) for r in rows) + "\n")
    # an npz with labels and a covariate for each part (the test doses run higher)
    y, yt = rng.integers(0, 3, 150), rng.integers(0, 3, 40)
    dose, dose_t = rng.normal(0.0, 1.0, 150), rng.normal(1.0, 1.0, 40)
    paths["npz"] = d / "cells.npz"
    np.savez(paths["npz"], train=features(y, dose, rng), test=features(yt, dose_t, rng), train_labels=y,
             test_labels=yt, train_dose=dose, test_dose=dose_t)
    return paths


@pytest.fixture(scope="module")
def runs(data_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, vaelab.TrainedModel]:
    """Four tiny conditional runs (about a second each: the tests that use them are marked slow)."""
    out = tmp_path_factory.mktemp("conditional-runs")
    settings = {
        "digits": dict(data="digits", condition_on=["label"]),
        "csv": dict(data=str(data_files["csv"]), condition_on=["label", "dose"]),
        "csv-label": dict(data=str(data_files["csv-label"]), condition_on=["label"], prior="conditional"),
        "npz": dict(data=str(data_files["npz"]), condition_on=["label", "dose"], embedding=3),
    }
    trained = {}
    for name, s in settings.items():
        model, result = vaelab.train(**TINY, **s, out=str(out), name=name, figures=name == "digits", progress=False,
                                     log=quiet)
        assert result.epochs_done == 1
        trained[name] = model
    return trained


RUNS = ["digits", "csv", "csv-label", "npz"]


@pytest.mark.slow
def test_runs_keep_their_conditioning_variables_in_model_json(runs: dict[str, vaelab.TrainedModel]) -> None:
    digits = json.loads((runs["digits"].run_dir / "model.json").read_text())
    assert digits["context"] == [{"name": "label", "kind": "categorical", "classes": 10, "class_names": [],
                                  "embedding": 0}]
    assert runs["digits"].class_names == tuple(str(i) for i in range(10))
    csv = runs["csv"].spec
    assert [v.name for v in csv.context] == ["label", "dose"]
    assert csv.context[0].class_names == ("cat", "dog") and runs["csv"].class_names == ("cat", "dog")
    data = runs["csv"].data()
    assert data.shape == (8,)  # the label and the covariate are not features
    dose = data.train_covariates[:, 0].numpy().astype(np.float64)
    assert csv.context[1].mean == pytest.approx(dose.mean(), rel=1e-6)
    assert csv.context[1].std == pytest.approx(dose.std(ddof=1), rel=1e-6)
    npz = runs["npz"].spec
    assert npz.context[0].embedding == 3 and npz.context_dim == 4
    assert runs["csv-label"].spec.prior.name == "conditional"
    assert (runs["digits"].run_dir / "samples.png").is_file()  # generated given the test contexts


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS)
def test_load_gives_identical_outputs(runs: dict[str, vaelab.TrainedModel], name: str) -> None:
    model = runs[name]
    loaded = vaelab.load(model.run_dir, device="cpu")
    assert loaded.spec == model.spec and loaded.conditional
    batch = model.test_batch()
    x, c = batch.x[:20], batch.c[:20]
    q0, q1 = model.encode(x, c), loaded.encode(x, c)
    assert torch.equal(q0.mean, q1.mean) and torch.equal(q0.stddev, q1.stddev)
    torch.manual_seed(22)
    a = model.log_likelihood(x, k=10, c=c).per_example
    torch.manual_seed(22)
    b = loaded.log_likelihood(x, k=10, c=c).per_example
    assert torch.isfinite(a).all() and torch.equal(a, b)
    # the weights are the run's: a model built from model.json alone and given them agrees
    fresh = build_model(ModelSpec.from_dict(json.loads((model.run_dir / "model.json").read_text())))
    fresh.load_state_dict(loaded.vae.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh.encode(loaded.as_batch(x), c).mean, q1.mean, rtol=0, atol=0)


@pytest.mark.slow
def test_a_loaded_model_standardises_new_covariate_values_as_in_training(runs: dict[str, vaelab.TrainedModel]) -> None:
    for name in ("csv", "npz"):
        model = vaelab.load(runs[name].run_dir, device="cpu")
        dose = model.spec.context[1]
        c = torch.tensor([[0.0, -2.0], [1.0, 0.0], [0.0, 7.5]])
        h = model.vae.context(c)
        torch.testing.assert_close(h[:, -1], ((c[:, 1].double() - dose.mean) / dose.std).float(), rtol=1e-6, atol=1e-6)
        # and the covariate reaches the model: other doses, other posteriors
        x = model.test_batch().x[:3]
        assert not torch.equal(model.encode(x, c=c).mean, model.encode(x, c=c + torch.tensor([0.0, 1.0])).mean)


@pytest.mark.slow
def test_sample_by_class_name_and_by_id_agree(runs: dict[str, vaelab.TrainedModel]) -> None:
    model = runs["csv-label"]
    dog = model.sample(6, seed=0, label="dog")
    assert torch.equal(dog, model.sample(6, seed=0, label=1))
    assert torch.equal(dog, model.sample(6, seed=0, label=["dog"] * 6))
    assert torch.equal(dog, model.sample(6, seed=0, c=torch.ones(6, 1)))
    assert not torch.equal(dog, model.sample(6, seed=0, label="cat"))
    digits = runs["digits"]
    assert torch.equal(digits.sample(4, seed=1, label=3), digits.sample(4, seed=1, label="3"))
    assert digits.sample(4, seed=1, label=3).shape == (4, 1, 8, 8)


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS)
def test_evaluate_scores_the_test_set_given_its_own_contexts(runs: dict[str, vaelab.TrainedModel], name: str) -> None:
    """TrainedModel.evaluate() equals log p(x|c) of the test set under the test contexts:
    the same estimate as ``log_likelihood(x_test, c=c_test)`` under the seed evaluate gives it
    (EvalSettings.seed + 1, see vaelab.evaluation.suite), and not the one under other contexts."""
    model = runs[name]
    settings = EvalSettings(k=8, gap_examples=0, mi_samples=0, seed=3)
    ev = model.evaluate(settings)
    batch = model.test_batch()
    assert batch.c is not None and len(batch.c) == ev.n == len(model.data().test)
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed + 1)
        expected = model.log_likelihood(batch.x, k=8, c=batch.c, batch_size=settings.batch_size,
                                        k_chunk=settings.k_chunk)
    assert ev.likelihood is not None
    torch.testing.assert_close(ev.likelihood.per_example, expected.per_example, rtol=0, atol=0)
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed + 1)
        shuffled = model.log_likelihood(batch.x, k=8, c=batch.c.roll(1, 0), batch_size=settings.batch_size,
                                        k_chunk=settings.k_chunk)
    assert not torch.equal(shuffled.per_example, expected.per_example)
    assert ev.to_dict()["conditional_on"] == [v.name for v in model.spec.context]


def test_the_cli_trains_samples_and_evaluates_a_conditional_model(data_files: dict[str, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from vaelab.cli import main

    def run(argv: list[Any]) -> int:
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in argv])
        return int(info.value.code or 0)

    argv = ["train", "--data", data_files["npz"], "--condition-on", "label,dose", "--hidden", "8", "--latent-dim", "2",
            "--epochs", "1", "--eval-k", "5", "--threads", "1", "--device", "cpu", "--quiet", "--out", tmp_path,
            "--name", "r"]
    assert run(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "log p(x|label,dose)" in out
    ev = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert ev["conditional_on"] == ["label", "dose"] and ev["k"] == 5
    assert run(["eval", tmp_path / "r", "--k", "5", "--gap-examples", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 40


@pytest.mark.slow
def test_cli_samples_a_model_of_a_label_and_a_covariate_with_context(runs, tmp_path, refused) -> None:
    """`vaelab sample --context dog,1.5` gives exactly what the Python API gives for that context."""
    from vaelab.cli import main

    run = runs["csv"].run_dir
    with pytest.raises(SystemExit) as info:
        main(["sample", str(run), "--context", "dog,1.5", "-n", "3", "--seed", "4", "-o", str(tmp_path / "s.png")])
    assert info.value.code == 0
    c = np.array([[1.0, 1.5]] * 3, dtype=np.float32)  # dog is class 1 (sorted names)
    expected = runs["csv"].sample(3, seed=4, c=c).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), expected)
    refused(["sample", run, "--context", "dog", "-o", tmp_path / "t.png"], "--context", "label, dose")
    refused(["sample", run, "--context", "dog,lots", "-o", tmp_path / "t.png"], "dose", "'lots'")
    refused(["sample", run, "--context", "cow,1", "-o", tmp_path / "t.png"], "'cow'", "cat, dog")
    refused(["sample", run, "--label", "dog", "-o", tmp_path / "t.png"], "label, dose")
    assert not (tmp_path / "t.png").exists() and not (tmp_path / "t.npy").exists()


# --- run folders of vaelab 0.1.0 --------------------------------------------------------------

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["run-0.1.0", "run-0.1.0-planar-mog"])
def test_a_run_folder_of_vaelab_0_1_0_still_loads(name: str) -> None:
    """Made by vaelab 0.1.0 (no model.json): the spec comes from config.json, the weights load,
    and the first 5 test examples give 0.1.0's encoder means, decoder means at z = 0 and
    log p(x) (K = 50 under torch.manual_seed(0)). For the planar flow, 0.1.0's ``.mean`` was its
    base Gaussian's mean; today's flow mean is a Monte Carlo estimate of the flow's own, so the
    base mean is compared."""
    expected = json.loads((DATA / "run-0.1.0-expected.json").read_text())[name]
    before = sorted(p.name for p in (DATA / name).iterdir())
    assert "model.json" not in before
    model = vaelab.load(DATA / name, device="cpu")
    assert not model.conditional and model.spec.context == ()
    x, _ = model.test_set()
    x = x[:5]
    assert float(x.sum()) == expected["test_x_sum"]
    q = model.encode(x)
    means = q.base.mean if hasattr(q, "base") else q.mean  # PlanarFlow: its base N(loc, scale^2)
    torch.testing.assert_close(means, torch.tensor(expected["encoder_mean"]), rtol=0, atol=1e-6)
    decoded = model.decode(torch.zeros(1, model.latent_dim)).mean.reshape(-1)[: len(expected["decoder_mean"])]
    torch.testing.assert_close(decoded, torch.tensor(expected["decoder_mean"]), rtol=0, atol=1e-6)
    torch.manual_seed(0)
    log_px = model.log_likelihood(x, k=50).per_example.double()
    torch.testing.assert_close(log_px, torch.tensor(expected["log_px"], dtype=torch.float64), rtol=0, atol=1e-5)
    assert sorted(p.name for p in (DATA / name).iterdir()) == before  # loading wrote nothing


# --- bad input: one line, exit status 2, nothing written ----------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-data")
    rng = np.random.default_rng(23)
    x = rng.random((60, 6))
    y = rng.integers(0, 3, 60)
    files = {"nolabels": d / "nolabels.npy"}
    np.save(files["nolabels"], x)
    for key, labels in {"nan": np.where(np.arange(60) == 7, np.nan, y.astype(float)),
                        "negative": np.where(np.arange(60) == 7, -1, y),
                        "fraction": np.where(np.arange(60) == 7, 1.5, y.astype(float))}.items():
        files[key] = d / f"{key}.npz"
        np.savez(files[key], train=x, train_labels=labels)
    files["test-only-class"] = d / "test-only-class.npz"
    np.savez(files["test-only-class"], train=x, train_labels=np.array(["cat", "dog"])[y % 2], test=x[:10],
             test_labels=np.array(["cat", "dog", "emu", "cat", "dog"] * 2))
    files["labels"] = d / "labels.npz"
    np.savez(files["labels"], train=x, train_labels=y)
    files["nan-dose-npz"] = d / "nan-dose.npz"
    np.savez(files["nan-dose-npz"], train=x, train_labels=y, train_dose=np.where(np.arange(60) == 7, np.nan, 1.0))
    header = "label,dose," + ",".join(f"f{i}" for i in range(6))
    rows = [f"{['cat', 'dog'][a % 2]},{rng.normal():.3f}," + ",".join(f"{v:.3f}" for v in r) for a, r in zip(y, x)]
    for key, cell in (("empty-dose", ""), ("nan-dose", "nan")):
        broken = list(rows)
        parts = broken[4].split(",")
        parts[1] = cell
        broken[4] = ",".join(parts)
        files[key] = d / f"{key}.csv"
        files[key].write_text("\n".join([header, *broken]) + "\n")
    files["csv"] = d / "good.csv"
    files["csv"].write_text("\n".join([header, *rows]) + "\n")
    return files


CLI_TINY = ["--hidden", "8", "--latent-dim", "2", "--epochs", "1", "--eval-k", "0", "--threads", "1", "--device", "cpu",
            "--quiet"]


@pytest.mark.parametrize("data,condition_on,culprits", [
    ("nolabels", "label", ["--condition-on label", "no labels"]),
    ("nan", "label", ["label nan at row 7"]),
    ("negative", "label", ["negative label -1"]),
    ("fraction", "label", ["label 1.5 at row 7"]),
    ("test-only-class", "label", ["class 'emu'", "test split", "never in training"]),
    ("empty-dose", "label,dose", ["covariate column 'dose'", "empty cell", "line 6"]),
    ("nan-dose", "label,dose", ["covariate column 'dose'", "nan", "line 6"]),
    ("nan-dose-npz", "label,dose", ["covariate 'dose'", "missing (NaN/inf) value at row 7"]),
    ("labels", "dose", ["--condition-on dose", "train_dose"]),
    ("csv", "label,weight", ["--condition-on weight", "no column 'weight'"]),
    ("nolabels", "dose", ["dose"]),
])
def test_train_refuses_bad_conditioning_data(bad_files: dict[str, Path], tmp_path: Path, refused: Any,
                                             data: str, condition_on: str, culprits: list[str]) -> None:
    out = tmp_path / "out"
    refused(["train", "--data", bad_files[data], "--condition-on", condition_on, *CLI_TINY, "--out", out,
             "--name", "x"], *culprits)
    assert not out.exists()


def test_train_refuses_a_covariate_of_built_in_data(tmp_path: Path, refused: Any) -> None:
    refused(["train", "--data", "digits", "--condition-on", "label,dose", *CLI_TINY, "--out", tmp_path / "out"],
            "digits", "dose")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def label_run(bad_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run conditioned on the label (classes cat and dog), trained through the CLI (the dose
    column, not conditioned on, is a feature: real values, a Gaussian likelihood)."""
    from vaelab.cli import main

    out = tmp_path_factory.mktemp("label-run")
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in ["train", "--data", bad_files["csv"], "--condition-on", "label", "--likelihood", "gaussian",
                               *CLI_TINY, "--out", out, "--name", "r"]])
    assert info.value.code in (0, None)
    return out / "r"


@pytest.mark.parametrize("argv,culprits", [
    (["--label", "12"], ["class '12'", "cat, dog"]),
    (["--label", "emu"], ["class 'emu'", "cat, dog"]),
    ([], ["--label", "label"]),
])
def test_sample_refuses_a_class_the_model_never_saw_or_none(label_run: Path, tmp_path: Path, refused: Any,
                                                          argv: list[str], culprits: list[str]) -> None:
    target = tmp_path / "s" / "samples.png"
    refused(["sample", label_run, "-n", "4", "-o", target, *argv], *culprits)
    assert not (tmp_path / "s").exists()


def test_sample_by_name_or_id_on_the_command_line(label_run: Path, tmp_path: Path) -> None:
    from vaelab.cli import main

    for label, stem in (("dog", "a"), ("1", "b")):
        with pytest.raises(SystemExit) as info:
            main(["sample", str(label_run), "-n", "4", "-o", str(tmp_path / f"{stem}.png"), "--label", label])
        assert info.value.code in (0, None)
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


@pytest.mark.slow
@pytest.mark.parametrize("kwargs,culprits", [
    (dict(c=np.zeros((4, 3))), ["shape (4, 3)", "[4, 2]", "label, dose"]),
    (dict(c=np.zeros((4, 1))), ["shape (4, 1)", "[4, 2]"]),
    (dict(c=np.zeros((3, 2))), ["shape (3, 2)", "[4, 2]"]),
    (dict(c=np.array([[2.0, 0.1]] * 4)), ["label 2 at row 0", "cat, dog"]),
    (dict(c=np.array([[0.5, 0.1]] * 4)), ["label 0.5"]),
    (dict(c=np.array([[1.0, np.nan]] * 4)), ["dose is NaN"]),
    (dict(label="dog"), ["label, dose"]),
    (dict(), ["conditional", "label, dose"]),
])
@pytest.mark.parametrize("method", ["log_likelihood", "encode"])
def test_python_api_refuses_a_bad_context(runs: dict[str, vaelab.TrainedModel], method: str, kwargs: dict[str, Any],
                                          culprits: list[str]) -> None:
    model = runs["csv"]
    x = model.test_batch().x[:4]
    with pytest.raises(VaelabError) as info:
        getattr(model, method)(x, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for culprit in culprits:
        assert culprit in message, (culprit, message)


@pytest.mark.slow
@pytest.mark.parametrize("kwargs,culprits", [
    (dict(label=17), ["class '17'", "0, 1, 2"]),
    (dict(c=np.array([10.0, 0.0, 1.0, 2.0])), ["label 10 at row 0", "ids 0..9"]),
    (dict(c=np.zeros((4, 2))), ["shape (4, 2)", "[4, 1]"]),
])
@pytest.mark.parametrize("method", ["log_likelihood", "encode"])
def test_python_api_refuses_a_class_out_of_range(runs: dict[str, vaelab.TrainedModel], method: str,
                                                 kwargs: dict[str, Any], culprits: list[str]) -> None:
    model = runs["digits"]  # conditioned on the label alone: classes 0..9
    x = model.test_batch().x[:4]
    with pytest.raises(VaelabError) as info:
        getattr(model, method)(x, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for culprit in culprits:
        assert culprit in message, (culprit, message)
