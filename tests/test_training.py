"""Training through the Python API: resume, reproducibility, NaN and early stops, checkpoint
files that survive crashes and corruption, the TrainedModel methods, and the config.

Every run is tiny (200 examples of 16 numbers, an MLP 16-32-2, batch 32) so that the whole
file runs in seconds on a CPU.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import safetensors.torch
from weights import assert_same_tensors, tensors

import vaelab
import vaelab.training.checkpoint as ckpt
from vaelab.config import TrainConfig, load_config_file
from vaelab.data import load_data
from vaelab.errors import VaelabError
from vaelab.runs import TrainingStopped, read_metrics, train
from vaelab.training.checkpoint import load_checkpoint, read_metadata, save_checkpoint

TIMING = ("seconds", "examples_per_second")


def quiet(*args: Any) -> None:
    pass


def untimed(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics records without their wall-clock fields."""
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def tiny(data: Path, out: Path, name: str, **changes: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(
        data=str(data), hidden=[32], latent_dim=2, epochs=4, batch_size=32, eval_k=0,
        patience=0, device="cpu", out=str(out), name=name,
    )
    settings.update(changes)
    return TrainConfig.from_mapping(settings)


def steps_per_epoch(data: Path, batch_size: int = 32) -> int:
    return math.ceil(len(load_data(str(data)).train) / batch_size)


@pytest.fixture(scope="module")
def run_a(grey_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four epochs, uninterrupted: the reference for every resume."""
    out = tmp_path_factory.mktemp("runs")
    _, result = train(tiny(grey_file, out, "a"), progress=False, figures=False, log=quiet)
    assert (result.stopped, result.epochs_done) == ("completed", 4)
    return out / "a"


@pytest.fixture(scope="module")
def run_b2(grey_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run, stopped after two of its epochs (a pristine copy: tests copy it)."""
    out = tmp_path_factory.mktemp("runs")
    _, result = train(tiny(grey_file, out, "b", epochs=2), progress=False, figures=False, log=quiet)
    assert (result.stopped, result.epochs_done) == ("completed", 2)
    return out / "b"


def copy_run(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / run.name
    shutil.copytree(run, dest)
    return dest


# --- resume and reproducibility ----------------------------------------------------------


def test_resume_continues_exactly_like_the_uninterrupted_run(run_a: Path, run_b2: Path, tmp_path: Path) -> None:
    run_b = copy_run(run_b2, tmp_path)
    _, result = train(resume=run_b, epochs=4, progress=False, figures=False, log=quiet)
    assert (result.stopped, result.epochs_done) == ("completed", 4)
    assert_same_tensors(tensors(run_b / "checkpoint.safetensors"), tensors(run_a / "checkpoint.safetensors"))
    assert_same_tensors(tensors(run_b / "model.safetensors"), tensors(run_a / "model.safetensors"))
    assert untimed(read_metrics(run_b)) == untimed(read_metrics(run_a))
    assert len(read_metrics(run_b)) == 4


@pytest.mark.slow
def test_interrupted_run_keeps_last_epoch_and_resumes_exactly(
    run_a: Path, run_b2: Path, grey_file: Path, tmp_path: Path, adam_step_hook: Any
) -> None:
    steps = steps_per_epoch(grey_file)

    def ctrl_c(n: int, optimizer: torch.optim.Optimizer) -> None:
        if n == 2 * steps + 3:  # epoch 3, step 3
            raise KeyboardInterrupt

    adam_step_hook(ctrl_c)
    with pytest.raises(KeyboardInterrupt, match="epoch 2 is intact"):
        train(tiny(grey_file, tmp_path, "c"), progress=False, figures=False, log=quiet)
    run_c = tmp_path / "c"
    assert not [p.name for p in run_c.iterdir() if p.name.endswith(".tmp")]

    # the checkpoint is the one of epoch 2, whole and loadable
    assert read_metadata(run_c / "checkpoint.safetensors")["state"]["epoch"] == 2
    assert_same_tensors(tensors(run_c / "checkpoint.safetensors"), tensors(run_b2 / "checkpoint.safetensors"))
    model = vaelab.load(run_c)
    state = load_checkpoint(run_c / "checkpoint.safetensors", model.vae)
    assert state["epoch"] == 2
    assert all(torch.isfinite(p).all() for p in model.vae.parameters())
    assert untimed(read_metrics(run_c)) == untimed(read_metrics(run_a))[:2]

    adam_step_hook(None)
    _, result = train(resume=run_c, epochs=4, progress=False, figures=False, log=quiet)
    assert (result.stopped, result.epochs_done) == ("completed", 4)
    assert_same_tensors(tensors(run_c / "checkpoint.safetensors"), tensors(run_a / "checkpoint.safetensors"))
    assert untimed(read_metrics(run_c)) == untimed(read_metrics(run_a))


def test_resume_past_the_last_epoch_asks_for_more_epochs(run_b2: Path, tmp_path: Path) -> None:
    run_b = copy_run(run_b2, tmp_path)
    before = listing(run_b)
    with pytest.raises(VaelabError, match="already finished its 2 epochs"):
        train(resume=run_b, progress=False, figures=False, log=quiet)
    assert listing(run_b) == before


def test_same_seed_same_numbers_other_seed_other_numbers(run_a: Path, run_b2: Path, grey_file: Path,
                                                         tmp_path: Path) -> None:
    # run_b2 is run_a's configuration with fewer epochs: its two epochs are the same numbers
    assert untimed(read_metrics(run_b2)) == untimed(read_metrics(run_a))[:2]
    _, other = train(tiny(grey_file, tmp_path, "seed1", epochs=2, seed=1), progress=False, figures=False, log=quiet)
    first = untimed(read_metrics(run_b2))[0]
    assert untimed(other.metrics)[0]["train_elbo"] != first["train_elbo"]
    assert untimed(other.metrics)[0]["val_elbo"] != first["val_elbo"]


def test_a_run_folder_is_never_overwritten(run_b2: Path, grey_file: Path) -> None:
    before = listing(run_b2)
    with pytest.raises(VaelabError, match="already holds a run"):
        train(tiny(grey_file, run_b2.parent, run_b2.name), progress=False, figures=False, log=quiet)
    assert listing(run_b2) == before


@pytest.mark.slow
def test_figures_of_a_run_on_vector_data(grey_file: Path, tmp_path: Path) -> None:
    """Two latent dimensions but no images: every figure but the image manifold is drawn."""
    train(tiny(grey_file, tmp_path, "fig", epochs=1), progress=False, log=quiet)
    for name in ("reconstructions.png", "samples.png", "curves.png"):
        assert (tmp_path / "fig" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not (tmp_path / "fig" / "manifold.png").exists()


# --- stopping -----------------------------------------------------------------------------


def test_nan_loss_stops_and_keeps_the_last_good_epoch(grey_file: Path, tmp_path: Path, adam_step_hook: Any) -> None:
    steps = steps_per_epoch(grey_file)

    def poison(n: int, optimizer: torch.optim.Optimizer) -> None:
        if n == steps + 1:  # epoch 2, step 1: NaN weights, so the loss of step 2 is NaN
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad.fill_(math.nan)

    adam_step_hook(poison)
    with pytest.raises(TrainingStopped) as info:
        train(tiny(grey_file, tmp_path, "nan", nan_retries=0), progress=False, figures=False, log=quiet)
    assert isinstance(info.value, VaelabError)
    message = str(info.value)
    assert re.search(r"\bnan\b|non-finite", message, re.IGNORECASE), message
    assert "epoch 2, step 2" in message and "kept the last good checkpoint (epoch 1)" in message
    run = tmp_path / "nan"
    assert read_metadata(run / "checkpoint.safetensors")["state"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in tensors(run / "checkpoint.safetensors").values())
    model = vaelab.load(run)  # the best weights (epoch 1) load too
    assert all(torch.isfinite(p).all() for p in model.vae.parameters())
    assert len(read_metrics(run)) == 1
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_diverging_gaussian_run_stops_with_nan_before_any_checkpoint(real_file: Path, tmp_path: Path) -> None:
    config = tiny(real_file, tmp_path, "diverge", likelihood="gaussian", lr=1e30)
    with pytest.raises(TrainingStopped, match=r"(?i)\bnan\b|\binf\b|non-finite") as info:
        train(config, progress=False, figures=False, log=quiet)
    assert "no checkpoint" in str(info.value)
    assert not (tmp_path / "diverge" / "checkpoint.safetensors").exists()


def test_early_stopping_when_validation_cannot_improve(grey_file: Path, tmp_path: Path) -> None:
    config = tiny(grey_file, tmp_path, "early", lr=1e-12, patience=1, epochs=6)
    _, result = train(config, progress=False, figures=False, log=quiet)
    assert result.stopped == "early-stopping"
    assert result.epochs_done < 6
    assert len(read_metrics(tmp_path / "early")) == result.epochs_done
    state = read_metadata(tmp_path / "early" / "checkpoint.safetensors")["state"]
    assert state["stopped"] == "early-stopping"
    # resuming a run that stopped early does not train it further
    _, again = train(resume=tmp_path / "early", epochs=10, progress=False, figures=False, log=quiet)
    assert (again.stopped, again.epochs_done) == ("early-stopping", result.epochs_done)


# --- checkpoint files -----------------------------------------------------------------------


def test_failed_checkpoint_write_leaves_the_old_file_and_no_temp_files(
    run_a: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = copy_run(run_a, tmp_path)
    path = run / "checkpoint.safetensors"
    before = listing(run)
    model = vaelab.load(run, device="cpu")
    optimizer = torch.optim.Adam(model.vae.parameters())
    state = load_checkpoint(path, model.vae, optimizer)
    real_save = safetensors.torch.save_file

    def half_write(arrays: dict[str, torch.Tensor], filename: str, metadata: Any = None) -> None:
        real_save(arrays, filename, metadata=metadata)
        size = os.path.getsize(filename)
        with open(filename, "r+b") as f:
            f.truncate(size // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    monkeypatch.setattr(ckpt, "save_file", half_write, raising=False)  # its imported name
    with pytest.raises(VaelabError, match="No space left"):
        save_checkpoint(path, model.vae, optimizer, {**state, "epoch": 5})
    with pytest.raises(VaelabError, match="No space left"):
        ckpt.save_weights(run / "model.safetensors", model.vae)
    assert listing(run) == before  # same files, same bytes, nothing left over
    monkeypatch.undo()
    assert load_checkpoint(path, model.vae, optimizer)["epoch"] == 4


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_and_weights_raise_vaelab_error_naming_the_file(
    run_a: Path, tmp_path: Path, damage: str
) -> None:
    run = copy_run(run_a, tmp_path)
    for name in ("checkpoint.safetensors", "model.safetensors"):
        path = run / name
        raw = path.read_bytes()
        if damage == "truncate":
            path.write_bytes(raw[: len(raw) // 2])
        elif damage == "garbage":
            path.write_bytes(np.random.default_rng(0).bytes(len(raw)))
        else:
            path.write_bytes(b"")
    model = vaelab.build_vae((16,), latent_dim=2, hidden=[32])
    with pytest.raises(VaelabError, match=re.escape(str(run / "checkpoint.safetensors"))):
        load_checkpoint(run / "checkpoint.safetensors", model)
    with pytest.raises(VaelabError, match="model.safetensors"):
        vaelab.load(run)
    with pytest.raises(VaelabError, match="checkpoint.safetensors"):
        train(resume=run, epochs=6, progress=False, figures=False, log=quiet)


def test_weights_of_another_configuration_do_not_load(run_a: Path) -> None:
    model = vaelab.build_vae((16,), latent_dim=3, hidden=[32])
    with pytest.raises(VaelabError, match="does not fit this model"):
        load_checkpoint(run_a / "checkpoint.safetensors", model)


# --- the trained model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(run_a: Path) -> vaelab.TrainedModel:
    return vaelab.load(run_a, device="cpu")


@pytest.fixture(scope="module")
def x_test(model: vaelab.TrainedModel) -> torch.Tensor:
    return model.test_set()[0]  # [20, 16], binarized once


def test_encode_decode_sample_shapes(model: vaelab.TrainedModel, x_test: torch.Tensor) -> None:
    n = len(x_test)
    q = model.encode(x_test)
    assert q.mean.shape == (n, 2) and q.stddev.shape == (n, 2)
    assert (q.stddev > 0).all()
    assert model.encode(x_test[0]).mean.shape == (1, 2)  # one example
    assert model.decode(q.mean).mean.shape == (n, 16)
    assert model.decode(torch.zeros(2)).mean.shape == (1, 16)
    means = model.sample(7, seed=0)
    assert means.shape == (7, 16) and ((means >= 0) & (means <= 1)).all()
    draws = model.sample(7, mean=False, seed=0)
    assert draws.shape == (7, 16) and ((draws == 0) | (draws == 1)).all()
    assert torch.equal(model.sample(7, seed=3), model.sample(7, seed=3))
    with pytest.raises(VaelabError, match=r"latents have shape \(4, 3\); this model decodes a 2-D tensor \[N, 2\]"):
        model.decode(torch.zeros(4, 3))
    with pytest.raises(VaelabError, match=">= 1"):
        model.sample(0)


def test_elbo_terms_and_importance_sampled_log_likelihood(model: vaelab.TrainedModel, x_test: torch.Tensor) -> None:
    torch.manual_seed(0)
    e = model.elbo(x_test)
    assert e.elbo.shape == (len(x_test),)
    torch.testing.assert_close(e.elbo, e.reconstruction - e.kl)
    assert (e.kl >= 0).all()
    ll = model.log_likelihood(x_test, k=200)
    assert ll.per_example.shape == (len(x_test),)
    # IWAE with K = 200 is a tighter bound than the ELBO (K = 1) on average
    gap = ll.per_example.double() - e.elbo.double()  # [N]
    stderr = float(gap.std() / math.sqrt(len(gap)))
    assert float(gap.mean()) >= -3 * stderr
    assert ll.mean <= 0  # log of a probability of binary data


def test_bad_inputs_are_vaelab_errors(model: vaelab.TrainedModel, x_test: torch.Tensor) -> None:
    with pytest.raises(VaelabError, match=r"\(5, 5\).*\(16,\)"):
        model.encode(np.zeros((5, 5), dtype=np.float32))
    with pytest.raises(VaelabError, match=r"\[-1, 1\].*\[0, 1\]"):
        model.encode(np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16))
    bad = x_test.clone()
    bad[1, 3] = math.nan
    with pytest.raises(VaelabError, match="NaN"):
        model.elbo(bad)
    bad[1, 3] = math.inf
    with pytest.raises(VaelabError, match="NaN/inf"):
        model.log_likelihood(bad, k=2)


@pytest.mark.parametrize("method", ["linear", "spherical"])
def test_interpolation_ends_at_the_posterior_means(model: vaelab.TrainedModel, x_test: torch.Tensor,
                                                   method: str) -> None:
    path = model.interpolate(x_test[0], x_test[1], steps=5, method=method)
    assert path.shape == (5, 16)
    ends = model.decode(model.encode(x_test[:2]).mean).mean  # [2, 16]
    torch.testing.assert_close(path[0], ends[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(path[-1], ends[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(VaelabError, match="at least 2 steps"):
        model.interpolate(x_test[0], x_test[1], steps=1, method=method)


def test_evaluate_reports_the_terms(model: vaelab.TrainedModel) -> None:
    ev = model.evaluate(k=10).to_dict()
    assert ev["n"] == 20
    assert ev["elbo"] == pytest.approx(ev["reconstruction"] - ev["kl"])
    assert ev["nll"] == -ev["log_px"] and ev["log_px_stderr"] > 0
    assert ev["log_px"] >= ev["elbo"] - 3 * ev["log_px_stderr"]
    assert "bits_per_dim" in ev  # the test set is binarized
    assert model.evaluate(k=10).to_dict() == ev  # seeded: same call, same numbers


# --- the config ------------------------------------------------------------------------------


def test_config_unknown_key_is_listed() -> None:
    with pytest.raises(VaelabError, match=r"my\.toml: unknown key\(s\) hiden, lattent"):
        TrainConfig.from_mapping({"hiden": [32], "lattent": 2, "epochs": 1}, source="my.toml")


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ({"epochs": "ten"}, r"epochs must be of type int, got 'ten'"),
        ({"epochs": 2.5}, r"epochs must be of type int"),
        ({"lr": True}, r"lr must be of type float"),
        ({"data": 3}, r"data must be of type str"),
        ({"hidden": "32,x"}, r"hidden must be of type list\[int\]"),
        ({"net": "transformer"}, r"unknown value 'transformer' for net; choose one of: mlp, conv"),
        ({"likelihood": "tweedie"}, r"'tweedie' for likelihood"),
        ({"epochs": 0}, r"epochs must be a positive integer"),
        ({"lr": -1.0}, r"lr must be > 0"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
    ],
)
def test_config_bad_values(values: dict[str, Any], pattern: str) -> None:
    with pytest.raises(VaelabError, match=pattern):
        TrainConfig.from_mapping(values)


def test_config_converts_and_round_trips() -> None:
    c = TrainConfig.from_mapping({"hidden": "64, 32", "epochs": 3.0, "lr": 1, "latent_dim": 2})
    assert (c.hidden, c.epochs, c.lr, c.latent_dim) == ([64, 32], 3, 1.0, 2)
    assert TrainConfig.from_mapping(json.loads(json.dumps(c.to_dict()))) == c
    assert c.replace(epochs=7).epochs == 7 and c.epochs == 3
    with pytest.raises(VaelabError, match="unknown key"):
        c.replace(epoch=7)


def test_config_files_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('data = "digits"\nhidden = [64, 32]\nlatent_dim = 2\nlr = 0.01\n')
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"data": "digits", "hidden": [64, 32], "latent_dim": 2, "lr": 0.01}))
    a = TrainConfig.from_mapping(load_config_file(toml), source=str(toml))
    b = TrainConfig.from_mapping(load_config_file(js), source=str(js))
    assert a == b and (a.data, a.hidden, a.latent_dim, a.lr) == ("digits", [64, 32], 2, 0.01)


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("s.toml", 'epochs = 3\n[model]\nlatent_dim = 2\n', r"sections are not supported \(model\)"),
        ("s.json", '{"model": {"latent_dim": 2}}', r"sections are not supported \(model\)"),
        ("bad.toml", "epochs = = 3\n", r"is not valid TOML"),
        ("bad.json", "{epochs: 3}", r"is not valid JSON"),
        ("list.json", "[1, 2]", r"must hold a table"),
    ],
)
def test_config_file_errors(tmp_path: Path, name: str, text: str, pattern: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(VaelabError, match=pattern) as info:
        load_config_file(path)
    assert name in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(VaelabError, match="not found"):
        load_config_file(tmp_path / "nope.toml")


# --- the lean Adam step ----------------------------------------------------------------------


def _adam_trajectory(make: Any, steps: int = 6, freeze_at: int | None = None,
                     resume_at: int | None = None) -> tuple[list[torch.Tensor], Any]:
    """Parameters of a small network after ``steps`` Adam steps on a fixed random problem;
    from step ``resume_at`` on, by a fresh optimizer loaded from the state_dict (a resumed run)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    opt = make(net.parameters())
    x, y = torch.randn(11, 5), torch.randn(11, 3)
    for i in range(steps):
        if i == resume_at:
            state = opt.state_dict()
            opt = make(net.parameters())
            opt.load_state_dict(state)
        opt.zero_grad(set_to_none=True)
        ((net(x) - y) ** 2).sum().backward()
        if freeze_at is not None and i >= freeze_at:
            net[2].bias.grad = None  # a parameter without gradient this step: Adam skips it
        opt.step()
    return [p.detach().clone() for p in net.parameters()], opt


@pytest.mark.parametrize("freeze_at", [None, 3])
def test_lean_adam_is_bit_identical_to_torch_adam(freeze_at: int | None) -> None:
    from vaelab.training.optim import Adam

    ours, opt = _adam_trajectory(lambda p: Adam(p, lr=0.01), freeze_at=freeze_at)
    fused, _ = _adam_trajectory(lambda p: torch.optim.Adam(p, lr=0.01, fused=True), freeze_at=freeze_at)
    default, _ = _adam_trajectory(lambda p: torch.optim.Adam(p, lr=0.01), freeze_at=freeze_at)
    for a, b, c in zip(ours, fused, default):
        assert torch.equal(a, b)  # the same kernel, the same bits
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)  # the same algorithm
    assert sorted({float(s["step"]) for s in opt.state.values()}) == ([6.0] if freeze_at is None else [3.0, 6.0])
    if freeze_at is None:
        assert opt._fast is not None  # the short path was taken after the first step


def test_lean_adam_state_dict_round_trip_continues_identically() -> None:
    from vaelab.training.optim import Adam

    straight, _ = _adam_trajectory(lambda p: Adam(p, lr=0.01), steps=6)
    resumed, opt = _adam_trajectory(lambda p: Adam(p, lr=0.01), steps=6, resume_at=3)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    assert opt._fast is not None  # the loaded optimizer took the short path too


def test_lean_adam_runs_step_hooks_once_per_step() -> None:
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from vaelab.training.optim import Adam

    calls: list[int] = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: calls.append(1))
    try:
        _, opt = _adam_trajectory(lambda p: Adam(p, lr=0.01), steps=4)
    finally:
        handle.remove()
    assert len(calls) == 4
    own: list[int] = []
    opt.register_step_post_hook(lambda o, args, kwargs: own.append(1))
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    assert len(own) == 1


# --- checkpoints spaced in time (--checkpoint-every) --------------------------------------


class _Clock:
    """A stand-in for the loop's ``time`` module: ``monotonic()`` advances one second a call."""

    def __init__(self) -> None:
        self.now = 0.0
        self.perf_counter = __import__("time").perf_counter

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now


def test_spaced_checkpoints_train_the_same_weights_and_verify(run_a: Path, grey_file: Path, tmp_path: Path) -> None:
    _, result = train(tiny(grey_file, tmp_path, "s", checkpoint_every=3600.0), progress=False, figures=False, log=quiet)
    run_s = tmp_path / "s"
    assert (result.stopped, result.epochs_done) == ("completed", 4)
    assert not (run_s / "checkpoint.previous.safetensors").exists()  # one write: after the last epoch
    for name in ("checkpoint.safetensors", "model.safetensors"):
        assert_same_tensors(tensors(run_s / name), tensors(run_a / name))
    assert read_metadata(run_s / "model.safetensors") == read_metadata(run_a / "model.safetensors")
    assert untimed(read_metrics(run_s)) == untimed(read_metrics(run_a))
    from vaelab.verify import verify

    assert verify(run_s).identical  # from the seed: the only checkpoint is the last one


def test_spaced_checkpoints_keep_the_best_weights_in_memory_until_written(grey_file: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import vaelab.training.loop as loop

    monkeypatch.setattr(loop, "time", _Clock())  # each check is a second later than the last write
    every = tiny(grey_file, tmp_path, "e", epochs=6, val_fraction=0.2, lr=0.05)
    spaced = tiny(grey_file, tmp_path, "p", epochs=6, val_fraction=0.2, lr=0.05, checkpoint_every=2.5)
    _, a = train(every, progress=False, figures=False, log=quiet)
    _, b = train(spaced, progress=False, figures=False, log=quiet)
    assert (a.best_epoch, a.epochs_done) == (b.best_epoch, b.epochs_done)
    written = read_metadata(tmp_path / "p" / "checkpoint.safetensors")["state"]["epoch"]
    previous = read_metadata(tmp_path / "p" / "checkpoint.previous.safetensors")["state"]["epoch"]
    assert written == 6 and previous < 5  # spaced: the write before the last is more than one epoch back
    assert_same_tensors(tensors(tmp_path / "p" / "model.safetensors"), tensors(tmp_path / "e" / "model.safetensors"))
    assert read_metadata(tmp_path / "p" / "model.safetensors")["epoch"] == a.best_epoch
    from vaelab.verify import verify

    monkeypatch.undo()
    assert verify(tmp_path / "p").identical  # trains the epochs between the two checkpoints again


def test_a_spaced_run_stopped_between_writes_resumes_exactly(run_a: Path, grey_file: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, adam_step_hook: Any) -> None:
    import vaelab.training.loop as loop

    monkeypatch.setattr(loop, "time", _Clock())
    steps = steps_per_epoch(grey_file)

    def ctrl_c(n: int, optimizer: torch.optim.Optimizer) -> None:
        if n == 3 * steps + 2:  # epoch 4, step 2
            raise KeyboardInterrupt

    adam_step_hook(ctrl_c)
    config = tiny(grey_file, tmp_path, "k", checkpoint_every=1.5)  # writes after epoch 2, then not before epoch 5
    with pytest.raises(KeyboardInterrupt, match=r"the checkpoint of epoch (\d) is intact") as stop:
        train(config, progress=False, figures=False, log=quiet)
    kept = read_metadata(tmp_path / "k" / "checkpoint.safetensors")["state"]["epoch"]
    assert kept == 2 and "epoch 2 is intact" in str(stop.value)  # the last write, not epoch 3
    assert len(read_metrics(tmp_path / "k")) == kept  # metrics.jsonl agrees with the checkpoint
    adam_step_hook(None)
    _, result = train(resume=tmp_path / "k", progress=False, figures=False, log=quiet)
    assert (result.stopped, result.epochs_done) == ("completed", 4)
    assert_same_tensors(tensors(tmp_path / "k" / "checkpoint.safetensors"), tensors(run_a / "checkpoint.safetensors"))
    assert untimed(read_metrics(tmp_path / "k")) == untimed(read_metrics(run_a))


def test_checkpoint_every_must_be_a_non_negative_number(grey_file: Path, tmp_path: Path) -> None:
    for bad in (-1.0, math.inf):
        with pytest.raises(VaelabError, match="checkpoint_every must be a finite number of seconds >= 0"):
            tiny(grey_file, tmp_path, "x", checkpoint_every=bad)
