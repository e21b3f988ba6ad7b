"""What a peer reports about itself: per-round reports and running counters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gossipfl._frozen import quick_init
from gossipfl.protocol import RoundStats

Vector = npt.NDArray[np.float32]


@dataclass
class PeerCounters:
    """Running totals since the peer started. Remote misbehaviour lands here (and in the
    log, with the peer id), never in an exception."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    bad_frames: int = 0
    """Frames that failed to decode (malformed, oversized, non-finite, ...), and models
    left out of a merge because their values were extreme (beyond ±1.8e19)."""
    unverified: int = 0
    """Updates from peers whose handshake we have not accepted."""
    refused: int = 0
    """Handshakes we refused (wrong network, layout, version, ...)."""
    wrong_shape: int = 0
    spoofed: int = 0
    """Models whose ``sender`` is not the peer that sent them (dropped)."""
    replayed: int = 0
    """Sync: models of a round older than one the same peer already sent (dropped)."""
    send_failures: int = 0
    outbox_drops: int = 0
    inbox_drops: int = 0
    slow_neighbours: int = 0
    """Times an in-neighbour was found to keep us waiting and dropped from the wait set."""
    implausible_claims: int = 0
    """Round claims not believed because the elapsed time makes them impossible."""
    secure_merges: int = 0
    """Secure averaging: rounds merged from masked shares."""
    secure_fixes: int = 0
    """Secure averaging: of those, rounds that needed corrections for missing members."""
    secure_failed: int = 0
    """Secure averaging: rounds whose shares could not be unmasked (fewer than two
    present, or a correction missing); our own model was kept."""
    secure_unsent: int = 0
    """Secure averaging: shares not sent because the receiver's group was not known yet."""
    secure_stale: int = 0
    """Secure averaging: shares masked for a group we had replaced (dropped)."""
    secure_refused: int = 0
    """Secure averaging: keys, groups, fix requests or corrections refused (the log says
    why)."""


@quick_init
@dataclass(frozen=True, eq=False, slots=True)
class RoundReport:
    """One completed round of one peer; handed to the ``on_round`` hook."""

    peer: str
    round: int
    vector: Vector
    """The peer's model after the merge (do not modify)."""
    stats: RoundStats
    train_metrics: Mapping[str, float] = field(default_factory=dict)
    bytes_sent: int = 0
    """Bytes sent since the start of the run."""
    time: float = 0.0
    """trio's clock when the round completed (virtual time in simulations)."""
