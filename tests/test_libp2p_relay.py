"""Circuit relay v2 between real py-libp2p hosts on 127.0.0.1: a peer that listens on
nothing (as a peer behind NAT is, for the others) is reached through a relay.

R relays; A listens; B listens on nothing and reserves a slot on R. Every test is
bounded by ``pytest.mark.timeout`` and ``trio.fail_after``.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import numpy as np
import pytest
import trio

from gossipfl.cli import main
from gossipfl.daemon.testing import Daemon, kill_all, metrics, start_daemon
from gossipfl.errors import ConfigError
from gossipfl.identity import Identity, generate_identity
from gossipfl.peer.config import PeerConfig
from gossipfl.peer.runtime import Peer
from gossipfl.protocol.neighbourhood import StaticNeighbourhood
from gossipfl.transport.base import Connected, PeerUnreachable, Received, TransportEvent
from gossipfl.transport.libp2p import Allowlist, Libp2pTransport, TransportConfig
from gossipfl.transport.libp2p.guards import guard_of
from gossipfl.transport.libp2p.relay import Path, RelayError, reserve

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

# Hole punching off: these tests are about relaying (B would otherwise dial A directly
# as soon as A reached it through R; tests/test_libp2p_holepunch.py tests that).
FAST = TransportConfig(
    read_timeout=2.0,
    write_timeout=2.0,
    dial_timeout=5.0,
    relay_retry_max=1.0,
    hole_punching=False,
)


@dataclass
class Trio:
    r: Libp2pTransport
    a: Libp2pTransport
    b: Libp2pTransport

    @property
    def circuit_of_b(self) -> str:
        """B's advertised circuit address (B listens on nothing: its only one)."""
        (address,) = self.b.listen_addrs
        return address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def open_relay(
    identity: Identity, allow: list[str], port: int = 0
) -> contextlib.AbstractAsyncContextManager[Libp2pTransport]:
    return Libp2pTransport.open(
        identity=identity,
        listen=[f"/ip4/127.0.0.1/tcp/{port}"],
        allow=allow,
        config=replace(FAST, relay_service=True),
    )


@contextlib.asynccontextmanager
async def relay_trio(*, extra: tuple[Identity, ...] = ()) -> AsyncIterator[Trio]:
    """R, A and B, each allowing the three of them (R also ``extra``), B reserved on R."""
    r, a, b = (generate_identity() for _ in range(3))
    ids = [r.peer_id, a.peer_id, b.peer_id]
    async with contextlib.AsyncExitStack() as stack:
        relay = await stack.enter_async_context(open_relay(r, ids + [e.peer_id for e in extra]))
        ta = await stack.enter_async_context(
            Libp2pTransport.open(identity=a, allow=ids, config=FAST)
        )
        tb = await stack.enter_async_context(
            Libp2pTransport.open(
                identity=b,
                listen=[],
                allow=ids,
                config=replace(FAST, relays=(relay.listen_addrs[0],)),
            )
        )
        await tb.wait_for_reservations()
        yield Trio(relay, ta, tb)


async def next_of(transport: Libp2pTransport, kind: type[TransportEvent]) -> TransportEvent:
    async for event in transport.events():
        if isinstance(event, kind):
            return event
    raise AssertionError(f"events() ended before a {kind.__name__}")


async def test_a_peer_listening_on_nothing_is_reached_through_the_relay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gossipfl.transport.libp2p")
    with trio.fail_after(30):
        async with relay_trio() as t:
            r, a, b = t.r.local_id, t.a.local_id, t.b.local_id
            assert t.circuit_of_b == f"{t.r.listen_addrs[0]}/p2p-circuit/p2p/{b}"
            assert list(t.b.reservations) == [r]

            assert await t.a.dial(t.circuit_of_b) == b
            await t.a.send(b, b"a to b")
            event = await next_of(t.b, Received)
            assert isinstance(event, Received)
            assert (event.peer, event.data) == (a, b"a to b")
            await t.b.send(a, b"b to a")  # over the same relayed connection
            event = await next_of(t.a, Received)
            assert isinstance(event, Received)
            assert (event.peer, event.data) == (b, b"b to a")
            # The transports count what went over the relay.
            assert t.a.stats.bytes_sent_to == {b: 6}
            assert t.a.stats.bytes_sent_relayed == 6
            assert t.b.stats.bytes_received_from == {a: 6}
            assert t.b.stats.bytes_received_relayed == 6

            assert t.a.path(b) == Path(r)
            assert str(t.a.path(b)) == f"relayed via {r}"
            assert t.b.path(a) == Path(r)  # the relay's ID, not B's own
            assert t.a.path(r) == Path()
            assert str(t.a.path(r)) == "direct"
            assert t.a.peer_paths[b].relayed
            assert not t.b.peer_paths[r].relayed
            # The relayed connection has our receive limits, as a direct one does.
            for me, peer in ((t.a, b), (t.b, a)):
                (conn,) = me.host.get_network().get_connections(me.host.get_id().from_base58(peer))
                assert guard_of(conn.muxed_conn) is not None
    messages = [rec.getMessage() for rec in caplog.records]
    assert f"connected to peer {b} (relayed via {r})" in messages
    assert f"connected to peer {a} (relayed via {r})" in messages
    assert f"connected to peer {r} (direct)" in messages


async def test_direct_addresses_are_tried_first_then_the_circuit() -> None:
    with trio.fail_after(30):
        async with relay_trio() as t:
            b = t.b.local_id
            t.a.add_peer_address(b, f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{b}")  # refused
            t.a.add_peer_address(b, t.circuit_of_b)
            await t.a.connect(b)
            assert t.a.path(b) == Path(t.r.local_id)


async def test_concurrent_connects_to_a_peer_open_one_circuit() -> None:
    with trio.fail_after(30):
        async with relay_trio() as t:
            b = t.b.local_id
            t.a.add_peer_address(b, t.circuit_of_b)
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(t.a.connect, b)
            conns = t.a.host.get_network().get_connections(t.b.host.get_id())
            assert len([c for c in conns if not c.is_closed]) == 1
            assert t.a.path(b) == Path(t.r.local_id)
            assert t.a._dialling == {}  # nothing left behind


async def test_a_peer_off_the_allowlists_gets_no_relayed_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """C is allowed by R (so R relays for it) but not by B: B's handshake gate refuses it
    on the relayed connection as on a direct one. D is allowed by nobody: R refuses it."""
    c, d = generate_identity(), generate_identity()
    with trio.fail_after(30):
        async with relay_trio(extra=(c,)) as t:
            r, b = t.r.local_id, t.b.local_id
            everyone = [r, t.a.local_id, b, c.peer_id]
            async with (
                Libp2pTransport.open(identity=c, allow=everyone, config=FAST) as tc,
                Libp2pTransport.open(identity=d, allow=everyone, config=FAST) as td,
            ):
                with contextlib.suppress(PeerUnreachable):
                    # Its handshake may be let through, only to be told why (security.py).
                    await tc.dial(t.circuit_of_b)
                with contextlib.suppress(PeerUnreachable):
                    await tc.send(b, b"let me in")
                # R's handshake refuses D, or lets it through to tell it why and then its
                # relay gate refuses the circuit (202: PERMISSION_DENIED).
                with pytest.raises(PeerUnreachable, match=f"relay of .*{r}|status 202"):
                    await td.dial(t.circuit_of_b)
                await t.a.dial(t.circuit_of_b)  # an allowed peer still gets through
                await t.a.send(b, b"allowed")
                seen: list[TransportEvent] = []
                async for event in t.b.events():
                    seen.append(event)
                    if isinstance(event, Received):
                        break
                peers = [e.peer for e in seen if isinstance(e, Connected | Received)]
                assert peers[-2:] == [t.a.local_id, t.a.local_id]
                assert c.peer_id not in peers
                assert d.peer_id not in peers
                assert t.b.refused_peers >= 1
                assert c.peer_id not in t.b.connected_peers
                assert t.r.refused_peers >= 1  # D, at R's handshake


async def test_the_relay_serves_only_peers_on_its_allowlist(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The relay's own gate, under the handshake's: a peer connected to R (here: one its
    transport lets in) but not allowed to use the relay may neither reserve nor open a
    circuit."""
    c = generate_identity()
    with trio.fail_after(30):
        async with relay_trio(extra=(c,)) as t:
            r, b = t.r.local_id, t.b.local_id
            gate = t.r._relay
            gate._allowlist = Allowlist([r, t.a.local_id, b])  # C connects, may not relay
            everyone = [r, t.a.local_id, b, c.peer_id]
            async with Libp2pTransport.open(identity=c, allow=everyone, config=FAST) as tc:
                await tc.dial(t.r.listen_addrs[0])
                with pytest.raises(RelayError, match="PERMISSION_DENIED"):
                    await reserve(tc.host, t.r.host.get_id())
                with pytest.raises(PeerUnreachable, match=f"cannot reach peer {b}"):
                    await tc.dial(t.circuit_of_b)
                assert gate.refused == 2
                assert b not in tc.connected_peers
    refused = [m for rec in caplog.records if "refused a relay request" in (m := rec.getMessage())]
    assert refused
    assert c.peer_id in refused[0]


async def test_the_reservation_is_retried_while_the_relay_is_down_and_renewed_after_a_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gossipfl.transport.libp2p")
    r, a, b = (generate_identity() for _ in range(3))
    ids = [r.peer_id, a.peer_id, b.peer_id]
    port = free_port()
    relay_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{r.peer_id}"

    async def wait_for_log(text: str) -> None:
        while not any(text in rec.getMessage() for rec in caplog.records):
            await trio.sleep(0.01)

    with trio.fail_after(40):
        async with (
            Libp2pTransport.open(identity=a, allow=ids, config=FAST) as ta,
            Libp2pTransport.open(
                identity=b, listen=[], allow=ids, config=replace(FAST, relays=(relay_addr,))
            ) as tb,
        ):
            await wait_for_log(f"no reservation on relay {r.peer_id}")
            assert tb.reservations == {}
            circuit = f"{relay_addr}/p2p-circuit/p2p/{b.peer_id}"
            # b listens on nothing: its circuit is its only address, and it is not
            # advertised while no reservation makes it reach b.
            assert tb.listen_addrs == [circuit]
            assert tb.advertised_addrs == []
            for life in range(2):
                async with open_relay(r, ids, port) as relay:
                    await tb.wait_for_reservations()
                    assert list(tb.reservations) == [relay.local_id]
                    assert tb.advertised_addrs == [circuit]
                    await ta.dial(tb.listen_addrs[0])
                    await ta.send(b.peer_id, f"life {life}".encode())
                    event = await next_of(tb, Received)
                    assert isinstance(event, Received)
                    assert event.data == f"life {life}".encode()
                    await ta.disconnect(b.peer_id)
                with trio.fail_after(5):
                    while tb.reservations:
                        await tb.reservations_changed()
                assert tb.advertised_addrs == []
    assert any("lost our reservation on relay" in rec.getMessage() for rec in caplog.records)


async def test_two_peers_average_their_vectors_over_the_relay() -> None:
    """B cannot be dialled (it listens on nothing) and does not know A's address either:
    every frame of the job crosses R."""
    rounds = 10
    r, a, b = (generate_identity() for _ in range(3))
    ids = [r.peer_id, a.peer_id, b.peer_id]
    models = [{"x": np.full(2000, 1.0, np.float32)}, {"x": np.full(2000, 3.0, np.float32)}]
    config = PeerConfig(deadline=5.0, heartbeat_interval=0.5, heartbeat_timeout=3.0)
    finals: dict[str, np.ndarray] = {}
    with trio.fail_after(45):
        async with contextlib.AsyncExitStack() as stack:
            relay = await stack.enter_async_context(open_relay(r, ids))
            ta = await stack.enter_async_context(
                Libp2pTransport.open(identity=a, allow=ids, config=FAST)
            )
            tb = await stack.enter_async_context(
                Libp2pTransport.open(
                    identity=b,
                    listen=[],
                    allow=ids,
                    config=replace(FAST, relays=(relay.listen_addrs[0],)),
                )
            )
            await tb.wait_for_reservations()
            await ta.dial(tb.listen_addrs[0])
            transports = {a.peer_id: (ta, b.peer_id, 0), b.peer_id: (tb, a.peer_id, 1)}

            async def run(me: str) -> None:
                transport, other, i = transports[me]
                hood = StaticNeighbourhood({other: 0.5})
                async with Peer(
                    transport=transport, model=models[i], neighbourhood=hood, config=config
                ) as peer:
                    summary = await peer.run(rounds)
                    assert summary.last_round == rounds - 1
                    assert summary.counters.bad_frames == 0
                    finals[me] = peer.vector

            async with trio.open_nursery() as nursery:
                for me in transports:
                    nursery.start_soon(run, me)
            assert ta.path(b.peer_id) == Path(r.peer_id)
    assert sorted(finals) == sorted([a.peer_id, b.peer_id])
    for vector in finals.values():
        np.testing.assert_allclose(vector, 2.0, rtol=1e-5)


def test_relay_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=re.escape("'/ip4/1.2.3.4/tcp/1'")):
        TransportConfig(relays=("/ip4/1.2.3.4/tcp/1",))  # no /p2p/<relay id>
    with pytest.raises(ConfigError, match="'nonsense'"):
        TransportConfig(relays=("nonsense",))
    with pytest.raises(ConfigError, match="tuple of multiaddrs"):
        TransportConfig(relays="/ip4/1.2.3.4/tcp/1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="relay_max_circuits"):
        TransportConfig(relay_max_circuits=0)


async def test_a_relay_needs_an_allowlist_and_a_relay_must_be_allowed() -> None:
    with pytest.raises(ConfigError, match="relay_service needs an allowlist"):
        async with Libp2pTransport.open(config=TransportConfig(relay_service=True)):
            pass
    relay = generate_identity().peer_id
    with pytest.raises(ConfigError, match="not on our allowlist"):
        async with Libp2pTransport.open(
            allow=[generate_identity().peer_id],
            config=TransportConfig(relays=(f"/ip4/127.0.0.1/tcp/9/p2p/{relay}",)),
        ):
            pass


@pytest.mark.timeout(120)
def test_two_gossipfl_start_peers_that_nobody_can_dial_train_together_through_a_relay(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two peers listen on nothing (as behind two NATs), a third runs the relay: the two
    reserve on it, learn each other's circuit addresses from membership, and train
    together; every round each one's model reaches the other, over the relay."""
    homes = {name: tmp_path / name for name in ("relay", "a", "b")}
    ids = {}
    for name, home in homes.items():  # in this process: three interpreters cost seconds
        assert main(["init", "--home", str(home), "--quiet"]) == 0
        ids[name] = capsys.readouterr().out.strip()
    rounds = 6
    common = (
        "--rule", "mean", "--rounds", str(rounds), "--set", "training.deadline=3.0",
        "--set", "output.eval_every=3", "--set", "topology.min_peers=3",
        "--set", "network.exchange_interval=0.3",
    )  # fmt: skip

    def allow(*names: str) -> list[str]:
        return [arg for name in names for arg in ("--allow", ids[name])]

    daemons: list[Daemon | None] = []
    try:
        relay = start_daemon(
            homes["relay"], "--listen", "/ip4/127.0.0.1/tcp/0", "--relay-service",
            *allow("a", "b"), *common,
        )  # fmt: skip
        daemons.append(relay)
        address = relay.addresses[0]
        for name, other in (("a", "b"), ("b", "a")):
            nat = ("--set", "network.listen=[]", "--relay", address, "--bootstrap", address)
            daemons.append(start_daemon(homes[name], *nat, *allow("relay", other), *common))
        for daemon in daemons:
            assert daemon is not None
            assert daemon.process.wait(timeout=90) == 0, daemon.stderr()
        for name, other in (("a", "b"), ("b", "a")):
            rows = [r for r in metrics(homes[name]) if r["kind"] == "round"]
            assert len(rows) == rounds
            # both neighbours' models (the relay's and the other NATed peer's) every round
            assert all(r["received"] == r["expected"] == 2 for r in rows), rows
            # the operator sees each neighbour's path, without -v
            log = (homes[name] / "stderr.log").read_text()
            assert f"peer {ids[other]}: relayed via {ids['relay']}" in log
            assert f"peer {ids['relay']}: direct" in log
            paths = {r["neighbour"]: r["path"] for r in metrics(homes[name]) if r["kind"] == "path"}
            assert paths == {ids[other]: f"relayed via {ids['relay']}", ids["relay"]: "direct"}
    finally:
        kill_all(daemons)
