"""The dial-back check between real py-libp2p hosts on 127.0.0.1 (behind a real NAT:
tests/test_netns_nat.py). Every network test is bounded by ``pytest.mark.timeout`` and
``trio.fail_after``."""

from __future__ import annotations

import logging
from dataclasses import replace

import hypothesis.strategies as st
import msgpack
import pytest
import trio
from hypothesis import given

from gossipfl.identity import generate_identity
from gossipfl.transport.base import PeerUnreachable
from gossipfl.transport.libp2p import Libp2pTransport, TransportConfig
from gossipfl.transport.libp2p.reachability import (
    DIALBACK_PROTOCOL,
    MAX_PORTS,
    DialbackError,
    ExpectedDialbacks,
    Reachability,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)

CONFIG = TransportConfig(read_timeout=2.0, write_timeout=2.0, dial_timeout=5.0)
CHECKING = replace(CONFIG, reachability_check=True)


async def wait_for_answer(transport: Libp2pTransport) -> Reachability:
    while transport.reachability.state == "unknown":
        await trio.sleep(0.02)
    return transport.reachability


@pytest.mark.network
@pytest.mark.timeout(30)
async def test_a_peer_learns_it_is_reachable_from_a_peer_that_dialled_it_back() -> None:
    a, b = generate_identity(), generate_identity()
    ids = [a.peer_id, b.peer_id]
    with trio.fail_after(20):
        async with (
            Libp2pTransport.open(identity=a, allow=ids, config=CHECKING) as ta,
            Libp2pTransport.open(identity=b, allow=ids, config=CONFIG) as tb,
        ):
            assert ta.reachability == Reachability()  # nobody asked yet
            await ta.dial(tb.listen_addrs[0])
            found = await wait_for_answer(ta)
            (port,) = {int(x.split("/tcp/")[1].split("/")[0]) for x in ta.listen_addrs}
            assert found.state == "reachable"
            assert found.addresses == (f"/ip4/127.0.0.1/tcp/{port}/p2p/{a.peer_id}",)
            assert found.checked_by == (b.peer_id,)
            assert str(found).startswith(f"reachable at /ip4/127.0.0.1/tcp/{port}/p2p/")
            # The dial-back was a connection of its own, never added beside ours.
            assert len(ta.host.get_network().get_connections(tb.host.get_id())) == 1
            await ta.send(b.peer_id, b"still connected")
            assert tb.reachability == Reachability()  # B did not check (default off)


@pytest.mark.network
@pytest.mark.timeout(30)
async def test_a_peer_that_listens_on_nothing_is_unreachable_without_asking() -> None:
    a, b = generate_identity(), generate_identity()
    ids = [a.peer_id, b.peer_id]
    with trio.fail_after(20):
        async with (
            Libp2pTransport.open(identity=a, listen=[], allow=ids, config=CHECKING) as ta,
            Libp2pTransport.open(identity=b, allow=ids, config=CONFIG) as tb,
        ):
            found = await wait_for_answer(ta)
            assert found.state == "unreachable"
            assert "listening on nothing" in str(found)
            await ta.dial(tb.listen_addrs[0])


@pytest.mark.network
@pytest.mark.timeout(30)
async def test_a_bad_dial_back_request_is_dropped_and_a_port_nobody_listens_on_is_no() -> None:
    a, b = generate_identity(), generate_identity()
    ids = [a.peer_id, b.peer_id]
    with trio.fail_after(20):
        async with (
            Libp2pTransport.open(identity=a, allow=ids, config=CONFIG) as ta,
            Libp2pTransport.open(identity=b, allow=ids, config=CONFIG) as tb,
        ):
            await ta.dial(tb.listen_addrs[0])
            with pytest.raises(PeerUnreachable):
                await ta.request(b.peer_id, DIALBACK_PROTOCOL, b"\x92\x01\x02", timeout=5.0)
            with pytest.raises(PeerUnreachable):  # too many ports
                await ta.request(
                    b.peer_id, DIALBACK_PROTOCOL, encode_request(list(range(1, 10))), timeout=5.0
                )
            (mine,) = {int(x.split("/tcp/")[1].split("/")[0]) for x in ta.listen_addrs}
            with trio.socket.socket() as s:  # a port of ours that nothing listens on
                await s.bind(("127.0.0.1", 0))
                free = s.getsockname()[1]
            reply = await ta.request(
                b.peer_id, DIALBACK_PROTOCOL, encode_request([mine, free]), timeout=10.0
            )
            assert decode_reply(reply, 2) == ("127.0.0.1", [True, False])


@given(st.lists(st.integers(1, 65535), min_size=1, max_size=MAX_PORTS))
def test_requests_round_trip(ports: list[int]) -> None:
    assert decode_request(encode_request(ports)) == ports


@given(st.ip_addresses().map(str), st.lists(st.booleans(), min_size=1, max_size=MAX_PORTS))
def test_replies_round_trip(ip: str, results: list[bool]) -> None:
    assert decode_reply(encode_reply(ip, results), len(results)) == (ip, results)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used in msgpack
        msgpack.packb([4141]),
        msgpack.packb({"ports": []}),
        msgpack.packb({"ports": [0]}),
        msgpack.packb({"ports": [65536]}),
        msgpack.packb({"ports": [True]}),
        msgpack.packb({"ports": [1.5]}),
        msgpack.packb({"ports": [1], "ip": "1.2.3.4"}),  # the asker names no address
        msgpack.packb({"ports": list(range(1, MAX_PORTS + 2))}),
        bytes(100),
    ],
)
def test_bad_requests_are_refused(data: bytes) -> None:
    with pytest.raises(DialbackError):
        decode_request(data)


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb({"ip": "1.2.3.4", "reachable": [True]}),  # one port asked, two answers
        msgpack.packb({"ip": "not an ip", "reachable": [True, False]}),
        msgpack.packb({"ip": "1.2.3.4", "reachable": [1, 0]}),
        msgpack.packb({"ip": "1.2.3.4"}),
    ],
)
def test_bad_replies_are_refused(data: bytes) -> None:
    with pytest.raises(DialbackError):
        decode_reply(data, 2)


def test_only_the_expected_dial_back_hang_up_is_lowered_to_debug() -> None:
    """py-libp2p logs the asked peer's hang-up at ERROR; the filter lowers exactly that
    record, for a peer we asked, and leaves every other one alone."""
    expected = ExpectedDialbacks()
    expected.expect("peer-a")

    def record(msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("libp2p.network.swarm", level, __file__, 1, msg, args, None)

    lowered = record("fail to upgrade mux for peer %s", "peer-a")
    assert not expected.filter(lowered)  # dropped here (DEBUG is not enabled)
    assert lowered.levelno == logging.DEBUG
    for other in (
        record("fail to upgrade mux for peer %s", "peer-b"),  # not asked
        record("failed to upgrade security for peer at %s: %s", "addr", "x"),
        record("fail to upgrade mux for peer %s", "peer-a", level=logging.WARNING),
    ):
        level = other.levelno
        assert expected.filter(other)
        assert other.levelno == level
