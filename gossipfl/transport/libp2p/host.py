"""The libp2p transport: a py-libp2p host (TCP + Noise + Yamux) behind the small
:class:`~gossipfl.transport.base.Transport` interface.

Open it as an async context manager; everything it starts is stopped when the block
exits, including on errors and Ctrl+C::

    async with Libp2pTransport.open(identity=me, listen=["/ip4/0.0.0.0/tcp/4001"],
                                    allow={"12D3KooW...", ...}) as transport:
        print(transport.local_id, transport.listen_addrs)
        peer = await transport.dial("/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW...")
        await transport.send(peer, frame)
        async for event in transport.events():
            ...

How the pieces fit: :mod:`~gossipfl.transport.libp2p.security` authenticates peers and
applies the allowlist during the Noise handshake; a network notifee turns py-libp2p's
connection callbacks into ``Connected``/``Disconnected``; :mod:`~gossipfl.transport.libp2p.
streams` carries frames on ``/gossipfl/gossip/1.0.0``; :mod:`~gossipfl.transport.libp2p.
workarounds` and :mod:`~gossipfl.transport.libp2p.fastpath` hold every py-libp2p quirk we
work around, each documented there.

Limits against peers that are allowed in and still hostile (docs/operations.md, "Resource
limits and peer scores"): :mod:`~gossipfl.transport.libp2p.guards` enforces Yamux's
receive windows and caps each connection's streams and buffered bytes;
:mod:`~gossipfl.transport.libp2p.budgets` caps each peer's frame and request rates;
:mod:`~gossipfl.transport.libp2p.events` each peer's share of ``events()``;
:mod:`~gossipfl.transport.libp2p.resources` configures py-libp2p's resource manager. Every
limit broken goes through :meth:`Libp2pTransport.penalize`, which counts and logs it and
may ban the peer (:mod:`~gossipfl.transport.libp2p.policing`).

Peers behind NAT (:mod:`~gossipfl.transport.libp2p.relay`): with ``config.relay_service``
the transport relays for allowlisted peers; with ``config.relays`` it keeps a reservation
on each relay and lists ``<relay>/p2p-circuit/p2p/<us>`` among its addresses; ``connect``
dials such circuit addresses when the direct ones fail or there are none.
:meth:`Libp2pTransport.path` tells which way a peer is connected.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INotifee
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from gossipfl import wire
from gossipfl.errors import ConfigError
from gossipfl.identity import Identity, generate_identity
from gossipfl.peerlog import PeerWarnings
from gossipfl.peerscore import Ban
from gossipfl.transport.base import (
    Connected,
    Disconnected,
    PeerId,
    PeerUnreachable,
    TransportClosed,
)
from gossipfl.transport.libp2p import workarounds
from gossipfl.transport.libp2p.allowlist import Allowlist, parse_multiaddr, parse_peer_id
from gossipfl.transport.libp2p.budgets import FrameThrottle, RequestGate
from gossipfl.transport.libp2p.config import GOSSIP_PROTOCOL, TransportConfig
from gossipfl.transport.libp2p.events import EventQueue
from gossipfl.transport.libp2p.fastpath import install_direct_yamux_reads
from gossipfl.transport.libp2p.guards import (
    ConnectionGuard,
    YamuxLimits,
    hook_upgrader,
    install_yamux_guards,
)
from gossipfl.transport.libp2p.holepunch import HolePunch
from gossipfl.transport.libp2p.policing import Policing
from gossipfl.transport.libp2p.reachability import (
    DIAL_TIMEOUT,
    DIALBACK_PROTOCOL,
    MAX_REPLY,
    MAX_REQUEST,
    Dialback,
    Reachability,
    remote_ip,
)
from gossipfl.transport.libp2p.relay import (
    GatedRelay,
    Path,
    RelayError,
    circuit_address,
    is_circuit,
    muxed_path,
    path_of,
    relay_limits,
    relay_of,
    renew_in,
    reserve,
)
from gossipfl.transport.libp2p.requests import RequestHandler, send_request, serve_request
from gossipfl.transport.libp2p.resources import install_resource_manager, resource_manager
from gossipfl.transport.libp2p.security import GatedNoise, RefusalNotices, security_options
from gossipfl.transport.libp2p.streams import (
    OutboundStreams,
    TransportStats,
    finish_stream,
    reset_quietly,
    serve_stream,
)
from gossipfl.transport.libp2p.tasks import TaskGroup
from gossipfl.transport.signing import PeerSignatures, identity_signatures

logger = logging.getLogger(__name__)

#: How long telling a refused peer why may take (opening a stream, writing one frame).
REFUSAL_NOTICE_TIMEOUT = 2.0

#: How long a relayed connection may keep carrying streams once a direct one is up.
RELAY_DRAIN = 30.0

DEFAULT_LISTEN = ("/ip4/127.0.0.1/tcp/0",)


def describe_failure(exc: BaseException) -> str:
    """A one-line account of why a dial failed: py-libp2p nests the real cause (e.g.
    "Connection refused") several exceptions deep, behind generic wrappers."""
    seen: list[str] = []

    def walk(e: BaseException, depth: int) -> None:
        if depth > 8:
            return
        text = str(e).strip() or type(e).__name__
        if text not in seen:
            seen.append(text)
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub, depth + 1)
        for attr in ("__cause__", "__context__"):
            nxt = getattr(e, attr, None)
            if isinstance(nxt, BaseException):
                walk(nxt, depth + 1)
                break
        for sub in getattr(e, "errors", None) or ():  # libp2p's MultiError
            if isinstance(sub, BaseException):
                walk(sub, depth + 1)

    walk(exc, 0)
    return " <- ".join(seen[-3:]) if len(seen) > 3 else " <- ".join(seen)


def _host_and_port(addr: multiaddr.Multiaddr) -> tuple[str | None, int | None]:
    """The IP and TCP port of ``addr`` (None where it has none)."""
    names = {p.name for p in addr.protocols()}
    family = "ip4" if "ip4" in names else "ip6" if "ip6" in names else None
    host = str(addr.value_for_protocol(family)) if family else None
    port = int(addr.value_for_protocol("tcp")) if "tcp" in names else None
    return host, port


def _peer_of(address: str) -> str:
    peer = parse_multiaddr(address, need_peer_id=True)[1]
    assert peer is not None
    return peer


def _expand_wildcard(addr: multiaddr.Multiaddr) -> list[multiaddr.Multiaddr]:
    names = {p.name for p in addr.protocols()}
    family = "ip4" if "ip4" in names else "ip6" if "ip6" in names else None
    if family is None or addr.value_for_protocol(family) not in ("0.0.0.0", "::"):
        return [addr]
    from libp2p.utils.address_validation import expand_wildcard_address

    try:
        return list(expand_wildcard_address(addr)) or [addr]
    except Exception:  # interface discovery is best effort
        return [addr]


class _ConnectionEvents(INotifee):
    """py-libp2p's network notifee, forwarding connection changes to the transport."""

    def __init__(self, transport: Libp2pTransport) -> None:
        self._transport = transport

    async def connected(self, network: Any, conn: INetConn) -> None:
        self._transport._on_connection(conn)

    async def disconnected(self, network: Any, conn: INetConn) -> None:
        self._transport._on_disconnection(conn)

    async def opened_stream(self, network: Any, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: Any, stream: INetStream) -> None:
        return None

    async def listen(self, network: Any, multiaddr: Any) -> None:
        return None

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        return None


class Libp2pTransport:
    """A :class:`~gossipfl.transport.base.Transport` over a py-libp2p host.

    Create it with :meth:`open`. Peer ids are base58 libp2p peer IDs (``12D3KooW...``).
    Frames up to ``config.max_frame`` bytes travel on ``/gossipfl/gossip/1.0.0``; the
    ``peer`` of every ``Received`` is the Noise-authenticated sender.
    """

    def __init__(
        self,
        host: IHost,
        identity: Identity,
        allowlist: Allowlist,
        config: TransportConfig,
        security: GatedNoise,
        policing: Policing | None = None,
    ) -> None:
        self._host = host
        self._swarm: Any = host.get_network()
        self.identity = identity
        self._signatures = identity_signatures(identity)
        self.allowlist = allowlist
        self.config = config
        self._security = security
        self.stats = TransportStats()
        self._warnings = PeerWarnings()
        self._policing = policing or Policing(config.score, warnings=self._warnings)
        self._policing.on_ban = self._on_ban
        self._tasks = TaskGroup()
        self._yamux_limits = YamuxLimits(
            max_inbound_streams=config.max_inbound_streams,
            max_buffered=config.max_connection_buffer,
        )
        self._throttle = FrameThrottle(
            rate=config.frame_rate,
            burst=config.frame_burst,
            strike_after=config.frame_rate_strike,
            report=self.penalize,
        )
        self._requests = RequestGate(
            concurrent=config.max_requests_per_peer,
            rate=config.request_rate,
            burst=config.request_burst,
        )
        self._guards_early = False
        self._queue = EventQueue(config.max_buffered, config.max_buffered_per_peer)
        self._outbound = OutboundStreams(config, self._open_stream, self.stats)
        self._addresses: dict[str, list[multiaddr.Multiaddr]] = {}
        self._connected: set[str] = set()
        self._inbound: dict[str, int] = {}
        self._closing = False
        self._closed = trio.Event()
        self._relays = {_peer_of(a): a for a in config.relays}
        """Relays we reserve on: peer ID -> address."""
        self._relay = GatedRelay(
            host,
            allowlist=allowlist,
            refusal=self._policing.refusal,
            limits=relay_limits(config),
            hop=config.relay_service,
            relays=set(self._relays),
        )
        # STOP only: py-libp2p's CLIENT role would reserve on a relay before each dial.
        self._circuits = CircuitV2Transport(host, self._relay, RelayConfig(roles=RelayRole.STOP))
        self._reservations: dict[str, float] = {}
        """Relay peer ID -> when our reservation there expires (``time.time()`` scale)."""
        self._reservations_changed = trio.Event()
        self._relay_lost: dict[str, trio.Event] = {}
        self._dialling: dict[str, trio.Lock] = {}
        self._circuits_dialled: set[str] = set()
        """Peers we reached through a relay ourselves (for who starts hole punching)."""
        self._leaving_relay: set[str] = set()
        self._dialback = Dialback(
            self._swarm,
            local_id=str(host.get_id()),
            request=self.request,
            remote_ips=self._remote_ips,
            askable=self._direct_peers,
        )
        self._holepunch: HolePunch | None = None
        if config.hole_punching:
            self._holepunch = HolePunch(
                host,
                allowlist=allowlist,
                refusal=self._policing.refusal,
                dial_timeout=min(config.dial_timeout, 5.0),
            )
            self._relay.on_reached = self._on_reached

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        *,
        identity: Identity | None = None,
        listen: Iterable[str] = DEFAULT_LISTEN,
        allow: Iterable[str] | Allowlist | None = None,
        config: TransportConfig | None = None,
    ) -> AsyncIterator[Libp2pTransport]:
        """Start a host listening on ``listen``; close everything on exit.

        Args:
            identity: our key pair (see :mod:`gossipfl.identity`); a throwaway one if
                ``None``.
            listen: multiaddrs to listen on, e.g. ``/ip4/0.0.0.0/tcp/4001``; ``/tcp/0``
                picks a free port. Empty: dial out only.
            allow: peer IDs allowed to connect (either direction); ``None`` allows any
                peer. Recommended whenever peers run on several hosts.
            config: timeouts and limits (:class:`TransportConfig`).

        Raises:
            ConfigError: an address that does not parse, or that we cannot listen on.
        """
        config = config or TransportConfig()
        identity = identity or generate_identity()
        allowlist = allow if isinstance(allow, Allowlist) else Allowlist(allow)
        if config.relay_service and allowlist.is_open:
            raise ConfigError(
                "relay_service needs an allowlist: with an open one, any peer that reaches "
                "us could reserve slots and relay traffic through us"
            )
        for text in config.relays:
            relay = parse_multiaddr(text)[1]
            if relay is not None and not allowlist.allows(relay):
                raise ConfigError(
                    f"relay {text!r} is not on our allowlist: its connection would be refused"
                )
        listen_addrs = [cls._listen_multiaddr(text) for text in listen]
        workarounds.check_ports_free(listen_addrs)
        policing = Policing(config.score)
        security = GatedNoise(
            identity.key_pair,
            allowlist,
            batch=config.batch_noise,
            refusal=policing.refusal,
            notices=RefusalNotices(),
        )
        manager = resource_manager(config)
        host = new_host(
            key_pair=identity.key_pair,
            sec_opt=security_options(security),
            # Yamux only: Mplex (py-libp2p's fallback) has no flow control at all, and
            # our receive limits are Yamux's.
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            connection_config=workarounds.connection_config(
                max_connections=config.max_connections, dial_timeout=config.dial_timeout
            ),
            listen_addrs=listen_addrs or None,
            resource_manager=manager,
        )
        install_resource_manager(host.get_network(), manager)
        transport = cls(host, identity, allowlist, config, security, policing)
        transport._guards_early = hook_upgrader(host.get_network(), transport._guard_connection)
        # py-libp2p's host.run() yields inside two nurseries, so an exception raised in
        # the body of `async with` would reach the caller wrapped in three levels of
        # ExceptionGroup. We never pass the body's exception into host.run(): we close
        # the host ourselves and exit host.run() cleanly, so errors come out unwrapped.
        # `guard` is entered before host.run() so that it can shield the exit of
        # host.run()'s own scopes (cancel scopes must be exited in LIFO order).
        # Our own background jobs (stream resets, closing a banned peer's connections)
        # start first, so that they are ready for the first connection.
        with trio.CancelScope() as guard:
            async with contextlib.AsyncExitStack() as stack:
                nursery = await stack.enter_async_context(trio.open_nursery())
                await nursery.start(transport._tasks.run)
                await stack.enter_async_context(host.run(listen_addrs))
                if config.relay_service or config.relays:
                    await stack.enter_async_context(background_trio_service(transport._relay))
                if transport._holepunch is not None:
                    service = background_trio_service(transport._holepunch)
                    await stack.enter_async_context(service)
                try:
                    await transport._start(listen_addrs)
                    yield transport
                finally:
                    guard.shield = True
                    await transport.aclose()
                    await stack.aclose()

    @staticmethod
    def _listen_multiaddr(text: str) -> multiaddr.Multiaddr:
        normalized, peer = parse_multiaddr(text)
        if peer is not None:
            raise ConfigError(f"listen address {text!r} must not name a peer (/p2p/...)")
        return multiaddr.Multiaddr(normalized)

    async def _start(self, listen_addrs: Sequence[multiaddr.Multiaddr]) -> None:
        swarm = self._swarm
        listening = {str(a) for a in getattr(swarm, "listeners", {})}
        failed = [str(a) for a in listen_addrs if str(a) not in listening]
        if failed:
            raise ConfigError(
                f"cannot listen on {', '.join(failed)}: the port is in use, or the address "
                "is not one of this host's"
            )
        await workarounds.stop_auto_connector(swarm)
        workarounds.disable_dial_retries(swarm)
        workarounds.keep_relayed_connections(swarm, lambda conn: path_of(conn).relayed)
        if not self._guards_early:
            logger.warning(
                "py-libp2p's transport upgrader is not as expected: Yamux receive limits are "
                "installed only once a connection is reported, after its first frames"
            )
        swarm.register_notifee(_ConnectionEvents(self))
        self._host.set_stream_handler(
            TProtocol(GOSSIP_PROTOCOL),
            workarounds.guard_handler(self._serve, protocol=GOSSIP_PROTOCOL),
        )
        logger.info(
            "libp2p transport up: peer %s listening on %s (allowlist: %s)",
            self.local_id,
            ", ".join(self.listen_addrs) or "nothing (dial-out only)",
            "open" if self.allowlist.is_open else f"{len(self.allowlist)} peers",
        )
        if self.config.relay_service:
            c = self.config
            logger.info(
                "relaying for allowlisted peers: up to %d reservations, %d circuits per "
                "peer, %d MiB and %d s per circuit",
                c.relay_max_reservations,
                c.relay_max_circuits,
                c.relay_circuit_data >> 20,
                c.relay_circuit_duration,
            )
        for relay, address in self._relays.items():
            self._tasks.spawn(
                functools.partial(self._keep_reservation, relay, address), "relay reservation"
            )
        self.set_request_handler(
            DIALBACK_PROTOCOL,
            self._dialback.answer,
            max_request=MAX_REQUEST,
            max_reply=MAX_REPLY,
            timeout=DIAL_TIMEOUT + 2.0,
        )
        if self.config.reachability_check:
            ports = self._listen_ports()
            self._tasks.spawn(functools.partial(self._dialback.watch, ports), "reachability")

    async def aclose(self) -> None:
        """Close every connection (concurrently), then the host. Idempotent.

        Frames already sent are delivered first: each outbound stream is half-closed and
        we wait (at most ``config.close_timeout``) for the receiver to finish reading it.
        Then all connections close together (~0.2 s, whatever their number)."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            with trio.move_on_after(5.0) as scope:
                await self._outbound.aclose(timeout=self.config.close_timeout)
                await workarounds.close_connections(self._swarm)
                await self._host.close()
            if scope.cancelled_caught:
                logger.warning("closing the libp2p host took more than 5 s; gave up waiting")
        finally:
            self._tasks.close()
            self._queue.close()
            self._closed.set()

    # ----------------------------------------------------------------- identity

    @property
    def local_id(self) -> PeerId:
        return str(self._host.get_id())

    @property
    def signatures(self) -> PeerSignatures:
        """Signatures by our identity, checked by others against our peer ID."""
        return self._signatures

    @property
    def listen_addrs(self) -> list[str]:
        """Our full multiaddrs (ending in ``/p2p/<our id>``), ready to give to other peers.

        A wildcard listen address (``/ip4/0.0.0.0``, ``/ip6/::``) is not dialable; it is
        listed as the concrete addresses of this machine's interfaces instead. Then come
        our circuit addresses, one per relay of ``config.relays``
        (``<relay>/p2p-circuit/p2p/<our id>``): they reach us once our reservation there
        holds (:attr:`reservations`), which the transport keeps trying to make."""
        suffix = f"/p2p/{self.local_id}"
        out: list[str] = []
        for addr in self._host.get_transport_addrs():
            for concrete in _expand_wildcard(addr):
                text = str(concrete)
                text = text if text.endswith(suffix) else text + suffix
                if text not in out:
                    out.append(text)
        out.extend(circuit_address(a, self.local_id) for a in self._relays.values())
        return out

    @property
    def advertised_addrs(self) -> list[str]:
        """The addresses that reach us now, for others to dial: :attr:`listen_addrs`
        without the circuits through relays that hold no reservation of ours (yet, or
        any more). A peer tells the others these (its membership record), so that none
        dials a circuit that cannot reach it; :meth:`reservations_changed` says when
        they may have changed."""
        unreserved = {
            circuit_address(address, self.local_id)
            for relay, address in self._relays.items()
            if relay not in self._reservations
        }
        return [a for a in self.listen_addrs if a not in unreserved]

    async def reservations_changed(self) -> None:
        """Return at the next change of :attr:`reservations` (made, renewed or lost)."""
        await self._reservations_changed.wait()

    @property
    def reservations(self) -> dict[PeerId, float]:
        """The relays (of ``config.relays``) we hold a reservation on, with when it
        expires (``time.time()`` scale; it is renewed well before)."""
        return dict(self._reservations)

    async def wait_for_reservations(self) -> None:
        """Return once we hold a reservation on every relay of ``config.relays``."""
        while len(self._reservations) < len(self._relays):
            await self._reservations_changed.wait()

    def path(self, peer: PeerId) -> Path | None:
        """How we are connected to ``peer`` now: ``Path()`` (str: ``"direct"``) if any of
        its connections is direct (py-libp2p opens new streams on those first), else
        ``Path(relay)`` (``"relayed via <relay id>"``); ``None`` if not connected."""
        try:
            conns = self._live_connections(ID.from_base58(peer))
        except Exception:
            return None
        paths = [path_of(conn) for conn in conns]
        if not paths:
            return None
        return next((p for p in paths if not p.relayed), paths[0])

    @property
    def peer_paths(self) -> dict[PeerId, Path]:
        """:meth:`path` of every connected peer."""
        return {peer: path for peer in self._connected if (path := self.path(peer)) is not None}

    @property
    def host(self) -> IHost:
        """The py-libp2p host itself, for services that run beside the transport on the
        same connections (the peer daemon's DHT and mDNS discovery). Its connections pass
        the same allowlist gate."""
        return self._host

    @property
    def connected_peers(self) -> set[PeerId]:
        return set(self._connected)

    @property
    def refused_peers(self) -> int:
        """Connections refused at the handshake because of the allowlist."""
        return self._security.refused

    @property
    def refused_banned(self) -> int:
        """Connections refused at the handshake because the peer was banned."""
        return self._security.refused_banned

    # ------------------------------------------------------------------- relays

    async def _keep_reservation(self, relay: str, address: str) -> None:
        """Hold a reservation on ``relay`` for the transport's lifetime: make it (retrying
        with backoff while the relay is down or refuses), renew it at half-life, and make
        it again as soon as the connection to the relay drops (a restarted relay forgets
        its reservations)."""
        self.add_peer_address(relay, address)
        delay = 1.0
        while not self._closing:
            lost = self._relay_lost[relay] = trio.Event()
            try:
                await self.connect(relay)
                expires = await reserve(
                    self._host, ID.from_base58(relay), timeout=self.config.dial_timeout
                )
            except TransportClosed:
                return
            except (PeerUnreachable, RelayError) as exc:
                self._set_reservation(relay, None)
                self._warnings.warn(
                    logger,
                    relay,
                    "no reservation on relay %s (%s); retrying in %g s",
                    relay,
                    exc,
                    delay,
                )
                await trio.sleep(delay)
                delay = min(2 * delay, self.config.relay_retry_max)
                continue
            if relay not in self._reservations:
                logger.info(
                    "reserved a slot on relay %s: reachable at %s",
                    relay,
                    circuit_address(address, self.local_id),
                )
            self._set_reservation(relay, expires)
            delay = 1.0
            with trio.move_on_after(renew_in(expires)):
                await lost.wait()

    def _set_reservation(self, relay: str, expires: float | None) -> None:
        if expires is None:
            if self._reservations.pop(relay, None) is not None:
                logger.info("lost our reservation on relay %s", relay)
        else:
            self._reservations[relay] = expires
        self._reservations_changed.set()
        self._reservations_changed = trio.Event()

    async def _dial_circuit(self, peer: str, address: multiaddr.Multiaddr) -> None:
        """Connect to ``peer`` through the relay of circuit ``address`` (stored without
        its final ``/p2p/<peer>``, as every address is)."""
        address = multiaddr.Multiaddr(f"{address}/p2p/{peer}")
        relay_text, relay = relay_of(address)
        if relay in (self.local_id, peer):
            raise PeerUnreachable(f"{address} would relay through {relay} itself")
        if not relay_text.startswith("/p2p/"):  # else we must know the relay's address
            self.add_peer_address(relay, relay_text)
        try:
            await self.connect(relay)
        except PeerUnreachable as exc:
            raise PeerUnreachable(f"relay of {address}: {exc}") from exc
        try:
            with trio.fail_after(self.config.dial_timeout):
                await self._circuits.dial(address)
        except trio.TooSlowError:
            raise PeerUnreachable(
                f"dialing peer {peer} at {address} timed out after {self.config.dial_timeout:g} s"
            ) from None
        except Exception as exc:
            raise PeerUnreachable(
                f"cannot reach peer {peer} at {address}: {describe_failure(exc)}"
            ) from exc
        self._circuits_dialled.add(peer)

    # ------------------------------------------------------------ hole punching

    def _on_reached(self, peer: str) -> None:
        """A relayed connection from ``peer`` reached us: try to make it direct."""
        if self._holepunch is not None and not self._closing:
            dialled = peer in self._circuits_dialled
            self._holepunch.reached_through_relay(peer, we_dialled_it_too=dialled)

    def _on_direct(self, peer: str) -> None:
        """A direct connection to ``peer`` is up: leave its relayed ones (once)."""
        if peer in self._leaving_relay or self._closing:
            return
        self._leaving_relay.add(peer)
        self._tasks.spawn(functools.partial(self._leave_relay, peer), "leave a relay")

    async def _leave_relay(self, peer: str) -> None:
        """Move our stream to ``peer`` onto its direct connection, wait (at most
        ``RELAY_DRAIN`` s) until its relayed connections carry no stream (the peer moves
        its own), then close them. Nothing in flight is cut."""
        peer_id = ID.from_base58(peer)
        try:
            conns = self._live_connections(peer_id)
            relayed = [c for c in conns if path_of(c).relayed]
            if not relayed or all(path_of(c).relayed for c in conns):
                return
            via = ", ".join(sorted({str(path_of(c)) for c in relayed}))
            logger.info("peer %s: direct connection up; leaving the relayed one (%s)", peer, via)
            await self._outbound.retire(peer, timeout=self.config.close_timeout)
            with trio.move_on_after(RELAY_DRAIN):
                while any(not c.is_closed and c.get_streams() for c in relayed):
                    await trio.sleep(0.2)
            for conn in relayed:
                with contextlib.suppress(Exception):
                    await conn.close()
            self._circuits_dialled.discard(peer)
        finally:
            self._leaving_relay.discard(peer)

    # ------------------------------------------------------------- reachability

    @property
    def reachability(self) -> Reachability:
        """Whether peers can dial us, as the last dial-back check found
        (:mod:`~gossipfl.transport.libp2p.reachability`); with
        ``config.reachability_check``, checked soon after the first direct connection,
        then every 10 minutes."""
        return self._dialback.found

    def _listen_ports(self) -> list[int]:
        ports: list[int] = []
        for addr in self._host.get_transport_addrs():
            with contextlib.suppress(Exception):
                port = int(addr.value_for_protocol("tcp"))
                if port not in ports:
                    ports.append(port)
        return ports

    def _direct_peers(self) -> list[str]:
        """Directly connected peers, our relays first (whom to ask for a dial-back)."""
        direct = [p for p, path in self.peer_paths.items() if not path.relayed]
        return [p for p in self._relays if p in direct] + [
            p for p in direct if p not in self._relays
        ]

    def _remote_ips(self, peer: str) -> list[str]:
        conns = self._live_connections(ID.from_base58(peer))
        return [ip for conn in conns if (ip := remote_ip(conn)) is not None]

    # ---------------------------------------------------------- limits and bans

    def penalize(self, peer: PeerId, kind: str, detail: str = "") -> Ban | None:
        """Count a limit that ``peer`` broke, of ``kind`` (``"window"``, ``"bad_frame"``,
        ...: the set is open, see :class:`~gossipfl.peerscore.ScorePolicy`), and say why in
        ``detail``.

        The violation is counted (:attr:`violations`), logged at WARNING with the peer ID
        (rate-limited per peer and kind) and added to the peer's score. When the score
        reaches ``config.score.threshold`` the peer is banned: its connections are
        closed, and until the ban ends its handshakes and streams are refused and we do
        not dial it. Returns the ban this started, if any.

        Cheap and synchronous: callable from any task of the transport's trio run,
        including the runtime's frame handling and request handlers.
        """
        self.stats.violations += 1
        return self._policing.penalize(peer, kind, detail)

    @property
    def violations(self) -> dict[PeerId, dict[str, int]]:
        """Limits broken so far, by peer and kind (a copy, for metrics and tests)."""
        return self._policing.violations

    @property
    def banned_peers(self) -> Mapping[PeerId, Ban]:
        """The bans in force now, by peer."""
        return self._policing.scores.bans()

    def _on_ban(self, ban: Ban) -> None:
        self.stats.bans += 1
        self._tasks.spawn(functools.partial(self._disconnect_banned, ban.peer), "enforce a ban")

    async def _explain_refusal(self, peer: str) -> None:
        """Tell ``peer``, not on our allowlist, why we refuse it: one ``refusal`` on a
        gossip stream we open to it (it may not answer or read: at most
        :data:`REFUSAL_NOTICE_TIMEOUT`), then close its connection (see :mod:`.security`)."""
        notices = self._security.notices
        assert notices is not None
        text = f"peer {peer} is not on the allowlist of peer {self.local_id}"
        body = wire.frame(wire.encode(wire.Refusal(code=wire.RefusalCode.NOT_ALLOWED, text=text)))
        try:
            with trio.move_on_after(REFUSAL_NOTICE_TIMEOUT):
                stream = await self._host.new_stream(
                    ID.from_base58(peer), [TProtocol(GOSSIP_PROTOCOL)]
                )
                try:
                    await stream.write(body)
                except BaseException:
                    await reset_quietly(stream)
                    raise
                notices.sent += 1
                # Hang up once it has read it, not before: a connection closed at once
                # can drop the frame unread.
                await finish_stream(stream, timeout=REFUSAL_NOTICE_TIMEOUT)
        except Exception:  # it hung up first, or speaks no gossip: it was refused anyway
            logger.debug("telling refused peer %s why failed", peer, exc_info=True)
        finally:
            notices.end(peer)
            with trio.move_on_after(self.config.close_timeout) as scope:
                scope.shield = True
                with contextlib.suppress(Exception):
                    await self._host.disconnect(ID.from_base58(peer))

    async def _disconnect_banned(self, peer: str) -> None:
        """Close every connection with a peer that was just banned (concurrently)."""
        stale = self._outbound.forget(peer)
        try:
            conns = list(self._swarm.get_connections(ID.from_base58(peer)))
        except Exception:  # a peer ID reported by another layer that is not one
            conns = []

        async def close_one(conn: INetConn) -> None:
            with trio.move_on_after(2.0):
                try:
                    await conn.close()
                except Exception:
                    logger.debug("closing a connection of banned %s failed", peer, exc_info=True)

        async with trio.open_nursery() as nursery:
            if stale is not None:
                nursery.start_soon(reset_quietly, stale)
            for conn in conns:
                nursery.start_soon(close_one, conn)

    def _guard_connection(self, muxed_conn: object) -> ConnectionGuard | None:
        """Put a new connection under Yamux receive limits (idempotent). Called by the
        upgrader hook before the muxer starts, and again (a no-op, normally) when the
        swarm reports the connection. Never raises: a connection we cannot guard is
        logged, loudly, and kept."""
        try:
            guard = install_yamux_guards(
                muxed_conn,
                self._yamux_limits,
                report=self.penalize,
                spawn=self._tasks.spawn,
                stats=self.stats,
            )
        except Exception:
            logger.exception("installing Yamux receive limits failed")
            guard = None
        if guard is None:
            peer = str(getattr(muxed_conn, "peer_id", "?"))
            self._warnings.warn(
                logger,
                peer,
                "no receive limits on the connection with peer %s: its muxer (%s) is not "
                "py-libp2p's Yamux as this version of gossipfl knows it",
                peer,
                type(muxed_conn).__name__,
            )
        return guard

    # ---------------------------------------------------------------- addresses

    def add_peer_address(self, peer: PeerId, address: str) -> None:
        """Remember that ``peer`` can be reached at ``address`` (a multiaddr, with or
        without the ``/p2p/<peer>`` suffix). Kept for the transport's lifetime."""
        peer = parse_peer_id(peer)
        normalized, named = parse_multiaddr(address)
        if named is not None and named != peer:
            raise ConfigError(f"address {address!r} names peer {named}, not {peer}")
        addr = multiaddr.Multiaddr(normalized)
        if named is not None:
            addr = addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{named}"))
        if _host_and_port(addr)[0] in ("0.0.0.0", "::"):
            raise ConfigError(
                f"address {address!r} of peer {peer} is the wildcard address: fine to listen "
                "on, but it names no machine to dial (it would reach this one); use the "
                "address that peer's `gossipfl start` banner prints"
            )
        known = self._addresses.setdefault(peer, [])
        if addr not in known:
            known.append(addr)
        if not is_circuit(addr):  # the swarm cannot dial those: see connect()
            self._host.get_peerstore().add_addrs(ID.from_base58(peer), [addr], 0)

    def _is_own_address(self, addr: multiaddr.Multiaddr) -> bool:
        """Whether dialing ``addr`` reaches this host: one of our listen addresses, or
        loopback on one of our ports."""
        host, port = _host_and_port(addr)
        if port is None:
            return False
        for text in self.listen_addrs:
            mine_host, mine_port = _host_and_port(multiaddr.Multiaddr(text.split("/p2p/")[0]))
            if port == mine_port and (
                host == mine_host or host in ("127.0.0.1", "::1", "0.0.0.0", "::")
            ):
                return True
        return False

    def known_addresses(self, peer: PeerId) -> list[str]:
        return [str(a) for a in self._addresses.get(peer, [])]

    async def dial(self, address: str) -> PeerId:
        """Connect to the peer at ``address`` (which must end in ``/p2p/<peer id>``) and
        return its peer ID."""
        _, peer = parse_multiaddr(address, need_peer_id=True)
        assert peer is not None
        self.add_peer_address(peer, address)
        await self.connect(peer)
        return peer

    # -------------------------------------------------------------- connections

    def _check_open(self) -> None:
        if self._closing:
            raise TransportClosed(f"the libp2p transport of {self.local_id} is closed")

    def _live_connections(self, peer: ID, *, excluding: object = None) -> list[INetConn]:
        return [
            conn
            for conn in self._swarm.get_connections(peer)
            if conn is not excluding and not conn.is_closed
        ]

    async def connect(self, peer: PeerId) -> None:
        """Make sure a connection to ``peer`` exists, dialing its known addresses if not:
        the direct ones first, then, if they fail or there are none, its circuit
        addresses (``.../p2p-circuit/p2p/<peer>``) one after the other.

        Raises:
            PeerUnreachable: with the reason: not allowed, no known address, refused,
                timed out...
        """
        self._check_open()
        peer = parse_peer_id(peer)
        if peer == self.local_id:
            raise PeerUnreachable("cannot connect to ourselves")
        if not self.allowlist.allows(peer):
            raise PeerUnreachable(f"peer {peer} is not on our allowlist; not dialing it")
        refusal = self._policing.refusal(peer)
        if refusal is not None:
            raise PeerUnreachable(f"not dialing peer {peer}: {refusal}")
        peer_id = ID.from_base58(peer)
        if self._live_connections(peer_id):
            return
        # One dial per peer at a time: two tasks that both need the peer (the runtime's
        # sender and a membership request) would otherwise open two relay circuits.
        lock = self._dialling.setdefault(peer, trio.Lock())
        try:
            async with lock:
                if not self._live_connections(peer_id):
                    await self._dial(peer, peer_id)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._dialling.pop(peer, None)

    async def _dial(self, peer: str, peer_id: ID) -> None:
        addrs = list(self._addresses.get(peer, ()))
        if not addrs:
            with contextlib.suppress(Exception):
                addrs = list(self._host.get_peerstore().addrs(peer_id))
        if not addrs:
            raise PeerUnreachable(
                f"no known address for peer {peer}: add one with add_peer_address(), or "
                "dial its full multiaddr"
            )
        circuits = [a for a in addrs if is_circuit(a)]
        addrs = [a for a in addrs if not is_circuit(a)]
        failures: list[str] = []
        if addrs:
            try:
                await self._dial_direct(peer, peer_id, addrs)
                return
            except PeerUnreachable as exc:
                if not circuits:
                    raise
                failures.append(str(exc))
        for circuit in circuits:
            try:
                await self._dial_circuit(peer, circuit)
            except PeerUnreachable as exc:
                failures.append(str(exc))
                continue
            self._check_open()
            return
        raise PeerUnreachable("; ".join(failures))

    async def _dial_direct(self, peer: str, peer_id: ID, addrs: list[multiaddr.Multiaddr]) -> None:
        self._host.get_peerstore().add_addrs(peer_id, addrs, 0)
        workarounds.forget_failed_dial(self._swarm, peer_id)
        where = ", ".join(str(a) for a in addrs)
        try:
            with trio.fail_after(self.config.dial_timeout):
                await self._host.connect(PeerInfo(peer_id, addrs))
        except trio.TooSlowError:
            raise PeerUnreachable(
                f"dialing peer {peer} at {where} timed out after {self.config.dial_timeout:g} s"
            ) from None
        except Exception as exc:
            reason = describe_failure(exc)
            own = [str(a) for a in addrs if self._is_own_address(a)]
            if own:
                reason += (
                    f" ({', '.join(own)} is this peer's own address: the dial reached "
                    "ourselves, not the peer)"
                )
            elif "multiselect" in reason or "handshake" in reason:
                reason += (
                    " (the peer hung up during the handshake, as a peer does when we are "
                    "not on its allowlist)"
                )
            raise PeerUnreachable(f"cannot reach peer {peer} at {where}: {reason}") from exc
        finally:
            # A failed dial must not block the runtime's next attempt for 60 s.
            workarounds.forget_failed_dial(self._swarm, peer_id)
        if self._closing:
            raise TransportClosed(f"the libp2p transport of {self.local_id} is closed")

    async def disconnect(self, peer: PeerId) -> None:
        """Close our connections with ``peer`` (a no-op if there are none), after the frames
        already sent to it have been read (for at most ``config.close_timeout``)."""
        await self._outbound.close(peer, timeout=self.config.close_timeout)
        with contextlib.suppress(Exception):
            await self._host.disconnect(ID.from_base58(peer))

    def _on_connection(self, conn: INetConn) -> None:
        guard = self._guard_connection(conn.muxed_conn)  # done at the upgrade, normally
        if self.config.batch_noise:
            install_direct_yamux_reads(conn.muxed_conn)
        if guard is not None:
            guard.watch_reads()  # after the fast path replaced the body reader
        peer = str(conn.muxed_conn.peer_id)
        notices = self._security.notices
        if not self.allowlist.allows(peer) and notices is not None and peer in notices.pending:
            self._tasks.spawn(functools.partial(self._explain_refusal, peer), "explain a refusal")
            return
        if not self.allowlist.allows(peer):  # the handshake gate makes this unreachable
            self._warnings.warn(
                logger, peer, "connection with peer %s is not allowed; ignoring it", peer
            )
            return
        if self._policing.refusal(peer) is not None:  # banned while it was connecting
            self._tasks.spawn(functools.partial(self._disconnect_banned, peer), "enforce a ban")
            return
        path = path_of(conn)
        if peer in self._connected:
            logger.info("another connection to peer %s (%s)", peer, path)
            if not path.relayed and any(
                path_of(c).relayed for c in self._live_connections(conn.muxed_conn.peer_id)
            ):
                self._on_direct(peer)
        self._mark_connected(peer, path)

    def _mark_connected(self, peer: str, path: Path) -> None:
        if not path.relayed:
            self._dialback.direct_peer.set()
        if peer not in self._connected and not self._closing:
            self._connected.add(peer)
            logger.info("connected to peer %s (%s)", peer, path)
            self._queue.push(Connected(peer))

    def _on_disconnection(self, conn: INetConn) -> None:
        peer_id = conn.muxed_conn.peer_id
        peer = str(peer_id)
        lost = self._relay_lost.get(peer)
        if lost is not None:
            lost.set()  # renew our reservation there (it is lost with the connection)
        if self._live_connections(peer_id, excluding=conn):
            return  # another connection to this peer is still up
        self._outbound.forget(peer)
        self._circuits_dialled.discard(peer)
        if peer in self._connected:
            self._connected.discard(peer)
            logger.info("disconnected from peer %s", peer)
            self._queue.push(Disconnected(peer, "connection closed"))

    # ------------------------------------------------------- side request protocols

    def set_request_handler(
        self,
        protocol: str,
        handler: RequestHandler,
        *,
        max_request: int = 1 << 20,
        max_reply: int = 1 << 20,
        timeout: float = 5.0,
    ) -> None:
        """Answer one-frame requests on ``protocol`` (see
        :mod:`~gossipfl.transport.libp2p.requests`). ``handler`` gets the authenticated
        peer ID and the request; bad or slow requests are logged and dropped.

        Each peer may have ``config.max_requests_per_peer`` requests in progress (on all
        request protocols together) and make ``config.request_rate`` per second; beyond,
        its streams are reset and the excess counted against it (:meth:`penalize`)."""

        async def serve(stream: INetStream) -> None:
            peer = workarounds.remote_peer_of(stream)
            if (
                not self.allowlist.allows(peer)
                or self._closing
                or self._policing.refusal(peer) is not None
            ):
                await reset_quietly(stream)
                return
            refused = self._requests.enter(peer)
            if refused is not None:
                kind, detail = refused
                self.penalize(peer, kind, f"{protocol}: {detail}")
                await reset_quietly(stream)
                return
            try:
                await serve_request(
                    stream,
                    peer,
                    handler,
                    protocol=protocol,
                    max_request=max_request,
                    max_reply=max_reply,
                    timeout=timeout,
                    warnings=self._warnings,
                    report=self.penalize,
                )
            finally:
                self._requests.leave(peer)

        self._host.set_stream_handler(
            TProtocol(protocol), workarounds.guard_handler(serve, protocol=protocol)
        )

    async def request(
        self,
        peer: PeerId,
        protocol: str,
        payload: bytes,
        *,
        max_request: int = 1 << 20,
        max_reply: int = 1 << 20,
        timeout: float = 5.0,
    ) -> bytes:
        """Send one request on ``protocol`` to ``peer`` (connecting if needed); return the
        reply. Raises :class:`PeerUnreachable` on any failure, ``timeout`` included."""
        self._check_open()
        peer = parse_peer_id(peer)

        async def open_stream() -> INetStream:
            await self.connect(peer)
            try:
                return await self._host.new_stream(ID.from_base58(peer), [TProtocol(protocol)])
            except Exception as exc:  # py-libp2p's muxer and multiselect errors vary
                raise PeerUnreachable(
                    f"cannot open a {protocol} stream to peer {peer}: {describe_failure(exc)}"
                ) from exc

        return await send_request(
            open_stream,
            payload,
            peer=peer,
            protocol=protocol,
            max_request=max_request,
            max_reply=max_reply,
            timeout=timeout,
        )

    # ------------------------------------------------------------------- frames

    async def _open_stream(self, peer: str) -> INetStream:
        await self.connect(peer)
        try:
            with trio.fail_after(self.config.dial_timeout):
                return await self._host.new_stream(
                    ID.from_base58(peer), [TProtocol(GOSSIP_PROTOCOL)]
                )
        except trio.TooSlowError:
            raise PeerUnreachable(
                f"peer {peer} did not accept a {GOSSIP_PROTOCOL} stream within "
                f"{self.config.dial_timeout:g} s"
            ) from None
        except Exception as exc:
            raise PeerUnreachable(
                f"cannot open a {GOSSIP_PROTOCOL} stream to peer {peer}: {describe_failure(exc)}"
            ) from exc

    async def send(self, peer: PeerId, data: bytes) -> None:
        """Send one frame to ``peer``, connecting first if needed. Frames to one peer
        arrive in order, whole, or not at all.

        Raises:
            TransportClosed: after :meth:`aclose`.
            PeerUnreachable: the peer cannot be reached or stopped reading.
            ConfigError: ``data`` is empty or larger than ``config.max_frame``.
        """
        self._check_open()
        size = len(data)
        if not 1 <= size <= self.config.max_frame:
            raise ConfigError(
                f"cannot send a {size}-byte frame: frames hold 1 to {self.config.max_frame} "
                "bytes (TransportConfig.max_frame); split larger messages into chunks"
            )
        await self._outbound.send(peer, data)

    def events(self) -> EventQueue:
        """``Connected``, ``Received`` and ``Disconnected`` events, in order, for exactly one
        consumer. Ends after :meth:`aclose`."""
        return self._queue

    async def _serve(self, stream: INetStream) -> None:
        """Handler of inbound ``/gossipfl/gossip/1.0.0`` streams (guarded: never raises)."""
        peer = workarounds.remote_peer_of(stream)
        refusal = "not allowed" if not self.allowlist.allows(peer) else self._policing.refusal(peer)
        if refusal is not None or self._closing:
            self.stats.refused_streams += 1
            self._warnings.warn(
                logger,
                peer,
                "refused a gossip stream from peer %s: %s",
                peer,
                refusal or "we are closing",
            )
            await reset_quietly(stream)
            return
        open_streams = self._inbound.get(peer, 0)
        if open_streams >= self.config.max_streams_per_peer:
            self.stats.refused_streams += 1
            self.penalize(
                peer,
                "streams",
                f"opened a gossip stream while it had {open_streams} open (the limit)",
            )
            await reset_quietly(stream)
            return
        self._inbound[peer] = open_streams + 1
        try:
            if not getattr(stream.muxed_conn, "is_closed", False):
                # Connected before this stream's first frame
                self._mark_connected(peer, muxed_path(stream.muxed_conn))
            await serve_stream(
                stream,
                peer,
                config=self.config,
                queue=self._queue,
                stats=self.stats,
                warnings=self._warnings,
                throttle=self._throttle,
                report=self.penalize,
            )
        finally:
            left = self._inbound[peer] - 1
            if left:
                self._inbound[peer] = left
            else:
                del self._inbound[peer]


__all__ = ["DEFAULT_LISTEN", "Libp2pTransport", "describe_failure"]
