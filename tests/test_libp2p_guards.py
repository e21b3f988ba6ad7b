"""Resource limits against insiders: peers on the allowlist that break the rules.

Unit tests drive py-libp2p's real Yamux frame handling with hand-made frames (no
network): the receive-window, stream and buffer limits of ``guards``, and that
py-libp2p's own accounting stays consistent. Network tests attack a real transport on
127.0.0.1 with a stock py-libp2p host that ignores flow control, and check that the
victim's memory stays bounded, that the attacker is counted, logged, banned and let back
after its ban, and that an honest peer's frames get through meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import re
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.rcmgr import ResourceLimits, ResourceManager
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux import yamux as _yamux

from gossipfl.errors import ConfigError
from gossipfl.identity import generate_identity
from gossipfl.peerscore import ScorePolicy
from gossipfl.transport.base import PeerUnreachable, Received
from gossipfl.transport.libp2p import Libp2pTransport, TransportConfig, TransportStats
from gossipfl.transport.libp2p.budgets import FrameThrottle, RequestGate, TokenBucket
from gossipfl.transport.libp2p.events import EventQueue
from gossipfl.transport.libp2p.fastpath import Sink, YamuxInPlace, install_body_reader, read_yamux
from gossipfl.transport.libp2p.guards import (
    MAX_PENDING_RESETS,
    ConnectionGuard,
    GuardedBuffer,
    YamuxLimits,
    guard_of,
    install_yamux_guards,
)
from gossipfl.transport.libp2p.tasks import TaskGroup
from gossipfl.transport.libp2p.testing import (
    connect,
    full_address,
    open_bare_streams,
    open_raw_stream,
    open_stock_host,
    write_ignoring_window,
)
from gossipfl.transport.libp2p.workarounds import disable_dial_retries, forget_failed_dial

LOGGER = "gossipfl.transport.libp2p"
HEADER = struct.Struct(_yamux.YAMUX_HEADER_FORMAT)
WINDOW = _yamux.DEFAULT_WINDOW_SIZE
MiB = 1 << 20


# ============================================================ Yamux, frame by frame


class FakeSecured:
    """The secured connection under a Yamux muxer: the test feeds what the peer sends and
    reads what we write."""

    is_initiator = False

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[bytes](math.inf)
        self._pending = b""
        self.written: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self._send.send_nowait(data)

    async def read(self, n: int | None = None) -> bytes:
        if not self._pending:
            try:
                self._pending = await self._receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return b""
        n = len(self._pending) if n is None else n
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    async def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    async def close(self) -> None:
        self._send.close()

    def get_remote_address(self) -> None:
        return None

    def frames(self, typ: int, flag: int) -> list[int]:
        """Stream IDs of the frames we wrote of type ``typ`` with ``flag`` set."""
        out = []
        for data in self.written:
            _, t, flags, sid, _ = HEADER.unpack(data[: HEADER.size])
            if t == typ and flags & flag:
                out.append(sid)
        return out


def syn(sid: int) -> bytes:
    return HEADER.pack(0, _yamux.TYPE_WINDOW_UPDATE, _yamux.FLAG_SYN, sid, 0)


def rst(sid: int) -> bytes:
    return HEADER.pack(0, _yamux.TYPE_WINDOW_UPDATE, _yamux.FLAG_RST, sid, 0)


def data(sid: int, size: int, *, flags: int = 0) -> bytes:
    return HEADER.pack(0, _yamux.TYPE_DATA, flags, sid, size) + b"x" * size


@dataclass
class Muxer:
    yamux: _yamux.Yamux
    wire: FakeSecured
    guard: ConnectionGuard
    reports: list[tuple[str, str, str]] = field(default_factory=list)

    async def feed(self, *frames: bytes) -> None:
        for frame in frames:
            self.wire.feed(frame)
        await trio.testing.wait_all_tasks_blocked()

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.reports]

    def real_buffered(self) -> int:
        return sum(len(b) for b in self.yamux.stream_buffers.values())


@contextlib.asynccontextmanager
async def muxer(
    *, streams: int = 32, buffered: int = 64 * MiB, stats: TransportStats | None = None
) -> AsyncIterator[Muxer]:
    """A py-libp2p Yamux muxer (the responder side) under our guard, reading frames the
    test feeds it; new streams are accepted (and ignored) as the swarm would."""
    wire = FakeSecured()
    yamux = _yamux.Yamux(wire, ID.from_pubkey(create_new_key_pair().public_key), False)  # type: ignore[arg-type]
    tasks = TaskGroup()
    reports: list[tuple[str, str, str]] = []
    guard = install_yamux_guards(
        yamux,
        YamuxLimits(max_inbound_streams=streams, max_buffered=buffered),
        report=lambda peer, kind, detail: reports.append((peer, kind, detail)),
        spawn=tasks.spawn,
        stats=stats or TransportStats(),
    )
    assert guard is not None

    async def accept() -> None:
        with contextlib.suppress(Exception):
            while True:
                await yamux.accept_stream()

    async with trio.open_nursery() as nursery:
        await nursery.start(tasks.run)
        nursery.start_soon(yamux.handle_incoming)
        nursery.start_soon(accept)
        yield Muxer(yamux, wire, guard, reports)
        tasks.close()
        nursery.cancel_scope.cancel()


def test_yamux_buffer_operations_are_the_ones_the_guard_wraps() -> None:
    """The guard wraps ``extend``/``del buf[:n]``/``clear()`` and the dict operations
    below. If py-libp2p starts to mutate a stream buffer another way, or stops
    subtracting a DATA frame's length from the window right after buffering it (the
    compensation of a dropped frame relies on it), revisit guards.py."""
    source = inspect.getsource(_yamux)
    dict_uses = set(re.findall(r"stream_buffers(\.\w+\(|\[[^\]]+\](?:\.\w+\(| =)|\b)", source))
    assert dict_uses <= {".get(", ".pop(", ".clear(", "[stream_id] =", "[stream_id].extend(", ""}
    assert set(re.findall(r"stream_buffers\[\w+\] = (.*)", source)) == {"bytearray()"}
    assert set(re.findall(r"\bbuffer\.(\w+)\(", source)) <= {"clear"}
    assert not re.search(r"\bbuffer\s*(\+=|\[[^\]]*\]\s*=)", source)
    assert set(re.findall(r"del (\w+)\[", source)) <= {"buffer"}
    lines = source.splitlines()
    extends = [i for i, line in enumerate(lines) if "stream_buffers[stream_id].extend(" in line]
    assert len(extends) == 3  # DATA, SYN with data, ACK with data
    for i in extends:
        assert any("recv_window -= len(" in line for line in lines[i + 1 : i + 4]), lines[i]


async def test_stock_yamux_buffers_whatever_a_peer_sends_beyond_the_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pitfall: py-libp2p only logs (on a libp2p logger) and keeps the bytes."""
    caplog.set_level(logging.WARNING, logger="libp2p")
    wire = FakeSecured()
    yamux = _yamux.Yamux(wire, ID.from_pubkey(create_new_key_pair().public_key), False)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(yamux.handle_incoming)
        for frame_ in (syn(1), *(data(1, 100_000) for _ in range(10))):
            wire.feed(frame_)
        await trio.testing.wait_all_tasks_blocked()
        assert len(yamux.stream_buffers[1]) == 1_000_000  # four times the window
        assert yamux.streams[1].recv_window == 0
        nursery.cancel_scope.cancel()
    assert any("exceeded receive window" in r.getMessage() for r in caplog.records)


async def test_a_frame_beyond_the_window_is_dropped_and_the_stream_reset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="libp2p")
    async with muxer() as m:
        await m.feed(syn(1), data(1, 100_000))
        stream = m.yamux.streams[1]
        assert stream.recv_window == WINDOW - 100_000
        assert m.guard.buffered == m.real_buffered() == 100_000

        await m.feed(data(1, 200_000))  # 200 000 > the 162 144 bytes left
        assert m.kinds() == ["window"]
        assert "whose receive window had 162144 bytes left" in m.reports[0][2]
        assert stream.recv_window == WINDOW - 100_000  # py-libp2p's accounting untouched
        assert m.wire.frames(_yamux.TYPE_WINDOW_UPDATE, _yamux.FLAG_RST) == [1]
        assert 1 not in m.yamux.streams  # reset and forgotten: its buffer was freed
        assert m.guard.buffered == m.real_buffered() == 0
        assert m.guard.dropped == 300_000

        await m.feed(data(1, 1000))  # more on the dead stream: py-libp2p ignores it
        assert m.kinds() == ["window"]
    assert not [r for r in caplog.records if "exceeded receive window" in r.getMessage()]


async def test_the_guard_follows_every_way_py_libp2p_and_the_fast_path_read() -> None:
    async with muxer() as m:
        await m.feed(syn(1), data(1, 200_000))
        stream = m.yamux.streams[1]
        assert len(await stream.read(150_000)) == 150_000  # del buffer[:n] + window update
        assert m.guard.buffered == m.real_buffered() == 50_000
        await m.feed(data(1, stream.recv_window))  # exactly the window: allowed
        assert m.reports == []
        assert m.guard.buffered == m.real_buffered() > 50_000
        taken = await read_yamux(stream, 1 << 30)  # the fast path swaps the buffer out
        assert isinstance(taken, GuardedBuffer)
        assert m.guard.buffered == m.real_buffered() == 0
        taken.extend(b"detached")  # no longer counted anywhere
        assert m.guard.buffered == 0
        await m.feed(data(1, 1000))
        assert len(await stream.read()) == 1000  # read(-1): del buffer[:take] slices
        assert m.guard.buffered == m.real_buffered() == 0
        assert m.guard.peak >= 200_000
        assert m.reports == []


async def test_a_peer_may_not_open_more_than_the_cap_of_streams_at_once() -> None:
    async with muxer(streams=4) as m:
        await m.feed(*(syn(sid) for sid in range(1, 17, 2)))  # 8 streams
        assert m.kinds() == ["streams"] * 4
        assert m.wire.frames(_yamux.TYPE_WINDOW_UPDATE, _yamux.FLAG_RST) == [9, 11, 13, 15]
        assert sorted(m.yamux.streams) == [1, 3, 5, 7]
        await m.feed(data(9, 10))  # data for a refused stream is not buffered
        assert m.real_buffered() == 0
        await m.feed(rst(1), syn(17))  # one closes: there is room for one more
        assert m.kinds() == ["streams"] * 4
        assert 17 in m.yamux.streams
        await m.feed(syn(19))
        assert m.kinds() == ["streams"] * 5


async def test_the_bytes_buffered_on_one_connection_are_capped() -> None:
    stats = TransportStats()
    async with muxer(buffered=300_000, stats=stats) as m:
        await m.feed(syn(1), syn(3), data(1, 200_000), data(3, 200_000))
        assert m.kinds() == ["buffered"]
        assert "400000 bytes on one connection" in m.reports[0][2]
        assert len(m.yamux.stream_buffers[1]) == 200_000  # the other stream is intact
        assert 3 not in m.yamux.streams
        assert m.guard.buffered == m.real_buffered() == 200_000
    assert stats.peak_connection_buffer == 200_000
    assert stats.dropped_bytes == 200_000


async def test_data_after_a_fin_or_a_reset_is_dropped_quietly() -> None:
    async with muxer() as m:
        await m.feed(syn(1), data(1, 10, flags=_yamux.FLAG_FIN), data(1, 10))
        assert len(m.yamux.stream_buffers[1]) == 10  # the FIN frame's own data counts
        await m.feed(syn(3), data(3, 10))
        await m.yamux.streams[3].reset()
        await m.feed(data(3, 10))  # reset, but still known (its buffer was not empty)
        assert 3 not in m.yamux.stream_buffers or not m.yamux.stream_buffers[3]
        assert m.reports == []
        assert m.guard.buffered == m.real_buffered() == 10


async def test_too_many_pending_resets_close_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    started: list[str] = []

    def spawn(job: Callable[[], Awaitable[object]], name: str) -> bool:
        started.append(name)  # and never run: RST frames stuck behind a full socket
        return True

    yamux = _yamux.Yamux(FakeSecured(), ID.from_pubkey(create_new_key_pair().public_key), False)  # type: ignore[arg-type]
    limits = YamuxLimits(max_inbound_streams=1, max_buffered=MiB)
    guard = install_yamux_guards(
        yamux, limits, report=lambda *report: None, spawn=spawn, stats=TransportStats()
    )
    assert guard is not None
    again = install_yamux_guards(
        yamux, limits, report=lambda *report: None, spawn=spawn, stats=TransportStats()
    )
    assert again is guard  # idempotent
    for sid in range(1, 2 * (MAX_PENDING_RESETS + 3), 2):
        yamux.streams[sid] = _yamux.YamuxStream(sid, yamux, False)
        yamux.stream_buffers[sid] = bytearray()
    assert started.count("reset a Yamux stream") == MAX_PENDING_RESETS
    assert started.count("close a Yamux connection") == 1
    assert any("closing the connection with peer" in r.getMessage() for r in caplog.records)


# ========================================================== budgets, pure and small


def test_a_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)  # in debt: wait a tenth of a second
    assert bucket.take(0.0) == pytest.approx(0.2)  # and the next one waits behind it
    assert not bucket.try_take(0.0)
    bucket.refill(10.0)
    assert bucket.tokens == 3  # capped at the burst
    assert bucket.full(10.0)
    with pytest.raises(ValueError):
        TokenBucket(rate=0.0, burst=1, now=0.0)


async def test_the_frame_throttle_waits_and_reports_a_peer_that_keeps_it_empty(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports: list[tuple[str, str, str]] = []
    throttle = FrameThrottle(
        rate=100.0, burst=10, strike_after=1.0, report=lambda *r: reports.append(r)
    )
    start = trio.current_time()
    for _ in range(10):
        await throttle.admit("honest")
    assert trio.current_time() == start  # a burst within the bucket: no wait
    for _ in range(90):
        await throttle.admit("honest")
    assert trio.current_time() - start == pytest.approx(0.9)  # then 100 per second
    assert reports == []  # throttled for less than a second on end
    for _ in range(300):
        await throttle.admit("flood")
    assert [kind for _, kind, _ in reports] == ["frame_rate"] * 2
    assert {peer for peer, _, _ in reports} == {"flood"}


async def test_the_request_gate_refuses_beyond_the_concurrency_and_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = RequestGate(concurrent=2, rate=1.0, burst=3)
    assert gate.enter("p") is None
    assert gate.enter("p") is None
    refused = gate.enter("p")
    assert refused is not None
    assert refused[0] == "requests"
    assert gate.enter("q") is None  # another peer has its own budget
    gate.leave("p")
    assert gate.enter("p") is None  # the third token
    gate.leave("p")
    refused = gate.enter("p")
    assert refused is not None
    assert refused[0] == "request_rate"
    await trio.sleep(1.0)
    assert gate.enter("p") is None


async def test_one_peer_cannot_fill_the_event_queue_for_the_others() -> None:
    queue = EventQueue(max_buffered=1000, max_buffered_per_peer=400)
    async with trio.open_nursery() as nursery:
        for _ in range(5):  # 5 x 300 bytes from one peer: only one fits in its share
            nursery.start_soon(queue.push_frame, Received("flood", b"x" * 300))
        await trio.testing.wait_all_tasks_blocked()
        assert queue.held_by("flood") == 300
        with trio.fail_after(1):
            await queue.push_frame(Received("honest", b"y" * 900))  # its own share
        first = await queue.__anext__()
        second = await queue.__anext__()
        assert {first.peer, second.peer} == {"flood", "honest"}  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


# ======================================================================= the network


BAN = 3.0
FAST = TransportConfig(
    read_timeout=2.0,
    write_timeout=2.0,
    dial_timeout=5.0,
    score=ScorePolicy(ban=BAN, max_ban=4 * BAN),
)
MEMBERS = "/test/members/1.0.0"


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


async def poll(condition: Callable[[], bool], *, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


@dataclass
class Scene:
    victim: Libp2pTransport
    honest: Libp2pTransport
    attacker: object  # the stock host (IHost)
    attacker_id: str
    honest_frames: list[bytes]
    sampled_peak: dict[str, int]

    @property
    def address(self) -> str:
        return self.victim.listen_addrs[0]


@contextlib.asynccontextmanager
async def scene(config: TransportConfig = FAST) -> AsyncIterator[Scene]:
    """A victim transport, an honest transport connected to it and sending a 10 kB frame
    every 20 ms, and a stock py-libp2p host on the victim's allowlist (the attacker).
    The victim's events are consumed as a runtime would; the bytes buffered on each of
    its connections are sampled every millisecond (an independent check of the guard's
    own count)."""
    key_pair = create_new_key_pair()
    attacker_id = str(ID.from_pubkey(key_pair.public_key))
    honest_identity = generate_identity()
    allow = {attacker_id, honest_identity.peer_id}
    async with (
        Libp2pTransport.open(config=config, allow=allow) as victim,
        Libp2pTransport.open(identity=honest_identity, config=config) as honest,
        open_stock_host(key_pair=key_pair) as attacker,
        trio.open_nursery() as nursery,
    ):
        disable_dial_retries(attacker.get_network())
        await honest.dial(victim.listen_addrs[0])
        the_scene = Scene(victim, honest, attacker, attacker_id, [], {})

        async def consume() -> None:
            async for event in victim.events():
                if isinstance(event, Received) and event.peer == honest.local_id:
                    the_scene.honest_frames.append(event.data)

        async def send_honestly() -> None:
            for i in range(1_000_000):
                await honest.send(victim.local_id, b"%08d" % i + b"m" * 10_000)
                await trio.sleep(0.02)

        async def sample() -> None:
            swarm = victim.host.get_network()
            while True:
                for peer_id, conns in list(swarm.connections.items()):
                    for conn in conns:
                        buffers = conn.muxed_conn.stream_buffers
                        now = sum(len(b) for b in list(buffers.values()))
                        peer = str(peer_id)
                        the_scene.sampled_peak[peer] = max(now, the_scene.sampled_peak.get(peer, 0))
                await trio.sleep(0.001)

        nursery.start_soon(consume)
        nursery.start_soon(send_honestly)
        nursery.start_soon(sample)
        yield the_scene
        nursery.cancel_scope.cancel()


async def attack_until_banned(
    s: Scene, attack: Callable[[], Awaitable[object]], *, timeout: float = 30.0
) -> tuple[float, int]:
    """Run ``attack`` over and over (it may fail: its streams get reset) until the victim
    bans the attacker. Returns the time it took and the honest frames received meanwhile."""
    honest_before = len(s.honest_frames)
    start = time.monotonic()
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:

            async def loop() -> None:
                while True:
                    with contextlib.suppress(Exception):
                        await attack()
                    await trio.sleep(0)

            nursery.start_soon(loop)
            await poll(lambda: s.attacker_id in s.victim.banned_peers, timeout=timeout)
            nursery.cancel_scope.cancel()
    return time.monotonic() - start, len(s.honest_frames) - honest_before


async def check_the_ban(
    s: Scene, caplog: pytest.LogCaptureFixture, kinds: set[str], *, expected: set[str]
) -> None:
    """The attacker was counted (for one of the ``expected`` kinds at least, and nothing
    outside ``kinds``) and logged with its peer ID, its connection closed; it cannot
    connect until its ban ends, and can after; the honest peer lost nothing."""
    victim, attacker_id = s.victim, s.attacker_id
    counted = victim.violations[attacker_id]
    assert set(counted) & expected, counted
    assert set(counted) <= kinds, counted
    assert s.honest.local_id not in victim.violations
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(attacker_id in m and "broke a limit" in m for m in messages)
    assert any(attacker_id in m and m.startswith("banned peer") for m in messages)

    swarm = s.attacker.get_network()  # type: ignore[attr-defined]
    victim_id = ID.from_base58(victim.local_id)
    await poll(lambda: not swarm.get_connections(victim_id))  # closed by the victim
    await poll(lambda: attacker_id not in victim.connected_peers)
    forget_failed_dial(swarm, victim_id)
    with pytest.raises(Exception):  # noqa: B017 - py-libp2p's dial errors vary
        await connect(s.attacker, s.address)  # type: ignore[arg-type]
    assert victim.banned_peers  # the refusal came during the ban...
    assert victim.refused_banned >= 1
    refusals = [r.getMessage() for r in caplog.records if "banned for another" in r.getMessage()]
    assert any(attacker_id in m for m in refusals)  # ...and because of it
    await poll(lambda: not victim.banned_peers, timeout=2 * BAN)
    forget_failed_dial(swarm, victim_id)
    await connect(s.attacker, s.address)  # type: ignore[arg-type]
    await poll(lambda: attacker_id in victim.connected_peers)

    sent = [int(f[:8]) for f in s.honest_frames]
    assert sent == list(range(len(sent)))  # in order, none lost


async def bounded_and_banned(
    s: Scene,
    caplog: pytest.LogCaptureFixture,
    attack: Callable[[], Awaitable[None]],
    label: str,
    *,
    allowed: set[str],
    expected: set[str],
) -> None:
    """Run ``attack`` until the victim bans the attacker; check what it held meanwhile
    (at most one stream window for the attacker) and that honest frames got through."""
    took, honest = await attack_until_banned(s, attack)
    peak = s.victim.stats.peak_buffer_by_peer.get(s.attacker_id, 0)
    print(
        f"{label}: banned after {took:.2f} s; attacker's peak buffered {peak} "
        f"bytes (sampled {s.sampled_peak.get(s.attacker_id, 0)}); "
        f"{honest} honest frames meanwhile; {s.victim.violations[s.attacker_id]}"
    )
    assert peak <= 16 * MiB
    assert s.sampled_peak.get(s.attacker_id, 0) <= 16 * MiB
    assert honest >= 1
    await check_the_ban(s, caplog, allowed, expected=expected)


@pytest.mark.network
@pytest.mark.timeout(90)
async def test_a_flood_on_a_half_closed_request_stream_is_bounded_and_banned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with scene() as s:

        async def reply(peer: str, body: bytes) -> bytes:
            return b"members of " + body

        s.victim.set_request_handler(MEMBERS, reply)

        async def attack() -> None:
            stream = await open_raw_stream(s.attacker, s.address, MEMBERS)  # type: ignore[arg-type]
            await stream.write(frame(b"job"))
            assert await stream.read(100) == frame(b"members of job")
            # The victim replied and half-closed; keep writing, whatever the window.
            await write_ignoring_window(stream, b"z" * (32 * MiB), chunk=16 * MiB)

        await bounded_and_banned(
            s,
            caplog,
            attack,
            "members flood",
            allowed={"window", "bad_request", "buffered"},
            expected={"window", "bad_request"},
        )


@pytest.mark.network
@pytest.mark.timeout(90)
async def test_a_frame_flood_that_ignores_the_window_is_bounded_and_banned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    heartbeats = frame(b"h" * 32) * (MiB // 36)  # valid 36-byte frames, 1 MiB of them
    async with scene() as s:

        async def attack() -> None:
            stream = await open_raw_stream(s.attacker, s.address)  # type: ignore[arg-type]
            while not stream.muxed_stream.reset_received:  # type: ignore[attr-defined]
                await write_ignoring_window(stream, heartbeats)

        await bounded_and_banned(
            s,
            caplog,
            attack,
            "gossip flood",
            allowed={"window", "buffered", "streams", "frame_rate"},
            expected={"window"},
        )


@pytest.mark.network
@pytest.mark.timeout(90)
async def test_a_flood_that_goes_on_into_its_reset_stream_is_banned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first frame beyond the window gets the stream reset; an attacker that takes no
    notice and keeps writing into the dead stream (which the victim would otherwise read,
    decrypt and throw away for ever) is counted again every 16 MiB, and banned."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    heartbeats = frame(b"h" * 32) * (MiB // 36)
    async with scene() as s:

        async def attack() -> None:
            stream = await open_raw_stream(s.attacker, s.address)  # type: ignore[arg-type]
            while True:  # whatever becomes of the stream
                await write_ignoring_window(stream, heartbeats)

        took, _ = await attack_until_banned(s, attack)
        counted = s.victim.violations[s.attacker_id]
        print(f"flood into a reset stream: banned after {took:.2f} s; {counted}")
        assert counted.get("window", 0) >= 2
        await check_the_ban(s, caplog, {"window", "buffered", "frame_rate"}, expected={"window"})


@pytest.mark.network
@pytest.mark.timeout(90)
async def test_hundreds_of_streams_are_reset_and_banned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with scene() as s:
        victim_id = ID.from_base58(s.victim.local_id)

        async def attack() -> None:
            await connect(s.attacker, s.address)  # type: ignore[arg-type]
            await open_bare_streams(s.attacker, victim_id, 300)  # type: ignore[arg-type]

        took, honest = await attack_until_banned(s, attack)
        counted = s.victim.violations[s.attacker_id]["streams"]
        print(
            f"stream flood: banned after {took:.2f} s and {counted} refused streams; "
            f"{honest} honest frames meanwhile"
        )
        assert counted >= 5
        assert honest >= 1
        await check_the_ban(s, caplog, {"streams"}, expected={"streams"})


@pytest.mark.network
@pytest.mark.timeout(90)
async def test_a_frame_flood_within_the_window_is_throttled_then_banned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    config = dataclasses.replace(
        FAST,
        frame_rate=300.0,
        frame_burst=300,
        frame_rate_strike=0.3,
        score=ScorePolicy(weights={"frame_rate": 50.0}, ban=BAN, max_ban=4 * BAN),
    )
    beats = frame(b"h" * 32) * 1800
    async with scene(config) as s:

        async def attack() -> None:
            stream = await open_raw_stream(s.attacker, s.address)  # type: ignore[arg-type]
            while True:
                await stream.write(beats)  # py-libp2p's writer: it respects the window

        took, honest = await attack_until_banned(s, attack)
        peak = s.victim.stats.peak_buffer_by_peer.get(s.attacker_id, 0)
        print(
            f"throttled flood: banned after {took:.2f} s; attacker's peak buffered {peak} "
            f"bytes; {honest} honest frames meanwhile"
        )
        assert peak <= 16 * MiB
        assert honest >= 10
        await check_the_ban(s, caplog, {"frame_rate", "streams"}, expected={"frame_rate"})


@pytest.mark.network
@pytest.mark.timeout(60)
async def test_requests_beyond_the_per_peer_limits_are_refused_and_counted() -> None:
    config = dataclasses.replace(FAST, request_rate=2.0, request_burst=4, max_requests_per_peer=2)
    async with scene(config) as s:
        hold = trio.Event()

        async def slow(peer: str, body: bytes) -> bytes:
            await hold.wait()
            return b"ok"

        s.victim.set_request_handler(MEMBERS, slow)

        async def ask() -> bytes:
            """A request the way our transport makes them: write, read the reply, reset."""
            stream = await open_raw_stream(s.attacker, s.address, MEMBERS)  # type: ignore[arg-type]
            try:
                await stream.write(frame(b"?"))
                return await stream.read(100)
            finally:
                with contextlib.suppress(Exception):
                    await stream.reset()

        def counted(kind: str) -> int:
            return s.victim.violations.get(s.attacker_id, {}).get(kind, 0)

        async def ask_quietly() -> None:
            with contextlib.suppress(Exception):
                await ask()

        async with trio.open_nursery() as nursery:  # 5 at once: 2 are served, 3 refused
            for _ in range(5):
                nursery.start_soon(ask_quietly)
            await poll(lambda: counted("requests") >= 3)
            hold.set()
        assert counted("requests") == 3
        answers = []
        for _ in range(6):  # one after the other, faster than 2 per second
            with contextlib.suppress(Exception):
                answers.append(await ask())
        assert counted("request_rate") >= 1
        assert frame(b"ok") in answers
        # The honest peer's requests are on its own budget.
        assert await s.honest.request(s.victim.local_id, MEMBERS, b"hi") == b"ok"


# ================================================= honest traffic trips no limit


@pytest.mark.network
@pytest.mark.timeout(90)
async def test_honest_bulk_and_bursty_traffic_counts_no_violation() -> None:
    config = dataclasses.replace(FAST, max_frame=64 * MiB, write_timeout=10.0)
    big = bytes(range(256)) * (64 * MiB // 256)
    small = [i.to_bytes(4, "big") * 9 for i in range(3000)]
    async with (
        Libp2pTransport.open(config=config) as a,
        Libp2pTransport.open(config=config) as b,
    ):
        await a.dial(b.listen_addrs[0])

        async def receive(transport: Libp2pTransport, count: int) -> list[bytes]:
            out = []
            async for event in transport.events():
                if isinstance(event, Received):
                    out.append(event.data)
                    if len(out) == count:
                        break
            return out

        got: dict[str, list[bytes]] = {}

        async def send_all(src: Libp2pTransport, dst: Libp2pTransport) -> None:
            await src.send(dst.local_id, big)
            for i in range(4):
                await src.send(dst.local_id, big[i * 16 * MiB : (i + 1) * 16 * MiB])
            for body in small:
                await src.send(dst.local_id, body)

        async def collect(transport: Libp2pTransport) -> None:
            got[transport.local_id] = await receive(transport, 5 + len(small))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for src, dst in ((a, b), (b, a)):
                    nursery.start_soon(send_all, src, dst)
                    nursery.start_soon(collect, dst)
        for frames in got.values():
            assert frames[0] == big
            assert frames[5:] == small
        for t in (a, b):
            assert t.violations == {}
            assert t.stats.violations == 0
            assert t.stats.dropped_bytes == 0
            print(f"honest: peak buffered on one connection {t.stats.peak_connection_buffer}")
            assert t.stats.peak_connection_buffer <= t.config.max_connection_buffer


# ==================================================== penalize, bans, the rest


@pytest.mark.network
@pytest.mark.timeout(60)
async def test_penalize_bans_a_peer_for_a_while_then_lets_it_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    config = dataclasses.replace(FAST, score=ScorePolicy(ban=1.0, threshold=100.0))
    async with (
        Libp2pTransport.open(config=config) as a,
        Libp2pTransport.open(config=config) as b,
    ):
        await a.dial(b.listen_addrs[0])
        assert a.penalize(b.local_id, "bad_record", "a record that does not parse") is None
        assert a.violations == {b.local_id: {"bad_record": 1}}
        for _ in range(4):
            ban = a.penalize(b.local_id, "bad_record", "another one")
        assert ban is not None
        assert ban.kind == "bad_record"
        assert ban.duration == 1.0
        await poll(lambda: b.local_id not in a.connected_peers)
        with pytest.raises(PeerUnreachable, match="banned for another"):
            await a.connect(b.local_id)
        b.add_peer_address(a.local_id, a.listen_addrs[0])
        with pytest.raises(PeerUnreachable, match="hung up during the handshake"):
            await b.connect(a.local_id)  # its handshake is refused
        assert a.penalize(b.local_id, "bad_record") is None  # counted, not scored, while banned
        assert a.violations[b.local_id]["bad_record"] == 6
        assert a.stats.bans == 1
        await poll(lambda: not a.banned_peers)
        await a.connect(b.local_id)
    messages = [r.getMessage() for r in caplog.records]
    assert any(b.local_id in m and "broke a limit (bad_record)" in m for m in messages)
    assert any(m.startswith(f"banned peer {b.local_id} for 1.0 s") for m in messages)


@pytest.mark.network
@pytest.mark.timeout(60)
async def test_every_connection_we_hold_is_guarded_from_its_first_frame() -> None:
    async with (
        Libp2pTransport.open(config=FAST) as a,
        Libp2pTransport.open(config=FAST) as b,
        open_stock_host() as raw,
    ):
        assert a._guards_early
        assert b._guards_early
        await a.dial(b.listen_addrs[0])  # a dials b: outbound for a, inbound for b
        await connect(raw, a.listen_addrs[0])  # a stock host dials a
        await poll(lambda: len(a.connected_peers) == 2)
        for transport in (a, b):
            conns = [c for cs in transport.host.get_network().connections.values() for c in cs]
            assert len(conns) == len(transport.connected_peers)
            for conn in conns:
                guard = guard_of(conn.muxed_conn)
                assert guard is not None
                assert guard.limits.max_inbound_streams == FAST.max_inbound_streams


@pytest.mark.network
@pytest.mark.timeout(60)
async def test_a_peer_offering_only_mplex_cannot_connect() -> None:
    async with (
        Libp2pTransport.open(config=FAST) as a,
        open_stock_host(muxer_opt={TProtocol(MPLEX_PROTOCOL_ID): Mplex}) as raw,
    ):
        with trio.fail_after(20), pytest.raises(Exception):  # noqa: B017
            await connect(raw, a.listen_addrs[0])


# ----------------------------------------------- py-libp2p's resource manager


@pytest.mark.network
@pytest.mark.timeout(60)
async def test_stock_stream_semaphore_makes_new_streams_queue_when_streams_are_held() -> None:
    """Why we turn the semaphore off: with it, streams held open make every new stream
    wait, ours included (here: 3 slots; the next new_stream queues instead of failing)."""
    proto = TProtocol("/test/hold/1.0.0")
    manager = ResourceManager(limits=ResourceLimits(max_streams=3))
    held = trio.Event()

    async def hold(stream: object) -> None:
        await held.wait()

    with trio.fail_after(30):
        async with open_stock_host() as server, open_stock_host(resource_manager=manager) as client:
            server.set_stream_handler(proto, hold)  # type: ignore[arg-type]
            peer = await connect(client, full_address(server))
            opened = 0
            for _ in range(4):
                with trio.move_on_after(1.0) as queued:
                    await client.new_stream(peer, [proto])
                    opened += 1
                if queued.cancelled_caught:
                    break
            assert queued.cancelled_caught
            assert opened <= 3
            held.set()


@pytest.mark.network
@pytest.mark.timeout(60)
async def test_our_host_has_our_resource_manager_without_the_stream_semaphore() -> None:
    config = dataclasses.replace(FAST, max_connections=50, connection_rate=0.5)
    async with Libp2pTransport.open(config=config) as a:
        swarm = a.host.get_network()
        manager = swarm._resource_manager
        assert swarm._stream_semaphore is None
        assert manager.limits.max_connections == 100
        assert manager.limits.max_streams == 50 * config.max_inbound_streams * 2
        assert manager.circuit_breaker is None
        assert manager.graceful_degradation is None
        assert manager.connection_rate_limiter is not None
        assert manager.connection_limits.max_established_total == 50


@pytest.mark.network
@pytest.mark.timeout(60)
async def test_a_peer_that_reconnects_in_a_loop_is_refused_beyond_its_burst() -> None:
    config = dataclasses.replace(FAST, connection_rate=0.01, connection_burst=3)
    async with Libp2pTransport.open(config=config) as a, open_stock_host() as raw:
        disable_dial_retries(raw.get_network())
        a_id = ID.from_base58(a.local_id)
        outcomes = []
        for _ in range(5):
            forget_failed_dial(raw.get_network(), a_id)
            try:
                await connect(raw, a.listen_addrs[0])
                await poll(lambda: str(raw.get_id()) in a.connected_peers, timeout=2)
                outcomes.append(True)
                await raw.disconnect(a_id)
                await poll(lambda: str(raw.get_id()) not in a.connected_peers, timeout=5)
            except Exception:
                outcomes.append(False)
        assert outcomes[:3] == [True, True, True]
        assert False in outcomes[3:]


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    "bad",
    [
        {"max_inbound_streams": 0},
        {"max_connection_buffer": 1000},
        {"frame_rate": 0.0},
        {"frame_rate": math.inf},
        {"frame_burst": 0},
        {"request_rate": -1.0},
        {"max_buffered_per_peer": 0},
        {"connection_rate": math.nan},
        {"score": "strict"},
    ],
)
def test_impossible_limits_are_config_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        TransportConfig(**bad)  # type: ignore[arg-type]


def test_the_default_limits_leave_room_for_honest_traffic() -> None:
    config = TransportConfig()
    assert config.max_connection_buffer >= 2 * _yamux.MAX_WINDOW_SIZE
    assert config.max_buffered_per_peer >= config.max_frame
    assert config.frame_burst >= 100
    assert config.frame_rate >= 100
    assert config.max_inbound_streams > config.max_streams_per_peer + config.max_requests_per_peer


# ==================================================== frames read in place (Sink)


class FakeDirectSecured(FakeSecured):
    """A secured connection with what the fast path's body reader uses: ``last_header``
    and ``read_into`` (as ``BatchedSecureSession``); counts the bytes read into views."""

    def __init__(self) -> None:
        super().__init__()
        self.last_header = b""
        self.read_into_bytes = 0

    async def read(self, n: int | None = None) -> bytes:
        out = await super().read(n)
        if n == HEADER.size:
            self.last_header = out
        return out

    async def read_into(self, view: memoryview) -> None:
        pos = 0
        while pos < len(view):
            chunk = await super().read(len(view) - pos)
            assert chunk, "the test fed too little"
            view[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        self.read_into_bytes += pos


@contextlib.asynccontextmanager
async def direct_muxer(*, buffered: int = 64 * MiB) -> AsyncIterator[Muxer]:
    wire = FakeDirectSecured()
    yamux = _yamux.Yamux(wire, ID.from_pubkey(create_new_key_pair().public_key), False)  # type: ignore[arg-type]
    install_body_reader(yamux, wire)
    tasks = TaskGroup()
    reports: list[tuple[str, str, str]] = []
    guard = install_yamux_guards(
        yamux,
        YamuxLimits(max_inbound_streams=32, max_buffered=buffered),
        report=lambda peer, kind, detail: reports.append((peer, kind, detail)),
        spawn=tasks.spawn,
        stats=TransportStats(),
    )
    assert guard is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(tasks.run)
        nursery.start_soon(yamux.handle_incoming)
        yield Muxer(yamux, wire, guard, reports)
        tasks.close()
        nursery.cancel_scope.cancel()


def pattern(size: int, seed: int) -> bytes:
    return bytes((seed + i) % 251 for i in range(size))


async def read_into_whole(reader: YamuxInPlace, frame: bytearray) -> None:
    """Read until ``frame`` is full, as the fast path does."""
    got = 0
    with memoryview(frame) as view:
        while got < len(frame):
            got += await reader.read_into(view[got:])


def data_of(sid: int, body: bytes) -> bytes:
    return HEADER.pack(0, _yamux.TYPE_DATA, 0, sid, len(body)) + body


async def test_a_frame_read_in_place_gets_bodies_decrypted_straight_into_it() -> None:
    async with direct_muxer() as m:
        await m.feed(syn(1))
        stream = m.yamux.streams[1]
        reader = YamuxInPlace(stream, m.guard)
        frame = bytearray(200_000)

        bodies = [pattern(50_000, k) for k in range(4)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_into_whole, reader, frame)
            await trio.testing.wait_all_tasks_blocked()
            await m.feed(*(data_of(1, body) for body in bodies))
        assert frame == b"".join(bodies)
        assert m.wire.read_into_bytes == 200_000  # none went through a buffer
        assert m.guard.buffered == m.real_buffered() == 0
        assert m.guard.peak == 0
        assert m.reports == []
        assert stream.recv_window >= WINDOW  # everything credited back (and auto-tuned)


async def test_a_body_beyond_the_window_is_refused_even_when_read_in_place() -> None:
    async with direct_muxer() as m:
        await m.feed(syn(1))
        stream = m.yamux.streams[1]
        reader = YamuxInPlace(stream, m.guard)
        frame = bytearray(4 * WINDOW)
        outcome: list[object] = []

        async def read_one() -> None:
            with memoryview(frame) as view:
                try:
                    outcome.append(await reader.read_into(view))
                except EOFError as exc:
                    outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_one)
            await trio.testing.wait_all_tasks_blocked()
            await m.feed(data_of(1, pattern(WINDOW + 1, 7)))  # one byte beyond the window
        assert m.kinds() == ["window"]
        assert m.wire.read_into_bytes == WINDOW + 1  # it was read into the frame...
        assert len(outcome) == 1
        assert isinstance(outcome[0], EOFError)  # ...but never counted: the stream is reset
        assert m.wire.frames(_yamux.TYPE_WINDOW_UPDATE, _yamux.FLAG_RST) == [1]
        assert m.guard.buffered == m.real_buffered() == 0


async def test_bytes_buffered_before_the_reader_came_keep_their_order() -> None:
    async with direct_muxer() as m:
        await m.feed(syn(1), data_of(1, pattern(30_000, 1)))  # no reader yet: buffered
        assert m.guard.buffered == 30_000
        stream = m.yamux.streams[1]
        reader = YamuxInPlace(stream, m.guard)
        frame = bytearray(130_000)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_into_whole, reader, frame)
            await m.feed(data_of(1, pattern(100_000, 2)))
        assert frame == pattern(30_000, 1) + pattern(100_000, 2)
        assert m.guard.buffered == m.real_buffered() == 0
        assert m.reports == []


async def test_a_reader_in_place_is_woken_once_its_frame_is_full_not_per_body() -> None:
    async with direct_muxer() as m:
        await m.feed(syn(1))
        stream = m.yamux.streams[1]
        reader = YamuxInPlace(stream, m.guard)
        frame = bytearray(60_000)  # less than a quarter of the window: no credit due
        returns: list[int] = []

        async def read_all() -> None:
            got = 0
            with memoryview(frame) as view:
                while got < len(frame):
                    returns.append(await reader.read_into(view[got:]))
                    got += returns[-1]

        bodies = [pattern(20_000, k) for k in range(3)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await trio.testing.wait_all_tasks_blocked()
            for body in bodies:
                await m.feed(data_of(1, body))
                assert not returns or sum(returns) == len(frame)
        assert returns == [60_000]
        assert frame == b"".join(bodies)
        assert m.wire.read_into_bytes == 60_000
        assert m.reports == []


async def test_a_fin_inside_a_frame_read_in_place_wakes_its_reader_at_once() -> None:
    async with direct_muxer() as m:
        await m.feed(syn(1))
        stream = m.yamux.streams[1]
        reader = YamuxInPlace(stream, m.guard)
        frame = bytearray(100_000)
        outcome: list[object] = []

        async def read_all() -> None:
            got = 0
            with memoryview(frame) as view:
                try:
                    while got < len(frame):
                        got += await reader.read_into(view[got:])
                except EOFError as exc:
                    outcome.append(got)
                    outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await trio.testing.wait_all_tasks_blocked()
            await m.feed(data_of(1, pattern(20_000, 1)))
            assert outcome == []
            fin = HEADER.pack(0, _yamux.TYPE_DATA, _yamux.FLAG_FIN, 1, 20_000)
            start = trio.current_time()
            await m.feed(fin + pattern(20_000, 2))
            # Seen without waiting for the reader's periodic look (_RECHECK).
            assert trio.current_time() - start < 0.25
            assert outcome[:1] == [40_000]
            assert isinstance(outcome[1], EOFError)
        assert frame[:40_000] == pattern(20_000, 1) + pattern(20_000, 2)


async def test_a_slow_but_steady_frame_read_in_place_shows_progress_before_its_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with direct_muxer() as m:
        await m.feed(syn(1))
        stream = m.yamux.streams[1]
        reader = YamuxInPlace(stream, m.guard)
        frame = bytearray(100_000)
        got: list[int] = []

        async def read_once() -> None:
            with memoryview(frame) as view, trio.fail_after(0.4):  # below _RECHECK (0.5 s)
                got.append(await reader.read_into(view))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_once)
            for k in range(3):
                await trio.sleep(0.1)
                await m.feed(data_of(1, pattern(20_000, k)))
        # Half of the read's time was gone when the second body landed: it returned then
        # (not per body, and not only at its periodic look, which comes too late here).
        assert got == [40_000]


async def test_a_body_right_after_a_length_prefix_lands_in_the_frame_it_announces() -> None:
    from gossipfl.transport.libp2p.fastpath import DIRECT_MIN
    from gossipfl.transport.libp2p.framing import PREFIX, FrameReader

    async with direct_muxer() as m:
        await m.feed(syn(1))
        stream = m.yamux.streams[1]
        in_place = YamuxInPlace(stream, m.guard)
        reader = FrameReader(
            in_place.read_some,
            max_frame=MiB,
            read_timeout=10,
            in_place=in_place,
            in_place_min=DIRECT_MIN,
        )
        body = pattern(100_000, 3)
        frames: list[bytes | bytearray | None] = []

        async def read_one() -> None:
            frames.append(await reader.next_frame())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_one)
            await trio.testing.wait_all_tasks_blocked()
            # The prefix in a DATA frame of its own (as our senders write it), the body
            # right behind it: both are read before the reader has run.
            await m.feed(data_of(1, PREFIX.pack(len(body))) + data_of(1, body))
        assert frames == [body]
        assert m.wire.read_into_bytes == len(body)  # the body went to no buffer
        assert m.guard.buffered == m.real_buffered() == 0
        assert m.reports == []


class _SinkBuffer(bytearray):
    """A stream buffer with a ``sink`` attribute, as ``GuardedBuffer`` has."""

    sink: Sink | None = None


async def test_a_body_waits_for_the_next_frame_while_the_last_ones_full_sink_hangs() -> None:
    """Frame k's last body landed, k+1's length prefix and first body are read right
    behind it, before frame k's reader has run to take its (full) sink down: the body
    waits for the new frame's sink like any body after a prefix, not into the buffer.
    (Before, only a missing sink made it wait: with 4 MiB DATA frames, 38% of a bulk
    transfer's bytes went through the buffer, 2-7% since.)"""
    from gossipfl.transport.libp2p.framing import PREFIX

    wire = FakeDirectSecured()
    yamux = _yamux.Yamux(wire, ID.from_pubkey(create_new_key_pair().public_key), False)  # type: ignore[arg-type]
    install_body_reader(yamux, wire)
    body = pattern(50_000, 6)
    buffer = _SinkBuffer(PREFIX.pack(len(body)))
    done = Sink(memoryview(bytearray(10)))
    done.filled = 10  # frame k: full, its reader not yet back
    buffer.sink = done
    yamux.stream_buffers[1] = buffer
    wire.last_header = HEADER.pack(0, _yamux.TYPE_DATA, 0, 1, len(body))
    wire.feed(body)
    frame = bytearray(len(body))

    async def reader() -> None:  # takes the prefix, hangs frame k+1's sink
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
        del buffer[: PREFIX.size]
        buffer.sink = Sink(memoryview(frame))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await yamux._read_data_body(len(body))
    assert wire.read_into_bytes == len(body)  # decrypted where it belongs
    assert frame == body
