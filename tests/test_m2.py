"""The semi-supervised model M2 (Kingma et al. 2014), :mod:`vaelab.m2`.

Reference numbers come from a tiny model with a one-dimensional latent, where every quantity
has an exact value by quadrature over z: log p(x|y) = log int p(x|y, z) N(z; 0, 1) dz and
E_q(z|x,y)[log p(x|y, z)] on a grid of 24,001 points over [-12, 12] (float64). The enumerated
unlabelled bound and the training loss are checked against an explicit loop over the classes
with the same noise, to 1e-10; the Monte Carlo estimates against the exact values within
four standard errors; the end-to-end run, the CLI and every refusal on tiny settings.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.distributions import Normal

import vaelab
from vaelab import registry
from vaelab.cli import main
from vaelab.context import Batch, Variable
from vaelab.data import DataSplits
from vaelab.errors import VaelabError
from vaelab.m2 import SemiSupervisedVAE, batch_labelled_share, build_m2
from vaelab.model import Classifier
from vaelab.objectives import ELBO, Objective, OwnLoss, data_elbo
from vaelab.spec import ModelSpec
from vaelab.training.loop import fit, labelled_rows

pytestmark = pytest.mark.usefixtures("one_thread")

C = 3  # classes
X_DIM = 6
GRID = torch.linspace(-12.0, 12.0, 24001, dtype=torch.float64)  # z for quadrature, [G]


def tiny_m2(latent_dim: int = 1, seed: int = 0, posterior: str = "gaussian", prior: str = "normal",
            **options) -> SemiSupervisedVAE:
    """M2 on 6 binary values with 3 classes, float64, 8 hidden units. The posterior's scale
    starts near 1.5 (wider than the exact posterior, so importance weights have light tails)."""
    torch.manual_seed(seed)
    spec = ModelSpec.create((X_DIM,), latent_dim=latent_dim, family="m2", posterior=posterior, prior=prior,
                            options={"hidden": [8], **options},
                            context=[Variable("label", "categorical", classes=C)])
    model = build_m2(spec).double()
    if posterior == "gaussian":
        with torch.no_grad():
            last = model.encoder.net[-1]  # [2D] outputs: mean, raw scale
            last.weight[latent_dim:] *= 0.1
            last.bias[latent_dim:] = math.log(math.expm1(1.5))
    return model


def binary_x(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, X_DIM, generator=g, dtype=torch.float64) < 0.5).double()  # [B, 6]


def one_hot(y: int, n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.full((n,), y), C).double()  # [B, C], the label's features


def column(y: int, n: int) -> torch.Tensor:
    return torch.full((n, 1), float(y), dtype=torch.float64)  # [B, 1], the raw label column


# --- independent references ----------------------------------------------------------------


def brute_labelled(model: SemiSupervisedVAE, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, kl: str) -> torch.Tensor:
    """L(x, y) ``[B]`` from the parts, example by example, class by class, with the noise
    ``eps`` ``[K, B, D]``: z = mu + sigma eps; KL of two diagonal Gaussians written out."""
    out = []
    for b in range(x.shape[0]):
        h = one_hot(int(y[b]), 1)
        q = model.encoder(x[b : b + 1], h)
        mu, s = q.base_dist.loc, q.base_dist.scale  # [1, D]
        z = mu + s * eps[:, b : b + 1]  # [K, 1, D]
        rec = model.decoder(z, h).log_prob(x[b : b + 1]).mean(0)  # [1]
        if kl == "analytic":
            kl_z = (0.5 * (mu**2 + s**2 - 1) - s.log()).sum(-1)
        else:
            kl_z = (Normal(mu, s).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1).mean(0)
        out.append(rec - kl_z - math.log(C))
    return torch.cat(out)


def brute_unlabelled(model: SemiSupervisedVAE, x: torch.Tensor, eps: torch.Tensor, kl: str) -> torch.Tensor:
    """U(x) = sum_y q(y|x) L(x, y) + H(q(y|x)) ``[B]``; ``eps`` ``[K, C B, D]``, class-major."""
    b = x.shape[0]
    probs = torch.softmax(model.classifier(x), -1)  # [B, C]
    total = -(probs * probs.log()).sum(-1)  # the entropy
    for y in range(C):
        total = total + probs[:, y] * brute_labelled(model, x, torch.full((b,), y), eps[:, y * b : (y + 1) * b], kl)
    return total


def exact_log_px_given_y(model: SemiSupervisedVAE, x: torch.Tensor, y: int) -> torch.Tensor:
    """log p(x|y) ``[B]`` by quadrature over the one-dimensional z."""
    b = x.shape[0]
    z = GRID[:, None, None].expand(-1, b, 1)  # [G, B, 1]
    log_lik = model.decoder(z, one_hot(y, b)).log_prob(x)  # [G, B]
    log_prior = Normal(0.0, 1.0).log_prob(GRID)[:, None]  # [G, 1]
    return torch.logsumexp(log_lik + log_prior, 0) + math.log(float(GRID[1] - GRID[0]))


def exact_labelled(model: SemiSupervisedVAE, x: torch.Tensor, y: int) -> torch.Tensor:
    """L(x, y) ``[B]`` with E_q[log p(x|y, z)] by quadrature and the closed-form KL."""
    b = x.shape[0]
    q = model.encoder(x, one_hot(y, b))
    mu, s = q.base_dist.loc[:, 0], q.base_dist.scale[:, 0]  # [B]
    z = GRID[:, None].expand(-1, b)  # [G, B]
    density = Normal(mu, s).log_prob(z).exp()  # [G, B]
    log_lik = model.decoder(z[..., None], one_hot(y, b)).log_prob(x)  # [G, B]
    reconstruction = (density * log_lik).sum(0) * float(GRID[1] - GRID[0])
    kl_z = 0.5 * (mu**2 + s**2 - 1) - s.log()
    return reconstruction - kl_z - math.log(C)


def log_mean_exp_se(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log (1/K) sum_k w_k ``[B]`` and its delta-method standard error sd(w) / (sqrt(K) mean(w))."""
    k = log_w.shape[0]
    w = torch.exp(log_w - log_w.max(0).values)  # [K, B]
    return torch.logsumexp(log_w, 0) - math.log(k), w.std(0) / (w.mean(0) * math.sqrt(k))


# --- (a) the enumerated bounds and the loss, to rounding -----------------------------------


@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_unlabelled_bound_is_the_explicit_sum_over_classes(kl):
    model, x, k = tiny_m2(latent_dim=2), binary_x(5), 7
    with torch.no_grad():
        torch.manual_seed(3)
        terms = model.unlabelled_bound(x, k, kl)
        torch.manual_seed(3)  # the same noise: one draw [K, C B, D] for the batched pass
        eps = torch.empty(k, C * len(x), 2, dtype=torch.float64).normal_()
        expected = brute_unlabelled(model, x, eps, kl)
    assert torch.allclose(terms.elbo, expected, atol=1e-10, rtol=0)
    assert torch.allclose(terms.elbo, terms.reconstruction - terms.kl, atol=1e-12, rtol=0)
    # the KL term is sum_y q(y|x) KL(q(z|x,y) || p(z)) + KL(q(y|x) || p(y)): both >= 0
    assert (terms.kl > 0).all()


def test_the_loss_is_eq_9_of_the_paper():
    """-(sum_labelled L + sum_unlabelled U) / B + alpha / share * sum_labelled(-log q(y|x)) / B."""
    model, x, k = tiny_m2(latent_dim=2), binary_x(7), 3
    known = torch.tensor([True, False, True, False, False, True, False])
    c = torch.tensor([[2.0], [0.0], [1.0], [1.0], [2.0], [0.0], [1.0]], dtype=torch.float64)
    objective = Objective(k=k, kl="analytic", alpha=0.3, labelled_share=0.25)
    torch.manual_seed(5)
    loss, terms = model.loss(Batch(x, c, known), objective)
    n_l, n_u = int(known.sum()), int((~known).sum())
    with torch.no_grad():
        torch.manual_seed(5)  # one pass over the labelled rows, then each class of the unlabelled ones
        eps = torch.empty(k, n_l + C * n_u, 2, dtype=torch.float64).normal_()
        y_l = c[known, 0].long()
        labelled = brute_labelled(model, x[known], y_l, eps[:, :n_l], "analytic")
        unlabelled = brute_unlabelled(model, x[~known], eps[:, n_l:], "analytic")
        cross_entropy = -torch.log_softmax(model.classifier(x[known]), -1).gather(1, y_l[:, None]).squeeze(1)
        expected = (-(labelled.sum() + unlabelled.sum()) + 0.3 / 0.25 * cross_entropy.sum()) / len(x)
    assert abs(float(loss.detach()) - float(expected)) < 1e-10
    # the logged bound: L(x, y) at the labelled rows, U(x) at the others, in batch order
    assert torch.allclose(terms.elbo[known], labelled, atol=1e-10, rtol=0)
    assert torch.allclose(terms.elbo[~known], unlabelled, atol=1e-10, rtol=0)
    assert torch.allclose(terms.elbo, terms.reconstruction - terms.kl, atol=1e-12, rtol=0)


def test_elbo_terms_is_the_unlabelled_bound_whatever_c_holds():
    model, x = tiny_m2(latent_dim=2), binary_x(4)
    assert isinstance(model, OwnLoss) and isinstance(model, Classifier)
    with torch.no_grad():
        torch.manual_seed(0)
        direct = model.unlabelled_bound(x, 3)
        torch.manual_seed(0)
        reported = data_elbo(model, Batch(x, column(2, 4)), 3)
    assert torch.equal(direct.elbo, reported.elbo) and torch.equal(direct.kl, reported.kl)


# --- (b) bounds and importance estimates against quadrature --------------------------------


def test_bounds_agree_with_quadrature_and_lie_below_the_log_likelihood():
    model, x = tiny_m2(), binary_x(4)
    reps = 10  # independent estimates of each bound, for its standard error
    with torch.no_grad():
        log_pxy = torch.stack([exact_log_px_given_y(model, x, y) - math.log(C) for y in range(C)])  # [C, B]
        log_px = torch.logsumexp(log_pxy, 0)  # [B]
        exact_l = torch.stack([exact_labelled(model, x, y) for y in range(C)])  # [C, B]
        probs = torch.softmax(model.classifier(x), -1).T  # [C, B]
        exact_u = (probs * exact_l).sum(0) - (probs * probs.log()).sum(0)
        # the exact bounds are below what they bound
        assert (exact_l < log_pxy).all() and (exact_u < log_px).all()
        torch.manual_seed(0)
        for y in range(C):
            est = torch.stack([model.labelled_bound(x, torch.full((4,), y), 2000).elbo for _ in range(reps)])
            mean, se = est.mean(0), est.std(0) / math.sqrt(reps)
            assert ((mean - exact_l[y]).abs() < 4 * se + 1e-6).all(), (mean, exact_l[y], se)
            assert (mean < log_pxy[y] + 4 * se).all()
        est = torch.stack([model.unlabelled_bound(x, 2000).elbo for _ in range(reps)])
        mean, se = est.mean(0), est.std(0) / math.sqrt(reps)
        assert ((mean - exact_u).abs() < 4 * se + 1e-6).all(), (mean, exact_u, se)
        assert (mean < log_px + 4 * se).all()


def test_importance_estimates_of_log_px_agree_with_quadrature_and_with_the_sum_over_classes():
    model, x, k = tiny_m2(), binary_x(4), 50000
    with torch.no_grad():
        log_pxy = torch.stack([exact_log_px_given_y(model, x, y) - math.log(C) for y in range(C)])  # [C, B]
        log_px = torch.logsumexp(log_pxy, 0)
        torch.manual_seed(1)
        joint_lw = model.log_weights(x, k)  # y and z sampled, [K, B]
        assert joint_lw.shape == (k, 4)
        joint, joint_se = log_mean_exp_se(joint_lw)
        per_class = [log_mean_exp_se(model.log_weights(x, k, column(y, 4))) for y in range(C)]
    for y, (est, se) in enumerate(per_class):  # log p(x, y) given the label
        assert ((est - log_pxy[y]).abs() < 4 * se).all(), (y, est, log_pxy[y], se)
    assert ((joint - log_px).abs() < 4 * joint_se).all(), (joint, log_px, joint_se)
    # logsumexp_y of the per-class estimates, its error by the delta method
    summed = torch.logsumexp(torch.stack([e for e, _ in per_class]), 0)
    share = torch.softmax(torch.stack([e for e, _ in per_class]), 0)  # [C, B]
    summed_se = (share.pow(2) * torch.stack([s for _, s in per_class]).pow(2)).sum(0).sqrt()
    assert ((joint - summed).abs() < 4 * (joint_se.pow(2) + summed_se.pow(2)).sqrt()).all()


# --- (c) hidden labels are never read; (d) gradients ---------------------------------------


def test_the_loss_never_reads_a_hidden_label():
    model, x = tiny_m2(latent_dim=2), binary_x(6)
    known = torch.tensor([True, False, False, True, False, True])
    c = torch.tensor([[0.0], [1.0], [2.0], [2.0], [0.0], [1.0]], dtype=torch.float64)
    objective = Objective(k=2, labelled_share=0.5)

    def loss_and_grads(labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(11)
        loss, _ = model.loss(Batch(x, labels, known), objective)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    reference, grads = loss_and_grads(c)
    for hidden in ((c + 1) % C, torch.full_like(c, float("nan")), torch.full_like(c, 99.0)):
        changed = torch.where(known[:, None], c, hidden)
        loss, other = loss_and_grads(changed)
        assert torch.equal(loss, reference)
        assert all(torch.equal(a, b) for a, b in zip(grads, other))
    # a *known* label does matter (so the comparison above could fail)
    flipped = c.clone()
    flipped[0] = 1.0
    assert not torch.equal(loss_and_grads(flipped)[0], reference)


POSTERIORS = registry.names("posterior")


@pytest.mark.parametrize("posterior", POSTERIORS)
@pytest.mark.parametrize("prior", ["normal", "mog"])
def test_gradients_reach_every_parameter(posterior, prior):
    model = tiny_m2(latent_dim=2, posterior=posterior, prior=prior)
    x = binary_x(6)
    known = torch.tensor([True, False, True, False, False, False])
    c = torch.tensor([[0.0], [0.0], [2.0], [0.0], [0.0], [0.0]], dtype=torch.float64)
    torch.manual_seed(0)
    loss, _ = model.loss(Batch(x, c, known), Objective(k=2, labelled_share=0.3))
    loss.backward()
    names = [name for name, _ in model.named_parameters()]
    assert any(n.startswith("classifier.") for n in names)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


# --- the interface of a VAE -------------------------------------------------------------------


def test_vae_interface_with_and_without_labels():
    model, x = tiny_m2(latent_dim=2), binary_x(5)
    with torch.no_grad():
        predicted = model.classify(x).probs.argmax(-1)[:, None].double()  # [B, 1]
        q_default, q_given = model.encode(x), model.encode(x, predicted)
        assert torch.equal(q_default.mean, q_given.mean) and torch.equal(q_default.stddev, q_given.stddev)
        assert model.decode(q_default.mean, predicted).mean.shape == (5, X_DIM)
        p_z = model.prior_distribution()
        assert p_z.batch_shape == () and p_z.event_shape == (2,)
        assert model.prior_distribution(column(1, 5)).batch_shape == ()  # p(z) does not depend on y
        assert model.sample(7).shape == (7, X_DIM) and model.sample(3, c=column(2, 3)).shape == (3, X_DIM)
        torch.manual_seed(0)
        given = model.log_weights(x, 4, column(1, 5))
        torch.manual_seed(0)
        inner = model.vae.log_weights(x, 4, column(1, 5))
        assert torch.allclose(given, inner - math.log(C), atol=1e-12, rtol=0)
        assert torch.allclose(model.label_prior().probs, torch.full((C,), 1 / C, dtype=torch.float32))
    assert (model.latent_dim, model.x_shape) == (2, (X_DIM,))
    model.context.check(column(2, 5), 5)
    with pytest.raises(VaelabError, match="label 3 at row 0 is not a class"):
        model.context.check(column(3, 5), 5)
    model.decoder.check(x)
    with pytest.raises(VaelabError, match="decodes given a label"):
        model.decode(q_default.mean)


@pytest.mark.parametrize("prior", ["vamp", "conditional"])
def test_priors_that_depend_on_the_label_are_refused(prior):
    spec = ModelSpec.create((X_DIM,), latent_dim=2, family="m2", prior=prior, options={"hidden": [8]},
                            context=[Variable("label", "categorical", classes=C)])
    with pytest.raises(VaelabError, match="M2's p\\(z\\) must not"):
        build_m2(spec)


@pytest.mark.parametrize("settings", [dict(kind="iwae", k=2), dict(estimator="stl"), dict(beta=0.5),
                                      dict(warmup=1.0), dict(free_bits=0.1), dict(kind="iwae", estimator="dreg")])
def test_objectives_m2_does_not_have_are_refused(settings):
    model, x = tiny_m2(latent_dim=2), binary_x(3)
    with pytest.raises(VaelabError, match="semi-supervised model \\(m2\\)") as info:
        model.loss(Batch(x, column(0, 3)), Objective(**settings))
    assert "\n" not in str(info.value)


def test_a_batch_without_labels_is_all_unlabelled():
    model, x = tiny_m2(latent_dim=2), binary_x(4)
    torch.manual_seed(2)
    loss, terms = model.loss(Batch(x), Objective())
    torch.manual_seed(2)
    loss_hidden, _ = model.loss(Batch(x, column(1, 4), torch.zeros(4, dtype=torch.bool)), Objective())
    assert torch.equal(loss, loss_hidden)
    with torch.no_grad():
        torch.manual_seed(2)
        assert torch.allclose(terms.elbo, model.unlabelled_bound(x, 1).elbo, atol=1e-12, rtol=0)
    with pytest.raises(VaelabError, match="labels are marked known but c is None"):
        model.loss(Batch(x, None, torch.ones(4, dtype=torch.bool)), Objective())


# --- (e) end to end; (f) bad input --------------------------------------------------------------


def run_cli(argv: list) -> tuple[int, str, str]:
    """``vaelab ARGV`` in-process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return int(info.value.code or 0), out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def m2_run(tmp_path_factory: pytest.TempPathFactory) -> vaelab.TrainedModel:
    out = tmp_path_factory.mktemp("m2")
    model, _ = vaelab.train(data="digits", condition_on=["label"], semi_supervised=True, labels_per_class=5,
                            epochs=2, hidden=[32], latent_dim=4, eval_k=20, out=str(out), name="m2",
                            device="cpu", progress=False, figures=False, log=lambda *a: None)
    return model


@pytest.mark.slow
def test_end_to_end_run_saves_loads_and_evaluates(m2_run):
    model = m2_run
    spec = json.loads((model.run_dir / "model.json").read_text())
    assert spec["family"] == "m2" and [v["name"] for v in spec["context"]] == ["label"]
    info = json.loads((model.run_dir / "config.json").read_text())["data"]
    assert info["n_labelled"] == 5 * 10
    assert isinstance(model.vae, SemiSupervisedVAE) and not model.conditional
    records = vaelab.runs.read_metrics(model.run_dir)
    assert len(records) == 2 and all(math.isfinite(r["val_elbo"]) for r in records)

    loaded = vaelab.load(model.run_dir, device="cpu")
    x = model.test_batch().x[:20]
    with torch.no_grad():
        assert torch.equal(model.vae.classify(x).probs, loaded.vae.classify(x).probs)
        torch.manual_seed(0)
        a = model.vae.log_weights(x, 5)
        torch.manual_seed(0)
        b = loaded.vae.log_weights(x, 5)
    assert torch.equal(a, b)
    torch.manual_seed(0)
    s1 = model.sample(4, seed=3, label=3)
    assert torch.equal(s1, loaded.sample(4, seed=3, label=3)) and s1.shape == (4, 1, 8, 8)

    ev = loaded.evaluate(k=20, gap_examples=0, mi_samples=0)
    assert 0 <= ev.accuracy <= 1 and ev.accuracy_stderr == pytest.approx(
        math.sqrt(ev.accuracy * (1 - ev.accuracy) / ev.n))
    d = ev.to_dict()
    assert d["accuracy"] == ev.accuracy and "conditional_on" not in d  # scored as log p(x), y summed out
    assert d["elbo"] <= d["log_px"] + 3 * d["log_px_stderr"]


@pytest.mark.slow
def test_cli_sample_with_a_label_and_eval(m2_run, tmp_path):
    run = m2_run.run_dir
    code, out, err = run_cli(["sample", run, "--label", "3", "-n", "4", "-o", tmp_path / "s.png"])
    assert code == 0, err
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.load(tmp_path / "s.npy").shape == (4, 1, 8, 8)
    code, out, err = run_cli(["eval", run, "--k", "10", "--mi-samples", "0", "--gap-examples", "5", "--gap-steps", "2",
                              "--json"])
    assert code == 0, err
    ev = json.loads(out)  # with the gap split asked for too (M2 has no single label to decode with)
    assert 0 <= ev["accuracy"] <= 1 and math.isfinite(ev["log_px"])


TINY = ["--data", "digits", "--condition-on", "label", "--semi-supervised", "true", "--labels-per-class", "5",
        "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--eval-k", "0", "--device", "cpu", "--quiet"]


@pytest.mark.slow
def test_cli_train_with_figures_reconstructs_and_interpolates_through_the_likeliest_class(tmp_path):
    """The figures of a run decode each input under the class q(y|x) finds most likely (M2 has
    no observed label at test time); the CLI run ends with every file written, exit 0."""
    code, out, err = run_cli(["train", *TINY, "--eval-k", "5", "--out", tmp_path, "--name", "figs"])
    assert code == 0, err
    run = tmp_path / "figs"
    for name in ("reconstructions.png", "samples.png", "curves.png", "eval.json", "model.json"):
        assert (run / name).is_file(), name
    model = vaelab.load(run, device="cpu")
    x = model.test_batch().x[:6]
    likeliest = model.vae.classify(x).probs.argmax(-1)
    with torch.no_grad():
        expected = model.vae.decode(model.vae.encode(x, likeliest[:, None].float()).mean,
                                    likeliest[:, None].float()).mean
    torch.testing.assert_close(model.reconstruct(x), expected)
    code, out, err = run_cli(["interpolate", run, "--steps", "3", "-o", tmp_path / "i.png"])
    assert code == 0, err


@pytest.fixture(scope="module")
def unlabelled_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "plain.npy"
    np.save(path, (np.random.default_rng(0).random((60, 1, 4, 4)) < 0.5).astype(np.float32))
    return path


@pytest.mark.parametrize("change, message", [
    ({"--condition-on": None}, "--semi-supervised needs --condition-on label"),
    ({"--labels-per-class": None}, "needs one of --labels-per-class"),
    ({"--labels-per-class": "1000"}, "has only"),
    ({"--data": "UNLABELLED"}, "has no labels"),
    ({"--objective": "iwae", "--k": "2"}, "--objective iwae"),
    ({"--estimator": "stl"}, "--estimator stl"),
    ({"--beta": "0.5"}, "--beta 0.5"),
    ({"--warmup": "2"}, "--warmup 2.0"),
    ({"--free-bits": "0.1"}, "--free-bits 0.1"),
    ({"--prior": "vamp"}, "prior 'vamp'"),
    ({"--prior": "conditional"}, "prior 'conditional'"),
    ({"--labelled-per-batch": "-1"}, "labelled_per_batch must be >= 0"),
    ({"--semi-supervised": None, "--labels-per-class": None, "--labelled-per-batch": "4"},
     "--labelled-per-batch are for --semi-supervised"),
])
def test_bad_semi_supervised_settings_exit_2_with_one_line_and_write_nothing(change, message, tmp_path, unlabelled_file):
    argv = list(TINY)
    for flag, value in change.items():
        if flag in argv:
            i = argv.index(flag)
            del argv[i : i + 2]
        if value is not None:
            argv += [flag, unlabelled_file if value == "UNLABELLED" else value]
    code, _, err = run_cli(["train", *argv, "--out", tmp_path / "runs", "--name", "bad"])
    assert code == 2
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_terms_of_a_mixed_batch_are_aligned_with_it():
    """The logged terms come back in batch order, one per example, whatever the mask."""
    model, x = tiny_m2(latent_dim=2), binary_x(5)
    known = torch.tensor([False, True, False, False, True])
    _, terms = model.loss(Batch(x, column(1, 5), known), Objective())
    assert isinstance(terms, ELBO) and terms.elbo.shape == (5,)
    # labelled rows carry KL(q(z|x,y) || p(z)) + log C (the point mass at y against p(y))
    assert (terms.kl[known] > math.log(C)).all()


# --- (g) labelled rows in every batch ------------------------------------------------------------


def id_data(n: int = 64, n_val: int = 8) -> DataSplits:
    """Every 6-bit pattern once (row i is i in binary, so a row names itself), labels i mod 3."""
    ids = torch.arange(n)
    x = ((ids[:, None] >> torch.arange(X_DIM)) & 1).float()  # [N, 6]
    y = ids % C
    return DataSplits("ids", x, x[:n_val], x[:n_val], y, y[:n_val], y[:n_val], shape=(X_DIM,), kind="binary",
                      discrete_levels=2)


def row_ids(x: torch.Tensor) -> list[int]:
    return (x.long() << torch.arange(X_DIM)).sum(-1).tolist()


@dataclass(frozen=True)
class Recording(Objective):
    """M2's objective, keeping every training batch it is asked to score."""

    batches: list = field(default_factory=list, compare=False)

    def loss(self, model, x, progress=0.0):
        if model.training:
            self.batches.append(x)
        return super().loss(model, x, progress)


def test_labelled_rows_cycle_through_the_known_rows_and_repeat_by_epoch():
    g = torch.Generator().manual_seed(0)
    known = torch.rand(50, generator=g) < 0.3  # [N], in some visiting order
    n_l = int(known.sum())
    rows = labelled_rows(known, seed=4, epoch=2, steps=7, per_batch=5)  # 35 draws
    assert rows.shape == (7, 5) and bool(known[rows].all())
    counts = torch.bincount(rows.flatten(), minlength=50)[known]  # each labelled row floor or ceil times
    assert int(counts.min()) == 35 // n_l and int(counts.max()) == -(-35 // n_l)
    assert torch.equal(rows, labelled_rows(known, seed=4, epoch=2, steps=7, per_batch=5))
    assert not torch.equal(rows, labelled_rows(known, seed=4, epoch=3, steps=7, per_batch=5))
    with pytest.raises(VaelabError, match="needs known labels"):
        labelled_rows(torch.zeros(5, dtype=torch.bool), 0, 1, 2, 3)


def test_every_batch_holds_its_labelled_rows_and_the_classification_weight_is_alpha_per_example(tmp_path):
    """fit with labelled_per_batch: each batch is B ordinary rows (together one permutation of
    the training set) then L known rows (each labelled example steps L / N_l times an epoch);
    with s = batch_labelled_share(N_l / N, B, L), the weights alpha / (s (B + L)) that the loss
    gives each labelled row add up over an epoch to exactly alpha mean_labelled f(x, y) per step
    for any per-example f: the classification term alpha N / N_l per labelled example."""
    data, n, b, extra = id_data(), 64, 16, 4
    known = torch.zeros(n, dtype=torch.bool)
    known[torch.tensor([1, 5, 12, 20, 33, 40, 51, 63])] = True  # N_l = 8
    share = batch_labelled_share(8 / n, b, extra)
    assert share == pytest.approx((b * 8 / n + extra) / (b + extra))
    objective = Recording(alpha=0.7, labelled_share=share)
    model = tiny_m2(latent_dim=2).float()
    fit(model, data, tmp_path / "run", epochs=2, batch_size=b, seed=3, objective=objective, progress=False,
        variables=(Variable("label", "categorical", classes=C),), known=known, labelled_per_batch=extra)
    steps = n // b
    assert len(objective.batches) == 2 * steps
    f = torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # any f(x, y)
    for epoch in range(2):
        batches = objective.batches[epoch * steps : (epoch + 1) * steps]
        ordinary, added, weighted = [], [], 0.0
        for batch in batches:
            ids = row_ids(batch.x)
            assert len(batch) == b + extra and bool(batch.known[b:].all())
            assert int(batch.known.sum()) >= extra
            assert torch.equal(batch.c[:, 0].long(), torch.tensor(ids) % C)  # each row keeps its label
            ordinary += ids[:b]
            added += ids[b:]
            weighted += float(f[torch.tensor(ids)][batch.known].sum()) * objective.alpha / (share * len(batch))
        assert sorted(ordinary) == list(range(n))
        assert sorted(added) == sorted(torch.nonzero(known).flatten().tolist() * (steps * extra // 8))
        assert weighted / steps == pytest.approx(objective.alpha * float(f[known].mean()), rel=1e-12)
    with pytest.raises(VaelabError, match="labelled_per_batch needs semi-supervised"):
        fit(model, data, tmp_path / "bad", epochs=1, batch_size=b, objective=objective, progress=False,
            variables=(Variable("label", "categorical", classes=C),), labelled_per_batch=extra)


def test_the_share_without_added_rows_is_the_labelled_share():
    assert batch_labelled_share(0.025, 128) == 0.025
    assert batch_labelled_share(0.025, 128, 32) == pytest.approx((3.2 + 32) / 160)
    with pytest.raises(VaelabError, match="batch_labelled_share"):
        batch_labelled_share(0.0, 128, 4)


@pytest.mark.slow
def test_resume_with_labelled_rows_continues_exactly(tmp_path):
    settings = dict(data="digits", condition_on=["label"], semi_supervised=True, labels_per_class=3,
                    labelled_per_batch=8, batch_size=64, hidden=[16], latent_dim=2, eval_k=0, device="cpu",
                    progress=False, figures=False, log=lambda *a: None, out=str(tmp_path))
    vaelab.train(epochs=3, name="straight", **settings)
    vaelab.train(epochs=1, name="split", **settings)
    vaelab.train(resume=tmp_path / "split", epochs=3, progress=False, figures=False, log=lambda *a: None)
    for name in ("checkpoint.safetensors", "model.safetensors"):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "split" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "split" / "config.json").read_text())["config"]
    assert config["labelled_per_batch"] == 8
    # and the added rows changed the training: the same run without them ends elsewhere
    vaelab.train(epochs=3, name="plain", **{**settings, "labelled_per_batch": 0})
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "plain" / "model.safetensors")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_scoring_an_m2_model_given_its_label_is_refused() -> None:
    # with c, M2's weights estimate log p(x, y) (its log p(y) = -log C added), which a table would
    # show as "log p(x|label)" beside U(x), the bound on log p(x): refused, not mislabelled
    from vaelab.errors import VaelabError
    from vaelab.evaluation import dataset_elbo, evaluate, log_likelihood

    m, x = tiny_m2(), binary_x(6)
    y = torch.tensor([0, 1, 2, 0, 1, 2]).double()[:, None]
    for call in (lambda: log_likelihood(m, x, 10, c=y),
                 lambda: evaluate(m, x, k=10, mi_samples=0, gap_examples=0, estimator="is", c=y)):
        with pytest.raises(VaelabError, match="label summed out"):
            call()
    # the bound alone takes it and ignores it (validation passes labels): U(x) either way
    torch.manual_seed(0)
    with_c = dataset_elbo(m, x, c=y)
    torch.manual_seed(0)
    without = dataset_elbo(m, x)
    assert with_c.elbo == without.elbo
    ll = log_likelihood(m, x, 2000)  # without the label: log p(x), below no bound of it
    with torch.no_grad():
        exact = torch.logsumexp(torch.stack([exact_log_px_given_y(m, x, k) for k in range(3)]), 0) - math.log(3)
    assert abs(ll.mean - float(exact.mean())) < 0.05
