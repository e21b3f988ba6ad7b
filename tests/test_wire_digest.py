"""The payload digest (BLAKE3, protocol 2) and the one pass that checks a payload.

The digest is checked against a BLAKE3 written from its specification
(tests/blake3_reference.py) at lengths around its chunk and block boundaries; the fused
pass (digest and finiteness in one walk over cache-sized blocks) against a separate
digest and numpy's finiteness check, over payloads cut at any bytes, float boundaries or
not; and the receivers (decode, the chunk assembler) refuse NaN, infinity and a wrong
digest with the same typed errors as before the passes were fused.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from unittest import mock

import blake3
import blake3_reference
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl import wire
from gossipfl.wire import digest as digest_module

CHUNK = blake3_reference.CHUNK_LEN
BAD = (np.nan, np.inf, -np.inf)

#: lengths near BLAKE3's boundaries: blocks of 64 bytes, chunks of 1 KiB, and the
#: power-of-two subtrees above them
NEAR_BOUNDARIES = st.sampled_from([0, 1, 63, 64, 65, 1023, 1024, 1025, 2047, 2048,
                                   2049, 3072, 3073, 4095, 4096, 4097, 5120, 7169, 8192,
                                   8193])  # fmt: skip
LENGTHS = st.one_of(NEAR_BOUNDARIES, st.integers(0, 9 * CHUNK))


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=40, deadline=None)
@given(length=LENGTHS, seed=st.integers(0, 2**32 - 1))
def test_digest_is_the_blake3_tree(length: int, seed: int) -> None:
    payload = np.random.default_rng(seed).bytes(length)
    assert wire.payload_digest(payload) == blake3_reference.blake3(payload)


def test_reference_matches_the_published_vectors() -> None:
    # From the BLAKE3 test vectors: input byte i is i % 251.
    def data(n: int) -> bytes:
        return bytes(i % 251 for i in range(n))

    assert blake3_reference.blake3(data(0)).hex() == (
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    )
    for n in (1, 1023, 1024, 1025, 2048, 2049, 3072, 3073, 4096, 4097, 8193):
        assert blake3_reference.blake3(data(n)) == blake3.blake3(data(n)).digest()


@settings(max_examples=60, deadline=None)
@given(
    length=LENGTHS,
    cuts=st.lists(st.integers(0, 9 * CHUNK), max_size=12),
    floats=st.booleans(),
    block=st.sampled_from([4, 64, 1024, digest_module.BLOCK_SIZE]),
)
def test_any_cut_of_the_payload_gives_the_same_digest(
    length: int, cuts: list[int], floats: bool, block: int
) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    expected = blake3.blake3(payload).digest()
    hasher = wire.PayloadHasher()
    with mock.patch.object(digest_module, "BLOCK_SIZE", block):
        check = digest_module.PayloadCheck(floats=floats)
        for piece in cut(payload, cuts):
            hasher.update(piece)
            check.update(piece)
    assert hasher.digest() == expected
    assert check.digest() == expected


@st.composite
def vectors_with_bad_values(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(0, 3000))
    vec = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(n)
    vec = vec.astype(np.float32)
    if n:
        for index in draw(st.lists(st.integers(0, n - 1), max_size=3)):
            vec[index] = draw(st.sampled_from(BAD))
        if draw(st.booleans()):  # finite values whose sum overflows float32
            vec[: min(n, 4)] = np.float32(3e38)
    return vec


def first_bad(vec: np.ndarray) -> int | None:
    bad = np.flatnonzero(~np.isfinite(vec))
    return int(bad[0]) if bad.size else None


@settings(max_examples=80, deadline=None)
@given(
    vec=vectors_with_bad_values(),
    cuts=st.lists(st.integers(0, 12_000), max_size=8),
    block=st.sampled_from([4, 16, 1024, digest_module.BLOCK_SIZE]),
    sum_min=st.sampled_from([1, 8, digest_module._SUM_MIN]),  # blocks checked by their sum
)
def test_fused_pass_finds_the_first_nonfinite_value(
    vec: np.ndarray, cuts: list[int], block: int, sum_min: int
) -> None:
    payload = vec.tobytes()
    with (
        mock.patch.object(digest_module, "BLOCK_SIZE", block),
        mock.patch.object(digest_module, "_SUM_MIN", sum_min),
    ):
        check = digest_module.PayloadCheck(floats=True)
        for piece in cut(payload, cuts):  # cuts fall inside floats too
            check.update(piece)
    assert check.first_nonfinite == first_bad(vec)
    assert check.digest() == wire.payload_digest(payload)
    only = digest_module.PayloadCheck(digest=False, floats=True)
    only.update(payload)
    assert only.first_nonfinite == first_bad(vec)
    with pytest.raises(ValueError, match="does not hash"):
        only.digest()


def forged(vec: np.ndarray, *, digest: bytes | None = None) -> wire.Update:
    """An fp32 Update of ``vec`` (NaN allowed) with a digest that matches its payload,
    or the given one: only the receiver's checks stand between it and a merge."""
    update = wire.Update(sender="p", round=1, vector=np.zeros(vec.size, np.float32))
    return replace(update, vector=vec, digest=digest or wire.payload_digest(vec.tobytes()))


def receive_whole(update: wire.Update) -> wire.Message:
    return wire.decode(wire.encode(update))


def receive_chunked(update: wire.Update) -> wire.Message | None:
    decoder = wire.StreamDecoder()
    out: list[wire.Message] = []
    for frame in wire.iter_frames(update, max_frame=1000, chunk_size=333):  # splits floats
        out += decoder.feed(frame)
    (message,) = out
    return message


RECEIVERS = pytest.mark.parametrize("receive", [receive_whole, receive_chunked])


@RECEIVERS
@settings(max_examples=30, deadline=None)
@given(vec=vectors_with_bad_values())
def test_receivers_refuse_nonfinite_values_with_the_index(receive, vec: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    bad = first_bad(vec)
    if bad is None:
        back = receive(forged(vec))
        assert isinstance(back, wire.Update)
        np.testing.assert_array_equal(back.vector, vec)
        return
    with pytest.raises(wire.NonFiniteError, match=rf"at \[{bad}\]"):
        receive(forged(vec))


@RECEIVERS
@settings(max_examples=30, deadline=None)
@given(vec=vectors_with_bad_values(), flip=st.integers(0, 31))
def test_a_wrong_digest_is_refused_before_the_values(receive, vec: np.ndarray, flip: int) -> None:  # type: ignore[no-untyped-def]
    right = wire.payload_digest(vec.tobytes())
    wrong = bytes(b ^ (1 if i == flip else 0) for i, b in enumerate(right))
    with pytest.raises(wire.DigestMismatchError):  # whether or not a value is bad too
        receive(forged(vec, digest=wrong))


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("value", BAD)
def test_the_sender_refuses_nonfinite_values_in_its_one_pass(codec: str, value: float) -> None:
    vec = np.ones(70_000, dtype=np.float32)  # more than one block
    vec[66_000] = value
    update = wire.Update(sender="p", round=1, vector=vec, codec=codec)
    for send in (wire.encode, wire.with_digest, lambda u: list(wire.iter_frames(u))):
        with pytest.raises(wire.NonFiniteError, match=r"\[66000\]"):
            send(update)


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
def test_a_sealed_update_encodes_as_the_unsealed_one(codec: str) -> None:
    vec = np.random.default_rng(3).standard_normal(100_000).astype(np.float32)
    update = wire.Update(sender="p", round=1, vector=vec, codec=codec)
    sealed = wire.with_digest(update)
    assert sealed.digest is not None
    assert wire.encode(sealed) == wire.encode(update)
    back = wire.decode(wire.encode(sealed))
    assert isinstance(back, wire.Update)
    assert back.digest == sealed.digest
