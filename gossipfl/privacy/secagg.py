"""Secure neighbourhood averaging: a peer learns its neighbours' weighted sum, not their models.

Sans-I/O core (no network here): the arithmetic of pairwise masks that cancel in the sum,
in the spirit of Bonawitz et al.'s secure aggregation and of CESAR (arXiv 2405.07708),
restricted to one receiver's neighbourhood.

Receiver i averages ``Σ_j W_ij x_j`` over its neighbours j ∈ N_i. Every pair j, k of
i's neighbours shares a secret s_jk (X25519 key agreement, then HKDF), from which both
derive the same mask m_jk = ChaCha20(s_jk; i, round), a uniform vector of 64-bit
integers. Neighbour j sends

    y_j = encode(W_ij · x_j) + Σ_{k ∈ N_i, k ≠ j} ±m_jk      (mod 2^64)

with ``+`` when j sorts before k and ``−`` otherwise, so that every mask appears once
with each sign and the sum ``Σ_j y_j`` is exactly ``encode(Σ_j W_ij x_j)``. Arithmetic is
in the ring of 64-bit integers with models in fixed point (:data:`FRACTION_BITS`
fractional bits): the masks cancel exactly, and each y_j alone is uniformly distributed
whatever x_j is, so it says nothing about x_j (a float mask could only blur it).

Dropouts. When a neighbour k misses the round, the masks the others share with k are
left in the sum. The receiver names the missing neighbours M and each present j
returns its correction ``Σ_{k ∈ M} ±m_jk``; subtracting them leaves the sum of the
present. A present neighbour must refuse a missing set that would leave it alone (its
message would then be unmasked): :func:`correction` needs at least
:data:`MIN_GROUP` present.

What it does not protect (docs/privacy.md): a receiver that keeps a late message of a
neighbour it declared missing can unmask it with the corrections it received (secure
aggregation's double masking closes this and is not built); colluding neighbours of the
same receiver can subtract their own contributions from the sum; and the sum itself
reveals what a sum of few models reveals.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gossipfl.errors import GossipflError

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]

#: Fixed-point precision: values are rounded to multiples of 2^-24 (6e-8), and a sum
#: stays exact while its magnitude is below 2^39 (the 64-bit range minus these bits).
FRACTION_BITS = 24
_SCALE = float(1 << FRACTION_BITS)
_LIMIT = float(1 << (63 - FRACTION_BITS - 1))

#: Fewest present neighbours a correction may leave: with one, its message is unmasked.
MIN_GROUP = 2

_HKDF_INFO = b"gossipfl secure averaging v1 pair secret"
_MASK_PERSON = b"gossipfl-mask-v1"  # 16 bytes: BLAKE2b personalization


class SecureAggregationError(GossipflError):
    """A masked contribution or correction that cannot be made or combined safely."""


def encode(x: npt.ArrayLike, weight: float) -> U64:
    """``weight · x`` in fixed point, as 64-bit ring elements (two's complement)."""
    scaled = np.asarray(x, np.float64) * (weight * _SCALE)
    if not np.all(np.isfinite(scaled)) or np.any(np.abs(scaled) >= _LIMIT * _SCALE):
        raise SecureAggregationError(
            f"a weighted model outside ±{_LIMIT:g} cannot be encoded in fixed point"
        )
    out: U64 = np.rint(scaled).astype(np.int64).view(np.uint64)
    return out


def decode(total: U64) -> F64:
    """The float value of a fixed-point ring element (see :func:`encode`)."""
    out: F64 = np.asarray(total, np.uint64).view(np.int64).astype(np.float64) / _SCALE
    return out


class MaskKey:
    """One peer's X25519 key for mask agreement (separate from its libp2p identity)."""

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        self._private = private if private is not None else X25519PrivateKey.generate()

    @classmethod
    def from_seed(cls, seed: bytes) -> MaskKey:
        """A key derived from 32 secret bytes (simulations derive them from the run's
        seed; a real peer uses :meth:`__init__`'s fresh key)."""
        digest = hashlib.blake2b(seed, digest_size=32, person=b"gossipfl-x25519k").digest()
        return cls(X25519PrivateKey.from_private_bytes(digest))

    @property
    def public(self) -> bytes:
        """The 32-byte public key to hand to other peers."""
        return self._private.public_key().public_bytes_raw()

    def pair_secret(self, me: str, other: str, other_public: bytes) -> bytes:
        """The 32-byte secret this peer (``me``) shares with ``other``: both compute the
        same from their own private key and the other's public key."""
        if me == other:
            raise SecureAggregationError("a peer shares no mask with itself")
        shared = self._private.exchange(X25519PublicKey.from_public_bytes(other_public))
        first, second = sorted((me, other))
        salt = hashlib.sha256(f"{first}\x00{second}".encode()).digest()
        return HKDF(SHA256(), length=32, salt=salt, info=_HKDF_INFO).derive(shared)


def pair_mask(secret: bytes, receiver: str, round: int, size: int, *, epoch: int = 0) -> U64:
    """The mask two peers sharing ``secret`` both derive for ``receiver`` in ``round``
    under the receiver's group ``epoch``: ``size`` uniform 64-bit integers, ChaCha20's
    keystream under a key bound to all three (never reused across receivers, rounds or
    groups: a model shared again under a new group gets independent masks)."""
    key = hashlib.blake2b(
        secret + receiver.encode() + struct.pack("<qq", round, epoch),
        digest_size=32,
        person=_MASK_PERSON,
    ).digest()
    stream = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()
    out: U64 = np.frombuffer(stream.update(bytes(8 * size)), dtype=np.uint64).copy()
    return out


def _sign(me: str, other: str) -> bool:
    """True: ``me`` adds the pair's mask; False: it subtracts it."""
    return me < other


def _masks(
    me: str,
    receiver: str,
    round: int,
    others: Iterable[str],
    secrets: Mapping[str, bytes],
    size: int,
    epoch: int,
) -> U64:
    total = np.zeros(size, np.uint64)
    for other in others:
        if other == me:
            continue
        secret = secrets.get(other)
        if secret is None:
            raise SecureAggregationError(f"no shared secret with {other}")
        mask = pair_mask(secret, receiver, round, size, epoch=epoch)
        if _sign(me, other):
            total += mask
        else:
            total -= mask
    return total


def masked_contribution(
    x: npt.ArrayLike,
    weight: float,
    *,
    me: str,
    receiver: str,
    round: int,
    group: Iterable[str],
    secrets: Mapping[str, bytes],
    epoch: int = 0,
) -> U64:
    """What ``me`` sends ``receiver``: its weighted model in fixed point plus its masks
    with every other member of ``group`` (the receiver's neighbours, at ``epoch``)."""
    encoded = encode(x, weight)
    members = [g for g in group if g != me]
    if len(members) + 1 < MIN_GROUP:
        raise SecureAggregationError(
            f"{receiver} has no other neighbour to mask {me}'s model with: alone, it "
            "would be sent in the clear"
        )
    return encoded + _masks(me, receiver, round, members, secrets, encoded.size, epoch)


def correction(
    *,
    me: str,
    receiver: str,
    round: int,
    group: Iterable[str],
    missing: Iterable[str],
    secrets: Mapping[str, bytes],
    size: int,
    epoch: int = 0,
) -> U64:
    """The part of ``me``'s masks that ``missing`` neighbours did not cancel, for the
    receiver to subtract. Refused when fewer than :data:`MIN_GROUP` of ``group`` would
    remain (the receiver could then unmask ``me``'s model)."""
    members = set(group)
    gone = set(missing)
    if me in gone or not gone <= members:
        raise SecureAggregationError(
            f"missing set {sorted(gone)} must be among {receiver}'s neighbours and not {me}"
        )
    if len(members - gone) < MIN_GROUP:
        raise SecureAggregationError(
            f"{len(members - gone)} neighbour(s) of {receiver} would remain: a correction "
            f"would reveal {me}'s model; at least {MIN_GROUP} must be present"
        )
    return _masks(me, receiver, round, sorted(gone), secrets, size, epoch)


def unmask(contributions: Iterable[U64], corrections: Iterable[U64] = ()) -> F64:
    """``Σ_j W_ij x_j`` over the present neighbours: the masked contributions summed,
    the corrections for the missing ones subtracted, decoded."""
    total: U64 | None = None
    for vector in contributions:
        total = vector.copy() if total is None else total + vector
    if total is None:
        raise SecureAggregationError("no contribution to unmask")
    for fix in corrections:
        total -= fix
    return decode(total)


__all__ = [
    "FRACTION_BITS",
    "MIN_GROUP",
    "MaskKey",
    "SecureAggregationError",
    "correction",
    "decode",
    "encode",
    "masked_contribution",
    "pair_mask",
    "unmask",
]
