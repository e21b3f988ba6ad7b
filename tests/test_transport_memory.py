"""The in-process network: delays, order, faults, and reproducibility under a seed."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gossipfl.errors import ConfigError
from gossipfl.transport import (
    Connected,
    Disconnected,
    LinkProfile,
    MemoryNetwork,
    PeerUnreachable,
    Received,
    TransportClosed,
)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def drain(receive: trio.MemoryReceiveChannel, until: float) -> list[tuple[float, object]]:
    """Everything a channel yields until virtual time ``until``, with arrival times."""
    got: list[tuple[float, object]] = []
    with trio.move_on_at(until):
        async for event in receive:
            got.append((trio.current_time(), event))  # noqa: PERF401 - timed as they come
    return got


async def test_frames_arrive_after_latency_plus_transmission_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(default=LinkProfile(latency=0.1, bandwidth=1000.0))
    a, b = net.endpoint("a"), net.endpoint("b")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        start = trio.current_time()
        for i in range(3):
            await a.send("b", bytes([i]) * 100)  # 0.1 s of transmission each
        got = await drain(b.events(), start + 5)
        nursery.cancel_scope.cancel()
    assert isinstance(got[0][1], Connected)
    frames = [(round(t - start, 6), e.data[0]) for t, e in got if isinstance(e, Received)]
    assert frames == [(0.2, 0), (0.3, 1), (0.4, 2)]


async def test_the_far_side_hears_of_a_connection_one_latency_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(default=LinkProfile(latency=0.25))
    a, b = net.endpoint("a"), net.endpoint("b")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        start = trio.current_time()
        await a.send("b", b"first")
        got_a = await drain(a.events(), start + 0.1)
        got_b = await drain(b.events(), start + 1)
        await b.send("a", b"back")  # b knows already: no second Connected for anyone
        got_a += await drain(a.events(), start + 2)
        nursery.cancel_scope.cancel()
    assert [(round(t - start, 6), type(e).__name__) for t, e in got_a] == [
        (0.0, "Connected"),
        (1.25, "Received"),
    ]
    assert [(round(t - start, 6), type(e).__name__) for t, e in got_b] == [
        (0.25, "Connected"),
        (0.25, "Received"),
    ]


async def test_loss_is_reproducible_per_seed_and_close_to_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def survivors(seed: int) -> list[int]:
        net = MemoryNetwork(seed=seed, default=LinkProfile(latency=0.01, loss=0.3))
        a, b = net.endpoint("a"), net.endpoint("b")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            for i in range(1000):
                await a.send("b", i.to_bytes(2, "big"))
            got = await drain(b.events(), trio.current_time() + 1)
            nursery.cancel_scope.cancel()
        return [int.from_bytes(e.data, "big") for _, e in got if isinstance(e, Received)]

    first, again, other = await survivors(1), await survivors(1), await survivors(2)
    assert first == again
    assert first != other
    assert 650 <= len(first) <= 750
    assert first == sorted(first)  # FIFO even with losses


async def test_duplicates_are_delivered_twice(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(default=LinkProfile(duplicate=1.0))
    a, b = net.endpoint("a"), net.endpoint("b")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        await a.send("b", b"x")
        got = await drain(b.events(), trio.current_time() + 1)
        nursery.cancel_scope.cancel()
    assert [e.data for _, e in got if isinstance(e, Received)] == [b"x", b"x"]
    assert net.stats.frames_duplicated == 1


async def test_jitter_never_reorders_a_link(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=3, default=LinkProfile(latency=0.01, jitter=0.5))
    a, b = net.endpoint("a"), net.endpoint("b")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        for i in range(50):
            await a.send("b", bytes([i]))
        got = await drain(b.events(), trio.current_time() + 10)
        nursery.cancel_scope.cancel()
    assert [e.data[0] for _, e in got if isinstance(e, Received)] == list(range(50))


async def test_partition_disconnects_and_drops_then_heals(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(default=LinkProfile(latency=1.0))
    a, b, c = net.endpoint("a"), net.endpoint("b"), net.endpoint("c")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        await a.send("b", b"in flight")
        await a.send("c", b"same side")
        net.partition([["a", "c"], ["b"]])
        with pytest.raises(PeerUnreachable):
            await a.send("b", b"blocked")
        got_b = await drain(b.events(), trio.current_time() + 2)
        got_c = await drain(c.events(), trio.current_time() + 2)
        net.heal()
        await a.send("b", b"healed")
        got_b += await drain(b.events(), trio.current_time() + 2)
        nursery.cancel_scope.cancel()
    kinds_b = [type(e).__name__ for _, e in got_b]
    # b never heard of the first connection: it was cut before its notice arrived
    assert kinds_b == ["Connected", "Received"]
    assert [e.data for _, e in got_b if isinstance(e, Received)] == [b"healed"]
    assert [e.data for _, e in got_c if isinstance(e, Received)] == [b"same side"]


async def test_churn_take_down_and_bring_up(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    a, b = net.endpoint("a"), net.endpoint("b")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        await a.connect("b")
        net.take_down("b")
        with pytest.raises(PeerUnreachable):
            await a.send("b", b"x")
        net.bring_up("b")
        await a.send("b", b"back")
        got_a = await drain(a.events(), trio.current_time() + 1)
        got_b = await drain(b.events(), trio.current_time() + 1)
        nursery.cancel_scope.cancel()
    assert [type(e).__name__ for _, e in got_a] == ["Connected", "Disconnected", "Connected"]
    assert isinstance(got_a[1][1], Disconnected)
    assert got_a[1][1].reason == "peer left the network"
    assert [e.data for _, e in got_b if isinstance(e, Received)] == [b"back"]


async def test_closed_transport_refuses_sends_and_ends_its_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    a, b = net.endpoint("a"), net.endpoint("b")
    await a.connect("b")
    await a.aclose()
    await a.aclose()  # idempotent
    with pytest.raises(TransportClosed):
        await a.send("b", b"x")
    with pytest.raises(PeerUnreachable):
        await b.send("a", b"x")
    events = [e async for e in a.events()]
    assert events == [Connected("b"), Disconnected("b", "peer closed")]


def test_bad_link_profiles_and_duplicate_ids_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        LinkProfile(loss=1.5)
    with pytest.raises(ConfigError):
        LinkProfile(bandwidth=0)
    net = MemoryNetwork()
    net.endpoint("a")
    with pytest.raises(ConfigError):
        net.endpoint("a")
