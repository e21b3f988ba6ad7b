"""The peer daemon behind ``gossipfl start``: one peer on a libp2p host, kept in a job.

- :class:`~gossipfl.daemon.config.DaemonConfig` — ``config.toml`` (``gossipfl init``);
- :class:`~gossipfl.daemon.node.Node` — the daemon loop: transport, membership, training;
- :mod:`~gossipfl.daemon.roster` — static membership (a roster file);
- :mod:`~gossipfl.daemon.membership` and :mod:`~gossipfl.daemon.exchange` — dynamic
  membership by anti-entropy on ``/gossipfl/members/2.0.0``;
- :mod:`~gossipfl.daemon.discovery` — mDNS and DHT discovery;
- :mod:`~gossipfl.daemon.neighbourhoods` — a topology rule over the member list;
- :mod:`~gossipfl.daemon.workload` — the model, the shard and the evaluation;
- :mod:`~gossipfl.daemon.metrics` — ``metrics.jsonl`` and ``models.bin``.

See docs/operations.md for how to run it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gossipfl.daemon.config import DaemonConfig
    from gossipfl.daemon.job import job_manifest, join_command
    from gossipfl.daemon.membership import MemberRecord, MembershipView
    from gossipfl.daemon.node import JobMismatchError, Node, NodeResult
    from gossipfl.daemon.roster import Roster, RosterEntry, load_roster

# Loaded on first use: `gossipfl init` and `start`'s checks of its flags read
# gossipfl.daemon.config alone, and an eager package would import the whole daemon,
# py-libp2p included (~1.3 s of a command that otherwise takes ~0.2 s).
_LAZY = {
    "DaemonConfig": "gossipfl.daemon.config",
    "job_manifest": "gossipfl.daemon.job",
    "join_command": "gossipfl.daemon.job",
    "MemberRecord": "gossipfl.daemon.membership",
    "MembershipView": "gossipfl.daemon.membership",
    "JobMismatchError": "gossipfl.daemon.node",
    "Node": "gossipfl.daemon.node",
    "NodeResult": "gossipfl.daemon.node",
    "Roster": "gossipfl.daemon.roster",
    "RosterEntry": "gossipfl.daemon.roster",
    "load_roster": "gossipfl.daemon.roster",
}

__all__ = [
    "DaemonConfig",
    "JobMismatchError",
    "MemberRecord",
    "MembershipView",
    "Node",
    "NodeResult",
    "Roster",
    "RosterEntry",
    "job_manifest",
    "join_command",
    "load_roster",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gossipfl.daemon' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
