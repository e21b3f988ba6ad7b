"""The libp2p transport between real py-libp2p hosts on 127.0.0.1.

Every test is bounded twice: ``pytest.mark.timeout`` (the process) and ``trio.fail_after``
(the event loop), so a hang fails fast with a traceback instead of eating the suite.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol

from gossipfl import wire
from gossipfl.errors import ConfigError
from gossipfl.identity import generate_identity
from gossipfl.transport.base import (
    Connected,
    Disconnected,
    PeerUnreachable,
    Received,
    TransportClosed,
    TransportEvent,
)
from gossipfl.transport.libp2p import GOSSIP_PROTOCOL, Libp2pTransport, TransportConfig
from gossipfl.transport.libp2p.testing import open_raw_stream, open_stock_host

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

FAST = TransportConfig(read_timeout=2.0, write_timeout=2.0, dial_timeout=5.0)
LOGGER = "gossipfl.transport.libp2p"


@contextlib.asynccontextmanager
async def transports(
    n: int, config: TransportConfig = FAST
) -> AsyncIterator[list[Libp2pTransport]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(Libp2pTransport.open(config=config)) for _ in range(n)
        ]


async def next_event(
    transport: Libp2pTransport,
    kind: type[TransportEvent],
    *,
    seen: list[TransportEvent] | None = None,
) -> TransportEvent:
    """The next event of ``kind``; the ones skipped on the way are appended to ``seen``."""
    async for event in transport.events():
        if isinstance(event, kind):
            return event
        if seen is not None:
            seen.append(event)
    raise AssertionError(f"events() ended before a {kind.__name__}")


async def frames(transport: Libp2pTransport, count: int) -> list[Received]:
    out: list[Received] = []
    while len(out) < count:
        event = await next_event(transport, Received)
        assert isinstance(event, Received)
        out.append(event)
    return out


def received(events: list[TransportEvent]) -> list[tuple[str, bytes]]:
    """``Received`` events compare by identity; compare (peer, data) instead."""
    return [(e.peer, e.data) for e in events if isinstance(e, Received)]


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


async def wait_reset(stream: INetStream) -> None:
    """Block until the other side resets (or closes) ``stream``."""
    with contextlib.suppress(Exception):
        while await stream.read(1 << 16):
            pass


# ------------------------------------------------------------------ the basics


async def test_frames_flow_both_ways_small_and_large_after_connected() -> None:
    big = bytes(range(256)) * (12 * 4096 + 7)  # 12 MiB + change
    with trio.fail_after(30):
        async with transports(2) as (a, b):
            peer = await a.dial(b.listen_addrs[0])
            assert peer == b.local_id
            await a.send(b.local_id, b"hello")
            await a.send(b.local_id, big)
            seen: list[TransportEvent] = []
            got = [await next_event(b, Received, seen=seen) for _ in range(2)]
            assert seen == [Connected(a.local_id)]
            assert [(r.peer, r.data) for r in got] == [(a.local_id, b"hello"), (a.local_id, big)]

            await b.send(a.local_id, big[::-1])
            await b.send(a.local_id, b"back")
            seen = []
            got = [await next_event(a, Received, seen=seen) for _ in range(2)]
            assert seen == [Connected(b.local_id)]
            assert [(r.peer, r.data) for r in got] == [
                (b.local_id, big[::-1]),
                (b.local_id, b"back"),
            ]
            assert a.stats.frames_sent == b.stats.frames_received == 2
            assert b.stats.bytes_received == 5 + len(big)


async def test_listen_addrs_are_full_multiaddrs_on_loopback() -> None:
    with trio.fail_after(10):
        async with transports(1) as (a,):
            assert a.listen_addrs
            for addr in a.listen_addrs:
                assert addr.startswith("/ip4/127.0.0.1/tcp/")
                assert addr.endswith(f"/p2p/{a.local_id}")
            assert a.local_id.startswith("12D3KooW")


async def test_identity_gives_the_peer_id() -> None:
    me = generate_identity()
    with trio.fail_after(10):
        async with Libp2pTransport.open(identity=me, config=FAST) as a:
            assert a.local_id == me.peer_id


async def test_many_frames_keep_their_order() -> None:
    bodies = [i.to_bytes(4, "big") * (1 + i % 50) for i in range(300)]
    with trio.fail_after(30):
        async with transports(2) as (a, b):
            await a.dial(b.listen_addrs[0])
            for body in bodies:
                await a.send(b.local_id, body)
            assert [r.data for r in await frames(b, len(bodies))] == bodies


async def test_frames_sent_just_before_aclose_are_delivered() -> None:
    """py-libp2p drops a stream's unread data when the connection closes; we finish the
    stream first, so the last frames (a final model, a goodbye) are not lost."""
    with trio.fail_after(20):
        async with transports(1) as (b,):
            async with Libp2pTransport.open(config=FAST) as a:
                await a.dial(b.listen_addrs[0])
                for i in range(5):
                    await a.send(b.local_id, bytes([i]) * 100_000)
            got = await frames(b, 5)
            assert [r.data[:1] for r in got] == [bytes([i]) for i in range(5)]
            assert isinstance(await next_event(b, Disconnected), Disconnected)


async def test_disconnect_after_send_delivers_the_frame_first() -> None:
    with trio.fail_after(20):
        async with transports(2) as (a, b):
            await a.dial(b.listen_addrs[0])
            await a.send(b.local_id, b"refusal: wrong network")
            await a.disconnect(b.local_id)
            seen: list[TransportEvent] = []
            assert await next_event(b, Disconnected, seen=seen) == Disconnected(
                a.local_id, "connection closed"
            )
            assert (a.local_id, b"refusal: wrong network") in received(seen)
            assert await next_event(a, Disconnected) == Disconnected(
                b.local_id, "connection closed"
            )
            assert a.connected_peers == set()
            assert b.connected_peers == set()


async def test_send_reconnects_after_disconnect() -> None:
    with trio.fail_after(20):
        async with transports(2) as (a, b):
            await a.dial(b.listen_addrs[0])
            await a.send(b.local_id, b"one")
            await a.disconnect(b.local_id)
            await next_event(b, Disconnected)
            await a.send(b.local_id, b"two")  # dials again, on a fresh stream
            seen: list[TransportEvent] = []
            assert (await next_event(b, Received, seen=seen)).data == b"two"  # type: ignore[union-attr]
            assert Connected(a.local_id) in seen


async def test_peer_restart_with_the_same_identity_is_reached_again() -> None:
    """A peer that restarts (same key, same port) is reachable at once: the failed dials
    while it was down do not block the next one, and our stale stream is replaced."""
    who = generate_identity()
    with trio.fail_after(30):
        async with transports(1) as (a,):
            async with Libp2pTransport.open(identity=who, config=FAST) as b:
                address = b.listen_addrs[0]
                await a.dial(address)
                await a.send(who.peer_id, b"before")
                assert (await frames(b, 1))[0].data == b"before"
            await next_event(a, Disconnected)
            with pytest.raises(PeerUnreachable, match=r"refused|failed"):
                await a.send(who.peer_id, b"while down")
            port = address.split("/tcp/")[1].split("/")[0]
            async with Libp2pTransport.open(
                identity=who, listen=[f"/ip4/127.0.0.1/tcp/{port}"], config=FAST
            ) as b2:
                await a.send(who.peer_id, b"after")
                assert (await frames(b2, 1))[0].data == b"after"


# -------------------------------------------------------------- errors we raise


async def test_connect_without_an_address_says_so() -> None:
    with trio.fail_after(10):
        async with transports(1) as (a,):
            with pytest.raises(PeerUnreachable, match="no known address for peer"):
                await a.connect(generate_identity().peer_id)


async def test_connect_to_a_closed_port_reports_the_cause() -> None:
    ghost = generate_identity().peer_id
    with trio.fail_after(10):
        async with transports(1) as (a,):
            a.add_peer_address(ghost, "/ip4/127.0.0.1/tcp/1")
            start = time.monotonic()
            with pytest.raises(PeerUnreachable, match=r"cannot reach peer .*Connection refused"):
                await a.connect(ghost)
            assert time.monotonic() - start < 2.0  # no retries with backoff inside libp2p


async def test_addresses_and_peer_ids_are_validated() -> None:
    with trio.fail_after(10):
        async with transports(1) as (a,):
            with pytest.raises(ConfigError, match="must end in /p2p/"):
                await a.dial("/ip4/127.0.0.1/tcp/4001")
            with pytest.raises(ConfigError, match="not a multiaddr"):
                await a.dial("127.0.0.1:4001")
            with pytest.raises(ConfigError, match="not a libp2p peer ID"):
                a.add_peer_address("bob", "/ip4/127.0.0.1/tcp/4001")
            other = generate_identity().peer_id
            with pytest.raises(ConfigError, match="names peer"):
                a.add_peer_address(other, f"/ip4/127.0.0.1/tcp/4001/p2p/{a.local_id}")
            with pytest.raises(PeerUnreachable, match="ourselves"):
                await a.connect(a.local_id)


async def test_frame_size_is_checked_before_sending() -> None:
    config = TransportConfig(max_frame=1000)
    with trio.fail_after(10):
        async with transports(2, config) as (a, b):
            await a.dial(b.listen_addrs[0])
            for size in (0, 1001):
                with pytest.raises(ConfigError, match="1 to 1000 bytes"):
                    await a.send(b.local_id, b"x" * size)
            await a.send(b.local_id, b"x" * 1000)
            assert len((await frames(b, 1))[0].data) == 1000


async def test_listening_on_a_busy_port_is_a_config_error() -> None:
    with trio.fail_after(10):
        async with transports(1) as (a,):
            port = a.listen_addrs[0].split("/tcp/")[1].split("/")[0]
            with pytest.raises(ConfigError, match="cannot listen on"):
                async with Libp2pTransport.open(listen=[f"/ip4/127.0.0.1/tcp/{port}"]):
                    pass


async def test_an_error_in_the_block_comes_out_unwrapped() -> None:
    with trio.fail_after(10), pytest.raises(KeyError, match="mine"):
        async with Libp2pTransport.open(config=FAST):
            raise KeyError("mine")


async def test_cancellation_closes_the_transport_cleanly() -> None:
    with trio.fail_after(10):
        with trio.move_on_after(0.2):
            async with Libp2pTransport.open(config=FAST) as a:
                await trio.sleep_forever()
        with pytest.raises(TransportClosed):
            await a.send(generate_identity().peer_id, b"x")


# ---------------------------------------------------------------- allowlist


async def test_allowlist_refuses_a_stranger_and_tells_it_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    friend, stranger = generate_identity(), generate_identity()
    with trio.fail_after(20):
        async with (
            Libp2pTransport.open(allow={friend.peer_id}, config=FAST) as b,
            Libp2pTransport.open(identity=stranger, config=FAST) as s,
            Libp2pTransport.open(identity=friend, config=FAST) as f,
        ):
            # The stranger is told why: one refusal on a stream b opens, then b hangs up.
            with contextlib.suppress(PeerUnreachable):
                await s.dial(b.listen_addrs[0])
            told = [event async for event in until_refused(s.events(), b.local_id)]
            refusal = wire.decode(told[-1])
            assert isinstance(refusal, wire.Refusal)
            assert refusal.code == wire.RefusalCode.NOT_ALLOWED
            assert refusal.text == f"peer {s.local_id} is not on the allowlist of peer {b.local_id}"
            assert b.refused_peers >= 1
            async for event in s.events():  # b hangs up after telling
                if isinstance(event, Disconnected) and event.peer == b.local_id:
                    break
            # Told once a minute: redialling at once meets the closed handshake again.
            with pytest.raises(PeerUnreachable, match="not on its allowlist"):
                await s.dial(b.listen_addrs[0])
            assert b.refused_peers >= 2
            # The first event b sees is the friend's: nothing of the stranger's got through.
            await f.dial(b.listen_addrs[0])
            await f.send(b.local_id, b"hi, friend here")
            events = [await b.events().__anext__() for _ in range(2)]
            assert events[0] == Connected(friend.peer_id)
            assert received(events[1:]) == [(friend.peer_id, b"hi, friend here")]
            assert stranger.peer_id not in b.connected_peers
    refusals = [r for r in caplog.records if "not on the allowlist" in r.getMessage()]
    assert refusals
    assert stranger.peer_id in refusals[0].getMessage()


async def until_refused(events: Any, peer: str) -> AsyncIterator[bytes]:
    """The frames ``peer`` sends until (and with) the first one that is not a hello."""
    async for event in events:
        if isinstance(event, Received) and event.peer == peer:
            yield event.data
            if not isinstance(wire.decode(event.data), wire.Hello):
                return


async def test_we_do_not_dial_peers_outside_our_allowlist() -> None:
    picky = Libp2pTransport.open(allow=[generate_identity().peer_id], config=FAST)
    with trio.fail_after(10):
        async with transports(1) as (b,), picky as a:
            with pytest.raises(PeerUnreachable, match="not on our allowlist"):
                await a.dial(b.listen_addrs[0])


# ------------------------------------------------------------- hostile input


async def test_valid_frames_from_a_plain_libp2p_peer_arrive_under_its_authenticated_id() -> None:
    with trio.fail_after(20):
        async with transports(1) as (b,), open_stock_host() as raw:
            stream = await open_raw_stream(raw, b.listen_addrs[0])
            await stream.write(frame(b"from a stranger") + frame(b"x" * 70_000))
            got = await frames(b, 2)
            assert {r.peer for r in got} == {str(raw.get_id())}
            assert [len(r.data) for r in got] == [15, 70_000]


@pytest.mark.parametrize(
    ("garbage", "complaint"),
    [
        (b"\xff\xff\xff\xffgarbage", "4294967295 bytes announced"),
        (b"\x00\x00\x00\x00", "0 bytes announced"),
        (struct.pack(">I", 1 << 30) + b"x" * 100, "1073741824 bytes announced"),
    ],
)
async def test_bad_length_prefixes_drop_the_stream_not_the_host(
    garbage: bytes, complaint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with trio.fail_after(20):
        async with transports(2) as (a, b), open_stock_host() as raw:
            stream = await open_raw_stream(raw, b.listen_addrs[0])
            await stream.write(frame(b"good") + garbage)
            await wait_reset(stream)
            assert b.stats.bad_streams == 1
            # The good frame before the garbage was delivered; the host still serves others.
            await a.dial(b.listen_addrs[0])
            await a.send(b.local_id, b"still alive?")
            got = await frames(b, 2)
            assert [(r.peer, r.data) for r in got] == [
                (str(raw.get_id()), b"good"),
                (a.local_id, b"still alive?"),
            ]
    [record] = [r for r in caplog.records if "dropped a gossip stream" in r.getMessage()]
    assert str(raw.get_id()) in record.getMessage()
    assert complaint in record.getMessage()


async def test_a_sender_that_dies_mid_frame_delivers_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The silent-EOF pitfall: a killed sender's stream simply ends. Framing turns it into
    a truncated frame, logged, and never a short message."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with trio.fail_after(20):
        async with transports(1) as (b,):
            async with open_stock_host() as raw:
                stream = await open_raw_stream(raw, b.listen_addrs[0])
                await stream.write(struct.pack(">I", 1000) + b"only part of it")
                await stream.close()
            await next_event(b, Disconnected)  # wait until b has seen the end
            assert b.stats.frames_received == 0
            assert b.stats.bad_streams == 1
    assert any("stream ended inside a frame: 15 of 1000" in r.getMessage() for r in caplog.records)


async def test_a_frozen_sender_is_dropped_after_the_read_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    config = TransportConfig(read_timeout=0.3)
    with trio.fail_after(20):
        async with transports(1, config) as (b,), open_stock_host() as raw:
            stream = await open_raw_stream(raw, b.listen_addrs[0])
            start = trio.current_time()
            await stream.write(struct.pack(">I", 1000) + b"and then nothing")  # a SIGSTOP
            await wait_reset(stream)
            assert trio.current_time() - start >= 0.3
            assert b.stats.bad_streams == 1
            assert b.stats.frames_received == 0
    assert any(
        "no data for 0.3 s" in r.getMessage() and str(raw.get_id()) in r.getMessage()
        for r in caplog.records
    )


async def test_a_receiver_that_stops_reading_makes_send_fail_not_hang() -> None:
    config = TransportConfig(write_timeout=0.5, max_frame=64 << 20)
    with trio.fail_after(20):
        async with transports(1, config) as (a,), open_stock_host() as raw:
            stuck = trio.Event()

            async def never_reads(stream: INetStream) -> None:
                await stuck.wait()

            raw.set_stream_handler(TProtocol(GOSSIP_PROTOCOL), never_reads)
            a.add_peer_address(str(raw.get_id()), str(raw.get_addrs()[0]))
            start = trio.current_time()
            # 32 MiB: more than the 16 MiB a Yamux receiver may grant without reading
            with pytest.raises(PeerUnreachable, match=r"not reading: no progress for 0.5 s"):
                await a.send(str(raw.get_id()), b"x" * (32 << 20))
            assert 0.5 <= trio.current_time() - start < 5
            stuck.set()


async def test_too_many_streams_from_one_peer_are_reset() -> None:
    config = TransportConfig(max_streams_per_peer=3)
    with trio.fail_after(20):
        async with transports(1, config) as (b,), open_stock_host() as raw:
            streams = []
            for i in range(5):  # an extra stream is reset at once, maybe before it is open
                with contextlib.suppress(Exception):
                    stream = await open_raw_stream(raw, b.listen_addrs[0])
                    await stream.write(frame(f"stream {i}".encode()))
                    streams.append(stream)
            got = await frames(b, 3)
            assert sorted(r.data for r in got) == [b"stream 0", b"stream 1", b"stream 2"]
            for stream in streams[3:]:
                await wait_reset(stream)
            assert b.stats.refused_streams == 2
            assert b.stats.frames_received == 3


async def test_unknown_protocols_are_refused_and_the_host_carries_on() -> None:
    with trio.fail_after(20):
        async with transports(1) as (b,), open_stock_host() as raw:
            with pytest.raises(Exception, match="failed to open a stream"):
                await open_raw_stream(raw, b.listen_addrs[0], protocol="/gossipfl/nonsense/9.9.9")
            stream = await open_raw_stream(raw, b.listen_addrs[0])
            await stream.write(frame(b"proper"))
            assert (await frames(b, 1))[0].data == b"proper"


async def test_a_flood_of_tiny_frames_is_delivered_in_order_under_backpressure() -> None:
    config = TransportConfig(max_buffered=4096)
    count = 5000
    with trio.fail_after(30):
        async with transports(1, config) as (b,), open_stock_host() as raw:
            stream = await open_raw_stream(raw, b.listen_addrs[0])
            burst = b"".join(frame(i.to_bytes(4, "big")) for i in range(count))

            async def flood() -> None:
                await stream.write(burst)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                got = await frames(b, count)
            assert [int.from_bytes(r.data, "big") for r in got] == list(range(count))


# ------------------------------------------------------- events and shutdown


async def test_disconnects_are_seen_from_both_sides() -> None:
    with trio.fail_after(20):
        async with transports(3) as (a, b, c):
            await a.dial(b.listen_addrs[0])
            await c.dial(a.listen_addrs[0])
            assert await next_event(b, Connected) == Connected(a.local_id)
            assert await next_event(c, Connected) == Connected(a.local_id)
            await a.aclose()
            assert await next_event(b, Disconnected) == Disconnected(
                a.local_id, "connection closed"
            )
            assert await next_event(c, Disconnected) == Disconnected(
                a.local_id, "connection closed"
            )


async def test_aclose_is_fast_idempotent_and_ends_events() -> None:
    with trio.fail_after(20):
        async with transports(6) as (hub, *spokes):
            for spoke in spokes:
                await spoke.dial(hub.listen_addrs[0])
                await spoke.send(hub.local_id, b"hi")
            await frames(hub, len(spokes))
            assert len(hub.connected_peers) == 5
            start = time.monotonic()
            await hub.aclose()
            assert time.monotonic() - start < 1.0  # five connections, closed together
            start = time.monotonic()
            await hub.aclose()
            assert time.monotonic() - start < 0.05
            left = [event async for event in hub.events()]
            assert {type(e) for e in left} <= {Disconnected, Connected, Received}
            with pytest.raises(TransportClosed):
                await hub.send(spokes[0].local_id, b"x")
            with pytest.raises(TransportClosed):
                await hub.connect(spokes[0].local_id)


async def test_aclose_does_not_wait_for_a_stuck_send() -> None:
    config = TransportConfig(write_timeout=30.0, max_frame=64 << 20)
    with trio.fail_after(20):
        async with open_stock_host() as raw:
            stuck = trio.Event()

            async def never_reads(stream: INetStream) -> None:
                await stuck.wait()

            raw.set_stream_handler(TProtocol(GOSSIP_PROTOCOL), never_reads)
            async with Libp2pTransport.open(config=config) as a:
                a.add_peer_address(str(raw.get_id()), str(raw.get_addrs()[0]))
                failures: list[BaseException] = []

                async def send_big() -> None:
                    try:
                        await a.send(str(raw.get_id()), b"x" * (32 << 20))  # > any Yamux window
                    except (PeerUnreachable, TransportClosed) as exc:
                        failures.append(exc)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_big)
                    while not a.stats.streams_opened:  # until the send is under way
                        await trio.sleep(0.01)
                    start = time.monotonic()
                    await a.aclose()
                    assert time.monotonic() - start < 1.5
                assert len(failures) == 1
            stuck.set()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_two_peer_exchange_twenty_times_in_a_row() -> None:
    """Flake check: the two-peer scenario, from fresh hosts to closed hosts, 20 times."""
    for _ in range(20):
        with trio.fail_after(30):
            await test_frames_flow_both_ways_small_and_large_after_connected()
            await test_disconnect_after_send_delivers_the_frame_first()
