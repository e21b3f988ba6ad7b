"""The one small interface every transport implements.

A transport moves opaque frames (already-encoded wire messages) between peers named by
string ids, and reports connections coming and going. It knows nothing of models or
rounds: the peer runtime encodes, decodes and verifies. Two implementations exist: the
in-process :mod:`~gossipfl.transport.memory` network (simulation, tests) and
:mod:`~gossipfl.transport.libp2p` (real hosts).

Contract:

- ``send`` to one peer is ordered: frames arrive in the order they were sent, or not at
  all. It may connect first. It raises :class:`PeerUnreachable` when the peer cannot be
  reached, and never because of anything the remote peer sent.
- ``events()`` is consumed by exactly one task. It yields :class:`Connected` before the
  first frame of a connection and :class:`Disconnected` when it ends, for connections in
  either direction, so the runtime can (re)send its handshake and stop waiting for peers
  that are gone.
- ``aclose`` is idempotent and fast; afterwards ``send`` raises :class:`TransportClosed`
  and ``events()`` ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gossipfl._frozen import quick_init
from gossipfl.errors import GossipflError

if TYPE_CHECKING:
    from gossipfl.transport.signing import PeerSignatures

PeerId = str


@quick_init
@dataclass(frozen=True, eq=False, slots=True)
class Received:
    """A complete frame from ``peer`` (whose identity the transport vouches for).

    ``data`` is ``bytes``, or a ``bytearray`` for a large frame the transport assembled
    in place (no copy); the transport keeps no reference to it. Treat it as read-only."""

    peer: PeerId
    data: bytes | bytearray


@quick_init
@dataclass(frozen=True, slots=True)
class Connected:
    peer: PeerId


@quick_init
@dataclass(frozen=True, slots=True)
class Disconnected:
    peer: PeerId
    reason: str = ""


TransportEvent = Received | Connected | Disconnected


class TransportError(GossipflError):
    """A transport-level failure."""


class PeerUnreachable(TransportError):
    """The peer cannot be reached now (down, partitioned, refused, or not dialable)."""


class TransportClosed(TransportError):
    """The transport was closed."""


class Transport(Protocol):
    """What the peer runtime needs from a network."""

    @property
    def local_id(self) -> PeerId:
        """This peer's id, as other peers see it."""
        ...

    @property
    def signatures(self) -> PeerSignatures:
        """Signatures by this peer's identity, and checks of other peers' (for what one
        peer relays for another; :mod:`gossipfl.transport.signing`)."""
        ...

    async def connect(self, peer: PeerId) -> None:
        """Make sure a connection to ``peer`` exists (no-op if it does)."""
        ...

    async def send(self, peer: PeerId, data: bytes) -> None:
        """Send one frame to ``peer``."""
        ...

    async def disconnect(self, peer: PeerId) -> None:
        """Close connections with ``peer`` (e.g. after refusing its handshake)."""
        ...

    def events(self) -> AsyncIterator[TransportEvent]:
        """Connections and frames, in order, for the single consumer."""
        ...

    async def aclose(self) -> None:
        """Close everything; idempotent."""
        ...
