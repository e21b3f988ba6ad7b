"""Time in the synchronous core: stand-ins for missing models, adaptive deadlines, slow
neighbours, and skips that colluding neighbours cannot force. Driven by hand with a fake
clock, so every delay is exact."""

from __future__ import annotations

import heapq
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossipfl.protocol import (
    DeadlinePassed,
    LocalStepDone,
    Merge,
    MergeDone,
    ModelReceived,
    RoundDone,
    SetTimer,
    StaticNeighbourhood,
    SyncGossip,
    Train,
)
from gossipfl.protocol.pacing import Arrivals, SkipBudget, WaitPolicy

NEIGHBOURS = {"a": 0.25, "b": 0.25, "c": 0.25}
BIG = 2**63 - 1


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def vec(value: float) -> np.ndarray:
    return np.full(3, value, np.float32)


def core(clock: Clock, rounds: int = 200, **kwargs: object) -> SyncGossip:
    return SyncGossip(
        neighbourhood=StaticNeighbourhood(NEIGHBOURS),
        rounds=rounds,
        deadline=5.0,
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )


class Driver:
    """Plays rounds of one core against neighbours whose models arrive with given delays
    after ours: a tiny discrete-event loop on the fake clock."""

    def __init__(self, g: SyncGossip, clock: Clock, step_time: float = 0.1) -> None:
        self.g, self.clock, self.step_time = g, clock, step_time
        self.pending: list[tuple[float, str, int]] = []
        self.deadline: float | None = None

    def _deliver(self, at: float, peer: str, round: int) -> list[Merge]:
        self.clock.now = max(self.clock.now, at)
        actions = self.g.handle(ModelReceived(peer, round, vec(2.0)))
        for timer in (a for a in actions if isinstance(a, SetTimer)):
            self.deadline = self.clock.now + timer.delay  # a new timer replaces the old
        return [a for a in actions if isinstance(a, Merge)]

    def round(self, arrivals: dict[str, float | None]) -> RoundDone:
        """Our step now; each neighbour's model of this round arrives that many seconds
        later (None: never). Returns the round's report."""
        g, clock = self.g, self.clock
        r, sent = g.round, clock.now
        actions = g.handle(LocalStepDone(r, vec(1.0)))
        for peer, delay in arrivals.items():
            if delay is not None:
                heapq.heappush(self.pending, (sent + delay, peer, r))
        timers = [a for a in actions if isinstance(a, SetTimer)]
        merges = [a for a in actions if isinstance(a, Merge)]
        self.deadline = sent + timers[-1].delay if timers else None
        while not merges:
            if self.pending and (self.deadline is None or self.pending[0][0] <= self.deadline):
                merges = self._deliver(*heapq.heappop(self.pending))
            else:
                assert self.deadline is not None, "nothing left to arrive and no deadline"
                clock.now = self.deadline
                merges = [a for a in g.handle(DeadlinePassed(r)) if isinstance(a, Merge)]
        done = g.handle(MergeDone(r, vec(1.0)))[0]
        assert isinstance(done, RoundDone)
        clock.now += self.step_time  # our next local step; models keep arriving meanwhile
        step_end = clock.now
        while self.pending and self.pending[0][0] <= step_end:
            self._deliver(*heapq.heappop(self.pending))
        clock.now = step_end
        return done


def test_a_silent_neighbour_stands_in_for_max_reuse_rounds() -> None:
    clock = Clock()
    g = core(clock, max_reuse=2)
    g.start()
    d = Driver(g, clock)
    d.round({"a": 0.1, "b": 0.1, "c": 0.1})
    reused = [d.round({"a": 0.1, "b": 0.1, "c": None}).stats.reused for _ in range(4)]
    assert reused == [1, 1, 0, 0]  # c's round-0 model stands in for rounds 1 and 2


def test_a_stalling_neighbour_stops_setting_the_pace() -> None:
    """c always steps 4.5 s against a 5 s deadline: from the first round it gets only a
    multiple of the others' time once they are in, after a few rounds it is slow and not
    waited for at all: the rounds take the others' time."""
    clock = Clock()
    g = core(clock)
    g.start()
    d = Driver(g, clock)
    durations, slow, reused = [], [], []
    for _ in range(20):
        start = clock.now
        done = d.round({"a": 0.1, "b": 0.12, "c": 4.5})
        durations.append(clock.now - start)
        slow.append(done.stats.slow)
        reused.append(done.stats.reused)
    assert 0.5 < durations[0] < 0.6  # 3 x the others' 0.12 s, + 0.1 s, then a 0.1 s step
    assert slow[-1] == ("c",)
    assert max(durations[-10:]) < 0.5  # now the pace of a and b
    assert not any(reused[-10:])  # c's models are ~20 rounds old by now: too stale
    assert g.round == 20


def test_a_silent_neighbour_is_waited_for_only_until_judged_slow() -> None:
    clock = Clock()
    g = core(clock)
    g.start()
    d = Driver(g, clock)
    waits = []
    for _ in range(30):
        start = clock.now
        d.round({"a": 0.1, "b": 0.1, "c": None})
        waits.append(clock.now - start)
    # never the whole deadline: the others take 0.2 s a round (a 0.1 s step, then 0.1 s),
    # so c gets 3 x 0.2 s + 0.1 s of the margin from the round's start at most
    assert max(waits) < 0.8
    assert sum(w > 0.3 for w in waits) <= WaitPolicy().min_samples  # then not at all
    assert max(waits[-20:]) < 0.25  # the 0.1 s step and the 0.1 s of a and b


def test_a_slow_neighbour_that_speeds_up_is_waited_for_again() -> None:
    clock = Clock()
    g = core(clock)
    g.start()
    d = Driver(g, clock)
    for _ in range(10):
        d.round({"a": 0.1, "b": 0.1, "c": 3.0})
    assert d.round({"a": 0.1, "b": 0.1, "c": 3.0}).stats.slow == ("c",)
    for _ in range(20):
        done = d.round({"a": 0.1, "b": 0.1, "c": 0.12})
    assert done.stats.slow == ()
    assert done.stats.missing == ()


def test_the_adaptive_deadline_follows_arrivals_within_its_bounds() -> None:
    clock = Clock()
    g = core(clock)
    g.start()
    d = Driver(g, clock)
    first = d.round({"a": 0.1, "b": None, "c": 0.1})
    # nothing known yet: the configured deadline, until a and c, most of those waited for,
    # are in: then b gets 3 x their 0.1 s plus 2% of the deadline
    assert first.stats.deadline == pytest.approx(0.4)
    for _ in range(6):
        done = d.round({"a": 0.1, "b": 0.2, "c": 0.1})
    assert done.stats.deadline is not None
    # 3 x the 90th percentile (0.2 s; b's censored wait of 5 s has aged into the window's
    # median but not out yet: the deadline is still bounded by the configured one)
    assert 0.25 <= done.stats.deadline <= 5.0


def test_without_a_clock_deadlines_are_fixed() -> None:
    g = SyncGossip(neighbourhood=StaticNeighbourhood(NEIGHBOURS), rounds=5, deadline=5.0)
    g.start()
    actions = g.handle(LocalStepDone(0, vec(1.0)))
    assert [a for a in actions if isinstance(a, SetTimer)] == [SetTimer(0, 5.0)]


@pytest.mark.parametrize("grace", [0.0, 3.0])
def test_round_0_waits_the_start_grace_for_neighbours_that_started_later(grace: float) -> None:
    """c starts 2 s after us (start-up skew, not network delay): with a 3 s grace round 0
    waits for it although a and b were in at once; without it c gets only 3 x their
    delay. Later rounds pace as usual."""
    clock = Clock()
    g = core(clock, start_grace=grace)
    g.start()
    d = Driver(g, clock)
    first = d.round({"a": 0.0, "b": 0.1, "c": 2.0})
    if grace:
        assert first.stats.missing == ()
    else:
        assert first.stats.missing == ("c",)
        assert first.stats.deadline == pytest.approx(0.4)
    second = d.round({"a": 0.1, "b": 0.1, "c": None})
    assert second.stats.deadline is not None
    assert second.stats.deadline < 1.0  # no grace after round 0: shortened as usual
    assert second.stats.missing == ("c",)


def test_an_insider_withholding_round_0_costs_the_grace_once() -> None:
    clock = Clock()
    g = core(clock, start_grace=3.0)
    g.start()
    d = Driver(g, clock)
    first = d.round({"a": 0.1, "b": 0.1, "c": None})
    assert first.stats.missing == ("c",)
    assert first.stats.deadline == pytest.approx(3.0)  # not the 5 s deadline
    later = d.round({"a": 0.1, "b": 0.1, "c": None}).stats.deadline
    assert later is not None
    assert later < 1.0
    # A grace longer than the deadline is the most round 0 waits.
    clock = Clock()
    g = core(clock, start_grace=8.0)
    g.start()
    assert Driver(g, clock).round({"a": 0.1, "b": None, "c": None}).stats.deadline == 8.0


def test_the_start_grace_is_bounded() -> None:
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="start_grace"):
            core(Clock(), start_grace=bad)
    g = SyncGossip(
        neighbourhood=StaticNeighbourhood(NEIGHBOURS), rounds=5, deadline=5.0, start_grace=7.0
    )
    g.start()
    actions = g.handle(LocalStepDone(0, vec(1.0)))
    assert [a for a in actions if isinstance(a, SetTimer)] == [SetTimer(0, 7.0)]


# ---------------------------------------------------------------------------- skipping


def test_two_colluders_claiming_the_last_round_cannot_fast_forward_a_peer() -> None:
    """b and c claim round 2**63 - 1 with every model; a, honest, is at our round. Two
    liars are more than the rule tolerates, but claims that far ahead of what the elapsed
    time allows are not believed (and are counted)."""
    clock = Clock()
    g = core(clock, rounds=150, tolerance=1)
    g.start()
    d = Driver(g, clock)
    implausible = 0
    for _ in range(60):
        r = g.round
        g.handle(ModelReceived("b", BIG, vec(9.0)))
        g.handle(ModelReceived("c", BIG, vec(9.0)))
        done = d.round({"a": 0.1})
        implausible += len(done.stats.implausible)
        assert done.stats.skipped_to is None
        assert g.round == r + 1
    assert implausible > 50


def test_colluders_alone_can_push_a_peer_only_as_fast_as_time_allows() -> None:
    """Every neighbour lies (more than the rule tolerates), claiming just a little more
    than the elapsed time allows: skips still go no further than ``speedup`` times our
    own pace."""
    clock = Clock()
    g = core(clock, rounds=10_000, tolerance=0)
    g.start()
    d = Driver(g, clock)
    for _ in range(100):
        for peer in NEIGHBOURS:  # beyond max_ahead: not buffered, never delivered
            g.handle(ModelReceived(peer, g.round + 9, vec(9.0)))
        d.round({})
    assert d.round({}).stats.implausible == ()
    # 101 rounds of our own at 0.1 s; with speedup 1.25 at most ~126 plus the lag
    assert 110 <= g.round <= 130


def test_a_restarted_peer_catches_up_as_far_as_its_downtime_allows() -> None:
    """Resumed at round 20 from a checkpoint written 60 s ago at a pace of ~1 s a round:
    neighbours at round 80 are plausible, and it skips there."""
    clock = Clock()
    clock.now = 1000.0
    g = core(clock, rounds=200, start_round=20, anchor_time=940.0, tolerance=1)
    g.start()
    d = Driver(g, clock)
    for peer in NEIGHBOURS:
        g.handle(ModelReceived(peer, 80, vec(2.0)))
    d.round({})  # the first round measures our pace: no skip can be judged before
    assert g.round == 21
    done = d.round({})
    assert done.stats.implausible == ()
    assert g.round == 80


def test_a_quorum_must_outnumber_the_tolerated_byzantine_neighbours() -> None:
    clock = Clock()
    g = core(clock, rounds=200, start_round=20, anchor_time=0.0, tolerance=2)
    clock.now = 1000.0
    g.start()
    d = Driver(g, clock)
    g.handle(ModelReceived("a", 80, vec(2.0)))
    g.handle(ModelReceived("b", 80, vec(2.0)))  # two claims, but the rule expects 2 liars
    d.round({})
    assert g.round == 21
    g.handle(ModelReceived("c", 80, vec(2.0)))  # a third agrees
    d.round({})
    assert g.round == 80


def test_peers_that_return_together_still_catch_up() -> None:
    """c came back with us and delivers our round; a and b, ahead, are enough."""
    clock = Clock()
    clock.now = 1000.0
    g = core(clock, rounds=200, start_round=20, anchor_time=0.0, tolerance=1)
    g.start()
    d = Driver(g, clock)
    g.handle(ModelReceived("a", 80, vec(2.0)))
    g.handle(ModelReceived("b", 80, vec(2.0)))
    d.round({"c": 0.1})
    assert g.round == 80


def test_a_resumed_peer_knows_its_pace_from_its_checkpoint() -> None:
    clock = Clock()
    clock.now = 1000.0
    g = core(clock, rounds=200, start_round=20, anchor_time=940.0, pace=1.0, tolerance=1)
    g.start()
    d = Driver(g, clock)
    for peer in NEIGHBOURS:
        g.handle(ModelReceived(peer, 80, vec(2.0)))
    d.round({})  # skips at once: 60 s at ~1 s a round make round 80 plausible
    assert g.round == 80


# ----------------------------------------------------------------------- the pieces


@given(
    st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=4, max_size=16),
    st.floats(min_value=0.0, max_value=10.0),
)
def test_at_most_half_a_neighbourhood_is_ever_slow(delays: list[float], extra: float) -> None:
    arrivals = Arrivals(WaitPolicy(), deadline=5.0)
    peers = [f"p{i}" for i in range(len(delays))]
    for r in range(4):
        arrivals.started(r, 0.0)
        for peer, delay in zip(peers, delays, strict=True):
            arrivals.arrived(peer, r, delay + extra * (r % 2))
    slow = arrivals.judge(peers)
    assert 2 * len(slow) <= len(peers)


@given(st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=40))
def test_the_adaptive_deadline_stays_within_its_bounds(delays: list[float]) -> None:
    arrivals = Arrivals(WaitPolicy(), deadline=5.0)
    for r, delay in enumerate(delays):
        arrivals.started(r, float(r))
        arrivals.arrived("p", r, r + delay)
    deadline = arrivals.round_deadline(["p"])
    if len(delays) < WaitPolicy().min_samples:
        assert deadline is None  # not known yet: the configured deadline after the send
    else:
        assert deadline is not None
        assert deadline >= 0.25  # 5% of the deadline at least
        assert deadline >= 3 * sorted(delays[-16:])[0]  # 3x a 90th percentile at least


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["arrived", "early", "in vain"]),
            st.integers(min_value=0, max_value=40),
            st.floats(min_value=0.0, max_value=10.0),
        ),
        max_size=80,
    ),
    st.integers(min_value=1, max_value=6),
)
def test_medians_and_percentiles_are_those_of_the_window_kept(
    records: list[tuple[str, int, float]], window: int
) -> None:
    """Delays are kept sorted as they are recorded (not sorted per question): the median
    and the 90th percentile must still be those of the delays in the window, whatever
    the order of arrivals, early ones, waits in vain and replacements."""
    policy = WaitPolicy(window=window, min_samples=1)
    arrivals = Arrivals(policy, deadline=5.0)
    kept: dict[int, float] = {}  # the window, recorded from scratch
    for kind, r, t in records:
        arrivals.started(r, 0.0)
        if kind == "arrived":
            arrivals.arrived("p", r, t)
            kept[r] = t
        elif kind == "early":
            arrivals.arrived_early("p", r)
            kept[r] = 0.0
        elif r not in kept:
            arrivals.waited_in_vain("p", r, t)
            kept[r] = t
        else:
            arrivals.waited_in_vain("p", r, t)  # an arrival is better evidence: ignored
        if len(kept) > window:
            del kept[min(kept)]
        ordered = sorted(kept.values())
        mid = len(ordered) // 2
        median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        assert arrivals.typical("p") == median
        q90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
        assert arrivals.round_deadline(["p"]) == max(
            policy.min_deadline * 5.0, policy.deadline_factor * q90 + policy.margin * 5.0
        )


@given(st.lists(st.floats(min_value=0.0, max_value=50.0), min_size=1, max_size=60))
def test_the_pace_is_the_median_of_the_last_window_of_rounds(seconds: list[float]) -> None:
    budget = SkipBudget(anchor_round=0, anchor_time=0.0, window=5)
    budget.seed_pace(3.0)
    taken = [3.0]
    for s in seconds:
        budget.round_took(s)
        taken.append(s)
        last = sorted(taken[-5:])
        mid = len(last) // 2
        assert budget.pace == (last[mid] if len(last) % 2 else (last[mid - 1] + last[mid]) / 2)


def test_the_skip_limit_counts_our_rounds_and_our_idle_time() -> None:
    budget = SkipBudget(anchor_round=10, anchor_time=100.0, speedup=1.25)
    assert budget.limit(200.0) is None  # no pace yet
    for _ in range(4):
        budget.round_took(2.0)  # 8 s of rounds, from 100 s to 108 s
    assert budget.limit(108.0) == 15  # 10 + 1.25 x 4 rounds
    assert budget.limit(148.0) == 40  # + 1.25 x 40 s idle (frozen, say) at 2 s a round
    for _ in range(16):
        budget.round_took(20.0)  # the machine got busy: rounds of 20 s
    # 20 rounds done; the 320 s they took are not idle time
    assert budget.limit(100.0 + 8 + 320) == 10 + 25
    with pytest.raises(ValueError, match="speedup"):
        SkipBudget(anchor_round=0, anchor_time=0.0, speedup=0.5)


def test_adaptive_waiting_needs_a_clock() -> None:
    with pytest.raises(ValueError, match="clock"):
        SyncGossip(
            neighbourhood=StaticNeighbourhood(NEIGHBOURS),
            rounds=5,
            deadline=5.0,
            wait=WaitPolicy(adaptive=True),
        )
    assert (
        Train(0)
        in SyncGossip(neighbourhood=StaticNeighbourhood(NEIGHBOURS), rounds=5, deadline=5.0).start()
    )
