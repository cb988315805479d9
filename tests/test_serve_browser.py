"""The latent space explorer in a real headless Chromium (tests/browser.py), against a real
``python -m vaelab serve`` subprocess on a free loopback port.

One walk through the page, as a person would: the map draws, hovering shows an example, a click
decodes, a slider re-decodes, new samples come, an uploaded PNG is scored, a text file is
refused with a message and the page goes on working. No console errors other than the one
422 answer the text file is meant to get.
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


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = vaelab.runs.train(data="digits", hidden=[32], latent_dim=2, epochs=2, eval_k=0, device="cpu",
                                 out=str(tmp_path_factory.mktemp("runs")), name="r", figures=False, progress=False,
                                 log=lambda m: None)
    return model.run_dir


@pytest.fixture
def server(run_dir: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
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
