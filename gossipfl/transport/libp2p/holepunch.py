"""Hole punching (DCUtR): turning a relayed connection into a direct one.

Two peers behind NATs meet through a relay (:mod:`.relay`). Each then knows, from the
relay's identify answer, the public address its NAT gives it. Over the relayed connection
they swap those addresses (``CONNECT``), time a round trip, and dial each other at the same
moment (``SYNC``) from their listening ports: each NAT sees an outbound connection leave
and lets the other's packets in as its answer (a TCP simultaneous open). That works behind
the common NATs that keep the source port and drop, rather than reject, unsolicited
packets; behind others the peers stay relayed, and say so.

py-libp2p 0.8.1 brings the protocol (``libp2p.relay.circuit_v2.dcutr``). :class:`HolePunch`
keeps its exchange and dialling and changes what an insider could abuse, or what we need
to decide ourselves:

- **Who starts.** The library polls every connection every 2 s and starts a session with
  any relayed peer, from both ends at once. Here only the peer that was *reached* through
  the relay starts (as the DCUtR spec says), once per relayed connection, after
  :meth:`HolePunch.start`; when both peers reached each other through relays, the one with
  the smaller peer ID.
- **Bounds on what others make us do.** A session makes us dial the addresses the other
  peer names, so sessions are served only on relayed connections, one at a time per
  peer and ``MAX_SESSIONS`` per peer in ``SESSION_WINDOW`` seconds; at most
  ``MAX_ADDRESSES`` addresses are taken from a message, TCP over IPv4/IPv6 only.
- **Leaving the relay.** The library closes the relayed connection 60 s after the direct
  one is up, cutting whatever is in flight on it. Here that timer is off: the transport
  sees the direct connection arrive beside the relayed one (as it sees every
  connection), moves its streams and closes the relayed connection once it carries none
  (:class:`~.host.Libp2pTransport`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from multiaddr import Multiaddr

from gossipfl.transport.libp2p.allowlist import Allowlist
from gossipfl.transport.libp2p.paths import is_circuit, muxed_path
from gossipfl.transport.libp2p.security import Refusal
from gossipfl.transport.libp2p.streams import reset_quietly

logger = logging.getLogger(__name__)

MAX_SESSIONS = 4
"""Hole-punching sessions a peer may start with us in ``SESSION_WINDOW`` seconds."""
SESSION_WINDOW = 600.0
MAX_ADDRESSES = 8
"""Addresses taken from a peer's ``CONNECT`` (the spec allows more; we dial each)."""
ATTEMPTS = 3
"""Sessions we start for one relayed connection before staying relayed."""
RETRY_AFTER = 20.0
"""Seconds between two of those sessions."""

_DIALABLE = ("ip4", "ip6")


def dialable(address: Multiaddr) -> bool:
    """A plain TCP address over IPv4/IPv6: what a hole punch can dial."""
    protocols = [p.name for p in address.protocols()]
    return (
        len(protocols) >= 2
        and protocols[0] in _DIALABLE
        and protocols[1] == "tcp"
        and not is_circuit(address)
    )


class HolePunch(DCUtRProtocol):
    """py-libp2p's DCUtR protocol, bounded and started by us; run it with
    ``libp2p.tools.anyio_service.background_trio_service``.

    Args:
        host: our libp2p host.
        allowlist, refusal: whom we serve (the connection gate already refuses others;
            checked again per session, since a ban can come later).
        dial_timeout: seconds one hole-punch dial may take.
    """

    def __init__(
        self,
        host: IHost,
        *,
        allowlist: Allowlist,
        refusal: Refusal,
        dial_timeout: float = 5.0,
    ) -> None:
        super().__init__(host, dial_timeout=max(1, round(dial_timeout)))
        self._allowlist = allowlist
        self._refusal = refusal
        self._sessions: defaultdict[str, deque[float]] = defaultdict(deque)
        self._serving: set[str] = set()
        self._started: set[str] = set()
        self.refused = 0
        """Sessions refused: not relayed, too many, or from a peer we no longer serve."""
        self.succeeded = 0
        self.failed = 0

    async def _auto_drive_loop(self) -> None:
        """The library's polling of every connection: off (see the module doc)."""

    def _schedule_relay_close(self, peer_id: ID) -> None:
        """The library's 60 s timer that cuts the relayed connection: off (see the
        module doc)."""

    # ------------------------------------------------------------ being asked

    def _why_not(self, peer: str, stream: INetStream) -> str | None:
        if not self._allowlist.allows(peer):
            return "not on the allowlist"
        refusal = self._refusal(peer)
        if refusal is not None:
            return refusal
        if not muxed_path(stream.muxed_conn).relayed:
            return "asked over a direct connection (hole punching is for relayed ones)"
        if peer in self._serving:
            return "a session with it is already running"
        now = time.monotonic()
        recent = self._sessions[peer]
        while recent and recent[0] <= now - SESSION_WINDOW:
            recent.popleft()
        if len(recent) >= MAX_SESSIONS:
            return f"more than {MAX_SESSIONS} sessions in {SESSION_WINDOW:g} s"
        recent.append(now)
        return None

    async def _handle_dcutr_stream(self, stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        why = self._why_not(peer, stream)
        if why is not None:
            self.refused += 1
            logger.warning("refused a hole-punching session from peer %s: %s", peer, why)
            await reset_quietly(stream)
            return
        self._serving.add(peer)
        try:
            await super()._handle_dcutr_stream(stream)
        finally:
            self._serving.discard(peer)

    def _decode_observed_addrs(self, addr_bytes: list[bytes]) -> list[Multiaddr]:
        """The peer's addresses, at most ``MAX_ADDRESSES``, TCP over IP only: each one is
        dialled (three times), so the list is what an insider could aim us at."""
        out: list[Multiaddr] = []
        for raw in addr_bytes:
            if len(out) >= MAX_ADDRESSES:
                break
            try:  # multiaddr parses lazily: a bad one fails in dialable()
                address = Multiaddr(raw)
                if dialable(address):
                    out.append(address)
            except Exception:
                continue
        return out

    # ------------------------------------------------------------- asking

    def reached_through_relay(self, peer: str, *, we_dialled_it_too: bool) -> None:
        """A relayed connection from ``peer`` reached us: start hole punching with it
        (the spec's rule: the peer that was reached starts), unless we also reached it
        through a relay and its peer ID is the smaller one (it starts then)."""
        if we_dialled_it_too and peer < str(self.host.get_id()):
            return
        nursery = self._nursery
        if nursery is None or peer in self._started:
            return
        self._started.add(peer)
        nursery.start_soon(self._punch, peer)

    async def _punch(self, peer: str) -> None:
        peer_id = ID.from_base58(peer)
        try:
            for attempt in range(1, ATTEMPTS + 1):
                if not self._relayed_only(peer_id):
                    return  # direct already (or gone)
                self._hole_punch_attempts.pop(peer_id, None)  # our budget, not the library's
                started = time.monotonic()
                if await self.initiate_hole_punch(peer_id):
                    self.succeeded += 1
                    logger.info(
                        "hole punching to peer %s worked in %.1f s: direct connection",
                        peer,
                        time.monotonic() - started,
                    )
                    return
                self.failed += 1
                logger.info(
                    "hole punching to peer %s failed (attempt %d of %d)%s",
                    peer,
                    attempt,
                    ATTEMPTS,
                    f"; again in {RETRY_AFTER:g} s" if attempt < ATTEMPTS else "; staying relayed",
                )
                if attempt < ATTEMPTS:
                    await trio.sleep(RETRY_AFTER)
        finally:
            self._started.discard(peer)

    def _relayed_only(self, peer_id: ID) -> bool:
        conns: Any = self.host.get_network().get_connections(peer_id)
        live = [c for c in conns if not c.is_closed]
        return bool(live) and all(muxed_path(c.muxed_conn).relayed for c in live)


__all__ = ["ATTEMPTS", "MAX_ADDRESSES", "MAX_SESSIONS", "HolePunch", "dialable"]
