"""Insiders: a real peer with one behaviour changed, to attack the runtime, not the models.

A Byzantine peer is an insider: it is on the allowlist, passes the Noise handshake and
speaks every protocol. The model attacks of :mod:`gossipfl.attacks` test the merge rules;
these test everything around them. Each behaviour is what an attacker would change in an
otherwise honest ``gossipfl start`` node (``[insider] name = NAME`` in its config, with
the behaviour's parameters beside it), so the adversarial suite (``tests/test_insiders.py``,
``experiments/insiders/``) runs the product against itself:

========================  ==============================================================
``membership-poison``     every membership message it sends says that all the other
                          members have left, with counters no honest record can beat
``window-flood``          after a valid membership request, keeps writing Yamux data on
                          the half-closed stream, ignoring the receiver's window
``frame-flood``           floods valid heartbeat frames on a gossip stream of its own,
                          ignoring the window
``round-inflation``       sends its honest models, labelled with a round far ahead
========================  ==============================================================

Two behaviours need no code: an insider that *stalls* is a node with a long
``training.step_time``, one that withholds its models runs the ``omission`` attack.

Everything here is for tests and experiments, like the model attacks; it is loud about
itself (a warning at start) and never part of an honest node.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import types
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import trio

from gossipfl import wire
from gossipfl.errors import ConfigError
from gossipfl.merge.base import check_float, check_int, param
from gossipfl.textparams import build
from gossipfl.transport.base import PeerId, Transport, TransportEvent

if TYPE_CHECKING:
    from gossipfl.daemon.exchange import MembershipExchange

logger = logging.getLogger(__name__)

NO_INSIDER = "none"
MAX_ROUND = (1 << 63) - 1
"""The largest round the wire format carries."""


@dataclass
class InsiderContext:
    """What a running behaviour may use: the node's own parts."""

    transport: Any
    """The node's :class:`~gossipfl.transport.libp2p.Libp2pTransport`."""
    network_id: str
    targets: Callable[[], list[PeerId]]
    """The peers to aim at now (the other live members), sorted."""
    members_request: Callable[[], bytes]
    """A valid membership request of this node, as its exchange would send it."""


@dataclass(kw_only=True, eq=False)
class Insider(abc.ABC):
    """One changed behaviour. Subclasses are keyword-only dataclasses whose fields (made
    with :func:`~gossipfl.merge.base.param`) are the behaviour's parameters."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # noqa: B027 - an optional hook
        """Raise :class:`ConfigError` for an out-of-range parameter."""

    def describe(self) -> str:
        fields = [f for f in dataclasses.fields(self) if f.init]
        values = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields)
        return f"{self.name}({values})" if values else self.name

    def wrap_transport(self, transport: Transport) -> Transport:
        """The transport the peer runtime uses (default: the node's, unchanged)."""
        return transport

    def exchange_class(self, sign: Callable[[bytes], bytes]) -> type[MembershipExchange] | None:
        """A membership exchange to use instead of the honest one (default: none); ``sign``
        signs with the node's own key."""
        return None

    async def run(self, context: InsiderContext) -> None:  # noqa: B027 - optional
        """Runs beside the node's services until the node stops (default: nothing)."""


# ------------------------------------------------------------------ membership poisoning


@dataclass(kw_only=True, eq=False)
class MembershipPoison(Insider):
    """Tell everyone that every other member has left (signed with our own key: we do not
    hold theirs), with incarnation and heartbeat 2**63 - 1."""

    name = "membership-poison"
    summary = "say in every membership message that all other members have left"

    def exchange_class(self, sign: Callable[[bytes], bytes]) -> type[MembershipExchange]:
        from gossipfl.daemon.exchange import MembershipExchange, encode_view
        from gossipfl.daemon.membership import MAX_COUNTER, Heard

        class PoisoningExchange(MembershipExchange):
            def _encode(self) -> bytes:
                heard = []
                for h in self.view.shareable(trio.current_time()):
                    rec = h.record
                    if rec.peer != self.view.me:
                        lie = replace(
                            rec, incarnation=MAX_COUNTER, heartbeat=MAX_COUNTER, left=True
                        )
                        rec = lie.signed(self.network_id, sign)
                    heard.append(Heard(rec, h.age))
                return encode_view(self.network_id, heard)

        return PoisoningExchange


# ------------------------------------------------------------------------------ floods


async def _each_target(context: InsiderContext, flood: Callable[[PeerId], Any]) -> None:
    """Run ``flood(peer)`` for every target, restarting on targets that appear later."""
    async with trio.open_nursery() as nursery:
        started: set[PeerId] = set()
        while True:
            for peer in context.targets():
                if peer not in started:
                    started.add(peer)
                    nursery.start_soon(flood, peer)
            await trio.sleep(0.5)


@dataclass(kw_only=True, eq=False)
class WindowFlood(Insider):
    """After one valid membership request, write ``chunk``-byte Yamux DATA frames on the
    half-closed stream as fast as the socket takes them, ignoring the receiver's window;
    open a new stream whenever one is reset."""

    name = "window-flood"
    summary = "flood a half-closed membership stream with Yamux data beyond the window"

    chunk: int = param(1 << 20, "bytes per Yamux DATA frame (at most 16 MiB)")
    pause: float = param(0.05, "seconds to wait before reopening a reset stream")

    def validate(self) -> None:
        check_int(self.name, "chunk", self.chunk, 1)
        if self.chunk > 16 << 20:
            raise ConfigError(f"{self.name} parameter chunk must be at most 16 MiB")
        check_float(self.name, "pause", self.pause, low=0.0)

    async def run(self, context: InsiderContext) -> None:
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        from gossipfl.daemon.exchange import MEMBERS_PROTOCOL
        from gossipfl.transport.libp2p.framing import encode_prefix
        from gossipfl.transport.libp2p.testing import write_ignoring_window

        junk = bytes(self.chunk)
        host = context.transport.host
        protocols = [TProtocol(MEMBERS_PROTOCOL)]

        async def flood(peer: PeerId) -> None:
            while True:
                try:
                    stream = await host.new_stream(ID.from_base58(peer), protocols)
                    body = context.members_request()
                    await stream.write(encode_prefix(len(body), 1 << 24) + body)
                    while True:
                        await write_ignoring_window(stream, junk, chunk=self.chunk)
                except Exception as exc:  # reset, refused, disconnected, banned: again
                    logger.debug("window flood of %s interrupted: %s", peer, exc)
                await trio.sleep(max(self.pause, 0.001))

        await _each_target(context, flood)


@dataclass(kw_only=True, eq=False)
class FrameFlood(Insider):
    """Open a gossip stream of our own to each target and write valid heartbeat frames
    (36 bytes each) in batches of ``batch`` bytes, ignoring the receiver's window."""

    name = "frame-flood"
    summary = "flood a gossip stream with valid heartbeat frames beyond the window"

    batch: int = param(1 << 20, "bytes of heartbeat frames per Yamux DATA frame")
    pause: float = param(0.05, "seconds to wait before reopening a reset stream")

    def validate(self) -> None:
        check_int(self.name, "batch", self.batch, 64)
        if self.batch > 16 << 20:
            raise ConfigError(f"{self.name} parameter batch must be at most 16 MiB")
        check_float(self.name, "pause", self.pause, low=0.0)

    async def run(self, context: InsiderContext) -> None:
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        from gossipfl.transport.libp2p.config import GOSSIP_PROTOCOL
        from gossipfl.transport.libp2p.framing import encode_prefix
        from gossipfl.transport.libp2p.testing import write_ignoring_window

        frame = wire.encode(wire.Heartbeat(round=0))
        one = encode_prefix(len(frame), 1 << 24) + frame
        payload = one * max(1, self.batch // len(one))
        host = context.transport.host
        protocols = [TProtocol(GOSSIP_PROTOCOL)]

        async def flood(peer: PeerId) -> None:
            while True:
                try:
                    stream = await host.new_stream(ID.from_base58(peer), protocols)
                    while True:
                        await write_ignoring_window(stream, payload, chunk=len(payload))
                except Exception as exc:
                    logger.debug("frame flood of %s interrupted: %s", peer, exc)
                await trio.sleep(max(self.pause, 0.001))

        await _each_target(context, flood)


# ---------------------------------------------------------------------- round claims


class _Relabelled:
    """Events of the wrapped transport, unchanged."""

    def __init__(self, inner: AsyncIterator[TransportEvent]) -> None:
        self._inner = inner

    def __aiter__(self) -> _Relabelled:
        return self

    async def __anext__(self) -> TransportEvent:
        return await self._inner.__anext__()


class RelabellingTransport:
    """A transport that rewrites the round of every single-frame model update it sends
    (chunked updates of large models pass unchanged)."""

    send_nowait: Callable[[PeerId, bytes], None]

    def __init__(self, inner: Transport, round: int) -> None:
        self.inner = inner
        self.round = round
        self.relabelled = 0
        fast = getattr(inner, "send_nowait", None)
        if fast is not None:

            def send_nowait(peer: PeerId, data: bytes) -> None:
                fast(peer, self._relabel(data))

            self.send_nowait = send_nowait

    def _relabel(self, data: bytes) -> bytes:
        try:
            message = wire.decode(data)
        except wire.WireError:
            return data  # a chunk of a large update, or not ours to judge
        if not isinstance(message, wire.Update):
            return data
        self.relabelled += 1
        return wire.encode(replace(message, round=self.round, digest=None))

    @property
    def local_id(self) -> PeerId:
        return self.inner.local_id

    async def connect(self, peer: PeerId) -> None:
        await self.inner.connect(peer)

    async def send(self, peer: PeerId, data: bytes) -> None:
        await self.inner.send(peer, self._relabel(data))

    async def disconnect(self, peer: PeerId) -> None:
        await self.inner.disconnect(peer)

    def events(self) -> AsyncIterator[TransportEvent]:
        return _Relabelled(self.inner.events().__aiter__())

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass(kw_only=True, eq=False)
class RoundInflation(Insider):
    """Send our honest models labelled with round ``round`` (default 2**63 - 1): two such
    in-neighbours once made a peer skip to its last round after 10 real ones."""

    name = "round-inflation"
    summary = "label every model sent with a round far ahead"

    round: int = param(MAX_ROUND, "the round every model claims")

    def validate(self) -> None:
        check_int(self.name, "round", self.round, 0)
        if self.round > MAX_ROUND:
            raise ConfigError(f"{self.name} parameter round must be at most 2**63 - 1")

    def wrap_transport(self, transport: Transport) -> Transport:
        return RelabellingTransport(transport, self.round)


# ---------------------------------------------------------------------------- registry

#: Every insider behaviour by name.
INSIDERS: Mapping[str, type[Insider]] = types.MappingProxyType(
    {cls.name: cls for cls in (MembershipPoison, WindowFlood, FrameFlood, RoundInflation)}
)


def make_insider(name: str, **params: object) -> Insider:
    """The behaviour called ``name`` with ``params`` (strings parse, as from a CLI)."""
    key = name.strip().lower().replace("_", "-")
    cls = INSIDERS.get(key)
    if cls is None:
        raise ConfigError(
            f"unknown insider behaviour {name!r}; valid: {', '.join(INSIDERS)} (or {NO_INSIDER!r})"
        )
    return build(cls, kind="insider behaviour", name=key, params=params)


__all__ = [
    "INSIDERS",
    "NO_INSIDER",
    "FrameFlood",
    "Insider",
    "InsiderContext",
    "MembershipPoison",
    "RelabellingTransport",
    "RoundInflation",
    "WindowFlood",
    "make_insider",
]
