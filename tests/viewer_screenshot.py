"""The viewer (python -m occfusion_core.viewer) in headless Chromium: started on a free port,
waited for until the avatar is drawn, stopped; used by tests/test_viewer.py and for the README's
picture:

    python -m tests.viewer_screenshot results/synth/occfusion docs/images/viewer.png
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.browser import PageResult, open_page

ROOT = Path(__file__).resolve().parents[1]

VIEWER_READY_JS = """async () => {
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  // the control panel's status line is written once the first pose has been sent
  for (let i = 0; i < 600 && !document.body.innerText.includes('frame 1 of'); i++) await sleep(50);
  if (!document.body.innerText.includes('frame 1 of')) throw new Error('the viewer never showed a frame');
  // the notice that WebGL runs on the CPU (SwiftShader) would cover the picture
  document.querySelectorAll('.mantine-Notification-closeButton').forEach((b) => b.click());
  // the splats are sorted by depth in a web worker before they draw: a few frames on SwiftShader
  await sleep(4000);
  const canvas = [...document.querySelectorAll('canvas')].sort((a, b) => b.width * b.height - a.width * a.height)[0];
  return canvas.getBoundingClientRect().toJSON();
}"""
"""Waits until the viewer shows its first frame and has had time to draw it; returns the 3D canvas's
rectangle on the page (CSS pixels: x, y, width, height)."""


@contextlib.contextmanager
def running_viewer(variant_dir: Path, *extra_args: str, start_s: float = 120.0) -> Iterator[str]:
    """``python -m occfusion_core.viewer variant_dir --port 0`` in a subprocess; yields its URL, and
    stops it (SIGTERM, then SIGKILL after 30 s) when the block ends.

    Raises:
        RuntimeError: it exited or printed no URL within ``start_s`` (its output in the message).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "occfusion_core.viewer", str(variant_dir), "--port", "0", *extra_args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url, lines, deadline = None, [], time.time() + start_s
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:  # it exited
                break
            lines.append(line)
            if found := re.match(r"viewer: (http://\S+)", line):
                url = found.group(1)
        if url is None:
            raise RuntimeError("the viewer printed no URL:\n" + "".join(lines))
        # keep reading its output, so that a full pipe never blocks it
        threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def screenshot_viewer(url: str, screenshot: Path, wait_s: float = 40.0) -> PageResult:
    """Open the viewer at ``url``, wait for the avatar (:data:`VIEWER_READY_JS`) and screenshot it."""
    return open_page(url, wait_s=wait_s, screenshot=screenshot, evaluate=VIEWER_READY_JS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.viewer_screenshot", description="Screenshot the viewer on a variant's results."
    )
    parser.add_argument("variant_dir", type=Path, help="results/<subject>/<variant>")
    parser.add_argument("screenshot", type=Path, help="the PNG to write, e.g. docs/images/viewer.png")
    args = parser.parse_args(argv)
    with running_viewer(args.variant_dir) as url:
        result = screenshot_viewer(url, args.screenshot)
    print(
        f"wrote {result.screenshot}" + (f"; console errors: {result.console_errors}" if result.console_errors else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
