"""``vaelab eval`` with the full evaluation, and ``vaelab report``: one self-contained HTML
page, checked as text (nothing external) and in a real headless Chromium (it loads without
console errors, every section is there, every image decodes), for an unconditional model and
for one conditioned on the label (samples by class, the style/content grid).
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from matplotlib.image import imread

from vaelab.evaluation import EvalSettings
from vaelab.evaluation.summary import EvaluationSummary
from vaelab.report import SECTIONS, build_report, kl_bars, latent_traversal, project_2d, write_report
from vaelab.report.page import sections
from vaelab.runs import load, train
from conftest import run_cli  # vaelab ARGV in-process: its exit status

PNG = b"\x89PNG\r\n\x1a\n"
QUICK = ["--k", "20", "--mi-samples", "100", "--gap-examples", "5", "--gap-steps", "20", "--gap-eval-samples", "50"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    train(data="digits", hidden=[32], latent_dim=2, epochs=2, eval_k=0, out=str(out), name="r",
          progress=False, log=lambda m: None)
    return out / "r"




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
    out = write_report(copy, tmp_path / "elsewhere" / "page.html",
                       settings=EvalSettings(k=10, gap_examples=3, gap_steps=5, mi_samples=50, gap_eval_samples=20))
    assert out == tmp_path / "elsewhere" / "page.html" and out.is_file()
    made = json.loads((copy / "eval.json").read_text())
    assert made["k"] == 10 and made["gaps"]["n"] == 3 and made["settings"]["gap_steps"] == 5
    assert made["data"] == "digits (test split)"
    assert run_cli(["report", tmp_path / "not-a-run"]) == 2


def test_report_options_are_the_evaluation_settings(evaluated: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["report", "--help"]) == 0
    text = capsys.readouterr().out
    for name in EvalSettings.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in text, name
    copy = tmp_path / "copy"
    shutil.copytree(evaluated, copy)
    assert run_cli(["report", copy, "--reevaluate", "--k", "7", "--mi-samples", "30", "--gap-examples", "2",
                    "--gap-steps", "3", "--gap-eval-samples", "10", "--seed", "4"]) == 0
    made = EvaluationSummary.read(copy / "eval.json")
    assert made.k == 7 and made.gaps is not None and made.gaps.n == 2 and made.settings.seed == 4
    assert made.settings == EvalSettings(k=7, mi_samples=30, gap_examples=2, gap_steps=3, gap_eval_samples=10, seed=4)
    assert run_cli(["report", copy, "--k", "-1"]) == 2  # refused by the option's range


def test_report_evaluates_anew_over_an_old_file_and_refuses_a_malformed_one(
        evaluated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(evaluated, copy)
    old = {"n": 180, "elbo": -40.5, "reconstruction": -38.0, "kl": 2.5, "units": "nats per example"}  # vaelab 0.1.0
    (copy / "eval.json").write_text(json.dumps(old))
    assert run_cli(["report", copy, *QUICK]) == 0
    assert EvaluationSummary.read(copy / "eval.json").settings is not None  # a complete evaluation replaced it
    doc = json.loads((copy / "eval.json").read_text())
    doc["latents"]["active_units"] = "two"
    (copy / "eval.json").write_text(json.dumps(doc))
    before = (copy / "report.html").read_bytes()
    capsys.readouterr()
    assert run_cli(["report", copy]) == 2
    err = capsys.readouterr().err
    assert "eval.json': latents.active_units must be a whole number" in err and "--reevaluate" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert (copy / "report.html").read_bytes() == before  # nothing written


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


# --- a model conditioned on the label ---------------------------------------------------------


@pytest.fixture(scope="module")
def cond(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A conditional VAE on the digits (10 classes), evaluated with quick settings, and its report."""
    out = tmp_path_factory.mktemp("cond")
    train(data="digits", condition_on=["label"], hidden=[32], latent_dim=3, epochs=2, eval_k=0, out=str(out),
          name="c", progress=False, log=lambda m: None)
    assert run_cli(["eval", out / "c", *QUICK]) == 0
    assert run_cli(["report", out / "c"]) == 0
    return out / "c"


def figures(text: str) -> dict[str, tuple[int | None, np.ndarray]]:
    """Every ``<figure id="figure-NAME" [data-rows=R]>`` of a page: its rows and decoded pixels."""
    out = {}
    for name, rows, uri in re.findall(r'<figure id="figure-([\w-]+)"(?: data-rows="(\d+)")?><img src="([^"]*)"', text):
        assert uri.startswith("data:image/png;base64,"), name
        png = base64.b64decode(uri.split(",", 1)[1], validate=True)
        assert png.startswith(PNG), name
        out[name] = (None if not rows else int(rows), imread(io.BytesIO(png)))
    return out


def tile_rows(pixels: np.ndarray) -> int:
    """How many rows of tiles a grid picture has: bands of image rows with grey or dark pixels
    (decoded digits) between white gaps, looked for right of the row labels."""
    gray = pixels[..., :3].mean(-1)  # [H, W]
    w = gray.shape[1]
    dark = (gray[:, w // 3 : w - 4] < 0.9).any(1)  # [H]
    return int(dark[0]) + int((dark[1:] & ~dark[:-1]).sum())


def test_conditional_report_draws_every_class_and_every_figure_decodes(cond: Path) -> None:
    text = (cond / "report.html").read_text(encoding="utf-8")
    model = load(cond)
    order = sections(model)
    assert [sid for sid, _ in order] == ["evaluation", "latents", "gaps", "curves", "reconstructions", "samples",
                                         "style", "interpolations", "traversals", "latent-space", "config"]
    assert dict(order)["samples"] == "Samples given the label" and dict(order)["style"] == "Style and content"
    for sid, heading in order:
        assert text.count(f'<section id="{sid}">') == 1 and f">{heading}</h2>" in text, sid
    assert "Samples from the prior" not in text
    drawn = figures(text)
    assert set(drawn) >= {"curves", "reconstructions", "samples", "style", "interpolations", "traversals",
                          "latent_space", "kl_bars"}
    assert len(re.findall(r"<img ", text)) == len(drawn)  # every image is one of them, and decodes
    assert drawn["samples"][0] == 10 and tile_rows(drawn["samples"][1]) == 10  # one row per class
    assert drawn["style"][0] == 11 and tile_rows(drawn["style"][1]) == 11  # the inputs, then each class
    assert "manifold" not in drawn  # a grid of z alone means nothing without c
    # the evaluation is of log p(x|c) and names its conditioning
    assert "−log p(x|label), K = 20" in text and "conditioned on" in text and "10 classes (0, 1, 2" in text
    assert json.loads((cond / "eval.json").read_text())["conditional_on"] == ["label"]
    assert not [p for p in cond.iterdir() if p.name.endswith(".tmp")]


def test_conditional_figures_use_each_examples_context(cond: Path) -> None:
    """The class grid is model.sample given each class; the style grid decodes the posterior
    means of test examples, encoded with their own labels, under every class."""
    from vaelab.report.page import _figures, _test_data  # the figures' tensors, before drawing

    model = load(cond)
    test = _test_data(model)
    assert test.c is not None and torch.equal(test.c[:, 0], test.labels.float())
    rows = torch.stack([model.sample(10, label=k, seed=5 + k) for k in range(10)])  # [10, 10, 1, 8, 8]
    assert not torch.allclose(rows[0], rows[1])  # the label changes the samples
    ev = EvaluationSummary.read(cond / "eval.json")
    seeded = _figures(model, test, ev, seed=5, traversal_dims=2)
    again = _figures(model, test, ev, seed=5, traversal_dims=2)
    assert seeded["samples"].uri == again["samples"].uri  # seeded: the same picture
    from vaelab import plots

    assert seeded["samples"].uri.endswith(base64.b64encode(
        plots.class_grid(rows, row_labels=list(model.class_names), title="")).decode())
    z = model.encode(test.x[:3], c=test.c[:3]).mean
    own = model.decode(z, c=test.c[:3]).mean
    torch.testing.assert_close(model.reconstruct(test.x[:3], c=test.c[:3]), own)


def test_semi_supervised_evaluation_shows_the_classifier_accuracy(cond: Path) -> None:
    """An M2 evaluation carries the classifier's accuracy: the page shows it with its standard
    error (a summary made by hand: the figures are those of any model with a label)."""
    model = load(cond)
    ev = EvaluationSummary.read(cond / "eval.json")
    a, n = 0.85, ev.n
    page = build_report(model, ev.replace(accuracy=a, accuracy_stderr=math.sqrt(a * (1 - a) / n)), seed=0)
    assert "classifier accuracy" in page and f"85.00 ± {100 * math.sqrt(a * (1 - a) / n):.2f} %" in page
    assert "85.0 %" in page  # the card
    assert "classifier accuracy" not in build_report(model, ev, seed=0)


@pytest.mark.slow
def test_conditional_report_opens_in_a_browser(cond: Path) -> None:
    from browser import browser_page

    model = load(cond)
    with browser_page(width=1300, height=900) as (page, errors):
        page.goto((cond / "report.html").resolve().as_uri())
        page.wait_for_load_state("load")
        for sid, heading in sections(model):
            section = page.locator(f"section#{sid}")
            assert section.count() == 1, sid
            assert section.locator("h2").inner_text() == heading
        widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) >= 8 and all(w > 0 for w in widths), widths
        assert page.locator("#figure-samples").get_attribute("data-rows") == "10"
        assert page.locator("#figure-style img").evaluate("i => i.naturalHeight > i.naturalWidth")  # 11 rows of 8
        page.screenshot(path="/tmp/report-conditional.png", full_page=True)
        assert errors == []


# --- the report's own figures ------------------------------------------------------------------


def test_report_figures_for_vectors_and_any_latent_dimension(tmp_path: Path) -> None:
    p = kl_bars([0.5, 0.001, 0.2], tmp_path / "a.png")  # no per-dimension KL: activity only
    assert p.read_bytes().startswith(PNG)
    png = kl_bars([0.5, 0.001], kl_per_dim=[1.2, 0.0])  # no path: the PNG's bytes
    assert isinstance(png, bytes) and png.startswith(PNG)
    assert kl_bars([0.5, 0.001], tmp_path / "b.png", kl_per_dim=[1.2, 0.0]).read_bytes() == png
    decoded = torch.rand(3, 5, 7)  # 3 dimensions x 5 values of vectors (7,)
    p = latent_traversal(decoded, [-2, -1, 0, 1, 2], [4, 0, 2], tmp_path / "c.png")
    assert p.read_bytes().startswith(PNG)
    png = latent_traversal(torch.rand(2, 4, 1, 8, 8), [-1, 0, 1, 2], [1, 0])
    assert imread(io.BytesIO(png)).shape[0] > 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.png"]  # nothing else written
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 5, generator=g) * torch.tensor([3.0, 0.1, 1.0, 0.1, 0.1])
    points, (xlabel, _) = project_2d(z)
    assert points.shape == (200, 2) and "PC1" in xlabel
    assert abs(np.corrcoef(points[:, 0], z[:, 0].numpy())[0, 1]) > 0.95  # PC1 is the widest axis
    assert project_2d(z[:, :2])[0].shape == (200, 2) and project_2d(z[:, :1])[0].shape == (200, 2)
