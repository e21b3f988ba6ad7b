"""Whether a connection is direct or relayed, and through whom.

Kept apart from :mod:`.relay` because the stream bookkeeping (:mod:`.streams`) counts
relayed bytes, and the relay protocol itself ends its streams with :mod:`.streams`'
helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import multiaddr
from libp2p.abc import INetConn
from libp2p.connection_types import ConnectionType

CIRCUIT = "/p2p-circuit"


@dataclass(frozen=True)
class Path:
    """How we are connected to a peer: directly, or relayed through ``relay``."""

    relay: str | None = None

    @property
    def relayed(self) -> bool:
        return self.relay is not None

    def __str__(self) -> str:
        return f"relayed via {self.relay}" if self.relay else "direct"


DIRECT = Path()


def is_circuit(address: str | multiaddr.Multiaddr) -> bool:
    return CIRCUIT in str(address)


def circuit_address(relay: str, peer: str) -> str:
    """``relay`` (ending in ``/p2p/<relay id>``) as a circuit address of ``peer``."""
    return f"{relay}{CIRCUIT}/p2p/{peer}"


def relay_of(address: str | multiaddr.Multiaddr) -> tuple[str, str]:
    """The relay part of a circuit address, and the relay's peer ID."""
    text = str(address)
    relay = text[: text.index(CIRCUIT)]
    return relay, relay.rsplit("/p2p/", 1)[1]


def path_of(conn: INetConn) -> Path:
    """Whether ``conn`` is direct or relayed (and through whom)."""
    return _path(conn) or muxed_path(conn.muxed_conn)


def muxed_path(muxed_conn: object) -> Path:
    """:func:`path_of`, from the muxed connection: its raw connection says, from the
    start (the swarm tags a relayed connection only after it reported it to notifees)."""
    raw: Any = getattr(getattr(muxed_conn, "secured_conn", None), "conn", None)
    wrapped = getattr(raw, "_wrapped", None)  # py-libp2p's TrackedRawConnection
    return _path(raw) or _path(wrapped) or DIRECT


def _path(candidate: Any) -> Path | None:
    """The relayed path of a connection-like object, or ``None`` if it does not say so."""
    get_type = getattr(candidate, "get_connection_type", None)
    if not callable(get_type):
        return None
    try:
        if get_type() != ConnectionType.RELAYED:
            return None
        addresses = candidate.get_transport_addresses()
    except Exception:
        return None
    for address in addresses:
        if is_circuit(address):
            return Path(relay_of(address)[1])
    return Path("an unknown relay")


__all__ = [
    "CIRCUIT",
    "DIRECT",
    "Path",
    "circuit_address",
    "is_circuit",
    "muxed_path",
    "path_of",
    "relay_of",
]
