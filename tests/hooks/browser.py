"""Open a page in headless Chromium and report what went wrong: broken images, console errors.

Playwright drives the system's Chromium (``executable_path``); its Python package carries its
own driver, so nothing is downloaded (no ``playwright install``). It is in the ``dev`` extra.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
]

# Every <img> with its natural size, once the page's load event has fired.
_IMAGES_JS = (
    "Array.from(document.images)"
    ".map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight])"
)


def find_chromium() -> str | None:
    """The Chromium (or Chrome) binary on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageCheck:
    """What loading one page showed.

    Attributes:
        images: (src, naturalWidth, naturalHeight) of every ``<img>``.
        errors: console errors, uncaught exceptions and failed loads, as text.
        requests: every URL the page requested, the page itself included.
    """

    images: list[tuple[str, int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    @property
    def broken_images(self) -> list[str]:
        return [src for src, width, _ in self.images if width == 0]


def check_page(
    url: str,
    *,
    screenshot: Path | None = None,
    width: int = 1280,
    height: int = 900,
    full_page: bool = True,
    timeout: float = 60.0,
    chromium: str | None = None,
) -> PageCheck:
    """Load ``url`` in headless Chromium, wait for its load event, and inspect it.

    Args:
        url: the page, e.g. ``Path("report.html").resolve().as_uri()``.
        screenshot: write a PNG of the page here.
        width: viewport width in CSS pixels.
        height: viewport height; the screenshot is this tall unless ``full_page``.
        full_page: screenshot the whole page, not just the viewport.
        timeout: seconds for each step (launch, load, screenshot).
        chromium: the browser binary; found on PATH by default.
    """
    from playwright.sync_api import sync_playwright  # the dev extra; only this test needs it

    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium not found on PATH")
    check = PageCheck()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=ARGS, timeout=timeout * 1000)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout * 1000)
            page.on("request", lambda r: check.requests.append(r.url))
            page.on("requestfailed", lambda r: check.errors.append(f"{r.failure} ({r.url})"))
            page.on("pageerror", lambda e: check.errors.append(str(e)))
            page.on(
                "console",
                lambda m: check.errors.append(m.text) if m.type in ("error", "assert") else None,
            )
            page.goto(url, wait_until="load")
            found = page.evaluate(_IMAGES_JS)
            check.images = [(str(src), int(w), int(h)) for src, w, h in found]
            if screenshot is not None:
                page.screenshot(path=screenshot, full_page=full_page)
        finally:
            browser.close()
    return check
