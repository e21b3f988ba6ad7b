"""One test per py-libp2p 0.8.1 pitfall: the library's behaviour (``test_stock_...``),
next to ours. A ``test_stock_...`` failure means an upgrade changed the behaviour the
workaround was written for: revisit the workaround (it may be unnecessary now) and
update docs/operations.md and the table in gossipfl/transport/libp2p/workarounds.py.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time

import multiaddr
import pytest
import trio
import trio.testing
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError
from libp2p.network.config import RetryConfig
from libp2p.network.stream.exceptions import StreamReset
from libp2p.peer.id import ID
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.stream_muxer.exceptions import MuxedStreamClosed
from libp2p.utils import encode_varint_prefixed, read_varint_prefixed_bytes

from gossipfl.errors import ConfigError
from gossipfl.identity import generate_identity
from gossipfl.simulation.processes import free_ports
from gossipfl.transport.base import Received
from gossipfl.transport.libp2p import Libp2pTransport, TransportConfig
from gossipfl.transport.libp2p.fastpath import (
    BatchedNoiseReadWriter,
    BatchedSecureSession,
    _wait_for_window,
    yamux_stream_of,
)
from gossipfl.transport.libp2p.framing import FrameReader
from gossipfl.transport.libp2p.testing import (
    connect,
    full_address,
    noise_session_keys,
    open_raw_stream,
    open_stock_host,
    reading_session,
)
from gossipfl.transport.libp2p.workarounds import (
    close_connections,
    connection_config,
    guard_handler,
)

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

PROTO = TProtocol("/test/pitfall/1.0.0")
FAST = TransportConfig(read_timeout=2.0, write_timeout=2.0, dial_timeout=5.0)


def free_port() -> int:
    return free_ports(1)[0]


async def received(transport: Libp2pTransport, count: int) -> list[Received]:
    out: list[Received] = []
    async for event in transport.events():
        if isinstance(event, Received):
            out.append(event)
            if len(out) == count:
                break
    return out


# ------------------------------------------------- an exception in a handler


async def test_stock_handler_exception_takes_the_whole_host_down() -> None:
    async def explodes(stream: INetStream) -> None:
        await stream.read(1)
        raise RuntimeError("one peer's bytes")

    async def victim_host(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_stock_host() as victim:
            victim.set_stream_handler(PROTO, explodes)
            task_status.started(full_address(victim))
            await trio.sleep_forever()  # serves until it dies

    async def attack(client: IHost) -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(victim_host)
            stream = await open_raw_stream(client, address, PROTO)
            await stream.write(b"x")

    with trio.fail_after(20):
        async with open_stock_host() as client:
            with pytest.raises(BaseExceptionGroup) as caught:
                await attack(client)
    assert caught.value.subgroup(RuntimeError) is not None


async def test_guarded_handler_logs_the_peer_and_the_host_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="gossipfl.transport.libp2p")
    calls = 0

    async def explodes_once(stream: INetStream) -> None:
        nonlocal calls
        calls += 1
        data = await stream.read(1)
        if calls == 1:
            raise RuntimeError("one peer's bytes")
        await stream.write(data)
        await stream.close()

    with trio.fail_after(20):
        async with open_stock_host() as victim, open_stock_host() as client:
            victim.set_stream_handler(PROTO, guard_handler(explodes_once, protocol=PROTO))
            first = await open_raw_stream(client, full_address(victim), PROTO)
            await first.write(b"x")
            with contextlib.suppress(Exception):
                await first.read(1)  # reset by the guard
            second = await open_raw_stream(client, full_address(victim), PROTO)
            await second.write(b"y")
            assert await second.read(1) == b"y"  # same host, still serving
    [record] = [r for r in caplog.records if "failed on a stream" in r.getMessage()]
    assert str(client.get_id()) in record.getMessage()


# -------------------------------------------------------- slow connections


async def test_stock_connect_waits_250_ms_and_ours_does_not() -> None:
    with trio.fail_after(20):
        async with open_stock_host() as target, open_stock_host() as stock:
            start = trio.current_time()
            await connect(stock, full_address(target))
            stock_time = trio.current_time() - start
        assert stock_time >= 0.24  # the happy-eyeballs wait, with one address to try
        ours = []
        async with Libp2pTransport.open(config=FAST) as a:
            for _ in range(3):
                async with Libp2pTransport.open(config=FAST) as b:
                    start = trio.current_time()
                    await a.dial(b.listen_addrs[0])
                    ours.append(trio.current_time() - start)
        assert min(ours) < 0.2
        assert connection_config(max_connections=10, dial_timeout=5).max_connections_per_peer == 1


async def test_stock_failed_dial_blocks_redials_for_a_minute() -> None:
    port = free_port()
    key = create_new_key_pair()
    peer = ID.from_pubkey(key.public_key)
    address = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")
    with trio.fail_after(20):
        async with open_stock_host() as dialer:
            dialer.get_network().retry_config = RetryConfig(max_retries=0)
            dialer.get_peerstore().add_addrs(peer, [address], 0)
            with pytest.raises(Exception, match="unable to connect"):
                await dialer.get_network().dial_peer(peer)
            async with open_stock_host(listen=str(address), key_pair=key):
                with pytest.raises(Exception, match="negative cache"):
                    await dialer.get_network().dial_peer(peer)  # up, but not tried


async def test_our_dial_after_a_failure_goes_through_at_once() -> None:
    port = free_port()
    who = generate_identity()
    with trio.fail_after(20):
        async with Libp2pTransport.open(config=FAST) as a:
            a.add_peer_address(who.peer_id, f"/ip4/127.0.0.1/tcp/{port}")
            with pytest.raises(Exception, match="refused"):
                await a.connect(who.peer_id)
            async with Libp2pTransport.open(
                identity=who, listen=[f"/ip4/127.0.0.1/tcp/{port}"], config=FAST
            ):
                await a.connect(who.peer_id)
                assert who.peer_id in {str(p) for p in a._swarm.connections}


# ----------------------------------------------------------- flow control


async def test_stock_writer_gives_up_after_5_s_without_window(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.rate = 20  # 5 virtual seconds pass in a quarter of a real one
    release = trio.Event()
    handler_started = trio.Event()

    async def reads_late(stream: INetStream) -> None:
        handler_started.set()
        await release.wait()

    with trio.fail_after(60):
        async with open_stock_host() as receiver, open_stock_host() as sender:
            receiver.set_stream_handler(PROTO, reads_late)
            stream = await open_raw_stream(sender, full_address(receiver), PROTO)
            await handler_started.wait()
            start = trio.current_time()
            # More than any window: py-libp2p's Yamux auto-tunes the receive window during
            # the protocol negotiation, so the sender may start with 1 or 2 MiB of credit,
            # and a receiver grants at most 16 MiB (MAX_WINDOW_SIZE) without reading.
            with pytest.raises(StreamReset) as caught:
                await stream.write(b"x" * (32 << 20))
            waited = trio.current_time() - start
            release.set()
    assert 5.0 <= waited < 7.0
    assert "Timed out waiting for window update" in str(caught.value.__cause__)


async def test_our_sender_rides_out_a_long_pause_of_the_consumer(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The consumer stops taking events (busy training, say) until a send has been stuck
    for 6 s, more than the 5 s that kill a stock writer; then every frame arrives."""
    mock_clock.rate = 10
    frames = [bytes([i]) * (4 << 20) for i in range(8)]  # 32 MiB: more than Yamux's window
    slow = TransportConfig(max_buffered=1, read_timeout=60, write_timeout=60)
    pending_since: list[float] = []
    stuck = trio.Event()
    with trio.fail_after(300):
        async with Libp2pTransport.open(config=slow) as a, Libp2pTransport.open(config=slow) as b:
            await a.dial(b.listen_addrs[0])

            async def send_all() -> None:
                for body in frames:
                    pending_since.append(trio.current_time())
                    await a.send(b.local_id, body)
                pending_since.append(float("inf"))

            async def watchdog() -> None:
                while not stuck.is_set():
                    await trio.sleep(0.5)
                    if pending_since and trio.current_time() - pending_since[-1] >= 6.0:
                        stuck.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                nursery.start_soon(watchdog)
                await stuck.wait()
                got = await received(b, len(frames))
            assert [r.data[:1] for r in got] == [f[:1] for f in frames]
            assert len(pending_since) == len(frames) + 1  # every send returned, none raised


# ------------------------------------------------------------------ framing


class ChunkedReader:
    """Delivers a byte string 64 KiB at a time, as a stream fed by a stock Yamux writer
    (64 KiB DATA frames) delivers it to a prompt reader."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        size = min(n if n is not None and n >= 0 else len(self.data), 65536)
        out, self.data = self.data[:size], self.data[size:]
        return out


async def test_stock_varint_helper_fails_on_a_10_mib_message() -> None:
    body = b"w" * (10 << 20)
    with pytest.raises(IncompleteReadError):
        await read_varint_prefixed_bytes(ChunkedReader(encode_varint_prefixed(body)))  # type: ignore[arg-type]
    prefixed = (len(body)).to_bytes(4, "big") + body
    reader = FrameReader(ChunkedReader(prefixed).read, max_frame=16 << 20, read_timeout=5)
    assert await reader.next_frame() == body


# ---------------------------------------------------------------- security


async def test_stock_host_accepts_an_unauthenticated_plaintext_peer() -> None:
    liar_key = create_new_key_pair()
    plaintext = {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(liar_key)}
    with trio.fail_after(20):
        async with open_stock_host() as victim, open_stock_host(sec_opt=plaintext) as liar:
            await connect(liar, full_address(victim))
            [conn] = victim.get_network().get_connections()
            assert type(conn.muxed_conn.secured_conn).__name__ == "InsecureSession"


async def test_we_accept_noise_only() -> None:
    plaintext = {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(create_new_key_pair())}
    with trio.fail_after(20):
        async with (
            Libp2pTransport.open(config=FAST) as a,
            open_stock_host(sec_opt=plaintext) as liar,
        ):
            liar.get_network().retry_config = RetryConfig(max_retries=0)
            with pytest.raises(Exception, match="unable to connect"):
                await connect(liar, a.listen_addrs[0])
            assert a.connected_peers == set()


# ------------------------------------------------------------------ listening


async def test_stock_listeners_share_a_port_silently() -> None:
    address = f"/ip4/127.0.0.1/tcp/{free_port()}"
    with trio.fail_after(20):
        async with open_stock_host(listen=address) as one, open_stock_host(listen=address) as two:
            assert str(one.get_addrs()[0]).startswith(address)
            assert str(two.get_addrs()[0]).startswith(address)


async def test_we_refuse_a_port_that_is_taken() -> None:
    address = f"/ip4/127.0.0.1/tcp/{free_port()}"
    with trio.fail_after(20):
        async with Libp2pTransport.open(listen=[address], config=FAST):
            with pytest.raises(ConfigError, match="another peer already running"):
                async with Libp2pTransport.open(listen=[address], config=FAST):
                    pass


# ------------------------------------------------------------ auto-connector


async def test_stock_auto_connector_dials_whoever_is_in_the_peerstore() -> None:
    with trio.fail_after(20):
        async with open_stock_host() as stranger, open_stock_host() as host:
            host.get_peerstore().add_addrs(stranger.get_id(), stranger.get_addrs(), 0)
            await host.get_network().auto_connector.maybe_connect()
            assert stranger.get_id() in host.get_network().connections


async def test_our_auto_connector_is_off() -> None:
    with trio.fail_after(20):
        async with Libp2pTransport.open(config=FAST) as a, Libp2pTransport.open(config=FAST) as b:
            a.add_peer_address(b.local_id, b.listen_addrs[0])
            await a._swarm.auto_connector.maybe_connect()
            assert a.connected_peers == set()
            assert not a._swarm.connections


# ------------------------------------------------------------------ shutdown


async def test_stock_close_is_serial_and_ours_is_concurrent() -> None:
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            hubs = [await stack.enter_async_context(open_stock_host()) for _ in range(2)]
            clients = [await stack.enter_async_context(open_stock_host()) for _ in range(4)]
            for hub in hubs:
                for client in clients:
                    await connect(client, full_address(hub))
            start = time.monotonic()
            await hubs[0].get_network().close()
            stock = time.monotonic() - start
            start = time.monotonic()
            assert await close_connections(hubs[1].get_network()) == 4
            ours = time.monotonic() - start
    assert stock >= 0.8  # 4 connections x 0.2 s of sleeps, one after the other
    assert ours < stock / 2


async def test_stock_connection_close_drops_unread_data() -> None:
    """Why aclose/disconnect finish streams first (tested in test_libp2p_transport)."""
    got: list[bytes] = []
    closed, finished = trio.Event(), trio.Event()

    async def reads_after_close(stream: INetStream) -> None:
        await closed.wait()
        with contextlib.suppress(Exception):
            got.append(await stream.read(100))
        finished.set()

    with trio.fail_after(20):
        async with open_stock_host() as receiver, open_stock_host() as sender:
            receiver.set_stream_handler(PROTO, reads_after_close)
            stream = await open_raw_stream(sender, full_address(receiver), PROTO)
            await stream.write(b"last words")
            await sender.disconnect(receiver.get_id())
            while receiver.get_network().get_connections():  # until the close has landed
                await trio.sleep(0.01)
            closed.set()
            await finished.wait()
    assert got in ([], [b""])  # the ten bytes were sent, and never read


# ---------------------------------------------------------- the fast path


async def test_our_connections_use_the_fast_path_and_interoperate_with_stock_yamux() -> None:
    """If py-libp2p internals change, the fast path falls back silently (slower but
    correct); this test notices. It also checks a stock receiver accepts our 1 MiB Yamux
    DATA frames."""
    body = bytes(range(256)) * (3 << 12)  # 3 MiB
    got: list[bytes] = []
    done = trio.Event()

    async def reads_frames(stream: INetStream) -> None:
        reader = FrameReader(stream.read, max_frame=8 << 20, read_timeout=5)
        got.append(await reader.next_frame() or b"")
        done.set()

    with trio.fail_after(20):
        async with Libp2pTransport.open(config=FAST) as a, Libp2pTransport.open(config=FAST) as b:
            await a.dial(b.listen_addrs[0])
            [conn] = a._swarm.get_connections()
            session = conn.muxed_conn.secured_conn
            assert isinstance(session, BatchedSecureSession)
            assert session.conn._socket is not None  # recv_into / sendmsg on the socket
            assert session.conn._encrypter is not None  # encrypts views, no copies
            assert session.conn._can_decrypt_into  # decrypts into the caller's buffer
            assert conn.muxed_conn._gossipfl_direct_reads
            await a.send(b.local_id, body)
            assert (await received(b, 1))[0].data == body
            [out] = a._outbound._peers.values()
            assert out.stream is not None
            assert yamux_stream_of(out.stream) is not None

            async with open_stock_host() as stock:
                from gossipfl.transport.libp2p import GOSSIP_PROTOCOL

                stock.set_stream_handler(TProtocol(GOSSIP_PROTOCOL), reads_frames)
                a.add_peer_address(str(stock.get_id()), full_address(stock))
                await a.send(str(stock.get_id()), body)
                await done.wait()
            assert got == [body]


def _noise_pair() -> tuple[BatchedNoiseReadWriter, BatchedNoiseReadWriter]:
    """A writer and a reader sharing the transport keys of one Noise handshake."""
    initiator, responder = noise_session_keys()
    return BatchedNoiseReadWriter(object(), initiator), BatchedNoiseReadWriter(object(), responder)


def _received(reader: BatchedNoiseReadWriter, wire: bytes | bytearray) -> None:
    """Put ``wire`` in ``reader``'s receive buffer, as a socket read would."""
    reader._buf = bytearray(wire) + bytearray(64)
    reader._view = memoryview(reader._buf)
    reader._start, reader._end = 0, len(wire)


def _sealed(writer: BatchedNoiseReadWriter, plain: bytes) -> bytes:
    """``plain`` as Noise transport messages (length prefixes and ciphertexts)."""
    sealed = writer._seal_into_buffer([plain])
    assert sealed is not None
    buf, size = sealed
    return bytes(buf[:size])


def test_buffered_noise_messages_are_decrypted_in_one_loop_and_checked() -> None:
    writer, reader = _noise_pair()
    plain = bytes(range(256)) * 600  # 153,600 bytes: three Noise messages
    wire = _sealed(writer, plain)
    size = len(wire)

    # Only whole messages that fit are decrypted; a partial one is left for later.
    _received(reader, wire[: size - 100])
    out = bytearray(len(plain))
    with memoryview(out) as view:
        pos = reader.decrypt_buffered(view, 0, len(out))
    assert pos == 2 * 65519
    assert out[:pos] == plain[:pos]
    assert reader._decrypter.n == 2
    assert reader._end - reader._start == size - 100 - 2 * (2 + 65519 + 16)

    # One that fails authentication ends the connection; nothing after it is counted.
    writer, reader = _noise_pair()
    tampered = bytearray(_sealed(writer, plain))
    tampered[2 + 65535 + 2 + 10] ^= 1  # a byte of the second message's ciphertext
    _received(reader, tampered)
    with memoryview(bytearray(len(plain))) as view, pytest.raises(ConnectionClosedError):
        reader.decrypt_buffered(view, 0, len(plain))
    assert reader._decrypter.n == 1

    # Room for less than a message: nothing is decrypted.
    writer, reader = _noise_pair()
    _received(reader, _sealed(writer, plain))
    with memoryview(bytearray(1000)) as view:
        assert reader.decrypt_buffered(view, 0, 1000) == 0
    assert reader._decrypter.n == 0


async def test_transient_body_reads_reuse_one_scratch_and_are_checked() -> None:
    writer, reader = _noise_pair()
    plain = bytes(range(256)) * 2000  # 512,000 bytes: eight Noise messages
    _received(reader, _sealed(writer, plain))
    session = reading_session(reader)

    # Two large reads: the bytes asked for, each a view of the same scratch buffer.
    first = await session.read_transient(300_000)
    assert isinstance(first, memoryview)
    assert bytes(first) == plain[:300_000]
    held = first.obj
    second = await session.read_transient(200_000)
    assert isinstance(second, memoryview)
    assert second.obj is held
    assert bytes(second) == plain[300_000:500_000]
    # A small read is a plain read (bytes of its own).
    rest = await session.read_transient(12_000)
    assert type(rest) is bytes
    assert rest == plain[500_000:]

    # A tampered message still ends the connection.
    writer, reader = _noise_pair()
    tampered = bytearray(_sealed(writer, plain))
    tampered[2 + 65535 + 2 + 10] ^= 1
    _received(reader, tampered)
    with pytest.raises(ConnectionClosedError):
        await reading_session(reader).read_transient(300_000)


_UPDATE = struct.pack("!BBHII", 0, 1, 0, 3, 1 << 20)  # WINDOW_UPDATE, stream 3, +1 MiB
_DATA = struct.pack("!BBHII", 0, 0, 0, 3, 4)  # DATA, stream 3, 4 bytes


async def test_window_waiters_wake_once_yamux_has_handled_a_window_update() -> None:
    writer, reader = _noise_pair()
    _received(reader, _sealed(writer, _UPDATE + _DATA + b"body" + _UPDATE))
    session = reading_session(reader)
    event = session.window_waiters = trio.Event()
    assert await session.read(12) == _UPDATE  # nothing handled before the first header
    assert not event.is_set()
    assert await session.read(12) == _DATA  # Yamux is done with the update: wake
    assert event.is_set()
    assert session.window_waiters is None
    event = session.window_waiters = trio.Event()
    assert await session.read(4) == b"body"
    assert await session.read(12) == _UPDATE  # after a DATA frame: keep waiting
    assert not event.is_set()


class _WindowStream:
    """What :func:`_wait_for_window` looks at on a Yamux stream."""

    def __init__(self, session: BatchedSecureSession) -> None:
        self.send_window = 0
        self.closed = self.send_closed = False
        self.conn = type("Conn", (), {"secured_conn": session})()


async def test_a_writer_waiting_for_window_is_woken_not_left_polling(
    mock_clock: trio.testing.MockClock,
) -> None:
    writer, reader = _noise_pair()
    _received(reader, _sealed(writer, _UPDATE + _DATA))
    session = reading_session(reader)
    stream = _WindowStream(session)
    done = trio.Event()

    async def wait() -> None:
        await _wait_for_window(stream)  # type: ignore[arg-type]
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert session.window_waiters is not None
        assert await session.read(12) == _UPDATE
        stream.send_window = 1 << 20  # what Yamux does with the update
        await session.read(12)  # ... before it reads the next header
        await trio.testing.wait_all_tasks_blocked()
        assert done.is_set()  # the clock never moved: woken, not by a poll
        assert trio.current_time() == 0

    # A closed stream: no wait at all (while waiting, the poll every 10 ms notices).
    stream.send_window = 0
    stream.closed = True
    with pytest.raises(MuxedStreamClosed):
        await _wait_for_window(stream)  # type: ignore[arg-type]


async def test_a_yamux_header_goes_in_a_noise_message_of_its_own() -> None:
    writer, reader = _noise_pair()
    header = bytes(range(12))
    body = bytes(range(256)) * 1000  # 256,000 bytes: four Noise messages
    sealed = writer._seal_into_buffer([header, memoryview(body)], header_alone=True)
    assert sealed is not None
    buf, size = sealed
    wire = bytes(buf[:size])
    assert wire[:2] == (12 + 16).to_bytes(2, "big")  # the header alone
    assert size == 2 + 12 + 16 + len(body) + 4 * (2 + 16)
    _received(reader, wire)
    session = reading_session(reader)
    assert await session.read(12) == header
    # The body's messages are all its own: each is decrypted where the body goes.
    got = await session.read_transient(len(body))
    assert bytes(got) == body
    assert session._offset == len(session._message)  # nothing of a message left over

    # Without it (any other write), the concatenation is cut in full messages.
    writer, _ = _noise_pair()
    sealed = writer._seal_into_buffer([header, memoryview(body)])
    assert sealed is not None
    assert sealed[0][:2] == (65519 + 16).to_bytes(2, "big")
