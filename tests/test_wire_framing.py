"""Frames, the sans-I/O frame reader, chunked Updates and the stream decoder."""

from __future__ import annotations

import itertools
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossipfl import wire
from gossipfl.model import Layout

MiB = 1 << 20


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.lists(st.integers(0, 10**6)))
def test_frames_survive_any_split(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(wire.frame(body) for body in bodies)
    reader = wire.FrameReader(max_frame=300)
    got = [bytes(f) for piece in split(stream, cuts) for f in reader.feed(piece)]
    assert got == bodies
    reader.eof()
    assert reader.pending == 0


@given(st.binary(min_size=1, max_size=100), st.data())
def test_eof_inside_a_frame_is_an_error(body: bytes, data: st.DataObject) -> None:
    stream = wire.frame(body)
    cut = data.draw(st.integers(1, len(stream) - 1))
    reader = wire.FrameReader()
    assert reader.feed(stream[:cut]) == []
    assert reader.pending == cut
    with pytest.raises(wire.TruncatedError, match="inside"):
        reader.eof()


def test_too_large_prefix_is_refused_before_any_allocation() -> None:
    reader = wire.FrameReader(max_frame=1000)
    reader.feed(struct.pack(">I", 1000)[:3])  # not yet known
    tracemalloc.start()
    try:
        with pytest.raises(wire.TooLargeError, match="1001"):
            wire.FrameReader(max_frame=1000).feed(struct.pack(">I", 1001))
        with pytest.raises(wire.TooLargeError):
            wire.FrameReader(max_frame=1 << 30).feed(struct.pack(">I", 0xFFFFFFFF))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_reader_is_dead_after_an_error_and_zero_length_is_malformed() -> None:
    reader = wire.FrameReader()
    with pytest.raises(wire.MalformedError, match="length 0"):
        reader.feed(b"\x00\x00\x00\x00")
    with pytest.raises(wire.MalformedError):
        reader.feed(wire.frame(b"ok"))
    with pytest.raises(wire.MalformedError):
        reader.eof()


def test_frame_parts_is_a_vectored_frame() -> None:
    parts = wire.frame_parts([b"ab", memoryview(b"cde")])
    assert b"".join(parts) == wire.frame(b"abcde")
    with pytest.raises(wire.MalformedError):
        wire.frame(b"")


def test_encode_parts_shares_the_vector_memory() -> None:
    vec = np.arange(1000, dtype=np.float32)
    parts = wire.encode_parts(wire.Update(sender="p", round=0, vector=vec))
    assert len(parts) == 2
    payload = parts[1]
    assert isinstance(payload, memoryview)
    assert np.shares_memory(np.frombuffer(payload, dtype=np.float32), vec)
    assert b"".join(parts) == wire.encode(wire.Update(sender="p", round=0, vector=vec))


def test_decode_is_zero_copy_and_aligned_for_fp32() -> None:
    vec = np.arange(1001, dtype=np.float32)
    data = bytearray(wire.encode(wire.Update(sender="p", round=0, vector=vec)))
    back = wire.decode(data)
    assert isinstance(back, wire.Update)
    assert np.shares_memory(back.vector, np.frombuffer(data, dtype=np.uint8))
    assert back.vector.flags.aligned


def stream_of(update: wire.Update, max_frame: int, chunk_size: int | None = None) -> bytes:
    return b"".join(wire.iter_frames(update, max_frame=max_frame, chunk_size=chunk_size))


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
def test_chunked_update_roundtrip(codec: str) -> None:
    rng = np.random.default_rng(0)
    vec = rng.standard_normal(300_000).astype(np.float32)
    frames = list(wire.iter_frames(wire.Update(sender="p", round=4, vector=vec, codec=codec,
                                               reply=True, meta={"loss": 0.25}),
                                   max_frame=64 * 1024))  # fmt: skip
    assert len(frames) > 3
    assert all(len(f) <= 64 * 1024 + 4 for f in frames)
    decoder = wire.StreamDecoder(limits=wire.Limits(max_frame=64 * 1024))
    out = []
    for piece in split(b"".join(frames), list(range(0, 10**7, 9_999))):
        out += decoder.feed(piece)
        assert decoder.busy or out
    decoder.eof()
    assert len(out) == 1
    back = out[0]
    assert isinstance(back, wire.Update)
    single = wire.decode(wire.encode(wire.Update(sender="p", round=4, vector=vec, codec=codec)))
    assert isinstance(single, wire.Update)
    np.testing.assert_array_equal(back.vector, single.vector)
    assert back.digest == single.digest
    assert (back.round, back.reply, back.meta) == (4, True, {"loss": 0.25})


def test_small_updates_stay_single_frames_and_streams_mix_kinds() -> None:
    vec = np.ones(650, dtype=np.float32)
    messages: list[wire.Message] = [
        wire.Hello(network_id="n", layout=Layout.of([("w", "float32", (650,))]), codecs=("fp32",)),
        wire.Update(sender="p", round=1, vector=vec),
        wire.Heartbeat(round=1),
        wire.Update(sender="p", round=2, vector=np.zeros(50_000, np.float32), codec="int8"),
        wire.Refusal(code=wire.RefusalCode.BUSY, text="later"),
    ]
    stream = b"".join(b"".join(wire.iter_frames(m, max_frame=16 * 1024)) for m in messages)
    decoder = wire.StreamDecoder(limits=wire.Limits(max_frame=16 * 1024))
    out = decoder.feed(stream)
    decoder.eof()
    assert [type(m) for m in out] == [type(m) for m in messages]
    assert len(list(wire.iter_frames(messages[1], max_frame=16 * 1024))) == 1


def chunked_parts(vec: np.ndarray, max_frame: int) -> list[bytes]:
    """The frame bodies of a chunked fp32 update."""
    reader = wire.FrameReader(max_frame)
    return [
        bytes(b)
        for b in reader.feed(stream_of(wire.Update(sender="p", round=0, vector=vec), max_frame))
    ]


def test_chunk_sequence_errors() -> None:
    vec = np.arange(100_000, dtype=np.float32)
    head, *chunks = chunked_parts(vec, 64 * 1024)
    limits = wire.Limits(max_frame=64 * 1024)

    def feed(bodies: list[bytes]) -> wire.StreamDecoder:
        decoder = wire.StreamDecoder(limits=limits)
        for body in bodies:
            decoder.feed(wire.frame(body))
        return decoder

    with pytest.raises(wire.SequenceError, match="without"):
        feed([chunks[0]])
    with pytest.raises(wire.SequenceError, match="chunk 2 arrived where chunk 1"):
        feed([head, chunks[0], chunks[2]])
    with pytest.raises(wire.SequenceError, match="middle"):
        feed([head, chunks[0], bytes(wire.encode(wire.Heartbeat(round=0)))])
    decoder = feed([head, *chunks[:-1]])
    assert decoder.busy
    with pytest.raises(wire.TruncatedError, match="middle of a chunked"):
        decoder.eof()
    with pytest.raises(wire.TruncatedError):
        decoder.eof()  # the error sticks
    # A chunk that carries more than the head declared.
    with pytest.raises(wire.SequenceError, match="overruns"):
        feed([head, *chunks[:-1], _grow(chunks[-1])])


def _grow(chunk_body: bytes) -> bytes:
    message = wire.decode(chunk_body)
    assert isinstance(message, wire.Chunk)
    return bytes(
        wire.encode(wire.Chunk(seq=message.seq, data=memoryview(bytes(message.data) + b"!!!!")))
    )


def test_corrupt_chunk_fails_the_digest() -> None:
    vec = np.arange(100_000, dtype=np.float32)
    head, *chunks = chunked_parts(vec, 64 * 1024)
    message = wire.decode(chunks[1])
    assert isinstance(message, wire.Chunk)
    data = bytearray(message.data)
    data[100] ^= 0xFF
    chunks[1] = bytes(wire.encode(wire.Chunk(seq=1, data=memoryview(bytes(data)))))
    decoder = wire.StreamDecoder(limits=wire.Limits(max_frame=64 * 1024))
    stream = b"".join(wire.frame(body) for body in [head, *chunks])
    with pytest.raises(wire.DigestMismatchError):
        decoder.feed(stream)


def test_head_declaring_more_than_max_payload_is_refused_before_allocation() -> None:
    codec = wire.Fp32()
    head = wire.UpdateHead(sender="p", round=0, codec="fp32", n=1 << 28, params={},
                           arrays=codec.specs(1 << 28, {}), digest=bytes(32))  # fmt: skip
    data = wire.frame(wire.encode(head))
    decoder = wire.StreamDecoder(limits=wire.Limits(max_params=1 << 30, max_payload=64 * MiB))
    tracemalloc.start()
    try:
        with pytest.raises(wire.TooLargeError, match="exceeds"):
            decoder.feed(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MiB


def test_assembly_memory_is_bounded_by_the_payload_plus_one_frame() -> None:
    vec = np.random.default_rng(1).standard_normal(2 * MiB).astype(np.float32)  # 8 MiB
    max_frame = 256 * 1024
    frames = list(
        wire.iter_frames(wire.Update(sender="p", round=0, vector=vec), max_frame=max_frame)
    )
    decoder = wire.StreamDecoder(limits=wire.Limits(max_frame=max_frame))
    tracemalloc.start()
    try:
        out = [m for f in frames for m in decoder.feed(f)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(out) == 1
    # Documented bound: one frame being read + the assembly buffer (fp32 decodes in place).
    assert vec.nbytes <= peak < vec.nbytes + 2 * max_frame + 256 * 1024


def test_iter_frames_chunk_size_and_empty_update() -> None:
    vec = np.arange(10_000, dtype=np.float32)
    frames = list(wire.iter_frames(wire.Update(sender="p", round=0, vector=vec),
                                   max_frame=8192, chunk_size=1000))  # fmt: skip
    assert len(frames) == 1 + 40
    with pytest.raises(wire.TooLargeError):
        list(wire.iter_frames(wire.Update(sender="p", round=0, vector=vec), max_frame=64))
    empty = wire.Update(sender="p", round=0, vector=np.zeros(0, np.float32))
    (only,) = wire.iter_frames(empty)
    decoder = wire.StreamDecoder()
    (back,) = decoder.feed(only)
    assert isinstance(back, wire.Update)
    assert back.vector.size == 0


def test_with_digest_lets_one_hash_serve_many_sends() -> None:
    vec = np.arange(5000, dtype=np.float32)
    sealed = wire.with_digest(wire.Update(sender="p", round=0, vector=vec))
    assert sealed.digest is not None
    assert wire.with_digest(sealed) is sealed
    assert wire.encode(sealed) == wire.encode(wire.Update(sender="p", round=0, vector=vec))
    lying = wire.Update(sender="p", round=0, vector=vec, digest=bytes(32))
    with pytest.raises(wire.DigestMismatchError):
        wire.decode(wire.encode(lying))


def test_digest_is_blake3_of_the_payload() -> None:
    import blake3

    payload = bytes(range(256)) * (5 * 4096 + 3)  # 5 MiB + 768 bytes
    expected = blake3.blake3(payload).digest()
    assert wire.payload_digest(payload) == expected
    hasher = wire.PayloadHasher()
    for piece in split(payload, list(range(7, len(payload), 777_777))):
        hasher.update(piece)
    assert hasher.digest() == expected
    # BLAKE3 of the empty input (the published test vector)
    empty = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert wire.payload_digest(b"").hex() == empty


def test_iter_frame_parts_sends_chunks_without_copying() -> None:
    vec = np.arange(50_000, dtype=np.float32)
    update = wire.Update(sender="p", round=0, vector=vec)
    frames = list(wire.iter_frame_parts(update, max_frame=16 * 1024))
    assert len(frames) > 10
    payload_views = [part for parts in frames[1:] for part in parts[2:]]
    assert all(isinstance(v, memoryview) for v in payload_views)
    assert all(np.shares_memory(np.frombuffer(v, np.uint8), vec) for v in payload_views)
    joined = [b"".join(parts) for parts in frames]
    assert joined == list(wire.iter_frames(update, max_frame=16 * 1024))


@given(
    n=st.integers(0, 20_000),
    codec=st.sampled_from(["fp32", "fp16", "int8"]),
    max_frame=st.integers(2048, 64 * 1024),
    chunk_size=st.one_of(st.none(), st.integers(1, 50_000)),
    cuts=st.lists(st.integers(0, 10**6), max_size=20),
)
def test_any_chunking_equals_the_single_message(
    n: int, codec: str, max_frame: int, chunk_size: int | None, cuts: list[int]
) -> None:
    vec = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    update = wire.Update(sender="p", round=n, vector=vec, codec=codec)
    single = wire.decode(wire.encode(update))
    assert isinstance(single, wire.Update)
    stream = b"".join(wire.iter_frames(update, max_frame=max_frame, chunk_size=chunk_size))
    decoder = wire.StreamDecoder(limits=wire.Limits(max_frame=max_frame))
    out = [m for piece in split(stream, cuts) for m in decoder.feed(piece)]
    decoder.eof()
    assert len(out) == 1
    back = out[0]
    assert isinstance(back, wire.Update)
    np.testing.assert_array_equal(back.vector, single.vector)
    assert back.digest == single.digest


def test_sealed_fp32_update_skips_the_senders_pass_but_not_the_receivers_checks() -> None:
    vec = np.ones(100_000, dtype=np.float32)
    vec[5] = np.nan
    with pytest.raises(wire.NonFiniteError):
        wire.with_digest(wire.Update(sender="p", round=0, vector=vec))
    forged = wire.Update(sender="p", round=0, vector=vec, digest=wire.payload_digest(vec.data))
    data = wire.encode(forged)  # trusted: no pass over the values
    with pytest.raises(wire.NonFiniteError):
        wire.decode(data)
    with pytest.raises(wire.NonFiniteError):
        wire.decode(data, verify_digest=False)
    for codec in ("fp16", "int8"):  # codecs that compute on values always check
        with pytest.raises(wire.NonFiniteError):
            wire.encode(wire.Update(sender="p", round=0, vector=vec, codec=codec,
                                    digest=bytes(32)))  # fmt: skip


@pytest.mark.parametrize("codec", ["fp32", "int8"])
def test_transport_framed_path_with_iter_encoded_and_feed_message(codec: str) -> None:
    vec = np.random.default_rng(2).standard_normal(200_000).astype(np.float32)
    update = wire.Update(sender="p", round=3, vector=vec, codec=codec)
    bodies = list(wire.iter_encoded(update, max_frame=100_000))
    assert len(bodies) > 2
    assert all(len(body) <= 100_000 for body in bodies)
    assert [wire.frame(b) for b in bodies] == list(wire.iter_frames(update, max_frame=100_000))
    decoder = wire.StreamDecoder(limits=wire.Limits(max_frame=100_000))
    results = [decoder.feed_message(body) for body in bodies]
    assert results[:-1] == [None] * (len(bodies) - 1)
    assert decoder.busy is False
    back = results[-1]
    assert isinstance(back, wire.Update)
    single = wire.decode(wire.encode(update))
    assert isinstance(single, wire.Update)
    np.testing.assert_array_equal(back.vector, single.vector)
    (small,) = wire.iter_encoded(wire.Heartbeat(round=1))
    assert decoder.feed_message(small) == wire.Heartbeat(round=1)
    with pytest.raises(wire.SequenceError):
        decoder.feed_message(bodies[1])  # a chunk without its head
    with pytest.raises(wire.SequenceError):
        decoder.feed_message(small)  # the decoder stays failed


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize(
    ("size", "max_frame"), [(650, 1 << 20), (20_000, 1 << 20), (300_000, 64 * 1024)]
)
def test_encode_update_gives_the_frames_and_the_digest_of_with_digest(
    codec: str, size: int, max_frame: int
) -> None:
    # small payloads take the one-call hash, large ones the blockwise pass; chunked or not
    vec = np.random.default_rng(1).standard_normal(size).astype(np.float32)
    update = wire.Update(sender="p", round=3, vector=vec, codec=codec, reply=True)
    sealed = wire.with_digest(update)
    frames, digest = wire.encode_update(update, max_frame=max_frame)
    assert digest == sealed.digest
    assert frames == tuple(wire.iter_encoded(sealed, max_frame=max_frame))
    assert wire.encode_update(sealed, max_frame=max_frame) == (frames, digest)
    bad = vec.copy()
    bad[size // 2] = np.nan
    with pytest.raises(wire.NonFiniteError, match=rf"\[{size // 2}\]"):
        wire.encode_update(wire.Update(sender="p", round=3, vector=bad, codec=codec))
