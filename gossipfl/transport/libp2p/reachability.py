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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import multiaddr
import trio
from libp2p.abc import INetConn
from libp2p.peer.id import ID

from gossipfl.transport.base import PeerUnreachable
from gossipfl.transport.libp2p.paths import path_of

logger = logging.getLogger(__name__)

DIALBACK_PROTOCOL = "/gossipfl/dialback/1.0.0"
MAX_PORTS = 4
MAX_REQUEST = 64
MAX_REPLY = 256
DIAL_TIMEOUT = 3.0
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


ASK = 2
"""Peers asked in one check (at once)."""
EVERY = 600.0
"""Seconds between two checks."""
RETRY = 10.0
"""Seconds before checking again when nobody answered."""


class Request(Protocol):
    async def __call__(
        self,
        peer: str,
        protocol: str,
        payload: bytes,
        *,
        max_request: int,
        max_reply: int,
        timeout: float,
    ) -> bytes: ...


class Dialback:
    """Both sides of the check for one transport: :meth:`answer` serves others'
    requests; :meth:`watch` checks our own reachability while the transport lives.

    Args:
        swarm: py-libp2p's swarm (its TCP transport and upgrader dial back).
        local_id: our peer ID (for the addresses we report).
        request: the transport's request function (one frame each way).
        remote_ips: a peer's IP addresses as its *direct* connections show them.
        askable: peers we are connected to directly, in the order to ask them.
    """

    def __init__(
        self,
        swarm: Any,
        *,
        local_id: str,
        request: Request,
        remote_ips: Callable[[str], list[str]],
        askable: Callable[[], list[str]],
    ) -> None:
        self._swarm = swarm
        self._local_id = local_id
        self._request = request
        self._remote_ips = remote_ips
        self._askable = askable
        self.found = Reachability()
        """What the last check found."""
        self.direct_peer = trio.Event()
        """Set (by the transport) once a peer is connected directly: someone to ask."""
        self._expected = ExpectedDialbacks()

    async def answer(self, peer: str, request: bytes) -> bytes | None:
        """Dial ``peer`` back at the IP its direct connection comes from, on each port it
        names; ``None`` (no answer) over a relayed connection."""
        ports = decode_request(request)
        ips = self._remote_ips(peer)
        if not ips:
            logger.debug("dial-back request from %s over a relayed connection; not answered", peer)
            return None
        ip, results = ips[0], [False] * len(ports)

        async def one(i: int, port: int) -> None:
            results[i] = await dial_back(self._swarm, ID.from_base58(peer), tcp_address(ip, port))

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i, port in enumerate(ports):
                nursery.start_soon(one, i, port)
        logger.debug(
            "dial-back check for peer %s at %s, ports %s: %s (%.1f s)",
            peer,
            ip,
            ports,
            results,
            trio.current_time() - started,
        )
        return encode_reply(ip, results)

    async def watch(self, ports: list[int]) -> None:
        """Check our own reachability once a peer is connected directly, then every
        ``EVERY`` seconds (``RETRY`` after a check nobody answered); runs until
        cancelled. ``ports``: the TCP ports we listen on."""
        if not ports:
            self._record(Reachability("unreachable", detail="listening on nothing: dial-out only"))
            return
        self._expected.install()
        try:
            while True:
                await self.direct_peer.wait()
                self._record(await self.check(ports[:MAX_PORTS]))
                await trio.sleep(RETRY if self.found.state == "unknown" else EVERY)
        finally:
            self._expected.remove()

    async def check(self, ports: list[int]) -> Reachability:
        """Ask up to ``ASK`` directly connected peers at once to dial us back on
        ``ports``; reachable if one could."""
        answers: dict[str, tuple[str, list[bool]]] = {}

        async def ask(peer: str) -> None:
            self._expected.expect(peer)
            try:
                reply = await self._request(
                    peer,
                    DIALBACK_PROTOCOL,
                    encode_request(ports),
                    max_request=MAX_REQUEST,
                    max_reply=MAX_REPLY,
                    timeout=DIAL_TIMEOUT * 3,
                )
                answers[peer] = decode_reply(reply, len(ports))
            except (PeerUnreachable, DialbackError) as exc:
                logger.info("peer %s gave no dial-back answer: %s", peer, exc)

        async with trio.open_nursery() as nursery:
            for peer in self._askable()[:ASK]:
                nursery.start_soon(ask, peer)
        misses: list[str] = []
        for peer, (ip, results) in answers.items():
            reached = [
                f"{tcp_address(ip, port)}/p2p/{self._local_id}"
                for port, ok in zip(ports, results, strict=True)
                if ok
            ]
            if reached:
                return Reachability("reachable", tuple(reached), (peer,))
            misses.append(f"{peer} could not dial {ip} on port {', '.join(map(str, ports))}")
        if not answers:
            return Reachability(detail="no connected peer answered a dial-back check")
        return Reachability("unreachable", checked_by=tuple(answers), detail="; ".join(misses))

    def _record(self, found: Reachability) -> None:
        if found.state == "unknown" and self.found.state != "unknown":
            return  # keep the last answer rather than forget it
        if found != self.found:
            logger.info("reachability: %s", found)
        self.found = found


__all__ = [
    "ASK",
    "DIALBACK_PROTOCOL",
    "EVERY",
    "MAX_PORTS",
    "RETRY",
    "Dialback",
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
