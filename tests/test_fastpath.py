"""The hand-differentiated training step of the common VAE (vaelab.training.fastpath).

Checked against the general path (distributions + autograd) in float64: the same loss, the
same per-step statistics and the same gradients for the same random draws; it applies only
where it computes the same thing, and fit trains the same model with it as without it.
"""

from __future__ import annotations

import math

import pytest
import torch

from vaelab.build import build_vae
from vaelab.data import binarize, load_data
from vaelab.objectives import Objective
from vaelab.training import loop
from vaelab.training.fastpath import FastStep, fast_step
from vaelab.training.loop import _TrainStep, fit


def _model(hidden: list[int], latent: int = 3, shape: tuple[int, ...] = (1, 4, 5), seed: int = 0,
           **kw: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_vae(shape, latent_dim=latent, hidden=hidden, likelihood="bernoulli", **kw).double()


def _general(model: torch.nn.Module, objective: Objective, x: torch.Tensor, progress: float, seed: int):
    """Loss (float64, before the float32 cast), stats and gradients of the general path."""
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(seed)
    trace = model.trace(x, 1)
    loss, terms = objective.trace_loss(trace, progress)
    loss.backward()
    stats = torch.stack([loss, terms.elbo.sum(), terms.reconstruction.sum(), terms.kl.sum()]).detach()
    return loss.detach(), stats, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("hidden", [[7], [6, 5], []])
@pytest.mark.parametrize("objective,progress", [(Objective(), 0.3), (Objective(beta=0.5), 0.0),
                                                (Objective(warmup=4.0), 1.5), (Objective(kl="analytic", beta=2.0), 9.0)])
def test_loss_stats_and_gradients_equal_autograd(hidden, objective, progress):
    model = _model(hidden)
    x = torch.bernoulli(torch.rand(9, 1, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    x[0] = 0.37  # grey values are allowed by the Bernoulli likelihood too
    fast = fast_step(model, objective)
    assert isinstance(fast, FastStep)
    torch.manual_seed(7)
    loss, stats = fast.step(x, progress)
    grads = [p.grad.clone() for p in model.parameters()]
    ref_loss, ref_stats, ref_grads = _general(model, objective, x, progress, 7)
    assert math.isclose(loss.item(), ref_loss.item(), rel_tol=1e-12)
    assert torch.allclose(stats.double(), ref_stats.float().double(), rtol=1e-6)  # stats are float32
    assert torch.allclose(stats.double(), ref_stats, rtol=1e-6)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-12)
    assert stats[0].item() == pytest.approx(-(stats[2].item() - objective.kl_weight(progress) * stats[3].item()) / 9, rel=1e-6)


def test_float32_loss_with_logits_beyond_exp_range_is_finite_and_right():
    """On a CPU the fast path sums softplus as log(1 + exp(l)); a logit above ~88 overflows exp
    in float32 and must fall back to the exact softplus: the loss equals the general path's."""
    model = _model([6]).float()
    dec_out = model.decoder.net[-1]
    with torch.no_grad():
        dec_out.bias[:3] = 100.0  # logits ~100: exp overflows float32
        dec_out.bias[3:6] = -100.0
    x = torch.bernoulli(torch.rand(8, 1, 4, 5, generator=torch.Generator().manual_seed(2)))
    fast = fast_step(model, Objective())
    torch.manual_seed(4)
    loss, stats = fast.step(x, 1.0)
    ref_loss, ref_stats, _ = _general(model, Objective(), x, 1.0, 4)
    assert torch.isfinite(stats).all()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert torch.allclose(stats, ref_stats.float(), rtol=1e-5)


def test_scratch_tensors_do_not_leak_into_what_the_step_returns():
    """Activations live in scratch tensors kept from step to step (one set per batch shape):
    a second step, and a partial batch, must not change the loss, stats or gradients of the
    first (nothing returned or left in .grad aliases a scratch tensor)."""
    model = _model([6, 5])
    fast = fast_step(model, Objective())
    x = torch.bernoulli(torch.rand(9, 1, 4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    torch.manual_seed(1)
    loss, stats = fast.step(x, 0.5)
    kept = (loss.clone(), stats.clone(), [p.grad.clone() for p in model.parameters()])
    torch.manual_seed(2)
    fast.step(x[:4], 0.5)  # a partial batch: its own scratch tensors
    torch.manual_seed(1)
    fast.step(x.flip(0), 0.5)  # the full shape again, other data
    assert torch.equal(loss, kept[0]) and torch.equal(stats, kept[1])
    torch.manual_seed(1)
    again, again_stats = fast.step(x, 0.5)
    assert torch.equal(again, kept[0]) and torch.equal(again_stats, kept[1])
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), kept[2]))
    buffers = {t.data_ptr() for t in fast._scratch.values()}
    assert not buffers & {loss.data_ptr(), stats.data_ptr()}


def test_gradient_buffers_are_reused():
    model = _model([6])
    fast = fast_step(model, Objective())
    x = torch.ones(4, 1, 4, 5, dtype=torch.float64)
    fast.step(x, 0.0)
    first = [p.grad.data_ptr() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None  # what zero_grad(set_to_none=True) does
    fast.step(x, 0.0)
    assert [p.grad.data_ptr() for p in model.parameters()] == first


def test_min_scale_is_the_encoders():
    model = _model([6], min_scale=0.05)
    fast = fast_step(model, Objective())
    assert fast.min_scale == 0.05
    x = torch.zeros(5, 1, 4, 5, dtype=torch.float64)
    torch.manual_seed(3)
    loss, _ = fast.step(x, 0.0)
    assert math.isclose(loss.item(), _general(model, Objective(), x, 0.0, 3)[0].item(), rel_tol=1e-12)


@pytest.mark.parametrize("case", ["iwae", "k2", "free_bits", "stl", "mc", "gaussian", "flow", "vamp", "context",
                                  "tanh", "frozen", "compile", "bf16", "processes"])
def test_not_used_where_it_would_differ(case):
    kw: dict = {}
    objective = Objective()
    if case == "iwae":
        objective = Objective(kind="iwae", k=2)
    elif case == "k2":
        objective = Objective(k=2)
    elif case == "free_bits":
        objective = Objective(free_bits=0.1)
    elif case == "stl":
        objective = Objective(estimator="stl")
    elif case == "mc":
        objective = Objective(kl="mc")
    elif case == "gaussian":
        kw = {"likelihood": "gaussian"}
    elif case == "flow":
        kw = {"posterior": "iaf"}
    elif case == "vamp":
        kw = {"prior": "vamp"}
    torch.manual_seed(0)
    opts = {"likelihood": "bernoulli", **kw}
    if case == "context":
        from vaelab.context import Variable
        model = build_vae((1, 4, 5), latent_dim=3, hidden=[6], context=(Variable("label", "categorical", classes=3),), **opts)
    else:
        model = build_vae((1, 4, 5), latent_dim=3, hidden=[6], **opts)
    if case == "tanh":
        model.encoder.net[2] = torch.nn.Tanh()
    if case == "frozen":
        model.decoder.net[1].bias.requires_grad_(False)
    extra = {"compile": case == "compile", "precision": "bfloat16" if case == "bf16" else "float32",
             "processes": 2 if case == "processes" else 1}
    assert fast_step(model, objective, **extra) is None
    assert fast_step(build_vae((1, 4, 5), latent_dim=3, hidden=[6], likelihood="bernoulli"), Objective()) is not None


def test_fit_trains_the_same_model_with_and_without_it(tmp_path, monkeypatch):
    data = load_data("digits")
    runs = []
    for name, use_fast in (("fast", True), ("general", False)):
        if not use_fast:
            monkeypatch.setattr(loop, "fast_step", lambda *a, **k: None)
        torch.manual_seed(0)
        model = build_vae(data.shape, latent_dim=4, hidden=[32], likelihood="bernoulli")
        result = fit(model, data, tmp_path / name, epochs=2, batch_size=64, seed=3, binarize=True, progress=False)
        runs.append((result.metrics, [p.detach().clone() for p in model.parameters()]))
    (m_fast, w_fast), (m_gen, w_gen) = runs
    for a, b in zip(m_fast, m_gen):
        for key in ("train_elbo", "val_elbo"):
            assert a[key] == pytest.approx(b[key], rel=1e-4)
    for a, b in zip(w_fast, w_gen):
        assert torch.allclose(a, b, atol=1e-4)  # float32 rounding apart, the same path through training


def test_train_step_module_is_unchanged_for_the_general_path():
    """The general step (still used for NaN forensics and every other model) gives the same loss."""
    model = _model([6])
    x = torch.ones(4, 1, 4, 5, dtype=torch.float64)
    torch.manual_seed(2)
    loss, _ = _TrainStep(model, Objective(), "float32")(x, 0.0)
    torch.manual_seed(2)
    fast_loss, _ = fast_step(model, Objective()).step(x, 0.0)
    assert math.isclose(loss.item(), fast_loss.item(), rel_tol=1e-6)


def test_epoch_data_in_reused_buffers_gives_the_same_batches():
    """fit's epochs reuse two buffers for the binarized, permuted x: the same numbers as fresh
    tensors, and the same memory every epoch."""
    from vaelab.context import Batch
    from vaelab.training.loop import EpochBuffers, epoch_data

    g = torch.Generator().manual_seed(0)
    for x in (torch.rand(50, 1, 3, 4, generator=g),  # every value uncertain: binarize itself
              torch.rand(50, 1, 3, 4, generator=g).mul_(8).round_().clamp_(0, 5) / 5):  # mostly 0 or 1: sparse draws
        train = Batch(x, torch.randn(50, 2), torch.rand(50) < 0.5)
        buffers = EpochBuffers()
        for epoch in (1, 2, 3):
            for draw in (True, False):
                fresh, reused = epoch_data(train, 7, epoch, draw), epoch_data(train, 7, epoch, draw, buffers)
                assert torch.equal(fresh.x, reused.x) and torch.equal(fresh.c, reused.c)
                assert torch.equal(fresh.known, reused.known)
                assert reused.x.data_ptr() == buffers.tensors[1].data_ptr()
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(binarize(x, torch.Generator().manual_seed(3)), (u < x).float())


def test_binarizer_draws_only_the_uncertain_pixels_with_their_probabilities():
    """Binarizer: certain pixels (0, 1, and values outside [0, 1] as clamped) keep their value in
    every draw; each uncertain pixel is Bernoulli(x) (frequency over 4,000 draws within 4.5
    standard errors), independent of its neighbours; u comes from the generator in the order of
    the flat positions."""
    from vaelab.data import Binarizer

    p = torch.tensor([0.0, 1.0, 0.1, 0.0, 0.5, 1.0, 0.9, -0.5, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    x = p.reshape(2, 8)
    b = Binarizer(x)
    assert b.sparse and b.index.tolist() == [2, 4, 6]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([b(g) for _ in range(4000)]).reshape(4000, -1)  # [4000, 16]
    certain = [0, 1, 3, 5, 7, 8, 9]
    assert torch.equal(draws[:, certain], torch.tensor([0.0, 1, 0, 1, 0, 1, 0]).expand(4000, -1))
    for i in (2, 4, 6):
        freq, q = draws[:, i].mean().item(), p[i].item()
        assert abs(freq - q) < 4.5 * (q * (1 - q) / 4000) ** 0.5, (i, freq)
    both = (draws[:, 4] * draws[:, 6]).mean().item()  # independent: P(both) = 0.5 * 0.9
    assert abs(both - 0.45) < 4.5 * (0.45 * 0.55 / 4000) ** 0.5
    u = torch.rand(3, generator=torch.Generator().manual_seed(5))
    expected = torch.floor(p).clamp(0, 1)
    expected[[2, 4, 6]] = (u < p[[2, 4, 6]]).float()
    out = torch.empty(2, 8)
    assert b(torch.Generator().manual_seed(5), out=out) is out and torch.equal(out.reshape(-1), expected)
    dense = Binarizer(torch.full((4, 4), 0.5))  # more than a quarter uncertain: binarize itself
    assert not dense.sparse
    assert torch.equal(dense(torch.Generator().manual_seed(1)), binarize(torch.full((4, 4), 0.5), torch.Generator().manual_seed(1)))


def test_share_scales_the_gradients_not_the_loss():
    model = _model([6])
    x = torch.bernoulli(torch.rand(5, 1, 4, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    fast = fast_step(model, Objective())
    torch.manual_seed(1)
    loss, _ = fast.step(x, 0.0, 0.25)
    grads = [p.grad.clone() for p in model.parameters()]
    ref_loss, _, ref_grads = _general(model, Objective(), x, 0.0, 1)
    assert math.isclose(loss.item(), ref_loss.item(), rel_tol=1e-12)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, 0.25 * r, rtol=1e-10, atol=1e-13)


def test_the_last_partial_batch_weighs_its_share_of_a_full_one(tmp_path, monkeypatch):
    """loss = -(1/B) sum ELBO with B the configured batch size, also for the last batch."""
    data = load_data("digits")
    n, batch = data.train.shape[0], 64
    assert n % batch, "the test needs a partial last batch"
    shares: list[float] = []
    real = FastStep.step

    def spy(self, x, progress, share=1.0):
        shares.append((x.shape[0], share))
        return real(self, x, progress, share)

    monkeypatch.setattr(FastStep, "step", spy)
    torch.manual_seed(0)
    model = build_vae(data.shape, latent_dim=4, hidden=[16], likelihood="bernoulli")
    fit(model, data, tmp_path / "run", epochs=1, batch_size=batch, seed=0, binarize=True, progress=False)
    assert len(shares) == -(-n // batch)
    assert all(s == 1.0 for rows, s in shares[:-1]) and all(rows == batch for rows, s in shares[:-1])
    assert shares[-1] == (n % batch, (n % batch) / batch)
