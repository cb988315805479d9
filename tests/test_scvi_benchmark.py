"""benchmarks/scvi_tools.py: its vaelab side and its arithmetic, without scvi-tools (never needed here)."""

from __future__ import annotations

import math
import sys
from types import ModuleType

import numpy as np
import pytest

from benchmark_modules import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    module = load_benchmark("scvi_tools")
    assert "scvi" not in sys.modules  # the vaelab side never imports scvi-tools
    return module


def _counts(n: int, genes: int, seed: int) -> np.ndarray:
    """Negative-binomial counts (Gamma-Poisson), every cell with some counts."""
    rng = np.random.default_rng(seed)
    mean = rng.gamma(2.0, 2.0, size=(1, genes)) * rng.lognormal(0.0, 0.3, size=(n, 1))
    x = rng.poisson(rng.gamma(2.0, mean / 2.0)).astype(np.float32)
    x[:, 0] += 1  # no empty cell
    return x


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_vaelab_side_runs_one_epoch_and_scores_every_test_cell(bench: ModuleType, likelihood: str) -> None:
    train, test = _counts(48, 12, 0), _counts(10, 12, 1)
    out = bench.vaelab_side(train, test, likelihood=likelihood, epochs=1, batch_size=16, hidden=8, latent_dim=2,
                            k=20, seed=0, threads=1)
    assert out["n_train"] == 48 and out["n_test"] == 10
    assert len(out["epoch_end_wall"]) == len(out["epoch_end_cpu"]) == len(out["epoch_steps_wall"]) == 1
    ll, rec = np.array(out["log_likelihood"]), np.array(out["reconstruction_error"])
    assert ll.shape == rec.shape == (10,) and np.isfinite(ll).all() and np.isfinite(rec).all()
    assert (ll < 0).all()  # log-probabilities of counts under a normalised count model (K = 20: far from 0)
    assert (rec > 0).all()  # -E_q log p(x|z): minus a log-probability
    ess = np.array(out["ess"])
    assert ((ess >= 1 - 1e-9) & (ess <= 20 + 1e-9)).all()
    assert out["settings"]["likelihood"] == bench.LIKELIHOODS[likelihood] and out["settings"]["latent_dim"] == 2
    assert out["peak_rss_kib"] >= out["rss_after_load_kib"] > 0


def test_paired_difference_and_its_standard_error(bench: ModuleType) -> None:
    a, b = [1.0, 2.0, 4.0, 7.0], [0.5, 2.5, 3.0, 6.0]
    d = np.array(a) - np.array(b)  # 0.5, -0.5, 1.0, 1.0
    mean, se = bench.paired(a, b)
    assert mean == pytest.approx(0.5)
    assert se == pytest.approx(math.sqrt(((d - 0.5) ** 2).sum() / 3) / 2)


def test_per_epoch_is_the_median_gap_between_epoch_ends_after_the_first(bench: ModuleType) -> None:
    ends = [5.0, 6.0, 8.0, 9.0, 10.5]  # gaps 5 (set-up), 1, 2, 1, 1.5
    assert bench.per_epoch(ends) == pytest.approx(1.25)
    assert bench.per_epoch(ends, skip=0) == pytest.approx(1.5)
    assert math.isnan(bench.per_epoch([3.0]))


def test_table_compares_sides_and_judges_the_targets(bench: ModuleType) -> None:
    def side(ll: list[float], seconds: float) -> dict:
        return {"log_likelihood": ll, "reconstruction_error": [-v for v in ll], "marginal_ll_check": ll,
                "epoch_end_wall": [seconds * (i + 1) for i in range(4)], "epoch_end_cpu": [seconds * (i + 1) for i in range(4)],
                "epoch_steps_wall": [seconds / 2] * 4, "epoch_hook_wall": [seconds / 2] * 4,
                "train_wall": 4 * seconds, "train_cpu": 4 * seconds, "peak_rss_kib": 2048, "peak_rss_train_kib": 1024,
                "settings": {"n_parameters": 10}}

    ours, theirs = side([-10.0, -20.0, -30.0], 1.0), side([-11.0, -22.0, -30.0], 2.0)
    text, summary = bench.table(ours, theirs)
    assert text.count("\n") == 3 and "| vaelab |" in text and "| scvi-tools |" in text
    assert summary["log_likelihood_difference"] == pytest.approx(1.0)
    assert summary["speedup_wall"] == pytest.approx(2.0) and summary["target_speed_met"]
    assert summary["speedup_steps_wall"] == pytest.approx(2.0)
    assert summary["target_log_likelihood_met"]
    slow = bench.table(side([-10.0, -20.0, -30.0], 1.0), side([-10.0, -20.0, -30.0], 1.2))[1]
    assert not slow["target_speed_met"]
    worse = bench.table(side([-15.0, -26.0, -36.0], 1.0), theirs)[1]
    assert not worse["target_log_likelihood_met"]
