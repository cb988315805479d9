"""Encoders, priors and decoders against torch.distributions references; build and save/load."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributions import Bernoulli, MultivariateNormal, Normal

from vaelab.build import build_vae
from vaelab.distributions import (
    BernoulliDecoder,
    GaussianDecoder,
    GaussianEncoder,
    StandardNormalPrior,
)
from vaelab.errors import VaelabError
from vaelab.nets import MLP

F64 = torch.float64


class Constant(nn.Module):
    """A 'network' that returns its parameter for every input row: ``[N, *] -> [N, *shape]``."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value)

    def forward(self, x: Tensor) -> Tensor:
        return self.value.expand(x.shape[0], *self.value.shape)


# --- GaussianEncoder -------------------------------------------------------------------


def test_gaussian_encoder_shapes_and_log_prob_match_torch_normal():
    torch.manual_seed(0)
    d, b, k = 4, 6, 5
    encoder = GaussianEncoder(MLP(784, [32], 2 * d), latent_dim=d).to(F64)
    x = torch.rand(b, 1, 28, 28, dtype=F64)
    q = encoder(x)
    assert q.batch_shape == (b,) and q.event_shape == (d,)
    z = q.rsample((k,))
    assert z.shape == (k, b, d)
    log_q = q.log_prob(z)
    assert log_q.shape == (k, b)

    # the documented parametrisation: mean, then raw scale s with sigma = softplus(s) + min_scale
    h = encoder.net(x)
    loc, raw = h[:, :d], h[:, d:]
    scale = torch.log1p(torch.exp(raw)) + 1e-4
    expected = Normal(loc, scale).log_prob(z).sum(-1)
    torch.testing.assert_close(log_q, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.mean, loc, rtol=0, atol=0)
    torch.testing.assert_close(q.stddev, scale, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("raw", [-1e4, -50.0, 0.0, 50.0, 1e4])
def test_gaussian_encoder_scale_is_positive_and_log_prob_finite_for_extreme_outputs(raw, dtype):
    d = 3
    net = Constant(torch.cat([torch.zeros(d), torch.full((d,), raw)]).to(dtype))
    encoder = GaussianEncoder(net, latent_dim=d, min_scale=1e-4)
    x = torch.zeros(2, 7, dtype=dtype)
    q = encoder(x)
    assert (q.stddev > 0).all()
    assert (q.stddev >= 1e-4 * (1 - 1e-6)).all()
    torch.manual_seed(1)
    z = q.rsample((4,))
    for point in (z, torch.zeros_like(z), torch.ones_like(z)):
        log_q = q.log_prob(point)
        assert torch.isfinite(log_q).all(), (raw, log_q)
    # the same values under the reference density (float64 for the reference)
    expected = Normal(q.mean.double(), q.stddev.double()).log_prob(torch.ones(4, 2, d, dtype=F64)).sum(-1)
    torch.testing.assert_close(q.log_prob(torch.ones_like(z)).double(), expected, rtol=1e-5, atol=0)


def test_gaussian_encoder_gradients_reach_every_parameter_through_rsample():
    torch.manual_seed(2)
    encoder = GaussianEncoder(MLP(10, [16, 8], 2 * 3), latent_dim=3).to(F64)
    x = torch.randn(5, 10, dtype=F64)
    z = encoder(x).rsample((4,))
    (z**2).sum().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and (p.grad != 0).any(), name


def test_gaussian_encoder_rejects_wrong_output_size_and_latent_dim():
    encoder = GaussianEncoder(MLP(10, [], 5), latent_dim=3)
    with pytest.raises(ValueError, match=r"2 \* latent_dim = 6"):
        encoder(torch.randn(2, 10))
    with pytest.raises(ValueError, match="latent_dim"):
        GaussianEncoder(MLP(10, [], 2), latent_dim=0)


# --- StandardNormalPrior ----------------------------------------------------------------


def test_standard_normal_prior_matches_multivariate_normal():
    prior = StandardNormalPrior(5).to(F64)
    p = prior()
    assert p.batch_shape == () and p.event_shape == (5,)
    z = torch.randn(3, 4, 5, dtype=F64) * 2
    reference = MultivariateNormal(torch.zeros(5, dtype=F64), torch.eye(5, dtype=F64))
    torch.testing.assert_close(p.log_prob(z), reference.log_prob(z), rtol=1e-12, atol=1e-12)
    assert p.sample((2,)).dtype == F64  # the buffers follow the module's dtype
    assert prior.state_dict() == {}  # zeros and ones are not saved


# --- BernoulliDecoder -------------------------------------------------------------------


@pytest.mark.parametrize("x_shape", [(1, 28, 28), (10,)])
def test_bernoulli_decoder_log_prob_matches_torch_bernoulli(x_shape):
    torch.manual_seed(3)
    d, k, b = 4, 3, 5
    n = math.prod(x_shape)
    decoder = BernoulliDecoder(MLP(d, [16], n), x_shape).to(F64)
    z = torch.randn(k, b, d, dtype=F64)
    x = torch.randint(0, 2, (b, *x_shape)).to(F64)
    p = decoder(z)
    assert p.batch_shape == (k, b) and p.event_shape == x_shape
    log_p = p.log_prob(x)
    assert log_p.shape == (k, b)

    logits = decoder.net(z.reshape(-1, d)).reshape(k, b, *x_shape)
    dims = tuple(range(2, 2 + len(x_shape)))
    expected = Bernoulli(logits=logits).log_prob(x.expand(k, *x.shape)).sum(dims)
    torch.testing.assert_close(log_p, expected, rtol=1e-12, atol=1e-10)
    assert (log_p < 0).all()  # a probability of binary data


def test_bernoulli_decoder_extreme_logits_give_finite_exact_log_prob():
    logits = torch.tensor([100.0, -100.0, 100.0, -100.0], dtype=F64)
    decoder = BernoulliDecoder(Constant(logits), (4,))
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=F64)  # two right, two badly wrong
    log_p = decoder(torch.zeros(1, 2, dtype=F64)).log_prob(x)
    # log sigmoid(l) for x = 1 and log sigmoid(-l) for x = 0: about 0, 0, -100, -100
    expected = 2 * -math.log1p(math.exp(-100)) + 2 * (-100 - math.log1p(math.exp(-100)))
    assert torch.isfinite(log_p).all()
    assert float(log_p.detach()) == pytest.approx(expected, abs=1e-9)
    decoder32 = BernoulliDecoder(Constant(logits.float()), (4,))
    assert torch.isfinite(decoder32(torch.zeros(1, 2)).log_prob(x.float())).all()


def test_bernoulli_decoder_check():
    decoder = BernoulliDecoder(MLP(2, [], 4), (4,))
    decoder.check(torch.tensor([[0.0, 0.25, 0.5, 1.0]]))  # grey values in [0, 1] pass
    decoder.check(torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    with pytest.raises(VaelabError, match=r"\[0, 1\]"):
        decoder.check(torch.tensor([[0.0, 255.0, 3.0, 1.0]]))
    with pytest.raises(VaelabError, match=r"\[0, 1.01\]"):
        decoder.check(torch.tensor([[0.0, 1.01, 0.5, 1.0]]))
    with pytest.raises(VaelabError, match=r"\[-0.5, 1\].*\[0, 1\]"):
        decoder.check(torch.tensor([[-0.5, 0.5, 1.0, 1.0]]))
    with pytest.raises(VaelabError, match="NaN"):
        decoder.check(torch.tensor([[0.0, float("nan"), 1.0, 1.0]]))
    with pytest.raises(VaelabError, match="NaN/inf"):
        decoder.check(torch.tensor([[0.0, float("inf"), 1.0, 1.0]]))
    with pytest.raises(VaelabError, match="training data"):
        decoder.check(torch.tensor([[2.0, 0.0, 0.0, 0.0]]), what="training data")


# --- GaussianDecoder --------------------------------------------------------------------


@pytest.mark.parametrize("learn_scale", ["fixed", "global", "feature"])
@pytest.mark.parametrize("x_shape", [(2, 3), (6,)])
def test_gaussian_decoder_log_prob_matches_torch_normal(learn_scale, x_shape):
    torch.manual_seed(4)
    d, k, b, s = 3, 2, 4, 0.75
    decoder = GaussianDecoder(MLP(d, [8], math.prod(x_shape)), x_shape, scale=s, learn_scale=learn_scale).to(F64)
    # every scale starts at ``scale`` (learned ones up to the float32 init of the parameter)
    scale_shape = x_shape if learn_scale == "feature" else ()
    assert decoder.scale.shape == scale_shape
    torch.testing.assert_close(decoder.scale, torch.full(scale_shape, s, dtype=F64), rtol=1e-6, atol=0)

    z = torch.randn(k, b, d, dtype=F64)
    x = torch.randn(b, *x_shape, dtype=F64)
    mean = decoder.net(z.reshape(-1, d)).reshape(k, b, *x_shape)
    dims = tuple(range(2, 2 + len(x_shape)))
    p = decoder(z)
    assert p.batch_shape == (k, b) and p.event_shape == x_shape
    torch.testing.assert_close(p.mean, mean, rtol=0, atol=0)
    got = p.log_prob(x)
    assert got.shape == (k, b)
    expected = Normal(mean, decoder.scale.detach()).log_prob(x).sum(dims)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if learn_scale == "fixed":  # the scale is exactly the given number
        torch.testing.assert_close(got, Normal(mean, s).log_prob(x).sum(dims), rtol=1e-12, atol=1e-12)
        assert list(decoder.parameters()) == list(decoder.net.parameters())


@pytest.mark.parametrize("learn_scale", ["global", "feature"])
def test_gaussian_decoder_learned_scale_is_positive_and_trainable(learn_scale):
    torch.manual_seed(5)
    decoder = GaussianDecoder(MLP(3, [], 6), (6,), scale=0.5, learn_scale=learn_scale).to(F64)
    x = torch.randn(4, 6, dtype=F64)
    loss = -decoder(torch.randn(2, 4, 3, dtype=F64)).log_prob(x).sum()
    loss.backward()
    assert decoder.raw_scale.grad is not None
    assert torch.isfinite(decoder.raw_scale.grad).all() and (decoder.raw_scale.grad != 0).all()
    for p in decoder.net.parameters():
        assert p.grad is not None and (p.grad != 0).any()
    # the scale stays positive (and the density finite) whatever the raw parameter does
    with torch.no_grad():
        decoder.raw_scale.fill_(-1e4)
    assert (decoder.scale > 0).all()
    assert torch.isfinite(decoder(torch.randn(2, 4, 3, dtype=F64)).log_prob(x)).all()
    with torch.no_grad():
        decoder.raw_scale.fill_(1e4)
    assert torch.isfinite(decoder.scale).all() and (decoder.scale >= 1e4).all()


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_gaussian_decoder_rejects_non_positive_scale(scale):
    for learn_scale in ("fixed", "global", "feature"):
        with pytest.raises(VaelabError, match="scale must be > 0"):
            GaussianDecoder(MLP(2, [], 3), (3,), scale=scale, learn_scale=learn_scale)


def test_gaussian_decoder_rejects_unknown_learn_scale_and_non_finite_data():
    with pytest.raises(VaelabError, match="learn_scale"):
        GaussianDecoder(MLP(2, [], 3), (3,), learn_scale="pixel")  # type: ignore[arg-type]
    decoder = GaussianDecoder(MLP(2, [], 3), (3,))
    decoder.check(torch.tensor([[-300.0, 0.0, 1e6]]))  # any real number
    with pytest.raises(VaelabError, match="NaN"):
        decoder.check(torch.tensor([[0.0, float("nan"), 1.0]]))


# --- build_vae and save/load ------------------------------------------------------------

CONFIGS = {
    "mlp-bernoulli": {"x_shape": (1, 28, 28), "net": "mlp", "likelihood": "bernoulli"},
    "conv-bernoulli": {"x_shape": (1, 28, 28), "net": "conv", "likelihood": "bernoulli"},
    "mlp-gaussian-feature": {
        "x_shape": (64,), "net": "mlp", "likelihood": "gaussian", "learn_scale": "feature"
    },
    "mlp-gaussian-global": {
        "x_shape": (8, 8), "net": "mlp", "likelihood": "gaussian", "learn_scale": "global"
    },
}


def _data(x_shape, likelihood: str, n: int = 3) -> Tensor:
    g = torch.Generator().manual_seed(6)
    if likelihood == "bernoulli":
        return torch.randint(0, 2, (n, *x_shape), generator=g).float()
    return torch.randn(n, *x_shape, generator=g)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_build_vae_shapes_and_gradients(name):
    cfg = dict(CONFIGS[name])
    x_shape = cfg.pop("x_shape")
    torch.manual_seed(7)
    model = build_vae(x_shape, latent_dim=5, hidden=[32], **cfg)
    assert model.latent_dim == 5 and model.x_shape == tuple(x_shape)
    x = _data(x_shape, cfg["likelihood"])
    trace = model.trace(x, 4)
    assert trace.z.shape == (4, 3, 5)
    for t in (trace.log_likelihood, trace.log_prior, trace.log_posterior, trace.log_weights):
        assert t.shape == (4, 3) and torch.isfinite(t).all()
    samples = model.sample(6)
    assert samples.shape == (6, *x_shape)
    if cfg["likelihood"] == "bernoulli":
        assert ((samples >= 0) & (samples <= 1)).all()
        drawn = model.sample(6, mean=False)
        assert set(drawn.unique().tolist()) <= {0.0, 1.0}
    # gradients of the ELBO reach every parameter of the model
    (-trace.log_weights.mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and (p.grad != 0).any(), pname


def test_build_vae_rejects_bad_settings():
    with pytest.raises(VaelabError, match=r"at least 4x4 pixels, the data are 3x3; the nearest size that works is 4x4"):
        build_vae((1, 3, 3), net="conv")
    with pytest.raises(VaelabError, match=r"needs images of shape \(C, H, W\), the data have shape \(784,\)"):
        build_vae((784,), net="conv")
    with pytest.raises(VaelabError, match="unknown net 'rnn'"):
        build_vae((10,), net="rnn")  # type: ignore[arg-type]
    with pytest.raises(VaelabError, match="unknown likelihood 'tweedie'"):
        build_vae((10,), likelihood="tweedie")  # type: ignore[arg-type]
    with pytest.raises(VaelabError, match="latent_dim"):
        build_vae((10,), latent_dim=0)
    with pytest.raises(VaelabError, match="hidden"):
        build_vae((10,), hidden=[0])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_round_trips_through_safetensors(name, tmp_path):
    cfg = dict(CONFIGS[name])
    x_shape = cfg.pop("x_shape")
    torch.manual_seed(8)
    model = build_vae(x_shape, latent_dim=4, hidden=[16], **cfg)
    with torch.no_grad():  # move learned scales off their initial value, so loading matters
        for pname, p in model.named_parameters():
            if pname.endswith("raw_scale"):
                p.add_(torch.randn_like(p))
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))

    torch.manual_seed(9)  # a different initialisation
    fresh = build_vae(x_shape, latent_dim=4, hidden=[16], **cfg)
    x = _data(x_shape, cfg["likelihood"])
    with torch.no_grad():
        torch.manual_seed(10)
        expected = model.log_weights(x, 5)
        torch.manual_seed(10)
        before = fresh.log_weights(x, 5)
        assert not torch.allclose(before, expected)  # so the comparison below has power
        fresh.load_state_dict(load_file(str(path)), strict=True)
        torch.manual_seed(10)
        after = fresh.log_weights(x, 5)
    assert torch.equal(after, expected)
