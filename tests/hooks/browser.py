"""Open a page in headless Chromium and report what went wrong: broken images, console errors.

Talks the DevTools protocol over ``--remote-debugging-pipe`` (NUL-separated JSON on file
descriptors 3 and 4), so it needs nothing but the ``chromium`` binary: no driver, no package.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]

# Lists every <img> with its natural size once the page's load event has fired.
_IMAGES_JS = (
    "JSON.stringify(Array.from(document.images)"
    ".map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight]))"
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


class _Pipe:
    """One DevTools connection: numbered calls, events buffered until someone asks."""

    def __init__(self, write_fd: int, read_fd: int, deadline: float) -> None:
        self.write_fd, self.read_fd, self.deadline = write_fd, read_fd, deadline
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self._buf = b""

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> Any:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._read())

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (did it crash?)")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return dict(json.loads(raw))


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
        timeout: seconds for the whole visit.
        chromium: the browser binary; found on PATH by default.
    """
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium not found on PATH")
    # Chromium reads commands from fd 3 and writes replies to fd 4.
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    # Above 10 so the dup2s below cannot overwrite each other's source.
    child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
    child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
    for fd in (to_browser_r, from_browser_w):
        os.close(fd)

    def wire_pipes() -> None:
        os.dup2(child_in, 3)
        os.dup2(child_out, 4)

    check = PageCheck()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=wire_pipes,
        )
        os.close(child_in)
        os.close(child_out)
        pipe = _Pipe(to_browser_w, from_browser_r, time.monotonic() + timeout)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session,
            )
            pipe.call("Page.navigate", {"url": url}, session)
            pipe.wait_for("Page.loadEventFired")
            result = pipe.call(
                "Runtime.evaluate", {"expression": _IMAGES_JS, "returnByValue": True}, session
            )
            found = json.loads(result["result"]["value"])
            check.images = [(str(src), int(w), int(h)) for src, w, h in found]
            if screenshot is not None:
                params: dict[str, Any] = {"format": "png"}
                if full_page:
                    size = pipe.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
                    params["captureBeyondViewport"] = True
                    params["clip"] = {
                        "x": 0,
                        "y": 0,
                        "width": width,
                        "height": size["height"],
                        "scale": 1,
                    }
                shot = pipe.call("Page.captureScreenshot", params, session)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            with_errors = pipe.events
            pipe.call("Browser.close")
        finally:
            os.close(to_browser_w)
            os.close(from_browser_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for event in with_errors:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            check.errors.append(" ".join(str(a.get("value", a)) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            check.errors.append(str(params.get("exceptionDetails", {}).get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            check.errors.append(f"{entry.get('text')} ({entry.get('url', '')})")
        elif method == "Network.requestWillBeSent":
            check.requests.append(params["request"]["url"])
    return check
