"""What the lower-level API is handed (vaelab.inputs): shapes that would broadcast, values outside
the likelihood's support, a context that is not a class, degenerate numbers, other dtypes and
devices; and the TrainedModel methods' own edges (seeded sampling, flat rows, counts)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import vaelab
from vaelab import build_vae, dataset_elbo, load_data, log_likelihood
from vaelab.context import Variable
from vaelab.errors import VaelabError
from vaelab.evaluation import ais, evaluate, inference_gaps, latent_diagnostics, pareto_khat
from vaelab.inputs import check_whole, resolve_device
from vaelab.training.loop import fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bernoulli() -> tuple[vaelab.VAE, torch.Tensor]:
    torch.manual_seed(0)
    return build_vae((16,), latent_dim=2, hidden=[16]), torch.rand(40, 16).round()


ESTIMATORS = {
    "log_likelihood": lambda m, x, **kw: log_likelihood(m, x, 10, **kw),
    "dataset_elbo": lambda m, x, **kw: dataset_elbo(m, x, **kw),
    "evaluate": lambda m, x, **kw: evaluate(m, x, k=10, mi_samples=0, gap_examples=0, **kw),
    "ais": lambda m, x, **kw: ais(m, x, steps=2, **kw),
    "latent_diagnostics": lambda m, x, **kw: latent_diagnostics(m, x, mi_samples=10, **kw),
    "inference_gaps": lambda m, x, **kw: inference_gaps(m, x, n=2, steps=1, eval_samples=2, k=10, **kw),
}


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("scale", [7.0, -1.0])
def test_values_outside_the_support_are_refused_by_every_estimator(bernoulli, name, scale):
    model, x = bernoulli
    # without the check these are finite numbers, and 7x scored *higher* than x: the bug this guards
    with torch.no_grad():
        assert torch.isfinite(model.log_weights(scale * x, 3)).all()
    with pytest.raises(VaelabError, match=r"x has values in .* but the Bernoulli likelihood needs \[0, 1\]"):
        ESTIMATORS[name](model, scale * x)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_a_missing_channel_axis_is_refused_not_broadcast(name):
    torch.manual_seed(0)
    model = build_vae((1, 4, 4), latent_dim=2, hidden=[8], likelihood="gaussian")
    x = torch.rand(12, 1, 4, 4)
    with torch.no_grad():  # what the check prevents: [12, 4, 4] broadcasts against the event [1, 4, 4]
        p_x = model.decode(torch.randn(3, 12, 2))  # and each "example" is scored against the whole batch
        right, wrong = p_x.log_prob(x), p_x.log_prob(x[:, 0])
        assert wrong.shape == right.shape and (wrong - right).abs().min() > 10
    with pytest.raises(VaelabError, match=r"x has shape \(12, 4, 4\) but this model takes examples of shape \(1, 4, 4\)"):
        ESTIMATORS[name](model, x[:, 0])


def test_trace_and_encode_check_shapes_and_rows_of_c():
    torch.manual_seed(0)
    model = build_vae((1, 4, 4), latent_dim=2, hidden=[8])
    x = torch.rand(6, 1, 4, 4).round()
    for call in (lambda: model.trace(x[:, 0]), lambda: model.encode(x.reshape(6, 16)), lambda: model.log_weights(x[0])):
        with pytest.raises(VaelabError, match="but this model takes examples of shape"):
            call()
    with pytest.raises(VaelabError, match=r"k must be a whole number >= 1 \(samples per example\), got 0"):
        model.trace(x, 0)
    cond = build_vae((16,), latent_dim=2, hidden=[8], context=[Variable("label", "categorical", classes=3)])
    with pytest.raises(VaelabError, match="c has 2 rows but x has 6 examples"):
        cond.trace(x.reshape(6, 16), 2, torch.zeros(2, 1))


def test_a_context_value_that_is_not_a_class_is_refused():
    torch.manual_seed(0)
    model = build_vae((16,), latent_dim=2, hidden=[8], context=[Variable("label", "categorical", classes=3)])
    x = torch.rand(6, 16).round()
    # without the check, 2.7 would be read as class 2 (the same numbers) and 3 fail deep in torch
    for bad, value in ((2.7, "2.7"), (3.0, "3")):
        with pytest.raises(VaelabError, match=rf"c: label {value} at row 0 is not a class of this model \(ids 0..2"):
            log_likelihood(model, x, 5, c=torch.full((6, 1), bad))
    with pytest.raises(VaelabError, match=r"c has shape \(6,\); this model needs \[6, 1\]"):
        dataset_elbo(model, x, c=torch.zeros(6))
    with pytest.raises(VaelabError, match="this model is unconditional: c must be None"):
        log_likelihood(build_vae((16,), latent_dim=2, hidden=[8]), x, 5, c=torch.zeros(6, 1))
    log_likelihood(model, x, 5, c=torch.full((6, 1), 2.0))  # a valid class passes


def test_other_dtypes_give_the_float_numbers(bernoulli):
    model, x = bernoulli
    results = []
    for t in (x, x.double(), x.long(), x.bool()):
        torch.manual_seed(3)
        results.append(log_likelihood(model, t, 20).per_example)
    for r in results[1:]:
        assert torch.equal(r, results[0])


@pytest.mark.parametrize("call, message", [
    (lambda m, x: log_likelihood(m, x, 0), r"k \(importance samples per example\) must be >= 1, got 0"),
    (lambda m, x: log_likelihood(m, x, 2.5), r"must be a whole number >= 1, got 2.5"),
    (lambda m, x: log_likelihood(m, x, 5, batch_size=0), r"batch_size must be >= 1, got 0"),
    (lambda m, x: log_likelihood(m, x[:0], 5), r"x has no examples \(shape \(0, 16\)\)"),
    (lambda m, x: dataset_elbo(m, x, k=-1), r"k \(posterior samples per example\) must be >= 1, got -1"),
    (lambda m, x: dataset_elbo(m, x[:0]), r"x has no examples"),
    (lambda m, x: dataset_elbo(m, x, batch_size=-1), r"batch_size must be >= 1, got -1"),
    (lambda m, x: m.sample(-1), r"n must be a whole number >= 0 \(examples to generate\), got -1"),
    (lambda m, x: log_likelihood(m, x, 5, device="tpu0"), r"unknown device 'tpu0'; use cpu, cuda, cuda:N, mps or auto"),
    (lambda m, x: evaluate(m, x, k=5, device="cuda:99"), r"device 'cuda:99' asked for but"),
])
def test_degenerate_numbers_and_devices_are_refused_in_one_line(bernoulli, call, message):
    model, x = bernoulli
    with pytest.raises(VaelabError, match=message) as err:
        call(model, x)
    assert "\n" not in str(err.value)


def test_check_whole_and_resolve_device():
    assert check_whole(np.int64(3), "n") == 3 and type(check_whole(np.int64(3), "n")) is int
    for bad in (True, 1.0, "3", None):
        with pytest.raises(VaelabError, match="n must be a whole number >= 1"):
            check_whole(bad, "n")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture()
def digits7(tmp_path: Path):
    np.save(tmp_path / "d7.npy", np.random.default_rng(0).random((60, 7)).astype("float32"))
    return load_data(str(tmp_path / "d7.npy"))


@pytest.mark.parametrize("change, message", [
    (dict(model=(5,)), r"training data has shape \(\d+, 7\) but this model takes examples of shape \(5,\)"),
    (dict(batch_size=0), r"batch_size must be >= 1, got 0"),
    (dict(epochs=0), r"epochs must be >= 1, got 0"),
    (dict(lr=0.0), r"lr must be a finite number > 0, got 0.0"),
    (dict(lr=float("nan")), r"lr must be a finite number > 0, got nan"),
    (dict(patience=-1), r"patience must be >= 0, got -1"),
    (dict(scale=5.0), r"training data has values in \[.*\] but the Bernoulli likelihood needs \[0, 1\]"),
    (dict(empty=True), r"training data has no examples"),
])
def test_fit_refuses_bad_arguments_before_writing_anything(digits7, tmp_path, change, message):
    change = dict(change)
    model = build_vae(change.pop("model", (7,)), latent_dim=2, hidden=[8])
    data = digits7
    if "scale" in change:
        data = dataclasses.replace(data, train=change.pop("scale") * data.train)
    if change.pop("empty", False):
        data = dataclasses.replace(data, train=data.train[:0])
    run_dir = tmp_path / "run"
    with pytest.raises(VaelabError, match=message):
        fit(model, data, run_dir, **{"epochs": 1, "progress": False, **change})
    assert not run_dir.exists()


def test_pareto_khat_of_nan_weights_is_nan_not_the_floor():
    lw = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    lw[7, 1] = float("nan")
    k = pareto_khat(lw)
    assert torch.isnan(k[1]) and torch.isfinite(k[[0, 2]]).all()
    assert torch.isnan(pareto_khat(torch.full((100, 2), float("nan")))).all()
    with pytest.raises(ValueError, match=r"log weights \[K, B\]"):
        pareto_khat(torch.randn(100))


# --- TrainedModel ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flat_run(tmp_path_factory: pytest.TempPathFactory) -> vaelab.TrainedModel:
    folder = tmp_path_factory.mktemp("inputs")
    x = (np.random.default_rng(1).random((200, 1, 4, 4)) > 0.5).astype(np.float32)
    np.save(folder / "x.npy", x)
    model, _ = vaelab.train(data=str(folder / "x.npy"), out=str(folder / "runs"), name="flat", hidden=[8],
                            latent_dim=2, epochs=1, batch_size=50, eval_k=0, device="cpu", figures=False,
                            progress=False, log=lambda *a, **k: None)
    return model


def test_seeded_sampling_leaves_the_callers_random_stream_alone(flat_run):
    torch.manual_seed(123)
    first = flat_run.sample(3, seed=0)
    after = torch.rand(4)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(4), after)  # sample(seed=...) neither advanced nor reset it
    assert torch.equal(flat_run.sample(3, seed=0), first)  # and is reproducible
    for bad in (2.5, "3", 0):
        with pytest.raises(VaelabError, match="the number of samples must be"):
            flat_run.sample(bad)


def test_interpolation_takes_flat_rows_and_one_example_per_end(flat_run):
    x = flat_run.test_set()[0][:4]
    flat = x.reshape(4, 16)
    path = flat_run.interpolate(flat[0], flat[1], steps=4)
    assert torch.allclose(path, flat_run.interpolate(x[0], x[1], steps=4))
    assert path.shape == (4, 1, 4, 4)
    with pytest.raises(VaelabError, match="the first input holds 2 examples; an interpolation runs between two"):
        flat_run.interpolate(flat[:2], flat[2])
    with pytest.raises(VaelabError, match=r"interpolation needs at least 2 steps \(a whole number\), got 1"):
        flat_run.interpolate(flat[0], flat[1], steps=1)


def test_trained_model_counts_and_latents(flat_run):
    x = flat_run.test_set()[0][:5]
    with pytest.raises(VaelabError, match=r"k \(posterior samples per example\) must be >= 1, got 0"):
        flat_run.elbo(x, k=0)
    with pytest.raises(VaelabError, match=r"latents have shape \(4, 5, 2\); this model decodes a 2-D tensor \[N, 2\]"):
        flat_run.decode(torch.zeros(4, 5, 2))
    with pytest.raises(VaelabError, match=r"latents have shape \(\); this model decodes"):
        flat_run.decode(torch.tensor(0.5))
    grey = x.reshape(5, 16).clone()
    grey[0, 0] = 1 + 1e-6
    with pytest.raises(VaelabError, match=r"data has values in \[0, 1.000001\]"):
        flat_run.encode(grey)
