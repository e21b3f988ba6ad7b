"""The messages of the gossipfl protocols, as frozen dataclasses.

Constructing a message validates every field (raising :class:`SchemaError`), and the
decoder builds messages through the same constructors, so one set of rules governs what
we send and what we accept. Field limits are module constants, listed in
``docs/protocol.md``.

Kinds and their wire names: :class:`Hello` ``hello``, :class:`Update` ``update``,
:class:`UpdateHead` ``update-head`` + :class:`Chunk` ``chunk`` (the chunked form of an
Update), :class:`PullRequest` ``pull``, :class:`Heartbeat` ``heartbeat``,
:class:`Announce` ``announce``, :class:`Refusal` ``refusal``; for secure averaging
(:mod:`gossipfl.privacy.secagg`) :class:`SecureKey` ``secure-key``, :class:`SecureGroup`
``secure-group``, :class:`SecureShare` ``secure-share`` and :class:`SecureFix`
``secure-fix``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias

import numpy as np
from numpy.typing import NDArray

from gossipfl._frozen import quick_init
from gossipfl.model.layout import Layout
from gossipfl.wire.arrays import ArraySpec
from gossipfl.wire.codes import KNOWN_CODES, RefusalCode
from gossipfl.wire.digest import DIGEST_SIZE
from gossipfl.wire.errors import SchemaError
from gossipfl.wire.job import check_job

#: Version of the gossip protocol's semantics, carried in Hello (the byte format has its
#: own version, :data:`gossipfl.wire.envelope.WIRE_VERSION`). 2: the payload digest is
#: BLAKE3 (1: a tree of BLAKE2b). The digest's bytes still parse, so a peer of the other
#: version is refused at the Hello (VERSION_MISMATCH) instead of failing every digest.
PROTOCOL_VERSION = 2
MAX_ROUND = (1 << 63) - 1
MAX_PEER_ID = 128
MAX_NETWORK_ID = 128
MAX_DISPLAY_NAME = 64
MAX_CODEC_NAME = 32
MAX_CODECS = 16
MAX_META_ENTRIES = 16
MAX_META_KEY = 32
MAX_META_STR = 256
MAX_REFUSAL_TEXT = 1024
#: Secure averaging: an X25519 public key, and the most members a group (a receiver's
#: in-neighbours) may have (msgpack arrays in headers hold at most 16 entries).
SECURE_KEY_SIZE = 32
MAX_SECURE_GROUP = 16
#: An Ed25519 signature by a peer's identity over its mask key (:func:`secure_key_bytes`).
SECURE_SIGNATURE_SIZE = 64
SECURE_KEY_DOMAIN = b"gossipfl/secure-key/v1\0"
"""The first bytes of what a peer signs for its mask key: a signature made for anything
else (a membership record, another version) never passes for one."""
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

MetaValue: TypeAlias = int | float | str
_FLOAT32 = np.dtype(np.float32)  # compared with a dtype, not the type: half the time


def check_str(value: object, what: str, max_len: int, *, empty: bool = False) -> str:
    """A printable string of at most ``max_len`` characters (printable: no control or
    separator characters other than the space, so peers cannot forge log lines)."""
    if type(value) is not str:
        raise SchemaError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise SchemaError(f"{what} is longer than {max_len} characters")
    if not value and not empty:
        raise SchemaError(f"{what} must not be empty")
    if not value.isprintable():
        raise SchemaError(f"{what} contains control characters: {value!r:.60}")
    return value


def check_token(value: object, what: str, max_len: int) -> str:
    """A non-empty printable string without spaces (ids, codec names)."""
    text = check_str(value, what, max_len)
    if " " in text:
        raise SchemaError(f"{what} must not contain spaces: {text!r:.60}")
    return text


def check_uint(value: object, what: str, maximum: int = MAX_ROUND) -> int:
    if type(value) is not int or not 0 <= value <= maximum:
        raise SchemaError(f"{what} must be an int in [0, {maximum}], got {value!r:.40}")
    return value


def check_bool(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise SchemaError(f"{what} must be a bool, got {value!r:.40}")
    return value


def check_fixed_bytes(value: object, what: str, size: int) -> bytes:
    """``value`` if it is ``bytes`` of exactly ``size`` (digests, keys, signatures)."""
    if type(value) is not bytes or len(value) != size:
        raise SchemaError(f"{what} must be {size} bytes")
    return value


def check_digest(value: object, what: str) -> bytes:
    return check_fixed_bytes(value, what, DIGEST_SIZE)


def check_meta(value: object) -> dict[str, MetaValue]:
    """At most 16 entries; keys are tokens of <= 32 chars; values are int64, finite
    floats, or printable strings of <= 256 chars."""
    if type(value) is dict and not value:
        return {}  # the usual meta: nothing to check (a new dict, as below)
    if type(value) is not dict and not isinstance(value, Mapping):  # a dict: no ABC check
        raise SchemaError(f"meta must be a mapping, got {type(value).__name__}")
    if len(value) > MAX_META_ENTRIES:
        raise SchemaError(f"meta has {len(value)} entries, more than {MAX_META_ENTRIES}")
    clean: dict[str, MetaValue] = {}
    for key, item in value.items():
        check_token(key, "a meta key", MAX_META_KEY)
        kind = type(item)
        if kind is int:
            if not _INT64_MIN <= item <= _INT64_MAX:
                raise SchemaError(f"meta[{key!r}] does not fit in 64 bits")
        elif kind is float:
            if not math.isfinite(item):
                raise SchemaError(f"meta[{key!r}] is not finite")
        elif kind is str:
            check_str(item, f"meta[{key!r}]", MAX_META_STR, empty=True)
        else:
            raise SchemaError(f"meta[{key!r}] must be int, float or str, got {kind.__name__}")
        clean[key] = item
    return clean


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """The first message each way on a stream: who we are and what we can exchange.

    ``version`` is the protocol version the sender speaks, ``network_id`` names the
    training network (peers of different networks never mix models), ``layout`` is the
    model layout (its fingerprint travels with it), ``codecs`` the codecs the sender can
    decode, in order of preference, ``name`` a display name for logs, ``job`` the job
    manifest (:mod:`gossipfl.wire.job`; empty: the sender states no job).
    """

    network_id: str
    layout: Layout
    codecs: tuple[str, ...]
    name: str = ""
    version: int = PROTOCOL_VERSION
    job: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        check_uint(self.version, "Hello.version", 0xFFFF)
        object.__setattr__(self, "job", MappingProxyType(check_job(self.job, "Hello.job")))
        check_token(self.network_id, "Hello.network_id", MAX_NETWORK_ID)
        check_str(self.name, "Hello.name", MAX_DISPLAY_NAME, empty=True)
        if not isinstance(self.layout, Layout):
            raise SchemaError("Hello.layout must be a gossipfl.model.Layout")
        codecs: object = self.codecs
        if isinstance(codecs, list):
            codecs = tuple(codecs)
            object.__setattr__(self, "codecs", codecs)
        if type(codecs) is not tuple or not 1 <= len(codecs) <= MAX_CODECS:
            raise SchemaError(f"Hello.codecs must be a tuple of 1 to {MAX_CODECS} names")
        for codec in codecs:
            check_token(codec, "a codec name", MAX_CODEC_NAME)
        if len(set(codecs)) != len(codecs):
            raise SchemaError("Hello.codecs lists a codec twice")


@quick_init
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Update:
    """A model: ``vector`` (1-D float32) of ``sender`` at ``round``, sent with ``codec``.

    ``reply`` asks the receiver to answer with its own model (async push-pull). ``meta``
    is a small bounded mapping for the engine (e.g. a loss, a sample count). ``digest``
    is the payload digest: ``None`` means "compute it when encoding"; a decoded Update
    carries the verified digest, and :func:`gossipfl.wire.with_digest` fills it in so
    one model goes to many peers hashed (and, for fp32, checked for NaN) once. Do not
    modify the vector after that: receivers would refuse the stale digest.

    A decoded ``vector`` is read-only (for fp32 it is a view of the received bytes):
    copy it before modifying it in place.
    """

    sender: str
    round: int
    vector: NDArray[np.float32]
    codec: str = "fp32"
    reply: bool = False
    meta: Mapping[str, MetaValue] = field(default_factory=dict)
    digest: bytes | None = None

    def __post_init__(self) -> None:
        check_token(self.sender, "Update.sender", MAX_PEER_ID)
        check_uint(self.round, "Update.round")
        check_token(self.codec, "Update.codec", MAX_CODEC_NAME)
        check_bool(self.reply, "Update.reply")
        object.__setattr__(self, "meta", check_meta(self.meta))
        if self.digest is not None:
            check_digest(self.digest, "Update.digest")
        vec = self.vector
        if not isinstance(vec, np.ndarray) or vec.ndim != 1 or vec.dtype != _FLOAT32:
            raise SchemaError(
                "Update.vector must be a 1-D float32 numpy array, got "
                f"{getattr(vec, 'dtype', type(vec).__name__)} of shape {getattr(vec, 'shape', '?')}"
            )


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class UpdateHead:
    """The head of a chunked Update: every Update field except the vector, plus the
    payload's array specs. The payload follows in :class:`Chunk` messages, in order,
    with nothing else in between on that stream."""

    sender: str
    round: int
    codec: str
    n: int
    params: Mapping[str, int]
    arrays: tuple[ArraySpec, ...]
    digest: bytes
    reply: bool = False
    meta: Mapping[str, MetaValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_token(self.sender, "UpdateHead.sender", MAX_PEER_ID)
        check_uint(self.round, "UpdateHead.round")
        check_token(self.codec, "UpdateHead.codec", MAX_CODEC_NAME)
        check_uint(self.n, "UpdateHead.n")
        check_digest(self.digest, "UpdateHead.digest")
        check_bool(self.reply, "UpdateHead.reply")
        object.__setattr__(self, "meta", check_meta(self.meta))
        object.__setattr__(self, "params", check_params(self.params))

    @property
    def payload_size(self) -> int:
        return sum(spec.nbytes for spec in self.arrays)


def check_params(value: object) -> dict[str, int]:
    """Codec parameters: at most 8 entries, token keys, non-negative int values."""
    if type(value) is dict and not value:
        return {}  # the usual params: nothing to check (a new dict, as below)
    if (type(value) is not dict and not isinstance(value, Mapping)) or len(value) > 8:
        raise SchemaError("codec params must be a mapping of at most 8 entries")
    for key, item in value.items():
        check_token(key, "a codec parameter name", MAX_META_KEY)
        check_uint(item, f"codec parameter {key!r}")
    return dict(value)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Chunk:
    """One piece of a chunked Update's payload. ``seq`` counts from 0; ``data`` is a
    read-only view of the received bytes (at least one byte)."""

    seq: int
    data: memoryview

    def __post_init__(self) -> None:
        check_uint(self.seq, "Chunk.seq", 0xFFFFFFFF)
        if not isinstance(self.data, memoryview) or not self.data.nbytes:
            raise SchemaError("Chunk.data must be a non-empty memoryview")


@dataclass(frozen=True, slots=True, kw_only=True)
class PullRequest:
    """Ask a peer for its model of at least ``round``, encoded with ``codec``; with
    ``digest``, exactly the model that was announced with that digest."""

    round: int = 0
    codec: str = "fp32"
    digest: bytes | None = None

    def __post_init__(self) -> None:
        check_uint(self.round, "PullRequest.round")
        check_token(self.codec, "PullRequest.codec", MAX_CODEC_NAME)
        if self.digest is not None:
            check_digest(self.digest, "PullRequest.digest")


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """I am alive and at ``round``. Sent when a stream has been idle."""

    round: int

    def __post_init__(self) -> None:
        check_uint(self.round, "Heartbeat.round")


@dataclass(frozen=True, slots=True, kw_only=True)
class Announce:
    """I have a model of ``round`` whose ``codec`` payload has ``digest``: pull it if
    you want it. Small enough for pubsub; never carries weights."""

    round: int
    codec: str
    digest: bytes

    def __post_init__(self) -> None:
        check_uint(self.round, "Announce.round")
        check_token(self.codec, "Announce.codec", MAX_CODEC_NAME)
        check_digest(self.digest, "Announce.digest")


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """We refuse: a code from :class:`RefusalCode` and a human sentence."""

    code: RefusalCode
    text: str = ""

    def __post_init__(self) -> None:
        if type(self.code) is not RefusalCode:
            if type(self.code) is int and self.code in KNOWN_CODES:
                object.__setattr__(self, "code", RefusalCode(self.code))
            else:
                raise SchemaError(f"Refusal.code {self.code!r:.20} is not a known RefusalCode")
        check_str(self.text, "Refusal.text", MAX_REFUSAL_TEXT, empty=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureKey:
    """My X25519 public key for secure averaging (sent after the Hello), signed by my
    identity so that a receiver relaying it to others cannot swap it for its own."""

    key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_secure_key(self.key, "SecureKey.key")
        check_fixed_bytes(self.signature, "SecureKey.signature", SECURE_SIGNATURE_SIZE)


def check_secure_key(value: object, what: str) -> bytes:
    return check_fixed_bytes(value, what, SECURE_KEY_SIZE)


def secure_key_bytes(peer: str, key: bytes) -> bytes:
    """What ``peer`` signs for its mask ``key``: :data:`SECURE_KEY_DOMAIN`, the peer ID
    (u16 big-endian byte count, then UTF-8), then the 32 key bytes. Canonical, so that
    another implementation reproduces it byte for byte (docs/protocol.md, section 5.8).
    The owner's ID is inside, so a key signed by one peer cannot be passed off as
    another's."""
    owner = peer.encode("utf-8")
    return SECURE_KEY_DOMAIN + len(owner).to_bytes(2, "big") + owner + key


@dataclass(frozen=True, slots=True)
class SecureMember:
    """One member of a receiver's group: its peer ID, its mask key, the weight the
    receiver gives its model, and the member's own signature over its key (relayed as
    the member sent it)."""

    peer: str
    key: bytes
    weight: float
    signature: bytes

    def __post_init__(self) -> None:
        check_token(self.peer, "SecureMember.peer", MAX_PEER_ID)
        check_secure_key(self.key, "SecureMember.key")
        check_fixed_bytes(self.signature, "SecureMember.signature", SECURE_SIGNATURE_SIZE)
        if type(self.weight) is not float or not 0.0 < self.weight <= 1.0:
            raise SchemaError(
                f"SecureMember.weight must be a float in (0, 1], got {self.weight!r:.40}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureGroup:
    """The receiver's group from ``epoch`` on: the in-neighbours whose masks cancel in its
    sum, with their keys and weights. A new epoch replaces the group."""

    epoch: int
    members: tuple[SecureMember, ...]

    def __post_init__(self) -> None:
        check_uint(self.epoch, "SecureGroup.epoch")
        members: object = self.members
        if isinstance(members, list):
            members = tuple(members)
            object.__setattr__(self, "members", members)
        if type(members) is not tuple or not 1 <= len(members) <= MAX_SECURE_GROUP:
            raise SchemaError(f"SecureGroup.members must hold 1 to {MAX_SECURE_GROUP} members")
        if not all(type(m) is SecureMember for m in members):
            raise SchemaError("SecureGroup.members must be SecureMember entries")
        if len({m.peer for m in members}) != len(members):
            raise SchemaError("SecureGroup.members lists a peer twice")
        if math.fsum(m.weight for m in members) > 1.0 + 1e-9:
            raise SchemaError("SecureGroup weights sum to more than 1")


def check_peers(value: object, what: str) -> tuple[str, ...]:
    """A list of distinct peer IDs (at most :data:`MAX_SECURE_GROUP`)."""
    if isinstance(value, list):
        value = tuple(value)
    if type(value) is not tuple or len(value) > MAX_SECURE_GROUP:
        raise SchemaError(f"{what} must list at most {MAX_SECURE_GROUP} peer IDs")
    for peer in value:
        check_token(peer, f"a peer ID in {what}", MAX_PEER_ID)
    if len(set(value)) != len(value):
        raise SchemaError(f"{what} lists a peer twice")
    return value


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SecureShare:
    """``sender``'s masked contribution to the receiver's sum at ``round`` (``missing``
    empty), or its correction for the ``missing`` members (an answer to
    :class:`SecureFix`): ``vector`` holds 64-bit ring elements, uniform to anyone
    without the masks."""

    sender: str
    round: int
    epoch: int
    vector: NDArray[np.uint64]
    missing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_token(self.sender, "SecureShare.sender", MAX_PEER_ID)
        check_uint(self.round, "SecureShare.round")
        check_uint(self.epoch, "SecureShare.epoch")
        object.__setattr__(self, "missing", check_peers(self.missing, "SecureShare.missing"))
        vec = self.vector
        if not isinstance(vec, np.ndarray) or vec.ndim != 1 or vec.dtype != np.uint64:
            raise SchemaError("SecureShare.vector must be a 1-D uint64 numpy array")


@dataclass(frozen=True, slots=True, kw_only=True)
class SecureFix:
    """The receiver asks a present member for its correction: the ``missing`` members'
    masks did not cancel in its sum of ``round``."""

    round: int
    epoch: int
    missing: tuple[str, ...]

    def __post_init__(self) -> None:
        check_uint(self.round, "SecureFix.round")
        check_uint(self.epoch, "SecureFix.epoch")
        missing = check_peers(self.missing, "SecureFix.missing")
        if not missing:
            raise SchemaError("SecureFix.missing must name at least one peer")
        object.__setattr__(self, "missing", missing)


Message: TypeAlias = (
    Hello
    | Update
    | UpdateHead
    | Chunk
    | PullRequest
    | Heartbeat
    | Announce
    | Refusal
    | SecureKey
    | SecureGroup
    | SecureShare
    | SecureFix
)
