"""The latent space explorer in a real headless Chromium (tests/browser.py), against a real
``python -m vaelab serve`` subprocess on a free loopback port.

One walk through the page, as a person would: the map draws, hovering shows an example, a click
decodes, a slider re-decodes, new samples come, an uploaded PNG is scored, a text file is
refused with a message and the page goes on working. No console errors other than the one
422 answer the text file is meant to get. A second walk through the page of a conditional
model: the class selector re-decodes the chosen point, the samples and the upload's score.
"""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import browser_page
from PIL import Image

import vaelab.runs

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(tmp_path_factory: pytest.TempPathFactory, **kw: Any) -> Path:
    model, _ = vaelab.runs.train(data="digits", hidden=[32], latent_dim=2, epochs=2, eval_k=0, device="cpu",
                                 out=str(tmp_path_factory.mktemp("runs")), name="r", figures=False, progress=False,
                                 log=lambda m: None, **kw)
    return model.run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory)


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory, condition_on=["label"])


@pytest.fixture
def server(run_dir: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    yield from serving(run_dir)


@pytest.fixture
def conditional_server(conditional_run: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    yield from serving(conditional_run)


def serving(run_dir: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``python -m vaelab serve RUN`` on a free port, once it answers; stopped afterwards."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", "serve", str(run_dir), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the server stopped: {proc.communicate()}"
            try:
                with urllib.request.urlopen(url + "api/info", timeout=2) as r:
                    assert r.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer within 60 s"
                time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def wait_changed(page: Any, selector: str, before: str | None) -> str:
    """Wait until the img in ``selector`` shows something other than ``before``; its src."""
    page.wait_for_function(
        "([sel, before]) => { const i = document.querySelector(sel + ' img'); return i && i.src !== before; }",
        arg=[selector, before], timeout=15_000,
    )
    return page.eval_on_selector(f"{selector} img", "i => i.src")


def src(page: Any, selector: str) -> str | None:
    return page.evaluate("sel => { const i = document.querySelector(sel + ' img'); return i ? i.src : null; }", selector)


def test_explorer_page_end_to_end(server: tuple[str, subprocess.Popen[str]], tmp_path: Path) -> None:
    url, proc = server
    digit = tmp_path / "ring.png"
    img = Image.new("L", (56, 56), 0)
    for a in np.linspace(0, 2 * np.pi, 400):
        img.putpixel((int(28 + 18 * np.cos(a)), int(28 + 22 * np.sin(a))), 255)
    img.save(digit)
    text = tmp_path / "notes.txt"
    text.write_text("not an image at all\n")

    with browser_page() as (page, errors):
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert "Latent space explorer" in page.title() + page.inner_text("h1")
        assert "digits" in page.inner_text("#summary")
        assert page.is_hidden("#context-bar")  # an unconditional model has no class to choose

        # the map has drawn its points: many pixels in the label colours, not just background
        coloured = page.evaluate("""() => {
            const c = document.getElementById('map'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) if (Math.max(d[i], d[i+1], d[i+2]) - Math.min(d[i], d[i+1], d[i+2]) > 60) n++;
            return n; }""")
        assert coloured > 500
        assert page.locator("#legend span").count() == 10

        # hovering a point shows its input and reconstruction
        box = page.locator("#map").bounding_box()
        u, v = page.evaluate("() => px(state.map.coords[5])")
        page.mouse.move(box["x"] + u, box["y"] + v)
        page.wait_for_selector("#hover-input img", timeout=15_000)
        assert "test example" in page.inner_text("#hover-text")

        # a click on an empty spot decodes that point of the plane
        before = src(page, "#current")
        u, v = page.evaluate("""() => { const s = mapView.size;
            for (let a = 0.06; a < 0.5; a += 0.02) for (const [p, q] of [[a, a], [1 - a, a], [a, 1 - a], [1 - a, 1 - a]])
                if (nearest(p * s, q * s) < 0) return [p * s, q * s]; }""")
        page.mouse.click(box["x"] + u, box["y"] + v)
        after_click = wait_changed(page, "#current", before)
        assert "map point" in page.inner_text("#current-source")

        # moving a slider re-decodes at once
        page.locator("#sliders input[type=range]").first.fill("3.5")
        wait_changed(page, "#current", after_click)
        assert "sliders" in page.inner_text("#current-source")

        # the sample button draws a new grid
        first = src(page, "#samples > div:first-child")
        page.click("#sample-btn")
        wait_changed(page, "#samples > div:first-child", first)
        assert page.locator("#samples img").count() == 16

        # an uploaded PNG is reconstructed and scored
        page.set_input_files("#file", str(digit))
        page.wait_for_selector("#upload-result:not([hidden]) #up-rec img", timeout=30_000)
        assert re.fullmatch(r"−?\d+\.\d\d ± \d+\.\d\d nats", page.inner_text("#up-logpx"))
        assert "standard error" in page.inner_text("#up-explain")
        assert "resized from 56 x 56" in page.inner_text("#up-notes")
        assert page.is_hidden("#upload-error")

        # a text file is refused with a message, and the page goes on working
        page.set_input_files("#file", str(text))
        page.wait_for_selector("#upload-error:not([hidden])", timeout=15_000)
        assert "not an image" in page.inner_text("#upload-error")
        first = src(page, "#samples > div:first-child")
        page.click("#sample-btn")
        wait_changed(page, "#samples > div:first-child", first)

        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"), dtype=np.float64)
        assert pixels.shape[0] > 800 and pixels.std() > 20

        # the only console error is the browser's note of the 422 answer to the text file
        expected = [e for e in errors if "status of 422" in e]
        assert len(expected) == 1 and [e for e in errors if e not in expected] == [], errors

    assert proc.poll() is None  # still serving
    proc.terminate()
    out, err = proc.communicate(timeout=15)
    assert f"open {url} in a browser" in out
    assert "Traceback" not in err


def ring_png(path: Path) -> Path:
    img = Image.new("L", (56, 56), 0)
    for a in np.linspace(0, 2 * np.pi, 400):
        img.putpixel((int(28 + 18 * np.cos(a)), int(28 + 22 * np.sin(a))), 255)
    img.save(path)
    return path


def test_conditional_explorer_decodes_under_the_chosen_class(conditional_server: tuple[str, subprocess.Popen[str]],
                                                             tmp_path: Path) -> None:
    url, proc = conditional_server
    ring = ring_png(tmp_path / "ring.png")
    with browser_page() as (page, errors):
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert page.is_visible("#context-bar") and page.is_visible("#class-select")
        assert page.locator("#class-select option").count() == 10
        assert "log p(x|c)" in page.inner_text("#context-hint")
        # the chosen point is test example 0's reconstruction, so the selector shows its label
        first_label = page.evaluate("() => state.map.labels[0]")
        assert page.input_value("#class-select") == str(first_label)
        assert page.inner_text("#current-context") == f"decoded as class {first_label}"

        # another class: the chosen point and the samples are decoded again, under it
        other = str((first_label + 5) % 10)
        point, sample = src(page, "#current"), src(page, "#samples > div:first-child")
        page.select_option("#class-select", other)
        wait_changed(page, "#current", point)
        wait_changed(page, "#samples > div:first-child", sample)
        assert page.inner_text("#current-context") == f"decoded as class {other}"
        assert f"class {other}" in page.inner_text("#sample-title")
        # ... and back: the same images as before (a class, not chance, made the change)
        page.select_option("#class-select", str(first_label))
        page.wait_for_function("src => document.querySelector('#current img').src === src", arg=point, timeout=15_000)
        page.wait_for_function("src => document.querySelector('#samples > div:first-child img').src === src",
                               arg=sample, timeout=15_000)

        # hovering a point shows its input, its reconstruction under its own label, and the label
        box = page.locator("#map").bounding_box()
        u, v = page.evaluate("() => px(state.map.coords[3])")
        page.mouse.move(box["x"] + u, box["y"] + v)
        page.wait_for_selector("#hover-rec img", timeout=15_000)
        assert "label" in page.inner_text("#hover-text")

        # an upload is scored under the selected class, and again under a newly chosen one
        page.set_input_files("#file", str(ring))
        page.wait_for_selector("#upload-result:not([hidden]) #up-rec img", timeout=30_000)
        assert page.inner_text("#up-logpx-name") == "log p(x|c)"
        assert f"class {first_label}" in page.inner_text("#up-class")
        assert "scored under c = class" in page.inner_text("#up-explain")
        page.locator("#legend span").nth(int(other)).click()  # the legend chooses a class too
        assert page.input_value("#class-select") == other
        page.wait_for_function("k => document.getElementById('up-class').textContent.includes('class ' + k)",
                               arg=other, timeout=30_000)

        shot = tmp_path / "conditional.png"
        page.screenshot(path=str(shot), full_page=True)
        pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"), dtype=np.float64)
        assert pixels.shape[0] > 800 and pixels.std() > 20
        assert errors == [], errors
    assert proc.poll() is None


def test_another_site_cannot_make_the_browser_use_the_explorer(server: tuple[str, subprocess.Popen[str]],
                                                               tmp_path: Path) -> None:
    """A page from another origin (another port: another site to the browser) tries what a
    malicious page would: a JSON fetch (the browser asks first, with a preflight the explorer
    refuses), a no-CORS fetch with a simple content type and a form POST (sent without asking:
    the explorer answers 415 before any work), and an upload of raw bytes without a type."""
    url, _ = server
    target = url.rstrip("/")
    (tmp_path / "evil.html").write_text(f"""<!doctype html><html><body>
<form id="f" method="POST" action="{target}/api/decode" target="sink" enctype="text/plain">
  <input name='{{"z": [0, 0], "x": "' value='"}}'></form>
<iframe name="sink"></iframe>
<script>
window.results = {{}};
fetch("{target}/api/decode", {{method: "POST", headers: {{"Content-Type": "application/json"}}, body: '{{"z": [0, 0]}}'}})
  .then(r => results.json = r.status, e => results.json = "blocked");
fetch("{target}/api/decode", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body: '{{"z": [0, 0]}}'}})
  .then(r => results.simple = r.type, e => results.simple = "error");
fetch("{target}/api/upload?name=a.npy", {{method: "POST", mode: "no-cors", body: new Uint8Array([1, 2, 3])}})
  .then(r => results.upload = r.type, e => results.upload = "error");
document.getElementById("f").submit();
</script></body></html>""")
    port = free_port()
    site = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                             str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/evil.html", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the other site did not start"
                time.sleep(0.1)
        with browser_page() as (page, _errors):  # the refusals are console errors on that page, as they should be
            answers: list[tuple[str, str, int]] = []
            page.on("response", lambda r: answers.append((r.request.method, r.url, r.status))
                    if r.url.startswith(target + "/api/") else None)
            page.goto(f"http://127.0.0.1:{port}/evil.html")
            page.wait_for_function("() => window.results.json && window.results.simple && window.results.upload",
                                   timeout=15_000)
            page.wait_for_timeout(500)  # the form's answer
            assert page.evaluate("() => window.results.json") == "blocked"  # the preflight got a 403
            statuses = [status for method, _, status in answers if method == "POST"]
            assert statuses and all(s in (403, 415) for s in statuses), answers
            assert len(statuses) >= 3, answers  # the no-CORS fetch, the upload and the form all reached it, refused
    finally:
        site.terminate()
        site.communicate(timeout=15)
