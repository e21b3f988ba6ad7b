"""Length-prefixed frames on a byte stream, read with an exact-read loop.

A frame is a 4-byte big-endian length ``L`` followed by ``L`` bytes, ``1 <= L <=
max_frame``: the format of :mod:`gossipfl.wire.framing`, so a frame on a gossip stream is
exactly one wire frame. We read it ourselves instead of with py-libp2p's varint helper
(``read_varint_prefixed_bytes``), which gives up on large messages: it retries a short
read a fixed number of times, and a 10 MiB frame arrives in more pieces than that.

Why framing matters beyond splitting messages:

- **EOF is ambiguous without it.** A sender that is SIGKILLed mid-message closes its TCP
  connection just as a sender that finished does. With a length prefix, a stream ending
  inside a frame is a :class:`TruncatedFrame`, never a short message.
- **Sizes are checked before allocation.** A prefix above ``max_frame`` raises
  :class:`FrameTooLarge` as soon as its four bytes are read; nothing is allocated for it.
- **A frozen sender is detected.** Once a frame has started, every read must make
  progress within ``read_timeout`` (:class:`FrameTimeout`). Between frames a stream may
  idle as long as it likes.

A body is collected as the pieces the muxer hands us and joined once at the end: one
copy, and memory grows only as fast as bytes actually arrive (a liar announcing 16 MiB
and sending nothing costs nothing). A large body on a stream that can read in place
(:class:`InPlace`) is instead allocated whole and filled where it lies: the libp2p fast
path decrypts the bytes straight into it. Such allocations are reserved first, and a
peer's reservations are bounded (``InPlace.reserve``); a frame refused a reservation is
read in pieces.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from gossipfl.transport.base import TransportError

PREFIX = struct.Struct(">I")
PREFIX_SIZE = PREFIX.size

ReadSome = Callable[[int], Awaitable[bytes]]
"""Reads at most ``n`` bytes, at least one; returns ``b""`` or raises
:class:`EOFError` at the end of the stream. May return a ``bytearray``."""

IN_PLACE_MIN = 1 << 18
"""Frames from this size on are assembled in place when the stream can (:class:`InPlace`)."""


def _resize_function() -> Callable[[bytearray, int], int] | None:
    """CPython's ``PyByteArray_Resize``, or ``None`` on an interpreter without it."""
    try:
        resize = ctypes.pythonapi.PyByteArray_Resize
    except (AttributeError, ValueError):
        return None
    resize.argtypes = (ctypes.py_object, ctypes.c_ssize_t)
    resize.restype = ctypes.c_int
    return resize


_resize = _resize_function()


def unfilled_bytearray(size: int) -> bytearray:
    """A ``bytearray`` of ``size`` bytes whose contents are whatever its memory held.

    ``bytearray(size)`` zero-fills: for a frame that is about to be overwritten whole by
    received bytes, that is one more pass over its memory (about 12 ms per 100 MiB, an
    eighth of a receiver's CPU in a bulk transfer). Growing an empty ``bytearray`` with
    ``PyByteArray_Resize`` skips the fill. **The caller must write every byte before
    anyone else sees the buffer** (the memory may hold anything this process freed:
    other peers' frames, say): a frame is handed out only once all of it has been
    received, and dropped otherwise. Falls back to ``bytearray(size)`` where the C
    function is not available (ctypes-less or non-CPython interpreters)."""
    if _resize is None or size <= 0:
        return bytearray(size)
    buffer = bytearray()
    _resize(buffer, size)  # ctypes raises the MemoryError the C function sets
    return buffer


class InPlace(Protocol):
    """A stream that can read into a caller's buffer, for frames assembled in place."""

    def reserve(self, size: int) -> bool:
        """May we allocate a ``size``-byte frame before its bytes have come?"""
        ...

    def release(self, size: int) -> None:
        """The frame that reserved ``size`` is complete or abandoned."""
        ...

    async def read_into(self, view: memoryview) -> int:
        """Read at least one byte, at most ``len(view)``, into ``view``; 0 or
        :class:`EOFError` at the end of the stream."""
        ...


class FrameError(TransportError):
    """A peer sent bytes that do not form valid frames; its stream is out of step."""


class FrameTooLarge(FrameError):
    """A length prefix above the limit (or zero)."""


class TruncatedFrame(FrameError):
    """The stream ended (or was reset) inside a frame."""


class FrameTimeout(FrameError):
    """A frame started but its bytes stopped coming."""


def encode_prefix(size: int, max_frame: int) -> bytes:
    """The length prefix of a ``size``-byte frame (checked against ``max_frame``)."""
    if not 1 <= size <= max_frame:
        raise ValueError(f"a frame holds 1 to {max_frame} bytes, not {size}")
    return PREFIX.pack(size)


class FrameReader:
    """Reads frames from one stream. Not safe for concurrent use: one reader per stream.

    ``read`` is the stream's read-some function; it may raise :class:`EOFError` (or return
    ``b""``) at the end of the stream. Any other exception propagates. Reads ask for at
    least ``min_read`` bytes, so that a burst of small frames (or a prefix and its body)
    comes in one call; the surplus is kept for the next frame.

    With ``in_place``, bodies of at least ``in_place_min`` bytes are read into one
    ``bytearray`` allocated when the prefix arrives (when ``in_place.reserve`` allows it),
    and returned as that ``bytearray``; other frames are returned as ``bytes``.
    """

    def __init__(
        self,
        read: ReadSome,
        *,
        max_frame: int,
        read_timeout: float,
        min_read: int = 1 << 16,
        in_place: InPlace | None = None,
        in_place_min: int = IN_PLACE_MIN,
    ) -> None:
        self._read = read
        self.max_frame = max_frame
        self.read_timeout = read_timeout
        self.min_read = min_read
        self.in_place = in_place
        self.in_place_min = in_place_min
        self.frames = 0
        self.bytes = 0
        self._buf = b""
        self._off = 0

    @property
    def pending(self) -> int:
        """Bytes read from the stream beyond the last frame returned."""
        return len(self._buf) - self._off

    async def _read_some(self, n: int, *, started: bool, what: str) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end of the stream."""
        if self._off < len(self._buf):
            start = self._off
            self._off = min(start + n, len(self._buf))
            return self._buf[start : self._off]
        try:
            if started:
                with trio.fail_after(self.read_timeout):
                    data = await self._read(max(n, self.min_read))
            else:
                data = await self._read(max(n, self.min_read))
        except trio.TooSlowError:
            raise FrameTimeout(
                f"no data for {self.read_timeout:g} s in the middle of {what}"
            ) from None
        except EOFError:
            data = b""
        if len(data) > n:
            self._buf, self._off = data, n
            return data[:n]
        return data

    async def next_frame(self) -> bytes | bytearray | None:
        """The next frame's body, or ``None`` if the stream ended cleanly between frames.

        Raises :class:`FrameError` subclasses for anything else.
        """
        head = b""
        while len(head) < PREFIX_SIZE:
            chunk = await self._read_some(
                PREFIX_SIZE - len(head), started=bool(head), what="a length prefix"
            )
            if not chunk:
                if not head:
                    return None
                raise TruncatedFrame(
                    f"stream ended inside a length prefix ({len(head)} of 4 bytes)"
                )
            head += chunk
        (size,) = PREFIX.unpack(head)
        if size > self.max_frame:
            raise FrameTooLarge(f"frame of {size} bytes announced; the limit is {self.max_frame}")
        if size == 0:
            raise FrameTooLarge("frame of 0 bytes announced; frames hold at least one byte")
        in_place = self.in_place
        if (
            in_place is not None
            and size >= self.in_place_min
            and size - self.pending >= self.in_place_min
            and in_place.reserve(size)
        ):
            try:
                body = await self._read_in_place(in_place, size)
            finally:
                in_place.release(size)
            self.frames += 1
            self.bytes += size
            return body
        parts: list[bytes] = []
        have = 0
        while have < size:
            chunk = await self._read_some(size - have, started=True, what=f"a {size}-byte frame")
            if not chunk:
                raise TruncatedFrame(
                    f"stream ended inside a frame: {have} of {size} bytes received"
                )
            parts.append(chunk)
            have += len(chunk)
        self.frames += 1
        self.bytes += size
        first = parts[0]
        return first if len(parts) == 1 and type(first) is bytes else b"".join(parts)

    async def next_bytes(self) -> bytes | None:
        """:meth:`next_frame` as ``bytes`` (a copy only for a frame assembled in place)."""
        frame = await self.next_frame()
        return frame if frame is None or type(frame) is bytes else bytes(frame)

    async def _read_in_place(self, in_place: InPlace, size: int) -> bytearray:
        """A ``size``-byte body read into one buffer (see :class:`InPlace`). The buffer is
        not zero-filled: it is returned only once all ``size`` bytes have been read into
        it (a truncated, timed-out or reset frame raises, and the buffer is dropped)."""
        body = unfilled_bytearray(size)
        view = memoryview(body)
        have = 0
        if self._off < len(self._buf):  # the start of the body came with the prefix
            have = min(size, len(self._buf) - self._off)
            view[:have] = memoryview(self._buf)[self._off : self._off + have]
            self._off += have
        while have < size:
            try:
                with trio.fail_after(self.read_timeout):
                    got = await in_place.read_into(view[have:])
            except trio.TooSlowError:
                raise FrameTimeout(
                    f"no data for {self.read_timeout:g} s in the middle of a {size}-byte frame"
                ) from None
            except EOFError:
                got = 0
            if not got:
                raise TruncatedFrame(
                    f"stream ended inside a frame: {have} of {size} bytes received"
                )
            have += got
        return body
