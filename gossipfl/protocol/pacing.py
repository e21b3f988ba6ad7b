"""Time in the synchronous protocol: how long to wait, for whom, and how far to skip.

Pure bookkeeping over times the caller passes in (the core's injected clock): no I/O.

**Waiting** (:class:`Arrivals`). A fixed round deadline lets the slowest neighbour set the
pace of the whole job: an insider that steps 4.5 s against a 5 s deadline made every round
of every peer take 5 s, and one that never sends made its neighbours wait the full
deadline every round (the job ran 10.6x slower, and nothing was logged). So each peer
learns, per in-neighbour, how long after its own model that neighbour's model arrives:

* the *delay* of neighbour j in round r is the arrival time of j's round-r model minus
  the time our round r started (0 when it came before): the time j took for a round, as
  we see it, local step and link included. A neighbour we waited for in vain until the
  merge adds a censored delay, the time we waited (a lower bound). The last ``window``
  rounds are kept per neighbour;
* j is **slow** once it has ``min_samples`` delays and either their median exceeds
  ``slow_factor`` times the median over the neighbourhood's medians, plus a margin, or
  most of them are waits in vain (it made us wait until the deadline, most rounds). At
  most half the neighbourhood can be slow by the first test, so a slow *network* is never
  mistaken for slow neighbours. A slow neighbour is not waited for: its model is used when it is
  in by the time the others are, or stands in later as a reused model. Its late models
  still count as delays, so a neighbour that speeds up is waited for again; one that
  sends nothing stays slow;
* the **deadline** of a round, from its start, is ``deadline_factor`` times the largest
  90th-percentile delay among the neighbours waited for, plus the margin, at least
  ``min_deadline``; never more than the configured deadline after our own model is sent,
  and that until delays are known. Within the round it
  shrinks further once most of the neighbours waited for are in: the rest get
  ``deadline_factor`` times the latest of those arrivals, plus the margin. So a neighbour
  that stalls or withholds its model costs a fraction of a second per round even before
  it is known to be slow, not a whole deadline. A round usually ends before either
  deadline anyway, when the last neighbour waited for is in.

**Skipping** (:class:`SkipBudget`). A peer that fell behind (restarted, frozen, slow)
skips ahead to where its neighbours are. Neighbours' round numbers are claims, and two
colluding in-neighbours that claimed round 2**63 - 1 once made a peer skip to its last
round after 10 real ones. Besides the quorum (see :class:`~gossipfl.protocol.sync.
SyncGossip`), a skip is bounded by the elapsed time. Since its anchor (where the run
started, or where the checkpoint it resumed from was written), the neighbours can have
done ``speedup`` rounds for each round of ours, and ``speedup`` rounds for each ``pace``
seconds (the median duration of our recent rounds) that we spent outside a completed
round: down, frozen, or in the round now under way. Running steadily, that leaves
colluders a quarter of a round per round at most; after a downtime of D seconds, D/pace
rounds and more. Counting our rounds one by one (not the elapsed time over today's pace)
keeps the bound right when our pace changes, e.g. when the machine gets busy.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from gossipfl.protocol.events import PeerId


@dataclass(frozen=True)
class WaitPolicy:
    """How a synchronous peer adapts its wait to its neighbours (see the module doc).

    Fractions are of the configured round deadline, so the policy suits a simulation
    (deadline 1 s of virtual time) and a live job (5 s) alike.
    """

    adaptive: bool = True
    """Learn deadlines and the slow neighbours from arrival times; ``False``: wait the
    configured deadline for every neighbour, as before."""
    window: int = 16
    """Rounds of arrival delays remembered per neighbour."""
    min_samples: int = 4
    """Delays needed before a neighbour can be judged slow, or its delays set a deadline."""
    slow_factor: float = 4.0
    """Slow: median delay above this many times the neighbourhood's median delay..."""
    margin: float = 0.02
    """...plus this fraction of the deadline (so that 1 ms against 4 ms is not slow)."""
    deadline_factor: float = 3.0
    """The adaptive deadline (from the round's start): this many times the largest
    90th-percentile delay among the neighbours waited for, plus the margin."""
    min_deadline: float = 0.05
    """The adaptive deadline is never below this fraction of the configured deadline."""

    def __post_init__(self) -> None:
        if self.window < 1 or self.min_samples < 1 or self.min_samples > self.window:
            raise ValueError("need 1 <= min_samples <= window")
        if not (self.slow_factor >= 1 and self.deadline_factor >= 1):
            raise ValueError("slow_factor and deadline_factor must be >= 1")
        if not (0 <= self.margin <= 1 and 0 < self.min_deadline <= 1):
            raise ValueError("margin must be in [0, 1] and min_deadline in (0, 1]")


def _median(values: list[float]) -> float:
    return _median_of_sorted(sorted(values))


def _median_of_sorted(ordered: list[float]) -> float:
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _quantile90_of_sorted(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


def _discard_sorted(ordered: list[float], value: float) -> None:
    """Remove one occurrence of ``value`` from the sorted list ``ordered``."""
    del ordered[bisect.bisect_left(ordered, value)]


class Arrivals:
    """Per-neighbour arrival delays, the slow set and the adaptive deadline."""

    def __init__(self, policy: WaitPolicy, deadline: float) -> None:
        self.policy = policy
        self.deadline = deadline
        self._delays: dict[PeerId, dict[int, float]] = {}
        # The same delays of each neighbour, kept sorted as they are recorded: a round
        # reads each neighbour's median (judge) and 90th percentile (round_deadline),
        # which sorted a fresh list each time (the same values, so the same results).
        self._sorted: dict[PeerId, list[float]] = {}
        self._missed: dict[PeerId, set[int]] = {}  # rounds it made us wait in vain
        self._started: dict[int, float] = {}
        self.slow: frozenset[PeerId] = frozenset()

    # ------------------------------------------------------------------ recording

    def started(self, round: int, now: float) -> None:
        """Our ``round`` started at ``now``."""
        self._started[round] = now
        for old in [r for r in self._started if r <= round - self.policy.window]:
            del self._started[old]

    def arrived(self, peer: PeerId, round: int, at: float) -> None:
        """``peer``'s model of ``round`` arrived at ``at`` (any time: early, late)."""
        start = self._started.get(round)
        if start is None:
            return  # before our round started: delay 0, recorded by arrived_early
        self._record(peer, round, max(0.0, at - start))
        missed = self._missed.get(peer)
        if missed is not None and round in missed and at - start < self.deadline:
            missed.discard(round)  # late, but in the time we could have waited

    def arrived_early(self, peer: PeerId, round: int) -> None:
        """``peer``'s model of ``round`` was in before our round started."""
        self._record(peer, round, 0.0)

    def waited_in_vain(self, peer: PeerId, round: int, now: float) -> None:
        """We merged ``round`` at ``now`` without ``peer``'s model, having waited for it."""
        start = self._started.get(round)
        if start is not None:
            self._record(peer, round, max(0.0, now - start), keep=True)
            missed = self._missed.setdefault(peer, set())
            missed.add(round)
            for old in [r for r in missed if r <= round - self.policy.window]:
                missed.discard(old)

    def _record(self, peer: PeerId, round: int, delay: float, *, keep: bool = False) -> None:
        delays = self._delays.setdefault(peer, {})
        if keep and round in delays:
            return  # an actual arrival is better evidence than a censored wait
        ordered = self._sorted.setdefault(peer, [])
        replaced = delays.get(round)
        if replaced is not None:
            _discard_sorted(ordered, replaced)
        delays[round] = delay
        bisect.insort(ordered, delay)
        if len(delays) > self.policy.window:
            _discard_sorted(ordered, delays.pop(min(delays)))

    # ------------------------------------------------------------------- judging

    def typical(self, peer: PeerId) -> float | None:
        """The median delay of ``peer`` (None until ``min_samples`` are known)."""
        delays = self._delays.get(peer)
        if not delays or len(delays) < self.policy.min_samples:
            return None
        return _median_of_sorted(self._sorted[peer])

    def judge(self, neighbours: Iterable[PeerId]) -> frozenset[PeerId]:
        """Recompute (and return) the slow set among ``neighbours``."""
        policy = self.policy
        if not policy.adaptive:
            return frozenset()
        typical = {p: t for p in neighbours if (t := self.typical(p)) is not None}
        if len(typical) < 2:
            self.slow = frozenset()
            return self.slow
        bar = policy.slow_factor * _median(list(typical.values()))
        bar += policy.margin * self.deadline
        self.slow = frozenset(
            p
            for p, t in typical.items()
            if t > bar or 2 * len(self._missed.get(p, ())) > len(self._delays[p])
        )
        return self.slow

    def _bounded(self, worst: float) -> float:
        policy = self.policy
        wait = policy.deadline_factor * worst + policy.margin * self.deadline
        return max(policy.min_deadline * self.deadline, wait)

    def early_deadline(self, delays: Iterable[float]) -> float | None:
        """How long after the round's start to wait for the rest, once most of the
        neighbours waited for have arrived with ``delays`` (None: not adaptive)."""
        if not self.policy.adaptive:
            return None
        return self._bounded(max(delays, default=0.0))

    def round_deadline(self, waiting_for: Iterable[PeerId]) -> float | None:
        """How long after the round's start to wait for the neighbours in ``waiting_for``;
        None while one of them is not known yet (or not adaptive): then the configured
        deadline after our own send applies."""
        policy = self.policy
        if not policy.adaptive:
            return None
        worst = 0.0
        for peer in waiting_for:
            delays = self._delays.get(peer)
            if not delays or len(delays) < policy.min_samples:
                return None
            worst = max(worst, _quantile90_of_sorted(self._sorted[peer]))
        return self._bounded(worst)


class SkipBudget:
    """How far ahead a skip may go, by elapsed time (see the module doc).

    Args:
        anchor_round: the round the peer started (or resumed) at.
        anchor_time: when it would have been at ``anchor_round`` had it never stopped:
            the start time, or the time its checkpoint was written.
        speedup: how much faster than our own pace the neighbours may plausibly be.
        window: rounds whose durations make our pace.
    """

    def __init__(
        self, *, anchor_round: int, anchor_time: float, speedup: float = 1.25, window: int = 16
    ) -> None:
        if not speedup >= 1:
            raise ValueError(f"speedup must be >= 1, got {speedup}")
        self.anchor_round = anchor_round
        self.anchor_time = anchor_time
        self.speedup = speedup
        self._durations: deque[float] = deque(maxlen=window)
        self._sorted: list[float] = []  # the same durations, sorted (pace is read each round)
        self._rounds = 0
        self._busy = 0.0  # seconds spent in the rounds we completed since the anchor

    def round_took(self, seconds: float) -> None:
        """A round of ours took ``seconds`` from its start to its merge."""
        seconds = max(seconds, 0.0)
        self._push(seconds)
        self._rounds += 1
        self._busy += seconds

    def seed_pace(self, seconds: float) -> None:
        """Our pace before a restart (from the checkpoint), until rounds measure it."""
        if seconds > 0:
            self._push(seconds)

    def _push(self, seconds: float) -> None:
        durations = self._durations
        if len(durations) == durations.maxlen:
            if not durations:
                return  # a window of 0 keeps nothing
            _discard_sorted(self._sorted, durations[0])  # the one append() evicts
        durations.append(seconds)
        bisect.insort(self._sorted, seconds)

    @property
    def pace(self) -> float | None:
        """The median duration of our recent rounds (None before the first)."""
        return _median_of_sorted(self._sorted) if self._sorted else None

    def limit(self, now: float) -> int | None:
        """The furthest round plausible at ``now``; None while our pace is unknown or 0
        (no bound can be derived yet)."""
        pace = self.pace
        if not pace:
            return None
        idle = max(0.0, now - self.anchor_time - self._busy)
        return self.anchor_round + math.floor(self.speedup * (self._rounds + idle / pace))


__all__ = ["Arrivals", "SkipBudget", "WaitPolicy"]
