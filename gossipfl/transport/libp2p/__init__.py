"""The libp2p transport: real peers over py-libp2p (TCP + Noise + Yamux).

py-libp2p (~0.5 s to import) is imported on first use of a name that needs it
(:class:`Libp2pTransport`, say), not by the package itself: :class:`Allowlist` and the
address parsers serve ``gossipfl init`` without it. :mod:`gossipfl.transport` does not
import this package for simulations.

- :class:`Libp2pTransport` — the :class:`~gossipfl.transport.base.Transport` over a host;
- :class:`TransportConfig` — its timeouts and limits;
- :class:`Allowlist` — which peer IDs may connect;
- :data:`GOSSIP_PROTOCOL` — the protocol id frames travel on.

Every workaround for a py-libp2p 0.8.1 pitfall lives in this package; see
:mod:`~gossipfl.transport.libp2p.workarounds` for the list.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gossipfl.transport.libp2p.allowlist import Allowlist, parse_multiaddr, parse_peer_id
    from gossipfl.transport.libp2p.config import GOSSIP_PROTOCOL, TransportConfig
    from gossipfl.transport.libp2p.framing import (
        FrameError,
        FrameTimeout,
        FrameTooLarge,
        TruncatedFrame,
    )
    from gossipfl.transport.libp2p.host import DEFAULT_LISTEN, Libp2pTransport
    from gossipfl.transport.libp2p.streams import TransportStats

_LAZY = {
    "Allowlist": "gossipfl.transport.libp2p.allowlist",
    "parse_multiaddr": "gossipfl.transport.libp2p.allowlist",
    "parse_peer_id": "gossipfl.transport.libp2p.allowlist",
    "GOSSIP_PROTOCOL": "gossipfl.transport.libp2p.config",
    "TransportConfig": "gossipfl.transport.libp2p.config",
    "FrameError": "gossipfl.transport.libp2p.framing",
    "FrameTimeout": "gossipfl.transport.libp2p.framing",
    "FrameTooLarge": "gossipfl.transport.libp2p.framing",
    "TruncatedFrame": "gossipfl.transport.libp2p.framing",
    "DEFAULT_LISTEN": "gossipfl.transport.libp2p.host",
    "Libp2pTransport": "gossipfl.transport.libp2p.host",
    "TransportStats": "gossipfl.transport.libp2p.streams",
}

__all__ = [
    "DEFAULT_LISTEN",
    "GOSSIP_PROTOCOL",
    "Allowlist",
    "FrameError",
    "FrameTimeout",
    "FrameTooLarge",
    "Libp2pTransport",
    "TransportConfig",
    "TransportStats",
    "TruncatedFrame",
    "parse_multiaddr",
    "parse_peer_id",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gossipfl.transport.libp2p' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
