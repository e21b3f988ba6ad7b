"""The frame reader on its own (no network): exact reads, EOF, limits, timeouts."""

from __future__ import annotations

import itertools
import struct

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from gossipfl.transport.libp2p.framing import (
    FrameReader,
    FrameTimeout,
    FrameTooLarge,
    TruncatedFrame,
    encode_prefix,
    unfilled_bytearray,
)


def framed(*bodies: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(b)) + b for b in bodies)


def take(chunks: list[bytes], n: int) -> bytes:
    """The next chunk, at most ``n`` bytes of it (the rest stays first in ``chunks``)."""
    chunk = chunks.pop(0)
    if len(chunk) > n:
        chunks.insert(0, chunk[n:])
        chunk = chunk[:n]
    return chunk


class Script:
    """A fake stream: returns the given chunks (at most n bytes each call), then EOF."""

    def __init__(self, chunks: list[bytes], *, eof: str = "empty") -> None:
        self.chunks = list(chunks)
        self.asked: list[int] = []
        self.eof = eof

    async def read(self, n: int) -> bytes:
        self.asked.append(n)
        await trio.lowlevel.checkpoint()
        if not self.chunks:
            if self.eof == "raise":
                raise EOFError("stream closed")
            return b""
        return take(self.chunks, n)


async def read_all(reader: FrameReader) -> list[bytes]:
    out = []
    while (frame := await reader.next_frame()) is not None:
        out.append(frame)
    return out


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@given(
    bodies=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
    min_read=st.sampled_from([1, 5, 64, 1 << 16]),
)
def test_any_split_of_the_stream_yields_the_same_frames(
    bodies: list[bytes], cuts: list[int], min_read: int
) -> None:
    data = framed(*bodies)

    async def main() -> list[bytes]:
        reader = FrameReader(
            Script(cut(data, cuts)).read, max_frame=1000, read_timeout=5, min_read=min_read
        )
        return await read_all(reader)

    assert trio.run(main) == bodies


@given(
    bodies=st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=5),
    drop=st.integers(min_value=1, max_value=10_000),
    eof=st.sampled_from(["empty", "raise"]),
)
def test_a_stream_cut_inside_a_frame_is_truncated_never_a_clean_end(
    bodies: list[bytes], drop: int, eof: str
) -> None:
    data = framed(*bodies)
    kept = data[: len(data) - (1 + drop % len(data))]  # drop 1..len(data) bytes
    ends = [len(framed(*bodies[: i + 1])) for i in range(len(bodies))]

    async def main() -> list[bytes]:
        reader = FrameReader(Script([kept], eof=eof).read, max_frame=1000, read_timeout=5)
        return await read_all(reader)

    if len(kept) == 0 or len(kept) in ends:  # cut exactly between frames: a clean end
        assert trio.run(main) == bodies[: ends.index(len(kept)) + 1 if kept else 0]
    else:
        with pytest.raises(TruncatedFrame):
            trio.run(main)


async def test_oversize_prefix_is_refused_before_reading_the_body() -> None:
    script = Script([struct.pack(">I", 1001) + b"x" * 50])
    reader = FrameReader(script.read, max_frame=1000, read_timeout=5, min_read=4)
    with pytest.raises(FrameTooLarge, match="1001 bytes announced"):
        await reader.next_frame()
    assert script.asked == [4]  # nothing was read (or allocated) for the body


async def test_huge_prefix_is_refused_without_allocating() -> None:
    reader = FrameReader(Script([b"\xff\xff\xff\xff"]).read, max_frame=1 << 20, read_timeout=5)
    with pytest.raises(FrameTooLarge, match="4294967295 bytes"):
        await reader.next_frame()


async def test_zero_length_frame_is_refused() -> None:
    reader = FrameReader(Script([b"\0\0\0\0"]).read, max_frame=10, read_timeout=5)
    with pytest.raises(FrameTooLarge, match="0 bytes"):
        await reader.next_frame()


async def test_partial_prefix_then_eof_is_truncated() -> None:
    reader = FrameReader(Script([b"\0\0"]).read, max_frame=10, read_timeout=5)
    with pytest.raises(TruncatedFrame, match="2 of 4 bytes"):
        await reader.next_frame()


async def test_reader_that_returns_more_than_asked_keeps_the_surplus() -> None:
    data = framed(b"abc", b"defg", b"h")

    async def greedy(n: int) -> bytes:
        nonlocal data
        out, data = data, b""
        return out

    reader = FrameReader(greedy, max_frame=10, read_timeout=5, min_read=1)
    assert await read_all(reader) == [b"abc", b"defg", b"h"]
    assert (reader.frames, reader.bytes) == (3, 8)


async def test_frozen_sender_mid_frame_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async def stalls_after_first(n: int) -> bytes:
        if stalls_after_first.called:  # type: ignore[attr-defined]
            await trio.sleep_forever()
        stalls_after_first.called = True  # type: ignore[attr-defined]
        return struct.pack(">I", 10) + b"12345"

    stalls_after_first.called = False  # type: ignore[attr-defined]
    reader = FrameReader(stalls_after_first, max_frame=100, read_timeout=7.5)
    start = trio.current_time()
    with pytest.raises(FrameTimeout, match=r"7\.5 s"):
        await reader.next_frame()
    assert trio.current_time() - start == pytest.approx(7.5)


async def test_idle_stream_between_frames_does_not_time_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0

    async def slow(n: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            return framed(b"first")
        if calls == 2:
            await trio.sleep(3600)  # an hour of silence between frames is fine
            return framed(b"second")
        return b""

    reader = FrameReader(slow, max_frame=100, read_timeout=1, min_read=1)
    assert await read_all(reader) == [b"first", b"second"]


def test_encode_prefix_checks_bounds() -> None:
    assert encode_prefix(5, 10) == b"\0\0\0\x05"
    for bad in (0, 11):
        with pytest.raises(ValueError, match="1 to 10 bytes"):
            encode_prefix(bad, 10)


class FakeInPlace:
    """A stream read in place: hands out the given chunks into the caller's buffer."""

    def __init__(self, chunks: list[bytes], *, budget: int = 1 << 30) -> None:
        self.chunks = list(chunks)
        self.budget = budget
        self.reserved = 0
        self.calls = 0

    def reserve(self, size: int) -> bool:
        if self.reserved + size > self.budget:
            return False
        self.reserved += size
        return True

    def release(self, size: int) -> None:
        self.reserved -= size

    async def read(self, n: int) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.chunks:
            return b""
        return take(self.chunks, n)

    async def read_into(self, view: memoryview) -> int:
        self.calls += 1
        chunk = await self.read(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)


@given(
    bodies=st.lists(st.binary(min_size=1, max_size=300), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=2_000), max_size=12),
    in_place_min=st.sampled_from([1, 16, 100]),
)
def test_frames_read_in_place_are_the_same_frames(
    bodies: list[bytes], cuts: list[int], in_place_min: int
) -> None:
    data = framed(*bodies)
    stream = FakeInPlace(cut(data, cuts))

    async def main() -> list[bytes | bytearray]:
        reader = FrameReader(
            stream.read,
            max_frame=1000,
            read_timeout=5,
            min_read=4,
            in_place=stream,
            in_place_min=in_place_min,
        )
        out: list[bytes | bytearray] = []
        while (frame := await reader.next_frame()) is not None:
            out.append(frame)
        return out

    frames = trio.run(main)
    assert frames == bodies
    assert stream.reserved == 0  # every reservation released
    assert all(type(f) is bytearray or type(f) is bytes for f in frames)
    assert all(type(f) is bytes for f in frames if len(f) < in_place_min)


async def test_a_large_frame_is_assembled_in_place_and_returned_as_is() -> None:
    body = bytes(range(256)) * 4000
    stream = FakeInPlace([framed(body)[:10], framed(body)[10:70_000], framed(body)[70_000:]])
    reader = FrameReader(
        stream.read, max_frame=1 << 20, read_timeout=5, min_read=4, in_place=stream
    )
    frame = await reader.next_frame()
    assert type(frame) is bytearray
    assert frame == body
    assert stream.calls >= 2
    assert stream.reserved == 0


async def test_a_frame_refused_a_reservation_is_read_in_pieces() -> None:
    body = b"y" * 300_000
    stream = FakeInPlace([framed(body)], budget=100_000)
    reader = FrameReader(
        stream.read, max_frame=1 << 20, read_timeout=5, min_read=4, in_place=stream
    )
    frame = await reader.next_frame()
    assert type(frame) is bytes
    assert frame == body
    assert stream.calls == 0


async def test_a_stream_cut_inside_a_frame_read_in_place_is_truncated() -> None:
    body = b"z" * 300_000
    stream = FakeInPlace([framed(body)[:200_000]])
    reader = FrameReader(
        stream.read, max_frame=1 << 20, read_timeout=5, min_read=4, in_place=stream
    )
    with pytest.raises(TruncatedFrame, match="of 300000 bytes received"):
        await reader.next_frame()
    assert stream.reserved == 0


async def test_a_frozen_sender_of_a_frame_read_in_place_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = FakeInPlace([struct.pack(">I", 300_000) + b"a" * 100])

    async def stalls(view: memoryview) -> int:
        if stream.chunks:
            return await FakeInPlace.read_into(stream, view)
        await trio.sleep_forever()
        raise AssertionError

    stream.read_into = stalls  # type: ignore[method-assign]
    reader = FrameReader(
        stream.read, max_frame=1 << 20, read_timeout=2.5, min_read=4, in_place=stream
    )
    with pytest.raises(FrameTimeout, match=r"2\.5 s"):
        await reader.next_frame()
    assert stream.reserved == 0


@pytest.mark.parametrize("size", [0, 1, 1000, 8 << 20])
def test_an_unfilled_bytearray_is_a_plain_bytearray_of_its_size(size: int) -> None:
    buffer = unfilled_bytearray(size)
    assert type(buffer) is bytearray
    assert len(buffer) == size
    buffer[:] = bytes(size)  # writable, resizable as any bytearray
    buffer.extend(b"x")
    assert buffer == bytes(size) + b"x"
