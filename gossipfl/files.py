"""Files that a full disk or a crash never leaves half-written.

A peer keeps training when its disk fills up: losing a metrics row or a checkpoint is
better than losing the job. What it must never do is leave a file that a reader (or its
own restart) chokes on. Two kinds of file, two techniques:

- **whole files** (``shard.json``, a checkpoint) are written to a temporary file in the
  same directory, flushed to disk and renamed over the old one (:func:`write_atomic`):
  a failure at any moment leaves the old file or the new one, never an empty or torn one;
- **append-only logs** (``metrics.jsonl``, ``models.bin``) get each record whole or not at
  all (:class:`AppendOnlyFile`): a write that fails part-way is cut back to where the
  record began, and the next record is not appended until that succeeded. A torn last
  record left by a power loss is cut off when the file is opened again, and readers skip
  one anyway.

Failures are reported by :class:`WriteFailures`: the first at once at WARNING (so an
operator sees it with the CLI's default logging), then at most one line per period with
the number of failures since, and one line when writing works again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

#: Seconds between two warnings about the same file that keeps failing.
PERIOD = 60.0


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by a file holding ``data``, atomically (see the module doc).

    Raises :class:`OSError` when the disk is full (or anything else fails); ``path`` is
    then untouched and no temporary file is left behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_all(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform or file
    system can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_all(f: IO[bytes], data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``f``, looping over short writes; a write that makes no
    progress is a full disk."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def describe(exc: OSError) -> str:
    """An OS error in a few words, with the fix when there is an obvious one."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{reason} (free some space on that disk)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason} (check the directory's permissions and mount)"
    return reason


class WriteFailures:
    """Rate-limited warnings about one file that cannot be written (see the module doc).

    Args:
        logger: where the warnings go.
        path: the file.
        consequence: what a failure means, e.g. ``"training goes on; this row is lost"``.
        period: seconds between two warnings while failures go on.
    """

    def __init__(
        self,
        logger: logging.Logger,
        path: Path,
        consequence: str,
        *,
        period: float = PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.path = path
        self.consequence = consequence
        self.period = period
        self._clock = clock
        self.failures = 0
        """Failed writes in all."""
        self._since_warning = 0
        self._streak = 0
        self._warned_at: float | None = None

    @property
    def failing(self) -> bool:
        """Whether the last write failed."""
        return self._streak > 0

    def failed(self, exc: OSError) -> None:
        self.failures += 1
        self._streak += 1
        self._since_warning += 1
        now = self._clock()
        if self._warned_at is not None and now - self._warned_at < self.period:
            return
        more = self._since_warning - 1
        self.logger.warning(
            "cannot write %s: %s; %s%s",
            self.path,
            describe(exc),
            self.consequence,
            f" ({more} more failure{'' if more == 1 else 's'} since the last warning)"
            if more
            else "",
        )
        self._warned_at = now
        self._since_warning = 0

    def succeeded(self) -> None:
        if self._streak:
            self.logger.warning(
                "%s can be written again (%d failed write%s meanwhile)",
                self.path,
                self._streak,
                "" if self._streak == 1 else "s",
            )
        self._streak = 0
        self._since_warning = 0
        self._warned_at = None


TailRepair = Callable[[IO[bytes]], int]
"""Given a log file open for reading, the length of its longest prefix of whole records."""


class AppendOnlyFile:
    """A log of records, each appended whole or not at all (see the module doc).

    The file is opened on the first :meth:`append` (and again after a failed open), so a
    disk that is full or read-only when the peer starts costs records, not the peer.
    :meth:`append` never raises :class:`OSError`: it returns whether the record was
    written, and ``failures`` reports the trouble.

    Args:
        path: the log.
        complete: finds where the last whole record ends, to cut off a torn one left by
            a crash when the file is opened.
        failures: the warnings (default: about ``path``, logged on this module's logger).
    """

    def __init__(
        self,
        path: Path,
        *,
        complete: TailRepair,
        failures: WriteFailures | None = None,
    ) -> None:
        self.path = path
        self._complete = complete
        self.failures = failures or WriteFailures(
            logging.getLogger(__name__), path, "training goes on without it"
        )
        self._file: IO[bytes] | None = None
        self._good: int | None = None
        """Where the last whole record ends, when the file is known to hold a torn one
        (a failed write that could not be cut back): nothing is appended until it is."""
        self._closed = False

    def open(self) -> bool:
        """Open the file now (creating it, cutting off a torn last record); ``False`` if
        that failed (reported, and tried again at the next :meth:`append`)."""
        try:
            self._open()
        except OSError as exc:
            self.failures.failed(exc)
            return False
        return True

    def append(self, record: bytes) -> bool:
        """Append ``record``; ``False`` if it could not be written (nothing of it is in
        the file)."""
        if self._closed:
            raise ValueError(f"{self.path} is closed")
        try:
            f = self._open()
            if self._good is not None:
                f.truncate(self._good)
                self._good = None
            start = os.fstat(f.fileno()).st_size
            try:
                write_all(f, record)
            except OSError:
                try:
                    f.truncate(start)
                except OSError:
                    self._good = start
                raise
        except OSError as exc:
            self.failures.failed(exc)
            return False
        self.failures.succeeded()
        return True

    def _open(self) -> IO[bytes]:
        if self._file is not None:
            return self._file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f: IO[bytes] = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open
        try:
            self._repair(f)
        except OSError:
            f.close()
            raise
        self._file = f
        return f

    def _repair(self, f: IO[bytes]) -> None:
        size = os.fstat(f.fileno()).st_size
        if not size:
            return
        with self.path.open("rb") as reader:
            end = self._complete(reader)
        if end < size:
            f.truncate(end)
            logging.getLogger(__name__).warning(
                "%s ended in a torn record (a crash while writing?): cut off its last %d bytes",
                self.path,
                size - end,
            )

    def close(self) -> None:
        self._closed = True
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def complete_lines(f: IO[bytes], *, chunk: int = 1 << 16) -> int:
    """:data:`TailRepair` for a file of newline-terminated lines: the end of its last
    newline (0 if there is none)."""
    end = f.seek(0, os.SEEK_END)
    while end > 0:
        start = max(0, end - chunk)
        f.seek(start)
        block = f.read(end - start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


__all__ = [
    "PERIOD",
    "AppendOnlyFile",
    "TailRepair",
    "WriteFailures",
    "complete_lines",
    "describe",
    "fsync_directory",
    "write_all",
    "write_atomic",
]
