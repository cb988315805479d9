"""benchmarks/quality_ablation.py: its loop, its evaluator and its arithmetic.

The study itself trains hundreds of models; a test checks that the all-plain ablation loop is
the reference loop draw for draw, that each switch changes what it names and nothing else,
that the evaluator is exact where log p(x) has a closed form, and the paired differences.
"""

from __future__ import annotations

import math
import statistics
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from benchmark_modules import load_benchmark

F64 = torch.float64


@pytest.fixture(scope="module")
def qa() -> ModuleType:
    return load_benchmark("quality_ablation")  # it imports its sibling reference.py


def _digits(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 784, generator=g) ** 3)  # grey levels in [0, 1], mostly dark


def test_all_plain_loop_is_the_reference_loop(qa: ModuleType) -> None:
    x = _digits(200, 0)  # two batches of 128 and 72 per epoch
    ref, _ = qa.train_reference(x, epochs=2, seed=5)  # benchmarks/reference.py
    mine = qa.train_ablation(x, torch.bernoulli(x[:50]), qa.PLAIN, seed=5, epochs=2)
    for a, b in zip(ref.state_dict().values(), mine.state_dict().values()):
        assert torch.equal(a, b)


def test_one_head_draws_vaelabs_initial_weights(qa: ModuleType) -> None:
    from vaelab.build import build_model
    from vaelab.runs import TrainConfig

    torch.manual_seed(11)
    vae = build_model(TrainConfig().model_spec([1, 28, 28], []))
    torch.manual_seed(11)
    one = qa.AblationVAE("one", "softplus")
    for a, b in zip(qa._from_vaelab(vae.state_dict()).state_dict().values(), one.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("scale", ["exp", "softplus"])
def test_loss_is_bce_plus_the_closed_form_kl(qa: ModuleType, scale: str) -> None:
    torch.manual_seed(0)
    model = qa.AblationVAE("two", scale).double()
    x = torch.bernoulli(_digits(7, 1)).double()
    eps = torch.randn(7, 20, dtype=F64)
    mu, raw = model.encode(x)
    q = Independent(Normal(mu, model.scale_of(raw)), 1)
    p = Independent(Normal(torch.zeros(20, dtype=F64), torch.ones(20, dtype=F64)), 1)
    z = mu + model.scale_of(raw) * eps
    bce = F.binary_cross_entropy_with_logits(model.decode_logits(z), x, reduction="sum")
    expected = bce + kl_divergence(q, p).sum()
    assert model.loss(x, eps).item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(model.log_scale_of(raw), model.scale_of(raw).log(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale,raw", [("exp", 0.0), ("softplus", math.log(math.expm1(1.0 - 1e-4)))])
def test_evaluator_is_exact_when_q_is_the_prior_and_the_decoder_ignores_z(qa: ModuleType, scale: str,
                                                                          raw: float) -> None:
    """q(z|x) = p(z) = N(0, I) and logits = b: every importance weight is p(x) = prod Bernoulli."""
    model = qa.AblationVAE("one", scale)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.cat([torch.zeros(20), torch.full((20,), raw)]))
        model.fc4.weight.zero_()
        model.fc4.bias.copy_(torch.linspace(-3, 3, 784))
    x = torch.bernoulli(_digits(6, 2))
    b = model.fc4.bias.detach().double()
    exact = (x.double() * b - F.softplus(b)).sum(-1)  # [6]
    torch.testing.assert_close(qa.log_px(model, x, k=50), exact, rtol=0, atol=2e-3)  # float32 sums of 784 terms


def test_evaluator_noise_does_not_depend_on_the_batch(qa: ModuleType) -> None:
    torch.manual_seed(0)
    model = qa.AblationVAE("two", "exp")
    x = torch.bernoulli(_digits(7, 3))
    a = qa.log_px(model, x, k=30, batch=7)
    b = qa.log_px(model, x, k=30, batch=2)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_switches_change_one_choice_each(qa: ModuleType) -> None:
    for name in qa.PLAIN:
        changed = {k for k, v in qa.VARIANTS[name].items() if v != qa.PLAIN[k]}
        assert changed == {name}
    assert qa.VARIANTS["all-but-scale"] == {**qa.VARIANTS["all"], "scale": "exp"}
    assert qa.VARIANTS["loss-nominal"] == {**qa.PLAIN, "loss": "nominal"}
    assert qa.VARIANTS["fix"] == {**qa.VARIANTS["all"], "loss": "nominal"}


def test_nominal_loss_parts_from_the_mean_only_on_a_partial_batch(qa: ModuleType) -> None:
    """sum / 128 and the batch mean are the same loss on a full batch of 128; on the last batch
    of 72 the nominal loss weighs 72/128 of the mean (as a summed loss does under Adam)."""
    def train(n: int, loss: str) -> list[torch.Tensor]:
        x = _digits(n, 4)
        return list(qa.train_ablation(x, torch.bernoulli(x[:20]), {**qa.PLAIN, "loss": loss}, seed=2,
                                      epochs=1).state_dict().values())

    for a, b in zip(train(256, "nominal"), train(256, "mean")):  # two full batches
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(train(200, "nominal"), train(200, "mean")))  # 128 + 72


def test_summary_is_the_paired_mean_and_its_standard_error(qa: ModuleType) -> None:
    plain = [100.0, 101.0, 99.5, 100.2]
    other = [100.4, 101.1, 100.5]  # seed 3 missing: left out of the pairs
    records = ([{"seed": s, "variant": "plain", "nll": v} for s, v in enumerate(plain)]
               + [{"seed": s, "variant": "scale", "nll": v} for s, v in enumerate(other)]
               + [{"seed": 9, "variant": "loss", "nll": 1.0}])  # no plain for seed 9: no row
    rows = qa.summary(records)
    assert [r["variant"] for r in rows] == ["scale"]
    d = [0.4, 0.1, 1.0]
    assert rows[0]["n"] == 3
    assert rows[0]["mean_diff"] == pytest.approx(sum(d) / 3)
    assert rows[0]["se"] == pytest.approx(statistics.stdev(d) / math.sqrt(3))


def test_contrasts_are_the_two_by_two_main_effects_and_keep(qa: ModuleType) -> None:
    cells = {"plain": [100.0, 101.0], "scale": [100.5, 100.9], "all-but-scale": [101.0, 101.6],
             "vaelab": [101.2, 101.4], "vaelab-last": [101.0, 101.4]}
    records = [{"seed": s, "variant": v, "nll": x} for v, xs in cells.items() for s, x in enumerate(xs)]
    got = {name: (mean, se, n) for name, mean, se, n in qa.contrasts(records)}
    scale = [0.5 * (0.5 + 0.2), 0.5 * (-0.1 - 0.2)]  # (scale - plain) + (vaelab - all-but-scale), halved
    rest = [0.5 * (1.0 + 0.7), 0.5 * (0.6 + 0.5)]
    for name, d in (("scale (main effect)", scale), ("rest (main effect)", rest), ("keep (vaelab best - last)", [0.2, 0.0])):
        mean, se, n = got[name]
        assert n == 2
        assert mean == pytest.approx(sum(d) / 2)
        assert se == pytest.approx(statistics.stdev(d) / math.sqrt(2))
