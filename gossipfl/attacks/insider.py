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
``garbage-frames``        after each model, frames of random bytes and a truncated model
``nan-models``            models holding NaN, with a payload digest that matches
``replay``                each model again, unchanged, a few rounds later
``spoofed-sender``        models that name another member as their sender
``unfinished-chunks``     after each model, the head of a chunked update that never ends
========================  ==============================================================

Some need no code: an insider that *stalls* is a node with a long
``training.step_time``, one that withholds its models runs the ``omission`` attack, one
on another network or with another model layout just has that setting changed.

Everything here is for tests and experiments, like the model attacks; it is loud about
itself (a warning at start) and never part of an honest node.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import random
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import trio

from gossipfl import wire
from gossipfl.errors import ConfigError
from gossipfl.merge.base import check_float, check_int, param
from gossipfl.textparams import build
from gossipfl.transport.base import PeerId, Transport
from gossipfl.transport.wrapping import TransportWrapper

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
                return encode_view(self.network_id, heard, self.job)

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
class _Flood(Insider):
    """Opens a stream of ``protocol`` to every target, writes ``opening()`` on it, then
    ``payload()`` as Yamux DATA frames of ``chunk`` bytes for as long as the socket takes
    them, ignoring the receiver's window and whatever becomes of the stream; after an
    error (a refused stream, a closed connection, a ban) it waits ``pause`` and starts
    again."""

    chunk: int = param(1 << 20, "bytes per Yamux DATA frame (at most 16 MiB)")
    pause: float = param(0.05, "seconds to wait before opening a new stream")

    def validate(self) -> None:
        check_int(self.name, "chunk", self.chunk, 64)
        if self.chunk > 16 << 20:
            raise ConfigError(f"{self.name} parameter chunk must be at most 16 MiB")
        check_float(self.name, "pause", self.pause, low=0.0)

    def protocol(self) -> str:
        raise NotImplementedError

    def opening(self, context: InsiderContext) -> bytes:
        return b""

    def payload(self) -> bytes:
        raise NotImplementedError

    async def run(self, context: InsiderContext) -> None:
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        from gossipfl.transport.libp2p.testing import write_ignoring_window

        payload = self.payload()
        host = context.transport.host
        protocols = [TProtocol(self.protocol())]

        async def flood(peer: PeerId) -> None:
            while True:
                try:
                    stream = await host.new_stream(ID.from_base58(peer), protocols)
                    opening = self.opening(context)
                    if opening:
                        await stream.write(opening)
                    while True:
                        await write_ignoring_window(stream, payload, chunk=self.chunk)
                except Exception as exc:  # reset, refused, disconnected, banned: again
                    logger.debug("%s of %s interrupted: %s", self.name, peer, exc)
                await trio.sleep(max(self.pause, 0.001))

        await _each_target(context, flood)


@dataclass(kw_only=True, eq=False)
class WindowFlood(_Flood):
    """After one valid membership request, keep writing on the half-closed stream."""

    name = "window-flood"
    summary = "flood a half-closed membership stream with Yamux data beyond the window"

    def protocol(self) -> str:
        from gossipfl.daemon.exchange import MEMBERS_PROTOCOL

        return MEMBERS_PROTOCOL

    def opening(self, context: InsiderContext) -> bytes:
        from gossipfl.transport.libp2p.framing import encode_prefix

        body = context.members_request()
        return encode_prefix(len(body), 1 << 24) + body

    def payload(self) -> bytes:
        return bytes(self.chunk)


@dataclass(kw_only=True, eq=False)
class FrameFlood(_Flood):
    """Valid heartbeat frames (36 bytes each) on a gossip stream of our own."""

    name = "frame-flood"
    summary = "flood a gossip stream with valid heartbeat frames beyond the window"

    def protocol(self) -> str:
        from gossipfl.transport.libp2p.config import GOSSIP_PROTOCOL

        return GOSSIP_PROTOCOL

    def payload(self) -> bytes:
        from gossipfl.transport.libp2p.framing import encode_prefix

        frame = wire.encode(wire.Heartbeat(round=0))
        one = encode_prefix(len(frame), 1 << 24) + frame
        return one * max(1, self.chunk // len(one))


# ---------------------------------------------------------------------- round claims


Tamper = Callable[[PeerId, bytes], list[bytes]]
"""Turns one frame the runtime sends to a peer into the frames actually sent."""


class TamperingTransport(TransportWrapper):
    """A transport whose outgoing frames pass through ``tamper`` (everything else is the
    wrapped transport's)."""

    def __init__(self, inner: Transport, tamper: Tamper) -> None:
        super().__init__(inner)
        self.tamper = tamper
        fast = getattr(inner, "send_nowait", None)
        if fast is not None:

            def send_nowait(peer: PeerId, data: bytes) -> None:
                for frame in tamper(peer, data):
                    fast(peer, frame)

            self.send_nowait = send_nowait

    async def send(self, peer: PeerId, data: bytes) -> None:
        for frame in self.tamper(peer, data):
            await self.inner.send(peer, frame)


def _update_of(data: bytes) -> wire.Update | None:
    """The model update ``data`` encodes (a single-frame one), else None."""
    try:
        message = wire.decode(data)
    except wire.WireError:
        return None
    return message if isinstance(message, wire.Update) else None


def _encode_raw(update: wire.Update, payload: bytes) -> bytes:
    """``update`` encoded with ``payload`` as its fp32 values, unchecked, and a digest that
    matches them: what a liar's own encoder would produce."""
    from gossipfl.wire.codecs import DEFAULT_CODECS
    from gossipfl.wire.digest import payload_digest
    from gossipfl.wire.envelope import update_fields, update_header

    fields, _ = update_fields(replace(update, codec="fp32", digest=None), DEFAULT_CODECS)
    fields["digest"] = payload_digest(payload)
    return update_header(fields) + payload


class _Tampering(Insider):
    """An insider that rewrites what its runtime sends."""

    def tamper(self, peer: PeerId, data: bytes) -> list[bytes]:
        raise NotImplementedError

    def wrap_transport(self, transport: Transport) -> Transport:
        return TamperingTransport(transport, self.tamper)


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
        def relabel(peer: PeerId, data: bytes) -> list[bytes]:
            update = _update_of(data)
            if update is None:
                return [data]  # a handshake, a heartbeat, a chunk of a large update
            return [wire.encode(replace(update, round=self.round, digest=None))]

        return TamperingTransport(transport, relabel)


@dataclass(kw_only=True, eq=False)
class GarbageFrames(_Tampering):
    """After each model: ``count`` frames of random bytes, and the model cut short."""

    name = "garbage-frames"
    summary = "send random frames and truncated models after each model"

    count: int = param(3, "random frames after each model")
    seed: int = param(0, "seeds the random bytes")

    def validate(self) -> None:
        check_int(self.name, "count", self.count, 0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._rng = random.Random(self.seed)

    def tamper(self, peer: PeerId, data: bytes) -> list[bytes]:
        if _update_of(data) is None:
            return [data]
        junk = [self._rng.randbytes(self._rng.randint(1, 4096)) for _ in range(self.count)]
        return [data, *junk, data[: len(data) // 2]]


@dataclass(kw_only=True, eq=False)
class NanModels(_Tampering):
    """Models whose values are all NaN, with a digest that matches: only the receiver's
    finiteness check stands in the way."""

    name = "nan-models"
    summary = "send models holding NaN (with a matching digest)"

    def tamper(self, peer: PeerId, data: bytes) -> list[bytes]:
        update = _update_of(data)
        if update is None:
            return [data]
        nan = np.full(update.vector.size, np.nan, "<f4").tobytes()
        return [_encode_raw(update, nan)]


@dataclass(kw_only=True, eq=False)
class Replay(_Tampering):
    """Send each model again, byte for byte, ``delay`` models later."""

    name = "replay"
    summary = "send each model again, unchanged, a few rounds later"

    delay: int = param(3, "models sent in between")

    def validate(self) -> None:
        check_int(self.name, "delay", self.delay, 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._sent: dict[PeerId, list[bytes]] = {}

    def tamper(self, peer: PeerId, data: bytes) -> list[bytes]:
        if _update_of(data) is None:
            return [data]
        history = self._sent.setdefault(peer, [])
        history.append(data)
        old = history.pop(0) if len(history) > self.delay else None
        return [data] if old is None else [data, old]


@dataclass(kw_only=True, eq=False)
class SpoofedSender(_Tampering):
    """Models that name another member (the receiver itself, by default) as their
    sender."""

    name = "spoofed-sender"
    summary = "send models that name another member as their sender"

    def tamper(self, peer: PeerId, data: bytes) -> list[bytes]:
        update = _update_of(data)
        if update is None:
            return [data]
        return [wire.encode(replace(update, sender=peer, digest=None))]


@dataclass(kw_only=True, eq=False)
class UnfinishedChunks(_Tampering):
    """After each model, the head of a chunked update of a model of the same size whose
    chunks never come."""

    name = "unfinished-chunks"
    summary = "announce chunked updates whose chunks never come"

    def tamper(self, peer: PeerId, data: bytes) -> list[bytes]:
        update = _update_of(data)
        if update is None:
            return [data]
        from gossipfl.wire.codecs import DEFAULT_CODECS
        from gossipfl.wire.envelope import update_fields

        fields, _ = update_fields(replace(update, digest=None), DEFAULT_CODECS)
        return [data, wire.encode(wire.UpdateHead(**fields))]


# ---------------------------------------------------------------------------- registry

#: Every insider behaviour by name.
INSIDERS: Mapping[str, type[Insider]] = types.MappingProxyType(
    {
        cls.name: cls
        for cls in (
            MembershipPoison,
            WindowFlood,
            FrameFlood,
            RoundInflation,
            GarbageFrames,
            NanModels,
            Replay,
            SpoofedSender,
            UnfinishedChunks,
        )
    }
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
    "GarbageFrames",
    "Insider",
    "InsiderContext",
    "MembershipPoison",
    "NanModels",
    "Replay",
    "RoundInflation",
    "SpoofedSender",
    "TamperingTransport",
    "UnfinishedChunks",
    "WindowFlood",
    "make_insider",
]
