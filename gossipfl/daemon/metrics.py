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
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import msgpack
import numpy as np

from gossipfl.jsonsafe import json_safe
from gossipfl.peer import RoundReport
from gossipfl.protocol import RoundStats

METRICS_FILE = "metrics.jsonl"
MODELS_FILE = "models.bin"


class MetricsLog:
    """Appends JSON rows to a file, one per line, flushed at once (``tail -f`` works and a
    crash loses nothing already written)."""

    def __init__(self, path: Path, *, peer: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.peer = peer
        self._file: IO[str] = path.open("a", encoding="utf-8", buffering=1)

    def write(self, kind: str, **fields: Any) -> None:
        row = {"kind": kind, "time": round(time.time(), 3), "peer": self.peer, **fields}
        self._file.write(json.dumps(json_safe(row)) + "\n")

    def close(self) -> None:
        self._file.close()

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
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("ab")

    def record(self, report: RoundReport) -> None:
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
        self._file.write(msgpack.packb(entry))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ModelRecordReader:
    """Reads a growing ``models.bin`` incrementally: each :meth:`poll` returns the records
    completed since the last one. ``time`` in the reports is Unix seconds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 30)

    def poll(self) -> list[RoundReport]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        self._unpacker.feed(data)
        return [_to_report(entry) for entry in self._unpacker]


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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
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
