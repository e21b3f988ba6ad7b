"""Large models in chunks: an ``update-head`` message, then ``chunk`` messages.

Sending: :func:`iter_frames` yields ready-to-write frames for any message; an Update that
does not fit in one frame becomes a head (every Update field and the payload's array
specs, no payload) followed by chunks of at most ``chunk_size`` payload bytes each.

Receiving: :class:`StreamDecoder` turns the bytes of one stream into messages. When a
head arrives, the payload size it declares is checked against ``Limits.max_payload``
and then ONE buffer of exactly that size is allocated; chunks are copied into it in
order and hashed as they arrive (for fp32, checked for NaN and infinity in the same
pass), so neither costs a second pass. Memory per stream is therefore bounded by::

    max_frame (one frame being read) + max_payload (the assembly buffer)
    + 4 * max_params (the decoded float32 vector; nothing extra for fp32, which is a
      view of the assembly buffer)

Between a head and its last chunk, nothing else may arrive on that stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from gossipfl.wire._types import BytesLike
from gossipfl.wire.codecs import DEFAULT_CODECS, CodecRegistry
from gossipfl.wire.decoding import assemble_update, decode, fused_check
from gossipfl.wire.envelope import DEFAULT_LIMITS, encode_parts, update_fields, update_header
from gossipfl.wire.errors import (
    DigestMismatchError,
    SequenceError,
    TooLargeError,
    TruncatedError,
    WireError,
)
from gossipfl.wire.framing import FrameReader, frame_parts
from gossipfl.wire.limits import DEFAULT_MAX_FRAME, Limits, MiB
from gossipfl.wire.memo import DecodeMemo
from gossipfl.wire.messages import Chunk, Message, Update, UpdateHead

DEFAULT_CHUNK = 4 * MiB
#: Room left in a frame for a chunk's own header.
_CHUNK_OVERHEAD = 64


def iter_message_parts(
    message: Message,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    chunk_size: int | None = None,
    codecs: CodecRegistry = DEFAULT_CODECS,
) -> Iterator[list[bytes | memoryview]]:
    """The encoded messages that carry ``message`` to a peer whose ``max_frame`` is
    given, each as a list of buffers (no length prefix): one message, or for an Update
    too large for one frame, an ``update-head`` and ``chunk`` messages of at most
    ``chunk_size`` payload bytes (default 4 MiB, or less to fit ``max_frame``). Headers
    are small ``bytes``; payloads are views of the vector's own memory (a chunk that
    straddles two payload arrays is the one place a copy happens)."""
    if not isinstance(message, Update):
        yield encode_parts(message, codecs=codecs)
        return
    fields, buffers = update_fields(message, codecs)
    yield from _update_parts(fields, buffers, max_frame, chunk_size)


def _update_parts(
    fields: dict[str, Any], buffers: list[memoryview], max_frame: int, chunk_size: int | None
) -> Iterator[list[bytes | memoryview]]:
    """:func:`iter_message_parts` of an Update, from its :func:`update_fields`."""
    header = update_header(fields)
    if len(header) + sum(buffer.nbytes for buffer in buffers) <= max_frame:
        yield [header, *buffers]
        return
    step = min(chunk_size or DEFAULT_CHUNK, max_frame - _CHUNK_OVERHEAD)
    if step < 1:
        raise TooLargeError(f"max_frame {max_frame} leaves no room for chunk data")
    yield encode_parts(UpdateHead(**fields))
    for seq, piece in enumerate(_pieces(buffers, step)):
        yield encode_parts(Chunk(seq=seq, data=piece))


def iter_encoded(
    message: Message,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    chunk_size: int | None = None,
    codecs: CodecRegistry = DEFAULT_CODECS,
) -> Iterator[bytes]:
    """Like :func:`iter_message_parts`, each message joined into ``bytes``: for a
    transport that frames messages itself (``transport.send(peer, data)``)."""
    for parts in iter_message_parts(
        message, max_frame=max_frame, chunk_size=chunk_size, codecs=codecs
    ):
        yield b"".join(parts)


def encode_update(
    update: Update,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    chunk_size: int | None = None,
    codecs: CodecRegistry = DEFAULT_CODECS,
) -> tuple[tuple[bytes, ...], bytes]:
    """The messages of :func:`iter_encoded` for ``update``, and its payload digest.

    For a sender that keeps the digest of a model version (to encode it again later,
    for another round or another peer, without hashing it again): an Update without a
    digest is hashed, and checked for NaN and infinity, in this one encoding, where
    :func:`~gossipfl.wire.with_digest` and then encoding took two passes over the
    codec and a re-validated copy of the Update.
    """
    fields, buffers = update_fields(update, codecs)
    messages = tuple(
        b"".join(parts) for parts in _update_parts(fields, buffers, max_frame, chunk_size)
    )
    digest: bytes = fields["digest"]
    return messages, digest


def iter_frame_parts(
    message: Message,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    chunk_size: int | None = None,
    codecs: CodecRegistry = DEFAULT_CODECS,
) -> Iterator[list[bytes | memoryview]]:
    """Like :func:`iter_message_parts`, each message preceded by its frame's length
    prefix: ready for vectored writes on a raw byte stream."""
    for parts in iter_message_parts(
        message, max_frame=max_frame, chunk_size=chunk_size, codecs=codecs
    ):
        yield frame_parts(parts)


def iter_frames(
    message: Message,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    chunk_size: int | None = None,
    codecs: CodecRegistry = DEFAULT_CODECS,
) -> Iterator[bytes]:
    """Frames (length prefix included) that carry ``message`` to a peer whose
    ``max_frame`` is given: one frame, or for a large Update a head and chunks. Each
    yielded frame is at most ``max_frame + 4`` bytes, so memory stays bounded by one
    chunk."""
    for parts in iter_frame_parts(
        message, max_frame=max_frame, chunk_size=chunk_size, codecs=codecs
    ):
        yield b"".join(parts)


def _pieces(buffers: list[memoryview], step: int) -> Iterator[memoryview]:
    """Cut the concatenation of ``buffers`` into pieces of ``step`` bytes (the last may
    be shorter); a piece that spans two buffers is joined (a copy of at most ``step``)."""
    pending: list[memoryview] = []
    have = 0
    for buffer in buffers:
        view = buffer
        while view.nbytes:
            take = min(step - have, view.nbytes)
            pending.append(view[:take])
            have += take
            view = view[take:]
            if have == step:
                yield pending[0] if len(pending) == 1 else memoryview(b"".join(pending))
                pending, have = [], 0
    if have:
        yield pending[0] if len(pending) == 1 else memoryview(b"".join(pending))


class UpdateAssembler:
    """Collects the chunks of one chunked Update into one preallocated buffer."""

    __slots__ = ("_buffer", "_check", "_codecs", "_filled", "_next", "_verify", "head")

    def __init__(
        self,
        head: UpdateHead,
        *,
        codecs: CodecRegistry = DEFAULT_CODECS,
        verify_digest: bool = True,
    ) -> None:
        self.head = head
        # Size already checked against Limits.max_payload by decode(). numpy's allocator
        # skips the zero-fill a bytearray would do and uses huge pages for big buffers.
        self._buffer = np.empty(head.payload_size, dtype=np.uint8)
        self._filled = 0
        self._next = 0
        self._codecs = codecs
        self._verify = verify_digest
        # Each chunk is hashed (and, for fp32, checked for NaN and infinity) right after
        # it is copied in, while it is in cache: the payload is read from memory once.
        self._check = fused_check(codecs.get(head.codec), head.n, head.arrays, verify_digest)

    @property
    def complete(self) -> bool:
        return self._filled == self._buffer.size

    def add(self, chunk: Chunk) -> Update | None:
        """Take the next chunk; return the Update once the last one has arrived."""
        if chunk.seq != self._next:
            raise SequenceError(f"chunk {chunk.seq} arrived where chunk {self._next} was due")
        size = chunk.data.nbytes
        if self._filled + size > self._buffer.size:
            raise SequenceError(
                f"chunk {chunk.seq} overruns the declared payload of {self._buffer.size} bytes"
            )
        piece = self._buffer[self._filled : self._filled + size]
        piece[:] = np.frombuffer(chunk.data, np.uint8)
        self._check.update(piece.data)
        self._filled += size
        self._next += 1
        return self.result() if self.complete else None

    def result(self) -> Update:
        """The assembled Update (all chunks must have arrived)."""
        if not self.complete:
            raise TruncatedError(
                f"chunked update incomplete: {self._filled} of {self._buffer.size} bytes"
            )
        head = self.head
        if self._verify and self._check.digest() != head.digest:
            raise DigestMismatchError("the chunked payload's digest does not match its head")
        fields = {
            "sender": head.sender,
            "round": head.round,
            "codec": head.codec,
            "n": head.n,
            "params": head.params,
            "arrays": head.arrays,
            "digest": head.digest,
            "reply": head.reply,
            "meta": head.meta,
        }
        return assemble_update(
            fields, self._buffer.data, self._codecs, verify=False, checked=self._check
        )


class StreamDecoder:
    """Sans-I/O decoder for one stream: bytes in, complete messages out.

    Combines a :class:`FrameReader`, :func:`decode` and an :class:`UpdateAssembler`, so
    a caller never sees heads or chunks: chunked Updates come out whole. Any error
    leaves the stream unusable (later calls raise it again, and messages decoded
    earlier in the same ``feed`` call are dropped with it): refuse and close the stream.
    """

    __slots__ = (
        "_assembler",
        "_codecs",
        "_error",
        "_limits",
        "_memo",
        "_memo_key",
        "_reader",
        "_verify",
    )

    def __init__(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        codecs: CodecRegistry = DEFAULT_CODECS,
        verify_digest: bool = True,
        memo: DecodeMemo | None = None,
    ) -> None:
        """``memo``: a :class:`DecodeMemo` shared with the other receivers of an
        in-process network, through which :meth:`feed_message` decodes a ``bytes``
        object that several of them receive once (see :mod:`gossipfl.wire.memo`)."""
        self._limits = limits
        self._codecs = codecs
        self._verify = verify_digest
        self._reader = FrameReader(limits.max_frame)
        self._assembler: UpdateAssembler | None = None
        self._error: WireError | None = None
        self._memo = memo
        self._memo_key = None if memo is None else memo.key(limits, codecs, verify_digest)

    @property
    def busy(self) -> bool:
        """Whether a frame or a chunked Update is partly received."""
        return self._reader.pending > 0 or self._assembler is not None

    def feed(self, data: BytesLike) -> list[Message]:
        """Consume raw stream bytes (length-prefixed frames); return complete messages."""
        if self._error is not None:
            raise self._error
        try:
            return [m for body in self._reader.feed(data) if (m := self._take(body)) is not None]
        except WireError as exc:
            self._error = exc
            raise

    def feed_message(self, body: BytesLike) -> Message | None:
        """Consume one message already cut out of the stream by a transport that does its
        own framing; return it, or ``None`` while a chunked Update is incomplete (the
        Update is returned with its last chunk). Do not mix with :meth:`feed`."""
        if self._error is not None:
            raise self._error
        try:
            memo = self._memo
            if memo is not None and type(body) is bytes and self._assembler is None:
                return self._take_shared(memo, body)
            return self._take(body)
        except WireError as exc:
            self._error = exc
            raise

    def _take_shared(self, memo: DecodeMemo, body: bytes) -> Message | None:
        """:meth:`_take` of a whole message, between chunked updates, through the memo:
        an Update another receiver decoded from this very object with the same settings
        is that receiver's result (decoding is a pure function of both); anything else
        is decoded here, and a complete Update remembered."""
        key = self._memo_key
        assert key is not None
        known = memo.get(body, key)
        if known is not None:
            return known
        message = self._take(body)
        if type(message) is Update and self._assembler is None:
            memo.put(body, key, message)
        return message

    def _take(self, body: BytesLike) -> Message | None:
        message = decode(body, limits=self._limits, codecs=self._codecs, verify_digest=self._verify)
        assembler = self._assembler
        if assembler is not None:
            if not isinstance(message, Chunk):
                raise SequenceError(
                    f"a {type(message).__name__} arrived in the middle of a chunked update"
                )
            update = assembler.add(message)
            if update is not None:
                self._assembler = None
            return update
        if isinstance(message, Chunk):
            raise SequenceError("a chunk arrived without an update-head")
        if isinstance(message, UpdateHead):
            assembler = UpdateAssembler(message, codecs=self._codecs, verify_digest=self._verify)
            if assembler.complete:
                return assembler.result()
            self._assembler = assembler
            return None
        return message

    def eof(self) -> None:
        """The stream ended: raise :class:`TruncatedError` if it ended mid-frame or in
        the middle of a chunked update."""
        if self._error is not None:
            raise self._error
        self._reader.eof()
        if self._assembler is not None:
            raise TruncatedError("stream ended in the middle of a chunked update")
