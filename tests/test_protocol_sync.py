"""The synchronous gossip core, driven by hand: every interleaving is explicit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossipfl.protocol import (
    DeadlinePassed,
    Finished,
    LocalStepDone,
    Merge,
    MergeDone,
    ModelReceived,
    PeerDown,
    PeerUp,
    Phase,
    ProtocolError,
    RoundDone,
    Send,
    SetTimer,
    StaticNeighbourhood,
    SyncGossip,
    Train,
)

NEIGHBOURS = {"a": 0.25, "b": 0.25, "c": 0.25}


def vec(value: float) -> np.ndarray:
    return np.full(3, value, np.float32)


def core(rounds: int = 3, **kwargs: int) -> SyncGossip:
    return SyncGossip(
        neighbourhood=StaticNeighbourhood(NEIGHBOURS), rounds=rounds, deadline=5.0, **kwargs
    )


def only(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def test_one_full_round_sends_waits_merges_and_advances() -> None:
    g = core()
    assert g.start() == [Train(0)]
    actions = g.handle(LocalStepDone(0, vec(1.0), {"loss": 0.5}))
    assert [(a.peer, a.round) for a in only(actions, Send)] == [("a", 0), ("b", 0), ("c", 0)]
    assert only(actions, SetTimer) == [SetTimer(0, 5.0)]
    assert g.phase is Phase.COLLECTING
    assert g.handle(ModelReceived("c", 0, vec(3.0))) == []
    assert g.handle(ModelReceived("a", 0, vec(1.0))) == []
    (merge,) = g.handle(ModelReceived("b", 0, vec(2.0)))
    assert isinstance(merge, Merge)
    assert merge.peers == ("a", "b", "c")  # sorted: independent of arrival order
    assert [float(v[0]) for v in merge.vectors] == [1.0, 2.0, 3.0]
    assert merge.weights == (0.25, 0.25, 0.25)
    done, train = g.handle(MergeDone(0, vec(7.0)))
    assert isinstance(done, RoundDone)
    assert done.round == 0
    assert done.stats.received == 3
    assert done.stats.missing == ()
    assert done.metrics == {"loss": 0.5}
    assert train == Train(1)


def test_deadline_merges_what_arrived_and_names_the_missing() -> None:
    g = core()
    g.start()
    g.handle(LocalStepDone(0, vec(1.0)))
    g.handle(ModelReceived("b", 0, vec(2.0)))
    (merge,) = g.handle(DeadlinePassed(0))
    assert merge.peers == ("b",)
    done, _ = g.handle(MergeDone(0, vec(1.5)))
    assert done.stats.missing == ("a", "c")
    assert done.stats.expected == 3
    assert done.stats.received == 1


def test_stale_timer_of_an_earlier_round_is_ignored() -> None:
    g = core()
    g.start()
    g.handle(LocalStepDone(0, vec(1.0)))
    for p in "abc":
        g.handle(ModelReceived(p, 0, vec(1.0)))
    g.handle(MergeDone(0, vec(1.0)))
    g.handle(LocalStepDone(1, vec(1.0)))
    assert g.handle(DeadlinePassed(0)) == []
    assert g.phase is Phase.COLLECTING


def test_late_duplicate_and_unexpected_messages_are_counted_not_merged() -> None:
    g = core()
    g.start()
    g.handle(LocalStepDone(0, vec(1.0)))
    g.handle(ModelReceived("a", 0, vec(1.0)))
    assert g.handle(ModelReceived("a", 0, vec(99.0))) == []  # duplicate
    assert g.handle(ModelReceived("mallory", 0, vec(99.0))) == []  # not a neighbour
    (merge,) = g.handle(DeadlinePassed(0))
    assert [float(v[0]) for v in merge.vectors] == [1.0]
    assert g.handle(ModelReceived("b", 0, vec(99.0))) == []  # late: round 0 is merging
    done, _ = g.handle(MergeDone(0, vec(1.0)))
    assert (done.stats.duplicates, done.stats.unexpected, done.stats.late) == (1, 1, 1)
    g.handle(LocalStepDone(1, vec(1.0)))
    assert g.handle(ModelReceived("c", 0, vec(99.0))) == []  # late: an earlier round
    (merge,) = g.handle(DeadlinePassed(1))
    done, _ = g.handle(MergeDone(1, vec(1.0)))
    assert done.stats.late == 1
    assert done.stats.duplicates == 0


def test_early_models_are_buffered_for_their_round() -> None:
    g = core()
    g.start()
    for p in "abc":
        g.handle(ModelReceived(p, 1, vec(5.0)))  # neighbours already in round 1
    g.handle(LocalStepDone(0, vec(1.0)))
    for p in "abc":
        g.handle(ModelReceived(p, 0, vec(2.0)))
    g.handle(MergeDone(0, vec(2.0)))
    actions = g.handle(LocalStepDone(1, vec(2.0)))
    (merge,) = only(actions, Merge)  # everything was already there: no timer
    assert not only(actions, SetTimer)
    assert [float(v[0]) for v in merge.vectors] == [5.0, 5.0, 5.0]


def test_models_too_far_ahead_are_dropped() -> None:
    g = core(rounds=100, max_ahead=2)
    g.start()
    assert g.handle(ModelReceived("a", 3, vec(1.0))) == []
    g.handle(LocalStepDone(0, vec(1.0)))
    g.handle(DeadlinePassed(0))
    done, _ = g.handle(MergeDone(0, vec(1.0)))
    assert done.stats.too_far_ahead == 1


def test_peer_down_stops_the_wait_and_peer_up_restores_it() -> None:
    g = core()
    g.start()
    g.handle(LocalStepDone(0, vec(1.0)))
    g.handle(ModelReceived("a", 0, vec(1.0)))
    g.handle(ModelReceived("b", 0, vec(1.0)))
    (merge,) = g.handle(PeerDown("c"))
    assert merge.peers == ("a", "b")
    g.handle(MergeDone(0, vec(1.0)))
    actions = g.handle(LocalStepDone(1, vec(1.0)))
    assert "c" not in [a.peer for a in only(actions, Send)]  # no sends to a dead peer
    g.handle(PeerUp("c"))
    g.handle(ModelReceived("a", 1, vec(1.0)))
    assert g.handle(ModelReceived("b", 1, vec(1.0))) == []  # waits for c again


def test_finishes_after_the_last_round() -> None:
    g = core(rounds=1)
    g.start()
    g.handle(LocalStepDone(0, vec(1.0)))
    g.handle(DeadlinePassed(0))
    _done, finished = g.handle(MergeDone(0, vec(1.0)))
    assert finished == Finished(1)
    assert g.phase is Phase.DONE
    assert g.handle(ModelReceived("a", 0, vec(1.0))) == []  # late, tolerated


def test_zero_rounds_finishes_at_once() -> None:
    assert core(rounds=0).start() == [Finished(0)]


def test_a_peer_that_fell_behind_skips_once_a_quorum_of_neighbours_is_ahead() -> None:
    g = core(rounds=100, start_round=3)  # restarted from a checkpoint of round 3
    g.start()
    for p, r in (("a", 9), ("b", 10), ("c", 9)):
        g.handle(ModelReceived(p, r, vec(1.0)))
    g.handle(LocalStepDone(3, vec(1.0)))
    g.handle(DeadlinePassed(3))
    done, train = g.handle(MergeDone(3, vec(1.0)))
    assert done.stats.skipped_to is None
    assert train == Train(9)
    assert g.round == 9


def test_a_lying_minority_cannot_make_a_peer_skip() -> None:
    g = core(rounds=10**9)
    g.start()
    g.handle(ModelReceived("a", 10**8, vec(1.0)))  # one neighbour claims a far round
    g.handle(LocalStepDone(0, vec(1.0)))
    g.handle(ModelReceived("b", 0, vec(1.0)))
    g.handle(ModelReceived("c", 0, vec(1.0)))
    g.handle(DeadlinePassed(0))
    _, train = g.handle(MergeDone(0, vec(1.0)))
    assert train == Train(1)


def test_runtime_bugs_raise_protocol_error() -> None:
    g = core()
    with pytest.raises(ProtocolError):
        g.handle(LocalStepDone(0, vec(1.0)))  # not started
    g.start()
    with pytest.raises(ProtocolError):
        g.handle(LocalStepDone(5, vec(1.0)))  # wrong round
    with pytest.raises(ProtocolError):
        g.handle(MergeDone(0, vec(1.0)))  # nothing to merge
    with pytest.raises(ProtocolError):
        g.start()


@given(
    order=st.permutations(["a", "b", "c", "a", "b", "x"]),
    deadline_at=st.integers(0, 6),
)
def test_merge_input_does_not_depend_on_arrival_order(order: list[str], deadline_at: int) -> None:
    """Whatever the interleaving, the merge sees the first copy from each neighbour that
    arrived before the deadline, sorted by peer id."""
    values = {"a": 1.0, "b": 2.0, "c": 3.0, "x": 9.0}
    g = core()
    g.start()
    g.handle(LocalStepDone(0, vec(0.0)))
    merges: list[Merge] = []
    arrived: list[str] = []
    for i, peer in enumerate(order):
        if i == deadline_at and not merges:
            merges += only(g.handle(DeadlinePassed(0)), Merge)
        if not merges:
            arrived.append(peer)
        merges += only(g.handle(ModelReceived(peer, 0, vec(values[peer]))), Merge)
    if not merges:
        merges += only(g.handle(DeadlinePassed(0)), Merge)
    (merge,) = merges
    expected = sorted(set(arrived) & set(NEIGHBOURS))
    assert list(merge.peers) == expected
    assert [float(v[0]) for v in merge.vectors] == [values[p] for p in expected]


def test_a_neighbour_already_past_this_round_is_not_waited_for() -> None:
    g = core(rounds=100)
    g.start()
    g.handle(LocalStepDone(0, vec(1.0)))
    g.handle(ModelReceived("a", 0, vec(1.0)))
    g.handle(ModelReceived("b", 0, vec(1.0)))
    # c's round-0 model was lost; its round-1 model proves it will never come (FIFO links)
    (merge,) = g.handle(ModelReceived("c", 1, vec(5.0)))
    # not waited for; its newer model, the freshest news of c, stands in for the lost one
    assert merge.peers == ("a", "b", "c")
    assert float(merge.vectors[2][0]) == 5.0
    done, _ = g.handle(MergeDone(0, vec(1.0)))
    assert done.stats.missing == ("c",)
    assert done.stats.reused == 1


def test_without_reuse_a_missing_neighbour_leaves_a_smaller_merge() -> None:
    g = core(rounds=100, max_reuse=0)
    g.start()
    g.handle(LocalStepDone(0, vec(1.0)))
    g.handle(ModelReceived("a", 0, vec(1.0)))
    g.handle(ModelReceived("b", 0, vec(1.0)))
    (merge,) = g.handle(ModelReceived("c", 1, vec(5.0)))
    assert merge.peers == ("a", "b")


def test_a_straggler_far_behind_is_not_waited_for() -> None:
    g = core(rounds=100, start_round=10)
    g.start()
    g.handle(ModelReceived("c", 3, vec(1.0)))  # c restarted from an old checkpoint
    g.handle(LocalStepDone(10, vec(1.0)))
    g.handle(ModelReceived("a", 10, vec(1.0)))
    (merge,) = g.handle(ModelReceived("b", 10, vec(1.0)))
    assert merge.peers == ("a", "b")


def test_a_peer_ahead_of_most_of_its_neighbours_waits_for_them() -> None:
    """We ran alone while b and c were away; they are back, far behind. Writing them off
    as stragglers would leave us ahead, and alone, for good: we wait for them."""
    g = core(rounds=100, start_round=10)
    g.start()
    g.handle(ModelReceived("b", 3, vec(1.0)))
    g.handle(ModelReceived("c", 3, vec(1.0)))
    g.handle(LocalStepDone(10, vec(1.0)))
    assert g.handle(ModelReceived("a", 10, vec(1.0))) == []  # still waiting for b and c
    (merge,) = g.handle(ModelReceived("b", 10, vec(2.0)))
    assert merge.peers == ("a", "b")  # c, now alone behind, is a straggler again


def test_a_peer_ahead_of_neighbours_that_stay_behind_waits_only_until_the_deadline() -> None:
    g = core(rounds=100, start_round=10)
    g.start()
    g.handle(ModelReceived("b", 3, vec(1.0)))
    g.handle(ModelReceived("c", 3, vec(1.0)))
    g.handle(LocalStepDone(10, vec(1.0)))
    g.handle(ModelReceived("a", 10, vec(1.0)))
    (merge,) = g.handle(DeadlinePassed(10))
    assert merge.peers == ("a",)


def test_a_single_neighbour_ahead_is_not_enough_to_skip_but_two_are() -> None:
    g = core(rounds=100)
    g.start()
    g.handle(ModelReceived("a", 5, vec(1.0)))
    g.handle(LocalStepDone(0, vec(1.0)))
    g.handle(DeadlinePassed(0))
    _, train = g.handle(MergeDone(0, vec(1.0)))
    assert train == Train(1)
    g.handle(ModelReceived("b", 6, vec(1.0)))
    g.handle(LocalStepDone(1, vec(1.0)))
    g.handle(DeadlinePassed(1))
    done, train = g.handle(MergeDone(1, vec(1.0)))
    assert train == Train(5)
    assert done.stats.skipped_to is None
    g.handle(LocalStepDone(5, vec(1.0)))
    g.handle(DeadlinePassed(5))
    done, _ = g.handle(MergeDone(5, vec(1.0)))
    assert done.stats.skipped_to == 5  # reported by the round that was reached by skipping


class Alternating:
    """A time-varying neighbourhood: 'a' sends to us every third round, 'b' otherwise."""

    def receive_from(self, round: int) -> dict[str, float]:
        return {"a": 0.5} if round % 3 == 0 else {"b": 0.5}

    def send_to(self, round: int) -> tuple[str, ...]:
        return ()


def test_silence_between_a_time_varying_neighbours_turns_is_not_lagging() -> None:
    """'a' was last heard in round 0, its previous turn: in round 3 it must be waited for,
    not written off as a straggler (this stopped all mixing on one-peer exponential)."""
    g = SyncGossip(neighbourhood=Alternating(), rounds=10, deadline=5.0)
    g.start()
    for r in range(3):
        g.handle(LocalStepDone(r, vec(0.0)))
        sender = "a" if r == 0 else "b"
        (merge,) = g.handle(ModelReceived(sender, r, vec(1.0)))
        g.handle(MergeDone(r, vec(1.0)))
    actions = g.handle(LocalStepDone(3, vec(0.0)))
    assert SetTimer(3, 5.0) in actions  # waiting for a, not merging alone
    (merge,) = g.handle(ModelReceived("a", 3, vec(2.0)))
    assert merge.peers == ("a",)


@given(
    n=st.integers(1, 6),
    round=st.integers(0, 30),
    data=st.data(),
)
def test_all_in_agrees_with_waiting_for(n: int, round: int, data: st.DataObject) -> None:
    """``_all_in`` re-states ``_waiting_for``'s tests without building its sets (it is
    asked after every model): the two must never disagree, whatever the neighbours'
    state (down, arrived, ahead, behind, slow)."""
    peers = [f"p{i}" for i in range(n)]
    gossip = SyncGossip(
        neighbourhood=StaticNeighbourhood(dict.fromkeys(peers, 1.0 / (n + 1))),
        rounds=100,
        deadline=5.0,
    )
    gossip.round = round
    subset = st.sets(st.sampled_from(peers))
    gossip._down = set(data.draw(subset))
    gossip._slow = frozenset(data.draw(subset))
    gossip._buffer = {round: dict.fromkeys(data.draw(subset), vec(0.0))}
    gossip._latest = {
        p: latest
        for p in peers
        if (latest := data.draw(st.none() | st.integers(max(0, round - 12), round + 2))) is not None
    }
    assert gossip._all_in() == (not gossip._waiting_for())
