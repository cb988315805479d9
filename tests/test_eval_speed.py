"""The pass sizes of the evaluation change its speed, never its numbers.

``vaelab eval`` was made faster by passing fewer decoder rows at a time (the outputs stay in the
cache): importance samples ``k_chunk`` at a time for log p(x), ``PASS_ROWS`` rows for the gap
split's final ELBOs. The draws are the same in distribution whatever the pass size (and, where
every pass holds a multiple of 16 numbers, the same draws: torch fills normals 16 at a time),
so at every pass size the estimates must match log p(x) and the ELBO of the linear-Gaussian
model in closed form (float64) within their Monte-Carlo standard errors, and each other.
"""

from __future__ import annotations

import math

import pytest
import torch

from linear_gaussian import LinearGaussian
from vaelab.evaluation import log_likelihood
from vaelab.evaluation.gaps import _paired_elbos

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
