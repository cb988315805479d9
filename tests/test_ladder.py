"""The ladder VAE checked against a two-layer linear-Gaussian hierarchy, whose log p(x) and
posterior have closed forms:

    p(z2) = N(0, 1),   p(z1|z2) = N(A z2 + a, diag(s1^2)),   p(x|z1) = N(W z1 + b, s^2 I)
    p(x)  = N(W a + b, W (A A^T + diag(s1^2)) W^T + s^2 I)

With W's columns orthogonal, p(x|z1) as a function of z1 is a diagonal Gaussian message, so
the exact posterior p(z1|z2, x) is the precision-weighted merge of that message with
p(z1|z2): the ladder family contains the exact posterior, and with the right (linear) bottom-up
networks every log weight equals log p(x). So does the residual parameterisation (q relative to
p(z1|z2)): with s1 constant, the exact posterior's mean minus A z2 + a is linear in x and z2 and
its scale over s1 is constant.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

import vaelab
from vaelab.distributions import GaussianDecoder
from vaelab.errors import VaelabError
from vaelab.ladder import FirstUnits, LadderEncoder, LadderPrior, TopDown, layer_slices
from vaelab.model import VAE
from vaelab.objectives import data_elbo
from vaelab.spec import ModelSpec

P, D1, D2 = 4, 2, 1


def _inv_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


class Hierarchy:
    """The generative parameters, the exact p(x) and the exact ladder encoder's weights."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(P, D1, generator=g, dtype=torch.float64))
        self.W = q * torch.tensor([1.7, 0.8], dtype=torch.float64)  # orthogonal columns, unequal norms
        self.b = torch.randn(P, generator=g, dtype=torch.float64)
        self.A = torch.randn(D1, D2, generator=g, dtype=torch.float64)
        self.a = torch.randn(D1, generator=g, dtype=torch.float64)
        self.s1 = torch.tensor([0.6, 1.3], dtype=torch.float64)
        self.s = 0.5
        cov_z1 = self.A @ self.A.T + torch.diag(self.s1**2)
        self.mu_x = self.W @ self.a + self.b
        self.cov_x = self.W @ cov_z1 @ self.W.T + self.s**2 * torch.eye(P, dtype=torch.float64)

    def log_px(self, x: Tensor) -> Tensor:
        return MultivariateNormal(self.mu_x, self.cov_x).log_prob(x)

    def sample(self, n: int, seed: int = 1) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return self.mu_x + torch.randn(n, P, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(self.cov_x).T

    def model(self, exact_encoder: bool, inference: str = "precision") -> VAE:
        top = nn.Linear(D2, 2 * D1).double()
        with torch.no_grad():
            top.weight.zero_()
            top.weight[:D1] = self.A
            top.bias[:D1] = self.a
            top.bias[D1:] = _inv_softplus(self.s1)
        prior = LadderPrior((D1, D2), [TopDown(top, D1, min_scale=0.0)])
        lin = nn.Linear(D1, P).double()
        with torch.no_grad():
            lin.weight.copy_(self.W)
            lin.bias.copy_(self.b)
        decoder = GaussianDecoder(nn.Sequential(FirstUnits(D1), lin), (P,), scale=self.s)
        bottom = [nn.Linear(P, P).double(), nn.Linear(P, P).double()]
        heads = [nn.Linear(P, 2 * D1).double(), nn.Linear(P, 2 * D2).double()]
        if exact_encoder:
            wtw = (self.W.T @ self.W).diagonal()  # diagonal: orthogonal columns
            m = (self.W.T / wtw[:, None])  # (W^T W)^-1 W^T, [D1, P]
            wa = self.W @ self.A  # Cov(x, z2), [P, 1]
            gain = torch.linalg.solve(self.cov_x, wa).T  # Cov(z2, x) Cov(x)^-1, [1, P]
            v2 = 1 - (gain @ wa).squeeze()
            with torch.no_grad():
                for layer in bottom:  # d_1 = d_2 = x
                    layer.weight.copy_(torch.eye(P, dtype=torch.float64))
                    layer.bias.zero_()
                heads[0].weight.zero_()
                heads[0].weight[:D1] = m
                heads[0].bias[:D1] = -m @ self.b
                heads[0].bias[D1:] = _inv_softplus(self.s / wtw.sqrt())
                heads[1].weight.zero_()
                heads[1].weight[:D2] = gain
                heads[1].bias[:D2] = -gain @ self.mu_x
                heads[1].bias[D2:] = _inv_softplus(v2.sqrt().reshape(1))
        encoder = LadderEncoder(bottom, heads, prior, min_scale=0.0, inference=inference)
        if exact_encoder and inference == "residual":
            # message (m, v) = (M (x - b), s^2 / |w|^2) merged with N(A z2 + a, s1^2) gives
            # vq = 1 / (1/v + 1/s1^2) and mu_q - (A z2 + a) = (vq / v) (m - A z2 - a)
            v = self.s**2 / wtw
            vq = 1 / (1 / v + 1 / self.s1**2)
            r = vq / v  # [D1]
            assert encoder.mix is not None
            with torch.no_grad():
                heads[0].weight[:D1] = r[:, None] * m
                heads[0].bias[:D1] = r * (-m @ self.b - self.a)
                heads[0].bias[D1:] = _inv_softplus(vq.sqrt() / self.s1)
                encoder.mix[0].weight.copy_(-r[:, None] * self.A)
        return VAE(encoder, decoder, prior)


@pytest.fixture
def hierarchy() -> Hierarchy:
    return Hierarchy()


def test_prior_density_and_samples_are_the_hierarchy(hierarchy: Hierarchy) -> None:
    model = hierarchy.model(exact_encoder=False)
    p = model.prior_distribution()
    z = torch.randn(7, D1 + D2, dtype=torch.float64)
    z1, z2 = z[:, :D1], z[:, D1:]
    expected = (torch.distributions.Normal(0.0, 1.0).log_prob(z2).sum(-1)
                + torch.distributions.Normal(z2 @ hierarchy.A.T + hierarchy.a, hierarchy.s1).log_prob(z1).sum(-1))
    torch.testing.assert_close(p.log_prob(z), expected)
    torch.manual_seed(0)
    s = p.sample((20000,))  # z1's marginal: N(a, A A^T + diag(s1^2))
    torch.testing.assert_close(s[:, :D1].mean(0), hierarchy.a, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(s[:, :D1].T), hierarchy.A @ hierarchy.A.T + torch.diag(hierarchy.s1**2),
                               atol=0.08, rtol=0)


@pytest.mark.parametrize("inference", ["precision", "residual"])
def test_the_exact_ladder_posterior_makes_every_log_weight_log_px(hierarchy: Hierarchy, inference: str) -> None:
    model = hierarchy.model(exact_encoder=True, inference=inference)
    x = hierarchy.sample(6)
    torch.manual_seed(0)
    log_w = model.log_weights(x, 50)  # [K, B]
    torch.testing.assert_close(log_w, hierarchy.log_px(x).expand_as(log_w), atol=1e-7, rtol=0)  # a random encoder: tens of nats off
    q = model.encode(x)  # the sample's density is the density of the sample
    z, log_q = q.rsample_and_log_prob((20000,))
    torch.testing.assert_close(q.log_prob(z), log_q)
    # chain rule of the KL: E_q[sum of the layers' conditional KLs] = KL(q || p) = E_q[log q - log p]
    diff = sum(t.sum(-1) for t in q.layer_kl(z)) - (log_q - model.prior_distribution().log_prob(z))  # [K, B]
    se = diff.std(0) / math.sqrt(diff.shape[0])
    assert bool((diff.mean(0).abs() < 4 * se).all()), (diff.mean(0), se)


def test_a_worse_encoder_bounds_log_px_and_importance_sampling_recovers_it(hierarchy: Hierarchy) -> None:
    model = hierarchy.model(exact_encoder=True)
    with torch.no_grad():
        for head in model.encoder.heads:
            head.bias[: head.out_features // 2] += 0.3  # shift every message
    x = hierarchy.sample(5, seed=3)
    torch.manual_seed(1)
    log_w = model.log_weights(x, 20000)  # [K, B]
    exact = hierarchy.log_px(x)
    elbo = log_w.mean(0)
    assert bool((elbo < exact - 1e-3).all())
    estimate = torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
    k = log_w.shape[0]
    se = (torch.softmax(log_w, 0) * k).std(0) / math.sqrt(k)  # delta method: sd(w / mean w) / sqrt(K)
    assert bool(((estimate - exact).abs() < 4 * se).all()), (estimate - exact, se)


def test_training_the_ladder_encoder_closes_the_gap(hierarchy: Hierarchy) -> None:
    model = hierarchy.model(exact_encoder=False)
    for module in (model.decoder, model.prior):
        module.requires_grad_(False)
    x = hierarchy.sample(256, seed=5)
    torch.manual_seed(2)
    opt = torch.optim.Adam(model.encoder.parameters(), lr=0.02)
    for _ in range(1500):
        opt.zero_grad()
        loss = -data_elbo(model, x, k=4).elbo.mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        gap = (hierarchy.log_px(x) - model.log_weights(x, 400).mean(0)).mean()
    assert 0 <= float(gap) < 0.02


def test_layer_slices() -> None:
    assert layer_slices((3, 2, 1)) == [slice(0, 3), slice(3, 5), slice(5, 6)]


@pytest.mark.parametrize("dims, message", [
    ((5,), "two or more positive layer sizes"),
    ((4, 0), "two or more positive layer sizes"),
    ((4, -2), "two or more positive layer sizes"),
])
def test_spec_refuses_bad_layer_sizes(dims: tuple[int, ...], message: str) -> None:
    with pytest.raises(VaelabError, match=message):
        ModelSpec.create((5,), family="ladder", latent_dims=dims)


def test_spec_refuses_other_posteriors_and_round_trips() -> None:
    with pytest.raises(VaelabError, match="posterior gaussian and prior normal"):
        ModelSpec.create((5,), family="ladder", latent_dims=(4, 2), posterior="iaf")
    spec = ModelSpec.create((5,), family="ladder", latent_dims=(4, 2), likelihood="gaussian")
    assert spec.latent_dim == 6
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    plain = ModelSpec.create((5,)).to_dict()
    assert "latent_dims" not in plain  # model.json of one-layer models is unchanged


def test_train_save_load_and_resume_a_ladder_run(tmp_path: Path) -> None:
    settings = dict(data="digits", latent_dims=[4, 2], hidden=[32], epochs=2, eval_k=0, out=str(tmp_path),
                    name="ladder", threads=1, likelihood="gaussian")
    model, result = vaelab.train(**settings, figures=False)
    assert model.spec.family == "ladder" and model.spec.latent_dims == (4, 2)
    loaded = vaelab.load(tmp_path / "ladder")
    x = torch.rand(3, *loaded.x_shape)
    torch.manual_seed(0)
    a = loaded.vae.log_weights(x, 5)
    torch.manual_seed(0)
    b = model.vae.log_weights(x, 5)
    torch.testing.assert_close(a, b)
    again, more = vaelab.train(resume=tmp_path / "ladder", epochs=3, figures=False)
    assert [m["epoch"] for m in more.metrics] == [1, 2, 3] and again.spec == model.spec
    from vaelab.evaluation import EvalSettings
    from vaelab.report import write_report

    page = write_report(tmp_path / "ladder", reevaluate=True,
                        settings=EvalSettings(k=20, estimator="is", mi_samples=50, gap_examples=0)).read_text()
    assert "samples decoded from the hierarchical prior" in page and "layer z2 (2 units)" in page


@pytest.mark.parametrize("value", ["", "0,4", "-3,2", "8"])
def test_the_cli_refuses_bad_latent_dims(value: str, tmp_path: Path, refused) -> None:
    refused(["train", "--data", "digits", "--latent-dims", value, "--out", tmp_path / "runs"], "latent_dims")
    assert not (tmp_path / "runs").exists()


def test_mean_given_and_hierarchical_samples_follow_the_layers_above(hierarchy: Hierarchy) -> None:
    from vaelab.ladder import hierarchical_samples, unit_name

    model = hierarchy.model(exact_encoder=True)
    x = hierarchy.sample(3)
    q = model.encode(x)
    mean = q.mean  # [B, D]: the top layer's mean, then z1's merged mean given it
    moved = mean.clone()
    moved[:, D1:] += 1.0
    follow = q.mean_given(moved, layer=1)
    torch.testing.assert_close(follow[:, D1:], moved[:, D1:])  # the varied layer stays
    torch.testing.assert_close(q.mean_given(mean, layer=1), mean)  # nothing moved: nothing changes
    assert not torch.allclose(follow[:, :D1], mean[:, :D1])  # z1 follows z2 (A != 0)
    torch.manual_seed(0)
    z = hierarchical_samples(model.prior, 3, 5)  # [rows, cols, D]
    assert z.shape == (3, 5, D1 + D2)
    torch.testing.assert_close(z[:, :, D1:], z[:, :1, D1:].expand(3, 5, D2))  # one top draw per row
    torch.testing.assert_close(z[:, 0, :D1], z[:, 0, D1:] @ hierarchy.A.T + hierarchy.a)  # first column: means
    assert (z[:, 1:, :D1] - z[:, :1, :D1]).abs().min() > 0  # the others: resampled
    assert [unit_name((2, 1), u) for u in range(3)] == ["z1.0", "z1.1", "z2.0"]


def test_per_layer_kl_drives_free_bits_and_the_diagnostics(hierarchy: Hierarchy) -> None:
    from vaelab.evaluation import latent_diagnostics
    from vaelab.objectives import kl_per_dim

    model = hierarchy.model(exact_encoder=True)
    x = hierarchy.sample(400, seed=7)
    torch.manual_seed(0)
    with torch.no_grad():
        trace = model.trace(x, 64)
        per_unit = kl_per_dim(trace)  # [B, D]
    assert per_unit.shape == (400, D1 + D2) and bool((per_unit >= 0).all())
    with torch.no_grad():
        mc = (trace.log_posterior - trace.log_prior).mean(0)  # [B], the plain Monte-Carlo KL
    assert abs(float(per_unit.sum(-1).mean() - mc.mean())) < 4 * float(mc.std() / 20) + 0.02
    d = latent_diagnostics(model, x, mi_samples=200)
    summary = d.summary()
    assert summary.layers == (D1, D2)
    layers = summary.per_layer()
    assert [layer["units"] for layer in layers] == [D1, D2]
    assert abs(sum(layer["kl"] for layer in layers) - d.kl) < 1e-9
    assert all(layer["informative"] == layer["units"] for layer in layers)  # the exact posterior uses every unit


def test_a_conditional_ladder_trains_reconstructs_and_samples_given_its_label(tmp_path: Path) -> None:
    model, _ = vaelab.train(data="digits", latent_dims=[4, 2], hidden=[32], epochs=1, eval_k=0, out=str(tmp_path),
                            name="cl", threads=1, condition_on=["label"], log=lambda *a: None)
    assert model.conditional and model.vae.context is not None
    assert (tmp_path / "cl" / "reconstructions.png").exists() and (tmp_path / "cl" / "samples.png").exists()
    x = model.test_batch()
    torch.manual_seed(0)
    assert model.reconstruct(x.x[:3], c=x.c[:3]).shape == (3, *model.x_shape)
    assert model.sample(4, label=3).shape == (4, *model.x_shape)
    ll = model.log_likelihood(x.x[:5], k=10, c=x.c[:5])
    assert ll.per_example.shape == (5,) and bool(torch.isfinite(ll.per_example).all())


def test_colour_and_whiten_are_the_priors_reparameterization(hierarchy: Hierarchy) -> None:
    from vaelab.ladder import colour, whiten

    prior = hierarchy.model(exact_encoder=False).prior
    z = torch.randn(5, D1 + D2, dtype=torch.float64)
    torch.testing.assert_close(colour(prior, whiten(prior, z)), z)
    eps = torch.randn(40000, D1 + D2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    z1 = colour(prior, eps)[:, :D1]  # eps ~ N(0, I) gives z ~ p(z): z1's marginal is N(a, A A^T + diag(s1^2))
    torch.testing.assert_close(z1.mean(0), hierarchy.a, atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(z1.T), hierarchy.A @ hierarchy.A.T + torch.diag(hierarchy.s1**2), atol=0.06, rtol=0)


def test_the_explorer_moves_the_lower_layers_with_an_upper_unit(tmp_path: Path) -> None:
    from vaelab.serve.explorer import Explorer

    model, _ = vaelab.train(data="digits", latent_dims=[4, 2], hidden=[32], epochs=2, eval_k=0, out=str(tmp_path),
                            name="ex", threads=1, figures=False, log=lambda *a: None)
    explorer = Explorer(vaelab.load(tmp_path / "ex", device="cpu"))
    z = explorer.latent_of(0)  # the prior's noise at the example's posterior mean path
    example = explorer.example(0)
    assert explorer.decode(z)["image"] == example["reconstruction"]
    rec = model.reconstruct(explorer.x[:1])[0]
    from vaelab.serve.explorer import render
    assert render(rec, explorer.shape) == example["reconstruction"]  # the same z as the model's own reconstruction
    moved = z.clone()
    moved[4] += 2.0  # a unit of the upper layer: the decoder reads z1 only, which follows it
    assert explorer.decode(moved)["image"] != example["reconstruction"]
    assert len(explorer.sample(3, seed=0)["images"]) == 3


@pytest.mark.parametrize("inference", ["precision", "residual"])
def test_the_gap_split_of_a_hierarchy_frees_the_messages_and_finds_the_exact_posterior(hierarchy: Hierarchy,
                                                                                       inference: str) -> None:
    """The ladder family contains the exact posterior here: q* (the best messages per example,
    the model's own inference kept) closes the approximation gap, so a worse encoder's whole gap
    is amortization."""
    from vaelab.evaluation import inference_gaps

    model = hierarchy.model(exact_encoder=True, inference=inference)
    with torch.no_grad():
        for head in model.encoder.heads:
            head.bias[: head.out_features // 2] += 0.5  # every example's messages off by 0.5
    x = hierarchy.sample(20, seed=11)
    torch.manual_seed(0)
    gaps = inference_gaps(model, x, n=20, log_px=hierarchy.log_px(x), steps=400, lr=0.05, samples=32,
                          eval_samples=4000)
    s = gaps.summary()
    assert s.settings.family.startswith("ladder")
    assert abs(s.approximation_gap) < 4 * s.approximation_gap_mc_stderr + 0.01  # q* is (nearly) exact
    assert s.amortization_gap > 0.1 and s.amortization_gap > 10 * s.amortization_gap_mc_stderr
    assert abs(s.inference_gap - s.approximation_gap - s.amortization_gap) < 1e-9
    assert gaps.loc.shape == (20, D1 + D2) and gaps.scale.shape == (20, D1 + D2)


# --- the ingredients (spec.ladder, --ladder-*) -------------------------------------------------

INGREDIENTS = [
    {"inference": "residual"},
    {"inference": "independent"},
    {"activation": "tanh"},
    {"activation": "elu"},
    {"norm": "layer"},
    {"skip": True},
    {"init": "prior"},
    {"inference": "residual", "activation": "elu", "norm": "layer", "skip": True, "init": "prior"},
]


def _spec(ladder: dict | None = None, dims: tuple[int, ...] = (4, 3)) -> ModelSpec:
    return ModelSpec.create((1, 6, 6), family="ladder", latent_dims=dims, options={"hidden": [16]}, ladder=ladder)


@pytest.mark.parametrize("ladder", INGREDIENTS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_each_ingredient_builds_trains_and_round_trips(ladder: dict) -> None:
    from vaelab.build import build_model

    spec = _spec(ladder)
    assert all(spec.ladder[k] == v for k, v in ladder.items()) and len(spec.ladder) == 5  # defaults filled in
    again = ModelSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec
    torch.manual_seed(0)
    model = build_model(spec).double()
    x = torch.rand(8, 1, 6, 6, dtype=torch.float64).bernoulli()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = -data_elbo(model, x, k=2).elbo.mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad  # every parameter is in the graph
    opt.step()
    clone = build_model(again).double()
    clone.load_state_dict(model.state_dict())  # strict: the same modules from the saved spec
    torch.manual_seed(1)
    a = model.log_weights(x, 5)
    torch.manual_seed(1)
    b = clone.log_weights(x, 5)
    torch.testing.assert_close(a, b)
    assert bool(torch.isfinite(a).all())


@torch.no_grad()
def test_the_ingredients_do_what_they_say() -> None:
    from vaelab.build import build_model

    x = torch.rand(6, 1, 6, 6, dtype=torch.float64).bernoulli()
    torch.manual_seed(0)
    # prior init with residual inference: q(z|x) = p(z) exactly, so log q = log p and the KL is 0
    model = build_model(_spec({"inference": "residual", "init": "prior"})).double()
    q = model.encode(x)
    z, log_q = q.rsample_and_log_prob((4,))
    torch.testing.assert_close(log_q, model.prior_distribution().log_prob(z))
    assert all(float(t.abs().max()) < 1e-12 for t in q.layer_kl(z))
    # prior init alone: p(z1 | z2) = N(0, I) whatever z2
    loc, scale = model.prior.top_down[0](torch.randn(5, 3, dtype=torch.float64))
    torch.testing.assert_close(loc, torch.zeros_like(loc))
    torch.testing.assert_close(scale, torch.ones_like(scale))
    # independent: z1's q does not move with z2; precision merge: it does
    for inference, moves in (("independent", False), ("precision", True)):
        q = build_model(_spec({"inference": inference})).double().encode(x)
        z = q.mean
        shifted = z.clone()
        shifted[:, 4:] += 1.0
        assert torch.allclose(q.mean_given(shifted, layer=1)[:, :4], z[:, :4]) != moves
    # skip: the likelihood reads z2 too; without it, z1 alone
    for skip in (False, True):
        model = build_model(_spec({"skip": skip})).double()
        z = torch.randn(3, 7, dtype=torch.float64)
        moved = z.clone()
        moved[:, 4:] += 1.0
        p_x, p_moved = model.decoder(z), model.decoder(moved)
        assert torch.allclose(p_x.log_prob(x[:3]), p_moved.log_prob(x[:3])) != skip
    # activation and norm: in every network (the spec's encoder and decoder nets too)
    model = build_model(_spec({"activation": "tanh", "norm": "layer"}))
    kinds = {type(m) for m in model.modules()}
    assert nn.Tanh in kinds and nn.ReLU not in kinds and nn.LayerNorm in kinds
    assert nn.LayerNorm not in {type(m) for m in build_model(_spec()).modules()}


def test_old_ladder_folders_load_as_the_default_ladder(tmp_path: Path) -> None:
    """A model.json written before the ladder had options (no "ladder" key) is today's default."""
    model, _ = vaelab.train(data="digits", latent_dims=[4, 2], hidden=[16], epochs=1, eval_k=0, out=str(tmp_path),
                            name="old", threads=1, figures=False, log=lambda *a: None)
    path = tmp_path / "old" / "model.json"
    spec = json.loads(path.read_text())
    assert spec["ladder"] == {"inference": "precision", "activation": "relu", "norm": "none", "skip": False,
                              "init": "default"}
    del spec["ladder"]
    path.write_text(json.dumps(spec))
    loaded = vaelab.load(tmp_path / "old")
    assert loaded.spec == model.spec
    x = torch.rand(3, *loaded.x_shape)
    torch.manual_seed(0)
    a = loaded.vae.log_weights(x, 5)
    torch.manual_seed(0)
    torch.testing.assert_close(a, model.vae.log_weights(x, 5))


def test_train_a_ladder_with_ingredients_from_python_and_load_it(tmp_path: Path) -> None:
    model, _ = vaelab.train(data="digits", latent_dims=[4, 2], hidden=[16], epochs=1, eval_k=0, out=str(tmp_path),
                            name="ing", threads=1, figures=False, log=lambda *a: None, ladder_inference="residual",
                            ladder_skip=True, ladder_init="prior", ladder_norm="layer", ladder_activation="elu")
    saved = json.loads((tmp_path / "ing" / "model.json").read_text())["ladder"]
    assert saved == {"inference": "residual", "activation": "elu", "norm": "layer", "skip": True, "init": "prior"}
    loaded = vaelab.load(tmp_path / "ing")
    x = torch.rand(3, *loaded.x_shape)
    torch.manual_seed(0)
    a = loaded.vae.log_weights(x, 5)
    torch.manual_seed(0)
    torch.testing.assert_close(a, model.vae.log_weights(x, 5))


@pytest.mark.parametrize("ladder, culprit", [
    ({"inference": "bottom-up"}, "inference"),
    ({"activation": "sigmoid"}, "activation"),
    ({"norm": "batch"}, "norm"),
    ({"init": "zeros"}, "init"),
    ({"skip": "yes"}, "skip"),
    ({"depth": 3}, "depth"),
])
def test_bad_ladder_options_are_one_line_errors(ladder: dict, culprit: str) -> None:
    with pytest.raises(VaelabError, match=culprit) as err:
        _spec(ladder)
    assert "\n" not in str(err.value)


def test_ladder_options_belong_to_a_ladder() -> None:
    with pytest.raises(VaelabError, match="add latent_dims"):
        ModelSpec.create((5,), ladder={"skip": True})
    assert "ladder" not in ModelSpec.create((5,)).to_dict()  # model.json of one-layer models is unchanged
    d = _spec().to_dict()
    d["ladder"] = "residual"
    with pytest.raises(VaelabError, match="ladder must be an object"):
        ModelSpec.from_dict(d)


@pytest.mark.parametrize("argv, culprit", [
    (["--ladder-skip", "true"], "--latent-dims"),
    (["--ladder-inference", "residual"], "--latent-dims"),
    (["--latent-dims", "4,2", "--ladder-norm", "batch"], "ladder-norm"),
    (["--latent-dims", "4,2", "--ladder-inference", "merge"], "ladder-inference"),
])
def test_the_cli_refuses_bad_ladder_flags(argv: list[str], culprit: str, tmp_path: Path, refused) -> None:
    refused(["train", "--data", "digits", *argv, "--out", tmp_path / "runs"], culprit)
    assert not (tmp_path / "runs").exists()
