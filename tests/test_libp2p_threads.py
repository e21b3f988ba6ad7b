"""The worker-thread bulk path of the batched Noise session (``fastpath.THREAD_MIN``):
large writes sealed and sent by a worker thread with direct system calls, on real
sockets; what happens when it is cancelled, when the peer stops reading, when the
socket is closed under it, and on real hosts with frames in both directions (a write
thread and the event loop's reads on one socket) and from several peers at once."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from libp2p.io.exceptions import ConnectionClosedError
from noise.connection import NoiseConnection

from gossipfl.transport.base import PeerUnreachable, Received
from gossipfl.transport.libp2p import Libp2pTransport, TransportConfig, fastpath
from gossipfl.transport.libp2p.fastpath import (
    BatchedNoiseReadWriter,
    BatchedSecureSession,
    _run_off_loop,
)

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

MiB = 1 << 20
FAST = TransportConfig(read_timeout=2.0, write_timeout=2.0, dial_timeout=5.0)


def _keys() -> tuple[Any, Any]:
    initiator = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256")
    responder = NoiseConnection.from_name(b"Noise_NN_25519_ChaChaPoly_SHA256")
    initiator.set_as_initiator()
    responder.set_as_responder()
    initiator.start_handshake()
    responder.start_handshake()
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    return initiator, responder


def _over(sock: trio.socket.SocketType, keys: Any) -> BatchedNoiseReadWriter:
    """A batched Noise reader/writer over a real socket, as py-libp2p's TCP connection
    presents it (``conn.stream.stream`` is the trio ``SocketStream``)."""
    conn = SimpleNamespace(stream=SimpleNamespace(stream=trio.SocketStream(sock)))
    return BatchedNoiseReadWriter(conn, keys)


def _session(reader: BatchedNoiseReadWriter) -> BatchedSecureSession:
    session = BatchedSecureSession.__new__(BatchedSecureSession)
    session.conn = reader
    session._message, session._offset = b"", 0
    session._scratch = None
    session.last_header = b""
    session.window_waiters = None
    return session


@contextlib.contextmanager
def _pair() -> Iterator[
    tuple[BatchedNoiseReadWriter, BatchedNoiseReadWriter, list[trio.socket.SocketType]]
]:
    """A writer and a reader of one Noise session over the two ends of a real socket
    pair (closed on the way out)."""
    left, right = trio.socket.socketpair()
    initiator, responder = _keys()
    try:
        yield _over(left, initiator), _over(right, responder), [left, right]
    finally:
        left.close()
        right.close()


class _Counting:
    """Counts the worker-thread runs (and how many have returned)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = 0
        self.finished = 0
        real = fastpath._run_off_loop

        async def counted(work: Any) -> Any:
            def wrapped(stop: threading.Event) -> Any:
                self.started += 1
                try:
                    return work(stop)
                finally:
                    self.finished += 1

            return await real(wrapped)

        monkeypatch.setattr(fastpath, "_run_off_loop", counted)


async def test_a_large_write_goes_through_a_worker_thread_intact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads = _Counting(monkeypatch)
    with _pair() as (writer, reader, _socks):
        header = bytes(range(12))
        body = bytes(range(251)) * (5 * MiB // 251)  # not a multiple of a Noise message
        session = _session(reader)
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
        assert threads.started == 1 == threads.finished  # the write (reads stay on the loop)
        # The cipher states agree: the next (small, on the loop) message still decrypts.
        await writer.write_parts([b"after"])
        assert await session.read(5) == b"after"


async def test_a_socket_closed_under_a_writing_thread_ends_the_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection is closed (by trio, in another task) while the thread waits for
    a peer that does not read: the write fails at once, and the thread, which writes on
    a duplicate of the descriptor, has returned (it never writes to whatever reuses
    the number)."""
    threads = _Counting(monkeypatch)
    with _pair() as (writer, _reader, socks):

        async def close_soon() -> None:
            while not threads.started:
                await trio.sleep(0.01)
            socks[0].close()

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(close_soon)
                with pytest.raises(ConnectionClosedError):
                    await writer.write_parts([memoryview(bytes(64 * MiB))])
    assert threads.started == threads.finished == 1


async def test_cancelling_a_write_to_a_peer_that_stopped_reading_ends_its_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads = _Counting(monkeypatch)
    with _pair() as (writer, _reader, _socks):
        body = bytes(64 * MiB)  # far more than the socket buffers hold: the thread waits
        start = time.monotonic()
        with trio.fail_after(10), trio.move_on_after(0.3) as scope:
            await writer.write_parts([memoryview(body)])
        assert scope.cancelled_caught
        assert threads.started == 1 == threads.finished  # returned before the cancellation
        assert time.monotonic() - start < 0.3 + 1.0


async def test_the_stop_flag_reaches_the_work_before_a_cancellation_goes_on() -> None:
    seen: list[str] = []

    def work(stop: threading.Event) -> None:
        while not stop.wait(0.01):
            pass
        seen.append("stopped")

    with trio.fail_after(5), trio.move_on_after(0.05):
        await _run_off_loop(work)
    assert seen == ["stopped"]
    with pytest.raises(ValueError, match="boom"):  # the work's own errors come out as are
        await _run_off_loop(lambda stop: (_ for _ in ()).throw(ValueError("boom")))


# ---------------------------------------------------------------- real hosts


async def test_large_frames_both_ways_at_once_arrive_intact() -> None:
    """Each side's write thread and read thread on one connection's socket at once."""
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
    """Cancelled while its worker thread is sending a 60 MiB frame: the send stops at
    once, the stream (and a connection left out of step) is dropped, and the next frame
    gets through on a fresh one."""
    big = bytes(60 * MiB)
    config = TransportConfig(
        read_timeout=2.0, write_timeout=2.0, dial_timeout=5.0, max_frame=64 * MiB
    )
    with trio.fail_after(40):
        async with (
            Libp2pTransport.open(config=config) as a,
            Libp2pTransport.open(config=config) as b,
        ):
            await a.dial(b.listen_addrs[0])
            with trio.move_on_after(0.05) as scope:
                await a.send(b.local_id, big)
            assert scope.cancelled_caught
            last = b"after the cancelled frame" * 100_000
            for _ in range(20):  # the first tries may meet the broken connection
                try:
                    await a.send(b.local_id, last)
                    break
                except PeerUnreachable:
                    await a.dial(b.listen_addrs[0])
            async for event in b.events():
                if isinstance(event, Received) and len(event.data) == len(last):
                    assert event.data == last
                    break
