"""Decoding one message: bytes from a stranger in, a validated message out.

:func:`decode` refuses anything that is not exactly the format of ``docs/protocol.md``
with a :class:`~gossipfl.wire.errors.WireError` subclass, and bounds every allocation by
:class:`~gossipfl.wire.limits.Limits` before making it. The msgpack unpacker runs with
small container limits, no extension types, string keys only and no repeated keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import msgpack
import numpy as np

from gossipfl.model.errors import LayoutError
from gossipfl.model.layout import FINGERPRINT_SIZE, Layout
from gossipfl.wire._numeric import all_finite, first_nonfinite
from gossipfl.wire._types import BytesLike
from gossipfl.wire.arrays import ArraySpec, view_array
from gossipfl.wire.codecs import DEFAULT_CODECS, Codec, CodecRegistry, is_vector_payload
from gossipfl.wire.codes import KNOWN_CODES, RefusalCode
from gossipfl.wire.digest import PayloadCheck, payload_digest
from gossipfl.wire.envelope import (
    ALIGN,
    DEFAULT_LIMITS,
    KEYS,
    OPTIONAL_KEYS,
    PREFIX,
    SMALL_PAYLOAD,
    WIRE_VERSION,
)
from gossipfl.wire.errors import (
    ArrayError,
    DigestMismatchError,
    MalformedError,
    NonFiniteError,
    SchemaError,
    TooLargeError,
    TruncatedError,
    UnknownKindError,
    UnknownVersionError,
    WireError,
)
from gossipfl.wire.job import parse_job
from gossipfl.wire.limits import Limits
from gossipfl.wire.messages import (
    MAX_CODEC_NAME,
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
    SecureMember,
    SecureShare,
    Update,
    UpdateHead,
    check_digest,
    check_params,
    check_token,
    check_uint,
)

_ZEROS = bytes(ALIGN)
_BUFFERS = (bytes, bytearray, memoryview)  # (a tuple: ``A | B`` is built at every call)
#: msgpack container bounds. No header needs more: the largest array is a Hello's codec
#: list (16), the largest map a meta mapping (16 entries). Small bounds matter: msgpack
#: preallocates a declared container before reading it, so nested declarations of large
#: containers would otherwise amplify a few bytes into megabytes.
_MAX_CONTAINER = 16
_MAX_BIN = 64


def _refuse_ext(code: int, data: bytes) -> object:
    raise MalformedError(f"msgpack extension types are not allowed (got type {code})")


def _unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    table = dict(pairs)
    if len(table) != len(pairs):
        raise MalformedError("a msgpack map repeats a key")
    return table


def _unpack_header(view: memoryview, limits: Limits) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(
            view,
            raw=False,
            use_list=True,
            strict_map_key=True,
            timestamp=0,
            ext_hook=_refuse_ext,
            object_pairs_hook=_unique_map,
            max_str_len=limits.max_header,
            max_bin_len=_MAX_BIN,
            max_array_len=_MAX_CONTAINER,
            max_map_len=_MAX_CONTAINER,
            max_ext_len=0,
        )
    except WireError:
        raise
    except msgpack.ExtraData:
        raise MalformedError("bytes after the msgpack header inside its declared length") from None
    except Exception as exc:  # any failure inside msgpack means: not valid msgpack for us
        raise MalformedError(f"the header is not valid msgpack: {exc}") from None
    if type(header) is not dict:
        raise SchemaError(f"the header must be a msgpack map, got {type(header).__name__}")
    return header


def _check_keys(kind: str, header: dict[str, Any]) -> None:
    expected = KEYS[kind]
    if header.keys() == expected:  # the usual case, without building a set
        return
    keys = header.keys() - OPTIONAL_KEYS.get(kind, frozenset())
    if keys != expected:
        missing = sorted(expected - keys)
        extra = sorted(repr(k)[:40] for k in keys - expected)
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(extra)}")
        raise SchemaError(f"{kind} message: {'; '.join(parts)}")


def _no_payload(kind: str, payload: memoryview) -> None:
    if payload.nbytes:
        raise MalformedError(f"a {kind} message has no payload, but {payload.nbytes} bytes follow")


def decode(
    data: BytesLike,
    *,
    limits: Limits = DEFAULT_LIMITS,
    codecs: CodecRegistry = DEFAULT_CODECS,
    verify_digest: bool = True,
) -> Message:
    """Decode one message (a frame's body). Raises only :class:`WireError` subclasses.

    ``verify_digest=False`` skips the payload digest (for a transport that already
    guarantees integrity, or an in-process simulation); every other check stays.
    A decoded Update's vector is float32, finite and read-only.
    """
    if not isinstance(data, _BUFFERS):
        raise MalformedError(
            f"decode needs bytes, bytearray or memoryview, got {type(data).__name__}"
        )
    try:
        view = memoryview(data).cast("B")
    except TypeError as exc:
        raise MalformedError(f"decode needs a contiguous buffer: {exc}") from None
    total = view.nbytes
    if total > limits.max_frame:
        raise TooLargeError(f"message of {total} bytes exceeds max_frame {limits.max_frame}")
    if total < PREFIX.size:
        raise TruncatedError(f"message of {total} bytes is shorter than its 4-byte header length")
    (size,) = PREFIX.unpack_from(view)
    if size > limits.max_header:
        raise TooLargeError(f"header of {size} bytes exceeds max_header {limits.max_header}")
    end = PREFIX.size + size
    start = end + (-end % ALIGN)
    if start > total:
        raise TruncatedError(f"message of {total} bytes is shorter than its declared header")
    header = _unpack_header(view[PREFIX.size : end], limits)
    if view[end:start] != _ZEROS[: start - end]:
        raise MalformedError("the padding after the header is not zero")
    version = header.get("v")
    if type(version) is not int:
        raise SchemaError("the header lacks an integer 'v' (wire format version)")
    if version != WIRE_VERSION:
        raise UnknownVersionError(f"wire format version {version} is not {WIRE_VERSION}")
    kind = header.get("kind")
    if type(kind) is not str or kind not in KEYS:
        raise UnknownKindError(f"unknown message kind {kind!r:.40}")
    _check_keys(kind, header)
    payload = view[start:]
    return _DECODERS[kind](header, payload, limits, codecs, verify_digest)


def _decode_hello(h: dict[str, Any], payload: memoryview, limits: Limits, *_: Any) -> Hello:
    _no_payload("hello", payload)
    text = h["layout"]
    if type(text) is not str:
        raise SchemaError("Hello.layout must be a string (the layout's text form)")
    try:
        layout = Layout.from_text(text, max_tensors=limits.max_tensors)
    except LayoutError as exc:
        raise SchemaError(f"Hello.layout: {exc}") from None
    fingerprint = h["fingerprint"]
    if type(fingerprint) is not bytes or len(fingerprint) != FINGERPRINT_SIZE:
        raise SchemaError(f"Hello.fingerprint must be {FINGERPRINT_SIZE} bytes")
    if fingerprint != layout.fingerprint:
        raise DigestMismatchError("Hello.fingerprint does not match the layout it carries")
    codecs = h["codecs"]
    if type(codecs) is not list:
        raise SchemaError("Hello.codecs must be an array of codec names")
    return Hello(
        version=h["version"],
        network_id=h["network_id"],
        name=h["name"],
        codecs=tuple(codecs),
        layout=layout,
        job=parse_job(h.get("job", ""), "Hello.job"),
    )


def _same_spec(item: object, spec: ArraySpec) -> bool:
    """Whether ``item`` is exactly ``spec``'s wire form ``[dtype, [dims]]``, with the
    types :meth:`ArraySpec.from_wire` requires (an int dim, not True or 1.0). The specs
    a codec expects are valid, so a match needs no parsing. Why: parsing made an
    :class:`ArraySpec` per array of every update received, only to compare it."""
    if type(item) is not list or len(item) != 2:
        return False
    dtype, shape = item
    want = spec.shape
    if type(dtype) is not str or dtype != spec.dtype or type(shape) is not list:
        return False
    if len(shape) != len(want):
        return False
    for dim, expected in zip(shape, want, strict=True):
        if type(dim) is not int or dim != expected:
            return False
    return True


def _head_fields(h: dict[str, Any], limits: Limits, codecs: CodecRegistry) -> dict[str, Any]:
    """Validate the fields shared by Update and UpdateHead, payload aside."""
    n = h["n"]
    if type(n) is not int or n < 0:
        raise SchemaError(f"n must be a non-negative int, got {n!r:.40}")
    if n > limits.max_params:
        raise TooLargeError(f"an update of {n} parameters exceeds max_params {limits.max_params}")
    codec = codecs.get(check_token(h["codec"], "codec", MAX_CODEC_NAME))
    params = check_params(h["params"])
    expected = codec.specs(n, params)
    raw = h["arrays"]
    if type(raw) is not list or len(raw) != len(expected):
        raise ArrayError(f"codec {codec.name} carries {len(expected)} arrays; the header differs")
    specs = expected
    if not all(map(_same_spec, raw, expected)) or any(
        spec.count > limits.max_payload for spec in expected
    ):
        # Parsed, for the error that says what is wrong with them.
        specs = tuple(ArraySpec.from_wire(item, max_count=limits.max_payload) for item in raw)
        if specs != expected:
            raise ArrayError(
                f"arrays {specs} do not match codec {codec.name} for n={n}: {expected}"
            )
    return {
        "sender": h["sender"],
        "round": h["round"],
        "codec": codec.name,
        "n": n,
        "params": params,
        "arrays": specs,
        "digest": check_digest(h["digest"], "digest"),
        "reply": h["reply"],
        "meta": h["meta"],
    }


def _decode_update(
    h: dict[str, Any], payload: memoryview, limits: Limits, codecs: CodecRegistry, verify: bool
) -> Update:
    fields = _head_fields(h, limits, codecs)
    return assemble_update(fields, payload, codecs, verify)


def fused_check(codec: Codec, n: int, specs: tuple[ArraySpec, ...], verify: bool) -> PayloadCheck:
    """The one pass a receiver makes over a payload of these arrays: the digest when
    ``verify``, and the finiteness check when the payload is the vector."""
    return PayloadCheck(digest=verify, floats=is_vector_payload(codec, n, specs))


def assemble_update(
    fields: dict[str, Any],
    payload: memoryview,
    codecs: CodecRegistry,
    verify: bool,
    *,
    checked: PayloadCheck | None = None,
) -> Update:
    """Build an Update from validated head fields and its complete payload: check the
    size and the digest, view the arrays, run the codec, check finiteness.

    For a payload that is the vector itself (``fp32``), the digest and the finiteness
    check are one pass over the payload (:class:`PayloadCheck`). ``checked`` is such a
    pass already made over all of ``payload`` as it arrived (by the chunk assembler,
    made with :func:`fused_check`); its digest is compared when ``verify`` is true."""
    specs: tuple[ArraySpec, ...] = fields["arrays"]
    size = specs[0].nbytes if len(specs) == 1 else sum(spec.nbytes for spec in specs)
    if payload.nbytes < size:
        raise TruncatedError(f"payload has {payload.nbytes} bytes, its arrays need {size}")
    if payload.nbytes > size:
        raise MalformedError(f"payload has {payload.nbytes - size} bytes after its arrays")
    n = fields["n"]
    codec = codecs.get(fields["codec"])
    check = checked
    if check is None and size <= SMALL_PAYLOAD:
        # Small (a simulation's models are a few KB): one BLAKE3 call, then the
        # finiteness check on the decoded vector. The payload is in cache either way, so
        # the fused pass's blocks gain nothing; its setup cost about 3 us a message.
        if verify and payload_digest(payload) != fields["digest"]:
            raise DigestMismatchError("the payload's digest does not match the header's")
    elif check is None and (verify or is_vector_payload(codec, n, specs)):
        check = fused_check(codec, n, specs, verify)
        check.update(payload)
    if verify and check is not None and check.digest() != fields["digest"]:
        raise DigestMismatchError("the payload's digest does not match the header's")
    arrays = []
    offset = 0
    for spec in specs:
        arrays.append(view_array(spec, payload, offset))
        offset += spec.nbytes
    vector = codec.decode(n, fields["params"], arrays)
    if check is not None and check.floats:
        bad = check.first_nonfinite  # the payload is the vector: checked in the pass
    else:
        bad = None if all_finite(vector) else first_nonfinite(vector)
    if bad is not None:
        raise NonFiniteError(f"decoded vector has a non-finite value at [{bad}]")
    flags = vector.flags
    if flags.writeable:  # fp32's is a view of the read-only arrays already
        flags.writeable = False
    return Update(
        sender=fields["sender"],
        round=fields["round"],
        vector=vector,
        codec=fields["codec"],
        reply=fields["reply"],
        meta=fields["meta"],
        digest=fields["digest"],
    )


def _decode_head(
    h: dict[str, Any], payload: memoryview, limits: Limits, codecs: CodecRegistry, _: bool
) -> UpdateHead:
    _no_payload("update-head", payload)
    fields = _head_fields(h, limits, codecs)
    head = UpdateHead(**fields)
    if head.payload_size > limits.max_payload:
        raise TooLargeError(
            f"a chunked update of {head.payload_size} bytes "
            f"exceeds max_payload {limits.max_payload}"
        )
    return head


def _decode_chunk(h: dict[str, Any], payload: memoryview, *_: Any) -> Chunk:
    return Chunk(seq=h["seq"], data=payload.toreadonly())


def _decode_pull(h: dict[str, Any], payload: memoryview, *_: Any) -> PullRequest:
    _no_payload("pull", payload)
    return PullRequest(round=h["round"], codec=h["codec"], digest=h["digest"])


def _decode_heartbeat(h: dict[str, Any], payload: memoryview, *_: Any) -> Heartbeat:
    _no_payload("heartbeat", payload)
    return Heartbeat(round=h["round"])


def _decode_announce(h: dict[str, Any], payload: memoryview, *_: Any) -> Announce:
    _no_payload("announce", payload)
    return Announce(round=h["round"], codec=h["codec"], digest=h["digest"])


def _decode_refusal(h: dict[str, Any], payload: memoryview, *_: Any) -> Refusal:
    _no_payload("refusal", payload)
    code = check_uint(h["code"], "Refusal.code", 0xFFFF)
    if code not in KNOWN_CODES:
        raise SchemaError(f"unknown refusal code {code}")
    return Refusal(code=RefusalCode(code), text=h["text"])


def _decode_secure_key(h: dict[str, Any], payload: memoryview, *_: Any) -> SecureKey:
    _no_payload("secure-key", payload)
    return SecureKey(key=h["key"], signature=h["sig"])


def _decode_secure_group(h: dict[str, Any], payload: memoryview, *_: Any) -> SecureGroup:
    _no_payload("secure-group", payload)
    raw = h["members"]
    if type(raw) is not list:
        raise SchemaError("SecureGroup.members must be an array")
    members = []
    for item in raw:
        if type(item) is not list or len(item) != 4:
            raise SchemaError(
                "a SecureGroup member must be an array [peer, key, weight, signature]"
            )
        peer, key, weight, signature = item
        members.append(SecureMember(peer, key, weight, signature))
    return SecureGroup(epoch=h["epoch"], members=tuple(members))


def _decode_secure_share(
    h: dict[str, Any], payload: memoryview, limits: Limits, *_: Any
) -> SecureShare:
    n = h["n"]
    if type(n) is not int or n < 1:
        raise SchemaError(f"SecureShare.n must be a positive int, got {n!r:.40}")
    if n > limits.max_params:
        raise TooLargeError(f"a share of {n} parameters exceeds max_params {limits.max_params}")
    if payload.nbytes != 8 * n:
        kind = TruncatedError if payload.nbytes < 8 * n else MalformedError
        raise kind(f"a share of {n} parameters needs {8 * n} payload bytes, got {payload.nbytes}")
    vector = np.frombuffer(payload, dtype="<u8").astype(np.uint64, copy=False)
    vector.flags.writeable = False
    missing = h["missing"]
    if type(missing) is not list:
        raise SchemaError("SecureShare.missing must be an array of peer IDs")
    return SecureShare(
        sender=h["sender"],
        round=h["round"],
        epoch=h["epoch"],
        vector=vector,
        missing=tuple(missing),
    )


def _decode_secure_fix(h: dict[str, Any], payload: memoryview, *_: Any) -> SecureFix:
    _no_payload("secure-fix", payload)
    missing = h["missing"]
    if type(missing) is not list:
        raise SchemaError("SecureFix.missing must be an array of peer IDs")
    return SecureFix(round=h["round"], epoch=h["epoch"], missing=tuple(missing))


_DECODERS: Mapping[
    str, Callable[[dict[str, Any], memoryview, Limits, CodecRegistry, bool], Message]
] = MappingProxyType(
    {
        "hello": _decode_hello,
        "update": _decode_update,
        "update-head": _decode_head,
        "chunk": _decode_chunk,
        "pull": _decode_pull,
        "heartbeat": _decode_heartbeat,
        "announce": _decode_announce,
        "refusal": _decode_refusal,
        "secure-key": _decode_secure_key,
        "secure-group": _decode_secure_group,
        "secure-share": _decode_secure_share,
        "secure-fix": _decode_secure_fix,
    }
)


__all__ = ["assemble_update", "decode", "fused_check"]
