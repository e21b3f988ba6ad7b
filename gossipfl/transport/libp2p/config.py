"""Settings of the libp2p transport, and the protocol id it speaks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gossipfl.errors import ConfigError
from gossipfl.peerscore import ScorePolicy
from gossipfl.transport.libp2p.allowlist import parse_multiaddr

GOSSIP_PROTOCOL = "/gossipfl/gossip/1.0.0"
"""Model frames travel on long-lived streams of this protocol, one per direction. The
version is bumped on any incompatible change of the framing."""

MiB = 1 << 20
GiB = 1 << 30
YAMUX_WINDOW = 256 * 1024
"""Yamux's initial receive window per stream (the spec's and py-libp2p's)."""


@dataclass(frozen=True)
class TransportConfig:
    """How the libp2p transport behaves. Times are in seconds, sizes in bytes.

    The defaults suit peers on a LAN or the internet. Tests shrink the timeouts.
    """

    max_frame: int = 16 * MiB
    """Largest frame sent or accepted. A peer announcing a larger one is refused before
    anything is allocated and its stream is reset. Keep it at or above the wire layer's
    largest message (``gossipfl.wire.Limits.max_frame``, also 16 MiB by default); larger
    models travel in several chunk messages."""
    read_timeout: float = 30.0
    """Once a frame has started, each read must make progress within this time, or the
    sender is considered frozen (e.g. SIGSTOPped) and its stream is reset. Idle time
    *between* frames is not limited: liveness is the runtime's heartbeats' job."""
    write_timeout: float = 30.0
    """A ``send`` that cannot push its frame within this time (the receiver stopped
    reading, the link died silently) fails with ``PeerUnreachable``."""
    dial_timeout: float = 10.0
    """How long ``connect`` may take, Noise and Yamux handshakes included."""
    close_timeout: float = 0.5
    """On ``aclose``/``disconnect``, how long to wait for receivers to finish reading what
    we sent before the connection is closed (closing drops unread data)."""
    max_buffered: int = 64 * MiB
    """Received frames waiting in ``events()`` for the consumer, in bytes. Beyond it the
    readers pause before delivering their next frame, and Yamux flow control slows the
    senders down instead of our memory growing. A single frame larger than this is still
    delivered when nothing else is waiting. (Frames still being received are bounded
    separately: at most ``max_frame`` per stream.)"""
    max_buffered_per_peer: int = 16 * MiB
    """The share of ``max_buffered`` one peer may fill: beyond it that peer's readers
    pause, while the other peers' frames keep coming (a peer with nothing waiting may
    always queue one frame). One frame larger than this is delivered when it is the
    peer's only one waiting."""
    max_streams_per_peer: int = 4
    """Concurrent inbound gossip streams one peer may hold open; extra streams are reset."""
    max_connections: int = 300
    """Connections of the whole host (libp2p's connection manager limit)."""
    max_inbound_streams: int = 32
    """Streams the peer may have open at once on one connection, all protocols together
    (gossip, requests, the DHT...). The next one is reset at once and counted against
    the peer (kind ``streams``). Honest peers use a handful."""
    max_connection_buffer: int = 64 * MiB
    """Bytes received and not yet read, across all the Yamux streams of one connection.
    A frame that would go beyond is dropped and its stream reset (kind ``buffered``).
    Yamux bounds each stream by its receive window, at most 16 MiB once auto-tuned; an
    honest peer fills one or two (a gossip stream and a request), a peer that grows four
    gossip streams' windows and then stops being read reaches this."""
    frame_rate: float = 1000.0
    """Gossip frames per second one peer may make us deliver, all its streams together,
    after a burst of ``frame_burst``. Beyond it the peer's readers wait (backpressure:
    Yamux flow control slows its sender). Honest peers send tens per second."""
    frame_burst: int = 5000
    """Frames one peer may deliver at once before ``frame_rate`` applies."""
    frame_rate_strike: float = 5.0
    """A peer that keeps its frame bucket empty this long on end is counted against
    (kind ``frame_rate``), once per such period."""
    max_requests_per_peer: int = 8
    """Requests (``set_request_handler`` protocols) one peer may have in progress at
    once; the next is refused (stream reset, kind ``requests``)."""
    request_rate: float = 50.0
    """Requests per second one peer may make, after a burst of ``request_burst``; excess
    is refused (kind ``request_rate``)."""
    request_burst: int = 100
    """Requests one peer may make at once before ``request_rate`` applies."""
    connection_rate: float = 1.0
    """New connections per second one peer may make (py-libp2p's resource manager),
    after a burst of ``connection_burst``; excess is refused after the handshake."""
    connection_burst: int = 20
    """Connections one peer may make at once before ``connection_rate`` applies."""
    score: ScorePolicy = field(default_factory=ScorePolicy)
    """When violations of these limits (and the ones other layers report through
    ``Libp2pTransport.penalize``) ban a peer: weights, decay, threshold, ban lengths."""
    yamux_chunk: int = 4 * MiB
    """Size of the Yamux DATA frames our sender writes (py-libp2p writes 64 KiB ones).
    Larger frames mean fewer trips through the pure-Python muxer and Noise layers; the
    receiver's flow-control window still bounds them. 0 keeps py-libp2p's own writer.
    4 MiB rather than 1 MiB took ~10 ms of CPU per 100 MiB off each side (a quarter of
    the Python part); 8 MiB cost the receiver more than it saved the sender
    (docs/benchmarks.md, Transport, fifth pass)."""
    batch_noise: bool = True
    """Encrypt all Noise messages of one write and send them with one system call, and
    read the socket in large chunks (py-libp2p does one call per 64 KiB message and two
    reads per message). Wire format unchanged."""
    relay_service: bool = False
    """Serve as a circuit relay v2 (hop) for peers that cannot be dialled directly (behind
    NAT): they reserve a slot here and others reach them through us. Only peers on our
    allowlist may reserve or open circuits, and only to allowlisted peers, so an open
    allowlist is refused (``Libp2pTransport.open`` raises ``ConfigError``). The relay's
    cost is bounded by ``relay_max_reservations``, ``relay_max_circuits``,
    ``relay_circuit_data`` and ``relay_circuit_duration``; its bandwidth is not rate
    limited (py-libp2p has no such limit)."""
    relays: tuple[str, ...] = ()
    """Full multiaddrs of relays to reserve a slot on
    (``/ip4/198.51.100.1/tcp/4001/p2p/12D3KooW...``), so that peers can reach us at
    ``<relay>/p2p-circuit/p2p/<our id>`` (listed in ``listen_addrs``) when they cannot
    dial us directly. Each relay must be on our allowlist, and we on its."""
    relay_max_reservations: int = 64
    """Peers that may hold a reservation on our relay at once (each one a peer behind NAT
    of the job)."""
    relay_max_circuits: int = 16
    """Circuits open at once to one peer with a reservation (each of its neighbours that
    cannot dial it directly holds one)."""
    relay_circuit_data: int = 64 * GiB
    """Bytes one circuit may carry (both directions together) before the relay resets it;
    the peers then redial and get a fresh circuit. py-libp2p's default (1 GiB) is a few
    rounds of a large model; this bounds a runaway circuit, not a job."""
    relay_circuit_duration: int = 24 * 3600
    """Seconds one circuit may live before the relay resets it (the peers redial).
    py-libp2p's default is one hour."""
    relay_retry_max: float = 60.0
    """Longest wait between two attempts to reserve on a relay that is down or refuses
    (the wait starts at 1 s and doubles)."""
    hole_punching: bool = True
    """Upgrade relayed connections to direct ones by hole punching (DCUtR,
    :mod:`~gossipfl.transport.libp2p.holepunch`): the peer reached through a relay starts
    it; the relayed connection is closed once the direct one carries the streams. Off:
    relayed connections stay relayed, and we serve no hole-punching sessions."""
    reachability_check: bool = False
    """Ask directly connected peers (our relays first) to dial us back, to learn whether
    others can reach us (:attr:`Libp2pTransport.reachability`); ``gossipfl start`` turns
    it on and tells the operator. Each check opens a short extra connection from the
    peer asked. We always answer such requests, by dialling the asker's own address
    only."""

    def __post_init__(self) -> None:
        if type(self.max_frame) is not int or not 1 <= self.max_frame <= 0xFFFFFFFF:
            raise ConfigError(
                f"TransportConfig.max_frame must be an int in [1, 2**32-1], got {self.max_frame!r}"
            )
        for name in ("read_timeout", "write_timeout", "dial_timeout", "close_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise ConfigError(f"TransportConfig.{name} must be a positive number of seconds")
        for name in (
            "max_buffered",
            "max_buffered_per_peer",
            "max_streams_per_peer",
            "max_connections",
            "max_inbound_streams",
            "max_requests_per_peer",
            "frame_burst",
            "request_burst",
            "connection_burst",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"TransportConfig.{name} must be a positive int, got {value!r}")
        for name in ("frame_rate", "frame_rate_strike", "request_rate", "connection_rate"):
            value = getattr(self, name)
            if not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and value > 0
                and math.isfinite(value)
            ):
                raise ConfigError(
                    f"TransportConfig.{name} must be a positive finite number, got {value!r}"
                )
        if type(self.max_connection_buffer) is not int or self.max_connection_buffer < YAMUX_WINDOW:
            raise ConfigError(
                "TransportConfig.max_connection_buffer must be an int of at least "
                f"{YAMUX_WINDOW} (one Yamux stream's initial window), got "
                f"{self.max_connection_buffer!r}"
            )
        if not isinstance(self.score, ScorePolicy):
            raise ConfigError(
                f"TransportConfig.score must be a ScorePolicy, got {type(self.score).__name__}"
            )
        self._check_relays()
        if type(self.yamux_chunk) is not int or not (
            self.yamux_chunk == 0 or 4096 <= self.yamux_chunk <= 16 * MiB
        ):
            raise ConfigError(
                "TransportConfig.yamux_chunk must be 0 (py-libp2p's writer) or between "
                f"4096 and 16 MiB (Yamux's largest window), got {self.yamux_chunk!r}"
            )

    def _check_relays(self) -> None:
        for name in ("relay_service", "hole_punching", "reachability_check"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"TransportConfig.{name} must be a bool, got {getattr(self, name)!r}"
                )
        relays: object = self.relays
        if isinstance(relays, str) or not isinstance(relays, tuple | list):
            raise ConfigError(
                f"TransportConfig.relays must be a tuple of multiaddrs, got {self.relays!r}"
            )
        for text in self.relays:
            try:
                parse_multiaddr(text, need_peer_id=True)
            except ConfigError as exc:
                raise ConfigError(f"relay address {text!r}: {exc}") from None
            if "/p2p-circuit" in text:
                raise ConfigError(
                    f"relay address {text!r} is itself a circuit address: name the relay's "
                    "own address (/ip4/.../tcp/.../p2p/<relay id>)"
                )
        for name in ("relay_max_reservations", "relay_max_circuits", "relay_circuit_data"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"TransportConfig.{name} must be a positive int, got {value!r}")
        # The circuit's duration travels as a protobuf uint32 in the relay's replies.
        duration = self.relay_circuit_duration
        if type(duration) is not int or not 1 <= duration <= 0xFFFFFFFF:
            raise ConfigError(
                "TransportConfig.relay_circuit_duration must be an int of seconds in "
                f"[1, 2**32-1], got {duration!r}"
            )
        retry = self.relay_retry_max
        if not (
            isinstance(retry, int | float)
            and not isinstance(retry, bool)
            and retry >= 1
            and math.isfinite(retry)
        ):
            raise ConfigError(
                f"TransportConfig.relay_retry_max must be at least 1 second, got {retry!r}"
            )
