"""Throughput workarounds for py-libp2p's pure-Python Noise and Yamux layers.

With py-libp2p 0.8.1 as it comes, 100 MiB between two processes on loopback moves at
1/12 to 1/17 of a plain trio TCP socket. Profiles put the time in per-message overhead
and copies, not in crypto:

- Yamux writes DATA frames of at most 64 KiB - 12 bytes; each passes through several
  locks, an eagerly formatted debug log and one Noise write. Header + 64 KiB is larger
  than one Noise message (65519 bytes of plaintext), so each frame becomes two Noise
  messages and two socket sends;
- the Noise reader makes two socket reads per message (length, then body), each a fresh
  allocation;
- a received byte is copied five times after decryption (Noise session buffer, Yamux's
  ``read_exactly``, its stream buffer, ``read``, the application's frame).

What we do instead, all invisible on the wire (any libp2p peer can talk to us):

:func:`install_batched_noise`
    swaps a fresh Noise session for a :class:`BatchedSecureSession` (same keys, same
    nonces): writes are cut into Noise messages, encrypted from views of the caller's
    buffers straight into one reusable send buffer (``encrypt_into``), and sent with as
    few ``send`` calls as the socket takes (bulk writes, a DATA frame of 1 MiB or more,
    with direct non-blocking ``write`` calls as they are sealed, trio only waiting for
    writability: :meth:`BatchedNoiseReadWriter._seal_and_send`); reads ``recv_into``
    one reusable 1 MiB buffer and decrypt from views of it, large reads straight into
    their destination (``decrypt_into``).
:func:`install_direct_yamux_reads`
    lets Yamux take a DATA frame's body from that session as is (no ``read_exactly``),
    and decrypts it straight into a waiting reader's frame when there is one
    (:class:`Sink`, :class:`YamuxInPlace`): large inbound frames are allocated whole
    when their length prefix arrives and filled where they lie. The reader is woken
    once its frame is full (or credit is due, ...: :class:`_LandingGate`), not per
    DATA frame; a body that finds a prefix pending waits a few schedule points for the
    reader to hang its frame.
:func:`write_yamux`
    writes DATA frames of up to ``yamux_chunk`` bytes (4 MiB), as large as the
    receiver's window allows: the Yamux spec bounds frames by the window only, and
    py-libp2p's receiver accepts frames up to its 16 MiB window cap. A frame's length
    prefix goes in a DATA frame of its own, and each Yamux header in a Noise message of
    its own, so that the receiver can put every byte of a body where it belongs.
:func:`read_yamux`
    takes a stream's whole receive buffer when the reader wants all of it, instead of
    copying it out.

Together: 3-5x the throughput of the untuned path (docs/benchmarks.md, section
Transport). A received byte that lands in a waiting frame is not copied after
decryption (2-6% of a bulk transfer's bytes do not: those that arrive while the reader
is busy elsewhere are copied twice, into Yamux's stream buffer and into the frame).
Sent bytes are not copied before encryption.

All of this reaches into py-libp2p internals (``SecureSession.conn``, the Noise cipher
states, ``Yamux._read_data_body``/``_write_lock``/``stream_buffers``, ``YamuxStream``'s
window fields). Each entry point checks the shape it needs and falls back to py-libp2p's
own code path (slower, still correct) if it differs;
``test_our_connections_use_the_fast_path_and_interoperate_with_stock_yamux`` in
``tests/test_libp2p_workarounds.py`` fails when that happens, so that someone looks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import trio
from cryptography.exceptions import InvalidTag
from libp2p.abc import INetStream, ISecureConn
from libp2p.exceptions import BaseLibp2pError
from libp2p.io.abc import EncryptedMsgReadWriter
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.exceptions import MuxedStreamClosed, MuxedStreamEOF, MuxedStreamReset
from libp2p.stream_muxer.yamux import yamux as _yamux

from gossipfl.transport.libp2p.framing import unfilled_bytearray

logger = logging.getLogger(__name__)

_MAX_MESSAGE = 2 + 65535
READ_BUFFER_MIN = 2 * _MAX_MESSAGE
READ_BUFFER_MAX = 1 << 20
"""Receive buffer of a batched Noise session: it starts small (an idle connection costs
128 KiB) and grows to the maximum the first time a socket read fills it."""
SCRATCH_MAX = 4 << 20
"""Largest DATA body :meth:`BatchedSecureSession.read_transient` decrypts into its reused
scratch buffer (the size of our senders' DATA frames: ``TransportConfig.yamux_chunk``);
a larger one (a peer's choice, within the window we granted) gets a buffer of its own."""
_MAX_NONCE = 2**64 - 1  # noise.constants.MAX_NONCE
_TAG = 16  # ChaCha20-Poly1305 / AES-GCM authentication tag
_BULK_READ = 2 * MAX_PLAINTEXT_LENGTH
_YIELD_EVERY = 1 << 18
_MAX_IOVEC = 512

_LENGTH = struct.Struct(">H")
_YAMUX_HEADER = struct.Struct(_yamux.YAMUX_HEADER_FORMAT)
_WINDOW_POLL_MIN = 0.0005
_WINDOW_POLL_MAX = 0.01

Buffer = bytes | bytearray | memoryview


def _tampered() -> ConnectionClosedError:
    """What a Noise message that fails authentication ends the connection with."""
    return ConnectionClosedError(
        "a Noise message failed authentication: the connection is corrupted or tampered with",
        transport="tcp",
    )


class BatchedNoiseReadWriter(EncryptedMsgReadWriter):
    """Noise transport messages (2-byte length + ciphertext), batched per system call.

    One instance per secured connection. Reads happen in one task (Yamux's reader) and
    writes are serialized by Yamux's write lock, as for py-libp2p's own reader/writer.
    Reads go into one reusable buffer with ``recv_into`` when the connection is a plain
    trio TCP socket (no allocation per read), else through the connection's ``read``.
    """

    def __init__(self, conn: Any, noise_state: Any) -> None:
        super().__init__(conn)
        self._raw: Any = conn
        self.noise_state = noise_state
        # The Noise library's own encrypt/decrypt insist on `bytes`; its cipher states
        # (which keep the nonces) take any buffer, which spares a copy per message.
        protocol = getattr(noise_state, "noise_protocol", None)
        self._encrypter: Any = getattr(protocol, "cipher_state_encrypt", None)
        self._decrypter: Any = getattr(protocol, "cipher_state_decrypt", None)
        if not (
            hasattr(self._encrypter, "encrypt_with_ad")
            and hasattr(self._decrypter, "decrypt_with_ad")
        ):
            self._encrypter = self._decrypter = None
        # cryptography >= 44 can decrypt into a caller's buffer: bulk reads then skip
        # one copy per byte. This uses the cipher state's nonce counter directly.
        cipher = getattr(self._decrypter, "cipher", None)
        self._can_decrypt_into = (
            isinstance(getattr(self._decrypter, "n", None), int)
            and hasattr(getattr(cipher, "cipher", None), "decrypt_into")
            and hasattr(cipher, "format_nonce")
        )
        cipher = getattr(self._encrypter, "cipher", None)
        self._can_encrypt_into = (
            isinstance(getattr(self._encrypter, "n", None), int)
            and hasattr(getattr(cipher, "cipher", None), "encrypt_into")
            and hasattr(cipher, "format_nonce")
        )
        self._send_buf: bytearray | None = None
        self._socket = _trio_socket_of(conn)
        self.direct_min = DIRECT_WRITE_MIN
        """Writes from this size on are sent with direct system calls (0: never)."""
        self._buf = bytearray(READ_BUFFER_MIN)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def encrypt(self, data: Buffer) -> bytes:
        if self._encrypter is None:
            fallback: bytes = self.noise_state.encrypt(bytes(data))
            return fallback
        encrypted: bytes = self._encrypter.encrypt_with_ad(None, data)
        return encrypted

    def decrypt(self, data: Buffer) -> bytes:
        if self._decrypter is None:
            fallback: bytes = self.noise_state.decrypt(bytes(data))
            return fallback
        try:
            decrypted: bytes = self._decrypter.decrypt_with_ad(None, data)
        except InvalidTag:
            raise _tampered() from None
        return decrypted

    async def write_msg(self, msg: bytes) -> None:
        await self.write_parts((msg,))

    async def write_parts(self, parts: Sequence[Buffer], *, header_alone: bool = False) -> None:
        """Encrypt the concatenation of ``parts`` as Noise messages and send them all.

        Plaintext is cut from the parts without joining them first (except the few bytes
        of a message that straddles two parts); each message is encrypted on its own,
        straight into a reusable send buffer when the cipher can, and everything goes out
        with as few sends as the socket allows. With ``header_alone`` the first part (a
        Yamux frame header) is a Noise message of its own: see :func:`_messages`.
        """
        if self._socket is not None and self.direct_min and self._can_encrypt_into:
            size = sum(memoryview(p).nbytes for p in parts)
            if size >= self.direct_min:
                await self._write_direct(parts, header_alone, size)
                return
        sealed = self._seal_into_buffer(parts, header_alone=header_alone)
        if sealed is not None and self._socket is not None:
            buf, size = sealed
            try:
                with memoryview(buf) as view:
                    await _send_vectored(self._socket, [view[:size]])
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                _hang_up(self._socket)
                raise ConnectionClosedError(
                    f"TCP connection failed: {exc}", transport="tcp"
                ) from exc
            except BaseException:  # cancelled: the messages are sealed, nonces spent
                _hang_up(self._socket)
                raise
            finally:
                self._send_buf = buf  # back for the next write
            return
        if sealed is not None:
            buf, size = sealed
            self._send_buf = buf
            await self._raw.write(bytes(buf[:size]))
            return
        out: list[bytes] = []
        for plaintext in _messages(parts, header_alone):
            ciphertext = self.encrypt(plaintext)
            out.append(_LENGTH.pack(len(ciphertext)))
            out.append(ciphertext)
        if self._socket is None:
            await self._raw.write(b"".join(out))
            return
        try:
            await _send_vectored(self._socket, out)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionClosedError(f"TCP connection failed: {exc}", transport="tcp") from exc

    async def _write_direct(self, parts: Sequence[Buffer], header_alone: bool, size: int) -> None:
        """:meth:`write_parts` for a bulk write (a DATA frame of ``DIRECT_WRITE_MIN`` bytes
        or more): see :meth:`_seal_and_send`. Any failure of the socket, or its close by
        another task meanwhile, is a :class:`ConnectionClosedError`; a write cut short
        (by that or by a cancellation) leaves the connection broken, as any did before."""
        try:
            done = await self._seal_and_send(parts, header_alone, size)
        except (OSError, trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise ConnectionClosedError(f"TCP connection failed: {exc}", transport="tcp") from exc
        if not done:  # the nonces are about to run out: let the Noise library say so
            self.direct_min = 0
            await self.write_parts(parts, header_alone=header_alone)

    async def _seal_and_send(self, parts: Sequence[Buffer], header_alone: bool, plain: int) -> bool:
        """Seal ``parts`` as Noise messages and send them with direct, non-blocking
        ``write`` calls on the socket's descriptor; ``False``, having done nothing, if
        the nonces would run out.

        Messages are sealed into the reusable send buffer in batches of
        ``_SEAL_BATCH`` bytes, each batch offered to the socket at once (one ``write``:
        the kernel copies it while it is still in cache, and the peer gets bytes
        sooner); what the socket did not take goes out at the end, and only a full
        socket brings trio in (``wait_writable``, which a cancellation interrupts).
        trio's socket wrapper made every ``sendmsg`` a scheduler pass (~725 per 100
        MiB); a worker thread doing the same loop with ``poll`` cost more than this
        (docs/benchmarks.md, Transport, sixth pass). The caller holds Yamux's write
        lock: nothing else writes on the socket or uses the cipher state meanwhile."""
        buf = self._buffer_for(parts, header_alone, plain)
        if buf is None:
            return False
        self._send_buf = buf  # kept for the next write (the write lock excludes others)
        sock = self._socket
        fd = sock.fileno()
        if fd == -1:
            raise trio.ClosedResourceError("the socket was closed")
        pos = sent = 0
        try:
            with memoryview(buf) as view:
                for pos in self._sealed(buf, parts, header_alone):
                    if pos - sent >= _SEAL_BATCH:
                        with contextlib.suppress(BlockingIOError):  # the rest goes below
                            sent += os.write(fd, view[sent:pos])
                while sent < pos:
                    try:
                        sent += os.write(fd, view[sent:pos])
                    except BlockingIOError:
                        # trio raises ClosedResourceError if the socket is closed meanwhile.
                        await trio.lowlevel.wait_writable(sock)
                        if sock.fileno() != fd:
                            raise trio.ClosedResourceError("the socket was closed") from None
        except BaseException:
            _hang_up(sock)
            raise
        return True

    def _buffer_for(
        self, parts: Sequence[Buffer], header_alone: bool, plain: int
    ) -> bytearray | None:
        """A send buffer (the reusable one if it is large enough) for ``plain`` bytes of
        ``parts`` sealed as Noise messages, or ``None`` if there are none or the
        encrypter's nonces would run out before the last."""
        state = self._encrypter
        assert state is not None
        messages = -(-plain // MAX_PLAINTEXT_LENGTH)
        if _header_alone(parts, header_alone):
            messages = 1 + -(-(plain - memoryview(parts[0]).nbytes) // MAX_PLAINTEXT_LENGTH)
        if not messages or state.n + messages >= _MAX_NONCE:
            return None
        size = plain + messages * (2 + _TAG)
        buf = self._send_buf
        if buf is None or len(buf) < size:
            buf = bytearray(max(size, 2 * _MAX_MESSAGE))
        return buf

    def _seal_into_buffer(
        self, parts: Sequence[Buffer], *, header_alone: bool = False
    ) -> tuple[bytearray, int] | None:
        """Encrypt the concatenation of ``parts`` as Noise transport messages (length +
        ciphertext) into one buffer; ``(buffer, size)``, or ``None`` if the cipher cannot
        encrypt into a buffer or the nonces would run out (then the caller encrypts
        message by message, and the Noise library raises its own error). The buffer is
        the writer's reusable one, taken while in use (so that a concurrent write, which
        Yamux's write lock rules out anyway, would get a fresh one)."""
        state = self._encrypter
        if state is None or not self._can_encrypt_into:
            return None
        plain = sum(memoryview(p).nbytes for p in parts)
        buf = self._buffer_for(parts, header_alone, plain)
        if buf is None:
            return None
        self._send_buf = None
        # the whole write into the buffer (ends grow: the last is the largest); the
        # caller sends it
        return buf, max(self._sealed(buf, parts, header_alone))

    def _sealed(self, buf: bytearray, parts: Sequence[Buffer], header_alone: bool) -> Iterator[int]:
        """Seal ``parts`` as Noise transport messages (length + ciphertext) into ``buf``
        from its start, one nonce each, yielding the end of the sealed bytes after each
        message: both send paths use it, the direct one to write a batch as it is
        ready. ``buf`` is large enough and the nonces suffice (:meth:`_buffer_for`)."""
        state = self._encrypter
        assert state is not None
        cipher = state.cipher
        seal = cipher.cipher.encrypt_into
        nonce = cipher.format_nonce
        pack = _LENGTH.pack_into
        pos = 0
        with memoryview(buf) as view:
            for plaintext in _messages(parts, header_alone):
                length = len(plaintext) + _TAG
                pack(buf, pos, length)
                seal(nonce(state.n), plaintext, None, view[pos + 2 : pos + 2 + length])
                state.n += 1
                pos += 2 + length
                yield pos

    def decrypt_into(self, ciphertext: memoryview, out: memoryview) -> bool:
        """Decrypt straight into ``out`` (exactly the plaintext's size). Returns ``False``,
        having done nothing, if the cipher cannot (then use :meth:`decrypt`)."""
        state = self._decrypter
        if state is None or not self._can_decrypt_into:
            return False
        if state.n == _MAX_NONCE:
            return False  # let the Noise library raise its own error
        cipher = state.cipher
        try:
            cipher.cipher.decrypt_into(cipher.format_nonce(state.n), ciphertext, None, out)
        except InvalidTag:
            raise _tampered() from None
        state.n += 1
        return True

    def decrypt_buffered(self, out: memoryview, pos: int, stop: int) -> int:
        """Decrypt the Noise messages already received, one after the other, straight into
        ``out`` from ``pos`` on, while each fits whole and ``pos < stop``; returns the new
        position. One call and one loop for what is otherwise a coroutine and a method
        call per 64 KiB message (a socket read brings up to 16 of them). Stops, leaving
        them for the message-by-message path, at a partial message, an empty one, one
        that does not fit, or when the cipher cannot decrypt into a buffer."""
        state = self._decrypter
        if state is None or not self._can_decrypt_into:
            return pos
        buf, view = self._buf, self._view
        start, end = self._start, self._end
        room = len(out)
        cipher = state.cipher
        decrypt = cipher.cipher.decrypt_into
        nonce = cipher.format_nonce
        n = state.n
        try:
            while pos < stop and end - start >= 2:
                size = (buf[start] << 8) | buf[start + 1]
                plain = size - _TAG
                if end - start < 2 + size or not 0 < plain <= room - pos or n >= _MAX_NONCE:
                    break
                decrypt(nonce(n), view[start + 2 : start + 2 + size], None, out[pos : pos + plain])
                n += 1
                start += 2 + size
                pos += plain
        except InvalidTag:
            raise _tampered() from None
        finally:
            state.n = n
            self._start, self._end = (0, 0) if start == end else (start, end)
        return pos

    async def read_msg(self) -> bytes:
        return self.decrypt(await self.next_ciphertext())

    async def next_ciphertext(self) -> memoryview:
        """The next Noise message's ciphertext: a view into the receive buffer, valid until
        the next call. It must be decrypted (once) before then, or the stream desyncs."""
        buf, view = self._buf, self._view
        while True:
            start, end = self._start, self._end
            available = end - start
            if available >= 2:
                size = (buf[start] << 8) | buf[start + 1]
                if available >= 2 + size:
                    ciphertext = view[start + 2 : start + 2 + size]
                    start += 2 + size
                    self._start, self._end = (0, 0) if start == end else (start, end)
                    return ciphertext
            if len(buf) - end < _MAX_MESSAGE and start:
                buf[:available] = view[start:end]  # move the partial message to the front
                self._start, self._end = start, end = 0, available
            room = len(buf) - end
            received = await self._receive(view[end:])
            if not received:
                raise IncompleteReadError(
                    f"connection closed with {available} bytes of a Noise message pending",
                    expected_bytes=available + 2,
                    received_bytes=available,
                )
            self._end = end + received
            if received == room and len(buf) < READ_BUFFER_MAX:
                buf, view = self._grow()

    def _grow(self) -> tuple[bytearray, memoryview]:
        """A bulk transfer is under way: move to the large receive buffer."""
        start, end = self._start, self._end
        bigger = bytearray(READ_BUFFER_MAX)
        bigger[: end - start] = self._view[start:end]
        self._buf, self._view = bigger, memoryview(bigger)
        self._start, self._end = 0, end - start
        return self._buf, self._view

    async def _receive(self, into: memoryview) -> int:
        if self._socket is None:
            data: bytes = await self._raw.read(len(into))
            into[: len(data)] = data
            return len(data)
        try:
            received: int = await self._socket.recv_into(into)
        except trio.ClosedResourceError:
            return 0
        except OSError as exc:
            raise ConnectionClosedError(f"TCP connection failed: {exc}", transport="tcp") from exc
        return received

    async def close(self) -> None:
        await self._raw.close()


def _header_alone(parts: Sequence[Buffer], wanted: bool) -> bool:
    """Whether :func:`_messages` puts ``parts[0]`` in a Noise message of its own."""
    return wanted and len(parts) > 1 and 0 < memoryview(parts[0]).nbytes <= MAX_PLAINTEXT_LENGTH


def _messages(parts: Sequence[Buffer], header_alone: bool) -> Iterator[Buffer]:
    """The plaintexts of the Noise messages for ``parts``: pieces of their concatenation
    of ``MAX_PLAINTEXT_LENGTH`` bytes (:func:`_plaintext_pieces`), or, with
    ``header_alone``, the first part (a Yamux frame header) alone, then such pieces of
    the rest.

    Why alone: a receiver reads a Yamux header (12 bytes) before it knows where the
    frame's body goes. Sharing a message with the body's first 64 KiB, the header makes
    the receiver decrypt that message into a buffer of its own and copy the 64 KiB out
    (the first 64 KiB of every DATA frame); alone, every message of the body can be
    decrypted where the body goes. It costs 18 bytes and a 12-byte encryption per
    frame. Any Noise peer accepts messages of any size: the wire stays valid."""
    if not _header_alone(parts, header_alone):
        yield from _plaintext_pieces(parts, MAX_PLAINTEXT_LENGTH)
        return
    yield parts[0]
    yield from _plaintext_pieces(parts[1:], MAX_PLAINTEXT_LENGTH)


def _plaintext_pieces(parts: Sequence[Buffer], size: int) -> Iterator[Buffer]:
    """The concatenation of ``parts`` in pieces of ``size`` bytes (the last shorter);
    a piece inside one part is a view of it, not a copy."""
    pending: list[memoryview] = []
    pending_len = 0
    for part in parts:
        view = memoryview(part).cast("B")
        pos, end = 0, view.nbytes
        while pos < end:
            take = min(size - pending_len, end - pos)
            pending.append(view[pos : pos + take])
            pending_len += take
            pos += take
            if pending_len == size:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
                pending, pending_len = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else b"".join(pending)


async def _send_vectored(sock: Any, buffers: Sequence[Buffer]) -> None:
    """Send all of ``buffers`` with ``sendmsg`` (scatter/gather: no joining)."""
    views = [memoryview(b) for b in buffers]
    while views:
        batch = views[:_MAX_IOVEC]
        sent: int = await sock.sendmsg(batch)
        while sent:
            first = views[0]
            if sent >= first.nbytes:
                sent -= first.nbytes
                views.pop(0)
            else:
                views[0] = first[sent:]
                sent = 0


DIRECT_WRITE_MIN = 1 << 20
"""Writes from this size on (bulk DATA frames) are sealed and sent with direct system
calls (:meth:`BatchedNoiseReadWriter._seal_and_send`); smaller ones (headers, window
updates, small frames) go through trio's ``sendmsg``. ``0`` turns it off (per session:
``direct_min``)."""
_SEAL_BATCH = 1 << 18


def _hang_up(sock: Any) -> None:
    """End a TCP connection whose Noise stream a write left out of step: part of a
    frame sent (the peer is inside a DATA body it will wait for, and would read our
    next frames as the rest of it) and the cipher's nonces ahead of what the peer got.
    Shut down both ways, both sides see a dead connection at once (py-libp2p then
    closes it as any), instead of each waiting for a read timeout."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _trio_socket_of(conn: Any) -> Any:
    """The trio socket under a py-libp2p TCP raw connection, or ``None`` (other
    transports, or internals that changed)."""
    stream = getattr(getattr(conn, "stream", None), "stream", None)
    if isinstance(stream, trio.SocketStream):
        sock = stream.socket
        if hasattr(sock, "recv_into") and hasattr(sock, "sendmsg"):
            return sock
    return None


class BatchedSecureSession(SecureSession):
    """A Noise session whose byte reads are cut from whole decrypted messages, with one
    join per read (py-libp2p's copies each message into a buffer, then out again)."""

    def __init__(self, stock: SecureSession, conn: BatchedNoiseReadWriter) -> None:
        super().__init__(
            local_peer=stock.local_peer,
            local_private_key=stock.local_private_key,
            remote_peer=stock.remote_peer,
            remote_permanent_pubkey=stock.remote_permanent_pubkey,
            is_initiator=stock.is_initiator,
            conn=conn,
        )
        self.conn: BatchedNoiseReadWriter = conn
        self._message = b""
        self._offset = 0
        self._scratch: memoryview | None = None
        self.last_header = b""
        """The last read of exactly one Yamux header's size: Yamux reads each frame's header
        that way right before its body (see :func:`install_direct_yamux_reads`)."""
        self.window_waiters: trio.Event | None = None
        """Set (and dropped) once Yamux has handled a WINDOW_UPDATE, for writers waiting
        for the peer's window (:func:`_wait_for_window`)."""

    async def write_parts(self, parts: Sequence[Buffer], *, header_alone: bool = False) -> None:
        """Write the concatenation of ``parts`` without joining it first (see
        :meth:`BatchedNoiseReadWriter.write_parts`)."""
        await self.conn.write_parts(parts, header_alone=header_alone)

    async def read(self, n: int | None = None) -> bytes:
        if n is not None and n >= _BULK_READ:
            return await self._read_bulk(n)  # type: ignore[return-value]
        if n == 0:
            return b""
        if n == _YAMUX_HEADER.size and self.window_waiters is not None:
            self._wake_window_waiters()
        if n is None:
            if self._offset < len(self._message):
                rest = self._message[self._offset :]
                self._message, self._offset = b"", 0
                return rest
            return await self.conn.read_msg()
        pieces: list[bytes] = []
        need = n
        while need:
            message, offset = self._message, self._offset
            if offset >= len(message):
                message, offset = await self.conn.read_msg(), 0
                self._message = message
                if not message:
                    continue  # an empty Noise message: legal, carries nothing
            take = min(need, len(message) - offset)
            pieces.append(message if take == len(message) else message[offset : offset + take])
            self._offset = offset + take
            need -= take
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if n == _YAMUX_HEADER.size:
            self.last_header = data
        return data

    def _wake_window_waiters(self) -> None:
        """Yamux is about to read the next frame's header, so it has handled the last
        one: if that was a WINDOW_UPDATE, the peer's credit is now in ``send_window``
        and the writers waiting for it may go on. py-libp2p signals nothing there, so
        without this a writer polls (py-libp2p's own every 10 ms, ours from 0.5 ms up):
        a sender ahead of its window lost up to a poll interval per wait, tens of times
        per 100 MiB."""
        header = self.last_header
        waiters = self.window_waiters
        if waiters is not None and len(header) > 1 and header[1] == _yamux.TYPE_WINDOW_UPDATE:
            self.window_waiters = None
            waiters.set()

    async def read_transient(self, n: int) -> Buffer:
        """Exactly ``n`` bytes, like :meth:`read`, but a large read (up to
        ``SCRATCH_MAX``) is a view of a scratch buffer the session reuses: valid only
        until the next call. For a caller that copies the bytes at once and keeps no
        reference (Yamux's DATA path: its stream buffer's ``extend``). A fresh
        allocation per 1 MiB body, dropped right after the copy, costs page faults
        (glibc hands freed heap back to the kernel and takes it again): ~5,000 per
        100 MiB received, zero-filled by the kernel, where the scratch stays mapped and
        in cache."""
        if n < _BULK_READ or n > SCRATCH_MAX:
            return await self.read(n)
        scratch = self._scratch
        if scratch is None or len(scratch) < n:
            # Grown once to the largest body seen (our own senders' DATA frames are
            # ``yamux_chunk`` bytes, 4 MiB by default), at most SCRATCH_MAX.
            scratch = self._scratch = memoryview(unfilled_bytearray(max(n, READ_BUFFER_MAX)))
        view = scratch[:n]
        await self.read_into(view)  # writes all of it, or raises
        return view

    async def _read_bulk(self, n: int) -> bytearray:
        """Exactly ``n`` bytes, decrypted straight into the result where messages fit
        whole. Returns a ``bytearray``: its one caller, Yamux, only copies it into its
        stream buffer (which takes any buffer)."""
        out = unfilled_bytearray(n)  # read_into writes all of it, or raises
        await self.read_into(memoryview(out))
        return out

    async def read_in_place(self, view: memoryview) -> None:
        """:meth:`read_into` for a DATA body landing in a waiting reader's frame: with
        schedule points every 1 MiB, not 256 KiB. Those of :meth:`read_into` let the
        stream's reader hang its sink before the next body comes; this reader's sink
        is hung already (and stays so for the whole frame: :class:`_LandingGate`), so
        here they would only be scheduler passes (~200 per 100 MiB)."""
        await self.read_into(view, yield_every=READ_BUFFER_MAX)

    async def read_into(self, view: memoryview, *, yield_every: int = _YIELD_EVERY) -> None:
        """Exactly ``len(view)`` bytes into ``view``, each Noise message that fits whole
        decrypted straight into it (the rest of a message read in part is copied)."""
        n = len(view)
        pos = 0
        message, offset = self._message, self._offset
        if offset < len(message):
            pos = min(n, len(message) - offset)
            view[:pos] = memoryview(message)[offset : offset + pos]
            self._offset = offset + pos
        conn = self.conn
        step = pos + yield_every
        while pos < n:
            if pos >= step:
                # Let other tasks run (the stream's reader, to hang its Sink before the
                # next DATA frame is placed): a socket read that found 1 MiB waiting
                # would otherwise have us decrypt all of it in one go.
                step = pos + yield_every
                await trio.lowlevel.checkpoint()
            pos = conn.decrypt_buffered(view, pos, step)
            if pos >= n or pos >= step:
                continue
            ciphertext = await conn.next_ciphertext()
            size = len(ciphertext) - _TAG
            if 0 < size <= n - pos and conn.decrypt_into(ciphertext, view[pos : pos + size]):
                pos += size
                continue
            message = conn.decrypt(ciphertext)
            take = min(len(message), n - pos)
            view[pos : pos + take] = memoryview(message)[:take]
            pos += take
            self._message, self._offset = message, take


def install_batched_noise(session: ISecureConn) -> ISecureConn:
    """A batched version of a fresh py-libp2p Noise session (same keys, same wire format),
    or ``session`` itself if it does not have the expected shape."""
    current = getattr(session, "conn", None)
    if (
        type(session) is not SecureSession
        or not isinstance(current, NoiseTransportReadWriter)
        or not hasattr(current, "noise_state")
    ):
        logger.debug("not batching Noise on %s: unexpected session shape", type(session))
        return session
    return BatchedSecureSession(session, BatchedNoiseReadWriter(current.conn, current.noise_state))


class Sink:
    """Where a reader waiting on a Yamux stream wants its next bytes: ``view`` (the rest of
    an application frame being assembled). Hung on the stream's receive buffer
    (:class:`~gossipfl.transport.libp2p.guards.GuardedBuffer`, attribute ``sink``) while
    the reader waits.

    A DATA body that fits in the room left is decrypted straight into ``view`` (the
    region is ``landing``); when Yamux then hands that region to the buffer's ``extend``,
    the buffer's guard checks it as any data (window, limits, stream state) and, if
    admitted, ``filled`` grows instead of the buffer. Anything else (a region not
    admitted, a sink taken away meanwhile) is never counted: the reader sees only
    ``view[:filled]``."""

    __slots__ = ("filled", "landing", "view")

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.filled = 0
        self.landing: memoryview | None = None

    def absorb(self, buffer: bytearray) -> None:
        """Move the bytes of ``buffer`` (which come before any more) into ``view``; the
        reader would copy them there itself when it next runs."""
        start = self.filled
        take = len(buffer)
        with memoryview(buffer) as held:
            self.view[start : start + take] = held
        del buffer[:take]
        self.filled = start + take

    def claim(self, size: int) -> memoryview | None:
        """The region for a ``size``-byte DATA body, or ``None`` if it does not fit."""
        start = self.filled
        if size > len(self.view) - start:
            return None
        region = self.view[start : start + size]
        self.landing = region
        return region

    def commit(self, data: object) -> int:
        """If ``data`` is the region handed out last, count it and return its size; else 0."""
        region = self.landing
        if region is None or data is not region:
            return 0
        self.landing = None
        self.filled += len(region)
        return len(region)


_SINK_PASSES = 6
"""Most schedule points a large DATA body waits for its stream's reader to hang a sink
when a few bytes (a length prefix) are pending (see :func:`install_body_reader`)."""

DIRECT_MIN = 1 << 14
"""Smallest DATA body decrypted straight into a waiting reader's frame: below it the
bookkeeping costs more than the copy it saves."""


def _data_header(header: bytes, length: int) -> int | None:
    """The stream ID of ``header`` if it is the header of a ``length``-byte DATA frame."""
    if len(header) != _YAMUX_HEADER.size:
        return None
    version, typ, _flags, sid, announced = _YAMUX_HEADER.unpack(header)
    if version != 0 or typ != _yamux.TYPE_DATA or announced != length:
        return None
    return int(sid)


def install_direct_yamux_reads(muxed_conn: object) -> bool:
    """Let a Yamux connection over a batched session read DATA bodies straight from it.

    Yamux reads each DATA frame body with ``read_exactly``, which copies the bytes into a
    bytearray and then into a new bytes object; :meth:`BatchedSecureSession.read` already
    returns exactly the bytes asked for, so the body is taken as is (two copies fewer per
    byte received). And when the frame's stream has a reader waiting with a :class:`Sink`
    that has room for the whole body, the body is decrypted straight into it (no copy at
    all: see :class:`Sink`). Idempotent; returns whether the connection now reads
    directly.
    """
    if not isinstance(muxed_conn, _yamux.Yamux):
        return False
    secured = getattr(muxed_conn, "secured_conn", None)
    if not isinstance(secured, BatchedSecureSession) or not hasattr(muxed_conn, "_read_data_body"):
        return False
    if getattr(muxed_conn, "_gossipfl_direct_reads", False):
        return True
    install_body_reader(muxed_conn, secured)
    return True


def install_body_reader(muxed_conn: _yamux.Yamux, secured: Any) -> None:
    """The body reader of :func:`install_direct_yamux_reads`, over ``secured`` (which has
    ``last_header``, ``read`` and ``read_into`` as :class:`BatchedSecureSession` does, and
    perhaps ``read_transient`` and ``read_in_place``)."""
    buffers_of = muxed_conn
    timeout = _yamux._yamux_data_read_timeout
    read_transient = getattr(secured, "read_transient", secured.read)
    read_in_place = getattr(secured, "read_in_place", secured.read_into)

    async def read_data_body(length: int) -> Buffer:
        with trio.fail_after(timeout()):
            if length >= DIRECT_MIN:
                sid = _data_header(secured.last_header, length)
                buffer = None if sid is None else buffers_of.stream_buffers.get(sid)
                sink: Sink | None = getattr(buffer, "sink", None)
                if (
                    (sink is None or sink.filled >= len(sink.view))
                    and buffer is not None
                    and 0 < len(buffer) < DIRECT_MIN
                ):
                    # A few bytes wait to be read, no frame yet (or only the one just
                    # filled, whose reader has not yet taken its sink down): likely a
                    # length prefix (our senders put it in a DATA frame of its own) whose
                    # reader has just been woken. Give it a few passes to allocate the
                    # frame and hang its sink, so that this body lands there, not in the
                    # buffer.
                    for _ in range(_SINK_PASSES):
                        await trio.lowlevel.checkpoint()
                        sink = getattr(buffer, "sink", None)
                        if sink is not None and sink.filled < len(sink.view):
                            break
                region = None
                if sink is not None and buffer is not None and sink.landing is None:
                    # Bytes already buffered come first: into the sink with them, if the
                    # body fits after them (else it is buffered too).
                    if buffer and len(buffer) + length <= len(sink.view) - sink.filled:
                        sink.absorb(buffer)
                    if not buffer:
                        region = sink.claim(length)
                if region is not None:
                    await read_in_place(region)
                    return region
            body: Buffer = await read_transient(length)
            return body

    muxed_conn._read_data_body = read_data_body  # type: ignore[method-assign,assignment]
    muxed_conn._gossipfl_direct_reads = True  # type: ignore[attr-defined]


def reads_directly(muxed_conn: object) -> bool:
    """Whether :func:`install_direct_yamux_reads` is in place on ``muxed_conn``."""
    return bool(getattr(muxed_conn, "_gossipfl_direct_reads", False))


async def read_yamux(stream: _yamux.YamuxStream, n: int) -> bytes | bytearray:
    """Up to ``n`` bytes from a Yamux stream, taking its whole receive buffer when it fits.

    ``YamuxStream.read`` copies the buffered bytes out (``bytes(buffer)``) and clears the
    buffer; when all of it is wanted, we swap the buffer for an empty one instead (no
    copy) and grant the sender the same window credit ``read`` would. Anything else
    (nothing buffered yet, end of stream, reset, a partial read) goes through ``read``.
    """
    conn = stream.conn
    sid = stream.stream_id
    taken: bytearray | None = None
    async with conn.streams_lock:
        buffer = conn.stream_buffers.get(sid)
        if buffer and len(buffer) <= n and sid in conn.streams and not stream.reset_received:
            conn.stream_buffers[sid] = bytearray()
            taken = buffer
    if taken is None:
        return await stream.read(n)
    await stream._auto_tune_and_send_window_update(bytes_read=len(taken))
    return taken


_CREDIT_ROUNDS = 8
_RECHECK = 0.5


class YamuxInPlace:
    """Reads a Yamux stream into a caller's buffer: the
    :class:`~gossipfl.transport.libp2p.framing.InPlace` of inbound gossip streams.

    While :meth:`read_into` runs, a :class:`Sink` on its buffer hangs on the stream's
    receive buffer, so that DATA bodies arriving meanwhile are decrypted straight into it
    (over a connection with :func:`install_direct_yamux_reads` and a guarded buffer; else
    they are buffered, and copied in from there once, as bytes already buffered are).
    The memory reserved for frames not yet received is bounded per connection by the
    connection's guard (``reserve``/``unreserve``).
    """

    def __init__(self, stream: _yamux.YamuxStream, guard: Any) -> None:
        self.stream = stream
        self.guard = guard
        self._owed = 0  # bytes delivered but not yet credited to the sender's window

    def reserve(self, size: int) -> bool:
        return bool(self.guard.reserve(size))

    def release(self, size: int) -> None:
        self.guard.unreserve(size)

    async def read_some(self, n: int) -> bytes | bytearray:
        """Up to ``n`` bytes (at least one) of the stream, as :func:`read_yamux`; bytes
        already buffered are taken at once (no lock, no schedule point) and credited
        as :meth:`read_into` credits them. Between frames this is what reads the next
        length prefix: the sooner the reader is back in :meth:`read_into`, the more of
        the next frame lands in place."""
        stream = self.stream
        conn = stream.conn
        sid = stream.stream_id
        buffer = conn.stream_buffers.get(sid)
        if not buffer or sid not in conn.streams or stream.reset_received:
            data = await read_yamux(stream, n)
        else:
            take = min(len(buffer), n)
            with memoryview(buffer) as held:
                data = bytes(held[:take])
            del buffer[:take]
            self._owed += take
            if self._window_low():
                due, self._owed = self._owed, 0
                await stream._auto_tune_and_send_window_update(bytes_read=due)
        return data

    def _window_low(self) -> bool:
        """Whether the sender is down to a quarter of the stream's target window. Between
        frames (:meth:`read_some`) only this makes us grant credit at once; the rest
        waits for the next :meth:`read_into`, which grants it right after hanging its
        sink. Granting here first (a WINDOW_UPDATE: locks and a write, several
        schedule points) kept the reader from hanging the next frame's sink in time for
        that frame's first DATA body, which then went through the buffer: a whole
        ``yamux_chunk`` copied twice per frame, now and then."""
        stream = self.stream
        target = getattr(stream, "target_recv_window", _yamux.DEFAULT_WINDOW_SIZE)
        return bool(stream.recv_window <= target // 4)

    async def read_into(self, view: memoryview) -> int:
        try:
            return await self._read_into(view)
        except BaseLibp2pError as exc:  # a reset, a dead connection: the end of the stream
            raise EOFError(str(exc) or type(exc).__name__) from exc

    def _credit_now(self, due: int) -> bool:
        """Grant ``due`` bytes of window now, or let them add up? py-libp2p sends a
        WINDOW_UPDATE for nearly every read it credits (one per ~200 KiB in a bulk
        transfer, each a Noise message both sides pay for, and a wake-up of the
        sender's muxer); we credit once half of the stream's target window is due, or
        sooner when the sender is down to a quarter of it (so that it seldom waits for
        credit because of us: a few times per 100 MiB, and is woken at once when it
        does, see :func:`_wait_for_window`). Half rather than a quarter: ~19-27 updates
        per 100 MiB instead of ~31 with 4 MiB DATA frames, 8-11 ms less of the sender's
        CPU per 100 MiB in two sets of six alternating pairs (docs/benchmarks.md,
        Transport, fifth pass)."""
        target = getattr(self.stream, "target_recv_window", _yamux.DEFAULT_WINDOW_SIZE)
        return due >= target // 2 or self._window_low()

    async def _read_into(self, view: memoryview) -> int:
        """At least one byte, at most ``len(view)``, into ``view``. Returns once bytes
        have come and been credited (as ``YamuxStream.read`` credits them), and no body
        is on its way into ``view``; raises py-libp2p's ``MuxedStreamReset`` or
        ``MuxedStreamEOF`` at the end of the stream, as ``read`` does."""
        stream = self.stream
        conn = stream.conn
        sid = stream.stream_id
        sink = Sink(view)
        hung: Any = None
        credited = 0
        rounds = 0
        wake_by: float | None = None
        events: dict[int, Any] = conn.stream_events  # holds our gates too
        try:
            while True:
                buffer = conn.stream_buffers.get(sid)
                if buffer is None:
                    sink.landing = None
                    if sink.filled:
                        return sink.filled  # credited already: the stream is gone
                    if stream.reset_received:
                        raise MuxedStreamReset("stream was reset")
                    raise MuxedStreamEOF("stream buffer closed")
                if buffer is not hung and hasattr(buffer, "sink"):
                    if hung is not None and hung.sink is sink:
                        hung.sink = None
                    hung = buffer
                    buffer.sink = sink
                if buffer:  # bytes buffered before the sink was hung: they come first
                    start = sink.filled
                    take = min(len(buffer), len(view) - start)
                    if take:
                        with memoryview(buffer) as held:
                            view[start : start + take] = held[:take]
                        del buffer[:take]
                        sink.filled = start + take
                due = self._owed + sink.filled - credited
                if due and self._credit_now(due):
                    self._owed, credited = 0, sink.filled
                    rounds += 1
                    # Bodies may land while we await this; they are credited next round.
                    await stream._auto_tune_and_send_window_update(bytes_read=due)
                    if sink.filled > credited and rounds < _CREDIT_ROUNDS:
                        continue
                if conn.event_shutting_down.is_set():
                    sink.landing = None
                if sink.filled and sink.landing is None:
                    self._owed += sink.filled - credited
                    return sink.filled
                if not sink.filled:
                    if stream.reset_received:
                        raise MuxedStreamReset("stream was reset")
                    if stream.recv_closed or conn.event_shutting_down.is_set():
                        raise MuxedStreamEOF("stream is closed for receiving")
                    if stream.closed:
                        raise MuxedStreamReset("stream is reset or closed")
                event: Any = events.get(sid)
                if event is None:
                    raise MuxedStreamEOF("stream was removed during read")
                if hung is not None and hung.sink is sink and not event.is_set():
                    if wake_by is None:
                        deadline = trio.current_effective_deadline()
                        now = trio.current_time()
                        wake_by = now + (deadline - now) / 2
                    event = events[sid] = _LandingGate(self, sink, self._owed - credited, wake_by)
                # py-libp2p drops a stream's event without setting it when the stream is
                # reset from our side (a guard's reset): look again now and then.
                with trio.move_on_after(_RECHECK):
                    await event.wait()
                if (event.is_set() or type(event) is _LandingGate) and events.get(sid) is event:
                    events[sid] = trio.Event()
        finally:
            if hung is not None and hung.sink is sink:
                hung.sink = None
            gate = events.get(sid)
            if type(gate) is _LandingGate and gate.sink is sink:
                events[sid] = trio.Event()

    def must_wake(self, sink: Sink, owed: int, wake_by: float) -> bool:
        """Whether the reader waiting with ``sink`` must run now (see
        :class:`_LandingGate`): its frame is complete, window credit is due (``owed``
        bytes before the sink's), the stream changed state (a FIN or RST, bytes that
        went to the buffer instead), or half of its read's time is gone (so that a
        slow but steady sender still shows progress before the read times out)."""
        if sink.filled >= len(sink.view) or sink.landing is not None:
            return True
        stream = self.stream
        conn = stream.conn
        buffer = conn.stream_buffers.get(stream.stream_id)
        if buffer is None or getattr(buffer, "sink", None) is not sink or len(buffer):
            return True
        if (
            stream.reset_received
            or stream.recv_closed
            or stream.closed
            or conn.event_shutting_down.is_set()
        ):
            return True
        header = getattr(conn.secured_conn, "last_header", b"")
        if len(header) != _YAMUX_HEADER.size or _YAMUX_HEADER.unpack(header)[2] & (
            _yamux.FLAG_FIN | _yamux.FLAG_RST
        ):
            return True  # py-libp2p marks a FIN only after waking the reader
        due = owed + sink.filled
        return bool(due and self._credit_now(due)) or trio.current_time() >= wake_by


class _LandingGate:
    """Stands in for a stream's ``trio.Event`` in ``Yamux.stream_events`` while a
    :class:`YamuxInPlace` reader waits for DATA bodies to land in its :class:`Sink`.

    py-libp2p sets a stream's event after every DATA frame; a reader woken per 1 MiB
    body only checks its sink, returns, and is called again for the rest of its frame
    (a task step, a ``fail_after``, a new sink and event: ~300 wake-ups per 100 MiB).
    The gate lets ``set`` through only when the reader has something to do
    (:meth:`YamuxInPlace.must_wake`); the reader also looks again every
    ``_RECHECK`` seconds, as it always did. py-libp2p only calls ``set`` and ``wait``
    on stream events."""

    __slots__ = ("_event", "_owed", "_reader", "_wake_by", "sink")

    def __init__(self, reader: YamuxInPlace, sink: Sink, owed: int, wake_by: float) -> None:
        self._event = trio.Event()
        self._reader = reader
        self.sink = sink
        self._owed = owed
        self._wake_by = wake_by

    def set(self) -> None:
        if self._event.is_set():
            return
        try:
            wake = self._reader.must_wake(self.sink, self._owed, self._wake_by)
        except Exception:  # never let a check break py-libp2p's reader task
            wake = True
        if wake:
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


def yamux_stream_of(stream: INetStream) -> _yamux.YamuxStream | None:
    """The Yamux stream under ``stream`` if it has the internals :func:`write_yamux` needs."""
    muxed = getattr(stream, "muxed_stream", None)
    if not isinstance(muxed, _yamux.YamuxStream):
        return None
    conn = getattr(muxed, "conn", None)
    needed = (
        "send_window",
        "window_lock",
        "stream_id",
        "closed",
        "send_closed",
        "reset_received",
        "_auto_tune_and_send_window_update",
    )
    if (
        conn is None
        or not all(
            hasattr(conn, name)
            for name in (
                "_write_frame",
                "_write_lock",
                "secured_conn",
                "streams_lock",
                "stream_buffers",
                "streams",
            )
        )
        or not all(hasattr(muxed, name) for name in needed)
    ):
        return None
    return muxed


async def _wait_for_window(stream: _yamux.YamuxStream) -> None:
    """Wait until the peer grants window. Over a batched session, woken as soon as Yamux
    has handled a WINDOW_UPDATE (:meth:`BatchedSecureSession._wake_window_waiters`),
    with a poll every ``_WINDOW_POLL_MAX`` besides (a stream closed meanwhile);
    elsewhere py-libp2p signals nothing, so poll, starting fast."""
    secured = getattr(stream.conn, "secured_conn", None)
    session = secured if isinstance(secured, BatchedSecureSession) else None
    delay = _WINDOW_POLL_MIN
    while stream.send_window <= 0:
        if stream.closed or stream.send_closed:
            raise MuxedStreamClosed("stream closed while waiting for the peer's window")
        if session is not None:
            event = session.window_waiters
            if event is None:
                event = session.window_waiters = trio.Event()
            with trio.move_on_after(_WINDOW_POLL_MAX):
                await event.wait()
            continue
        await trio.sleep(delay)
        delay = min(delay * 2, _WINDOW_POLL_MAX)


async def _write_frame_parts(conn: Any, pieces: list[Buffer]) -> None:
    """One Yamux frame given in pieces, written whole under Yamux's connection write lock
    (the lock ``Yamux._write_frame`` takes, so frames never interleave)."""
    write_parts = getattr(conn.secured_conn, "write_parts", None)
    if write_parts is None:
        await conn._write_frame(b"".join(pieces))
        return
    async with conn._write_lock:
        await write_parts(pieces, header_alone=True)
    await trio.lowlevel.checkpoint()


async def write_yamux(
    stream: _yamux.YamuxStream,
    parts: Sequence[Buffer],
    *,
    chunk: int,
    progress_timeout: float,
) -> None:
    """Write the concatenation of ``parts`` as Yamux DATA frames of up to ``chunk`` bytes.

    Each frame takes as much as the peer's window allows. Every wait (for window, for the
    socket) must end within ``progress_timeout`` or :class:`trio.TooSlowError` is raised:
    the peer stopped reading, and the caller gives up on it.
    """
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    index, offset = 0, 0
    remaining = sum(v.nbytes for v in views)
    # A small first part (our frames' length prefix) goes in a DATA frame of its own:
    # the receiver's reader can then allocate the frame before the body's first DATA
    # frame is read, and that body lands in place (see install_body_reader).
    first = views[0].nbytes if len(views) > 1 and views[0].nbytes < DIRECT_MIN else chunk
    while remaining:
        async with stream.window_lock:
            if stream.closed or stream.send_closed:
                raise MuxedStreamClosed("stream is closed for sending")
            take = min(stream.send_window, chunk, remaining, first)
            if take > 0:
                stream.send_window -= take
        if take <= 0:
            with trio.fail_after(progress_timeout):
                await _wait_for_window(stream)
            continue
        pieces: list[Buffer] = [_YAMUX_HEADER.pack(0, _yamux.TYPE_DATA, 0, stream.stream_id, take)]
        need = take
        while need:
            view = views[index]
            piece = view[offset : offset + need]
            pieces.append(piece)
            need -= piece.nbytes
            offset += piece.nbytes
            if offset == view.nbytes:
                index, offset = index + 1, 0
        with trio.fail_after(progress_timeout):
            await _write_frame_parts(stream.conn, pieces)
        remaining -= take
        first = chunk
