"""benchmarks/fashion_ladder.py and the ladder rows of benchmarks/colour.py: their arithmetic.

The studies themselves train for minutes to hours; what a test can check is the reading of
their results: the paired differences (per seed over the same test images, and over seeds),
the convergence measure of the validation ELBO, the split of the KL per unit into layers, and
the colour table's paired columns, each against a hand computation on made-up numbers.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import pytest

from benchmark_modules import load_benchmark


def _module(name: str) -> ModuleType:
    return load_benchmark(name)


@pytest.fixture(scope="module")
def fashion() -> ModuleType:
    return _module("fashion_ladder")


@pytest.fixture(scope="module")
def colour() -> ModuleType:
    return _module("colour")


def _rows(log_px: dict[tuple[str, int], np.ndarray]) -> list[dict]:
    return [{"model": m, "seed": s, "log_px": v.tolist()} for (m, s), v in log_px.items()]


def test_paired_differences_per_seed_and_over_seeds(fashion: ModuleType) -> None:
    rng = np.random.default_rng(0)
    n = 400
    base = {s: rng.normal(-240.0, 20.0, n) for s in (0, 1, 2)}  # one layer, [N] per seed
    shift = {0: 1.5, 1: -2.0, 2: -0.5}  # the ladder's true difference in -log p(x), per seed
    noise = {s: rng.normal(0.0, 3.0, n) for s in (0, 1, 2)}
    values = {("one", s): base[s] for s in base} | {("ladder", s): base[s] - shift[s] - noise[s] for s in base}
    p = fashion.paired(_rows(values), "ladder")
    assert p["seeds"] == [0, 1, 2]
    for entry in p["per_seed"]:
        s = entry["seed"]
        d = shift[s] + noise[s]  # -log p_ladder - (-log p_one) per image
        assert entry["mean"] == pytest.approx(d.mean(), abs=1e-9)
        assert entry["stderr"] == pytest.approx(d.std(ddof=1) / math.sqrt(n), rel=1e-9)
    means = np.array([shift[s] + noise[s].mean() for s in (0, 1, 2)])
    assert p["mean"] == pytest.approx(means.mean(), abs=1e-9)
    assert p["seed_stderr"] == pytest.approx(means.std(ddof=1) / math.sqrt(3), rel=1e-9)
    pooled = np.mean([shift[s] + noise[s] for s in (0, 1, 2)], axis=0)
    assert p["example_stderr"] == pytest.approx(pooled.std(ddof=1) / math.sqrt(n), rel=1e-9)
    assert p["wins"] == int((means < 0).sum()) == 2  # seeds 1 and 2: the ladder is better


def test_paired_uses_only_seeds_with_both_models(fashion: ModuleType) -> None:
    x = np.linspace(-250.0, -230.0, 10)
    rows = _rows({("one", 0): x, ("ladder", 0): x + 1.0, ("ladder", 1): x})
    p = fashion.paired(rows, "ladder")
    assert p["seeds"] == [0] and p["seed_stderr"] is None
    assert p["mean"] == pytest.approx(-1.0) and p["per_seed"][0]["stderr"] == pytest.approx(0.0, abs=1e-12)
    assert fashion.paired(rows, "one-fb") is None


def test_convergence_is_the_rise_of_the_best_over_the_last_fifth(fashion: ModuleType) -> None:
    val = [-260.0, -250.0, -245.0, -246.0, -244.0, -243.0, -242.5, -242.6, -242.0, -242.3]  # 10 epochs
    c = fashion.convergence([{"val_elbo": v, "seconds": 2.0} for v in val])
    assert c["epochs"] == 10 and c["from_epoch"] == 8
    assert c["best_val_elbo"] == -242.0 and c["best_epoch"] == 9
    assert c["rise_last_20pct"] == pytest.approx(0.5)  # best of epochs 1-8 is -242.5
    assert c["epoch_wall_s"] == pytest.approx(20.0)


def test_layers_split_the_kl_per_unit_bottom_first(fashion: ModuleType) -> None:
    kl = [0.0, 2.0, 0.05, 1.0, 0.3, 0.0]
    ev = {"latents": {"kl_per_dim": kl, "layers": [4, 2], "informative_units": [1, 3, 4]}}
    assert fashion.layers(ev) == [{"size": 4, "kl": pytest.approx(3.05), "informative": 2},
                                  {"size": 2, "kl": pytest.approx(0.3), "informative": 1}]
    one = fashion.layers({"latents": {"kl_per_dim": kl[:3]}})  # one layer, no list: KL above 0.1 nats
    assert one == [{"size": 3, "kl": pytest.approx(2.05), "informative": 1}]


def test_colour_ladder_rows_and_paired_columns(colour: ModuleType) -> None:
    for net in ("mlp", "conv", "resnet"):
        ladder = colour.MODELS[f"{net}-ladder"]
        assert ladder["latent_dims"] == [32, 16] and ladder["net"] == colour.MODELS[net]["net"]
        assert "latent_dims" not in colour.MODELS[net]
    scale = colour.DIMS * math.log(2)
    x = np.linspace(-14000.0, -13000.0, 8)

    def row(model: str, shift: float, layers: list[dict]) -> dict:
        return {"model": model, "params": 1e6, "epochs": 1, "bpd": 5.0, "bpd_stderr": 0.1, "k": 5, "elbo_bpd": 5.1,
                "layers": layers, "train_cpu_s": 10.0, "train_wall_s": 20.0, "log_px": (x - shift).tolist()}

    one = [{"size": 32, "kl": 40.0, "informative": 32}]
    two = [{"size": 32, "kl": 14.0, "informative": 19}, {"size": 16, "kl": 3.0, "informative": 12}]
    rows = [row("mlp", 0.0, one), row("conv", scale * 0.25, one), row("conv-ladder", scale * 0.5, two)]
    lines = colour.table(rows).splitlines()
    cells = [c.strip() for c in lines[4].strip("|").split("|")]  # the conv-ladder row
    assert cells[:2] == ["conv", "32, 16"]
    assert cells[5] == "+0.500 ± 0.000" and cells[6] == "+0.250 ± 0.000"  # vs mlp, vs conv with one layer
    assert cells[8] == "14.0 (19 of 32) / 3.0 (12 of 16)"
    assert [c.strip() for c in lines[3].strip("|").split("|")][6] == ""  # a one-layer row has no such column
