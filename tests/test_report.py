"""``vaelab eval`` with the full evaluation, and ``vaelab report``: one self-contained HTML
page, checked as text (nothing external) and in a real headless Chromium (it loads without
console errors, every section is there, every image decodes).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.cli import main
from vaelab.report import SECTIONS, kl_bars, latent_traversal, project_2d, write_report
from vaelab.runs import train

PNG = b"\x89PNG\r\n\x1a\n"
QUICK = ["--k", "20", "--mi-samples", "100", "--gap-examples", "5", "--gap-steps", "20", "--gap-eval-samples", "50"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    train(data="digits", hidden=[32], latent_dim=2, epochs=2, eval_k=0, out=str(out), name="r",
          progress=False, log=lambda m: None)
    return out / "r"


def run_cli(argv: list) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return 0 if info.value.code is None else int(info.value.code)


@pytest.fixture(scope="module")
def evaluated(run: Path) -> Path:
    """The run after ``vaelab eval`` (quick settings): RUN/eval.json holds the full evaluation."""
    assert run_cli(["eval", run, *QUICK]) == 0
    return run


@pytest.fixture(scope="module")
def report(evaluated: Path) -> Path:
    assert run_cli(["report", evaluated]) == 0
    return evaluated / "report.html"


# --- vaelab eval ---------------------------------------------------------------------------------


def test_eval_json_has_every_figure_and_its_settings(evaluated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ev = json.loads((evaluated / "eval.json").read_text())
    assert ev["k"] == 20 and ev["n"] == 180 and ev["units"] == "nats per example"
    assert ev["settings"]["gap_examples"] == 5 and ev["settings"]["gap_steps"] == 20
    assert ev["gaps"]["n"] == 5 and ev["latents"]["latent_dim"] == 2 and "bits_per_dim" in ev
    assert ev["gaps"]["inference_gap"] == pytest.approx(ev["gaps"]["approximation_gap"] + ev["gaps"]["amortization_gap"])
    assert run_cli(["eval", evaluated, "--k", "10", "--mi-samples", "50", "--no-gap", "--json", "--per-example",
                    "--data", "digits"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gaps"] is None and len(out["per_example"]["elbo"]) == 180
    assert json.loads((evaluated / "eval.json").read_text()) == ev  # other data: not recorded
    assert run_cli(["eval", evaluated, "--gap-lr", "0"]) == 2  # refused by the option's range


def test_eval_table_names_every_quantity(evaluated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["eval", evaluated, *QUICK, "--data", "digits"]) == 0
    out = capsys.readouterr().out
    for row in ("ELBO", "reconstruction", "KL", "-log p(x), K=20", "Monte Carlo", "ESS", "active units",
                "mutual information", "marginal KL", "posterior collapsed", "approximation gap", "amortization gap"):
        assert row in out, row


# --- vaelab report -----------------------------------------------------------------------------


def test_report_is_one_self_contained_file(report: Path, evaluated: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)  # nothing fetched
    assert "http://" not in text and "https://" not in text
    sources = re.findall(r"""<img[^>]*\bsrc="([^"]*)\"""", text)
    assert len(sources) >= 8 and all(s.startswith("data:image/png;base64,") for s in sources)
    for sid, heading in SECTIONS:
        assert f'id="{sid}"' in text and f">{heading}</h2>" in text
    assert "nats per example" in text
    assert not [p for p in evaluated.iterdir() if p.name.endswith(".tmp")]


def test_report_reuses_a_complete_evaluation_and_makes_one_when_missing(
        evaluated: Path, report: Path, tmp_path: Path) -> None:
    before = json.loads((evaluated / "eval.json").read_text())
    assert before["settings"]["k"] == 20  # the report did not re-evaluate with its own K = 1000
    copy = tmp_path / "copy"
    shutil.copytree(evaluated, copy)
    (copy / "eval.json").unlink()
    out = write_report(copy, tmp_path / "elsewhere" / "page.html", k=10, gap_examples=3, gap_steps=5)
    assert out == tmp_path / "elsewhere" / "page.html" and out.is_file()
    made = json.loads((copy / "eval.json").read_text())
    assert made["k"] == 10 and made["gaps"]["n"] == 3
    assert run_cli(["report", tmp_path / "not-a-run"]) == 2


@pytest.mark.slow
def test_report_opens_in_a_browser_with_every_section(report: Path) -> None:
    from browser import browser_page

    with browser_page(width=1300, height=900) as (page, errors):
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        for sid, heading in SECTIONS:
            section = page.locator(f"section#{sid}")
            assert section.count() == 1, sid
            assert section.locator("h2").inner_text() == heading
        widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) >= 8 and all(w > 0 for w in widths), widths
        assert page.title().startswith("vaelab report")
        page.screenshot(path="/tmp/report.png", full_page=True)
        assert errors == []


# --- the report's own figures ------------------------------------------------------------------


def test_report_figures_for_vectors_and_any_latent_dimension(tmp_path: Path) -> None:
    p = kl_bars([0.5, 0.001, 0.2], tmp_path / "a.png")  # no per-dimension KL: activity only
    assert p.read_bytes().startswith(PNG)
    p = kl_bars([0.5, 0.001], tmp_path / "b.png", kl_per_dim=[1.2, 0.0])
    assert p.read_bytes().startswith(PNG)
    decoded = torch.rand(3, 5, 7)  # 3 dimensions x 5 values of vectors (7,)
    p = latent_traversal(decoded, [-2, -1, 0, 1, 2], [4, 0, 2], tmp_path / "c.png")
    assert p.read_bytes().startswith(PNG)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 5, generator=g) * torch.tensor([3.0, 0.1, 1.0, 0.1, 0.1])
    points, (xlabel, _) = project_2d(z)
    assert points.shape == (200, 2) and "PC1" in xlabel
    assert abs(np.corrcoef(points[:, 0], z[:, 0].numpy())[0, 1]) > 0.95  # PC1 is the widest axis
    assert project_2d(z[:, :2])[0].shape == (200, 2) and project_2d(z[:, :1])[0].shape == (200, 2)
