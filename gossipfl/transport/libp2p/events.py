"""The queue behind ``Libp2pTransport.events()``: ordered, with byte budgets for frames.

Connection events come from py-libp2p's network notifee, which must never block (the
swarm awaits notifees while registering a connection), so the queue itself is unbounded.
Frames are bounded instead by bytes: a reader holding a complete frame waits for budget
before queueing it, and while it waits it does not read, so Yamux flow control pushes
back on that one sender. The budget is returned when the consumer asks for the *next*
event, i.e. once it is done with the previous one.

There are two budgets. Each peer has its own (``max_buffered_per_peer``), so that one
peer cannot fill the queue and starve the others; and all peers share one
(``max_buffered``), which bounds the total. A peer with nothing waiting may always queue
one frame, whatever the others hold: a flood from one neighbour delays the others' frames
by at most its own share, never indefinitely.
"""

from __future__ import annotations

import math

import trio

from gossipfl.transport.base import Received, TransportEvent


class ByteBudget:
    """At most ``limit`` bytes held; one holder may exceed it when it is alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.waiting = 0
        self._changed = trio.Event()

    async def acquire(self, n: int, *, force: bool = False) -> None:
        """Take ``n`` bytes, waiting for room unless ``force``."""
        while not force and self.used and self.used + n > self.limit:
            self.waiting += 1
            try:
                await self._changed.wait()
            finally:
                self.waiting -= 1
        self.used += n

    def release(self, n: int) -> None:
        self.used -= n
        self._changed.set()
        self._changed = trio.Event()


class EventQueue:
    """One producer side (many tasks) and one consumer (``async for`` over it)."""

    def __init__(self, max_buffered: int, max_buffered_per_peer: int | None = None) -> None:
        self._send, self._receive = trio.open_memory_channel[TransportEvent](math.inf)
        self.budget = ByteBudget(max_buffered)
        self.per_peer_limit = max_buffered_per_peer or max_buffered
        self._peers: dict[str, ByteBudget] = {}
        self._held: tuple[str, int] | None = None
        self.closed = False

    def held_by(self, peer: str) -> int:
        """Bytes of ``peer``'s frames waiting in the queue (or being consumed)."""
        budget = self._peers.get(peer)
        return 0 if budget is None else budget.used

    def push(self, event: TransportEvent) -> None:
        """Queue a connection event."""
        if not self.closed:
            self._send.send_nowait(event)

    async def push_frame(self, event: Received) -> None:
        """Queue a frame once both its peer's budget and the shared one have room."""
        n = len(event.data)
        peer = self._peers.get(event.peer)
        if peer is None:
            peer = self._peers[event.peer] = ByteBudget(self.per_peer_limit)
        await peer.acquire(n)
        try:
            await self.budget.acquire(n, force=peer.used == n)
        except BaseException:
            self._release(event.peer, n, shared=False)
            raise
        if self.closed:
            self._release(event.peer, n)
            return
        self._send.send_nowait(event)

    def _release(self, peer: str, n: int, *, shared: bool = True) -> None:
        if shared:
            self.budget.release(n)
        budget = self._peers.get(peer)
        if budget is None:
            return
        budget.release(n)
        if not budget.used and not budget.waiting:
            del self._peers[peer]

    def close(self) -> None:
        """No more events; the consumer drains what is queued, then the iteration ends."""
        if not self.closed:
            self.closed = True
            self._send.close()

    def __aiter__(self) -> EventQueue:
        return self

    async def __anext__(self) -> TransportEvent:
        if self._held is not None:
            peer, n = self._held
            self._held = None
            self._release(peer, n)
        try:
            event = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        if isinstance(event, Received):
            self._held = (event.peer, len(event.data))
        return event
