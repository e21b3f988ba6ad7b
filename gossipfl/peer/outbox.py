"""Sending: per-neighbour, ordered, bounded delivery of whole messages.

Every message to a neighbour leaves in the order it was queued, and the first message of
every connection is our handshake (``Hello``): a peer drops anything from us until it has
checked that. A message's frames (one, or an update's head and chunks) are queued as one
unit, so a full queue drops a whole message, never part of one; a slow link costs that
neighbour freshness, not our memory.

A neighbour with queued messages has one sender task, which exits as soon as its queue is
empty; thousands of possible peers (Epidemic Learning) therefore cost tasks only while
there is something to send. Transports whose send cannot block (the in-memory network)
offer ``send_nowait``, which is used directly: a large simulation then spawns no sender
tasks at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from gossipfl.peer.reports import PeerCounters
from gossipfl.protocol import PeerId
from gossipfl.transport import Transport, TransportError

logger = logging.getLogger(__name__)

Frames = tuple[bytes, ...]
"""One wire message as the frames that carry it (one, or a head and its chunks)."""


class Outboxes:
    """The sending side of a peer.

    Args:
        transport: where frames go.
        hello: our encoded handshake, sent first on every connection.
        size: messages queued per neighbour before new ones are dropped (and counted).
        counters: the peer's counters (frames and bytes sent, drops, failures).
        on_failure: called when sending to a peer failed (it is unreachable).
        on_idle: called whenever a neighbour's queue has drained.
        name: the peer's name, for logs.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        hello: bytes,
        size: int,
        counters: PeerCounters,
        on_failure: Callable[[PeerId], None],
        on_idle: Callable[[], None],
        name: str,
    ) -> None:
        self._transport = transport
        self._hello = hello
        self._size = size
        self._counters = counters
        self._on_failure = on_failure
        self._on_idle = on_idle
        self._name = name
        self._boxes: dict[PeerId, trio.MemorySendChannel[Frames]] = {}
        self._greeted: set[PeerId] = set()
        self._nursery: trio.Nursery | None = None
        self._send_nowait: Callable[[PeerId, bytes], None] | None = getattr(
            transport, "send_nowait", None
        )

    def attach(self, nursery: trio.Nursery) -> None:
        """Sender tasks run in ``nursery`` (the peer's)."""
        self._nursery = nursery

    @property
    def busy(self) -> bool:
        """Some message is still queued or being written."""
        return bool(self._boxes)

    def forget(self, peer: PeerId) -> None:
        """The connection to ``peer`` ended: its next message starts with our handshake."""
        self._greeted.discard(peer)

    def send(self, peer: PeerId, frames: Frames | None) -> None:
        """Queue one message for ``peer`` (``None``: only make sure our handshake goes out)."""
        box = self._boxes.get(peer)
        if box is None and self._send_nowait is not None:
            self._send_directly(peer, frames)
            return
        if box is None:
            assert self._nursery is not None, "attach() the outboxes to a nursery first"
            box, queue = trio.open_memory_channel[Frames](self._size)
            self._boxes[peer] = box
            self._nursery.start_soon(self._sender, peer, box, queue)
        if frames is not None:
            try:
                box.send_nowait(frames)
            except trio.WouldBlock:
                self._counters.outbox_drops += 1

    def _send_directly(self, peer: PeerId, frames: Frames | None) -> None:
        assert self._send_nowait is not None
        try:
            if peer not in self._greeted:
                self._send_nowait(peer, self._hello)
                self._count(self._hello)
                self._greeted.add(peer)
            counters = self._counters
            for frame in frames or ():
                self._send_nowait(peer, frame)
                counters.frames_sent += 1  # _count, inlined: once per frame
                counters.bytes_sent += len(frame)
        except TransportError as exc:
            self._failed(peer, exc)

    async def _sender(
        self,
        peer: PeerId,
        box: trio.MemorySendChannel[Frames],
        queue: trio.MemoryReceiveChannel[Frames],
    ) -> None:
        try:
            while True:
                if peer not in self._greeted:
                    await self._write(peer, self._hello)
                    self._greeted.add(peer)
                try:
                    frames = queue.receive_nowait()
                except trio.WouldBlock:
                    return
                for frame in frames:
                    await self._write(peer, frame)
        except TransportError as exc:
            self._failed(peer, exc)
        finally:
            if self._boxes.get(peer) is box:
                del self._boxes[peer]
                self._on_idle()

    async def _write(self, peer: PeerId, frame: bytes) -> None:
        await self._transport.send(peer, frame)
        self._count(frame)

    def _count(self, frame: bytes) -> None:
        self._counters.frames_sent += 1
        self._counters.bytes_sent += len(frame)

    def _failed(self, peer: PeerId, exc: TransportError) -> None:
        self._counters.send_failures += 1
        logger.debug("%s: sending to %s failed: %s", self._name, peer, exc)
        self._greeted.discard(peer)
        self._on_failure(peer)
