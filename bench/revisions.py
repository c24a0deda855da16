"""Another git revision of this repository, checked out beside the working tree for a side-by-side
timing (``--against REV`` of the bench scripts): a speed-up is then a ratio measured in one run, on
one machine in one state, each revision timed by its own code."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout(rev: str, parent: Path) -> Path:
    """``git worktree add`` of ``rev`` under ``parent``, with its C++ extension built (a failed build
    is reported; that revision's runs then use whatever its 'auto' backend finds)."""
    path = parent / f"rev_{rev.replace('/', '_')}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(path), rev],
                   check=True, capture_output=True)
    build = subprocess.run([sys.executable, "-m", "occfusion_core.render.backends.cpp", "--build"], cwd=path,
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(path)))
    if build.returncode != 0:
        print(f"note: the C++ extension of {rev} did not build; its runs use what 'auto' finds\n{build.stderr[-500:]}")
    return path


def remove(path: Path) -> None:
    """Undo :func:`checkout`."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """:func:`checkout` into a temporary folder, removed on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        path = checkout(rev, Path(tmp))
        try:
            yield path
        finally:
            remove(path)
