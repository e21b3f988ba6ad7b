"""Progress of a sweep: what happened to each run, and an honest guess of what is left.

Runs of one sweep differ a lot in cost (64 peers over libp2p vs 16 in memory; 50 rounds
vs 500), so the average speed of the runs so far says little about the runs still to
do. :class:`SweepProgress` estimates each run still to do *from runs of the same shape*:
the same configuration except the seed. Its expected time is the median time of the
finished runs of its shape (their measured time, or the ``wall_s`` recorded in the
summary of a run finished by an earlier invocation). A run of a shape that has not
finished once has no estimate, and the output says so instead of guessing:

- every run left has an estimate: ``about 3 min 10 s left``;
- some have: ``at least 3 min 10 s left (4 of 9 runs of a shape not timed yet)``;
- none has: ``9 runs left, no estimate yet (no run of their shape has finished)``.

A running run counts with its expected time minus the time it has run so far; one that
has already run longer than expected counts as about to finish, and makes the figure a
lower bound (``at least 20 s left (1 running longer than runs of its shape took)``).
The runs left are shared among the workers: the figure is the larger of (the work left
/ the workers) and the longest single run left (a run cannot be split). It is a guess
about the future all the same, and it is labelled as one.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gossipfl.experiments.spec import RunPoint

KINDS = ("skipped", "started", "done", "failed")


@dataclass(frozen=True)
class RunEvent:
    """Something that happened to one run of a sweep (see ``run_experiment(on_event=)``)."""

    kind: str
    """``skipped`` (finished by an earlier invocation), ``started``, ``done`` or
    ``failed``."""
    point: RunPoint
    sweep: SweepProgress
    """The sweep's progress, this event included."""
    seconds: float | None = None
    """How long the run took (``done``, ``failed``; ``skipped``: its recorded wall time)."""
    summary: dict[str, Any] | None = None
    """The run's ``summary.json`` (``done``, ``skipped``)."""
    error: str | None = None
    """Why it failed (``failed``)."""

    @property
    def run_id(self) -> str:
        return self.point.id

    def line(self) -> str:
        """One plain line for a log: status, runs finished/total, run id, its headline
        numbers, elapsed time and the estimate of what is left."""
        sweep = self.sweep
        head = f"{self.kind} {sweep.finished}/{sweep.total} {self.run_id}"
        if self.kind == "failed":
            last = (self.error or "").strip().splitlines() or ["(no message)"]
            words = [f"error: {last[-1]}"]
        else:
            words = [headline(self.summary or {})]
        if self.seconds is not None:
            words.append(f"took {format_seconds(self.seconds)}")
        body = ", ".join(w for w in words if w)
        left = sweep.describe()
        tail = f"elapsed {format_seconds(sweep.elapsed())}" + (f", {left}" if left else "")
        return f"{head} | {body} | {tail}" if body else f"{head} | {tail}"


def headline(summary: dict[str, Any]) -> str:
    """A run's headline numbers in a few words: mean and worst honest accuracy, final
    consensus distance."""
    parts = []
    acc, worst = summary.get("honest_mean_acc"), summary.get("honest_min_acc")
    if isinstance(acc, int | float):
        parts.append(f"accuracy {100 * acc:.1f}%")
        if isinstance(worst, int | float):
            parts[-1] += f" (worst peer {100 * worst:.1f}%)"
    dist = summary.get("consensus_distance")
    if isinstance(dist, int | float):
        parts.append(f"consensus distance {dist:.2g}")
    return ", ".join(parts)


def format_seconds(seconds: float) -> str:
    """``<1 s``, ``7 s``, ``3 min 05 s``, ``2 h 14 min``."""
    if seconds < 0.5:
        return "<1 s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def shape_of(point: RunPoint) -> str:
    """Runs of the same shape cost about the same: every setting equal but the seed (and
    the output directory)."""
    config = point.config.to_dict()
    config.pop("seed", None)
    config.get("output", {}).pop("dir", None)
    return json.dumps(config, sort_keys=True, default=str)


@dataclass(frozen=True)
class Estimate:
    seconds: float
    """Time left for the runs that have an estimate (shared among the workers)."""
    unknown: int
    """Runs left of a shape that has not finished once."""
    overdue: int
    """Runs running for longer than the runs of their shape took."""
    left: int
    """Runs left (queued or running)."""


class SweepProgress:
    """Counts and timing of a sweep's runs, updated by :meth:`record`; safe to read from
    another thread (a live progress display) while one thread records."""

    def __init__(
        self,
        points: Iterable[RunPoint],
        workers: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._shape = {p.id: shape_of(p) for p in points}
        self.total = len(self._shape)
        self.workers = max(1, workers)
        self._left = set(self._shape)
        self._running: dict[str, float] = {}
        self._times: dict[str, list[float]] = defaultdict(list)
        self.counts = dict.fromkeys(("skipped", "done", "failed"), 0)
        self.started_at = clock()

    @property
    def finished(self) -> int:
        """Runs with a result: done now, done before (skipped) or failed."""
        return sum(self.counts.values())

    def elapsed(self) -> float:
        return self._clock() - self.started_at

    def record(self, kind: str, run_id: str, seconds: float | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        with self._lock:
            if kind == "started":
                self._running[run_id] = self._clock()
                return
            self._running.pop(run_id, None)
            self._left.discard(run_id)
            self.counts[kind] += 1
            if kind in ("done", "skipped") and seconds is not None and seconds >= 0:
                self._times[self._shape[run_id]].append(seconds)

    def estimate(self) -> Estimate:
        now = self._clock()
        with self._lock:
            expected = {shape: statistics.median(t) for shape, t in self._times.items() if t}
            known: list[float] = []
            unknown = overdue = 0
            for run_id in self._left:
                guess = expected.get(self._shape[run_id])
                if guess is None:
                    unknown += 1
                    continue
                if run_id in self._running:
                    guess -= now - self._running[run_id]
                    if guess < 0:
                        overdue += 1
                        continue
                known.append(guess)
            left = len(self._left)
        share = min(self.workers, left) or 1
        seconds = max(max(known, default=0.0), sum(known) / share)
        return Estimate(seconds, unknown, overdue, left)

    def describe(self) -> str:
        """The estimate in words (see the module doc); empty when nothing is left."""
        est = self.estimate()
        runs = "run" if est.left == 1 else "runs"
        if est.left == 0:
            return ""
        if est.unknown == est.overdue == 0:
            return f"about {format_seconds(est.seconds)} left"
        if est.unknown == est.left:
            return f"{est.left} {runs} left, no estimate yet (no run of their shape has finished)"
        caveats = []
        if est.unknown:
            caveats.append(f"{est.unknown} of {est.left} runs of a shape not timed yet")
        if est.overdue:
            caveats.append(f"{est.overdue} running longer than runs of its shape took")
        return f"at least {format_seconds(est.seconds)} left ({'; '.join(caveats)})"
