"""Run a stage with its output going to the rule's log file."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("occfusion")


def host_has_nvidia_gpu() -> bool:
    """Whether this machine exposes an NVIDIA GPU (device nodes; cheap: no torch import)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/dxg")


@contextlib.contextmanager
def run_logged(log_path: str | os.PathLike | None, threads: int | None = None) -> Iterator[logging.Logger]:
    """Send logging, stdout and stderr (progress bars included) to ``log_path``; set torch threads.

    An exception is written to the log with its traceback and re-raised, so Snakemake marks the job
    failed and removes its outputs.
    """
    stream = None
    old_out, old_err = sys.stdout, sys.stderr
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "a", buffering=1)
        sys.stdout = sys.stderr = stream
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    start = time.time()
    try:
        yield log
        log.info("finished in %.1f s", time.time() - start)
    except BaseException:
        log.error("failed after %.1f s:\n%s", time.time() - start, traceback.format_exc())
        raise
    finally:
        root.removeHandler(handler)
        sys.stdout, sys.stderr = old_out, old_err
        if stream:
            stream.close()
