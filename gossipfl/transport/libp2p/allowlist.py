"""Which peers may talk to us, and the peer-ID and multiaddr parsing that goes with it.

An allowlist names peers by their libp2p peer ID, the hash of the public key each peer
proves it holds during the Noise handshake. It is enforced at that handshake (see
:mod:`gossipfl.transport.libp2p.security`): a peer that is not on the list is dropped
before its connection is upgraded, so it cannot open a stream, and none of its bytes
reach the application. ``None`` (no allowlist) accepts any peer that can reach us: fine
for a private LAN or a test, unwise on the internet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from gossipfl.errors import ConfigError

WHERE_PEER_IDS_COME_FROM = (
    "give the peer ID that `gossipfl init --quiet` (or the banner of `gossipfl start`) "
    "prints on that peer, e.g. 12D3KooWP3pCQNT4ExMXTbfrLNAqnLV7nEQPzeXamjPnPDtrSRVe"
)
ED25519_PEER_ID_LENGTH = 52
"""Characters of a base58 Ed25519 peer ID (``12D3KooW`` and 44 more)."""
_HOST_PORT = re.compile(r"^\[?(?P<host>[0-9A-Za-z.:_-]+?)\]?:(?P<port>\d{1,5})$")


def _is_placeholder(text: str) -> bool:
    """``12D3KooW...``, ``<peer id>``: the documentation's stand-ins, pasted as they are."""
    return any(mark in text for mark in ("...", "\u2026", "<", ">"))


def _placeholder_error(text: str) -> ConfigError:
    return ConfigError(
        f"{text!r} holds a placeholder ('...' or '<...>') copied from an example: paste the "
        "real peer ID instead, the one `gossipfl init --quiet` or the `join with` line of "
        "`gossipfl start` prints on that peer"
    )


def _is_public_key(content: bytes) -> bool:
    """Whether ``content`` is a libp2p protobuf ``PublicKey`` (the body of an identity
    multihash): field 1 ``Type`` (0..3), then field 2 ``Data`` with its exact length.
    Without this check a truncated ``12D3KooW`` ID still decodes to *some* identity
    multihash, and the mistake would surface only as a peer that never answers."""
    return (
        len(content) >= 4
        and content[0] == 0x08
        and content[1] <= 3
        and content[2] == 0x12
        and content[3] == len(content) - 4
    )


def parse_peer_id(text: str) -> str:
    """Validate a base58 peer ID (``12D3KooW...``, ``Qm...``) and return its canonical form.

    Refused with a message that says what to paste instead: a placeholder from the docs,
    a name (``alice``), a cut-off ID, anything that is not the multihash of a public key.
    """
    from libp2p.peer.id import ID

    if not isinstance(text, str) or not text.strip():
        raise ConfigError(
            f"a peer ID must be a non-empty string, got {text!r}; {WHERE_PEER_IDS_COME_FROM}"
        )
    text = text.strip()
    if _is_placeholder(text):
        raise _placeholder_error(text)
    try:
        peer = ID.from_base58(text)
    except Exception:  # base58 errors vary by version
        raise ConfigError(
            f"{text!r} is not a libp2p peer ID (those are base58, like 12D3KooW...); "
            f"{WHERE_PEER_IDS_COME_FROM}"
        ) from None
    # Any base58 string decodes to *some* bytes; a peer ID is a multihash of a public key:
    # sha2-256 (0x12, 32 bytes: "Qm...") or, for keys of at most 42 bytes such as
    # Ed25519, the key itself ("identity", 0x00: "12D3KooW...").
    raw = peer.to_bytes()
    code, length = (raw[0], raw[1]) if len(raw) >= 2 else (-1, -1)
    valid = len(raw) == 2 + length and (
        (code == 0x12 and length == 32)
        or (code == 0x00 and 1 <= length <= 42 and _is_public_key(raw[2:]))
    )
    if valid:
        return str(peer)
    if text.startswith("12D3KooW") and len(text) != ED25519_PEER_ID_LENGTH:
        raise ConfigError(
            f"{text!r} is not a libp2p peer ID: it looks cut short or run on (an Ed25519 "
            f"peer ID has {ED25519_PEER_ID_LENGTH} characters, this one {len(text)}); copy the "
            "whole peer ID, as its peer prints it"
        )
    raise ConfigError(
        f"{text!r} is not a libp2p peer ID: not the multihash of a public key; copy the whole "
        f"peer ID: {WHERE_PEER_IDS_COME_FROM}"
    )


def _multiaddr_for(host: str, port: str) -> str:
    """The multiaddr spelling of ``host:port``."""
    if ":" in host:
        return f"/ip6/{host}/tcp/{port}"
    if re.fullmatch(r"[0-9.]+", host):
        return f"/ip4/{host}/tcp/{port}"
    return f"/dns/{host}/tcp/{port}"


def parse_multiaddr(text: str, *, need_peer_id: bool = False) -> tuple[str, str | None]:
    """Validate a multiaddr string; return it normalized, with its ``/p2p/`` peer ID if any.

    With ``need_peer_id`` the address must end in ``/p2p/<peer id>`` (the form
    ``gossipfl`` prints, and the only one that tells us whom we are dialing). A
    ``host:port`` is refused with its multiaddr spelling, a documentation placeholder with
    where the real peer ID comes from.
    """
    import multiaddr

    if not isinstance(text, str) or not text.strip():
        raise ConfigError(
            f"a multiaddr must be a non-empty string, got {text!r}; e.g. "
            "/ip4/192.0.2.7/tcp/4141/p2p/12D3KooW..."
        )
    text = text.strip()
    suffix = "/p2p/<peer id>" if need_peer_id else ""
    if match := _HOST_PORT.fullmatch(text):
        raise ConfigError(
            f"{text!r} is not a multiaddr: libp2p writes host:port as "
            f"{_multiaddr_for(match['host'], match['port'])}{suffix}"
        )
    if _is_placeholder(text):
        raise _placeholder_error(text)
    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:
        raise ConfigError(
            f"{text!r} is not a multiaddr ({exc}); write it like "
            "/ip4/192.0.2.7/tcp/4141/p2p/12D3KooW... (the `join with` line of `gossipfl start` "
            "prints a complete one)"
        ) from None
    peer: str | None = None
    # The last /p2p/ names the peer: a circuit address
    # (<relay>/p2p/<relay id>/p2p-circuit/p2p/<peer id>) names the relay first.
    values = [v for p, v in addr.items() if p.name == "p2p"]
    value = values[-1] if values else None
    names = [p.name for p in addr.protocols()]
    if "p2p-circuit" in names:
        at = names.index("p2p-circuit")
        if at == 0 or names[at - 1] != "p2p" or names.count("p2p-circuit") > 1:
            raise ConfigError(
                f"circuit address {text!r} must read <relay address>/p2p/<relay id>/"
                "p2p-circuit/p2p/<peer id>"
            )
        if names[at + 1 :] not in ([], ["p2p"]):
            raise ConfigError(
                f"circuit address {text!r} must end in /p2p-circuit or /p2p-circuit/p2p/<peer id>"
            )
        if names[at + 1 :] == []:
            value = None
    if value:
        peer = parse_peer_id(str(value))
    elif need_peer_id:
        raise ConfigError(
            f"multiaddr {text!r} must end in /p2p/<peer id> to say whom it reaches: append "
            "the peer ID of the peer listening there, as in the `join with` line that "
            "`gossipfl start` prints on it"
        )
    return str(addr), peer


def parse_listen_address(text: str) -> str:
    """Validate an address to listen on: a multiaddr without ``/p2p/`` (a peer listens
    under its own ID, the one its key file gives it)."""
    address, peer = parse_multiaddr(text)
    if peer is not None:
        raise ConfigError(
            f"listen address {text!r} must not end in /p2p/...: remove the /p2p/<peer id> "
            "part (a peer listens under its own ID, from its key file)"
        )
    return address


class Allowlist:
    """An immutable set of peer IDs. ``Allowlist.open()`` allows everyone."""

    __slots__ = ("_peers",)

    def __init__(self, peers: Iterable[str] | None) -> None:
        self._peers: frozenset[str] | None = (
            None if peers is None else frozenset(parse_peer_id(p) for p in peers)
        )

    @classmethod
    def open(cls) -> Allowlist:
        return cls(None)

    @property
    def is_open(self) -> bool:
        return self._peers is None

    def allows(self, peer: object) -> bool:
        """Whether ``peer`` (a peer ID string or a libp2p ``ID``) may connect."""
        return self._peers is None or str(peer) in self._peers

    def __contains__(self, peer: object) -> bool:
        return self.allows(peer)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._peers or ()))

    def __len__(self) -> int:
        return 0 if self._peers is None else len(self._peers)

    def __repr__(self) -> str:
        return "Allowlist(open)" if self._peers is None else f"Allowlist({len(self)} peers)"
