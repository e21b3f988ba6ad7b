"""Finding peers beyond the bootstrap list: mDNS on a LAN, a Kademlia DHT anywhere.

Both only *propose* peers: whatever they find becomes a candidate of the membership
exchange (:class:`~gossipfl.daemon.exchange.MembershipExchange`), which contacts it on
``/gossipfl/members/2.0.0``. A found peer therefore still has to pass the allowlist (at
the encrypted handshake) and be on the same network id before it is a member.

- **mDNS** (``[network] mdns = true``): py-libp2p's broadcaster and listener on our own
  zeroconf instance, bound to the interfaces we listen on (zeroconf bound to every
  interface did not find peers on loopback in our tests), under a service name derived
  from the network id so that two jobs on one LAN do not see each other. Zeroconf calls
  back on its own thread; the callback only hands the peer over to trio with
  ``TrioToken.run_sync_soon``, never touching trio state from that thread. We advertise
  the addresses other peers can dial: a wildcard listen address (``/ip4/0.0.0.0``, the
  default of ``gossipfl init``) is advertised as this machine's interface addresses.
  py-libp2p's broadcaster, given the host, would advertise ``0.0.0.0`` itself, and every
  peer that found us would dial 0.0.0.0, reach its *own* listener, and fail the
  handshake; addresses found that are wildcards are dropped for the same reason.
- **DHT** (``[network] dht = true``): every member runs py-libp2p's ``KadDHT`` in server
  mode over its connections, advertises itself as a provider of the job's key
  (``sha256("gossipfl/<network id>")``) and looks the key's providers up every
  ``interval``; providers and the peers met in the lookups' routing tables become
  candidates. One bootstrap peer is enough to enter the DHT.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import trio

logger = logging.getLogger(__name__)

DHT_INTERVAL = 10.0
"""Seconds between two DHT lookups of the job's providers."""


class Candidates(Protocol):
    def add_candidate(self, peer: str, address: str | None = None) -> None: ...


def job_key(network_id: str) -> str:
    """The DHT key of a job: hex of a sha2-256 multihash of its network id."""
    digest = hashlib.sha256(f"gossipfl/{network_id}".encode()).hexdigest()
    return "1220" + digest


def is_wildcard(address: str) -> bool:
    """Whether a multiaddr names the unspecified address (``0.0.0.0``, ``::``): fine to
    listen on, useless to dial (it reaches the dialer's own machine)."""
    parts = address.split("/")
    return len(parts) > 2 and parts[1] in ("ip4", "ip6") and parts[2] in ("0.0.0.0", "::")


def _full(addr: object, peer: str) -> str:
    text = str(addr)
    suffix = f"/p2p/{peer}"
    return text if text.endswith(suffix) else text + suffix


# ---------------------------------------------------------------------------- mDNS


def _interfaces(listen: list[str]) -> Any:
    """The interfaces zeroconf binds to: our concrete listen IPs, or all of them."""
    from zeroconf import InterfaceChoice

    ips = []
    for text in listen:
        parts = text.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6") and parts[2] not in ("0.0.0.0", "::"):
            ips.append(parts[2])
        else:
            return InterfaceChoice.All
    return ips or InterfaceChoice.All


async def run_mdns(transport: Any, candidates: Candidates, network_id: str) -> None:
    """Advertise this peer by mDNS and propose every peer found; runs until cancelled."""
    from libp2p.discovery.mdns.broadcaster import PeerBroadcaster
    from libp2p.discovery.mdns.listener import PeerListener
    from libp2p.discovery.mdns.utils import stringGen
    from zeroconf import Zeroconf

    token = trio.lowlevel.current_trio_token()
    send, receive = trio.open_memory_channel[tuple[str, list[str]]](256)
    # DNS-SD service names hold at most 15 bytes: "p2p-" and 10 hex digits of the id.
    fingerprint = hashlib.sha256(network_id.encode()).hexdigest()[:10]
    service_type = f"_p2p-{fingerprint}._udp.local."
    host = transport.host
    me = str(host.get_id())

    def hand_over(peer: str, addrs: list[str]) -> None:  # runs in trio's thread
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
            send.send_nowait((peer, addrs))

    class Listener(PeerListener):
        """Calls back instead of using py-libp2p's process-wide discovery singleton."""

        def add_service(self, zc: Any, type_: str, name: str) -> None:
            if name == self.service_name:
                return
            info = self._get_service_info_with_retry(zc, type_, name)
            found = self._extract_peer_info(info) if info else None
            if found is not None and str(found.peer_id) != me:
                peer = str(found.peer_id)
                addrs = [_full(a, peer) for a in found.addrs if not is_wildcard(str(a))]
                if addrs:
                    token.run_sync_soon(hand_over, peer, addrs)

        def update_service(self, zc: Any, type_: str, name: str) -> None:
            self.add_service(zc, type_, name)

    # transport.listen_addrs lists a wildcard listen address as the interfaces' addresses,
    # and our circuit addresses (a relay's address, not ours: not for the local network)
    listen = [
        a.split("/p2p/")[0]
        for a in transport.listen_addrs
        if not is_wildcard(a) and "/p2p-circuit" not in a
    ]
    port = next((int(a.split("/tcp/")[1].split("/")[0]) for a in listen if "/tcp/" in a), 0)

    def start() -> tuple[Any, Any, Any]:
        zc = Zeroconf(interfaces=_interfaces(listen))
        name = f"{stringGen(32)}.{service_type}"
        # host=None: with the host, py-libp2p advertises its raw (wildcard) addresses
        broadcaster = PeerBroadcaster(zc, service_type, name, me, port, listen, host=None)
        broadcaster.register()
        listener = Listener(host.get_peerstore(), zc, service_type, name)
        return zc, broadcaster, listener

    zc, broadcaster, listener = await trio.to_thread.run_sync(start)
    logger.info("mDNS discovery on %s", service_type)
    try:
        async with receive:
            async for peer, addrs in receive:
                logger.info("mDNS found peer %s", peer)
                for address in addrs:
                    candidates.add_candidate(peer, address)
    finally:

        def stop() -> None:
            for step in (broadcaster.unregister, listener.stop, zc.close):
                try:
                    step()
                except Exception:
                    logger.debug("stopping mDNS failed", exc_info=True)

        # zeroconf says goodbye on the network as it closes (~1 s): wait a little, then
        # leave its thread behind, so that stopping a peer stays well under a second.
        with trio.CancelScope(shield=True), trio.move_on_after(0.3):
            await trio.to_thread.run_sync(stop, abandon_on_cancel=True)  # type: ignore[call-arg]


# ----------------------------------------------------------------------------- DHT


async def run_dht(
    transport: Any,
    candidates: Candidates,
    network_id: str,
    *,
    interval: float = DHT_INTERVAL,
    on_lookup: Callable[[int], None] | None = None,
) -> None:
    """Take part in the job's DHT and propose the peers it finds; runs until cancelled."""
    from libp2p.kad_dht import DHTMode, KadDHT
    from libp2p.peer.id import ID
    from libp2p.tools.anyio_service.context import background_trio_service

    host = transport.host
    me = str(host.get_id())
    # Every peer of a test (and of a LAN) shares one subnet; py-libp2p's default keeps
    # at most two peers per subnet and bucket, which would hide the rest of the job.
    dht = KadDHT(host, DHTMode.SERVER, max_peers_per_subnet=0)
    key = job_key(network_id)
    async with background_trio_service(dht):
        while True:
            for peer in sorted(transport.connected_peers):
                try:
                    await dht.add_peer(ID.from_base58(peer), skip_server_mode_check=True)
                except Exception:
                    logger.debug("DHT: cannot add %s to the routing table", peer, exc_info=True)
            found = 0
            try:
                with trio.move_on_after(interval):
                    await dht.provide(key)
                    providers = await dht.find_providers(key, count=1000)
                    for info in providers:
                        peer = str(info.peer_id)
                        if peer != me:
                            found += 1
                            for addr in info.addrs or [None]:
                                candidates.add_candidate(peer, _full(addr, peer) if addr else None)
                    for peer_id in dht.routing_table.get_peer_ids():
                        peer = str(peer_id)
                        if peer != me:
                            addrs = host.get_peerstore().addrs(peer_id)
                            for addr in addrs or [None]:
                                candidates.add_candidate(peer, _full(addr, peer) if addr else None)
            except Exception:  # py-libp2p's DHT raises assorted errors on churn
                logger.debug("DHT lookup failed", exc_info=True)
            if on_lookup is not None:
                on_lookup(found)
            await trio.sleep(interval)


__all__ = ["DHT_INTERVAL", "is_wildcard", "job_key", "run_dht", "run_mdns"]
