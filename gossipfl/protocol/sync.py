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
(dropped so that a lying peer cannot make us buffer without bound). Missing neighbours
simply leave a smaller merge, with their weight returning to our own model.

Who is waited for: an in-neighbour that is not down, has not delivered its model of this
round yet, and is neither past this round (links are ordered, so once a later round of its
has arrived, this round's model will never come) nor known to be more than
``catch_up_lag`` rounds behind (it owed us newer models that never came, so its model
could not arrive before the deadline anyway). A straggler therefore costs its neighbours
nothing once they know it is behind. Unless most of our live neighbours are behind: then
we are the one ahead (we ran alone while they were away, say), and we wait for them until
the deadline, or we would stay ahead, and alone, for good.

A peer that fell behind (restarted from a checkpoint, or was frozen) catches up: when at
least ``catch_up_quorum`` in-neighbours have reached a round ``catch_up_lag`` or more
ahead, it skips to the highest such round. A quorum, not the maximum, so that a single
lying neighbour cannot make it jump to the end.

Time-varying topologies need nothing special: the neighbourhood is asked for the
in- and out-neighbours of each round.
"""

from __future__ import annotations

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
    ) -> None:
        super().__init__(neighbourhood=neighbourhood, rounds=rounds, start_round=start_round)
        if deadline <= 0 or max_ahead < 1 or catch_up_lag < 1 or catch_up_quorum < 1:
            raise ValueError("need deadline > 0, max_ahead >= 1, catch_up_lag/quorum >= 1")
        self.deadline = deadline
        self._max_ahead = max_ahead
        self._catch_up_lag = catch_up_lag
        self._catch_up_quorum = catch_up_quorum
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
        if self._all_in():
            actions.extend(self._merge())
        else:
            actions.append(SetTimer(self.round, self.deadline))
        return actions

    def _on_model(self, event: ModelReceived) -> list[Action]:
        self._file(event)
        # Any message may settle the wait: the last expected model, or news that a
        # neighbour is already past this round (its model of this round will never come).
        if self.phase is Phase.COLLECTING and self._all_in():
            return self._merge()
        return []

    def _file(self, event: ModelReceived) -> None:
        """Buffer the model if it is useful, else count why not."""
        peer, round = event.peer, event.round
        if peer not in self.neighbourhood.receive_from(round):
            self._unexpected += 1
            return
        if round > self._latest.get(peer, -1):
            self._latest[peer] = round
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
        arrived = self._buffer.get(self.round, {})
        waiting: set[PeerId] = set()
        behind: set[PeerId] = set()
        live = 0
        for peer in self.neighbourhood.receive_from(self.round):
            if peer in self._down:
                continue
            live += 1
            if peer in arrived:
                continue
            latest = self._latest.get(peer)
            if latest is not None and latest > self.round:
                continue
            if latest is not None and self._known_behind(peer, latest):
                behind.add(peer)
                continue
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
        return not self._waiting_for()

    def _merge(self) -> list[Action]:
        assert self._own is not None
        self.phase = Phase.MERGING
        weights = self.neighbourhood.receive_from(self.round)
        arrived = self._buffer.get(self.round, {})
        peers = tuple(sorted(p for p in arrived if p in weights))
        self._merge_peers = peers
        self._missing = tuple(sorted(set(weights) - set(peers)))
        return [
            Merge(
                round=self.round,
                own=self._own,
                peers=peers,
                vectors=tuple(arrived[p] for p in peers),
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
        )
        self._late = self._duplicates = self._unexpected = self._too_far = 0
        self._skipped_to = None
        done = RoundDone(self.round, event.vector, stats, self._step_metrics)
        self.round += 1
        self._catch_up()
        for stale in [r for r in self._buffer if r < self.round]:
            del self._buffer[stale]
        return [done, *self._begin_round()]

    def _catch_up(self) -> None:
        """Skip ahead if enough in-neighbours are well ahead of us (see the module doc)."""
        neighbours = self.neighbourhood.receive_from(self.round)
        if not neighbours:
            return
        seen = sorted((self._latest.get(p, -1) for p in neighbours), reverse=True)
        quorum = min(self._catch_up_quorum, len(seen))
        target = min(seen[quorum - 1], self.rounds - 1)
        if target >= self.round + self._catch_up_lag:
            self.round = target
            self._skipped_to = target
