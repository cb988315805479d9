"""``vaelab compare`` and ``vaelab runs``: the paired difference of -log p(x) and its standard
error against a direct numpy computation from both runs' per-example values (estimated anew,
and read from eval.json), the test-set check, the page in a real headless Chromium, and run
folders that cannot be read listed as damaged.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.compare import compare, list_runs, paired_difference, read_run
from vaelab.runs import load, train
from conftest import run_cli  # vaelab ARGV in-process: its exit status

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

K, SEED = 40, 3




@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny runs on the digits: a and b share a test set (same data, split and seed), c
    has another seed (another split); b is evaluated (eval.json)."""
    out = tmp_path_factory.mktemp("runs")
    quiet = dict(progress=False, log=lambda m: None, out=str(out), data="digits", epochs=2, eval_k=0)
    train(name="a", hidden=[16], latent_dim=2, **quiet)
    train(name="b", hidden=[32], latent_dim=4, lr=3e-3, **quiet)
    train(name="c", hidden=[16], latent_dim=2, seed=1, **quiet)
    assert run_cli(["eval", out / "b", "--k", "20", "--mi-samples", "50", "--no-gap", "--estimator", "is"]) == 0
    return out


def per_example_log_px(run: Path, k: int, seed: int) -> np.ndarray:
    """log p(x) of each test example of ``run``, computed here without vaelab.compare."""
    model = load(run)
    batch = model.test_batch()
    torch.manual_seed(seed)
    return model.log_likelihood(batch.x, k=k).per_example.double().numpy()


def test_paired_difference_and_its_error_are_those_of_the_per_example_values(runs: Path) -> None:
    comp = compare([runs / "a", runs / "b"], k=K, seed=SEED)
    (pair,) = comp.pairs
    a, b = per_example_log_px(runs / "a", K, SEED), per_example_log_px(runs / "b", K, SEED)
    d = a - b  # -log p_b(x) - (-log p_a(x)) per example
    n = len(d)
    assert pair.n == n == read_run(runs / "a").data_info["n_test"]
    assert pair.difference == pytest.approx(d.mean(), rel=1e-12, abs=1e-12)
    assert pair.stderr == pytest.approx(d.std(ddof=1) / math.sqrt(n), rel=1e-12)
    assert pair.unpaired_stderr == pytest.approx(math.sqrt(a.var(ddof=1) / n + b.var(ddof=1) / n), rel=1e-12)
    assert pair.difference == pytest.approx((-b.mean()) - (-a.mean()), abs=1e-9)
    assert "estimated now" in pair.source and f"K={K}" in pair.source


def test_paired_values_come_from_eval_json_when_both_runs_hold_them(runs: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        shutil.copytree(runs / name, tmp_path / name)
        assert run_cli(["eval", tmp_path / name, "--k", "20", "--mi-samples", "50", "--no-gap", "--estimator", "is",
                        "--per-example"]) == 0
    comp = compare([tmp_path / "a", tmp_path / "b"], k=K, seed=SEED)
    (pair,) = comp.pairs
    ea, eb = (json.loads((tmp_path / n / "eval.json").read_text())["per_example"]["log_px"] for n in ("a", "b"))
    d = np.asarray(ea) - np.asarray(eb)
    assert pair.source.startswith("eval.json")
    assert pair.difference == pytest.approx(d.mean(), rel=1e-12)
    assert pair.stderr == pytest.approx(d.std(ddof=1) / math.sqrt(len(d)), rel=1e-12)


def test_paired_difference_of_one_run_with_itself_is_zero_and_the_error_formula() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(-30, 5, size=200)
    y = x + rng.normal(0.5, 0.1, size=200)  # run y is worse by about 0.5 nats everywhere
    mean, se, unpaired = paired_difference(y, x)
    assert mean == pytest.approx(float(np.mean(x - y)))
    assert se == pytest.approx(float(np.std(x - y, ddof=1) / np.sqrt(200)))
    assert se < unpaired / 10  # most of the spread is between examples
    assert paired_difference(x, x)[:2] == (0.0, 0.0)


def test_runs_with_another_test_set_are_not_paired(runs: Path) -> None:
    comp = compare([runs / "a", runs / "b", runs / "c"], k=K, seed=SEED)
    assert [p.run for p in comp.pairs] == ["b"]
    assert "seed" in comp.not_paired["c"]
    doc = comp.to_dict()
    assert doc["reference"] == "a" and [r["name"] for r in doc["runs"]] == ["a", "b", "c"]
    assert set(doc["differing_settings"]) >= {"hidden", "latent_dim", "seed", "lr"}


def test_table_has_the_evaluated_runs_figures_and_dashes_for_the_others(runs: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run_cli(["compare", runs / "a", runs / "b", "--no-paired", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    a, b = doc["runs"]
    ev = json.loads((runs / "b" / "eval.json").read_text())
    assert a["evaluation"] is None
    assert b["evaluation"]["nll"] == pytest.approx(ev["nll"]) and b["evaluation"]["elbo"] == pytest.approx(ev["elbo"])
    assert b["evaluation"]["active_units"] == ev["latents"]["active_units"]
    assert b["epochs"] == 2 and b["seconds"] > 0
    assert doc["paired_differences"] == []
    assert run_cli(["compare", runs / "a", runs / "b", "--k", K]) == 0
    text = capsys.readouterr().out
    assert "– (no eval.json)" in text and "paired differences of -log p(x) against a" in text
    assert f"{ev['nll']:.2f}" in text


def test_compare_refuses_bad_input(runs: Path, tmp_path: Path, refused) -> None:
    refused(["compare", runs / "a"], "at least two")
    refused(["compare", runs / "a", tmp_path / "nope"], "nope", "not found")
    refused(["compare", runs / "a", runs / "a"], "twice")
    broken = tmp_path / "broken"
    shutil.copytree(runs / "a", broken)
    (broken / "config.json").write_text("{not json")
    refused(["compare", runs / "a", broken], "broken", "damaged")
    refused(["compare", runs / "a", runs / "b", "-o", runs / "a" / "config.json"], "config.json")


@pytest.mark.slow
def test_compare_page_opens_in_a_browser_with_its_table(runs: Path, tmp_path: Path) -> None:
    from browser import browser_page

    page_file = tmp_path / "compare.html"
    assert run_cli(["compare", runs / "a", runs / "b", runs / "c", "--k", K, "-o", page_file]) == 0
    text = page_file.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and "<script" not in text  # self-contained
    with browser_page(width=1300, height=900) as (page, errors):
        page.goto(page_file.resolve().as_uri())
        page.wait_for_load_state("load")
        table = page.locator("#runs-table")
        assert table.is_visible()
        assert table.locator("tr").count() == 4  # the header and three runs
        assert "b" in table.locator("tr").nth(2).inner_text()
        assert page.locator("#paired-table").is_visible()
        assert "not paired" in page.locator("#paired-table").inner_text()
        widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) == 1 and widths[0] > 0
        assert page.title().startswith("vaelab compare")
        assert errors == []


def test_runs_lists_every_run_and_a_damaged_folder_as_damaged(runs: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b"):
        shutil.copytree(runs / name, tmp_path / name)
    shutil.copytree(runs / "a", tmp_path / "corrupt")
    (tmp_path / "corrupt" / "config.json").write_text("{not json")
    shutil.copytree(runs / "a", tmp_path / "no-weights")
    (tmp_path / "no-weights" / "model.safetensors").unlink()
    (tmp_path / "not-a-run").mkdir()  # an unrelated folder is not listed
    infos = {r.name: r for r in list_runs(tmp_path)}
    assert sorted(infos) == ["a", "b", "corrupt", "no-weights"]
    assert infos["a"].status == "ok" and infos["corrupt"].status == "damaged"
    assert "config.json" in (infos["corrupt"].problem or "")
    assert infos["no-weights"].status == "damaged" and "weights" in (infos["no-weights"].problem or "")
    capsys.readouterr()
    assert run_cli(["runs", tmp_path]) == 0
    out = capsys.readouterr().out
    assert "Traceback" not in out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["run", "status", "data"]
    row = {line.split()[0]: line for line in lines[1:5]}
    assert row["corrupt"].split()[1] == "damaged" and row["a"].split()[1] == "ok"
    assert "-log p(x)" in row["b"] and "(test)" in row["b"]  # b's headline: its test -log p(x)
    assert "ELBO" in row["a"] and "(validation)" in row["a"]
    assert run_cli(["runs", tmp_path, "--json"]) == 0
    doc = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert doc["corrupt"]["status"] == "damaged" and doc["b"]["evaluation"]["nll"] is not None


def test_runs_refuses_a_missing_folder(tmp_path: Path, refused) -> None:
    refused(["runs", tmp_path / "nope"], "nope", "not found")
