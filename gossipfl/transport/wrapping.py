"""A transport around another one, for the code that changes one thing about it.

Attackers in tests and experiments are honest peers with one behaviour changed, and that
behaviour often sits at the transport: a live Byzantine peer watches the models it
receives (:class:`~gossipfl.attacks.local.ObservingTransport`), an insider rewrites what it
sends (:class:`~gossipfl.attacks.insider.TamperingTransport`). :class:`TransportWrapper`
passes everything to the wrapped transport, so each of them overrides only what it
changes. Attributes it does not define (``send_nowait``, ``penalize``, ``host``, ...) are
the wrapped transport's, so a wrapped libp2p transport keeps offering its extras to the
runtime and the daemon.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gossipfl.transport.base import PeerId, Transport, TransportEvent
from gossipfl.transport.signing import PeerSignatures


class TransportWrapper:
    """A :class:`~gossipfl.transport.base.Transport` that forwards to ``inner``."""

    #: Not the wrapped transport's: a wrapper may watch or change what arrives through
    #: :meth:`events`, so frames must not be handed past it to the receiver directly
    #: (:meth:`~gossipfl.transport.MemoryTransport.deliver_to`).
    deliver_to = None

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes this object lacks: the wrapped transport's extras.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def local_id(self) -> PeerId:
        return self.inner.local_id

    @property
    def signatures(self) -> PeerSignatures:
        return self.inner.signatures

    async def connect(self, peer: PeerId) -> None:
        await self.inner.connect(peer)

    async def send(self, peer: PeerId, data: bytes) -> None:
        await self.inner.send(peer, data)

    async def disconnect(self, peer: PeerId) -> None:
        await self.inner.disconnect(peer)

    def events(self) -> AsyncIterator[TransportEvent]:
        return self.inner.events()

    async def aclose(self) -> None:
        await self.inner.aclose()


__all__ = ["TransportWrapper"]
