"""Attacks from a live peer's own knowledge: the models it received from its neighbours.

A real Byzantine peer is not omniscient. It knows what its neighbours sent it, and the
target is one of those neighbours, so it usually holds the target's model of the round too.
This module turns that knowledge into an :class:`~gossipfl.attacks.AttackView`, so that
every attack runs unchanged on a live peer::

    kit = arm_peer("dissensus", transport, seed=7)
    async with Peer(transport=kit.transport, outgoing=kit.outgoing, ...) as peer:
        await peer.run(rounds)

* :class:`ObservingTransport` wraps the peer's transport and records every model update
  that arrives (decoded a second time, independently of the runtime), in
  :class:`ReceivedModels`;
* :class:`LocalAttacker` is the peer's outgoing hook: for each target it builds a view
  from the freshest model of each neighbour (this round's if it has arrived, else the
  newest earlier one) and crafts the message.

What the local view assumes, since it cannot know better: the target's honest neighbours
are this peer's other neighbours, the target weighs each neighbour (and itself) equally,
this peer is the target's only Byzantine neighbour, and the population is this peer's
neighbourhood (ALIE's z formula; set ``z`` to override). A peer sends its round-r model
right after its local step, often before the neighbours' round-r models are in; the
attack then uses their round r − 1 models, one step stale.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import numpy as np

from gossipfl import wire
from gossipfl.attacks.base import F32, Attack, AttackView
from gossipfl.attacks.registry import make_attack
from gossipfl.errors import ConfigError
from gossipfl.transport.base import PeerId, Received, Transport, TransportEvent
from gossipfl.transport.wrapping import TransportWrapper

logger = logging.getLogger(__name__)


class ReceivedModels:
    """The most recent models received from each neighbour, a few rounds deep."""

    def __init__(self, *, keep_rounds: int = 4) -> None:
        if keep_rounds < 1:
            raise ValueError(f"keep_rounds must be >= 1, got {keep_rounds}")
        self._keep = keep_rounds
        self._by_peer: dict[PeerId, dict[int, F32]] = {}

    def record(self, peer: PeerId, round: int, vector: F32) -> None:
        """Remember ``peer``'s model of ``round`` (the newest ``keep_rounds`` are kept)."""
        rounds = self._by_peer.setdefault(peer, {})
        rounds[round] = vector
        if len(rounds) > self._keep:
            for old in sorted(rounds)[: len(rounds) - self._keep]:
                del rounds[old]

    def peers(self) -> list[PeerId]:
        """Every neighbour heard from, sorted."""
        return sorted(self._by_peer)

    def latest(self, round: int) -> dict[PeerId, tuple[int, F32]]:
        """For each neighbour, its newest model of a round ``<= round``: (round, vector)."""
        out: dict[PeerId, tuple[int, F32]] = {}
        for peer in sorted(self._by_peer):
            usable = [r for r in self._by_peer[peer] if r <= round]
            if usable:
                r = max(usable)
                out[peer] = (r, self._by_peer[peer][r])
        return out


class _ObservedEvents:
    """The wrapped transport's events, unchanged, with each model update recorded."""

    def __init__(
        self, inner: AsyncIterator[TransportEvent], observe: Callable[[Received], None]
    ) -> None:
        self._inner = inner
        self._observe = observe

    def __aiter__(self) -> _ObservedEvents:
        return self

    async def __anext__(self) -> TransportEvent:
        event = await self._inner.__anext__()
        if isinstance(event, Received):
            self._observe(event)
        return event


class ObservingTransport(TransportWrapper):
    """A transport that records the models it delivers into a :class:`ReceivedModels`.

    Everything else is delegated. Frames that do not decode, or are not model updates,
    are passed on without a trace: the runtime counts and logs those itself.
    """

    def __init__(
        self, inner: Transport, received: ReceivedModels, *, limits: wire.Limits | None = None
    ) -> None:
        super().__init__(inner)
        self.received = received
        self._limits = limits or wire.DEFAULT_LIMITS

    def events(self) -> AsyncIterator[TransportEvent]:
        return _ObservedEvents(self.inner.events().__aiter__(), self._observe)

    def _observe(self, event: Received) -> None:
        try:
            message = wire.decode(event.data, limits=self._limits)
        except wire.WireError:
            return
        if isinstance(message, wire.Update):
            self.received.record(event.peer, message.round, message.vector)


def local_view(
    received: ReceivedModels,
    target: PeerId,
    round: int,
    own: F32,
    *,
    population: int | None = None,
    byzantine_total: int = 1,
) -> AttackView:
    """An :class:`AttackView` of ``target`` from what this peer received (see the module
    doc for the assumptions). ``population`` defaults to this peer's neighbourhood, self
    included."""
    latest = received.latest(round)
    target_entry = latest.pop(target, None)
    others = [latest[p][1] for p in sorted(latest)]
    n = int(np.asarray(own).shape[0])
    neighbours = (
        np.stack([np.asarray(v, np.float32) for v in others])
        if others
        else np.empty((0, n), np.float32)
    )
    k = neighbours.shape[0]
    share = 1.0 / (k + 2)  # k honest neighbours, the target itself, and us
    heard = k + (target_entry is not None)
    pop = population if population is not None else max(heard + 1, byzantine_total + 1)
    return AttackView(
        round=round,
        own=np.asarray(own, np.float32),
        neighbours=neighbours,
        weights=np.full(k, share),
        target=None if target_entry is None else np.asarray(target_entry[1], np.float32),
        target_weight=share,
        byzantine_weight=share,
        byzantine_count=1,
        population=pop,
        byzantine_total=byzantine_total,
        omniscient=False,
    )


class LocalAttacker:
    """An outgoing hook (see :data:`gossipfl.peer.runtime.OutgoingHook`) that replaces
    every model this peer sends with ``attack``'s message for that target."""

    def __init__(
        self,
        attack: Attack,
        received: ReceivedModels,
        *,
        seed: int = 0,
        population: int | None = None,
    ) -> None:
        self.attack = attack
        self.received = received
        self.population = population
        self.crafted = 0
        self._rng = np.random.default_rng(seed)

    def __call__(self, target: PeerId, round: int, vector: F32) -> F32 | None:
        if self.attack.withholds(round):
            return None
        view = local_view(self.received, target, round, vector, population=self.population)
        self.crafted += 1
        return self.attack.craft(view, self._rng)


@dataclass(frozen=True)
class LiveByzantine:
    """What a live peer needs to turn Byzantine: run it on ``transport`` with ``outgoing``
    as its outgoing hook; if ``trains``, train it on labels flipped with
    :func:`~gossipfl.attacks.flip_labels`."""

    attack: Attack
    transport: ObservingTransport
    outgoing: LocalAttacker

    @property
    def trains(self) -> bool:
        return self.attack.trains


def arm_peer(
    attack: str | Attack,
    transport: Transport,
    *,
    params: Mapping[str, object] | None = None,
    seed: int = 0,
    limits: wire.Limits | None = None,
) -> LiveByzantine:
    """Make a live peer Byzantine with ``attack`` (a name from :data:`ATTACKS` with
    ``params``, or an instance), working from the models it receives."""
    if isinstance(attack, str):
        instance = make_attack(attack, **dict(params or {}))
    elif params:
        raise ConfigError("pass parameters with an attack name, not with an Attack instance")
    else:
        instance = attack
    received = ReceivedModels()
    observing = ObservingTransport(transport, received, limits=limits)
    logger.warning("this peer is Byzantine: it sends %s messages", instance.describe())
    return LiveByzantine(instance, observing, LocalAttacker(instance, received, seed=seed))


__all__ = [
    "LiveByzantine",
    "LocalAttacker",
    "ObservingTransport",
    "ReceivedModels",
    "arm_peer",
    "local_view",
]
