"""What a daemon writes down: ``metrics.jsonl`` always, ``models.bin`` on request.

``metrics.jsonl`` holds one JSON object per line, appended (a restarted peer continues
the same file):

- ``{"kind": "start", ...}`` when the daemon starts: peer ID, addresses, shard;
- ``{"kind": "round", "round": t, ...}`` per completed round: train loss, models received
  and missing, late and unexpected models, bytes sent, the current members and degree,
  and ``accuracy``/``test_loss`` on the rounds that were evaluated;
- ``{"kind": "membership", ...}`` when the neighbourhood changes;
- ``{"kind": "stop", ...}`` on exit, with the reason.

Every row has ``"time"`` (Unix seconds) and ``"peer"``.

``models.bin`` is a stream of msgpack records, one per round: the model as raw
little-endian float32 bytes plus the round's statistics, enough for ``gossipfl simulate
--transport libp2p`` to compute the same per-round metrics (consensus distance included)
as the in-process simulator. :func:`read_model_records` reads it back, incrementally, and
ignores a truncated last record (a killed process).

Both files are append-only logs written through :class:`~gossipfl.files.AppendOnlyFile`:
a record is written whole or not at all, so a full disk costs rows (with a warning, once
and then rate-limited), never the peer and never a torn line in the middle of the file.
A torn last record (a power loss) is cut off when the daemon opens the file again, and
the readers here skip one anyway.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import msgpack
import numpy as np

from gossipfl.files import AppendOnlyFile, WriteFailures, complete_lines
from gossipfl.jsonsafe import json_safe
from gossipfl.peer import RoundReport
from gossipfl.protocol import RoundStats

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
MODELS_FILE = "models.bin"
_MAX_RECORD = 1 << 30
"""The largest ``models.bin`` record read back (a model of 256 M parameters)."""


class MetricsLog:
    """Appends JSON rows to a file, one per line, unbuffered (``tail -f`` works and a
    crash loses nothing already written). A row that cannot be written (a full disk) is
    dropped with a warning; :meth:`write` says whether it was written."""

    def __init__(self, path: Path, *, peer: str) -> None:
        self.path = path
        self.peer = peer
        self._log = AppendOnlyFile(
            path,
            complete=complete_lines,
            failures=WriteFailures(logger, path, "training goes on; metrics rows are lost"),
        )
        self._log.open()  # create it now if we can: `tail -f` wants the file

    @property
    def failures(self) -> WriteFailures:
        return self._log.failures

    def write(self, kind: str, **fields: Any) -> bool:
        row = {"kind": kind, "time": round(time.time(), 3), "peer": self.peer, **fields}
        return self._log.append((json.dumps(json_safe(row)) + "\n").encode("utf-8"))

    def close(self) -> None:
        self._log.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def report_row(report: RoundReport) -> dict[str, Any]:
    """The per-round fields of a :class:`RoundReport` (no model)."""
    stats = report.stats
    return {
        "round": report.round,
        "train_loss": report.train_metrics.get("loss"),
        "epsilon": report.train_metrics.get("epsilon"),
        "expected": stats.expected,
        "received": stats.received,
        "missing": len(stats.missing),
        "late": stats.late,
        "duplicates": stats.duplicates,
        "unexpected": stats.unexpected,
        "too_far_ahead": stats.too_far_ahead,
        "skipped_to": stats.skipped_to,
        "reused": stats.reused,
        "deadline": stats.deadline,
        "slow": list(stats.slow),
        "implausible": list(stats.implausible),
        "bytes_sent": report.bytes_sent,
    }


class ModelRecorder:
    """Appends each round's model and statistics to ``models.bin`` (see the module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._log = AppendOnlyFile(
            path,
            complete=complete_records,
            failures=WriteFailures(logger, path, "training goes on; recorded models are lost"),
        )

    @property
    def failures(self) -> WriteFailures:
        return self._log.failures

    def record(self, report: RoundReport) -> bool:
        """Append the round; ``False`` if it could not be written (a full disk)."""
        stats = report.stats
        vector = np.ascontiguousarray(report.vector, dtype="<f4")
        entry = {
            "peer": report.peer,
            "round": report.round,
            "vector": vector.tobytes(),
            "stats": {
                "expected": stats.expected,
                "received": stats.received,
                "missing": list(stats.missing),
                "late": stats.late,
                "duplicates": stats.duplicates,
                "unexpected": stats.unexpected,
                "too_far_ahead": stats.too_far_ahead,
                "staleness_mean": stats.staleness_mean,
                "staleness_max": stats.staleness_max,
                "skipped_to": stats.skipped_to,
                "reused": stats.reused,
                "deadline": stats.deadline,
                "slow": list(stats.slow),
                "implausible": list(stats.implausible),
            },
            "metrics": {k: float(v) for k, v in report.train_metrics.items()},
            "bytes_sent": report.bytes_sent,
            "time": time.time(),
        }
        return self._log.append(msgpack.packb(entry))

    def close(self) -> None:
        self._log.close()


def complete_records(f: IO[bytes]) -> int:
    """:data:`~gossipfl.files.TailRepair` for ``models.bin``: where its last whole msgpack
    record ends (anything after it is torn or unreadable)."""
    f.seek(0)
    unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=_MAX_RECORD)
    end = 0
    while True:
        try:
            unpacker.skip()
        except (msgpack.OutOfData, ValueError, msgpack.StackError):
            return end
        end = unpacker.tell()


class ModelRecordReader:
    """Reads a growing ``models.bin`` incrementally: each :meth:`poll` returns the records
    completed since the last one. ``time`` in the reports is Unix seconds.

    A torn last record (the writer was killed, or its disk is full) is not returned, and
    is read again at the next poll: the writer may since have cut it off and written a
    whole one in its place. Bytes that are no record at all (a damaged file) end the
    readable part: they are reported once, with the offset, and never raise.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        """Where the first record not yet returned starts."""
        self._damaged: int | None = None

    def poll(self) -> list[RoundReport]:
        if self._damaged is not None:
            return []
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(_MAX_RECORD, len(data)))
        unpacker.feed(data)
        reports: list[RoundReport] = []
        consumed = 0
        while True:
            try:
                entry = unpacker.unpack()
            except msgpack.OutOfData:
                break  # nothing more, or a torn record: read it again next time
            except (ValueError, msgpack.StackError) as exc:
                self._report_damage(self._offset + consumed, exc)
                break
            try:
                reports.append(_to_report(entry))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # Whole msgpack but not a record: skip it, the stream is still in step.
                logger.warning(
                    "%s: skipping a record near byte %d that is not a round's (%s: %s)",
                    self.path,
                    self._offset + consumed,
                    type(exc).__name__,
                    exc,
                )
            consumed = unpacker.tell()
        self._offset += consumed
        return reports

    def _report_damage(self, offset: int, exc: Exception) -> None:
        self._damaged = offset
        logger.warning(
            "%s is damaged near byte %d (%s): the records after it cannot be read",
            self.path,
            offset,
            exc,
        )


def _to_report(entry: Mapping[str, Any]) -> RoundReport:
    s = entry["stats"]
    stats = RoundStats(
        expected=int(s["expected"]),
        received=int(s["received"]),
        missing=tuple(s["missing"]),
        late=int(s["late"]),
        duplicates=int(s["duplicates"]),
        unexpected=int(s["unexpected"]),
        too_far_ahead=int(s["too_far_ahead"]),
        staleness_mean=float(s["staleness_mean"]),
        staleness_max=int(s["staleness_max"]),
        skipped_to=s["skipped_to"],
        reused=int(s.get("reused", 0)),
        deadline=s.get("deadline"),
        slow=tuple(s.get("slow", ())),
        implausible=tuple(s.get("implausible", ())),
    )
    return RoundReport(
        peer=str(entry["peer"]),
        round=int(entry["round"]),
        vector=np.frombuffer(entry["vector"], dtype="<f4").astype(np.float32),
        stats=stats,
        train_metrics=dict(entry["metrics"]),
        bytes_sent=int(entry["bytes_sent"]),
        time=float(entry["time"]),
    )


def read_model_records(path: Path) -> Iterator[RoundReport]:
    """Every complete record of a ``models.bin`` file."""
    yield from ModelRecordReader(path).poll()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a torn last line is skipped)."""
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


__all__ = [
    "METRICS_FILE",
    "MODELS_FILE",
    "MetricsLog",
    "ModelRecordReader",
    "ModelRecorder",
    "read_metrics",
    "read_model_records",
    "report_row",
]
