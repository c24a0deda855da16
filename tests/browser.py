"""Headless Chromium for tests that open a page: the Snakemake report, the viewer.

Playwright (the ``browser`` extra; ``make chromium``) drives Debian's ``chromium`` (no browser
download). WebGL runs on SwiftShader, Chromium's CPU renderer, so canvases draw without a GPU.
Without Chromium or Playwright the tests skip, saying why; with ``OCCFUSION_REQUIRE_BROWSER=1``
(CI) they fail instead.

    python -m tests.browser URL --screenshot page.png [--evaluate JS]
    python -m tests.browser report results/report.zip docs/images/report.png
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import shutil
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
REQUIRE_ENV = "OCCFUSION_REQUIRE_BROWSER"
VIEWPORT = {"width": 1400, "height": 900}
CHROMIUM_ARGS = [
    # WebGL on the CPU: headless Chromium has no GPU process to draw with otherwise
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    # videos may start without a click (the report's video pages autoplay)
    "--autoplay-policy=no-user-gesture-required",
]


def chromium_path() -> str | None:
    """Debian's Chromium executable, or None when it is not installed."""
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _missing_browser() -> str | None:
    """Why no browser test can run here, or None when one can."""
    if chromium_path() is None:
        return "Chromium is not installed (make chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (make chromium)"
    return None


def require_browser() -> str:
    """Chromium's path for a test; skips the test when it is missing, or fails it when
    OCCFUSION_REQUIRE_BROWSER=1 (CI, where it must be there)."""
    import pytest

    reason = _missing_browser()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_ENV}=1")
        pytest.skip(reason)
    return chromium_path()


@dataclass
class PageResult:
    """What a page did: console errors and uncaught exceptions, the value of the evaluated JS
    expression (None when none was given), and the screenshot's path (None when none was taken)."""

    console_errors: list[str] = field(default_factory=list)
    value: Any = None
    screenshot: Path | None = None


def _bounded(expression: str, seconds: float) -> str:
    """``expression`` (JS: a value, a promise, or a function Playwright would call) as one that
    gives up after ``seconds`` instead of waiting for ever."""
    return (
        "(async () => {"
        f" const run = (async () => {{ const v = ({expression});"
        " return typeof v === 'function' ? await v() : await v; })();"
        " const limit = new Promise((_, reject) => setTimeout("
        f"() => reject(new Error('evaluate: no result after {seconds:g} s')), {int(seconds * 1000)}));"
        " return await Promise.race([run, limit]);"
        "})()"
    )


def _describe(message) -> str:
    """A console message with where it came from (a failed load's message names no URL)."""
    where = message.location.get("url") if message.location else None
    return f"{message.text} ({where})" if where else message.text


def open_page(
    url: str,
    *,
    wait_s: float = 10.0,
    screenshot: Path | None = None,
    evaluate: str | None = None,
) -> PageResult:
    """Open ``url`` in headless Chromium and wait for it to load.

    Args:
        url: an http(s) or file URL.
        wait_s: how long loading, and then the evaluation, may take each.
        screenshot: where to write a PNG of the viewport after the evaluation; None takes none.
        evaluate: a JS expression evaluated in the page once it has loaded (a function is called,
            a promise awaited): a test's checks, or clicks that bring a view up for the screenshot.

    Raises:
        RuntimeError: Chromium or Playwright is missing.
        playwright's Error: the page did not load, or the evaluation threw or took too long.
    """
    reason = _missing_browser()
    if reason is not None:
        raise RuntimeError(reason)
    from playwright.sync_api import sync_playwright

    result = PageResult()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on("console", lambda msg: msg.type == "error" and result.console_errors.append(_describe(msg)))
            page.on("pageerror", lambda error: result.console_errors.append(f"uncaught: {error}"))
            page.goto(url, wait_until="load", timeout=wait_s * 1000)
            with contextlib.suppress(Exception):  # pages that keep a connection open never go idle
                page.wait_for_load_state("networkidle", timeout=wait_s * 1000)
            if evaluate is not None:
                result.value = page.evaluate(_bounded(evaluate, wait_s))
            if screenshot is not None:
                screenshot = Path(screenshot)
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot))
                result.screenshot = screenshot
        finally:
            browser.close()
    return result


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/favicon.ico":  # asked for by Chromium itself, not by the page: no 404 error
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format, *args):  # noqa: A002  (the base class's name)
        pass


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on a free local port; yields the base URL (ending in '/').

    Pages served from one origin may script their frames (file:// pages may not), so a test can
    look inside the report's result frames."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# --- Snakemake reports (snakemake --report results/report.zip) ----------------------------------


def unpack_report(report_zip: Path, dest: Path) -> Path:
    """Extract a zipped Snakemake report; returns the path of its ``report.html``."""
    with zipfile.ZipFile(report_zip) as archive:
        archive.extractall(dest)
    pages = sorted(Path(dest).glob("*/report.html"))
    if len(pages) != 1:
        raise ValueError(f"{report_zip}: expected one <folder>/report.html, found {pages}")
    return pages[0]


REPORT_VIDEOS_JS = """async () => {
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const until = async (probe, what) => {
    for (let i = 0; i < 400; i++) {
      const found = probe();
      if (found) return found;
      await sleep(25);
    }
    throw new Error('the report never showed ' + what);
  };
  // the summary table: the description of summary.csv, opened as its link in the workflow text does
  app.showResultInfo('results/summary.csv');
  const table = await until(() => document.querySelector('nav table.summary-table'), 'the summary table');
  const header = [...table.querySelectorAll('thead th')].map((th) => th.textContent.trim());
  const rows = [...table.querySelectorAll('tbody tr')].map(
    (tr) => Object.fromEntries([...tr.cells].map((td, i) => [header[i], td.textContent.trim()])));
  // a variant's videos page, through its view button, as a reader clicks it
  // the method's own page where there is one (the README's picture), else the first
  const pages = Object.keys(results).sort().filter((path) => path.endsWith('/renders/videos.html'));
  const page = pages.find((path) => path.endsWith('/occfusion/renders/videos.html')) || pages[0];
  app.showResultInfo(page);
  await sleep(100);
  const button = await until(() => document.querySelector('nav table a'), 'the view button of ' + page);
  button.click();
  const frame = await until(() => document.querySelector('iframe'), 'the frame of ' + page);
  const videos = await until(() => {
    const doc = frame.contentDocument;
    const found = doc ? [...doc.querySelectorAll('video')] : [];
    return found.length && found.every((v) => v.readyState >= 1 || v.error) && found;
  }, 'the videos of ' + page);
  const descriptions = Object.values(results).map((r) => r.caption).concat([workflow_desc]);
  return {
    rows,
    page,
    videos: videos.map((v) => ({src: v.currentSrc, duration: v.duration, width: v.videoWidth,
                                error: v.error ? v.error.message || String(v.error.code) : null})),
    docutils_problems: descriptions.filter((d) => d.includes('system-message')).length,
  };
}"""
"""Shows a report's summary table, then a variant's videos page; returns the table's rows, the
videos' durations and how many descriptions have docutils error messages in them."""


def screenshot_report(report_zip: Path, screenshot: Path, wait_s: float = 20.0) -> PageResult:
    """Screenshot a zipped report showing a variant's videos page (the README's picture)."""
    with tempfile.TemporaryDirectory() as tmp:
        page = unpack_report(report_zip, Path(tmp))
        with serve_directory(Path(tmp)) as base:
            return open_page(
                f"{base}{page.relative_to(tmp).as_posix()}",
                wait_s=wait_s,
                screenshot=screenshot,
                # the video controls fade out after a few seconds of playing without the mouse
                evaluate=f"async () => {{ const shown = await ({REPORT_VIDEOS_JS})(); "
                "await new Promise((done) => setTimeout(done, 4000)); return shown; }",
            )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        parser = argparse.ArgumentParser(
            prog="python -m tests.browser report", description="Screenshot a zipped Snakemake report."
        )
        parser.add_argument("report_zip", type=Path)
        parser.add_argument("screenshot", type=Path)
        args = parser.parse_args(argv[1:])
        result = screenshot_report(args.report_zip, args.screenshot)
    else:
        parser = argparse.ArgumentParser(
            prog="python -m tests.browser", description="Open a page in headless Chromium."
        )
        parser.add_argument("url")
        parser.add_argument("--screenshot", type=Path)
        parser.add_argument("--evaluate")
        parser.add_argument("--wait", type=float, default=10.0)
        args = parser.parse_args(argv)
        url = args.url if "://" in args.url else Path(args.url).resolve().as_uri()
        result = open_page(url, wait_s=args.wait, screenshot=args.screenshot, evaluate=args.evaluate)
    print(
        json.dumps(
            {
                "console_errors": result.console_errors,
                "value": result.value,
                "screenshot": str(result.screenshot) if result.screenshot else None,
            },
            indent=1,
        )
    )
    return 1 if result.console_errors else 0


if __name__ == "__main__":
    sys.exit(main())
