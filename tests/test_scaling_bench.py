"""benchmarks/scaling.py: its power-law fit against exact power laws, and one tiny point run end to end."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from benchmark_modules import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("scaling")


def test_power_fit_recovers_an_exact_power_law(bench: ModuleType) -> None:
    x = [3_600.0, 54_000.0, 810_000.0, 2e6]
    f = bench.power_fit(x, [0.02 * v**1.25 for v in x])
    assert f["b"] == pytest.approx(1.25, abs=1e-12)
    assert f["a"] == pytest.approx(math.log(0.02), abs=1e-9)
    assert f["se"] < 1e-9 and f["lo"] <= 1.25 <= f["hi"]


def test_power_fit_interval_is_the_t_interval_of_least_squares(bench: ModuleType) -> None:
    rng = np.random.default_rng(0)
    x = np.repeat([100.0, 200.0, 400.0, 800.0, 1600.0], 3)  # 15 points, 13 degrees of freedom
    y = 1e-3 * x**0.8 * np.exp(rng.normal(0.0, 0.05, x.size))
    f = bench.power_fit(x.tolist(), y.tolist())
    # the same fit by numpy, and the textbook standard error of the slope
    lx, ly = np.log(x), np.log(y)
    b, a = np.polyfit(lx, ly, 1)
    resid = ly - (a + b * lx)
    se = math.sqrt((resid**2).sum() / (x.size - 2) / ((lx - lx.mean()) ** 2).sum())
    assert f["b"] == pytest.approx(b, rel=1e-10) and f["se"] == pytest.approx(se, rel=1e-10)
    assert f["hi"] - f["b"] == pytest.approx(2.179 * se, rel=1e-10)  # t_{0.975} at 12 <= 13 dof: conservative


def test_power_fit_interval_covers_the_true_exponent_95_percent_of_the_time(bench: ModuleType) -> None:
    rng = np.random.default_rng(1)
    x = np.repeat([100.0, 200.0, 400.0, 800.0, 1600.0], 3)  # 13 degrees of freedom
    reps = 400
    hits = 0
    for _ in range(reps):
        f = bench.power_fit(x.tolist(), (1e-3 * x**0.8 * np.exp(rng.normal(0.0, 0.05, x.size))).tolist())
        hits += f["lo"] < 0.8 < f["hi"]
    se = math.sqrt(0.95 * 0.05 / reps)  # binomial standard error of the coverage
    assert abs(hits / reps - 0.95) < 4 * se


def test_power_fit_with_two_points_has_no_interval(bench: ModuleType) -> None:
    f = bench.power_fit([1.0, 10.0], [2.0, 20.0])
    assert f["b"] == pytest.approx(1.0) and math.isinf(f["se"])
    with pytest.raises(ValueError, match="two distinct"):
        bench.power_fit([5.0, 5.0, 5.0], [1.0, 2.0, 3.0])


@pytest.mark.slow  # a fresh process importing torch: about 4 CPU seconds, over 10 s of wall time on a busy machine
def test_a_tiny_point_runs_in_a_fresh_process(bench: ModuleType, tmp_path: Path) -> None:
    point = {"scan": "width", "label": "H=16", "data": "digits", "hidden": 16, "threads": 1, "epochs": 2}
    row = bench.run_point(point, tmp_path)
    assert row["ranks"] == 1 and row["n_train"] == 1455  # digits: 1,797 - 180 test, 10% of the rest for validation
    assert row["params"] == (64 * 16 + 16) + (16 * 40 + 40) + (20 * 16 + 16) + (16 * 64 + 64)
    assert 0 < row["steps_s"] <= row["wall_s"]  # the all-in epoch holds its steps
    assert row["cpu_s"] > 0 and row["peak_mb"] >= row["rss_mb"] > 50
    assert list(tmp_path.iterdir()) == []  # the run folder is removed
    table = bench.summarise([row], None)
    assert "| width | H=16 | 1,455 | 16 | 1 x 1 |" in table
