"""Every py-libp2p 0.8.1 behaviour we work around at the host level, in one place.

Each function names the pitfall it handles; ``tests/test_libp2p_workarounds.py`` holds a
test per pitfall that shows the library's behaviour (so it fails, and someone revisits the
workaround, when an upgrade changes it) next to one that shows ours.

=============================  ==========================================================
pitfall                        workaround
=============================  ==========================================================
~250 ms per connect            :func:`connection_config`: ``max_connections_per_peer=1``
                               ends the dial's happy-eyeballs wait at the first success
handler exception kills host   :func:`guard_handler`
failed dial cached 60 s        :func:`forget_failed_dial` before each deliberate dial
dial retried with backoff      :func:`disable_dial_retries`: the runtime backs off itself
serial shutdown (~0.2 s/conn)  :func:`close_connections`
auto-connector dials anyone    :func:`stop_auto_connector`
in the peerstore every 30 s
listeners use SO_REUSEPORT:    :func:`check_ports_free` before listening
a second host on the same port
starts and takes half the
connections
plaintext security offered     :mod:`gossipfl.transport.libp2p.security` (Noise only)
Mplex offered (no flow         ``muxer_opt``: Yamux only (``Libp2pTransport.open``)
control)
Yamux receive window not       :mod:`gossipfl.transport.libp2p.guards`: windows, streams
enforced, streams uncapped     and buffered bytes per connection
resource manager: a global     :mod:`gossipfl.transport.libp2p.resources`: semaphore,
stream semaphore that queues,  degradation and breaker off; our limits
limits that degrade
slow Noise/Yamux paths         :mod:`gossipfl.transport.libp2p.fastpath`
5 s unread-stream stall        :func:`~gossipfl.transport.libp2p.fastpath.write_yamux`
                               waits for the window up to ``write_timeout``, and our
                               readers drain streams into ``events()`` promptly
=============================  ==========================================================
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetStream
from libp2p.network.config import ConnectionConfig, RetryConfig

from gossipfl.errors import ConfigError

logger = logging.getLogger(__name__)

StreamHandler = Callable[[INetStream], Awaitable[None]]


def connection_config(*, max_connections: int, dial_timeout: float) -> ConnectionConfig:
    """py-libp2p's connection settings as we need them.

    ``max_connections_per_peer=1``: the swarm dials a peer's addresses "happy eyeballs"
    style and waits 250 ms before giving up on the first address, unless it already holds
    ``max_connections_per_peer`` connections. With the default of 3 every connect costs
    ~250 ms; with 1 it returns as soon as the first connection is up (~7 ms on loopback).

    The connection manager's watermarks are set so that they validate for any
    ``max_connections`` (the defaults assume at least 300).
    """
    return ConnectionConfig(
        max_connections=max_connections,
        min_connections=0,
        low_watermark=0,
        high_watermark=max_connections,
        max_connections_per_peer=1,
        dial_timeout=dial_timeout,
        outbound_upgrade_timeout=dial_timeout,
        inbound_upgrade_timeout=dial_timeout,
    )


def disable_dial_retries(swarm: Any) -> None:
    """A failed dial is retried three times with backoff inside py-libp2p (~0.7 s), then
    reported. Our runtime has its own per-peer backoff with jitter, so a dial should fail
    at once and say why."""
    if hasattr(swarm, "retry_config"):
        swarm.retry_config = RetryConfig(max_retries=0)
    else:  # pragma: no cover - depends on the library version
        logger.debug("swarm has no retry_config; dial retries left as they are")


def forget_failed_dial(swarm: Any, peer_id: Any) -> None:
    """After a dial to a peer fails on all its addresses, py-libp2p refuses every dial to
    it for 60 s without trying ("negative cache"). A peer that restarts, or whose address
    we just learned, would be unreachable for a minute: evict it before dialing."""
    cache = getattr(swarm, "_negative_peer_cache", None)
    evict = getattr(cache, "evict", None)
    if callable(evict):
        evict(str(peer_id))
    elif cache is not None:  # pragma: no cover - depends on the library version
        logger.debug("the swarm's negative dial cache has no evict(); left as is")


def keep_relayed_connections(swarm: Any, is_relayed: Callable[[Any], bool]) -> None:
    """With ``max_connections_per_peer=1`` (see :func:`connection_config`), the swarm
    closes a peer's older connection as soon as a second one arrives (after a 20 s grace).
    When a hole punch brings a direct connection beside a relayed one, that cuts the
    relayed connection with frames in flight on it. The transport retires relayed
    connections itself, gracefully; this leaves the swarm's trimming to peers without
    one."""
    original = getattr(swarm, "_trim_connections", None)
    if not callable(original):  # pragma: no cover - depends on the library version
        logger.debug("swarm has no _trim_connections; relayed connections may be cut")
        return

    def trim(peer_id: Any) -> None:
        conns = swarm.connections.get(peer_id, [])
        if any(is_relayed(conn) for conn in conns):
            return
        original(peer_id)

    swarm._trim_connections = trim


async def stop_auto_connector(swarm: Any) -> None:
    """The swarm's auto-connector dials peers from the peerstore every 30 s (and on every
    disconnect) while the host holds fewer than ``low_watermark`` connections. Whom a
    gossipfl peer connects to is decided by the topology, so we switch it off."""
    connector = getattr(swarm, "auto_connector", None)
    stop = getattr(connector, "stop", None)
    if callable(stop):
        await stop()
    else:  # pragma: no cover - depends on the library version
        logger.debug("swarm has no auto-connector to stop")


async def close_connections(swarm: Any) -> int:
    """Close every connection of ``swarm`` concurrently; return how many there were.

    ``Swarm.close`` closes connections one after the other, and each close sleeps 0.2 s
    in total (Yamux and the swarm connection each wait 0.1 s "to let handlers see the
    reset"), so a peer with 20 neighbours took 4 s to shut down. Closing them together
    takes ~0.2 s whatever their number; ``Swarm.close`` then finds nothing left to close.
    """
    connections = getattr(swarm, "connections", {})
    doomed = [conn for conns in list(connections.values()) for conn in list(conns)]
    if not doomed:
        return 0

    async def close_one(conn: Any) -> None:
        try:
            await conn.close()
        except Exception:  # shutting down: a connection that fails to close is gone anyway
            logger.debug("closing a connection failed", exc_info=True)

    async with trio.open_nursery() as nursery:
        for conn in doomed:
            nursery.start_soon(close_one, conn)
    return len(doomed)


def check_ports_free(addresses: Iterable[multiaddr.Multiaddr]) -> None:
    """Refuse to listen on a TCP port that another socket already listens on.

    py-libp2p opens its listeners with ``SO_REUSEPORT`` (for hole punching), so a second
    process listening on the same port does not fail: it starts, and the kernel hands it
    a share of the incoming connections. Two peers started with the same config on one
    machine would each see some of the other's neighbours. We try a plain bind first
    (``SO_REUSEADDR`` only, as any server does), which fails if the port is taken.
    """
    for addr in addresses:
        protocols = {p.name for p in addr.protocols()}
        if "tcp" not in protocols:
            continue
        port = int(addr.value_for_protocol("tcp") or 0)
        if port == 0:
            continue
        if "ip6" in protocols:
            family, host = socket.AF_INET6, str(addr.value_for_protocol("ip6"))
        elif "ip4" in protocols:
            family, host = socket.AF_INET, str(addr.value_for_protocol("ip4"))
        else:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                hint = (
                    " (is another peer already running with this configuration?)"
                    if exc.errno == errno.EADDRINUSE
                    else " (is it an address of this machine?)"
                    if exc.errno == errno.EADDRNOTAVAIL
                    else ""
                )
                raise ConfigError(f"cannot listen on {addr}: {exc.strerror or exc}{hint}") from exc


def remote_peer_of(stream: INetStream) -> str:
    """The authenticated peer ID at the other end of ``stream`` (``"?"`` if unknown)."""
    try:
        return str(stream.muxed_conn.peer_id)
    except Exception:
        return "?"


def guard_handler(handler: StreamHandler, *, protocol: str) -> StreamHandler:
    """Wrap a stream handler so that nothing it raises reaches py-libp2p.

    py-libp2p runs stream handlers in the connection's nursery; an exception escaping one
    propagates up through the swarm's service manager and takes the whole host down (all
    connections, the listener) because of one peer's bytes. Our handlers catch what they
    expect; this is the backstop for what they do not: log it with the peer ID, reset the
    stream, carry on. Cancellation still propagates.
    """

    @functools.wraps(handler)
    async def guarded(stream: INetStream) -> None:
        try:
            await handler(stream)
        except Exception:
            logger.exception(
                "handler for %s failed on a stream from peer %s; stream reset",
                protocol,
                remote_peer_of(stream),
            )
            try:
                await stream.reset()
            except Exception:
                logger.debug("resetting the stream failed", exc_info=True)

    return guarded
