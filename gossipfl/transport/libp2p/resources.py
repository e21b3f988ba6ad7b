"""py-libp2p's resource manager, configured on purpose.

``new_host`` creates a resource manager when it is given none (``new_resource_manager()``
with the library's defaults). Left as it comes, it has three properties we do not want:

- ``Swarm.set_resource_manager`` installs a stream *semaphore* (``max_streams`` slots,
  10 000 by default) shared by every peer: an inbound stream holds a slot for its whole
  life, and a new stream, inbound or outbound, *queues* when none is free. One peer
  holding streams open could make every other peer's streams, and our own sends, wait.
  We switch the semaphore off: the resource manager's own stream count (which refuses at
  once instead of queueing) stays as a backstop, and the real stream limit is per
  connection, where it cannot starve anyone else
  (:mod:`~gossipfl.transport.libp2p.guards`: ``max_inbound_streams``).
- "graceful degradation" *lowers* the limits when they are reached: a peer flooding us
  with connections would shrink every honest peer's share. Off.
- a circuit breaker that refuses every connection for 60 s after 5 internal errors:
  a failure of one would become an outage for all. Off.

What we keep, with limits derived from :class:`~gossipfl.transport.libp2p.config.
TransportConfig`:

- connections: ``max_connections`` established in each direction and in total (the
  connection manager enforces the same number; this is the second line), at most
  :data:`MAX_CONNECTIONS_PER_PEER` at once with one peer (we dial one, but a
  simultaneous dial from both sides briefly makes two), and ``2 * max_connections``
  connection slots in the manager's own count (it counts a connection twice while its
  handshake is under way);
- a per-peer connection *rate* (``connection_rate`` per second, bursts of
  ``connection_burst``): a peer that reconnects in a loop is refused after its
  handshake instead of costing us a full connection setup each time;
- streams: ``max_connections * max_inbound_streams * 2`` in all, never reached when the
  per-connection caps hold.

Metrics (a per-peer table nobody reads) are off too.
"""

from __future__ import annotations

import logging
from typing import Any

from libp2p.rcmgr import ResourceLimits, ResourceManager
from libp2p.rcmgr.connection_limits import ConnectionLimits

from gossipfl.transport.libp2p.config import TransportConfig

logger = logging.getLogger(__name__)

MAX_CONNECTIONS_PER_PEER = 4


def resource_manager(config: TransportConfig) -> ResourceManager:
    """The resource manager for a host with ``config``'s limits (see the module
    docstring for each choice)."""
    return ResourceManager(
        limits=ResourceLimits(
            max_connections=2 * config.max_connections,
            max_streams=config.max_connections * config.max_inbound_streams * 2,
        ),
        connection_limits=ConnectionLimits(
            max_pending_inbound=None,  # not enforced by py-libp2p 0.8.1's swarm anyway
            max_pending_outbound=None,
            max_established_inbound=config.max_connections,
            max_established_outbound=config.max_connections,
            max_established_per_peer=MAX_CONNECTIONS_PER_PEER,
            max_established_total=config.max_connections,
        ),
        enable_metrics=False,
        enable_connection_pooling=False,
        enable_memory_pooling=False,
        enable_circuit_breaker=False,
        enable_graceful_degradation=False,
        enable_prometheus=False,
        enable_rate_limiting=True,
        connections_per_peer_per_sec=config.connection_rate,
        burst_connections_per_peer=float(config.connection_burst),
    )


def install_resource_manager(swarm: Any, manager: ResourceManager) -> bool:
    """Make ``manager`` the swarm's resource manager *without* the stream semaphore.

    ``new_host`` (and ``BasicHost``) call ``set_resource_manager(manager)``, which turns
    the semaphore on; we call it again with ``enable_stream_semaphore=False``. Returns
    whether the swarm now has ``manager`` and no semaphore (``False``: py-libp2p changed,
    and ``test_our_host_has_our_resource_manager_without_the_stream_semaphore`` fails).
    """
    setter = getattr(swarm, "set_resource_manager", None)
    if not callable(setter):
        return False
    try:
        setter(manager, enable_stream_semaphore=False)
    except TypeError:
        setter(manager)
    ok = (
        getattr(swarm, "_resource_manager", None) is manager
        and getattr(swarm, "_stream_semaphore", None) is None
    )
    if not ok:
        logger.warning(
            "py-libp2p's stream semaphore is still on: one peer holding many streams open "
            "can make other peers' streams and our sends wait"
        )
    return ok


__all__ = ["MAX_CONNECTIONS_PER_PEER", "install_resource_manager", "resource_manager"]
