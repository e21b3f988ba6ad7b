"""Can peers dial us? A dial-back check, for the operator.

A peer behind NAT listens on a private address; whether others can reach it is a fact
about the network between them, which it can only learn by asking someone outside to
try. py-libp2p 0.8.1's AutoNAT answers this wrongly for us: its dial-back reuses the
connection the question came on (so every peer looks PUBLIC), and it wants four servers
before it concludes. This is a small protocol of our own, specified in docs/protocol.md
(section 13.4):

- the asking peer sends ``{"ports": [p, ...]}`` (msgpack; 1 to ``MAX_PORTS`` TCP ports it
  listens on) on ``/gossipfl/dialback/1.0.0``, over a direct connection;
- the answering peer dials each port **at the IP address it sees the question come
  from**, on a fresh TCP connection, and runs the Noise handshake far enough to check
  the peer ID (then hangs up); it answers ``{"ip": "<that address>", "reachable":
  [bool, ...]}``, one per port.

Dialling only the asker's own address means nobody can use the check to make us dial a
third party. What a lying answer can do is limited to the report: the result changes
nothing in how we connect (relays and hole punching work without it).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import multiaddr
import trio
from libp2p.abc import INetConn
from libp2p.peer.id import ID

from gossipfl.transport.libp2p.paths import path_of

logger = logging.getLogger(__name__)

DIALBACK_PROTOCOL = "/gossipfl/dialback/1.0.0"
MAX_PORTS = 4
MAX_REQUEST = 64
MAX_REPLY = 256
DIAL_TIMEOUT = 5.0
"""Seconds one dial-back (TCP connect and Noise handshake) may take; a NAT that drops the
attempt makes it time out."""


class DialbackError(ValueError):
    """A dial-back request or reply that breaks the protocol."""


@dataclass(frozen=True)
class Reachability:
    """What the last check found.

    ``state`` is ``"unknown"`` (not checked yet, or nobody could answer),
    ``"reachable"`` (a peer dialled us back at ``addresses``) or ``"unreachable"`` (the
    peers asked could not: behind NAT or a firewall, others reach us through a relay)."""

    state: str = "unknown"
    addresses: tuple[str, ...] = ()
    checked_by: tuple[str, ...] = ()
    detail: str = ""

    def __str__(self) -> str:
        if self.state == "reachable":
            return (
                f"reachable at {', '.join(self.addresses)} (dialled back by {self.checked_by[0]})"
            )
        if self.state == "unreachable":
            by = ", ".join(self.checked_by)
            return f"not reachable from outside ({self.detail}; asked {by})"
        return f"unknown ({self.detail})" if self.detail else "unknown"


class ExpectedDialbacks(logging.Filter):
    """The peer we asked hangs up on its dial-back right after the Noise handshake, and
    py-libp2p logs that at ERROR (``fail to upgrade mux for peer X``): an operator would
    read it as a fault. For a peer we asked in the last ``DIAL_TIMEOUT * 2`` seconds, this
    filter lowers that one record to DEBUG; any other failure is still logged as it is.
    Install it on the ``libp2p.network.swarm`` logger (:meth:`install`)."""

    def __init__(self) -> None:
        super().__init__()
        self._until: dict[str, float] = {}

    def expect(self, peer: str) -> None:
        self._until[peer] = time.monotonic() + DIAL_TIMEOUT * 2

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not self._until:
            return True
        now = time.monotonic()
        for peer, until in list(self._until.items()):
            if until < now:
                del self._until[peer]
        if record.msg == "fail to upgrade mux for peer %s" and record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            if str(args[0]) in self._until:
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True

    def install(self) -> None:
        logging.getLogger("libp2p.network.swarm").addFilter(self)

    def remove(self) -> None:
        logging.getLogger("libp2p.network.swarm").removeFilter(self)


def encode_request(ports: list[int]) -> bytes:
    return bytes(msgpack.packb({"ports": ports}))


def decode_request(data: bytes) -> list[int]:
    """The ports of a request; :class:`DialbackError` if it is not one."""
    message = _unpack(data, MAX_REQUEST)
    ports = message.get("ports")
    if (
        set(message) != {"ports"}
        or not isinstance(ports, list)
        or not 1 <= len(ports) <= MAX_PORTS
        or not all(type(p) is int and 1 <= p <= 65535 for p in ports)
    ):
        raise DialbackError(f"a dial-back request is {{'ports': [1..{MAX_PORTS} TCP ports]}}")
    return ports


def encode_reply(ip: str, reachable: list[bool]) -> bytes:
    return bytes(msgpack.packb({"ip": ip, "reachable": reachable}))


def decode_reply(data: bytes, ports: int) -> tuple[str, list[bool]]:
    """The IP and results of a reply to a request of ``ports`` ports."""
    message = _unpack(data, MAX_REPLY)
    ip, results = message.get("ip"), message.get("reachable")
    if (
        set(message) != {"ip", "reachable"}
        or not isinstance(ip, str)
        or not isinstance(results, list)
        or len(results) != ports
        or not all(type(r) is bool for r in results)
    ):
        raise DialbackError("a dial-back reply is {'ip': str, 'reachable': [bool per port]}")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise DialbackError(f"a dial-back reply names {ip!r}, not an IP address") from None
    return ip, results


def _unpack(data: bytes, limit: int) -> dict[str, Any]:
    if len(data) > limit:
        raise DialbackError(f"{len(data)} bytes; a dial-back message has at most {limit}")
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise DialbackError(f"not msgpack: {exc}") from None
    if not isinstance(message, dict):
        raise DialbackError("a dial-back message is a map")
    return message


def remote_ip(conn: INetConn) -> str | None:
    """The IP address a *direct* connection comes from (``None`` for a relayed one, whose
    socket leads to the relay)."""
    if path_of(conn).relayed:
        return None
    raw: Any = getattr(getattr(conn.muxed_conn, "secured_conn", None), "conn", None)
    for candidate in (raw, getattr(raw, "_wrapped", None)):
        get = getattr(candidate, "get_remote_address", None)
        if not callable(get):
            continue
        try:
            address = get()
        except Exception:
            continue
        if address:
            return str(address[0])
    return None


def tcp_address(ip: str, port: int) -> multiaddr.Multiaddr:
    family = "ip6" if ipaddress.ip_address(ip).version == 6 else "ip4"
    return multiaddr.Multiaddr(f"/{family}/{ip}/tcp/{port}")


async def dial_back(swarm: Any, peer: ID, address: multiaddr.Multiaddr) -> bool:
    """Open a fresh TCP connection to ``address`` and check, by the Noise handshake, that
    ``peer`` answers there; then hang up. Never added to the swarm: the connection we
    already have with ``peer`` is left alone (py-libp2p would trim one of the two)."""
    transport = swarm.transport_manager.transport_for_dialing(address)
    if transport is None:
        return False
    raw: Any = None
    try:
        with trio.fail_after(DIAL_TIMEOUT):
            raw = await transport.dial(address)
            secured = await swarm.upgrader.upgrade_security(raw, True, peer)
            await secured.close()
        return True
    except trio.TooSlowError:
        return False
    except Exception as exc:
        logger.debug("dial-back to %s at %s failed: %s", peer, address, exc)
        return False
    finally:
        if raw is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await raw.close()
                except Exception:
                    logger.debug("closing a dial-back connection failed", exc_info=True)


__all__ = [
    "DIALBACK_PROTOCOL",
    "MAX_PORTS",
    "DialbackError",
    "ExpectedDialbacks",
    "Reachability",
    "decode_reply",
    "decode_request",
    "dial_back",
    "encode_reply",
    "encode_request",
    "remote_ip",
    "tcp_address",
]
