"""What made ``vaelab eval`` faster changes its speed, never its numbers.

* Pass sizes: importance samples ``k_chunk`` at a time for log p(x), ``PASS_ROWS`` rows for the
  gap split's final ELBOs. The draws are the same in distribution whatever the pass size (and,
  where every pass holds a multiple of 16 numbers, the same draws: torch fills normals 16 at a
  time), so at every pass size the estimates must match log p(x) and the ELBO of the
  linear-Gaussian model in closed form (float64) within their Monte-Carlo standard errors.
* The fused Bernoulli decoder (:class:`~vaelab.evaluation.likelihood.DecoderDensity`): the
  same log p(x|z) as ``model.decode(z).log_prob(x)`` and as ``torch.distributions.Bernoulli``,
  and the same gradient in z as autograd (float64, to rounding).
* The encoder run once per batch, not once per pass of samples: the same draws, the same
  estimates as through :meth:`VAE.log_weights`.
* The gap split's sticking-the-landing gradient: q* is the best mean-field posterior of the
  linear-Gaussian model in closed form, at the default number of steps.
"""

from __future__ import annotations

import math

import pytest
import torch

from torch.distributions import Bernoulli, Independent

from linear_gaussian import LinearGaussian
from vaelab.build import build_vae
from vaelab.evaluation import log_likelihood
from vaelab.evaluation.gaps import _paired_elbos, optimal_posterior
from vaelab.evaluation.likelihood import DecoderDensity, decoder_log_prob
from vaelab.evaluation.settings import DEFAULTS
from vaelab.model import VAE

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

Z = 4.0  # tolerance in standard errors


@pytest.fixture(scope="module")
def lg() -> LinearGaussian:
    return LinearGaussian.random(latent_dim=3, x_dim=5, s=0.7, seed=0)


@pytest.fixture(scope="module")
def x(lg: LinearGaussian) -> torch.Tensor:
    return lg.sample_x(12, seed=1)


@pytest.mark.parametrize("k_chunk", [7, 64])
def test_log_likelihood_does_not_depend_on_the_samples_per_pass(lg, x, k_chunk: int) -> None:
    vae = lg.vae(lg.mean_field_encoder(shift=0.2, inflate=1.3))
    torch.manual_seed(5)
    reference = log_likelihood(vae, x, 400, k_chunk=400, batch_size=5)
    torch.manual_seed(5)
    chunked = log_likelihood(vae, x, 400, k_chunk=k_chunk, batch_size=5)
    exact = float(lg.log_px(x).mean())
    for ll in (reference, chunked):  # log p(x) in closed form, within the Monte-Carlo error
        mc = float(ll.mc_se.pow(2).sum().sqrt() / x.shape[0])
        assert abs(ll.mean - exact) < Z * mc, (ll.mean, exact, mc)
    both = float((reference.mc_se.pow(2) + chunked.mc_se.pow(2)).sum().sqrt() / x.shape[0])
    assert abs(chunked.mean - reference.mean) < Z * both
    assert chunked.khat is not None and chunked.ess.shape == reference.ess.shape


@pytest.mark.parametrize("chunk", [3, 64])
def test_paired_elbos_do_not_depend_on_the_samples_per_pass(lg, x, chunk: int) -> None:
    vae = lg.vae(lg.mean_field_encoder(shift=0.2, inflate=1.3))
    with torch.no_grad():
        q_a = vae.encode(x)
    q_b = lg.vae(lg.mean_field_encoder()).encode(x)  # the best mean-field posterior
    torch.manual_seed(9)
    reference = _paired_elbos(vae, x, q_a, q_b, 200, 200, "mc")
    torch.manual_seed(9)
    chunked = _paired_elbos(vae, x, q_a, q_b, 200, chunk, "mc")
    # the ELBOs and their difference are right: log p(x) - KL(q || p(z|x)) in closed form
    m, _ = lg.posterior(x)
    exact_a = lg.log_px(x) - lg.elbo_gap(x, m + 0.2, lg.mean_field_cov() * 1.3**2)  # [B]
    exact_b = lg.log_px(x) - lg.elbo_gap(x, m, lg.mean_field_cov())
    for ea, sa, eb, sb, sd in (reference, chunked):
        for elbo, se, exact in ((ea, sa, exact_a), (eb, sb, exact_b), (eb - ea, sd, exact_b - exact_a)):
            err = float(se.pow(2).sum().sqrt() / x.shape[0])
            assert 0 < err < math.inf
            assert abs(float(elbo.mean() - exact.mean())) < Z * err, (float(elbo.mean()), float(exact.mean()), err)


def test_log_likelihood_keeps_the_draws_of_the_rows_asked_for(lg, x) -> None:
    vae = lg.vae(lg.mean_field_encoder(shift=0.2, inflate=1.3))
    rows = torch.tensor([7, 0, 11, 5])  # across the batches of 5, out of order
    torch.manual_seed(5)
    plain = log_likelihood(vae, x, 60, k_chunk=25, batch_size=5)
    torch.manual_seed(5)
    kept = log_likelihood(vae, x, 60, k_chunk=25, batch_size=5, keep_rows=rows)
    assert plain.draws is None
    torch.testing.assert_close(kept.per_example, plain.per_example, rtol=0, atol=0)  # the same draws
    draws = kept.draws
    assert draws is not None and sorted(draws.rows.tolist()) == sorted(rows.tolist())
    assert draws.noise.shape == (60, 4, 3) and draws.log_lik.shape == (60, 4)
    with torch.no_grad():
        q_rows = vae.encode(x[draws.rows])
    torch.testing.assert_close(draws.loc, q_rows.base_dist.loc, rtol=0, atol=1e-12)
    torch.testing.assert_close(draws.scale, q_rows.base_dist.scale, rtol=0, atol=1e-12)
    with torch.no_grad():
        q = vae.encode(x[draws.rows])
        z = q.base_dist.loc + q.base_dist.scale * draws.noise  # [60, 4, 3]: z = mu + sigma eps
        torch.testing.assert_close(draws.log_lik, vae.decode(z).log_prob(x[draws.rows]), rtol=0, atol=1e-9)
        # the kept z are the draws that made the estimate: their weights give it back
        log_w = draws.log_lik + vae.prior_distribution(None).log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(torch.logsumexp(log_w, 0) - math.log(60), kept.per_example[draws.rows],
                               rtol=0, atol=1e-9)
    assert abs(float(draws.noise.mean())) < 0.2 and abs(float(draws.noise.std()) - 1) < 0.1  # N(0, I)


@pytest.mark.parametrize("rows, words", [([12], "0..11"), ([-1], "0..11"), ([2, 2], "more than once"),
                                         ([[1, 2]], "1-D"), ([0.5], "whole-number")])
def test_keep_rows_outside_the_data_are_refused(lg, x, rows, words: str) -> None:
    vae = lg.vae(lg.mean_field_encoder())
    with pytest.raises(ValueError, match=words):
        log_likelihood(vae, x, 10, keep_rows=torch.tensor(rows))


def test_draws_of_another_model_or_other_data_are_refused_by_the_gap_split(lg, x) -> None:
    import dataclasses

    from vaelab.errors import VaelabError
    from vaelab.evaluation import inference_gaps

    vae = lg.vae(lg.mean_field_encoder(shift=0.3, inflate=1.3))
    rows = torch.tensor([2, 5, 7])
    other = LinearGaussian.random(latent_dim=3, x_dim=5, s=0.7, seed=7)
    settings = dict(indices=rows, log_px=lg.log_px(x), eval_samples=100, steps=5)
    mine = log_likelihood(vae, x, 100, keep_rows=rows).draws
    assert mine is not None
    inference_gaps(vae, x, encoder_draws=mine, **settings)  # its own draws: taken
    for foreign in (log_likelihood(other.vae(other.mean_field_encoder()), x, 100, keep_rows=rows).draws,
                    log_likelihood(vae, lg.sample_x(12, seed=99), 100, keep_rows=rows).draws):
        with pytest.raises(VaelabError, match="not drawn by this model's encoder on these rows"):
            inference_gaps(vae, x, encoder_draws=foreign, **settings)
    bent = dataclasses.replace(mine, noise=mine.noise[..., :2])
    with pytest.raises(VaelabError, match="do not fit this model"):
        inference_gaps(vae, x, encoder_draws=bent, **settings)


def test_paired_elbos_from_kept_draws_are_the_elbos_from_that_noise(lg, x) -> None:
    vae = lg.vae(lg.mean_field_encoder(shift=0.2, inflate=1.3))
    with torch.no_grad():
        q_a = vae.encode(x)
    q_b = lg.vae(lg.mean_field_encoder()).encode(x)
    torch.manual_seed(9)
    fresh = _paired_elbos(vae, x, q_a, q_b, 200, 200, "mc")  # one pass: noise randn([200, B, D])
    torch.manual_seed(9)
    eps = torch.randn(200, *q_a.base_dist.loc.shape, dtype=torch.float64)
    with torch.no_grad():
        scored = vae.decode(q_a.base_dist.loc + q_a.base_dist.scale * eps).log_prob(x)  # [200, B]
    for chunk in (200, 7):
        reused = _paired_elbos(vae, x, q_a, q_b, 200, chunk, "mc", drawn=(eps, scored))
        for a, b in zip(fresh, reused):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_the_suites_gap_split_scores_the_encoder_from_encoder_is_draws(lg, x, monkeypatch) -> None:
    from vaelab.evaluation import evaluate, gaps as gaps_module

    vae = lg.vae(lg.mean_field_encoder(shift=0.2, inflate=1.3))
    seen = []
    original = gaps_module._paired_elbos

    def spy(*args, **kwargs):
        seen.append(args[-1] if len(args) > 8 else kwargs.get("drawn"))
        return original(*args, **kwargs)

    monkeypatch.setattr(gaps_module, "_paired_elbos", spy)
    ev = evaluate(vae, x, k=400, gap_examples=6, gap_eval_samples=400, gap_steps=20, mi_samples=0, estimator="is",
                  batch_size=5)
    assert seen and all(d is not None and d[0].shape[0] == 400 for d in seen)  # no fresh noise, no second pass
    assert ev.estimates["is"].draws is None  # not carried in the result
    g = ev.gaps
    assert g is not None
    m, _ = lg.posterior(x[g.indices])
    exact = lg.log_px(x[g.indices]) - lg.elbo_gap(x[g.indices], m + 0.2, lg.mean_field_cov() * 1.3**2)
    err = float(g.elbo_encoder_mc_se.pow(2).sum().sqrt() / g.indices.numel())
    assert abs(float(g.elbo_encoder.mean() - exact.mean())) < Z * err
    seen.clear()
    evaluate(vae, x, k=100, gap_examples=6, gap_eval_samples=400, gap_steps=20, mi_samples=0, estimator="is",
             batch_size=5)  # fewer IS draws than the ELBOs need: fresh noise
    assert seen and all(d is None for d in seen)


@pytest.mark.parametrize("prior", ["model", "mixture"])
def test_the_written_out_stl_gradient_is_autograds(lg, x, prior: str) -> None:
    from torch.distributions import Categorical, MixtureSameFamily, Normal

    from vaelab.evaluation.gaps import _autograd_step, _free_parameters, _stl_diagonal

    vae = lg.vae(lg.mean_field_encoder(shift=0.2, inflate=1.3))
    with torch.no_grad():
        start, build, family = _free_parameters(vae.encode(x))
    assert family == "diagonal Gaussian"
    params = [p.detach().clone().requires_grad_(True) for p in start]
    p_z = vae.prior_distribution(None) if prior == "model" else MixtureSameFamily(  # a prior without closed form
        Categorical(logits=torch.tensor([0.3, -0.2], dtype=torch.float64)),
        Independent(Normal(torch.tensor([[1.0, 0.0, -1.0], [-0.5, 0.5, 0.0]], dtype=torch.float64),
                           torch.tensor([[1.0, 0.7, 1.2], [0.8, 1.1, 0.9]], dtype=torch.float64)), 1))
    density = DecoderDensity(vae, x)
    torch.manual_seed(4)
    reference = _autograd_step(params, build, density, p_z, 15, "stl", "auto")  # odd: an unpaired last draw
    torch.manual_seed(4)
    written = _stl_diagonal(params, density, p_z, 15)
    for a, b in zip(reference, written):  # the same draws, the same gradient
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
    assert float(reference[0].abs().max()) > 1e-3  # not both zero


def test_antithetic_pairs_make_the_mean_gradient_exact_on_a_linear_gaussian_model(lg, x) -> None:
    """log p(x, z) of the linear-Gaussian model is quadratic in z, so the STL gradient is linear
    in eps: with the draws in pairs (eps, -eps) the gradient in mu is its expectation exactly,
    -d/dz log p(x, z) at z = mu (independent draws miss it by their noise)."""
    from vaelab.evaluation.gaps import _antithetic_noise, _free_parameters, _log_prob_and_grad, _stl_diagonal

    noise = _antithetic_noise(7, torch.zeros(3, 2))
    assert noise.shape == (7, 3, 2)
    torch.testing.assert_close(noise[4:], -noise[:3], rtol=0, atol=0)  # pairs, the odd last draw unpaired
    vae = lg.vae(lg.mean_field_encoder(shift=0.2, inflate=1.3))
    with torch.no_grad():
        start, _, _ = _free_parameters(vae.encode(x))
    density, p_z = DecoderDensity(vae, x), vae.prior_distribution(None)
    mu = start[0][None]  # [1, B, D]
    exact = -(density.grad(mu) + _log_prob_and_grad(p_z, mu)[1])[0]
    torch.manual_seed(5)
    paired = _stl_diagonal(start, density, p_z, 8)[0]
    torch.testing.assert_close(paired, exact, rtol=0, atol=1e-10)
    torch.manual_seed(5)
    eps = torch.randn((8, *start[0].shape), dtype=start[0].dtype)  # the same count, independent
    z = start[0] + start[1].exp() * eps
    g = density.grad(z) + _log_prob_and_grad(p_z, z)[1] + eps / start[1].exp()
    assert float((-g.mean(0) - exact).abs().max()) > 1e-3  # what the pairs cancel


@pytest.fixture(scope="module")
def bernoulli_vae() -> VAE:
    torch.manual_seed(0)
    return build_vae((1, 4, 3), latent_dim=3, hidden=[8, 6]).double()  # two hidden layers: the body's loop


@pytest.fixture(scope="module")
def binary_x() -> torch.Tensor:
    return (torch.rand(5, 1, 4, 3, generator=torch.Generator().manual_seed(2)) < 0.4).double()


def test_fused_bernoulli_decoder_gives_the_density_and_its_gradient(bernoulli_vae, binary_x) -> None:
    vae, x = bernoulli_vae, binary_x
    assert DecoderDensity(vae, x).fused  # the fused path is the one under test
    z = torch.randn(7, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    weights = torch.rand(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))  # [S, B]
    fused = decoder_log_prob(vae, z, x)  # [S, B]
    reference = vae.decode(z).log_prob(x)
    logits = vae.decoder.net(z.reshape(-1, 3)).reshape(7, 5, 1, 4, 3)
    exact = Independent(Bernoulli(logits=logits), 3).log_prob(x)  # torch's own Bernoulli
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-10)
    torch.testing.assert_close(fused, exact, rtol=0, atol=1e-10)
    (g_fused,) = torch.autograd.grad((weights * fused).sum(), z)
    (g_ref,) = torch.autograd.grad((weights * exact).sum(), z, retain_graph=True)
    torch.testing.assert_close(g_fused, g_ref, rtol=0, atol=1e-10)
    (g_each,) = torch.autograd.grad(exact.sum(), z)
    torch.testing.assert_close(DecoderDensity(vae, x).grad(z), g_each, rtol=0, atol=1e-10)  # the gradient alone
    assert torch.autograd.gradcheck(lambda t: decoder_log_prob(vae, t, x), (z[:2].detach().requires_grad_(True),))
    with torch.no_grad():  # no gradient asked: the same value (the bias enters as exp(b): float rounding)
        torch.testing.assert_close(decoder_log_prob(vae, z, x), exact.detach(), rtol=0, atol=1e-10)
        torch.testing.assert_close(decoder_log_prob(vae, z, x), fused.detach(), rtol=0, atol=1e-10)


def test_other_decoders_keep_their_own_density(lg, x) -> None:
    vae = lg.vae(lg.exact_encoder())  # a Gaussian decoder on a Linear map: not fused
    assert not DecoderDensity(vae, x).fused
    z = torch.randn(4, x.shape[0], lg.latent_dim, dtype=torch.float64)
    torch.testing.assert_close(decoder_log_prob(vae, z, x), vae.decode(z).log_prob(x), rtol=0, atol=0)
    leaf = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(vae.decode(leaf).log_prob(x).sum(), leaf)
    torch.testing.assert_close(DecoderDensity(vae, x).grad(z), grad, rtol=0, atol=0)


def test_fused_density_in_float32_is_torchs_bernoulli_to_rounding() -> None:
    # log(1 + exp(l)) in place of softplus: on a 784-pixel decoder the float32 density is the
    # float64 Bernoulli's to the rounding of a float32 sum of about 565 nats
    torch.manual_seed(0)
    vae = build_vae((1, 28, 28), latent_dim=20, hidden=[400])
    x = (torch.rand(50, 1, 28, 28) < 0.3).float()
    z = 2 * torch.randn(30, 50, 20)
    density = DecoderDensity(vae, x)
    assert density.fused
    value = density.log_prob(z).double()
    with torch.no_grad():
        logits = vae.double().decoder.net(z.double().reshape(-1, 20)).reshape(30, 50, 1, 28, 28)
    vae.float()
    exact = Independent(Bernoulli(logits=logits), 3).log_prob(x.double())  # [30, 50]
    assert float(exact.abs().mean()) > 100
    torch.testing.assert_close(value, exact, rtol=0, atol=1e-3)


def test_a_logit_beyond_exps_range_falls_back_to_softplus() -> None:
    torch.manual_seed(1)
    vae = build_vae((1, 3, 3), latent_dim=2, hidden=[5])
    with torch.no_grad():
        vae.decoder.net[-1].bias[0] = 200.0  # exp(200) overflows float32: log(1 + exp) would be inf
    x = (torch.rand(4, 1, 3, 3) < 0.5).float()
    x[:, 0, 0, 0] = 1.0
    z = torch.randn(6, 4, 2)
    density = DecoderDensity(vae, x)
    assert density.fused
    with torch.no_grad():
        reference = vae.decode(z).log_prob(x)  # torch's Bernoulli: finite
    value = density.log_prob(z)
    assert bool(torch.isfinite(value).all())
    torch.testing.assert_close(value, reference, rtol=0, atol=1e-4)


def test_a_product_beyond_exps_range_with_a_bias_that_undoes_it_is_exact() -> None:
    # the value pass takes exp(W h) * exp(b): W h = 150 overflows exp in float32 and exp(-200) is 0,
    # so that product is inf * 0 (NaN) where the logit itself, -50, is harmless: the exact fallback
    torch.manual_seed(1)
    vae = build_vae((1, 3, 3), latent_dim=2, hidden=[5])
    with torch.no_grad():
        vae.decoder.net[-1].weight[0] = 30.0
        vae.decoder.net[-1].bias[0] = -200.0
        vae.decoder.net[1].weight.fill_(0.0)
        vae.decoder.net[1].bias.fill_(1.0)  # every hidden unit 1: W h = 150 for pixel 0
    x = (torch.rand(4, 1, 3, 3) < 0.5).float()
    z = torch.randn(6, 4, 2)
    density = DecoderDensity(vae, x)
    assert density.fused
    with torch.no_grad():
        reference = vae.decode(z).log_prob(x)  # torch's Bernoulli
        value = density.log_prob(z)
    assert bool(torch.isfinite(value).all())
    torch.testing.assert_close(value, reference, rtol=0, atol=1e-4)


def test_densities_sharing_a_workspace_keep_their_own_numbers(bernoulli_vae, binary_x) -> None:
    # the scratch tensors are reused from pass to pass and between densities; what a pass
    # returns never lives in them, so an earlier result survives later passes of other shapes
    from vaelab.evaluation.likelihood import Workspace

    vae, x = bernoulli_vae, binary_x
    work = Workspace()
    first, second = DecoderDensity(vae, x, workspace=work), DecoderDensity(vae, x[:3].flip(0), workspace=work)
    z1 = torch.randn(7, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    z2 = torch.randn(2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    v1, g1 = first.log_prob(z1), first.grad(z1)
    kept = v1.clone(), g1.clone()
    v2, g2 = second.log_prob(z2), second.grad(z2)  # other rows, other x: the same scratch names
    v1_again = first.log_prob(z1)
    torch.testing.assert_close((v1, g1), kept, rtol=0, atol=0)
    torch.testing.assert_close(v1_again, v1, rtol=0, atol=0)
    for density, z, v, g in ((first, z1, v1, g1), (second, z2, v2, g2)):  # as on fresh scratch tensors
        fresh = DecoderDensity(vae, density.x)
        torch.testing.assert_close(v, fresh.log_prob(z), rtol=0, atol=0)
        torch.testing.assert_close(g, fresh.grad(z), rtol=0, atol=0)
        leaf = z.clone().requires_grad_(True)
        (exact,) = torch.autograd.grad(vae.decode(leaf).log_prob(density.x).sum(), leaf)
        torch.testing.assert_close(g, exact, rtol=0, atol=1e-10)


def test_a_decoder_without_hidden_layers_returns_its_own_gradient() -> None:
    # z -> logits directly: the gradient in z is the workspace's d/dh itself, so it must be copied
    torch.manual_seed(0)
    vae = build_vae((1, 4, 3), latent_dim=3, hidden=[]).double()
    x = (torch.rand(5, 1, 4, 3) < 0.4).double()
    density = DecoderDensity(vae, x)
    assert density.fused
    z = torch.randn(7, 5, 3, dtype=torch.float64)
    g = density.grad(z)
    density.grad(z + 1.0)  # a second pass over the same scratch tensors
    leaf = z.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(vae.decode(leaf).log_prob(x).sum(), leaf)
    torch.testing.assert_close(g, exact, rtol=0, atol=1e-12)


def test_ais_diagonal_gaussian_gradient_is_autograds() -> None:
    from torch.distributions import MixtureSameFamily, Categorical, Normal

    from vaelab.evaluation.ais import _log_prob_and_grad

    gen = torch.Generator().manual_seed(3)
    z = torch.randn(4, 6, 3, dtype=torch.float64, generator=gen)  # [S, B, D]
    loc, scale = torch.randn(6, 3, dtype=torch.float64, generator=gen), torch.rand(6, 3, dtype=torch.float64, generator=gen) + 0.2
    mixture = MixtureSameFamily(Categorical(logits=torch.zeros(2, dtype=torch.float64)),
                                Independent(Normal(torch.randn(2, 3, dtype=torch.float64, generator=gen),
                                                   torch.ones(2, 3, dtype=torch.float64)), 1))
    for d in (Independent(Normal(loc, scale), 1),  # a posterior, batch [B]
              Independent(Normal(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)), 1),  # N(0, I)
              mixture):  # no closed form here: autograd
        value, grad = _log_prob_and_grad(d, z)
        leaf = z.clone().requires_grad_(True)
        (exact,) = torch.autograd.grad(d.log_prob(leaf).sum(), leaf)
        torch.testing.assert_close(value, d.log_prob(z), rtol=0, atol=0)
        torch.testing.assert_close(grad, exact, rtol=0, atol=1e-12)
        assert not value.requires_grad and not grad.requires_grad


class _Traced(VAE):
    """The same VAE through its own ``log_weights`` (the path that encodes every pass)."""

    def log_weights(self, x: torch.Tensor, k: int = 1, c: torch.Tensor | None = None) -> torch.Tensor:
        return super().log_weights(x, k, c)


@pytest.mark.parametrize("k_chunk", [4, 64])
def test_encoding_once_per_batch_draws_the_same_samples(bernoulli_vae, binary_x, k_chunk: int) -> None:
    vae = bernoulli_vae
    traced = _Traced(vae.encoder, vae.decoder, vae.prior)
    torch.manual_seed(6)
    once = log_likelihood(vae, binary_x, 64, k_chunk=k_chunk, batch_size=3)
    torch.manual_seed(6)
    every_pass = log_likelihood(traced, binary_x, 64, k_chunk=k_chunk, batch_size=3)
    torch.testing.assert_close(once.per_example, every_pass.per_example, rtol=0, atol=1e-10)
    torch.testing.assert_close(once.ess, every_pass.ess, rtol=1e-9, atol=0)


def test_sticking_the_landing_finds_the_best_mean_field_posterior_at_the_default_steps(lg, x) -> None:
    vae = lg.vae(lg.mean_field_encoder(shift=0.2, inflate=1.3))
    torch.manual_seed(8)
    q = optimal_posterior(vae, x)  # the defaults: DEFAULTS.gap_steps steps of the STL gradient
    loc, scale = q.base_dist.loc, q.base_dist.scale
    m, _ = lg.posterior(x)
    found = lg.elbo_gap(x, loc, torch.diag_embed(scale**2))  # KL(q* || p(z|x)) exactly, [B]
    best = lg.elbo_gap(x, m, lg.mean_field_cov())  # the optimum of the family
    start = lg.elbo_gap(x, m + 0.2, lg.mean_field_cov() * 1.3**2)
    assert DEFAULTS.gap_steps <= 100
    assert float((start - best).min()) > 0.05  # there was a gap to close
    assert float((found - best).max()) < 0.01  # nats: q* is as good as the optimum, example by example
