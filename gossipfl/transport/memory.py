"""An in-process network for simulations and tests.

Thousands of peers in one process, each with a :class:`MemoryTransport` endpoint on one
shared :class:`MemoryNetwork`. Frames are real encoded bytes, delivered after a per-link
delay of ``latency + jitter + size / bandwidth``; links can lose or duplicate frames, be
partitioned, and peers can leave and rejoin (churn). Every random draw comes from a
generator owned by its link and seeded from (seed, source, destination), so the fate of
each frame depends only on the seed and on that link's own history: runs are reproducible
even though trio schedules tasks in a randomized order.

Delivery is driven by a single task (``MemoryNetwork.run``), a timer wheel in miniature:
a heap of pending deliveries and one sleep until the earliest. Under trio's ``MockClock``
with ``autojump_threshold=0`` the simulated time costs nothing to wait for.

Opening a connection takes time too, as over TCP: the side that connects (or sends first)
sees ``Connected`` at once; the other side sees it one link latency later, ahead of the
first frame on that link. That makes every effect of a peer on another one a message
with a delay of at least the link latency, which is what lets a simulation be split over
processes that only exchange messages once per latency (``gossipfl.simulation.sharded``)
and still compute exactly what one process would.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from gossipfl.errors import ConfigError
from gossipfl.transport.base import (
    Connected,
    Disconnected,
    PeerId,
    PeerUnreachable,
    Received,
    TransportClosed,
    TransportEvent,
)
from gossipfl.transport.signing import KeyDirectory, PeerSignatures
from gossipfl.wire.memo import DecodeMemo

_MEMO_MIN_ENTRIES = 256
"""The decode memo's least bound on entries; it grows with the endpoints."""


@dataclass(frozen=True)
class LinkProfile:
    """How a directed link behaves. Times in seconds, bandwidth in bytes per second."""

    latency: float = 0.005
    jitter: float = 0.0
    bandwidth: float = math.inf
    loss: float = 0.0
    duplicate: float = 0.0

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0 or self.bandwidth <= 0:
            raise ConfigError("links need latency >= 0, jitter >= 0, bandwidth > 0")
        if not (0 <= self.loss <= 1 and 0 <= self.duplicate <= 1):
            raise ConfigError("link loss and duplicate are probabilities in [0, 1]")


@dataclass
class _Link:
    profile: LinkProfile
    rng: random.Random
    busy_until: float = 0.0  # the sender's side is serial: bandwidth is shared in order
    last_delivery: float = 0.0  # FIFO: never deliver before an earlier frame


@dataclass
class NetworkStats:
    frames_sent: int = 0
    frames_delivered: int = 0
    frames_lost: int = 0
    frames_duplicated: int = 0
    bytes_sent: int = 0
    bytes_by_peer: dict[PeerId, int] = field(default_factory=dict)


class MemoryNetwork:
    """The shared medium. Create endpoints with :meth:`endpoint`; run :meth:`run` in a
    nursery for as long as frames should flow."""

    def __init__(self, *, seed: int = 0, default: LinkProfile | None = None) -> None:
        self.seed = seed
        self.default = default or LinkProfile()
        self.stats = NetworkStats()
        self._endpoints: dict[PeerId, MemoryTransport] = {}
        self._profiles: dict[tuple[PeerId, PeerId], LinkProfile] = {}
        self._links: dict[tuple[PeerId, PeerId], _Link] = {}
        self._connected: dict[PeerId, set[PeerId]] = {}  # adjacency of open connections
        # The peers each endpoint has been told (by a Connected event) it is connected to:
        # the far side of a new connection learns of it one latency after the near side.
        self._aware: dict[PeerId, set[PeerId]] = {}
        self._down: set[PeerId] = set()
        self._groups: dict[PeerId, int] | None = None
        # Pending deliveries: (due, order, source, destination, frame or None), where None
        # tells the destination that the source opened a connection to it.
        self._heap: list[tuple[float, int, PeerId, PeerId, bytes | None]] = []
        self._seq = itertools.count()
        self._wakeup = trio.Event()
        self._held: list[MemoryTransport] = []  # endpoints holding arrivals for a handler
        self._directory: KeyDirectory | None = None  # made on first use: few runs sign
        #: Receivers of one frame (one bytes object) decode it once between them.
        self.decode_memo = DecodeMemo(max_entries=_MEMO_MIN_ENTRIES)
        # trio.current_time(), or while run() runs, the run's clock's own method: the
        # same time without the two calls around it (read once per frame sent)
        self._now: Callable[[], float] = trio.current_time

    # ------------------------------------------------------------------ topology

    def signatures(self, peer: PeerId) -> PeerSignatures:
        """``peer``'s signatures (its key lasts as long as this network)."""
        if self._directory is None:
            self._directory = KeyDirectory(self.seed)
        return self._directory.signatures(peer)

    def endpoint(self, peer: PeerId) -> MemoryTransport:
        """A new endpoint for ``peer`` (which may reuse the id of a closed one: a restart)."""
        existing = self._endpoints.get(peer)
        if existing is not None and not existing.closed:
            raise ConfigError(f"peer id {peer!r} is already on this network")
        transport = MemoryTransport(self, peer)
        self._endpoints[peer] = transport
        # Each peer sends about one model (one bytes object, to all its neighbours) per
        # round, and its receivers decode it within a delivery batch or two: two per
        # peer keeps the hits, and much less memory than a fixed large bound would.
        memo = self.decode_memo
        memo.max_entries = max(memo.max_entries, 2 * len(self._endpoints))
        return transport

    def set_link(
        self, a: PeerId, b: PeerId, profile: LinkProfile, *, both_ways: bool = True
    ) -> None:
        """Give the link a→b (and b→a) its own behaviour."""
        for key in [(a, b), (b, a)] if both_ways else [(a, b)]:
            self._profiles[key] = profile
            if key in self._links:
                self._links[key].profile = profile

    def reachable(self, a: PeerId, b: PeerId) -> bool:
        if a in self._down or b in self._down:
            return False
        near, far = self._endpoints.get(a), self._endpoints.get(b)
        if near is None or far is None or near.closed or far.closed:
            return False
        return self._groups is None or self._groups.get(a, -1) == self._groups.get(b, -2)

    def is_connected(self, a: PeerId, b: PeerId) -> bool:
        return b in self._connected.get(a, ())

    # ------------------------------------------------------------------- faults

    def take_down(self, peer: PeerId) -> None:
        """The peer drops off the network: its connections end, frames to it are lost."""
        self._down.add(peer)
        self._drop_peer(peer, reason="peer left the network")

    def bring_up(self, peer: PeerId) -> None:
        """The peer is back; it (or its neighbours) must reconnect, as after a restart."""
        self._down.discard(peer)

    def partition(self, groups: Iterable[Iterable[PeerId]]) -> None:
        """Split the network: only peers in the same group can talk. Peers in no group
        are isolated."""
        self._groups = {p: i for i, group in enumerate(groups) for p in group}
        for a in sorted(self._connected):
            for b in sorted(self._connected.get(a, ())):
                if a < b and not self.reachable(a, b):
                    self._disconnect(a, b, reason="partitioned")

    def heal(self) -> None:
        self._groups = None

    def _disconnect(self, a: PeerId, b: PeerId, *, reason: str) -> None:
        if b not in self._connected.get(a, ()):
            return
        self._connected[a].discard(b)
        self._connected[b].discard(a)
        for near, far in ((a, b), (b, a)):
            aware = self._aware.get(near)
            if aware is not None and far in aware:  # only an end that knew of it hears
                aware.discard(far)
                self._endpoints[near]._push(Disconnected(far, reason))

    def _drop_peer(self, peer: PeerId, *, reason: str) -> None:
        for other in sorted(self._connected.get(peer, ())):
            self._disconnect(peer, other, reason=reason)

    # ------------------------------------------------------------------ delivery

    def _link(self, src: PeerId, dst: PeerId) -> _Link:
        link = self._links.get((src, dst))
        if link is None:
            profile = self._profiles.get((src, dst), self.default)
            link = _Link(profile, random.Random(f"{self.seed}:{src}:{dst}"))
            self._links[(src, dst)] = link
        return link

    def _connect(self, src: PeerId, dst: PeerId) -> None:
        if not self.reachable(src, dst):
            raise PeerUnreachable(f"{dst} is not reachable from {src}")
        if dst not in self._connected.get(src, ()):  # is_connected, inlined: once per frame
            self._connected.setdefault(src, set()).add(dst)
            self._connected.setdefault(dst, set()).add(src)
        aware = self._aware.get(src)
        if aware is None:
            aware = self._aware[src] = set()
        if dst not in aware:
            aware.add(dst)
            self._endpoints[src]._push(Connected(dst))
            # The far side hears of it one latency later, before any frame on this link.
            link = self._link(src, dst)
            at = max(trio.current_time() + link.profile.latency, link.last_delivery)
            link.last_delivery = at
            self._enqueue(at, src, dst, None)

    def _enqueue(self, at: float, src: PeerId, dst: PeerId, data: bytes | None) -> None:
        """Deliver ``data`` (None: a connection notice) to ``dst`` at virtual time ``at``."""
        heapq.heappush(self._heap, (at, next(self._seq), src, dst, data))
        if self._heap[0][0] == at:  # the new entry is due first: re-arm the runner's sleep
            self._wakeup.set()

    def _notice(self, src: PeerId, dst: PeerId) -> None:
        """``src``'s connection notice reached ``dst``: ``dst`` learns of the connection,
        unless it was cut (or ``dst`` connected back and knows already)."""
        if self.reachable(src, dst) and self.is_connected(src, dst):
            aware = self._aware.setdefault(dst, set())
            if src not in aware:
                aware.add(src)
                self._endpoints[dst]._arrive(Connected(src))

    def _send(self, src: PeerId, dst: PeerId, data: bytes) -> None:
        self._connect(src, dst)
        stats = self.stats
        stats.frames_sent += 1
        stats.bytes_sent += len(data)
        stats.bytes_by_peer[src] = stats.bytes_by_peer.get(src, 0) + len(data)
        link = self._links.get((src, dst)) or self._link(src, dst)
        profile = link.profile
        now = self._now()
        start = max(now, link.busy_until)
        link.busy_until = start + len(data) / profile.bandwidth
        copies = 1
        if profile.loss and link.rng.random() < profile.loss:
            stats.frames_lost += 1
            return
        if profile.duplicate and link.rng.random() < profile.duplicate:
            stats.frames_duplicated += 1
            copies = 2
        jitter = link.rng.random() * profile.jitter if profile.jitter else 0.0
        at = max(link.busy_until + profile.latency + jitter, link.last_delivery)
        link.last_delivery = at
        for _ in range(copies):
            self._enqueue(at, src, dst, data)

    async def run(self) -> None:
        """Deliver frames until cancelled. Run it in the nursery that holds the peers."""
        self._now = trio.lowlevel.current_clock().current_time
        try:
            await self._deliver()
        finally:
            self._now = trio.current_time  # another trio run has another clock

    async def _deliver(self) -> None:
        while True:
            if not self._heap:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            at = self._heap[0][0]
            if at > self._now():
                with trio.move_on_at(at):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            while self._heap and self._heap[0][0] <= at:  # everything due now, in order
                _, _, src, dst, data = heapq.heappop(self._heap)
                if data is None:
                    self._notice(src, dst)
                elif self.reachable(src, dst) and self.is_connected(src, dst):
                    self.stats.frames_delivered += 1
                    self._endpoints[dst]._arrive(Received(src, data))
                else:
                    self.stats.frames_lost += 1
            # Endpoints with a handler get what arrived now, one endpoint after the other.
            held, self._held = self._held, []
            for endpoint in held:
                endpoint._hand_over()
            await trio.lowlevel.checkpoint()


class MemoryTransport:
    """One peer's endpoint on a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, peer: PeerId) -> None:
        self._network = network
        self._id = peer
        self._send_events, self._receive_events = trio.open_memory_channel[TransportEvent](math.inf)
        self._handler: Callable[[Received | Connected], None] | None = None
        self._held: list[Received | Connected] = []
        self.closed = False

    @property
    def local_id(self) -> PeerId:
        return self._id

    @property
    def decode_memo(self) -> DecodeMemo:
        """Shared by every endpoint of the network: the frames a peer sends are handed
        to each receiver as the same ``bytes`` object, uncopied, so the receivers'
        decoders decode each once between them (:mod:`gossipfl.wire.memo`)."""
        return self._network.decode_memo

    @property
    def signatures(self) -> PeerSignatures:
        """Signatures of this endpoint's peer: the network gives each name an Ed25519 key
        (its stand-in for a peer ID that is a key)."""
        return self._network.signatures(self._id)

    def _push(self, event: TransportEvent) -> None:
        if not self.closed:
            self._send_events.send_nowait(event)

    def _arrive(self, event: Received | Connected) -> None:
        """What travelled to us over a link (a frame, or a connection's notice): held for
        the handler (until :meth:`_hand_over`), or queued for :meth:`events`."""
        if self.closed:
            return
        if self._handler is not None:
            if not self._held:
                self._network._held.append(self)
            self._held.append(event)
        else:
            self._send_events.send_nowait(event)

    def _hand_over(self) -> None:
        """The network's batch of deliveries is over: give the handler what we hold."""
        held, self._held = self._held, []
        for event in held:
            if self.closed:
                return
            if self._handler is not None:
                self._handler(event)
            else:  # the handler was removed meanwhile
                self._send_events.send_nowait(event)

    def deliver_to(self, handler: Callable[[Received | Connected], None] | None) -> None:
        """Hand what travels to us over a link -- frames (:class:`Received`) and the
        notice that a peer opened a connection to us (:class:`Connected`) -- to
        ``handler`` at once, in the network's delivery task, instead of queueing it for
        :meth:`events` (``None``: queue it again). What happens at our own end (our
        ``Connected`` when we open a connection, ``Disconnected``) still comes through
        :meth:`events`.

        Why: a receiver that can take a frame synchronously (a peer that trains inline,
        in a simulation) then needs no task woken per frame; with thousands of peers
        that task switch was a few percent of a simulation's CPU. What arrives is handed
        over in the order and at the virtual times it would have been queued: when the
        network has delivered everything due at that time, endpoint by endpoint, each
        endpoint's arrivals together (as a receive loop would drain its queue; one
        receiver's state stays in the CPU's caches while it handles them, where frames
        handed over one by one, to receivers in turn, measured 4% slower). The handler
        must not block, and must not raise for anything a remote peer sends.
        """
        self._handler = handler

    def _check_open(self) -> None:
        if self.closed:
            raise TransportClosed(f"transport of {self._id} is closed")

    async def connect(self, peer: PeerId) -> None:
        self._check_open()
        self._network._connect(self._id, peer)
        await trio.lowlevel.checkpoint()

    async def send(self, peer: PeerId, data: bytes) -> None:
        self.send_nowait(peer, data)
        await trio.lowlevel.checkpoint()

    def send_nowait(self, peer: PeerId, data: bytes) -> None:
        """Like :meth:`send`; never blocks, because delivery is scheduled, not awaited."""
        if self.closed:
            self._check_open()  # raises
        self._network._send(self._id, peer, bytes(data))

    async def disconnect(self, peer: PeerId) -> None:
        self._network._disconnect(self._id, peer, reason="disconnected")
        await trio.lowlevel.checkpoint()

    def events(self) -> trio.MemoryReceiveChannel[TransportEvent]:
        return self._receive_events

    async def aclose(self) -> None:
        if self.closed:
            return
        net = self._network
        net._drop_peer(self._id, reason="peer closed")
        self.closed = True
        self._send_events.close()
        await trio.lowlevel.checkpoint()
