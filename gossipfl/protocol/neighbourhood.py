"""Who a peer listens to and talks to, round by round.

The protocol cores speak in peer ids; topologies speak in node indices. A
:class:`Neighbourhood` bridges the two. It is pure (no I/O): the live runtime swaps in a new
one when membership changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from gossipfl.errors import ConfigError
from gossipfl.protocol.events import PeerId

if TYPE_CHECKING:
    from gossipfl.topology import Topology


class Neighbourhood(Protocol):
    """A peer's view of the topology."""

    def receive_from(self, round: int) -> Mapping[PeerId, float]:
        """In-neighbours at ``round`` and the mixing weight of each (own = 1 − sum)."""
        ...

    def send_to(self, round: int) -> Sequence[PeerId]:
        """Out-neighbours at ``round``."""
        ...


class TopologyNeighbourhood:
    """Node ``node`` of ``topology``, with node i played by the peer ``ids[i]``."""

    def __init__(self, topology: Topology, node: int, ids: Sequence[PeerId]) -> None:
        if len(ids) != topology.n:
            raise ConfigError(
                f"topology {topology.name!r} has {topology.n} nodes but {len(ids)} peer ids given"
            )
        if not 0 <= node < topology.n:
            raise ConfigError(
                f"node {node} is not in topology {topology.name!r} (0..{topology.n - 1})"
            )
        self._topology = topology
        self._node = node
        self._ids = tuple(ids)
        self._static_in: dict[PeerId, float] | None = None
        self._static_out: tuple[PeerId, ...] | None = None
        if topology.is_static:
            self._static_in = self._in(0)
            self._static_out = self._out(0)

    def _in(self, round: int) -> dict[PeerId, float]:
        return {self._ids[j]: w for j, w in self._topology.weights(self._node, round).items()}

    def _out(self, round: int) -> tuple[PeerId, ...]:
        return tuple(self._ids[j] for j in self._topology.out_neighbours(self._node, round))

    def receive_from(self, round: int) -> Mapping[PeerId, float]:
        return self._static_in if self._static_in is not None else self._in(round)

    @property
    def static(self) -> bool:
        """The same neighbours and weights in every round."""
        return self._static_in is not None

    def send_to(self, round: int) -> Sequence[PeerId]:
        return self._static_out if self._static_out is not None else self._out(round)


class StaticNeighbourhood:
    """A fixed neighbourhood given directly: handy in tests and for hand-wired peers."""

    def __init__(
        self, receive: Mapping[PeerId, float], send: Sequence[PeerId] | None = None
    ) -> None:
        self._receive = dict(receive)
        self._send = tuple(send) if send is not None else tuple(sorted(self._receive))

    def receive_from(self, round: int) -> Mapping[PeerId, float]:
        return self._receive

    static = True
    """The same neighbours and weights in every round."""

    def send_to(self, round: int) -> Sequence[PeerId]:
        return self._send
