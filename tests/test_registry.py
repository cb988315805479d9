"""The registry of parts is the one source of truth: a part registered from outside vaelab (here,
from this test module) is offered by the CLI, accepted by the configuration, trained, saved in
``model.json``, loaded back and checked like every built-in part, with no other change.

Also: an option name shared with a different definition is refused at registration; unknown
part names and option keys in a configuration or a ``model.json`` are one-line errors that
name the valid choices.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import nn

import vaelab
from test_parts import (
    LABEL3,
    check_gradients,
    check_integrates_to_one,
    check_round_trip,
    check_shapes,
    part_cases,
    train_help,
    train_one_step,
    vae_context,
    vae_data,
)
from vaelab import registry
from vaelab.build import build_vae
from vaelab.config import TrainConfig
from vaelab.distributions import GaussianEncoder
from vaelab.errors import VaelabError
from vaelab.registry import Option, Shapes
from vaelab.spec import ModelSpec, PartSpec

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "test-gaussian"
TEST_FLOOR = Option("test_floor", float, 0.01, "test-gaussian posterior: the floor of sigma (a part of the tests)", low=0.0)


class FlooredGaussianEncoder(GaussianEncoder):
    """A diagonal Gaussian posterior whose scale is floored at ``test_floor``: a new class, so a
    rebuilt model shows that the registry (not a built-in) made it."""


@pytest.fixture(scope="module")
def test_part() -> Iterator[registry.Part]:
    """Posterior ``test-gaussian`` with its own option ``test_floor``, registered for this module."""
    assert NAME not in registry.names("posterior")

    @registry.register("posterior", NAME, options=(TEST_FLOOR,), help="a test's diagonal Gaussian",
                       cls=FlooredGaussianEncoder)
    def _build(shapes: Shapes, test_floor: float) -> nn.Module:
        d = shapes.latent_dim
        return FlooredGaussianEncoder(shapes.encoder_net(2 * d), d, min_scale=test_floor)

    try:
        yield registry.get("posterior", NAME)
    finally:
        registry.unregister("posterior", NAME)
    assert NAME not in registry.names("posterior") and "test_floor" not in registry.all_options()


TINY = dict(data="digits", hidden=[16], latent_dim=2, epochs=1, eval_k=0, device="cpu", threads=1)


@pytest.fixture(scope="module")
def trained(test_part: registry.Part, tmp_path_factory: pytest.TempPathFactory) -> vaelab.TrainedModel:
    out = tmp_path_factory.mktemp("registry-run")
    model, result = vaelab.train(**TINY, posterior=NAME, test_floor=0.05, out=str(out), name="r", figures=False,
                                 progress=False, log=lambda *a: None)
    assert result.epochs_done == 1
    return model


def test_the_cli_offers_a_registered_part_and_its_option(test_part: registry.Part, refused: Any) -> None:
    text = train_help()
    assert f"--posterior [gaussian|full-gaussian|planar|iaf|{NAME}]" in text
    assert "--test-floor FLOAT test-gaussian posterior: the floor of sigma (a part of the tests) " \
           f"(for posterior {NAME}) [default: 0.01]" in text
    # and validates it from its registry entry
    refused(["train", "--posterior", NAME, "--test-floor", "-1", "--data", "digits"], "test_floor", ">= 0")


def test_the_configuration_accepts_a_registered_part_and_its_option(test_part: registry.Part) -> None:
    config = TrainConfig.from_mapping({"posterior": NAME, "test_floor": "0.25"})
    assert config.posterior == NAME and config.test_floor == 0.25
    assert config.to_dict()["test_floor"] == 0.25
    spec = config.model_spec((1, 8, 8))
    assert spec.posterior == PartSpec(NAME, {"test_floor": 0.25})
    assert TrainConfig.from_mapping({"posterior": NAME}).model_spec((4,)).posterior.options == {"test_floor": 0.01}
    with pytest.raises(VaelabError, match="test_floor must be >= 0"):
        TrainConfig.from_mapping({"posterior": NAME, "test_floor": -0.5})


def test_a_registered_part_trains_saves_and_loads(trained: vaelab.TrainedModel) -> None:
    doc = json.loads((trained.run_dir / "model.json").read_text())
    assert doc["posterior"] == {"name": NAME, "test_floor": 0.05}
    loaded = vaelab.load(trained.run_dir, device="cpu")
    assert type(loaded.vae.encoder) is FlooredGaussianEncoder and loaded.vae.encoder.min_scale == 0.05
    x = trained.test_set()[0][:16]
    q = loaded.encode(x)
    assert (q.stddev >= 0.05).all()
    assert torch.equal(q.mean, trained.encode(x).mean)
    torch.manual_seed(0)
    a = trained.log_likelihood(x, k=10).per_example
    torch.manual_seed(0)
    assert torch.equal(a, loaded.log_likelihood(x, k=10).per_example)


def test_the_property_checks_pass_on_a_registered_part(test_part: registry.Part, tmp_path: Path) -> None:
    cases = part_cases(["posterior"], names=[NAME])
    assert {c.context for c in cases} == {0, 3}  # without and with a context
    for case in cases:
        check_shapes(case)
        check_integrates_to_one(case)
        check_gradients(case)
        check_round_trip(case, tmp_path)
    # and a prior built on the encoder (the VampPrior) is checked with it
    vamp = [c for c in part_cases(["prior"], names=["vamp"]) if c.encoder == NAME]
    assert len(vamp) == 2
    for case in vamp:
        check_shapes(case)
        check_gradients(case)
    # in a VAE, with and without a context
    for conditional in (False, True):
        torch.manual_seed(1)
        model = build_vae((1, 8, 8), latent_dim=2, hidden=[16], posterior=NAME, context=(LABEL3,) if conditional else ())
        train_one_step(model, vae_data("bernoulli", (1, 8, 8)), vae_context(conditional))


def test_an_option_name_with_another_definition_is_refused() -> None:
    clash = Option("min_scale", float, 0.5, "another meaning of min_scale")
    with pytest.raises(ValueError, match="option 'min_scale' of posterior 'test-clash' differs"):
        registry.register("posterior", "test-clash", options=(clash,))(lambda shapes, min_scale: None)
    assert "test-clash" not in registry.names("posterior")
    assert registry.all_options()["min_scale"].default == 1e-4
    with pytest.raises(ValueError, match="unknown part kind 'encoder'"):
        registry.register("encoder", "test-kind")
    # the very same Option object may be shared, as the built-in parts share min_scale
    shared = registry.all_options()["min_scale"]
    registry.register("posterior", "test-shared", options=(shared,))(lambda shapes, min_scale: None)
    try:
        assert registry.get("posterior", "test-shared").options == (shared,)
    finally:
        registry.unregister("posterior", "test-shared")
    assert "test-shared" not in registry.names("posterior")


def one_line(err: pytest.ExceptionInfo[VaelabError], *culprits: str) -> str:
    message = str(err.value)
    assert "\n" not in message
    for culprit in culprits:
        assert culprit in message, (culprit, message)
    return message


@pytest.mark.parametrize("kind", ["net", "posterior", "prior", "likelihood"])
def test_an_unknown_part_name_in_a_configuration_names_the_choices(kind: str) -> None:
    with pytest.raises(VaelabError) as err:
        TrainConfig.from_mapping({kind: "radial"})
    one_line(err, f"unknown value 'radial' for {kind}", "choose one of: " + ", ".join(registry.names(kind)))


def test_an_unknown_option_key_in_a_configuration_names_the_valid_keys(tmp_path: Path, refused: Any) -> None:
    with pytest.raises(VaelabError) as err:
        TrainConfig.from_mapping({"flow_stepz": 3})
    one_line(err, "unknown key(s) flow_stepz", "valid keys:", "flow_steps", "prior_components", "latent_dim")
    path = tmp_path / "settings.toml"
    path.write_text('posterior = "planar"\nflow_stepz = 3\n')
    refused(["train", "--config", path, "--out", tmp_path / "out"], str(path), "flow_stepz", "flow_steps")
    assert not (tmp_path / "out").exists()


def spec_dict(**changes: Any) -> dict[str, Any]:
    doc = ModelSpec.create((4,), posterior="planar", options={"hidden": [8]}).to_dict()
    doc.update(changes)
    return doc


@pytest.mark.parametrize("changes,culprits", [
    (dict(posterior={"name": "radial"}), ["model.json", "unknown posterior 'radial'", "gaussian, full-gaussian, planar, iaf"]),
    (dict(prior={"name": "flow"}), ["model.json", "unknown prior 'flow'", "normal, mog, vamp, conditional"]),
    (dict(likelihood={"name": "tweedie"}), ["model.json", "unknown likelihood 'tweedie'", "bernoulli"]),
    (dict(net={"name": "transformer", "hidden": [8]}), ["model.json", "unknown net 'transformer'", "mlp, conv"]),
    (dict(posterior={"name": "planar", "flow_stepz": 2}), ["model.json", "posterior 'planar' has no option(s) flow_stepz",
                                                          "its options: flow_steps, min_scale"]),
    (dict(prior={"name": "normal", "prior_components": 2}), ["prior 'normal' has no option(s) prior_components",
                                                            "its options: none"]),
    (dict(posterior={"name": "planar", "flow_steps": 0}), ["flow_steps must be >= 1"]),
    (dict(encoder={"name": "gaussian"}), ["unknown key(s) encoder", "valid keys:", "posterior"]),
])
def test_an_unknown_part_or_option_in_model_json_names_the_valid_choices(changes: dict[str, Any], culprits: list[str]) -> None:
    with pytest.raises(VaelabError) as err:
        ModelSpec.from_dict(spec_dict(**changes), source="runs/r/model.json")
    one_line(err, *culprits)


def test_loading_a_run_whose_model_json_names_an_unknown_part(trained: vaelab.TrainedModel, tmp_path: Path,
                                                              refused: Any) -> None:
    """A run of the registered part, once the part is gone (another session, no registration),
    or with a damaged model.json: one line naming the file and the choices."""
    run = tmp_path / "copy"
    shutil.copytree(trained.run_dir, run)
    doc = json.loads((run / "model.json").read_text())
    doc["posterior"]["name"] = "radial"
    (run / "model.json").write_text(json.dumps(doc))
    with pytest.raises(VaelabError) as err:
        vaelab.load(run)
    one_line(err, str(run / "model.json"), "unknown posterior 'radial'", "gaussian", NAME)
    refused(["sample", run, "-o", tmp_path / "s.png"], "model.json", "unknown posterior 'radial'")
    assert not (tmp_path / "s.png").exists()
