"""One decode shared by the receivers of one bytes object (gossipfl.wire.memo)."""

from __future__ import annotations

import numpy as np
import pytest

from gossipfl import wire
from gossipfl.transport import MemoryNetwork

N = 64


def update_bytes(round: int = 3, codec: str = "fp32", seed: int = 0) -> bytes:
    vector = np.random.default_rng(seed).standard_normal(N).astype(np.float32)
    return wire.encode(wire.Update(sender="peer-a", round=round, vector=vector, codec=codec))


def receivers(memo: wire.DecodeMemo, count: int = 4) -> list[wire.StreamDecoder]:
    # each peer makes its own Limits object: equal settings, distinct objects
    return [wire.StreamDecoder(limits=wire.Limits.for_params(N), memo=memo) for _ in range(count)]


def same_update(a: object, b: object) -> None:
    assert isinstance(a, wire.Update)
    assert isinstance(b, wire.Update)
    for name in ("sender", "round", "codec", "reply", "meta", "digest"):
        assert getattr(a, name) == getattr(b, name)
    assert np.array_equal(a.vector, b.vector)


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
def test_receivers_of_one_object_share_one_decode_equal_to_their_own(codec: str) -> None:
    memo = wire.DecodeMemo()
    data = update_bytes(codec=codec)
    got = [decoder.feed_message(data) for decoder in receivers(memo)]
    assert (memo.misses, memo.hits) == (1, 3)
    assert all(message is got[0] for message in got)
    alone = wire.StreamDecoder(limits=wire.Limits.for_params(N)).feed_message(data)
    same_update(got[0], alone)
    assert isinstance(got[0], wire.Update)
    assert not got[0].vector.flags.writeable  # shared, and nobody can change it
    with pytest.raises(ValueError):
        got[0].vector[0] = 1.0


def test_an_equal_copy_is_decoded_apart() -> None:
    """Identity, not equality: a crafted frame per neighbour is decoded per neighbour
    (and an id() is never confused with a later object's: the entry holds its bytes)."""
    memo = wire.DecodeMemo()
    data = update_bytes()
    first, second = receivers(memo, 2)
    a = first.feed_message(data)
    b = second.feed_message(bytes(bytearray(data)))
    assert a is not b
    same_update(a, b)
    assert memo.hits == 0


def test_a_bad_frame_fails_for_every_receiver() -> None:
    memo = wire.DecodeMemo()
    data = bytearray(update_bytes())
    data[-1] ^= 1  # the payload no longer matches its digest
    bad = bytes(data)
    for decoder in receivers(memo):
        with pytest.raises(wire.DigestMismatchError):
            decoder.feed_message(bad)
        with pytest.raises(wire.DigestMismatchError):  # and each stream stays failed
            decoder.feed_message(update_bytes())
    assert memo.hits == 0
    assert len(memo) == 0


def test_other_settings_do_not_share() -> None:
    memo = wire.DecodeMemo()
    data = update_bytes()
    first, second = receivers(memo, 2)
    tight = wire.StreamDecoder(limits=wire.Limits.for_params(N - 1), memo=memo)
    unverified = wire.StreamDecoder(
        limits=wire.Limits.for_params(N), memo=memo, verify_digest=False
    )
    shared = first.feed_message(data)
    with pytest.raises(wire.TooLargeError):  # its own limits, whatever the others accepted
        tight.feed_message(data)
    assert second.feed_message(data) is shared
    assert unverified.feed_message(data) is not shared
    assert memo.hits == 1  # only the second receiver's


def test_a_receiver_in_the_middle_of_a_chunked_update_does_not_take_from_the_memo() -> None:
    memo = wire.DecodeMemo()
    vector = np.arange(4 * N, dtype=np.float32)
    head, *chunks = wire.iter_encoded(
        wire.Update(sender="peer-b", round=1, vector=vector), max_frame=512
    )
    assert chunks
    data = update_bytes()
    other = receivers(memo, 1)[0]
    assert isinstance(other.feed_message(data), wire.Update)
    busy = wire.StreamDecoder(limits=wire.Limits.for_params(4 * N), memo=memo)
    assert busy.feed_message(bytes(head)) is None
    with pytest.raises(wire.SequenceError):  # an Update inside a chunked one, as before
        busy.feed_message(data)


def test_the_memo_is_bounded_oldest_first() -> None:
    memo = wire.DecodeMemo(max_entries=2)
    frames = [update_bytes(round=r) for r in range(3)]
    decoder = receivers(memo, 1)[0]
    for data in frames:
        decoder.feed_message(data)
    assert len(memo) == 2
    late = receivers(memo, 1)[0]
    late.feed_message(frames[0])  # forgotten: decoded again
    late.feed_message(frames[2])
    assert memo.hits == 1
    small = wire.DecodeMemo(max_bytes=len(frames[0]))
    decoder = receivers(small, 1)[0]
    for data in frames:
        decoder.feed_message(data)
    assert len(small) == 1
    with pytest.raises(ValueError):
        wire.DecodeMemo(max_entries=0)


def test_the_memory_network_gives_its_endpoints_one_memo() -> None:
    network = MemoryNetwork()
    a, b = network.endpoint("a"), network.endpoint("b")
    assert a.decode_memo is b.decode_memo is network.decode_memo
    assert MemoryNetwork().decode_memo is not network.decode_memo
    # bounded by the peers (about one model each per round), not by a large constant
    small = network.decode_memo.max_entries
    for i in range(small):
        network.endpoint(f"p{i}")
    assert network.decode_memo.max_entries == 2 * (small + 2)
