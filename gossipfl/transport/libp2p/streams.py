"""Gossip streams: one long-lived stream per direction per peer, carrying frames.

Outbound, :class:`OutboundStreams` keeps one stream per peer, opened on the first
``send`` and reused; a lock per peer keeps frames whole and in order. A stream that fails
or is abandoned mid-frame (an error, a timeout, a cancellation) is reset and forgotten,
never reused: the receiver would read the rest of our next frame as the rest of this one.

Inbound, :func:`serve_stream` runs for each stream a peer opens on our protocol: it reads
frames with :class:`~gossipfl.transport.libp2p.framing.FrameReader` and queues them as
``Received(peer, data)``, where ``peer`` is the authenticated peer ID of the connection
(Noise), never something the bytes claim. Bad input ends that stream, logged with the
peer ID; it never raises into py-libp2p.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from libp2p.abc import INetStream
from libp2p.exceptions import BaseLibp2pError

from gossipfl.peerlog import PeerWarnings
from gossipfl.transport.base import PeerUnreachable, Received
from gossipfl.transport.libp2p.budgets import FrameThrottle, Report
from gossipfl.transport.libp2p.config import TransportConfig
from gossipfl.transport.libp2p.events import EventQueue
from gossipfl.transport.libp2p.fastpath import (
    YamuxInPlace,
    read_yamux,
    reads_directly,
    write_yamux,
    yamux_stream_of,
)
from gossipfl.transport.libp2p.framing import (
    FrameError,
    FrameReader,
    FrameTooLarge,
    ReadSome,
    encode_prefix,
)
from gossipfl.transport.libp2p.paths import muxed_path

logger = logging.getLogger(__name__)

OpenStream = Callable[[str], Awaitable[INetStream]]


@dataclass
class TransportStats:
    """Counters, for tests, logs and benchmarks."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    streams_opened: int = 0
    bad_streams: int = 0
    """Inbound streams dropped for invalid framing, truncation or a frozen sender."""
    refused_streams: int = 0
    """Inbound streams reset because the peer held too many (or is not allowed)."""
    send_failures: int = 0
    violations: int = 0
    """Limits broken by peers (all kinds; per peer and kind: ``Libp2pTransport.violations``)."""
    bans: int = 0
    """Peers banned for breaking limits too often (see :mod:`gossipfl.peerscore`)."""
    peak_connection_buffer: int = 0
    """Most bytes held at once in the Yamux stream buffers of one connection."""
    peak_buffer_by_peer: dict[str, int] = field(default_factory=dict)
    """The same, per peer (its connections one at a time)."""
    dropped_bytes: int = 0
    """Bytes received beyond a Yamux limit and thrown away (see ``guards``)."""
    bytes_sent_relayed: int = 0
    """Of ``bytes_sent``, those sent over relayed connections (the rest went direct)."""
    bytes_received_relayed: int = 0
    """Of ``bytes_received``, those that came over relayed connections."""
    bytes_sent_to: dict[str, int] = field(default_factory=dict)
    """Frame bytes sent, per peer."""
    bytes_received_from: dict[str, int] = field(default_factory=dict)
    """Frame bytes received, per peer."""

    def count_sent(self, peer: str, size: int, *, relayed: bool) -> None:
        self.frames_sent += 1
        self.bytes_sent += size
        self.bytes_sent_to[peer] = self.bytes_sent_to.get(peer, 0) + size
        if relayed:
            self.bytes_sent_relayed += size

    def count_received(self, peer: str, size: int, *, relayed: bool) -> None:
        self.frames_received += 1
        self.bytes_received += size
        self.bytes_received_from[peer] = self.bytes_received_from.get(peer, 0) + size
        if relayed:
            self.bytes_received_relayed += size


async def reset_quietly(stream: INetStream) -> None:
    """Reset ``stream``, shielded and bounded, whatever state it is in."""
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            await stream.reset()
        except Exception:
            logger.debug("resetting a stream failed", exc_info=True)


class _Outbound:
    __slots__ = ("lock", "relayed", "stream")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.stream: INetStream | None = None
        self.relayed = False
        """Whether ``stream`` runs over a relayed connection (taken when it is opened)."""

    def current(self) -> INetStream | None:
        """The stream now (a send in another task may have replaced it)."""
        return self.stream


def _stream_is_usable(stream: INetStream) -> bool:
    muxed = getattr(stream, "muxed_stream", None)
    if muxed is not None and (
        getattr(muxed, "closed", False) or getattr(muxed, "send_closed", False)
    ):
        return False
    conn = getattr(stream, "muxed_conn", None)
    return not getattr(conn, "is_closed", False)


class OutboundStreams:
    """Our sending side: a stream per peer and the frame writer."""

    def __init__(
        self, config: TransportConfig, open_stream: OpenStream, stats: TransportStats
    ) -> None:
        self.config = config
        self._open_stream = open_stream
        self._stats = stats
        self._peers: dict[str, _Outbound] = {}

    def forget(self, peer: str) -> INetStream | None:
        """Drop our stream to ``peer`` (its connection is gone); return it if there was one."""
        out = self._peers.pop(peer, None)
        return None if out is None else out.stream

    async def send(self, peer: str, data: bytes) -> None:
        out = self._peers.get(peer)
        if out is None:
            out = self._peers[peer] = _Outbound()
        async with out.lock:
            reused = out.stream is not None and _stream_is_usable(out.stream)
            if not reused:
                await self._reopen(out, peer)
            try:
                await self._attempt(out, data)
            except BaseLibp2pError as exc:
                if not reused:
                    raise self._unreachable(peer, exc) from exc
                # The stream was stale (its connection was replaced): retry once, fresh.
                logger.debug("stream to %s was stale (%s); reopening", peer, exc)
                await self._reopen(out, peer)
                try:
                    await self._attempt(out, data)
                except BaseLibp2pError as retry_exc:
                    raise self._unreachable(peer, retry_exc) from retry_exc
            except trio.TooSlowError:
                self._stats.send_failures += 1
                raise PeerUnreachable(
                    f"peer {peer} is not reading: no progress for "
                    f"{self.config.write_timeout:g} s while sending a {len(data)}-byte frame"
                ) from None
            relayed = out.relayed
        self._stats.count_sent(peer, len(data), relayed=relayed)

    def _unreachable(self, peer: str, exc: BaseException) -> PeerUnreachable:
        self._stats.send_failures += 1
        return PeerUnreachable(f"sending to peer {peer} failed: {exc or type(exc).__name__}")

    async def _reopen(self, out: _Outbound, peer: str) -> None:
        if out.stream is not None:
            stale, out.stream = out.stream, None
            await reset_quietly(stale)
        out.stream = await self._open_stream(peer)
        out.relayed = muxed_path(out.stream.muxed_conn).relayed
        self._stats.streams_opened += 1

    async def _attempt(self, out: _Outbound, data: bytes) -> None:
        """Write one frame on ``out.stream``. On any failure, including cancellation, the
        stream may hold part of the frame: it is reset and forgotten, never reused."""
        stream = out.stream
        assert stream is not None
        try:
            await self._write_frame(stream, data)
        except BaseException:
            out.stream = None
            await reset_quietly(stream)
            raise

    async def _write_frame(self, stream: INetStream, data: bytes) -> None:
        prefix = encode_prefix(len(data), self.config.max_frame)
        yamux = yamux_stream_of(stream) if self.config.yamux_chunk else None
        if yamux is not None:
            await write_yamux(
                yamux,
                (prefix, data),
                chunk=self.config.yamux_chunk,
                progress_timeout=self.config.write_timeout,
            )
        else:
            with trio.fail_after(self.config.write_timeout):
                await stream.write(prefix + bytes(data))

    async def close(self, peer: str, *, timeout: float) -> None:
        """Finish our stream to ``peer`` gracefully (see :func:`finish_stream`), within
        ``timeout``. A send still in progress after that has its stream reset under it
        (it fails with ``PeerUnreachable``)."""
        out = self._peers.pop(peer, None)
        if out is None:
            return
        deadline = trio.current_time() + timeout
        with trio.move_on_at(deadline) as scope:
            async with out.lock:
                stream, out.stream = out.stream, None
                if stream is not None:
                    await finish_stream(stream, timeout=deadline - trio.current_time())
        stuck = out.current()  # a send held the lock all along: pull the rug
        if scope.cancelled_caught and stuck is not None:
            await reset_quietly(stuck)

    async def retire(self, peer: str, *, timeout: float) -> None:
        """Finish our current stream to ``peer`` gracefully (as :meth:`close`) but keep
        sending to it: the next frame opens a new stream, on whichever connection the
        swarm prefers then (a direct one over a relayed one). Frames keep their order:
        the new stream opens only after the receiver has read the old one to its end."""
        out = self._peers.get(peer)
        if out is None:
            return
        async with out.lock:
            stream, out.stream = out.stream, None
            if stream is not None:
                await finish_stream(stream, timeout=timeout)

    async def aclose(self, *, timeout: float) -> None:
        """Finish every outbound stream gracefully, concurrently, within ``timeout``."""
        peers = list(self._peers)
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(functools.partial(self.close, peer, timeout=timeout))


async def finish_stream(stream: INetStream, *, timeout: float) -> None:
    """Half-close ``stream`` and wait until the receiver has read it all.

    py-libp2p's Yamux discards a stream's unread buffered data as soon as the connection
    closes, so frames sent just before ``aclose``/``disconnect`` (a final model, a
    refusal) would often be lost. The receiver closes its side of a gossip stream only
    after reading everything up to our end-of-stream; we wait for that (at most
    ``timeout``), then close the connection.
    """
    with trio.CancelScope(shield=True), trio.move_on_after(timeout):
        try:
            close_write = getattr(stream, "close_write", None)  # NetStream has it
            await (close_write() if callable(close_write) else stream.close())
            while await stream.read(1 << 16):
                pass  # receivers never write on gossip streams; ignore it if one does
        except BaseLibp2pError:
            pass  # EOF (what we wait for), or a reset: either way the stream is done
    await reset_quietly(stream)


def _reader_of(
    stream: INetStream, config: TransportConfig, in_place: YamuxInPlace | None = None
) -> ReadSome:
    """The read-some function of an inbound stream: the no-copy Yamux path when the
    stream is py-libp2p Yamux (and the fast path is on; through ``in_place`` when the
    stream reads frames in place, which also grants the window), else ``stream.read``.
    Every way a stream can end is mapped to :class:`EOFError`: a reset or a dead
    connection in the middle of a frame must read as a truncated frame."""
    yamux = yamux_stream_of(stream) if config.batch_noise else None

    async def read_some(n: int) -> bytes:
        try:
            if in_place is not None:
                return await in_place.read_some(n)  # type: ignore[return-value]
            if yamux is not None:
                return await read_yamux(yamux, n)  # type: ignore[return-value]
            return await stream.read(n)
        except BaseLibp2pError as exc:
            raise EOFError(str(exc) or type(exc).__name__) from exc

    return read_some


def _in_place_of(stream: INetStream, config: TransportConfig) -> YamuxInPlace | None:
    """Large frames of an inbound stream are assembled in place (decrypted straight into
    the frame) when the stream is py-libp2p Yamux over our batched Noise, with its
    connection under a guard (which bounds the memory reserved for them)."""
    yamux = yamux_stream_of(stream) if config.batch_noise else None
    if yamux is None or not reads_directly(yamux.conn):
        return None
    guard = getattr(yamux.conn, "_gossipfl_guard", None)
    if not callable(getattr(guard, "reserve", None)):
        return None
    return YamuxInPlace(yamux, guard)


async def serve_stream(
    stream: INetStream,
    peer: str,
    *,
    config: TransportConfig,
    queue: EventQueue,
    stats: TransportStats,
    warnings: PeerWarnings,
    throttle: FrameThrottle | None = None,
    report: Report | None = None,
) -> None:
    """Read frames from one inbound gossip stream until it ends; queue them.

    Each frame waits for a token of the peer's ``throttle`` (frames per second) before it
    is queued; while it waits, nothing more is read from the stream. A frame announced
    above the size limit is reported (kind ``bad_frame``); a stream that ends or stalls
    mid-frame is not (that is what a crashed or frozen honest peer looks like)."""
    in_place = _in_place_of(stream, config)
    reader = FrameReader(
        _reader_of(stream, config, in_place),
        max_frame=config.max_frame,
        read_timeout=config.read_timeout,
        in_place=in_place,
    )
    relayed = muxed_path(stream.muxed_conn).relayed
    try:
        while True:
            frame = await reader.next_frame()
            if frame is None:
                break
            stats.count_received(peer, len(frame), relayed=relayed)
            if throttle is not None:
                await throttle.admit(peer)
            await queue.push_frame(Received(peer, frame))
    except FrameError as exc:
        stats.bad_streams += 1
        if report is not None and isinstance(exc, FrameTooLarge):
            report(peer, "bad_frame", f"on a gossip stream: {exc}")
        warnings.warn(
            logger,
            peer,
            "dropped a gossip stream from peer %s after %d good frames: %s",
            peer,
            reader.frames,
            exc,
        )
        await reset_quietly(stream)
        return
    logger.debug("gossip stream from %s ended after %d frames", peer, reader.frames)
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            await stream.close()
        except Exception:
            logger.debug("closing the stream from %s failed", peer, exc_info=True)
