"""The byte layout of a message, and encoding messages into it.

An encoded message (the body of one frame) is::

    u32 big-endian H | H bytes: msgpack header (a map) | zero padding to a multiple of 8 | payload

The header names the wire format version (``v``) and the message ``kind``, and holds the
kind's fields. The payload (only Update, and the Chunks of a chunked Update, have one)
holds raw little-endian array bytes, kept *outside* msgpack so that encoding can hand the
model's own memory to a vectored write (:func:`encode_parts`) and decoding can view it in
place with ``np.frombuffer``. Padding aligns the payload to 8 bytes relative to the start
of the message, so decoded float32 views are aligned. Decoding lives in
:mod:`gossipfl.wire.decoding`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import msgpack
import numpy as np

from gossipfl.wire.arrays import spec_of, wire_bytes
from gossipfl.wire.codecs import (
    DEFAULT_CODECS,
    CodecRegistry,
    check_encodable,
    is_vector_payload,
    nonfinite_error,
)
from gossipfl.wire.digest import PayloadCheck, PayloadHasher
from gossipfl.wire.errors import ArrayError, SchemaError
from gossipfl.wire.job import job_text
from gossipfl.wire.limits import Limits
from gossipfl.wire.messages import (
    Announce,
    Chunk,
    Heartbeat,
    Hello,
    Message,
    PullRequest,
    Refusal,
    SecureFix,
    SecureGroup,
    SecureKey,
    SecureShare,
    Update,
    UpdateHead,
)

#: Version of the byte format below. A decoder refuses any other.
WIRE_VERSION = 1
ALIGN = 8
PREFIX = struct.Struct(">I")
_ZEROS = bytes(ALIGN)
DEFAULT_LIMITS = Limits()
#: Payloads of at most this many bytes are hashed whole and checked for finiteness
#: apart, instead of by the blockwise fused pass of :class:`PayloadCheck` (on both
#: sides: the decoder uses the same bound).
SMALL_PAYLOAD = 1 << 16

UPDATE_KEYS = frozenset(
    {"v", "kind", "sender", "round", "codec", "n", "params", "arrays", "digest", "reply", "meta"}
)
_HEAD_FIELDS = ("sender", "round", "codec", "n", "params", "arrays", "digest", "reply", "meta")
#: The exact header keys of each message kind (a decoder refuses missing and extra keys).
KEYS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "hello": frozenset(
            {"v", "kind", "version", "network_id", "name", "codecs", "layout", "fingerprint"}
        ),
        "update": UPDATE_KEYS,
        "update-head": UPDATE_KEYS,
        "chunk": frozenset({"v", "kind", "seq"}),
        "pull": frozenset({"v", "kind", "round", "codec", "digest"}),
        "heartbeat": frozenset({"v", "kind", "round"}),
        "announce": frozenset({"v", "kind", "round", "codec", "digest"}),
        "refusal": frozenset({"v", "kind", "code", "text"}),
        "secure-key": frozenset({"v", "kind", "key", "sig"}),
        "secure-group": frozenset({"v", "kind", "epoch", "members"}),
        "secure-share": frozenset({"v", "kind", "sender", "round", "epoch", "n", "missing"}),
        "secure-fix": frozenset({"v", "kind", "round", "epoch", "missing"}),
    }
)
#: Keys a header may leave out (added after the kind, so that older peers interoperate).
OPTIONAL_KEYS: Mapping[str, frozenset[str]] = MappingProxyType({"hello": frozenset({"job"})})


# ---------------------------------------------------------------------------- encoding


def _prefixed_header(header: dict[str, Any]) -> bytes:
    """The header section of a message: length prefix, msgpack map, zero padding."""
    packed: bytes = msgpack.packb(header, use_bin_type=True)
    used = PREFIX.size + len(packed)
    return PREFIX.pack(len(packed)) + packed + _ZEROS[: -used % ALIGN]


def update_fields(update: Update, codecs: CodecRegistry) -> tuple[dict[str, Any], list[memoryview]]:
    codec = codecs.get(update.codec)
    vector = update.vector
    digest = update.digest
    if not codec.zero_copy:
        check_encodable(vector)  # before encoding: codecs take finite vectors only
    encoded = codec.encode(vector)
    specs = tuple(spec_of(array) for array in encoded.arrays)
    if specs != codec.specs(vector.size, encoded.params):  # pragma: no cover - codec bug
        raise ArrayError(f"codec {codec.name} produced arrays {specs} that its specs refuse")
    buffers = [wire_bytes(array) for array in encoded.arrays]
    if digest is None and sum(buffer.nbytes for buffer in buffers) <= SMALL_PAYLOAD:
        # Small (a simulation's models are a few KB): the finiteness check, then one
        # BLAKE3 call per buffer; the blockwise fused pass below gains nothing on bytes
        # that are in cache anyway, and its setup cost about 5 us a message.
        if codec.zero_copy:
            check_encodable(vector)
        hasher = PayloadHasher()
        for buffer in buffers:
            hasher.update(buffer)
        digest = hasher.digest()
    elif digest is None:
        # A zero-copy codec (fp32) sends the vector's own bytes: the digest and the
        # finiteness check are one pass over them. A given digest comes from
        # with_digest(), which made that pass, so then no pass at all (the receiver
        # checks anyway).
        check = PayloadCheck(floats=is_vector_payload(codec, vector.size, specs))
        for buffer in buffers:
            check.update(buffer)
        if codec.zero_copy and not check.floats:  # pragma: no cover - a codec of one's own
            check_encodable(vector)
        if check.first_nonfinite is not None:
            raise nonfinite_error(vector, check.first_nonfinite)
        digest = check.digest()
    fields = {
        "sender": update.sender,
        "round": update.round,
        "codec": update.codec,
        "n": vector.size,
        "params": dict(encoded.params),
        "arrays": specs,
        "digest": digest,
        "reply": update.reply,
        "meta": dict(update.meta),
    }
    return fields, buffers


def update_header(fields: dict[str, Any], kind: str = "update") -> bytes:
    """The framed header (length prefix, msgpack, padding) of an Update or UpdateHead,
    from validated fields whose ``arrays`` are :class:`ArraySpec` objects."""
    header = {"v": WIRE_VERSION, "kind": kind, **fields}
    header["arrays"] = [spec.to_wire() for spec in fields["arrays"]]
    return _prefixed_header(header)


def encode_parts(
    message: Message, *, codecs: CodecRegistry = DEFAULT_CODECS
) -> list[bytes | memoryview]:
    """Encode ``message`` as a list of buffers whose concatenation is the encoded
    message: the header (with its length prefix and padding), then the payload arrays
    as views of their own memory (no copy for fp32). Made for vectored writes; keep the
    message's arrays unchanged until the buffers are written.

    Raises :class:`~gossipfl.wire.errors.NonFiniteError` for a vector with NaN or infinity,
    :class:`~gossipfl.wire.errors.CodecRangeError` when the codec cannot represent a
    value, :class:`~gossipfl.wire.errors.UnknownCodecError` for an unknown codec name.
    """
    payload: list[memoryview] = []
    if isinstance(message, Update):
        fields, payload = update_fields(message, codecs)
        return [update_header(fields), *payload]
    if isinstance(message, Hello):
        header = {
            "v": WIRE_VERSION,
            "kind": "hello",
            "version": message.version,
            "network_id": message.network_id,
            "name": message.name,
            "codecs": list(message.codecs),
            "layout": message.layout.text,
            "fingerprint": message.layout.fingerprint,
        }
        if message.job:  # absent when empty, so that peers stating no job still interoperate
            header["job"] = job_text(message.job)
    elif isinstance(message, UpdateHead):
        fields = {name: getattr(message, name) for name in _HEAD_FIELDS}
        return [update_header(fields, "update-head")]
    elif isinstance(message, Chunk):
        header = {"v": WIRE_VERSION, "kind": "chunk", "seq": message.seq}
        payload = [message.data.cast("B")]
    elif isinstance(message, Heartbeat):
        header = {"v": WIRE_VERSION, "kind": "heartbeat", "round": message.round}
    elif isinstance(message, PullRequest):
        header = {
            "v": WIRE_VERSION,
            "kind": "pull",
            "round": message.round,
            "codec": message.codec,
            "digest": message.digest,
        }
    elif isinstance(message, Announce):
        header = {
            "v": WIRE_VERSION,
            "kind": "announce",
            "round": message.round,
            "codec": message.codec,
            "digest": message.digest,
        }
    elif isinstance(message, Refusal):
        header = {
            "v": WIRE_VERSION,
            "kind": "refusal",
            "code": int(message.code),
            "text": message.text,
        }
    elif isinstance(message, SecureKey):
        header = {
            "v": WIRE_VERSION,
            "kind": "secure-key",
            "key": message.key,
            "sig": message.signature,
        }
    elif isinstance(message, SecureGroup):
        header = {
            "v": WIRE_VERSION,
            "kind": "secure-group",
            "epoch": message.epoch,
            "members": [[m.peer, m.key, m.weight, m.signature] for m in message.members],
        }
    elif isinstance(message, SecureShare):
        header = {
            "v": WIRE_VERSION,
            "kind": "secure-share",
            "sender": message.sender,
            "round": message.round,
            "epoch": message.epoch,
            "n": message.vector.size,
            "missing": list(message.missing),
        }
        # Ring elements, little-endian u64: the payload is the vector's own memory.
        payload = [np.ascontiguousarray(message.vector, dtype="<u8").data.cast("B")]
    elif isinstance(message, SecureFix):
        header = {
            "v": WIRE_VERSION,
            "kind": "secure-fix",
            "round": message.round,
            "epoch": message.epoch,
            "missing": list(message.missing),
        }
    else:
        raise SchemaError(f"cannot encode {type(message).__name__}: not a gossipfl.wire message")
    return [_prefixed_header(header), *payload]


def encode(message: Message, *, codecs: CodecRegistry = DEFAULT_CODECS) -> bytes:
    """Encode ``message`` to one bytes object (the join of :func:`encode_parts`)."""
    return b"".join(encode_parts(message, codecs=codecs))


def with_digest(update: Update, *, codecs: CodecRegistry = DEFAULT_CODECS) -> Update:
    """A copy of ``update`` with its payload digest filled in, so that encoding it for
    many peers hashes the payload once."""
    if update.digest is not None:
        return update
    fields, _ = update_fields(update, codecs)
    return replace(update, digest=fields["digest"])


__all__ = [
    "ALIGN",
    "DEFAULT_LIMITS",
    "KEYS",
    "OPTIONAL_KEYS",
    "PREFIX",
    "WIRE_VERSION",
    "encode",
    "encode_parts",
    "update_fields",
    "update_header",
    "with_digest",
]
