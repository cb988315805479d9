"""A real headless Chromium for page tests: Debian's ``/usr/bin/chromium`` driven by Playwright.

Playwright's own browser download does not work on our machines (no internet), so we launch
the system browser by path, with flags that keep it off the network.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator

__all__ = ["chromium_path", "browser_page"]

_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    """The system Chromium; a clear failure (not a skip) when it is missing."""
    path = os.environ.get("VAELAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        raise RuntimeError("Chromium not found: apt-get install chromium (CI's .ci/run installs it)")
    return path


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[tuple[object, list[str]]]:
    """Yield ``(page, errors)``: a Playwright page, and a list collecting console errors and
    uncaught page exceptions (assert it is empty at the end of a test)."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=_FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            yield page, errors
        finally:
            browser.close()
