"""The vocabulary of the sans-I/O protocol cores: events in, actions out.

A protocol core never touches a socket, a clock or a thread. The runtime (the in-memory
simulator or a live libp2p peer) feeds it events -- a model arrived, a deadline passed, the
local step finished -- and carries out the actions it returns -- send this model, start a
timer, merge these vectors, train the next round. Keeping both sides explicit is what
lets one protocol run unchanged over a simulated network and over libp2p, and what lets
tests drive every interleaving by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gossipfl._frozen import quick_init

PeerId = str
Vector = npt.NDArray[np.float32]


# --------------------------------------------------------------------------- events (in)


@quick_init
@dataclass(frozen=True, eq=False, slots=True)
class LocalStepDone:
    """The local training of ``round`` finished; ``vector`` is the model it produced."""

    round: int
    vector: Vector
    metrics: Mapping[str, float] = field(default_factory=dict)


@quick_init
@dataclass(frozen=True, eq=False, slots=True)
class ModelReceived:
    """A verified neighbour sent its model of ``round``. ``reply`` asks for ours back
    (push-pull gossip)."""

    peer: PeerId
    round: int
    vector: Vector
    reply: bool = False


@quick_init
@dataclass(frozen=True, slots=True)
class DeadlinePassed:
    """The timer the core asked for with :class:`SetTimer` for ``round`` went off."""

    round: int


@quick_init
@dataclass(frozen=True, eq=False, slots=True)
class MergeDone:
    """The runtime carried out a :class:`Merge`; ``vector`` is the merged model."""

    round: int
    vector: Vector


@quick_init
@dataclass(frozen=True, slots=True)
class PeerUp:
    """A neighbour became reachable (connected and handshake accepted)."""

    peer: PeerId


@quick_init
@dataclass(frozen=True, slots=True)
class PeerDown:
    """A neighbour is gone (disconnected, or silent past its heartbeat deadline)."""

    peer: PeerId


Event = LocalStepDone | ModelReceived | DeadlinePassed | MergeDone | PeerUp | PeerDown


# -------------------------------------------------------------------------- actions (out)


@quick_init
@dataclass(frozen=True, slots=True)
class Train:
    """Run the local step(s) of ``round``, then report :class:`LocalStepDone`."""

    round: int


@quick_init
@dataclass(frozen=True, eq=False, slots=True)
class Send:
    """Send our model of ``round`` to ``peer``; ``reply`` asks it to answer with its own."""

    peer: PeerId
    round: int
    vector: Vector
    reply: bool = False


@quick_init
@dataclass(frozen=True, slots=True)
class SetTimer:
    """Report :class:`DeadlinePassed` for ``round`` after ``delay`` seconds."""

    round: int
    delay: float


@quick_init
@dataclass(frozen=True, eq=False, slots=True)
class Merge:
    """Merge ``own`` with the neighbours' vectors (sorted by peer id, so the result does not
    depend on arrival order), then report :class:`MergeDone`. ``weights`` are the mixing
    weights of those neighbours; own weight is 1 − sum(weights)."""

    round: int
    own: Vector
    peers: tuple[PeerId, ...]
    vectors: tuple[Vector, ...]
    weights: tuple[float, ...]


@quick_init
@dataclass(frozen=True, slots=True)
class RoundStats:
    """What happened in one round, for metrics: who was expected, who made it in time."""

    expected: int = 0
    received: int = 0
    missing: tuple[PeerId, ...] = ()
    late: int = 0
    duplicates: int = 0
    unexpected: int = 0
    too_far_ahead: int = 0
    staleness_mean: float = 0.0
    staleness_max: int = 0
    skipped_to: int | None = None  # set when the peer caught up by skipping rounds
    reused: int = 0
    """Missing neighbours whose last model (at most ``max_reuse`` rounds old) stood in."""
    deadline: float | None = None
    """Sync: the longest this round waited for a neighbour (adaptive deadlines)."""
    slow: tuple[PeerId, ...] = ()
    """Sync: in-neighbours not waited for because they keep the others waiting."""
    implausible: tuple[PeerId, ...] = ()
    """Sync: in-neighbours claiming rounds further ahead than the elapsed time allows
    (not believed)."""


@quick_init
@dataclass(frozen=True, eq=False, slots=True)
class RoundDone:
    """Round ``round`` is merged: ``vector`` is the peer's model from now on."""

    round: int
    vector: Vector
    stats: RoundStats
    metrics: Mapping[str, float] = field(default_factory=dict)


@quick_init
@dataclass(frozen=True, slots=True)
class Finished:
    """The peer completed its last round."""

    rounds: int


Action = Train | Send | SetTimer | Merge | RoundDone | Finished


class ProtocolError(RuntimeError):
    """An event the core cannot be in a state to receive: a bug in the runtime driving it,
    never something a remote peer can cause (remote input only ever becomes counted,
    dropped messages)."""
