"""Hole punching (DCUtR) between real py-libp2p hosts on 127.0.0.1.

On loopback no NAT stands in the way, so the peer reached through the relay gets its
direct connection by dialling back (the spec's first step); the exchange of addresses and
the simultaneous dial through two real NATs is tests/test_netns_nat.py's. Here: the
switch from the relayed connection to the direct one loses no frame and keeps their
order, the relayed connection is closed afterwards, and what a peer may make us do is
bounded. Every test is bounded by ``pytest.mark.timeout`` and ``trio.fail_after``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import multiaddr
import pytest
import trio
from libp2p.connection_types import ConnectionType
from libp2p.custom_types import TProtocol
from libp2p.host.exceptions import StreamFailure
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import PROTOCOL_ID as DCUTR_PROTOCOL

from gossipfl.identity import generate_identity
from gossipfl.transport.base import Received
from gossipfl.transport.libp2p import Allowlist, Libp2pTransport, TransportConfig
from gossipfl.transport.libp2p.holepunch import MAX_ADDRESSES, MAX_SESSIONS, HolePunch, dialable
from gossipfl.transport.libp2p.relay import Path, path_of

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

CONFIG = TransportConfig(read_timeout=2.0, write_timeout=2.0, dial_timeout=5.0, relay_retry_max=1.0)


@dataclass
class Trio:
    r: Libp2pTransport
    a: Libp2pTransport
    b: Libp2pTransport


@contextlib.asynccontextmanager
async def relay_trio(config: TransportConfig = CONFIG) -> AsyncIterator[Trio]:
    """R relays; A and B listen on loopback; B holds a reservation on R."""
    r, a, b = (generate_identity() for _ in range(3))
    ids = [r.peer_id, a.peer_id, b.peer_id]
    async with contextlib.AsyncExitStack() as stack:
        relay = await stack.enter_async_context(
            Libp2pTransport.open(identity=r, allow=ids, config=replace(config, relay_service=True))
        )
        ta = await stack.enter_async_context(
            Libp2pTransport.open(identity=a, allow=ids, config=config)
        )
        tb = await stack.enter_async_context(
            Libp2pTransport.open(
                identity=b, allow=ids, config=replace(config, relays=(relay.listen_addrs[0],))
            )
        )
        await tb.wait_for_reservations()
        yield Trio(relay, ta, tb)


def relayed_connections(me: Libp2pTransport, peer: str) -> list[Any]:
    conns = me.host.get_network().get_connections(ID.from_base58(peer))
    return [c for c in conns if not c.is_closed and path_of(c).relayed]


async def test_a_relayed_connection_turns_direct_without_losing_or_reordering_a_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reaches B only through R; B, reached, starts hole punching; frames flow both
    ways all along. Each side gets every frame, in order; afterwards both are connected
    directly and the relayed connection is gone."""
    caplog.set_level(logging.INFO, logger="gossipfl.transport.libp2p")
    frames = 400
    with trio.fail_after(45):
        async with relay_trio() as t:
            a, b, r = t.a.local_id, t.b.local_id, t.r.local_id
            (circuit,) = [x for x in t.b.listen_addrs if "/p2p-circuit" in x]
            assert await t.a.dial(circuit) == b
            assert t.a.path(b) == Path(r)
            got: dict[str, list[int]] = {a: [], b: []}

            async def send(me: Libp2pTransport, peer: str) -> None:
                for i in range(frames):
                    await me.send(peer, i.to_bytes(4, "big") + bytes(2000))
                    await trio.sleep(0.005)

            async def receive(me: Libp2pTransport) -> None:
                async for event in me.events():
                    if isinstance(event, Received):
                        got[me.local_id].append(int.from_bytes(event.data[:4], "big"))
                        if len(got[me.local_id]) == frames:
                            return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, t.a, b)
                nursery.start_soon(send, t.b, a)
                nursery.start_soon(receive, t.a)
                nursery.start_soon(receive, t.b)
            assert got[a] == list(range(frames))
            assert got[b] == list(range(frames))
            assert t.a.path(b) == Path()
            assert t.b.path(a) == Path()
            with trio.fail_after(10):  # the relayed connection, empty, is closed
                while relayed_connections(t.a, b) or relayed_connections(t.b, a):
                    await trio.sleep(0.05)
            await t.a.send(b, b"after")
            # Counted per peer; after the switch, nothing more goes over the relay.
            size = frames * 2004
            assert t.a.stats.bytes_sent_to == {b: size + 5}
            assert t.a.stats.bytes_sent_relayed < size
            assert t.a.stats.send_failures == t.b.stats.send_failures == 0
            assert t.b._holepunch is not None
            assert t.b._holepunch.succeeded == 1
    messages = [rec.getMessage() for rec in caplog.records]
    assert f"connected to peer {a} (relayed via {r})" in messages
    assert any(m.startswith(f"hole punching to peer {a} worked") for m in messages)
    assert any(m.startswith(f"peer {b}: direct connection up; leaving") for m in messages)


async def test_with_hole_punching_off_the_connection_stays_relayed() -> None:
    with trio.fail_after(30):
        async with relay_trio(replace(CONFIG, hole_punching=False)) as t:
            b, r = t.b.local_id, t.r.local_id
            (circuit,) = [x for x in t.b.listen_addrs if "/p2p-circuit" in x]
            await t.a.dial(circuit)
            await t.a.send(b, b"x")
            await t.b.send(t.a.local_id, b"y")
            with trio.move_on_after(1.0):  # hole punching would take ~0.1 s here
                while t.a.path(b) == Path(r):
                    await trio.sleep(0.05)
            assert t.a.path(b) == Path(r)
            assert t.b._holepunch is None


async def test_a_session_over_a_direct_connection_is_refused() -> None:
    """Hole punching is for relayed connections: a peer cannot use it over a direct one
    to make us dial addresses of its choosing."""
    x, y = generate_identity(), generate_identity()
    ids = [x.peer_id, y.peer_id]
    with trio.fail_after(20):
        async with (
            Libp2pTransport.open(identity=x, allow=ids, config=CONFIG) as tx,
            Libp2pTransport.open(identity=y, allow=ids, config=CONFIG) as ty,
        ):
            await tx.dial(ty.listen_addrs[0])
            with trio.fail_after(5):
                try:  # the reset can come before or after multistream's answer
                    stream = await tx.host.new_stream(
                        ty.host.get_id(), [TProtocol(str(DCUTR_PROTOCOL))]
                    )
                except StreamFailure:
                    pass
                else:
                    assert await read_to_end(stream) == b""
            assert ty._holepunch is not None
            assert ty._holepunch.refused == 1
            await tx.send(ty.local_id, b"still friends")  # the connection itself stays up


async def read_to_end(stream: Any) -> bytes:
    data = b""
    with contextlib.suppress(Exception):  # a reset reads as an error, or as the end
        while chunk := await stream.read(1024):
            data += chunk
    return data


class _Relayed:
    """A stream whose connection says it is relayed (for the unit tests below)."""

    def __init__(self, peer: str) -> None:
        raw = SimpleNamespace(
            get_connection_type=lambda: ConnectionType.RELAYED,
            get_transport_addresses=lambda: [
                multiaddr.Multiaddr(f"/p2p/{peer}/p2p-circuit/p2p/{peer}")
            ],
        )
        self.muxed_conn = SimpleNamespace(peer_id=peer, secured_conn=SimpleNamespace(conn=raw))


def make_hole_punch(allowed: list[str]) -> HolePunch:
    host: Any = SimpleNamespace()
    return HolePunch(host, allowlist=Allowlist(allowed), refusal=lambda peer: None)


def test_a_peer_gets_at_most_max_sessions_in_the_window() -> None:
    peer, other = generate_identity().peer_id, generate_identity().peer_id
    punch = make_hole_punch([peer, other])
    stream: Any = _Relayed(peer)
    for _ in range(MAX_SESSIONS):
        assert punch._why_not(peer, stream) is None
    assert "more than" in (punch._why_not(peer, stream) or "")
    assert punch._why_not(other, _Relayed(other)) is None  # per peer
    outsider = generate_identity().peer_id
    assert punch._why_not(outsider, _Relayed(outsider)) == "not on the allowlist"
    punch._serving.add(other)
    assert "already running" in (punch._why_not(other, _Relayed(other)) or "")


def test_only_a_few_plain_tcp_addresses_are_taken_from_a_peer() -> None:
    punch = make_hole_punch([])
    good = [multiaddr.Multiaddr(f"/ip4/198.51.100.{i}/tcp/4001").to_bytes() for i in range(20)]
    bad = [
        multiaddr.Multiaddr("/ip4/198.51.100.1/udp/4001/quic-v1").to_bytes(),
        multiaddr.Multiaddr("/dns4/example.com/tcp/4001").to_bytes(),
        b"\xff\xfe not an address",
    ]
    taken = punch._decode_observed_addrs(bad + good)
    assert len(taken) == MAX_ADDRESSES
    assert all(dialable(a) for a in taken)
    assert str(taken[0]) == "/ip4/198.51.100.0/tcp/4001"
    assert dialable(multiaddr.Multiaddr("/ip6/2001:db8::1/tcp/1"))
    assert not dialable(multiaddr.Multiaddr("/ip4/1.2.3.4/tcp/1/p2p-circuit"))
