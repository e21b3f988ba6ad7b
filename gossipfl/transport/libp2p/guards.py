"""Receive limits for py-libp2p's Yamux, which enforces none.

What py-libp2p 0.8.1 does with a Yamux DATA frame: it reads the body, then, holding the
connection's ``streams_lock``, runs ``stream_buffers[sid].extend(data)`` and
``recv_window -= len(data)``; if the window went negative it logs "peer exceeded receive
window" (on a ``libp2p`` logger, which the CLI silences) and sets it to 0. That is all:
the bytes stay buffered until a reader takes them, and a stream that nobody reads (a
request stream after its reply, a half-closed stream) keeps them until the connection
ends. A peer that ignores flow control grew a victim from 208 MB to 2.6 GB in 20 s this
way, with no trace in our logs. Nor does it cap the streams a peer may open.

So every connection we hold gets a :class:`ConnectionGuard`, which enforces:

``window``
    a DATA frame longer than the stream's remaining receive window (what *we* granted:
    py-libp2p raises ``recv_window`` before it sends the update, so an honest sender can
    never exceed it) is dropped, and the stream is reset;
``streams``
    at most ``max_inbound_streams`` open streams that the peer opened; the next one is
    reset at once;
``buffered``
    at most ``max_buffered`` bytes across all the connection's stream buffers; the frame
    that would go beyond is dropped, and its stream reset.
``window`` (again)
    data on streams that are gone: reset (by either side), closed by the peer, or unknown.
    A sender may have a window's worth in flight when a reset crosses it, so up to
    :data:`IGNORED_GRACE` bytes per connection pass silently; every further
    :data:`IGNORED_GRACE` bytes is a violation. Without this, a peer whose flood got its
    stream reset could keep writing into the dead stream, and we would read, decrypt and
    discard it for as long as it likes. Data for unknown streams never reaches a buffer
    (py-libp2p drops it), so it is measured as the difference between the DATA bytes the
    connection read (:meth:`ConnectionGuard.watch_reads`) and the bytes offered to buffers.

Each violation is reported (``report(peer, kind, detail)``, the transport's
``penalize``), which counts it, logs it and may ban the peer. Resets need I/O and happen
in a task (``spawn``); if a peer makes us queue more than :data:`MAX_PENDING_RESETS` of
them (it opens streams faster than we can reset them, or does not read its socket so our
RST frames cannot go out) the whole connection is closed.

How: ``Yamux.stream_buffers`` is replaced by a :class:`GuardedBuffers` dict, which wraps
each buffer py-libp2p stores in it in a :class:`GuardedBuffer` (a ``bytearray`` whose
``extend`` checks the limits). py-libp2p mutates the buffers only with ``.extend``,
``del buf[:n]`` and ``.clear()``, and the dict with ``[sid] = bytearray()``, ``.get``,
``.pop``, ``del`` and ``.clear()`` (our own ``fastpath.read_yamux`` swaps in a fresh
``bytearray()``); ``test_yamux_buffer_operations_are_the_ones_the_guard_wraps`` in
``tests/test_libp2p_guards.py`` fails if that changes. A dropped frame's length is added
back to ``recv_window`` before py-libp2p subtracts it, so its accounting stays what it
was (and it logs nothing). If a connection does not have the expected shape,
:func:`install_yamux_guards` returns ``None`` and the caller logs a warning: the
connection then runs without receive limits.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self, SupportsIndex

import trio
from libp2p.stream_muxer.yamux import yamux as _yamux

from gossipfl.transport.libp2p.fastpath import Sink
from gossipfl.transport.libp2p.streams import TransportStats

logger = logging.getLogger(__name__)

Report = Callable[[str, str, str], object]
"""``report(peer, kind, detail)``."""
Spawn = Callable[[Callable[[], Awaitable[object]], str], bool]
"""``spawn(job, name)``: start ``job()`` in the background; ``False`` if it was not."""

MAX_PENDING_RESETS = 64
"""Streams of one connection waiting for their RST to be sent; beyond it the connection
is closed instead."""
RESET_TIMEOUT = 1.0
"""How long sending one RST may take (the peer may not be reading its socket)."""
CLOSE_TIMEOUT = 2.0
IGNORED_GRACE = _yamux.MAX_WINDOW_SIZE
"""Bytes a peer may send on streams that are gone (per connection) before each further
as many is a violation: the most an honest sender can have in flight on one stream."""
_MAX_PEERS_IN_STATS = 4096

_YAMUX_FIELDS = ("streams", "streams_lock", "stream_buffers", "peer_id", "close")
_STREAM_FIELDS = (
    "recv_window",
    "is_initiator",
    "closed",
    "recv_closed",
    "reset_received",
    "stream_id",
    "reset",
)


@dataclass(frozen=True)
class YamuxLimits:
    """The limits of one connection (from :class:`~gossipfl.transport.libp2p.config.
    TransportConfig`: ``max_inbound_streams``, ``max_connection_buffer``)."""

    max_inbound_streams: int
    max_buffered: int


class GuardedBuffer(bytearray):
    """A Yamux stream's receive buffer whose growth is checked by a guard. Detached from
    its guard (``_guard is None``) it is a plain ``bytearray``.

    ``sink`` is set while a reader waits on the stream with a frame to fill
    (:func:`~gossipfl.transport.libp2p.fastpath.read_yamux_into`): DATA bodies already
    decrypted into it pass the same checks as any data, but land there, not here."""

    __slots__ = ("_guard", "_sid", "sink")

    def __init__(self, guard: ConnectionGuard | None, sid: int) -> None:
        super().__init__()
        self._guard = guard
        self._sid = sid
        self.sink: Sink | None = None

    def extend(self, data: Any) -> None:
        guard = self._guard
        if guard is not None:
            sink = self.sink
            landing = None if sink is None else sink.landing
            if landing is not None and data is landing:
                assert sink is not None
                if guard.admit(self._sid, self, len(landing), direct=True):
                    sink.commit(landing)
                else:
                    sink.landing = None  # dropped: the region will be written again
                return
            if not isinstance(data, bytes | bytearray | memoryview):
                data = bytes(data)  # an iterable of ints: not what py-libp2p passes
            if not guard.admit(self._sid, self, memoryview(data).nbytes):
                return
        super().extend(data)

    def __iadd__(self, data: Any) -> Self:  # type: ignore[misc]
        self.extend(data)
        return self

    def __delitem__(self, key: SupportsIndex | slice) -> None:
        guard = self._guard
        before = len(self)
        super().__delitem__(key)
        if guard is not None:
            guard.released(before - len(self))

    def clear(self) -> None:
        guard = self._guard
        if guard is not None:
            guard.released(len(self))
        super().clear()

    def detach(self) -> None:
        self.sink = None
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.released(len(self))


class GuardedBuffers(dict[int, bytearray]):
    """``Yamux.stream_buffers``, storing :class:`GuardedBuffer` s and telling the guard
    about new streams and removed ones."""

    def __init__(self, guard: ConnectionGuard) -> None:
        super().__init__()
        self.guard = guard

    def __setitem__(self, sid: int, value: bytearray) -> None:
        guard = self.guard
        old = dict.get(self, sid)
        if isinstance(old, GuardedBuffer):
            old.detach()  # e.g. fastpath.read_yamux took the whole buffer
        buffer = GuardedBuffer(guard, sid)
        if value:  # py-libp2p only stores empty buffers; keep anything else, counted
            bytearray.extend(buffer, value)
            guard.grow(len(value))
        super().__setitem__(sid, buffer)
        if old is None:
            guard.opened(sid)

    def __delitem__(self, sid: int) -> None:
        buffer = dict.pop(self, sid)
        self._forget(sid, buffer)

    def pop(self, sid: int, *default: Any) -> Any:
        if dict.__contains__(self, sid):
            buffer = dict.pop(self, sid)
            self._forget(sid, buffer)
            return buffer
        if default:
            return default[0]
        raise KeyError(sid)

    def popitem(self) -> tuple[int, bytearray]:
        sid, buffer = dict.popitem(self)
        self._forget(sid, buffer)
        return sid, buffer

    def clear(self) -> None:
        for sid, buffer in list(self.items()):
            self._forget(sid, buffer)
        dict.clear(self)

    def setdefault(self, sid: int, default: bytearray | None = None) -> bytearray:
        if not dict.__contains__(self, sid):
            self[sid] = bytearray() if default is None else default
        return dict.__getitem__(self, sid)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for sid, value in dict(*args, **kwargs).items():
            self[sid] = value

    def _forget(self, sid: int, buffer: bytearray) -> None:
        if isinstance(buffer, GuardedBuffer):
            buffer.detach()
        self.guard.forget(sid)


class ConnectionGuard:
    """The receive limits of one Yamux connection. See the module docstring."""

    def __init__(
        self,
        muxed: _yamux.Yamux,
        limits: YamuxLimits,
        *,
        report: Report,
        spawn: Spawn,
        stats: TransportStats,
    ) -> None:
        self.muxed = muxed
        self.peer = str(muxed.peer_id)
        self.limits = limits
        self._report = report
        self._spawn = spawn
        self.stats = stats
        self.buffered = 0
        """Bytes in this connection's stream buffers (kept up to date as they change;
        recounted exactly before a frame is refused for going beyond the limit)."""
        self.peak = 0
        self.dropped = 0
        """Bytes received and thrown away: frames beyond a limit, and anything that came
        on a stream after it was condemned."""
        self.refused_streams = 0
        self.violations = 0
        self.reserved = 0
        """Bytes of frames being assembled in place on this connection (see :meth:`reserve`)."""
        self.read = 0
        """DATA bytes the connection read (once :meth:`watch_reads` is in place)."""
        self.offered = 0
        """DATA bytes offered to a stream buffer (admitted or dropped)."""
        self.ignored = 0
        """Bytes that came on streams already reset or closed (still known to py-libp2p)."""
        self._read_offset = 0  # offered bytes before watch_reads started
        self._ignored_strikes = 0
        self._doomed: set[int] = set()
        self._pending_resets = 0
        self._closing = False

    # ------------------------------------------------- called with streams_lock held

    def admit(self, sid: int, buffer: bytearray, size: int, *, direct: bool = False) -> bool:
        """May ``size`` more bytes go into stream ``sid``'s buffer? If not, the frame is
        dropped (and py-libp2p's window accounting compensated) and the stream reset.

        ``direct``: the bytes are already in a waiting reader's frame (a
        :class:`~gossipfl.transport.libp2p.fastpath.Sink`), not going into the buffer.
        Same checks, the buffer limit included; they are just not counted as buffered."""
        stream = self.muxed.streams.get(sid)
        self.offered += size
        if sid in self._doomed:
            self._drop(stream, size)
            self._ignore(size)
            return False
        if stream is None:  # py-libp2p checks first; count it anyway
            self.grow(size)
            return True
        if stream.reset_received or stream.closed or stream.recv_closed:
            # Data after the stream was reset (by either side) or after the peer's FIN:
            # py-libp2p would buffer it until its 60 s sweep. No one will read it. (The
            # data of the frame that carries a FIN is checked before the flag is.)
            self._drop(stream, size)
            self._ignore(size)
            if stream.reset_received and buffer:
                self._discard(buffer)
            return False
        window = stream.recv_window
        if size > window:
            self._violate(
                stream,
                buffer,
                size,
                "window",
                f"sent a {size}-byte Yamux DATA frame on stream {sid}, whose receive window "
                f"had {window} bytes left (it ignores flow control)",
            )
            return False
        limit = self.limits.max_buffered
        if self.buffered + size > limit:
            self.buffered = sum(len(b) for b in dict.values(self.muxed.stream_buffers))
            if self.buffered + size > limit:
                self._violate(
                    stream,
                    buffer,
                    size,
                    "buffered",
                    f"made us buffer {self.buffered + size} bytes on one connection "
                    f"(the limit is {limit}); dropped a {size}-byte frame on stream {sid}",
                )
                return False
        if not direct:
            self.grow(size)
        return True

    def reserve(self, size: int) -> bool:
        """May a reader hold ``size`` bytes for a frame whose bytes have not all come yet?
        Frames assembled in place (:class:`~gossipfl.transport.libp2p.fastpath.YamuxInPlace`)
        are allocated whole when their length prefix arrives; this bounds what a peer can
        make us allocate by announcing large frames it never sends to ``max_buffered`` per
        connection. A frame refused is read in pieces instead (memory grows only as its
        bytes come)."""
        if self.reserved + size > self.limits.max_buffered:
            return False
        self.reserved += size
        return True

    def unreserve(self, size: int) -> None:
        self.reserved = max(0, self.reserved - size)

    def opened(self, sid: int) -> None:
        """A stream has been created; refuse it if the peer already has too many."""
        streams = self.muxed.streams
        stream = streams.get(sid)
        if stream is None or stream.is_initiator:
            return  # ours: opened by us, limited by us
        cap = self.limits.max_inbound_streams
        doomed = self._doomed
        inbound = sum(
            1
            for s in streams.values()
            if not s.is_initiator and not s.closed and s.stream_id not in doomed
        )
        if inbound <= cap:
            return
        doomed.add(sid)
        self.refused_streams += 1
        self.stats.refused_streams += 1
        self.violations += 1
        self._report(
            self.peer,
            "streams",
            f"opened more than {cap} streams at once on one connection; stream {sid} reset",
        )
        self._schedule_reset(stream)

    def watch_reads(self) -> bool:
        """Count the DATA bytes the connection reads from now on (see the module doc), by
        wrapping its ``_read_data_body`` (after ``fastpath`` replaced it, if it did).
        Idempotent; False if the connection has no such method."""
        read_body = getattr(self.muxed, "_read_data_body", None)
        if read_body is None:
            return False
        if getattr(read_body, "_gossipfl_counted", False):
            return True
        self._read_offset = self.offered

        async def counted(length: int) -> Any:
            self._check_unknown()
            data = await read_body(length)
            self.read += length
            return data

        counted._gossipfl_counted = True  # type: ignore[attr-defined]
        self.muxed._read_data_body = counted  # type: ignore[method-assign]
        return True

    def _check_unknown(self) -> None:
        """Before the next DATA body: what the previous ones offered to no buffer went to
        streams py-libp2p no longer knows."""
        unknown = self.read - (self.offered - self._read_offset)
        if unknown > 0:
            self._read_offset -= unknown  # counted once
            self._ignore(unknown)

    def _ignore(self, size: int) -> None:
        self.ignored += size
        if self.ignored > IGNORED_GRACE * (self._ignored_strikes + 1):
            self._ignored_strikes += 1
            self.violations += 1
            self._report(
                self.peer,
                "window",
                f"kept sending on streams that were reset or closed ({self.ignored} bytes "
                "so far): it ignores the stream's end",
            )

    def released(self, size: int) -> None:
        self.buffered = max(0, self.buffered - size)

    def forget(self, sid: int) -> None:
        self._doomed.discard(sid)

    # ------------------------------------------------------------------ internals

    def grow(self, size: int) -> None:
        self.buffered += size
        if self.buffered > self.peak:
            self.peak = peak = self.buffered
            stats = self.stats
            if peak > stats.peak_connection_buffer:
                stats.peak_connection_buffer = peak
            if peak > stats.peak_buffer_by_peer.get(self.peer, 0):
                if len(stats.peak_buffer_by_peer) >= _MAX_PEERS_IN_STATS:
                    stats.peak_buffer_by_peer.pop(next(iter(stats.peak_buffer_by_peer)))
                stats.peak_buffer_by_peer[self.peer] = peak

    def _drop(self, stream: Any, size: int) -> None:
        if stream is not None:
            stream.recv_window += size  # py-libp2p subtracts it right after extend()
        self.dropped += size
        self.stats.dropped_bytes += size

    def _discard(self, buffer: bytearray) -> None:
        self.dropped += len(buffer)
        self.stats.dropped_bytes += len(buffer)
        buffer.clear()

    def _violate(self, stream: Any, buffer: bytearray, size: int, kind: str, detail: str) -> None:
        self._doomed.add(stream.stream_id)
        self._drop(stream, size)
        if buffer:
            self._discard(buffer)  # the stream is being reset: free its memory now
        self.violations += 1
        self._report(self.peer, kind, detail)
        self._schedule_reset(stream)

    def _schedule_reset(self, stream: Any) -> None:
        if self._closing:
            return
        if self._pending_resets >= MAX_PENDING_RESETS:
            self._close(f"more than {MAX_PENDING_RESETS} of its streams are waiting to be reset")
            return
        self._pending_resets += 1
        if not self._spawn(functools.partial(self._reset, stream), "reset a Yamux stream"):
            self._pending_resets -= 1

    async def _reset(self, stream: Any) -> None:
        try:
            with trio.move_on_after(RESET_TIMEOUT):
                await stream.reset()
        except Exception:
            logger.debug("resetting a stream of peer %s failed", self.peer, exc_info=True)
        finally:
            self._pending_resets -= 1

    def _close(self, why: str) -> None:
        self._closing = True
        logger.warning("closing the connection with peer %s: %s", self.peer, why)
        self._spawn(self._close_connection, "close a Yamux connection")

    async def _close_connection(self) -> None:
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self.muxed.close()
        except Exception:
            logger.debug("closing the connection with %s failed", self.peer, exc_info=True)


def guard_of(muxed_conn: object) -> ConnectionGuard | None:
    """The guard installed on ``muxed_conn``, if any."""
    guard = getattr(muxed_conn, "_gossipfl_guard", None)
    return guard if isinstance(guard, ConnectionGuard) else None


def has_guardable_shape(muxed_conn: object) -> bool:
    """Whether ``muxed_conn`` is a py-libp2p Yamux connection with the internals the
    guard relies on."""
    if not isinstance(muxed_conn, _yamux.Yamux):
        return False
    if not all(hasattr(muxed_conn, name) for name in _YAMUX_FIELDS):
        return False
    if type(muxed_conn.stream_buffers) not in (dict, GuardedBuffers):
        return False
    probe = _yamux.YamuxStream.__init__
    names = probe.__code__.co_names + probe.__code__.co_varnames
    return all(name in names or hasattr(_yamux.YamuxStream, name) for name in _STREAM_FIELDS)


def install_yamux_guards(
    muxed_conn: object,
    limits: YamuxLimits,
    *,
    report: Report,
    spawn: Spawn,
    stats: TransportStats,
) -> ConnectionGuard | None:
    """Put ``muxed_conn`` under a :class:`ConnectionGuard` (idempotent) and return it;
    ``None`` if it does not have the expected shape (then it has no receive limits).

    Installed before the connection starts (see :func:`hook_upgrader`), every stream is
    guarded. Installed later, the streams that already exist keep unguarded buffers
    (readers may hold references to them); the limits apply to every stream opened after.
    """
    existing = guard_of(muxed_conn)
    if existing is not None:
        return existing
    if not has_guardable_shape(muxed_conn):
        return None
    assert isinstance(muxed_conn, _yamux.Yamux)
    guard = ConnectionGuard(muxed_conn, limits, report=report, spawn=spawn, stats=stats)
    buffers = GuardedBuffers(guard)
    current: Mapping[int, bytearray] = muxed_conn.stream_buffers
    dict.update(buffers, current)  # as they are: see the docstring
    guard.buffered = sum(len(b) for b in current.values())
    muxed_conn.stream_buffers = buffers
    muxed_conn._gossipfl_guard = guard  # type: ignore[attr-defined]
    return guard


def hook_upgrader(swarm: Any, on_muxed: Callable[[object], object]) -> bool:
    """Call ``on_muxed(muxed_conn)`` on every new connection of ``swarm`` (inbound and
    outbound) right after its muxer is negotiated, before the muxer starts reading: the
    earliest moment we can install the guard, so that no frame escapes it.

    The hook wraps the swarm's own ``TransportUpgrader.upgrade_connection`` (an instance
    attribute of this swarm only). Returns ``False`` if the swarm has no such upgrader:
    the caller then installs guards when py-libp2p reports the connection, a little later.
    """
    upgrader: Any = getattr(swarm, "upgrader", None)
    original = getattr(upgrader, "upgrade_connection", None)
    if not callable(original):
        return False
    if getattr(original, "_gossipfl_hook", False):
        return True

    async def upgrade_connection(conn: Any, peer_id: Any) -> Any:
        muxed = await original(conn, peer_id)
        on_muxed(muxed)
        return muxed

    upgrade_connection._gossipfl_hook = True  # type: ignore[attr-defined]
    upgrader.upgrade_connection = upgrade_connection
    return True


__all__ = [
    "ConnectionGuard",
    "GuardedBuffer",
    "GuardedBuffers",
    "YamuxLimits",
    "guard_of",
    "has_guardable_shape",
    "hook_upgrader",
    "install_yamux_guards",
]
