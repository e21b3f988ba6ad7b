"""The non-omniscient mode: a live Byzantine peer attacks from the models it received."""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.testing

from gossipfl import wire
from gossipfl.attacks import (
    LocalAttacker,
    ObservingTransport,
    ReceivedModels,
    arm_peer,
    local_view,
    make_attack,
)
from gossipfl.errors import ConfigError
from gossipfl.transport import Connected, MemoryNetwork, Received


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_received_models_keep_the_newest_rounds_per_neighbour() -> None:
    received = ReceivedModels(keep_rounds=2)
    for r in range(5):
        received.record("a", r, vec(r, r))
    received.record("b", 1, vec(10, 10))
    latest = received.latest(3)
    assert latest["a"][0] == 3
    assert latest["b"][0] == 1
    assert received.latest(2) == {"b": (1, received.latest(1)["b"][1])}  # a's round 2 pruned
    assert received.peers() == ["a", "b"]
    assert received.latest(0) == {}
    with pytest.raises(ValueError, match="keep_rounds"):
        ReceivedModels(keep_rounds=0)


def test_local_view_splits_off_the_target_and_assumes_equal_weights() -> None:
    received = ReceivedModels()
    received.record("target", 4, vec(1, 1))
    received.record("x", 4, vec(3, 1))
    received.record("y", 3, vec(1, 5))  # one round stale: still the freshest of y
    view = local_view(received, "target", 4, vec(0, 0))
    assert not view.omniscient
    assert view.target is not None
    np.testing.assert_array_equal(view.target, vec(1, 1))
    np.testing.assert_array_equal(view.neighbours, np.stack([vec(3, 1), vec(1, 5)]))
    np.testing.assert_allclose(view.weights, [0.25, 0.25])
    assert view.byzantine_weight == view.target_weight == 0.25
    assert (view.byzantine_count, view.population, view.byzantine_total) == (1, 4, 1)
    # dissensus from the local view: x_i - eps * sum_j (x_j - x_i), equal weights
    sent = make_attack("dissensus", epsilon=1).craft(view, np.random.default_rng(0))
    np.testing.assert_allclose(sent, vec(1, 1) - (vec(2, 0) + vec(0, 4)))
    # a target that sent nothing yet: the reference is the mean of what is known
    unknown = local_view(received, "stranger", 4, vec(0, 0))
    assert unknown.target is None
    assert unknown.neighbours.shape == (3, 2)


def test_local_attacker_hook_crafts_per_target() -> None:
    received = ReceivedModels()
    received.record("t1", 0, vec(2, 2))
    received.record("t2", 0, vec(4, 0))
    hook = LocalAttacker(make_attack("sign-flip"), received, seed=1)
    np.testing.assert_allclose(hook("t1", 0, vec(9, 9)), -vec(3, 1))  # mean of t1, t2
    assert hook.crafted == 1


async def test_observing_transport_records_updates_and_passes_every_event_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=0)
    received = ReceivedModels()
    sender = network.endpoint("a")
    observed = ObservingTransport(network.endpoint("b"), received)
    assert observed.local_id == "b"
    assert observed.send_nowait is not None  # the fast path survives the wrapping
    update = wire.encode(wire.Update(sender="a", round=7, vector=vec(1, 2, 3)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(network.run)
        await sender.connect("b")
        await sender.send("b", b"not a frame")
        await sender.send("b", wire.encode(wire.Heartbeat(round=7)))
        await sender.send("b", update)
        events = []
        async for event in observed.events():
            events.append(event)
            if len(events) == 4:
                break
        nursery.cancel_scope.cancel()
    assert isinstance(events[0], Connected)
    assert [e.data for e in events[1:] if isinstance(e, Received)][2] == update
    assert list(received.latest(7)) == ["a"]
    np.testing.assert_array_equal(received.latest(7)["a"][1], vec(1, 2, 3))
    await observed.aclose()


def test_arm_peer_bundles_the_transport_and_the_hook() -> None:
    network = MemoryNetwork(seed=0)
    kit = arm_peer("alie", network.endpoint("evil"), params={"z": "2"}, seed=3)
    assert kit.attack.describe() == "alie(z=2.0, scope='local')"
    assert not kit.trains
    assert kit.outgoing.received is kit.transport.received
    assert arm_peer("label-flip", network.endpoint("evil2")).trains
    with pytest.raises(ConfigError, match="parameters with an attack name"):
        arm_peer(make_attack("ipm"), network.endpoint("evil3"), params={"epsilon": 1})
