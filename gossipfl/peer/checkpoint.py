"""Atomic, pickle-free checkpoints of a peer's model.

A checkpoint is one ``.npz`` file holding the flat model, the round it completes and the
layout fingerprint; it is written to a temporary file, flushed to disk and renamed over the
old one, so a crash at any moment leaves either the old or the new checkpoint, never a torn
one. It is read back with ``allow_pickle=False``.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gossipfl.errors import ConfigError, GossipflError

Vector = npt.NDArray[np.float32]


class CheckpointError(GossipflError):
    """A checkpoint exists but cannot be used (corrupt, or another model's)."""


@dataclass(frozen=True, eq=False)
class Checkpoint:
    round: int
    """The last completed round; training resumes at ``round + 1``."""
    vector: Vector
    fingerprint: bytes
    saved_at: float | None = None
    """When the checkpoint was written (wall clock, seconds since the epoch: the file's
    modification time). A resuming peer uses it to bound how far its neighbours can have
    got meanwhile."""
    pace: float | None = None
    """The peer's typical round duration in seconds when it was written (if known), which
    turns that time into rounds."""


class CheckpointStore:
    """Keeps the latest checkpoint of one peer in ``directory``."""

    FILENAME = "checkpoint.npz"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.FILENAME

    def save(
        self, round: int, vector: Vector, fingerprint: bytes, *, pace: float | None = None
    ) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".checkpoint-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    vector=np.asarray(vector, np.float32),
                    round=np.int64(round),
                    fingerprint=np.frombuffer(fingerprint, np.uint8),
                    pace=np.float64(math.nan if pace is None else pace),
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, fingerprint: bytes | None = None) -> Checkpoint | None:
        """The latest checkpoint, or None if there is none. With ``fingerprint``, refuse a
        checkpoint of a different model layout."""
        if not self.path.exists():
            return None
        try:
            saved_at = self.path.stat().st_mtime
            with np.load(self.path, allow_pickle=False) as data:
                ckpt = Checkpoint(
                    round=int(data["round"]),
                    vector=np.array(data["vector"], np.float32),
                    fingerprint=bytes(np.asarray(data["fingerprint"], np.uint8)),
                    saved_at=saved_at,
                    pace=_finite_or_none(data["pace"]) if "pace" in data.files else None,
                )
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {self.path} is unreadable: {exc}") from exc
        if fingerprint is not None and ckpt.fingerprint != fingerprint:
            raise ConfigError(
                f"checkpoint {self.path} belongs to a different model layout; "
                "remove it or point the peer at another directory"
            )
        return ckpt


def _finite_or_none(value: object) -> float | None:
    number = float(np.asarray(value))
    return number if math.isfinite(number) and number > 0 else None
