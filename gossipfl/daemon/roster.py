"""Static membership: a roster file naming every peer of a job and where it listens.

A roster is a TOML file::

    # peers.toml
    [topology]                  # optional: replaces the config's [topology] name/params
    name = "ring"

    [[peer]]
    name = "alpha"              # optional; default node-<i>
    address = "/ip4/10.0.0.1/tcp/4141/p2p/12D3KooW..."

    [[peer]]
    name = "beta"
    id = "12D3KooW..."          # or the peer ID and its addresses separately
    addresses = ["/ip4/10.0.0.2/tcp/4141", "/ip6/fd00::2/tcp/4141"]

Peer i of the file plays node i of the topology. When the topology comes from a graph file
whose nodes carry names (``abilene.edges``: ATLA, CHIN, ...) and every roster name is one of
them, peers are matched to nodes by name instead. A peer with no address must be found by
discovery (DHT, mDNS, or another member's records).

Every peer of a job uses the same roster, so all of them compute the same neighbourhoods
without any agreement protocol; with a roster the allowlist defaults to its peer IDs.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossipfl.configfile import read_toml
from gossipfl.errors import ConfigError

ROSTER_KEYS = frozenset({"topology", "peer"})
PEER_KEYS = frozenset({"name", "id", "address", "addresses"})


@dataclass(frozen=True)
class RosterEntry:
    name: str
    peer_id: str
    addresses: tuple[str, ...] = ()
    """Full multiaddrs, each ending in ``/p2p/<peer_id>``."""


@dataclass(frozen=True)
class Roster:
    """The peers of a job in node order of the file; see the module docstring."""

    entries: tuple[RosterEntry, ...]
    topology: Mapping[str, Any] = field(default_factory=dict)
    """The roster's own ``[topology]`` table (empty: use the config's)."""

    @property
    def ids(self) -> list[str]:
        return [e.peer_id for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, peer_id: str) -> RosterEntry | None:
        for e in self.entries:
            if e.peer_id == peer_id:
                return e
        return None

    def node_ids(self, labels: Sequence[str] | None = None) -> list[str]:
        """Peer IDs by node index: node i is entry i, or, when ``labels`` (the topology's
        node names) cover every entry's name, the entry named ``labels[i]``."""
        if labels is not None and len(labels) == len(self.entries):
            by_name = {e.name: e.peer_id for e in self.entries}
            if set(by_name) == set(labels):
                return [by_name[label] for label in labels]
        return self.ids


def parse_roster(data: Mapping[str, Any], *, where: str = "roster") -> Roster:
    """Validate a parsed roster table (see the module docstring)."""
    from gossipfl.transport.libp2p.allowlist import parse_multiaddr, parse_peer_id

    unknown = sorted(set(data) - ROSTER_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {', '.join(unknown)} (expected [[peer]], [topology])"
        )
    peers = data.get("peer", [])
    if not isinstance(peers, list) or not peers:
        raise ConfigError(f"{where}: list the peers as [[peer]] tables (none found)")
    topology = data.get("topology", {})
    if not isinstance(topology, Mapping):
        raise ConfigError(f"{where}: [topology] must be a table")
    entries: list[RosterEntry] = []
    for i, raw in enumerate(peers):
        label = f"{where}: peer #{i + 1}"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{label} must be a table")
        extra = sorted(set(raw) - PEER_KEYS)
        if extra:
            raise ConfigError(f"{label}: unknown keys {', '.join(extra)}")
        name = raw.get("name", f"node-{i}")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{label}: name must be a non-empty string")
        texts: list[Any] = []
        if "address" in raw:
            texts.append(raw["address"])
        more = raw.get("addresses", [])
        if not isinstance(more, list):
            raise ConfigError(f"{label}: addresses must be a list of multiaddrs")
        texts.extend(more)
        peer_id = parse_peer_id(raw["id"]) if "id" in raw else None
        addresses: list[str] = []
        for text in texts:
            if not isinstance(text, str):
                raise ConfigError(f"{label}: {text!r} is not a multiaddr string")
            normalized, named = parse_multiaddr(text)
            if named is None:
                if peer_id is None:
                    raise ConfigError(
                        f"{label}: address {text!r} must end in /p2p/<peer id> (or give id)"
                    )
                normalized = f"{normalized}/p2p/{peer_id}"
            elif peer_id is None:
                peer_id = named
            elif named != peer_id:
                raise ConfigError(f"{label}: address {text!r} names {named}, not {peer_id}")
            addresses.append(normalized)
        if peer_id is None:
            raise ConfigError(f"{label} ({name}): give its id or an address ending in /p2p/<id>")
        entries.append(RosterEntry(name.strip(), peer_id, tuple(addresses)))
    for what, values in (("name", [e.name for e in entries]), ("id", [e.peer_id for e in entries])):
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise ConfigError(f"{where}: peer {what} listed twice: {', '.join(dupes)}")
    return Roster(tuple(entries), dict(topology))


def load_roster(path: str | Path) -> Roster:
    """Read and validate a roster file."""
    return parse_roster(read_toml(path, what="roster"), where=str(path))


def is_roster_file(spec: str) -> bool:
    """Whether ``spec`` names a TOML file holding ``[[peer]]`` tables (``--topology`` then
    means a roster, not a topology definition)."""
    path = Path(spec).expanduser()
    if path.suffix.lower() != ".toml" or not path.is_file():
        return False
    try:
        return "peer" in tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False


def roster_toml(entries: Sequence[RosterEntry], topology: Mapping[str, Any] | None = None) -> str:
    """The text of a roster file listing ``entries`` (and a ``[topology]`` table)."""
    import tomli_w

    data: dict[str, Any] = {}
    if topology:
        data["topology"] = dict(topology)
    data["peer"] = [
        {"name": e.name, "id": e.peer_id, "addresses": list(e.addresses)} for e in entries
    ]
    return tomli_w.dumps(data)


__all__ = ["Roster", "RosterEntry", "is_roster_file", "load_roster", "parse_roster", "roster_toml"]
