"""benchmarks/speed.py and the plain loops of benchmarks/reference.py, on a tiny slice, without JAX.

The speed benchmark's numbers are times and cannot be asserted; what can: the in-memory loop
starts from the same initial weights as the DataLoader loop (and as the JAX peer, which copies
``reference_model``), the rounds rotate the order of the loops, every loop keeps its own random
state, vaelab's epochs are timed from its binarization to its last step, and the ratios are the
per-round ratios of the rates. jax is not a dependency: nothing here starts the JAX worker.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from types import ModuleType

import pytest
import torch

from benchmark_modules import load_benchmark


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def speed() -> ModuleType:
    return load_benchmark("speed")


@pytest.fixture(scope="module")
def reference(speed: ModuleType) -> ModuleType:
    return sys.modules["reference"]  # speed.py imports it from benchmarks/


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("loop", ["reference_epochs", "reference_epochs_in_memory"])
def test_both_plain_loops_start_from_reference_model(reference: ModuleType, loop: str) -> None:
    x = torch.rand(40, 784, generator=torch.Generator().manual_seed(0))  # [N, 784]
    state = torch.get_rng_state()
    start = reference.reference_model(3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left alone
    assert not _same_weights(start, reference.reference_model(4))
    model, seconds = next(getattr(reference, loop)(x, epochs=1, batch_size=16, lr=0.0, seed=3))
    assert seconds > 0
    assert _same_weights(model, start)  # lr 0: one epoch of steps leaves the initial weights


def test_in_memory_loop_visits_every_example_once_per_epoch(reference: ModuleType, monkeypatch) -> None:
    x = torch.arange(50, dtype=torch.float32).reshape(50, 1).expand(50, 784) / 50  # row i holds i / 50
    seen: list[torch.Tensor] = []
    forward = reference.ReferenceVAE.forward

    def spy(self, data):
        seen.append(data[:, 0].clone())
        return forward(self, data)

    monkeypatch.setattr(reference.ReferenceVAE, "forward", spy)
    loop = reference.reference_epochs_in_memory(x, epochs=2, batch_size=16, seed=0, binarize=False)
    for epoch in range(2):
        seen.clear()
        next(loop)
        assert [len(b) for b in seen] == [16, 16, 16, 2]
        rows = torch.cat(seen) * 50
        assert sorted(rows.round().long().tolist()) == list(range(50))


def test_quartiles(speed: ModuleType) -> None:
    assert speed.quartiles([5.0, 1.0, 4.0, 2.0, 3.0]) == (2.0, 3.0, 4.0)
    assert speed.quartiles([7.0]) == (7.0, 7.0, 7.0)


@pytest.mark.slow
def test_torch_loops_round_robin_on_a_slice(speed: ModuleType) -> None:
    from vaelab.data import binarize, load_data

    full = load_data("mnist5k")
    data = replace(full, train=full.train[:256], val=full.val[:64], train_labels=None, val_labels=None)
    x_test = binarize(full.test[:100], torch.Generator().manual_seed(0))
    loops = ("vaelab", "memory", "dataloader")
    s = speed.benchmark(data, x_test, loops, rounds=2, epochs=2, skip_first=1, batch_size=64, mm_size=128)

    assert [rd["order"] for rd in s["runs"]] == [list(loops), ["memory", "dataloader", "vaelab"]]
    for rd in s["runs"]:
        assert len(rd["mm_flops"]) == 2 and all(f > 0 for f in rd["mm_flops"])  # one per set of epochs
        for name in loops:
            assert len(rd["epochs"][name]) == 2
            assert all(e["seconds"] > 0 and e["cpu_seconds"] > 0 for e in rd["epochs"][name])
            elbo = rd["test_elbo"][name]
            assert -784 * math.log(2) - 50 < elbo < -100  # a barely trained model of binary digits
        for e in rd["epochs"]["vaelab"]:  # timed from epoch_data to the last step: fit's seconds inside
            assert e["seconds"] >= e["own_seconds"]
        assert rd["vaelab_all_in_seconds"] >= sum(e["seconds"] for e in rd["epochs"]["vaelab"])
    assert set(s["ratios"]) == {"vaelab/memory", "vaelab/dataloader"}
    for pair, v in s["ratios"].items():
        a, b = pair.split("/")
        rates = [s["loops"][name]["examples_per_second_per_round"] for name in (a, b)]
        assert v["per_round"] == pytest.approx([x / y for x, y in zip(*rates)], rel=1e-12)
        assert min(v["per_round"]) <= v["median"] <= max(v["per_round"])
    for rd, rate in zip(s["runs"], s["loops"]["memory"]["examples_per_second_per_round"]):
        assert rate == pytest.approx(256 / rd["epochs"]["memory"][1]["seconds"], rel=1e-12)  # epoch 1 left out
    assert "jax" not in s["loops"] and s["jax"] is None
    alone = speed.benchmark(data, x_test, ("dataloader", "memory"), rounds=1, epochs=2, skip_first=0, batch_size=64,
                            mm_size=128)  # without vaelab: the loops run by themselves
    assert alone["runs"][0]["order"] == ["dataloader", "memory"] and alone["ratios"] == {}
    assert [len(alone["runs"][0]["epochs"][name]) for name in ("dataloader", "memory")] == [2, 2]
    # each plain loop draws from its own random state: in round 1 they ran between vaelab's
    # epochs and each other's, yet their models equal those of each loop run alone
    reference = sys.modules["reference"]
    x_flat = data.train.reshape(256, -1)
    for name, loop in (("memory", reference.reference_epochs_in_memory), ("dataloader", reference.reference_epochs)):
        torch.manual_seed(123)  # any state: the loop seeds itself
        for model, _ in loop(x_flat, epochs=2, batch_size=64, seed=1):
            pass
        torch.manual_seed(0)
        alone = reference.reference_elbo(model.eval(), x_test.reshape(100, -1))["elbo"]
        assert alone == s["runs"][1]["test_elbo"][name]
