"""Signatures by peers' identities, for what one peer passes on for another.

A transport vouches for the peer at the other end of a connection: a frame's sender is
the authenticated peer. It cannot vouch for what that peer says *about others*: in
secure averaging a receiver relays its members' mask keys to each member, and a receiver
that put its own key in place of a member's could strip that member's share of its masks.
So each peer signs what others will relay for it, with the key that its identity already
proves, and whoever gets it through a third peer checks the signature against the
owner's identity.

Over libp2p a peer ID *is* its Ed25519 public key (an identity multihash, see
:func:`gossipfl.identity.ed25519_public_key`), so checking needs no lookup and no key
exchange. In the in-process simulation peers have plain names; the
:class:`~gossipfl.transport.memory.MemoryNetwork` gives each name an Ed25519 key
(:class:`KeyDirectory`), which plays the part of the peer ID.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from gossipfl.identity import Identity, ed25519_public_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PeerId = str
SIGNATURE_SIZE = 64
"""Bytes of an Ed25519 signature (RFC 8032)."""


def peer_public_key(peer: PeerId) -> Ed25519PublicKey | None:
    """The Ed25519 public key a libp2p peer ID names (loaded for checking), or None."""
    raw = ed25519_public_key(peer)
    if raw is None:
        return None
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None


class PeerSignatures:
    """Signs as peer ``me``; checks any peer's signature with ``public_key(peer)``."""

    def __init__(
        self,
        me: PeerId,
        sign: Callable[[bytes], bytes],
        public_key: Callable[[PeerId], Ed25519PublicKey | None] = peer_public_key,
    ) -> None:
        self.me = me
        self._sign = sign
        self._public_key = public_key

    def sign(self, data: bytes) -> bytes:
        """Our 64-byte signature over ``data``."""
        return self._sign(data)

    def verify(self, peer: PeerId, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is ``peer``'s over ``data`` (False for a peer whose key
        we cannot know: then nothing it signed can be trusted through others)."""
        if type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
            return False
        key = self._public_key(peer)
        if key is None:
            return False
        from cryptography.exceptions import InvalidSignature

        try:
            key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


def identity_signatures(identity: Identity) -> PeerSignatures:
    """Signatures of a libp2p identity, checked against peer IDs."""
    return PeerSignatures(identity.peer_id, identity.signer())


class KeyDirectory:
    """Ed25519 keys for peers with plain names (the simulation's), one per name: a
    restarted peer keeps its key, as it keeps its key file.

    A key is derived from ``seed`` and the name (SHA-256 of both: the private key's 32
    bytes), so every directory of one seed agrees on every peer's key. The keys of a
    simulation are then the same run after run, and the shards of one run (each with its
    own network) check each other's signatures. Not for real peers: anyone who knows the
    seed knows the keys.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._keys: dict[PeerId, Callable[[bytes], bytes]] = {}
        self._public: dict[PeerId, Ed25519PublicKey] = {}

    def _key(self, peer: PeerId) -> Callable[[bytes], bytes]:
        if peer not in self._keys:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            material = f"gossipfl simulated identity\0{self.seed}\0{peer}".encode()
            key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(material).digest())
            self._keys[peer] = key.sign
            self._public[peer] = key.public_key()
        return self._keys[peer]

    def signatures(self, peer: PeerId) -> PeerSignatures:
        """Signatures of ``peer``."""
        return PeerSignatures(peer, self._key(peer), self.public_key)

    def public_key(self, peer: PeerId) -> Ed25519PublicKey:
        """The key the directory gives ``peer`` (whatever the name: in a simulation even
        a name spelled like a libp2p peer ID is only a name)."""
        self._key(peer)
        return self._public[peer]


__all__ = [
    "SIGNATURE_SIZE",
    "KeyDirectory",
    "PeerSignatures",
    "identity_signatures",
    "peer_public_key",
]
