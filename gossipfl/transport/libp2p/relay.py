"""Circuit relay v2: reaching a peer that cannot be dialled directly (behind NAT).

A peer behind NAT keeps a connection to a *relay* (a peer others can dial) and reserves
a slot on it; another peer then reaches it at ``<relay>/p2p/<R>/p2p-circuit/p2p/<peer>``:
it opens a stream to the relay, the relay opens one to the peer, and the two streams,
spliced by the relay, carry an ordinary Noise + Yamux connection end to end. The relay
sees ciphertext only; the connection is upgraded by the swarm's own upgrader, so our
allowlist gate (:mod:`.security`) and Yamux receive limits (:mod:`.guards`) hold on it
exactly as on a direct one.

py-libp2p 0.8.1 brings the protocol (``libp2p.relay.circuit_v2``); this module adds what
gossipfl needs around it, because the library's relay serves anyone connected and its
client is built for automatic relay discovery, which we do not want:

- :class:`GatedRelay` is py-libp2p's ``CircuitV2Protocol`` with the allowlist applied to
  every hop request (the requester, and the peer a circuit goes to), one request per
  hop stream (py-libp2p waits for more and logs an error when the stream ends),
  reservations only in the requester's own name (py-libp2p reserves for any peer ID the
  message names), STOP streams (relayed connections to us) accepted only from relays we
  reserved on, and the relay's own peer ID on inbound relayed connections (py-libp2p
  puts ours).
- :func:`reserve` makes one reservation; the transport keeps one per configured relay
  alive, renewing it before it expires and at once when the relay connection drops
  (py-libp2p's refresher only looks at the expiry time, so a relay that restarted would
  silently forget us for up to an hour).
- :func:`~.paths.path_of` (re-exported here) tells whether a connection is direct or
  relayed, and through whom.

Dialling a circuit address goes through py-libp2p's ``CircuitV2Transport.dial``; the
swarm's own dialler ignores ``/p2p-circuit`` addresses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.connection_types import ConnectionType
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, StopMessage
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID as STOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from gossipfl.transport.libp2p.allowlist import Allowlist
from gossipfl.transport.libp2p.config import TransportConfig
from gossipfl.transport.libp2p.paths import (
    CIRCUIT,
    DIRECT,
    Path,
    circuit_address,
    is_circuit,
    muxed_path,
    path_of,
    relay_of,
)
from gossipfl.transport.libp2p.security import Refusal
from gossipfl.transport.libp2p.streams import finish_stream

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
"""How long one hop request (a reservation, or setting up a circuit) may take."""


class RelayError(Exception):
    """A relay refused or failed a request."""


def relay_limits(config: TransportConfig) -> RelayLimits:
    # A reservation lives an hour (py-libp2p's default); ours are renewed at half-life.
    return RelayLimits(
        duration=config.relay_circuit_duration,
        data=config.relay_circuit_data,
        max_circuit_conns=config.relay_max_circuits,
        max_reservations=config.relay_max_reservations,
    )


async def _deny(stream: INetStream, code: StatusCode, kind: type[Any] = HopMessage) -> None:
    """Answer ``code`` and end the stream once the client has read it
    (:func:`~.streams.finish_stream`): a reset right after the answer can discard it
    unread, and the client then sees a bare broken stream instead of the reason."""
    with trio.move_on_after(1.0):
        try:
            await write_delimited_msg(stream, kind(type=kind.STATUS, status=to_proto_status(code)))
        except Exception:
            logger.debug("telling a refused relay client why failed", exc_info=True)
    await finish_stream(stream, timeout=1.0)


class GatedRelay(CircuitV2Protocol):
    """py-libp2p's circuit relay v2 protocol, serving allowlisted peers only.

    Run it with ``libp2p.tools.anyio_service.background_trio_service``. With ``hop`` it
    relays; it always accepts relayed connections (STOP) from the relays in ``relays``.
    """

    def __init__(
        self,
        host: IHost,
        *,
        allowlist: Allowlist,
        refusal: Refusal,
        limits: RelayLimits,
        hop: bool,
        relays: set[str],
    ) -> None:
        super().__init__(host, limits=limits, allow_hop=hop)
        self._allowlist = allowlist
        self._refusal = refusal
        self.relays = relays
        """Peer IDs of the relays we accept relayed connections from."""
        self.refused = 0
        """Hop and stop requests refused by the allowlist (or a ban)."""
        self.on_reached: Callable[[str], None] | None = None
        """Called with a peer's ID when its relayed connection to us is up."""

    def _why_not(self, peer: str) -> str | None:
        if not self._allowlist.allows(peer):
            return "not on the allowlist"
        return self._refusal(peer)

    async def _handle_hop_stream(self, stream: INetStream) -> None:
        """One hop request per stream (rust-libp2p and go-libp2p do the same)."""
        remote = str(stream.muxed_conn.peer_id)
        why = self._why_not(remote)
        if why is None and muxed_path(stream.muxed_conn).relayed:
            why = "asked over a relayed connection"  # the spec says so: no relay chains
        if why is not None:
            self.refused += 1
            logger.warning("refused a relay request from peer %s: %s", remote, why)
            await _deny(stream, StatusCode.PERMISSION_DENIED)
            return
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                message = await read_delimited_msg(stream, HopMessage)
        except Exception:
            logger.debug("unreadable relay request from %s", remote, exc_info=True)
            await _deny(stream, StatusCode.MALFORMED_MESSAGE)
            return
        if message.type == HopMessage.RESERVE:
            named = ID(message.peer.id) if message.HasField("peer") and message.peer.id else None
            if named is not None and str(named) != remote:
                self.refused += 1
                logger.warning("peer %s asked to reserve for peer %s; refused", remote, named)
                await _deny(stream, StatusCode.PERMISSION_DENIED)
                return
            await self._handle_reserve(stream, message)
            logger.info("relay: peer %s holds a reservation", remote)
        elif message.type == HopMessage.CONNECT:
            try:
                target = str(ID(message.peer.id))
            except Exception:
                await _deny(stream, StatusCode.MALFORMED_MESSAGE)
                return
            why = self._why_not(target)
            if why is not None:
                self.refused += 1
                logger.warning("refused a circuit from %s to %s: %s", remote, target, why)
                await _deny(stream, StatusCode.PERMISSION_DENIED)
                return
            logger.info("relay: circuit from peer %s to peer %s", remote, target)
            await self._handle_connect(stream, message)  # returns when the circuit ends
            return
        else:
            await _deny(stream, StatusCode.UNEXPECTED_MESSAGE)
            return
        await self._close_stream(stream)

    async def _handle_stop_stream(self, stream: INetStream) -> None:
        remote = str(stream.muxed_conn.peer_id)
        if remote not in self.relays:
            self.refused += 1
            logger.warning("refused a relayed connection through peer %s: not our relay", remote)
            await _deny(stream, StatusCode.PERMISSION_DENIED, StopMessage)
            return
        await super()._handle_stop_stream(stream)

    async def handle_incoming_connection(self, stream: INetStream, remote_peer_id: bytes) -> None:
        """py-libp2p's, with the relay's peer ID in the connection's address (not ours)."""
        peer, relay = ID(remote_peer_id), stream.muxed_conn.peer_id
        address = multiaddr.Multiaddr(f"/p2p/{relay}{CIRCUIT}/p2p/{peer}")
        raw = RawConnection(
            stream=stream,
            initiator=False,
            connection_type=ConnectionType.RELAYED,
            addresses=[address],
        )
        try:
            muxed = await self.host.upgrade_inbound_connection(raw, address)
        except Exception as exc:
            await stream.close()
            raise ConnectionError(f"relayed connection from {peer} failed: {exc}") from exc
        for conn in self.host.get_network().get_connections(peer):
            tag = getattr(conn, "set_transport_info", None)  # py-libp2p's SwarmConn has it
            if conn.muxed_conn is muxed and callable(tag):
                tag([address], ConnectionType.RELAYED)
        if self.on_reached is not None:
            self.on_reached(str(peer))


async def reserve(host: IHost, relay: ID, *, timeout: float = REQUEST_TIMEOUT) -> float:
    """Reserve a slot on ``relay`` (we must be connected to it); return when the
    reservation expires (``time.time()`` scale).

    Raises:
        RelayError: the relay refused, or did not answer in time.
    """
    try:
        with trio.fail_after(timeout):
            stream = await host.new_stream(relay, [HOP_PROTOCOL])
            try:
                await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE))
                reply = await read_delimited_msg(stream, HopMessage)
            finally:
                with trio.move_on_after(1.0):
                    await stream.close()
    except trio.TooSlowError:
        raise RelayError(f"relay {relay} did not answer a reservation in {timeout:g} s") from None
    except Exception as exc:
        raise RelayError(f"reserving on relay {relay} failed: {exc}") from exc
    status = StatusCode(reply.status) if reply.HasField("status") else StatusCode.OK
    if status != StatusCode.OK:
        raise RelayError(f"relay {relay} refused the reservation: {status.name}")
    if not reply.HasField("reservation"):
        raise RelayError(f"relay {relay} answered OK without a reservation")
    return float(reply.reservation.expire)


def renew_in(expires: float, *, now: float | None = None) -> float:
    """Seconds until a reservation expiring at ``expires`` should be renewed: at half
    its remaining life, and no sooner than in 1 s."""
    left = expires - (time.time() if now is None else now)
    return max(1.0, left / 2)


__all__ = [
    "DIRECT",
    "HOP_PROTOCOL",
    "STOP_PROTOCOL",
    "GatedRelay",
    "Path",
    "RelayError",
    "circuit_address",
    "is_circuit",
    "muxed_path",
    "path_of",
    "relay_limits",
    "relay_of",
    "renew_in",
    "reserve",
]
