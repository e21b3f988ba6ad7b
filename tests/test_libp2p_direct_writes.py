"""The direct bulk writes of the batched Noise session (``fastpath.DIRECT_WRITE_MIN``):
large writes sealed and sent with non-blocking system calls on the socket's descriptor,
trio only waiting for writability; on real sockets: what happens when the write is
cancelled, when the peer stops reading, when the socket is closed meanwhile; and on
real hosts, frames in both directions at once, from several peers at once, and a send
cancelled in the middle of its frame."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.io.exceptions import ConnectionClosedError

from gossipfl.transport.base import Disconnected, PeerUnreachable, Received
from gossipfl.transport.libp2p import Libp2pTransport, TransportConfig
from gossipfl.transport.libp2p.fastpath import (
    BatchedNoiseReadWriter,
)
from gossipfl.transport.libp2p.testing import noise_session_keys, reading_session

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

MiB = 1 << 20
FAST = TransportConfig(read_timeout=2.0, write_timeout=2.0, dial_timeout=5.0)


def _over(sock: trio.socket.SocketType, keys: Any) -> BatchedNoiseReadWriter:
    """A batched Noise reader/writer over a real socket, as py-libp2p's TCP connection
    presents it (``conn.stream.stream`` is the trio ``SocketStream``)."""
    conn = SimpleNamespace(stream=SimpleNamespace(stream=trio.SocketStream(sock)))
    return BatchedNoiseReadWriter(conn, keys)


@contextlib.contextmanager
def _pair() -> Iterator[
    tuple[BatchedNoiseReadWriter, BatchedNoiseReadWriter, list[trio.socket.SocketType]]
]:
    """A writer and a reader of one Noise session over the two ends of a real socket
    pair (closed on the way out)."""
    left, right = trio.socket.socketpair()
    initiator, responder = noise_session_keys()
    try:
        yield _over(left, initiator), _over(right, responder), [left, right]
    finally:
        left.close()
        right.close()


class _Counting:
    """Counts the bulk writes that take the direct path (and how many have returned)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = 0
        self.finished = 0
        real = BatchedNoiseReadWriter._seal_and_send

        async def counted(writer: BatchedNoiseReadWriter, *args: Any) -> bool:
            self.started += 1
            try:
                return await real(writer, *args)
            finally:
                self.finished += 1

        monkeypatch.setattr(BatchedNoiseReadWriter, "_seal_and_send", counted)


async def test_a_large_write_goes_out_directly_intact(monkeypatch: pytest.MonkeyPatch) -> None:
    writes = _Counting(monkeypatch)
    with _pair() as (writer, reader, _socks):
        header = bytes(range(12))
        body = bytes(range(251)) * (5 * MiB // 251)  # not a multiple of a Noise message
        session = reading_session(reader)
        got = bytearray(len(body))
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(
                        writer.write_parts, [header, memoryview(body)], header_alone=True
                    )
                )
                assert await session.read(12) == header
                await session.read_in_place(memoryview(got))
        assert got == body
        assert writes.started == 1 == writes.finished
        # The cipher states agree: the next (small, through trio's sendmsg) still decrypts.
        await writer.write_parts([b"after"])
        assert await session.read(5) == b"after"
        assert writes.started == 1
        # Below the threshold, or with the direct path off, trio's sendmsg as before.
        writer.direct_min = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.write_parts, [memoryview(body)])
            await session.read_in_place(memoryview(got))
        assert got == body
        assert writes.started == 1


async def test_a_socket_closed_during_a_write_ends_the_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection is closed (by another task) while the write waits for a peer that
    does not read: the write fails at once with the error a dead connection gives."""
    writes = _Counting(monkeypatch)
    with _pair() as (writer, _reader, socks):

        async def close_soon() -> None:
            while not writes.started:
                await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked()
            socks[0].close()

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(close_soon)
                with pytest.raises(ConnectionClosedError):
                    await writer.write_parts([memoryview(bytes(64 * MiB))])
    assert writes.started == writes.finished == 1


async def test_cancelling_a_write_to_a_peer_that_stopped_reading_is_prompt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes = _Counting(monkeypatch)
    with _pair() as (writer, _reader, socks):
        body = bytes(64 * MiB)  # far more than the socket buffers hold: the write waits
        start = time.monotonic()
        with trio.fail_after(10), trio.move_on_after(0.3) as scope:
            await writer.write_parts([memoryview(body)])
        assert scope.cancelled_caught
        assert writes.started == 1 == writes.finished
        assert time.monotonic() - start < 0.3 + 1.0
        # Part of a frame went out: the connection is hung up, not left out of step
        # (the peer, reading on, finds the end of the stream after what was sent).
        peer = socks[1]
        with trio.fail_after(10):
            while await peer.recv(1 << 20):
                pass


async def test_a_smaller_write_cancelled_while_the_socket_is_full_hangs_up_too() -> None:
    """Below ``direct_min`` writes go through trio's ``sendmsg``; they are sealed (the
    nonces spent) before they are sent, so a cancelled one leaves the session out of
    step just the same: hung up, the peer finds the end of the stream."""
    with _pair() as (writer, _reader, socks):
        writer.direct_min = 0
        frame = bytes(512 * 1024)
        with trio.fail_after(10), trio.move_on_after(0.3) as scope:
            while True:  # the peer does not read: the socket fills, a write waits
                await writer.write_parts([memoryview(frame)])
        assert scope.cancelled_caught
        with trio.fail_after(10):
            while await socks[1].recv(1 << 20):
                pass


# ---------------------------------------------------------------- real hosts


async def test_large_frames_both_ways_at_once_arrive_intact() -> None:
    """Each side writes bulk frames directly on the socket while its event loop reads
    the other side's from it."""
    frames = [bytes([i]) * (3 * MiB + i) for i in range(4)]
    with trio.fail_after(40):
        async with Libp2pTransport.open(config=FAST) as a, Libp2pTransport.open(config=FAST) as b:
            await a.dial(b.listen_addrs[0])
            got: dict[str, list[bytes]] = {a.local_id: [], b.local_id: []}

            async def send_all(src: Libp2pTransport, dst: Libp2pTransport) -> None:
                for frame in frames:
                    await src.send(dst.local_id, frame)

            async def receive_all(t: Libp2pTransport) -> None:
                async for event in t.events():
                    if isinstance(event, Received):
                        got[t.local_id].append(bytes(event.data))
                        if len(got[t.local_id]) == len(frames):
                            return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all, a, b)
                nursery.start_soon(send_all, b, a)
                nursery.start_soon(receive_all, a)
                nursery.start_soon(receive_all, b)
    assert got[a.local_id] == frames
    assert got[b.local_id] == frames


async def test_frames_from_several_peers_interleave_intact() -> None:
    frames = [bytes([i]) * (2 * MiB + 7 * i) for i in range(3)]
    with trio.fail_after(40):
        async with (
            Libp2pTransport.open(config=FAST) as b,
            Libp2pTransport.open(config=FAST) as a1,
            Libp2pTransport.open(config=FAST) as a2,
        ):
            for a in (a1, a2):
                await a.dial(b.listen_addrs[0])
            got: dict[str, list[bytes]] = {a1.local_id: [], a2.local_id: []}
            async with trio.open_nursery() as nursery:
                for a in (a1, a2):
                    for frame in frames:
                        nursery.start_soon(a.send, b.local_id, frame)
                async for event in b.events():
                    if isinstance(event, Received):
                        got[event.peer].append(bytes(event.data))
                        if sum(map(len, got.values())) == 2 * len(frames):
                            break
    for received in got.values():
        assert sorted(received) == sorted(frames)


async def test_a_send_cancelled_mid_body_leaves_the_transport_usable() -> None:
    """Cancelled while it is sending a 60 MiB frame: the send stops at once; if the
    cancellation cut a DATA frame short, the connection is hung up at once (both sides
    see it end, rather than at a read timeout), and the next frame gets through on a
    fresh one."""
    big = bytes(60 * MiB)
    config = TransportConfig(
        read_timeout=2.0, write_timeout=2.0, dial_timeout=5.0, max_frame=64 * MiB
    )
    last = b"after the cancelled frame" * 100_000
    with trio.fail_after(20):
        async with (
            Libp2pTransport.open(config=config) as a,
            Libp2pTransport.open(config=config) as b,
        ):
            await a.dial(b.listen_addrs[0])
            a_events = a.events()
            with trio.move_on_after(0.05) as scope:
                await a.send(b.local_id, big)
            assert scope.cancelled_caught
            try:
                await a.send(b.local_id, last)
            except PeerUnreachable:  # the hang-up: wait until a has seen it, then redial
                async for event in a_events:
                    if isinstance(event, Disconnected) and event.peer == b.local_id:
                        break
                await a.dial(b.listen_addrs[0])
                await a.send(b.local_id, last)
            async for event in b.events():
                if isinstance(event, Received) and len(event.data) == len(last):
                    assert event.data == last
                    break
