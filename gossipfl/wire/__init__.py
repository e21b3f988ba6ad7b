"""The wire protocol: messages, their byte encoding, frames, chunked models, codecs.

Everything a peer receives comes from a stranger, so :func:`decode` and the readers
below refuse bad input with a :class:`WireError` subclass, bounding every allocation by
:class:`Limits` before making it. No pickle, no ``torch.load``: headers are msgpack with
tight container limits and no extension types, arrays are raw little-endian bytes viewed
with ``np.frombuffer``. The byte-level specification is ``docs/protocol.md``.

Typical use::

    data = wire.encode(wire.Update(sender=peer_id, round=7, vector=vec, codec="int8"))
    message = wire.decode(data, limits=wire.Limits.for_params(adapter.num_params))

    for framed in wire.iter_frames(message):        # one frame, or a head and chunks
        await stream.write(framed)
    decoder = wire.StreamDecoder(limits=...)         # per received stream
    for message in decoder.feed(received_bytes): ...

    # A transport that frames messages itself sends and receives message bodies:
    for data in wire.iter_encoded(update, max_frame=...): await transport.send(peer, data)
    message = decoder.feed_message(body)             # None until a chunked Update is whole
"""

from __future__ import annotations

from gossipfl.wire.arrays import WIRE_DTYPES, ArraySpec
from gossipfl.wire.chunking import (
    DEFAULT_CHUNK,
    StreamDecoder,
    UpdateAssembler,
    encode_update,
    iter_encoded,
    iter_frame_parts,
    iter_frames,
    iter_message_parts,
)
from gossipfl.wire.codecs import (
    DEFAULT_CODECS,
    FP16_MAX,
    Codec,
    CodecRegistry,
    Encoded,
    Fp16,
    Fp32,
    Int8,
    int8_error_bound,
)
from gossipfl.wire.codes import RefusalCode
from gossipfl.wire.decoding import decode
from gossipfl.wire.digest import DIGEST_SIZE, PayloadHasher, payload_digest
from gossipfl.wire.envelope import (
    DEFAULT_LIMITS,
    WIRE_VERSION,
    encode,
    encode_parts,
    with_digest,
)
from gossipfl.wire.errors import (
    ArrayError,
    CodecRangeError,
    DigestMismatchError,
    MalformedError,
    NonFiniteError,
    SchemaError,
    SequenceError,
    TooLargeError,
    TruncatedError,
    UnknownCodecError,
    UnknownKindError,
    UnknownVersionError,
    WireError,
)
from gossipfl.wire.framing import FrameReader, frame, frame_parts
from gossipfl.wire.handshake import check_hello, common_codecs, refuse_hello
from gossipfl.wire.job import (
    Job,
    check_job,
    describe_job_mismatch,
    job_differences,
    job_text,
    parse_job,
)
from gossipfl.wire.limits import DEFAULT_MAX_FRAME, Limits
from gossipfl.wire.memo import DecodeMemo
from gossipfl.wire.messages import (
    MAX_SECURE_GROUP,
    PROTOCOL_VERSION,
    SECURE_KEY_DOMAIN,
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
    secure_key_bytes,
)
from gossipfl.wire.protocols import PROTOCOL_GOSSIP, PROTOCOL_PULL, announce_topic

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_CODECS",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_FRAME",
    "DIGEST_SIZE",
    "FP16_MAX",
    "MAX_SECURE_GROUP",
    "PROTOCOL_GOSSIP",
    "PROTOCOL_PULL",
    "PROTOCOL_VERSION",
    "SECURE_KEY_DOMAIN",
    "WIRE_DTYPES",
    "WIRE_VERSION",
    "Announce",
    "ArrayError",
    "ArraySpec",
    "Chunk",
    "Codec",
    "CodecRangeError",
    "CodecRegistry",
    "DecodeMemo",
    "DigestMismatchError",
    "Encoded",
    "Fp16",
    "Fp32",
    "FrameReader",
    "Heartbeat",
    "Hello",
    "Int8",
    "Job",
    "Limits",
    "MalformedError",
    "Message",
    "NonFiniteError",
    "PayloadHasher",
    "PullRequest",
    "Refusal",
    "RefusalCode",
    "SchemaError",
    "SecureFix",
    "SecureGroup",
    "SecureKey",
    "SecureMember",
    "SecureShare",
    "SequenceError",
    "StreamDecoder",
    "TooLargeError",
    "TruncatedError",
    "UnknownCodecError",
    "UnknownKindError",
    "UnknownVersionError",
    "Update",
    "UpdateAssembler",
    "UpdateHead",
    "WireError",
    "announce_topic",
    "check_hello",
    "check_job",
    "common_codecs",
    "decode",
    "describe_job_mismatch",
    "encode",
    "encode_parts",
    "encode_update",
    "frame",
    "frame_parts",
    "int8_error_bound",
    "iter_encoded",
    "iter_frame_parts",
    "iter_frames",
    "iter_message_parts",
    "job_differences",
    "job_text",
    "parse_job",
    "payload_digest",
    "refuse_hello",
    "secure_key_bytes",
    "with_digest",
]
