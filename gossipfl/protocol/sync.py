"""Synchronous gossip rounds (D-PSGD, adapt-then-combine), as a pure state machine.

One round, from one peer's point of view::

    TRAINING    run the local step(s) of round t                  -> Train(t)
      | LocalStepDone(t, x)
    COLLECTING  send x to the out-neighbours of round t            -> Send(...)...
                wait for the in-neighbours' round-t models until
                they are all in, or the deadline passes            -> SetTimer(t, deadline)
      | last expected ModelReceived, PeerDown, or DeadlinePassed(t)
    MERGING     merge own model with what arrived                  -> Merge(t, ...)
      | MergeDone(t, x')
    (next)      report the round, start round t+1                  -> RoundDone(t), Train(t+1)

Tolerated, and counted in :class:`~gossipfl.protocol.events.RoundStats` rather than
raised: models that miss the deadline (late), arrive twice (duplicates), come from peers
that are not in-neighbours of that round (unexpected), or claim a round too far ahead
(dropped so that a lying peer cannot make us buffer without bound).

A missing neighbour's last model stands in for it for up to ``max_reuse`` rounds (a model
that came late, or one of a round ahead, is the freshest news of that neighbour there
is); after that the merge is smaller, with its weight returning to our own model. Without
the stand-in, one neighbour that falls silent (a crash, an insider withholding its model,
or a peer that keeps just missing our deadline) leaves robust rules short of the models
they need, and they keep the own model: the peer trains alone.

Who is waited for: an in-neighbour that is not down, has not delivered its model of this
round yet, and is neither past this round (links are ordered, so once a later round of its
has arrived, this round's model will never come) nor known to be more than
``catch_up_lag`` rounds behind (it owed us newer models that never came, so its model
could not arrive before the deadline anyway). A straggler therefore costs its neighbours
nothing once they know it is behind. Unless most of our live neighbours are behind: then
we are the one ahead (we ran alone while they were away, say), and we wait for them until
the deadline, or we would stay ahead, and alone, for good.

How long we wait adapts (with a clock, see :mod:`~gossipfl.protocol.pacing`): the deadline
follows the arrival delays observed, and an in-neighbour that keeps the others waiting is
*slow* and no longer waited for, so that one slow or stalling neighbour cannot set the pace
of the whole job.

A peer that fell behind (restarted from a checkpoint, or was frozen) catches up: it skips
to the round that at least ``max(catch_up_quorum, tolerance + 1)`` in-neighbours have
reached, ``catch_up_lag`` or more ahead. Round numbers are claims, so a skip needs

* more agreeing neighbours than the ``tolerance`` of Byzantine ones the merge rule is
  configured for;
* and it goes no further than the elapsed time makes plausible
  (:class:`~gossipfl.protocol.pacing.SkipBudget`). A claim further ahead than that (by
  more than ``max_ahead``) is not believed at all, and counted as ``implausible``.

Time-varying topologies need nothing special: the neighbourhood is asked for the
in- and out-neighbours of each round.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from gossipfl.protocol.core import Phase, RoundCore
from gossipfl.protocol.events import (
    Action,
    DeadlinePassed,
    Event,
    LocalStepDone,
    Merge,
    MergeDone,
    ModelReceived,
    PeerDown,
    PeerId,
    PeerUp,
    ProtocolError,
    RoundDone,
    RoundStats,
    Send,
    SetTimer,
    Vector,
)
from gossipfl.protocol.neighbourhood import Neighbourhood
from gossipfl.protocol.pacing import Arrivals, SkipBudget, WaitPolicy

Clock = Callable[[], float]


class SyncGossip(RoundCore):
    """Synchronous rounds with a per-round deadline.

    Args:
        neighbourhood: in/out-neighbours and mixing weights per round.
        rounds: the round number to stop at (exclusive), counted from round 0.
        deadline: seconds to wait for neighbours' models after our own is sent.
        start_round: the first round to train (a restarted peer resumes here).
        max_ahead: models for rounds further ahead than this are dropped, not buffered.
        catch_up_lag: how far behind counts as a straggler (not waited for), and how far
            ahead the neighbours must be before we skip rounds to catch up.
        catch_up_quorum: in-neighbours that must be ahead before we skip (at most the
            in-degree).
        tolerance: Byzantine in-neighbours the merge rule withstands; a skip needs more
            agreeing neighbours than this.
        max_reuse: a missing neighbour's last model stands in for it if it is at most this
            many rounds old (0: never).
        clock: the time now, in seconds (the runtime's clock; virtual in simulations).
            Without one, deadlines are fixed and skips are bounded by claims alone.
        wait: how deadlines and slow neighbours adapt (needs ``clock``).
        speedup: see :class:`~gossipfl.protocol.pacing.SkipBudget`.
        anchor_time: when we would have been at ``start_round`` had we never stopped (a
            resumed peer: when its checkpoint was written); default: now.
        pace: our typical round duration before a restart (from the checkpoint), so that
            a resumed peer can judge a skip at once.
        start_grace: round 0 waits at least this long (seconds after our own send) for
            each in-neighbour before merging without it, whatever the adaptive wait
            says (and the deadline is at least this long in round 0). The peers of a
            job start within seconds of one another, not at once (processes start, data
            loads, handshakes complete); that skew is not network delay, and without the
            grace the first to start would merge round 0 without the last as soon as
            most of the others were in. An insider that withholds its round-0 model
            costs its neighbours this much once.
    """

    def __init__(
        self,
        *,
        neighbourhood: Neighbourhood,
        rounds: int,
        deadline: float,
        start_round: int = 0,
        max_ahead: int = 8,
        catch_up_lag: int = 2,
        catch_up_quorum: int = 2,
        tolerance: int = 0,
        max_reuse: int = 2,
        clock: Clock | None = None,
        wait: WaitPolicy | None = None,
        speedup: float = 1.25,
        anchor_time: float | None = None,
        pace: float | None = None,
        start_grace: float = 0.0,
    ) -> None:
        super().__init__(neighbourhood=neighbourhood, rounds=rounds, start_round=start_round)
        if deadline <= 0 or max_ahead < 1 or catch_up_lag < 1 or catch_up_quorum < 1:
            raise ValueError("need deadline > 0, max_ahead >= 1, catch_up_lag/quorum >= 1")
        if tolerance < 0 or max_reuse < 0:
            raise ValueError("need tolerance >= 0 and max_reuse >= 0")
        if not 0 <= start_grace < math.inf:
            raise ValueError(f"need 0 <= start_grace < inf, got {start_grace}")
        self.deadline = deadline
        self._start_grace = start_grace
        self._max_ahead = max_ahead
        self._catch_up_lag = catch_up_lag
        self._catch_up_quorum = catch_up_quorum
        self._tolerance = tolerance
        self._max_reuse = max_reuse
        self._clock = clock
        policy = wait if wait is not None else WaitPolicy(adaptive=clock is not None)
        if policy.adaptive and clock is None:
            raise ValueError("adaptive waiting needs a clock")
        self._arrivals = Arrivals(policy, deadline)
        self._budget: SkipBudget | None = None
        if clock is not None:
            self._budget = SkipBudget(
                anchor_round=start_round,
                anchor_time=clock() if anchor_time is None else anchor_time,
                speedup=speedup,
            )
            if pace is not None:
                self._budget.seed_pace(pace)
        self._last: dict[PeerId, tuple[int, Vector]] = {}  # newest model of each neighbour
        self._slow: frozenset[PeerId] = frozenset()
        self._round_deadline: float | None = None
        self._sent_at = 0.0
        self._deadline_at = 0.0  # when this round's wait ends (clock time)
        self._candidates: frozenset[PeerId] = frozenset()  # waited for this round, or in
        self._in_time: dict[PeerId, float] = {}  # their delays this round
        self._arrival_times: dict[PeerId, float] = {}  # this round's models, when they came
        self._round_started: float | None = None
        self._reused = 0
        self._implausible: tuple[PeerId, ...] = ()
        self._own: Vector | None = None
        self._step_metrics: dict[str, float] = {}
        self._buffer: dict[int, dict[PeerId, Vector]] = {}
        self._latest: dict[PeerId, int] = {}
        self._merge_peers: tuple[PeerId, ...] = ()
        self._missing: tuple[PeerId, ...] = ()
        self._skipped_to: int | None = None
        self._late = self._duplicates = self._unexpected = self._too_far = 0

    def handle(self, event: Event) -> list[Action]:
        """Feed one event; get the actions to carry out, in order."""
        if isinstance(event, ModelReceived):
            return self._on_model(event)
        if isinstance(event, LocalStepDone):
            return self._on_local_step(event)
        if isinstance(event, DeadlinePassed):
            if event.round == self.round and self.phase is Phase.COLLECTING:
                return self._merge()
            return []  # a timer of a round already merged: harmless
        if isinstance(event, MergeDone):
            return self._on_merged(event)
        if isinstance(event, PeerDown):
            self._down.add(event.peer)
            if self.phase is Phase.COLLECTING and self._all_in():
                return self._merge()
            return []
        if isinstance(event, PeerUp):
            self._down.discard(event.peer)
            return []
        raise ProtocolError(f"unknown event {event!r}")

    # ----------------------------------------------------------------- transitions

    def _on_local_step(self, event: LocalStepDone) -> list[Action]:
        self._expect(Phase.TRAINING, event)
        self._own = event.vector
        self._step_metrics = dict(event.metrics)
        self.phase = Phase.COLLECTING
        actions: list[Action] = [
            Send(peer, self.round, event.vector)
            for peer in self.neighbourhood.send_to(self.round)
            if peer not in self._down
        ]
        self._round_deadline = None
        early = self._buffer.get(self.round, {})
        if self._clock is not None:
            self._sent_at = self._clock()
            self._slow = self._arrivals.judge(self.neighbourhood.receive_from(self.round))
        waiting = self._waiting_for()
        if not waiting:
            actions.extend(self._merge())
            return actions
        most = max(self.deadline, self._grace())
        if self._clock is None:
            self._round_deadline = most
            actions.append(SetTimer(self.round, most))
            return actions
        in_early = set(early) & set(self.neighbourhood.receive_from(self.round))
        self._candidates = frozenset(waiting | (in_early - self._slow))
        start = self._round_started if self._round_started is not None else self._sent_at
        self._in_time = {
            p: max(0.0, t - start) for p, t in self._arrival_times.items() if p in self._candidates
        }
        self._deadline_at = self._sent_at + most  # the most we ever wait
        adaptive = self._arrivals.round_deadline(waiting)
        if adaptive is not None:
            self._deadline_at = min(self._deadline_at, self._at_least_grace(start + adaptive))
        actions.append(self._timer())
        actions.extend(self._shorten_wait())
        return actions

    def _grace(self) -> float:
        """The start grace, in round 0 only (see the class doc)."""
        return self._start_grace if self.round == 0 else 0.0

    def _at_least_grace(self, at: float) -> float:
        """A shortened end of the wait, no earlier than the start grace allows."""
        grace = self._grace()
        return max(at, self._sent_at + grace) if grace else at

    def _timer(self) -> SetTimer:
        assert self._clock is not None
        self._round_deadline = self._deadline_at - self._sent_at
        return SetTimer(self.round, max(0.0, self._deadline_at - self._clock()))

    def _on_model(self, event: ModelReceived) -> list[Action]:
        self._file(event)
        # Any message may settle the wait: the last expected model, or news that a
        # neighbour is already past this round (its model of this round will never come).
        if self.phase is Phase.COLLECTING:
            if self._all_in():
                return self._merge()
            if event.round == self.round and event.peer in self._candidates:
                if self._clock is not None and event.peer not in self._in_time:
                    start = self._round_started if self._round_started is not None else 0.0
                    self._in_time[event.peer] = max(0.0, self._clock() - start)
                return self._shorten_wait()
        return []

    def _shorten_wait(self) -> list[Action]:
        """Once most of the neighbours waited for are in, give the rest only a multiple of
        the time those took (see :mod:`~gossipfl.protocol.pacing`)."""
        if self._clock is None or self._round_started is None:
            return []
        if 2 * len(self._in_time) <= len(self._candidates):
            return []
        early = self._arrivals.early_deadline(self._in_time.values())
        if early is None:
            return []
        shorter = self._at_least_grace(self._round_started + early)
        if shorter >= self._deadline_at:
            return []
        self._deadline_at = shorter
        return [self._timer()]

    def _file(self, event: ModelReceived) -> None:
        """Buffer the model if it is useful, else count why not."""
        peer, round = event.peer, event.round
        if peer not in self.neighbourhood.receive_from(round):
            self._unexpected += 1
            return
        if round > self._latest.get(peer, -1):
            self._latest[peer] = round
        last = self._last.get(peer)
        if last is None or round >= last[0]:
            self._last[peer] = (round, event.vector)
        if self._clock is not None:
            now = self._clock()
            self._arrivals.arrived(peer, round, now)
            if round == self.round:
                self._arrival_times.setdefault(peer, now)
        if (
            round < self.round
            or self.phase is Phase.DONE
            or (round == self.round and self.phase is Phase.MERGING)
        ):
            self._late += 1
            return
        if round > self.round + self._max_ahead:
            self._too_far += 1
            return
        slot = self._buffer.setdefault(round, {})
        if peer in slot:
            self._duplicates += 1
            return
        slot[peer] = event.vector

    def _waiting_for(self) -> set[PeerId]:
        # Asked after every model that arrives: the attributes it reads are locals.
        round = self.round
        arrived = self._buffer.get(round, {})
        down, latest_of, slow = self._down, self._latest, self._slow
        waiting: set[PeerId] = set()
        behind: set[PeerId] = set()
        live = 0
        for peer in self.neighbourhood.receive_from(round):
            if peer in down:
                continue
            live += 1
            if peer in arrived:
                continue
            latest = latest_of.get(peer)
            if latest is not None and latest > round:
                continue
            if latest is not None and self._known_behind(peer, latest):
                behind.add(peer)
                continue
            if peer in slow:
                continue  # it keeps us waiting: its model is used if in, or reused later
            waiting.add(peer)
        if 2 * len(behind) > live:
            # Most of our live neighbours are behind: then we are the one ahead (say, we
            # ran alone while they were away), and running on would leave us alone for
            # good. Wait for them, as for anyone, until the deadline.
            waiting |= behind
        return waiting

    def _known_behind(self, peer: PeerId, latest: int) -> bool:
        """More than ``catch_up_lag`` rounds behind *and* owing us a newer model.

        On a time-varying graph a neighbour we have not heard from for a while may simply
        not have been our neighbour meanwhile, so silence alone proves nothing: the
        neighbour must also have been our in-neighbour in one of the last few rounds after
        its latest model. (A short look-back only ever errs towards waiting.)
        """
        if latest >= self.round - self._catch_up_lag:
            return False
        first = max(latest + 1, self.round - self._catch_up_lag - 1)
        return any(peer in self.neighbourhood.receive_from(q) for q in range(first, self.round))

    def _all_in(self) -> bool:
        """Whether :meth:`_waiting_for` is empty, answered without building its sets: it
        is asked after every model that arrives, and is usually settled by the first
        neighbour still owed (the same tests, in the same order, with no side effects)."""
        round = self.round
        arrived = self._buffer.get(round, {})
        down, latest_of, slow = self._down, self._latest, self._slow
        behind = live = 0
        for peer in self.neighbourhood.receive_from(round):
            if peer in down:
                continue
            live += 1
            if peer in arrived:
                continue
            latest = latest_of.get(peer)
            if latest is not None and latest > round:
                continue
            if latest is not None and self._known_behind(peer, latest):
                behind += 1
                continue
            if peer in slow:
                continue
            return False  # waited for
        return not 2 * behind > live  # most live neighbours behind: waited for too

    def _merge(self) -> list[Action]:
        assert self._own is not None
        if self._clock is not None:
            now = self._clock()
            for peer in self._waiting_for():  # merged at the deadline without them
                self._arrivals.waited_in_vain(peer, self.round, now)
        self.phase = Phase.MERGING
        weights = self.neighbourhood.receive_from(self.round)
        arrived = self._buffer.get(self.round, {})
        self._merge_peers = tuple(sorted(p for p in arrived if p in weights))
        self._missing = tuple(sorted(set(weights) - set(self._merge_peers)))
        models = dict(arrived)
        oldest = self.round - self._max_reuse
        for peer in self._missing if self._max_reuse else ():
            last = self._last.get(peer)
            if last is not None and last[0] >= oldest:
                models[peer] = last[1]
                self._reused += 1
        peers = tuple(sorted(p for p in models if p in weights))
        return [
            Merge(
                round=self.round,
                own=self._own,
                peers=peers,
                vectors=tuple(models[p] for p in peers),
                weights=tuple(weights[p] for p in peers),
            )
        ]

    def _on_merged(self, event: MergeDone) -> list[Action]:
        self._expect(Phase.MERGING, event)
        self._own = event.vector
        stats = RoundStats(
            expected=len(self.neighbourhood.receive_from(self.round)),
            received=len(self._merge_peers),
            missing=self._missing,
            late=self._late,
            duplicates=self._duplicates,
            unexpected=self._unexpected,
            too_far_ahead=self._too_far,
            skipped_to=self._skipped_to,
            reused=self._reused,
            deadline=self._round_deadline,
            slow=tuple(sorted(self._slow)),
            implausible=self._implausible,
        )
        self._late = self._duplicates = self._unexpected = self._too_far = 0
        self._reused = 0
        self._implausible = ()
        self._skipped_to = None
        started = self._round_started
        if self._clock is not None and self._budget is not None and started is not None:
            self._budget.round_took(self._clock() - started)
        done = RoundDone(self.round, event.vector, stats, self._step_metrics)
        self.round += 1
        self._catch_up()
        for stale in [r for r in self._buffer if r < self.round]:
            del self._buffer[stale]
        return [done, *self._begin_round()]

    @property
    def pace(self) -> float | None:
        """Our typical round duration in seconds (None without a clock, or before the
        first round); saved with checkpoints."""
        return self._budget.pace if self._budget is not None else None

    def typical_delay(self, peer: PeerId) -> float | None:
        """How long after ours ``peer``'s models typically arrive (its median delay in
        seconds), once enough rounds are known; for logs and diagnostics."""
        return self._arrivals.typical(peer)

    def claimed_round(self, peer: PeerId) -> int | None:
        """The furthest round ``peer`` has claimed to be at."""
        return self._latest.get(peer)

    def _begin_round(self) -> list[Action]:
        if self._clock is not None:
            now = self._clock()
            self._round_started = now
            self._arrivals.started(self.round, now)
            early = self._buffer.get(self.round, {})
            self._arrival_times = dict.fromkeys(early, now)
            for peer in early:
                self._arrivals.arrived_early(peer, self.round)
        return super()._begin_round()

    def _catch_up(self) -> None:
        """Skip ahead if enough in-neighbours are well ahead of us (see the module doc)."""
        neighbours = self.neighbourhood.receive_from(self.round)
        if not neighbours:
            return
        claims = {p: self._latest.get(p, -1) for p in neighbours}
        believable = claims
        limit = None
        # Usually nobody claims to be ahead at all: then every claim is believable and no
        # skip can follow, known from the furthest claim alone (once per round, per peer).
        furthest = max(claims.values())
        if self._clock is not None and self._budget is not None:
            limit = self._budget.limit(self._clock())
            if limit is None:
                return  # our own pace is not known yet: no skip can be judged plausible
            bound = limit + self._max_ahead
            if furthest <= bound:
                self._implausible = ()
            else:
                believable = {p: c for p, c in claims.items() if c <= bound}
                self._implausible = tuple(sorted(set(claims) - set(believable)))
        if furthest < self.round + self._catch_up_lag:
            return  # nobody far enough ahead to follow (the quorum is at least 1)
        quorum = max(min(self._catch_up_quorum, len(claims)), self._tolerance + 1)
        ahead = sorted(
            (c for c in believable.values() if c >= self.round + self._catch_up_lag),
            reverse=True,
        )
        if len(ahead) < quorum:
            return  # too few believable neighbours to outvote the Byzantine ones expected
        target = min(ahead[quorum - 1], self.rounds - 1)
        if limit is not None:
            target = min(target, limit)
        if target >= self.round + self._catch_up_lag:
            self.round = target
            self._skipped_to = target
