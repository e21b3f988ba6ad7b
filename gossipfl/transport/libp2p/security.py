"""The security layer: Noise only, with the allowlist applied at the handshake.

Two facts about py-libp2p 0.8.1 shape this module:

- ``new_host`` offers Noise, TLS, SECIO *and plaintext* by default, and a listener accepts
  whichever of them the dialer proposes. ``/plaintext/2.0.0`` lets a dialer claim any
  peer ID without proving it holds the key, which would make "the sender of a frame is
  the authenticated peer" false. We offer Noise (XX, Ed25519 identities) and nothing else.
- The Noise handshake is the earliest moment the remote peer ID is known and proven. We
  wrap py-libp2p's Noise transport and check the allowlist right there: a refused peer's
  connection is closed before the muxer starts, so it never reaches the swarm, the
  network notifee, a stream handler or ``events()`` (but see the next point). The
  refusal is logged with the peer ID and address. A peer that is on the allowlist but
  *banned* for breaking limits (:mod:`gossipfl.peerscore`) is refused the same way
  until its ban ends.
- A refused peer learns nothing from a closed handshake but a broken pipe. So a peer
  that dialled us and is not on the allowlist is, within :class:`RefusalNotices`' bounds
  (a few at a time, each peer once a minute), let through the upgrade instead, only to be
  told why: the transport opens a gossip stream to it, writes one ``refusal``
  (NOT_ALLOWED) and closes the connection (``Libp2pTransport``). It never reaches
  ``events()``, our gossip and request handlers reset its streams (py-libp2p still
  answers its identify and ping), and beyond the bounds it is closed at the handshake as
  before.

After a successful handshake the session's message reader/writer is swapped for the
batched one from :mod:`gossipfl.transport.libp2p.fastpath` (same wire format).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from libp2p.abc import IRawConnection, ISecureConn, ISecureTransport
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.security.exceptions import HandshakeFailure
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from gossipfl.peerlog import PeerWarnings
from gossipfl.transport.libp2p.allowlist import Allowlist
from gossipfl.transport.libp2p.fastpath import install_batched_noise

logger = logging.getLogger(__name__)


class PeerNotAllowed(HandshakeFailure):
    """The remote peer proved its identity, and that identity is not on our allowlist (or
    is banned for now)."""


Refusal = Callable[[str], str | None]
"""Why we refuse an allowlisted peer now (e.g. it is banned), or ``None``."""


def _remote_address(conn: IRawConnection) -> str:
    try:
        address = conn.get_remote_address()
    except Exception:
        address = None
    return f"{address[0]}:{address[1]}" if address else "an unknown address"


class RefusalNotices:
    """Which refused peers are told why: at most ``concurrent`` at a time, and each peer
    at most once every ``per_peer`` seconds (a stranger redialling in a loop costs us a
    Noise handshake per dial, as before, and no more)."""

    def __init__(
        self,
        *,
        concurrent: int = 4,
        per_peer: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._concurrent = concurrent
        self._per_peer = per_peer
        self._clock = clock
        self._last: dict[str, float] = {}
        self.pending: set[str] = set()
        self.sent = 0
        """Refusals explained so far."""

    def begin(self, peer: str) -> bool:
        """Whether to tell ``peer`` why now (then :meth:`end` must follow)."""
        now = self._clock()
        last = self._last.get(peer)
        if len(self.pending) >= self._concurrent or peer in self.pending:
            return False
        if last is not None and now - last < self._per_peer:
            return False
        if len(self._last) > 4096:  # forget the oldest strangers: the table stays bounded
            for old in sorted(self._last, key=self._last.__getitem__)[:1024]:
                del self._last[old]
        self._last[peer] = now
        self.pending.add(peer)
        return True

    def end(self, peer: str) -> None:
        self.pending.discard(peer)


class GatedNoise(ISecureTransport):
    """py-libp2p's Noise transport, refusing peers the allowlist does not name."""

    def __init__(
        self,
        key_pair: KeyPair,
        allowlist: Allowlist,
        *,
        batch: bool,
        refusal: Refusal | None = None,
        notices: RefusalNotices | None = None,
    ) -> None:
        self._inner = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
        self.allowlist = allowlist
        self._batch = batch
        self._refusal = refusal
        self.notices = notices
        self.refused = 0
        """Handshakes refused because the peer is not on the allowlist."""
        self.refused_banned = 0
        """Handshakes refused because the peer is banned."""
        self._warnings = PeerWarnings()

    async def _admit(
        self, session: ISecureConn, conn: IRawConnection, direction: str
    ) -> ISecureConn:
        peer = session.get_remote_peer()
        if not self.allowlist.allows(peer):
            self.refused += 1
            why = "not on the allowlist"
            notices = self.notices
            if direction == "inbound" and notices is not None and notices.begin(str(peer)):
                # Let it through the upgrade, only to be told why (module docstring).
                self._warnings.warn(
                    logger,
                    peer,
                    "refused %s connection with peer %s at %s: %s (telling it why)",
                    direction,
                    peer,
                    _remote_address(conn),
                    why,
                )
                return install_batched_noise(session) if self._batch else session
        else:
            banned = self._refusal(str(peer)) if self._refusal is not None else None
            if banned is None:
                return install_batched_noise(session) if self._batch else session
            self.refused_banned += 1
            why = banned
        self._warnings.warn(
            logger,
            peer,
            "refused %s connection with peer %s at %s: %s",
            direction,
            peer,
            _remote_address(conn),
            why,
        )
        try:
            await session.close()
        except Exception:  # the connection is going away either way
            logger.debug("closing the refused connection of %s failed", peer, exc_info=True)
        raise PeerNotAllowed(f"peer {peer}: {why}")

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        session = await self._inner.secure_inbound(conn)
        return await self._admit(session, conn, "inbound")

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        session = await self._inner.secure_outbound(conn, peer_id)
        return await self._admit(session, conn, "outbound")


def security_options(security: GatedNoise) -> dict[TProtocol, Any]:
    """The ``sec_opt`` for ``new_host``: our gated Noise, and nothing else on offer."""
    return {TProtocol(NOISE_PROTOCOL_ID): security}
