"""Settings of a peer runtime, with defaults for live peers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from gossipfl.errors import ConfigError
from gossipfl.protocol import PROTOCOLS
from gossipfl.protocol.pacing import WaitPolicy
from gossipfl.wire.errors import SchemaError
from gossipfl.wire.job import check_job


@dataclass(frozen=True)
class PeerConfig:
    """How a peer behaves on the network. Times are in seconds.

    The defaults suit live peers on a LAN or the internet; the simulator overrides a few
    (no heartbeats, training inline, a virtual-time deadline).
    """

    network_id: str = "gossipfl"
    """Peers with different network ids refuse each other at the handshake."""
    job: Mapping[str, str] = field(default_factory=dict, hash=False)
    """The job manifest (:mod:`gossipfl.wire.job`): setting names and their values as text
    (``{"rule.name": "cs-plus", "training.rounds": "100"}``). Peers whose manifests differ
    refuse each other at the handshake, naming the settings that differ; empty (the
    default) states no job, which matches only peers that state none either."""
    protocol: str = "sync"
    """``sync`` (rounds with a deadline), ``async`` (push-pull), ``epidemic`` (sync rounds
    over a random s-out graph per round; the topology must be ``epidemic``)."""
    codec: str = "fp32"
    """How our model is encoded on the wire: ``fp32``, ``fp16`` or ``int8``."""
    max_frame: int = 16 * 1024 * 1024
    """Largest frame we send or accept; bigger models travel as a head and chunks."""
    deadline: float = 5.0
    """Sync: how long to wait for neighbours' models once ours is sent."""
    start_grace: float = 0.0
    """Sync: round 0 waits at least this many seconds for each neighbour, for those that
    started a little later (see :class:`~gossipfl.protocol.sync.SyncGossip`;
    ``gossipfl start`` uses ``training.start_grace``). Simulated peers start together: 0."""
    wait: WaitPolicy = field(default_factory=WaitPolicy)
    """Sync: how the deadline adapts to the neighbours' arrival times, and when a
    neighbour that keeps the others waiting stops being waited for
    (:class:`~gossipfl.protocol.pacing.WaitPolicy`; ``deadline`` is the upper bound)."""
    max_ahead: int = 8
    """Sync: models for rounds further ahead than this are dropped, not buffered."""
    catch_up_lag: int = 2
    """Sync: how far behind counts as a straggler, and how far ahead the neighbours must be
    before we skip rounds to catch up."""
    catch_up_speedup: float = 1.25
    """Sync: a skip goes no further than the elapsed time allows at this many times our own
    pace (see :class:`~gossipfl.protocol.pacing.SkipBudget`)."""
    max_reuse: int = 2
    """Sync: a missing neighbour's last model stands in for it if it is at most this many
    rounds old (0: never)."""
    fanout: int = 1
    """Async: partners contacted after each local step."""
    max_staleness: int = 5
    """Async: cached models older than this many rounds are not merged."""
    threads: bool | None = None
    """Offload blocking work to worker threads: local training, and the decoding and
    merging of models above ``thread_threshold`` parameters, so that the event loop keeps
    serving the network (py-libp2p resets streams that go unread for ~5 s).

    ``None`` (the default) decides per run: threads on a real clock, none under a virtual
    one (trio's ``MockClock``, as simulations use). A worker thread's time is invisible to
    a virtual clock, which therefore jumps ahead while the thread runs, firing round
    deadlines before the work is done; inline, the work takes zero virtual time."""
    thread_threshold: int = 1_000_000
    """Models with more parameters than this are decoded and merged in a thread (when
    threads are in use). Models that may take the compiled merge kernels (65,536
    parameters and up, see :mod:`gossipfl.merge`) are merged in a thread whatever this
    says: a kernel's first use compiles it, which can take seconds."""
    heartbeat_interval: float | None = 1.0
    """Send a heartbeat to neighbours this often; ``None`` disables heartbeats."""
    heartbeat_timeout: float = 5.0
    """A neighbour silent this long is treated as down until heard from again."""
    dial_backoff_min: float = 0.25
    dial_backoff_max: float = 10.0
    outbox_size: int = 8
    """Frames queued per neighbour; beyond it new frames are dropped (and counted), so a
    slow link costs that neighbour freshness, not our memory."""
    inbox_size: int = 256
    """Received models queued for the protocol; beyond it they are dropped and counted."""
    checkpoint_every: int = 1
    seed: int = 0
    secure_averaging: bool = False
    """Send masked shares instead of models, so that a peer learns only the weighted sum
    of its in-neighbours' models (:mod:`gossipfl.peer.secure`). Needs the ``mean`` rule
    and the ``sync`` protocol; see docs/privacy.md."""

    def validate(self) -> None:
        try:
            check_job(self.job)
        except SchemaError as exc:
            raise ConfigError(f"PeerConfig.job: {exc}") from None
        if self.protocol not in PROTOCOLS:
            raise ConfigError(
                f"unknown protocol {self.protocol!r}; choose one of: {', '.join(PROTOCOLS)}"
            )
        if self.deadline <= 0:
            raise ConfigError(f"the round deadline must be positive, got {self.deadline}")
        if not 0 <= self.start_grace < math.inf:
            raise ConfigError(f"start_grace must be >= 0 seconds, got {self.start_grace}")
        if self.heartbeat_interval is not None and not (
            0 < self.heartbeat_interval < self.heartbeat_timeout
        ):
            raise ConfigError(
                "heartbeats need 0 < heartbeat_interval < heartbeat_timeout; got "
                f"{self.heartbeat_interval} and {self.heartbeat_timeout}"
            )
        if not 0 < self.dial_backoff_min <= self.dial_backoff_max:
            raise ConfigError("dial backoff needs 0 < dial_backoff_min <= dial_backoff_max")
        if self.max_frame < 64 * 1024:
            raise ConfigError(f"max_frame must be at least 64 KiB, got {self.max_frame}")
        if self.outbox_size < 1 or self.inbox_size < 1 or self.checkpoint_every < 1:
            raise ConfigError("outbox_size, inbox_size and checkpoint_every must be >= 1")
        if self.max_reuse < 0 or self.max_ahead < 1 or self.catch_up_lag < 1:
            raise ConfigError("need max_reuse >= 0, max_ahead >= 1 and catch_up_lag >= 1")
        if not self.catch_up_speedup >= 1:
            raise ConfigError(f"catch_up_speedup must be >= 1, got {self.catch_up_speedup}")
        if self.secure_averaging and self.protocol != "sync":
            raise ConfigError(
                "secure averaging needs the sync protocol: its masks cancel only among the "
                f"shares of one round, and the {self.protocol!r} protocol has no common round"
            )
        if self.fanout < 1 or self.max_staleness < 0:
            raise ConfigError("async gossip needs fanout >= 1 and max_staleness >= 0")
