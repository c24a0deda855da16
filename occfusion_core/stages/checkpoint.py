"""Resumable checkpoints of a training stage: the last two kept, an unreadable one moved aside, and
the identity of the inputs and settings, so a checkpoint is resumed only by the run it belongs to."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..io import InputError, load_torch, save_torch

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.previous.pt"


class CheckpointStore:
    """The checkpoints of one stage in a folder: the latest and the one before it.

    A run killed while writing leaves the latest intact (each file is written atomically); a file
    that cannot be read anyway (a disk that filled, a copy cut short) is renamed ``*.unreadable``
    with a warning naming it, and the previous checkpoint, or a fresh start, takes its place.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.latest = self.folder / CHECKPOINT_NAME
        self.previous = self.folder / PREVIOUS_NAME
        self.loaded_from: Path | None = None
        """The file :meth:`load` last returned a checkpoint from."""

    def save(self, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.latest.exists():
            os.replace(self.latest, self.previous)
        save_torch(self.latest, state)

    def load(self, signature: str, map_location: str = "cpu") -> dict[str, Any] | None:
        """The newest readable checkpoint written with ``signature``; None when there is none."""
        for path in (self.latest, self.previous):
            if not path.exists():
                continue
            try:
                state = load_torch(path, map_location=map_location)
            except InputError as err:
                aside = path.with_name(path.name + ".unreadable")
                os.replace(path, aside)
                log.warning("checkpoint %s cannot be read (%s); moved it to %s and resume from the one before, "
                            "if any", path, err.problem, aside)
                continue
            if state.get("signature") == signature:
                self.loaded_from = path
                return state
            log.info("ignoring checkpoint %s, written with other settings or inputs", path)
        return None


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """First 16 hex digits of the SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def config_digest(obj) -> str:
    """First 16 hex digits of the SHA-256 of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
