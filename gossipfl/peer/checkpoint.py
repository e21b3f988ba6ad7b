"""Atomic, pickle-free checkpoints of a peer's model, bound to their peer and job.

A checkpoint is one ``.npz`` file (format 2) of plain arrays:

- ``vector``: the flat float32 model;
- ``round``: the last completed round (training resumes at ``round + 1``);
- ``fingerprint``: the model layout's fingerprint (tensor names, shapes, dtypes);
- ``pace``: the peer's typical round duration in seconds (NaN: unknown);
- ``peer``: the peer ID that wrote it; ``network``: the network id of its job;
- ``format``: 2;
- ``digest``: BLAKE2b-128 of all of the above, so that a damaged file that still unzips
  is refused rather than resumed.

It is written to a temporary file, flushed to disk and renamed over the old one, so a
crash or a full disk at any moment leaves either the old or the new checkpoint, never a
torn one; it is read back with ``allow_pickle=False``. Its modification time is when it
was saved (:attr:`Checkpoint.saved_at`).

**Whose checkpoint.** A checkpoint belongs to one peer of one job. The peer is its peer
ID. The *job* is what decides which models can be averaged with which: the network id
(peers with another one refuse each other's handshake, so another network is another
job) and the model layout (the fingerprint). The topology, the merge rule, the number of
rounds and the data may change between restarts: an operator may change them and carry
on. :meth:`CheckpointStore.load` refuses, with a :class:`CheckpointError` that names the
file and what to do, a checkpoint that is empty, truncated, corrupt, of a newer format,
another peer's, another network's or another model's. Two jobs on one network id with
the same model cannot be told apart: give each job its own network id.

**Checkpoints of format 1** (written before the binding, without ``peer``, ``network``
and ``digest``) are accepted with a warning, and bound at the next save. Refusing them
would stop every upgraded peer from resuming a job under way, which is the common case;
accepting them is no worse than before the upgrade (the layout is still checked), and
the warning tells the operator of the one case it cannot catch (a state directory copied
from another peer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gossipfl.errors import ConfigError
from gossipfl.files import WriteFailures, fsync_directory

logger = logging.getLogger(__name__)

Vector = npt.NDArray[np.float32]

FORMAT = 2
"""The checkpoint format this version writes (and the newest it reads)."""
_DIGEST_SIZE = 16


class CheckpointError(ConfigError):
    """A checkpoint exists but cannot be used: empty, corrupt, of a newer format, or
    another peer's, job's or model's. The message names the file and what to do."""


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
    peer: str | None = None
    """The peer ID that wrote it (``None``: a format-1 checkpoint, unbound)."""
    network: str | None = None
    """The network id of its job (``None``: a format-1 checkpoint, unbound)."""


class CheckpointStore:
    """Keeps the latest checkpoint of one peer in ``directory``."""

    FILENAME = "checkpoint.npz"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.FILENAME
        self.failures = WriteFailures(
            logger,
            self.path,
            "training goes on; a restart resumes from the last checkpoint that was written",
        )
        """Rate-limited warnings about saves that failed (a full disk): the runtime keeps
        training and reports them here."""
        self._swept = False

    #: A temporary file younger than this may be another writer's save in progress.
    STRAY_AGE = 5.0

    def _sweep(self) -> None:
        """Remove the temporary files of saves that never finished (the process was
        SIGKILLed or the machine lost power mid-write): nothing else would, and each is
        as large as the model. Once per store, at its first save."""
        self._swept = True
        cutoff = time.time() - self.STRAY_AGE
        for stray in self.directory.glob(".checkpoint-*.npz"):
            try:
                if stray.stat().st_mtime < cutoff:
                    stray.unlink()
                    logger.info("removed %s, left by an interrupted checkpoint save", stray)
            except OSError:
                continue  # gone meanwhile, or not ours to remove: leave it

    def save(
        self,
        round: int,
        vector: Vector,
        fingerprint: bytes,
        *,
        pace: float | None = None,
        peer: str | None = None,
        network: str | None = None,
    ) -> None:
        """Write the checkpoint atomically. ``peer`` and ``network`` bind it (see the
        module doc); without them it is written unbound. Raises :class:`OSError` if it
        cannot be written (the previous checkpoint is then untouched)."""
        vector = np.ascontiguousarray(vector, np.float32)
        fields: dict[str, Any] = {
            "vector": vector,
            "round": np.int64(round),
            "fingerprint": np.frombuffer(fingerprint, np.uint8),
            "pace": np.float64(math.nan if pace is None else pace),
            "peer": np.array("" if peer is None else peer),
            "network": np.array("" if network is None else network),
            "format": np.int64(FORMAT),
        }
        fields["digest"] = np.frombuffer(_digest(fields), np.uint8)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            self._sweep()
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".checkpoint-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **fields)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_directory(self.directory)

    def load(
        self,
        fingerprint: bytes | None = None,
        *,
        peer: str | None = None,
        network: str | None = None,
    ) -> Checkpoint | None:
        """The latest checkpoint, or None if there is none.

        Raises :class:`CheckpointError` if it cannot be read, or (given ``fingerprint``,
        ``peer``, ``network``) belongs to another model layout, peer or network. A
        format-1 checkpoint has no peer or network: with ``peer`` given it is accepted
        with a warning (see the module doc).
        """
        path = self.path
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._unusable(f"cannot be read ({exc.strerror or exc})") from exc
        if stat.st_size == 0:
            raise self._unusable("is empty (0 bytes: a full disk, or a copy that failed?)")
        try:
            ckpt = self._read(stat.st_mtime)
        except CheckpointError:
            raise
        except PermissionError as exc:
            raise self._unusable(
                f"cannot be read ({exc.strerror or exc})",
                fix="give this peer's user access to it, or point the peer elsewhere",
            ) from exc
        except Exception as exc:
            # BadZipFile, EOFError, ValueError, KeyError, NotImplementedError, MemoryError
            # (a damaged header asking for a huge array)...: all mean "damaged".
            raise self._unusable(f"is corrupt or truncated ({type(exc).__name__}: {exc})") from exc
        if peer is not None and ckpt.peer is not None and ckpt.peer != peer:
            raise CheckpointError(
                f"checkpoint {path} belongs to peer {ckpt.peer}, not to this peer ({peer}): "
                "this is another peer's state directory; give this peer its own "
                "(its own home or [output] dir), or remove the checkpoint to start afresh"
            )
        if network is not None and ckpt.network is not None and ckpt.network != network:
            raise CheckpointError(
                f"checkpoint {path} belongs to a job on network {ckpt.network!r}, and this "
                f"peer is on {network!r}: point this peer at another state directory, or "
                "remove the checkpoint to start afresh"
            )
        if fingerprint is not None and ckpt.fingerprint != fingerprint:
            raise CheckpointError(
                f"checkpoint {path} belongs to a different model layout; "
                "remove it or point the peer at another directory"
            )
        if ckpt.peer is None and (peer is not None or network is not None):
            logger.warning(
                "checkpoint %s does not say which peer and job it belongs to (an older "
                "gossipfl wrote it); resuming from it as this peer's, and binding it at "
                "the next save. If this state directory was copied from another peer, "
                "stop this one and remove the checkpoint",
                path,
            )
        return ckpt

    def _read(self, saved_at: float) -> Checkpoint:
        # Opened here, not by np.load: it leaks the file when the archive is damaged.
        with self.path.open("rb") as f, np.load(f, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise self._unusable("is not a checkpoint (not an .npz archive)")
            version = int(data["format"]) if "format" in data.files else 1
            if version > FORMAT:
                raise self._unusable(
                    f"was written by a newer gossipfl (format {version}; this one reads up "
                    f"to {FORMAT}); upgrade gossipfl",
                    fix="",
                )
            fields = {name: np.asarray(data[name]) for name in data.files}
        if version >= 2:
            digest = bytes(np.asarray(fields.pop("digest"), np.uint8))
            if digest != _digest(fields):
                raise self._unusable("is corrupt (its digest does not match its content)")
        vector = np.asarray(fields["vector"])
        if vector.ndim != 1 or vector.dtype != np.float32:
            raise self._unusable(f"holds a {vector.dtype} array of shape {vector.shape}")
        if not np.isfinite(vector).all():
            raise self._unusable("holds NaN or inf")
        round = int(fields["round"])
        if round < 0:
            raise self._unusable(f"has a negative round ({round})")
        return Checkpoint(
            round=round,
            vector=np.array(vector, np.float32),
            fingerprint=bytes(np.asarray(fields["fingerprint"], np.uint8)),
            saved_at=saved_at,
            pace=_finite_or_none(fields["pace"]) if "pace" in fields else None,
            peer=_text_or_none(fields["peer"]) if version >= 2 else None,
            network=_text_or_none(fields["network"]) if version >= 2 else None,
        )

    def _unusable(
        self,
        problem: str,
        *,
        fix: str = "remove it (the peer then starts afresh) or restore a good copy",
    ) -> CheckpointError:
        return CheckpointError(f"checkpoint {self.path} {problem}" + (f"; {fix}" if fix else ""))


def _digest(fields: dict[str, Any]) -> bytes:
    """BLAKE2b over every field but ``digest``, names and dtypes and shapes included."""
    h = hashlib.blake2b(digest_size=_DIGEST_SIZE, person=b"gossipfl-ckpt")
    for name in sorted(fields):
        value = np.ascontiguousarray(fields[name])
        head = json.dumps([name, value.dtype.str, list(value.shape)]).encode()
        h.update(len(head).to_bytes(4, "little") + head)
        h.update(value.tobytes())
    return h.digest()


def _finite_or_none(value: object) -> float | None:
    number = float(np.asarray(value))
    return number if math.isfinite(number) and number > 0 else None


def _text_or_none(value: npt.NDArray[Any]) -> str | None:
    if value.dtype.kind != "U" or value.ndim != 0:
        raise ValueError(f"a {value.dtype} array of shape {value.shape} where text belongs")
    return str(value[()]) or None
