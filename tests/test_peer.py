"""The peer runtime over the in-memory network, on trio's mock clock.

Each test drives real Peer objects; virtual time makes deadlines and heartbeats exact and
free. Hostile input comes from a raw endpoint on the same network.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from gossipfl import wire
from gossipfl.errors import ConfigError, GossipflError
from gossipfl.merge import make_rule
from gossipfl.model import NumpyAdapter
from gossipfl.peer import CheckpointError, CheckpointStore, Peer, PeerConfig
from gossipfl.peerlog import BURST as PEER_WARNING_BURST
from gossipfl.protocol import StaticNeighbourhood
from gossipfl.transport import MemoryNetwork
from gossipfl.transport.wrapping import TransportWrapper

SIM = PeerConfig(heartbeat_interval=None, threads=False, deadline=1.0)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def pair_hood(other: str) -> StaticNeighbourhood:
    return StaticNeighbourhood({other: 0.5})


async def run_two(
    models: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
    configs: tuple[PeerConfig, PeerConfig] = (SIM, SIM),
    rounds: int = 1,
    b_starts_after: float = 0.0,
) -> tuple[Peer, Peer]:
    net = MemoryNetwork()
    ends = net.endpoint("a"), net.endpoint("b")
    peers: list[Peer] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        async with (
            Peer(
                transport=ends[0], model=models[0], neighbourhood=pair_hood("b"), config=configs[0]
            ) as a,
            Peer(
                transport=ends[1], model=models[1], neighbourhood=pair_hood("a"), config=configs[1]
            ) as b,
        ):
            peers = [a, b]

            async def run_b() -> None:
                await trio.sleep(b_starts_after)
                await b.run(rounds)

            async with trio.open_nursery() as runs:
                runs.start_soon(a.run, rounds)
                runs.start_soon(run_b)
        nursery.cancel_scope.cancel()
    return peers[0], peers[1]


async def test_two_peers_average_exactly(clock: trio.testing.MockClock) -> None:
    a, b = await run_two(({"x": np.zeros(3, np.float32)}, {"x": np.full(3, 2.0, np.float32)}))
    np.testing.assert_array_equal(a.vector, np.ones(3, np.float32))
    np.testing.assert_array_equal(b.vector, np.ones(3, np.float32))
    assert a.counters.refused == b.counters.refused == 0
    assert a.counters.frames_sent == 2  # the handshake, then the round-0 model


async def test_different_networks_refuse_each_other_and_merge_nothing(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    other = PeerConfig(heartbeat_interval=None, threads=False, network_id="elsewhere")
    with caplog.at_level(logging.WARNING, logger="gossipfl.peer.runtime"):
        a, b = await run_two(
            ({"x": np.zeros(3, np.float32)}, {"x": np.full(3, 2.0, np.float32)}), (SIM, other)
        )
    np.testing.assert_array_equal(a.vector, np.zeros(3, np.float32))
    np.testing.assert_array_equal(b.vector, np.full(3, 2.0, np.float32))
    assert a.counters.refused + b.counters.refused >= 1
    assert "is in network 'elsewhere'" in caplog.text or "is in network 'gossipfl'" in caplog.text


async def test_peers_of_different_jobs_refuse_each_other_naming_the_setting(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    job = {"rule.name": "trimmed-mean", "training.rounds": "30"}
    mine = PeerConfig(heartbeat_interval=None, threads=False, job=job)
    theirs = PeerConfig(heartbeat_interval=None, threads=False, job={**job, "rule.name": "krum"})
    with caplog.at_level(logging.WARNING, logger="gossipfl.peer.runtime"):
        a, b = await run_two(
            ({"x": np.zeros(3, np.float32)}, {"x": np.full(3, 2.0, np.float32)}), (mine, theirs)
        )
    np.testing.assert_array_equal(a.vector, np.zeros(3, np.float32))
    np.testing.assert_array_equal(b.vector, np.full(3, 2.0, np.float32))
    assert a.counters.refused + b.counters.refused >= 1
    assert "another job: rule.name:" in caplog.text
    assert "training.rounds" not in caplog.text  # only what differs is named
    # The same job (given in another order) is one job.
    same = PeerConfig(heartbeat_interval=None, threads=False, job=dict(reversed(job.items())))
    a, b = await run_two(
        ({"x": np.zeros(3, np.float32)}, {"x": np.full(3, 2.0, np.float32)}), (mine, same)
    )
    np.testing.assert_array_equal(a.vector, np.ones(3, np.float32))


@pytest.mark.parametrize("grace", [0.0, 5.0])
async def test_round_0_waits_the_start_grace_for_a_neighbour_that_starts_late(
    clock: trio.testing.MockClock, grace: float
) -> None:
    """b starts its rounds 3 s after a (a 1 s deadline): with the grace, a's round 0
    merges b's model; without it, a merges alone. A fresh job's start-up skew."""
    config = PeerConfig(heartbeat_interval=None, threads=False, deadline=1.0, start_grace=grace)
    models = ({"x": np.zeros(3, np.float32)}, {"x": np.full(3, 2.0, np.float32)})
    a, _ = await run_two(models, (config, config), b_starts_after=3.0)
    expected = np.ones(3, np.float32) if grace else np.zeros(3, np.float32)
    np.testing.assert_array_equal(a.vector, expected)


def test_a_bad_job_manifest_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"PeerConfig\.job"):
        PeerConfig(job={"rule name": "mean"}).validate()
    with pytest.raises(ConfigError, match="start_grace must be >= 0 seconds"):
        PeerConfig(start_grace=-1.0).validate()


async def test_layout_mismatch_names_the_first_differing_tensor(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    mine = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    theirs = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}
    with caplog.at_level(logging.WARNING, logger="gossipfl.peer.runtime"):
        a, _ = await run_two((mine, theirs))
    assert a.counters.refused == 1
    assert "model layouts differ" in caplog.text
    assert "'w'" in caplog.text or " w " in caplog.text or "w:" in caplog.text


async def test_hostile_frames_are_counted_and_never_merged(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    net = MemoryNetwork()
    mallory = net.endpoint("mallory")
    victim_end = net.endpoint("victim")
    start = np.ones(4, np.float32)
    hood = StaticNeighbourhood({"mallory": 0.5})
    config = PeerConfig(heartbeat_interval=None, threads=False, deadline=1.0)
    with caplog.at_level(logging.WARNING, logger="gossipfl.peer.runtime"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            async with Peer(
                transport=victim_end, model={"x": start.copy()}, neighbourhood=hood, config=config
            ) as victim:
                big = wire.Update(sender="mallory", round=0, vector=np.full(4, 9.0, np.float32))
                await mallory.send("victim", b"\x00garbage\xff" * 10)  # not a message at all
                await mallory.send("victim", wire.encode(big))  # no handshake yet
                hello = wire.Hello(
                    network_id="gossipfl",
                    layout=NumpyAdapter({"x": start}).layout,
                    codecs=("fp32",),
                )
                await mallory.send("victim", wire.encode(hello))
                for size in (7, 3):  # too long for the victim's limits; too short for its model
                    wrong = wire.Update(sender="mallory", round=0, vector=np.ones(size, np.float32))
                    await mallory.send("victim", wire.encode(wrong))
                summary = await victim.run(3)
            nursery.cancel_scope.cancel()
    c = victim.counters
    assert (c.bad_frames, c.unverified, c.wrong_shape) == (2, 1, 1)
    assert summary.last_round == 2
    np.testing.assert_array_equal(victim.vector, start)  # nothing of mallory's was merged
    assert "mallory" in caplog.text


async def test_a_flood_of_garbage_is_counted_in_full_but_logged_a_few_times(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    net = MemoryNetwork()
    mallory = net.endpoint("mallory")
    start = np.ones(4, np.float32)
    with caplog.at_level(logging.WARNING, logger="gossipfl.peer.runtime"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            async with Peer(
                transport=net.endpoint("victim"),
                model={"x": start.copy()},
                neighbourhood=StaticNeighbourhood({"mallory": 0.5}),
                config=SIM,
            ) as victim:
                for i in range(500):
                    await mallory.send("victim", b"\x00garbage" + bytes([i % 256]))
                await victim.run(2)
            nursery.cancel_scope.cancel()
    assert victim.counters.bad_frames == 500
    logged = [r for r in caplog.records if "bad frame from mallory" in r.getMessage()]
    assert len(logged) == PEER_WARNING_BURST
    np.testing.assert_array_equal(victim.vector, start)


@pytest.mark.parametrize(
    ("neighbours", "bad"),
    [({}, np.nan), ({"q": 0.5}, np.inf)],
    ids=["alone-nan", "with-neighbours-inf"],
)
async def test_diverged_local_training_is_a_clear_error(
    clock: trio.testing.MockClock, neighbours: dict[str, float], bad: float
) -> None:
    """With neighbours to send to, too, a non-finite model is reported as divergence before
    any attempt to send it (the wire would refuse it with a less helpful error)."""
    model = {"x": np.ones(2, np.float32)}

    def explode(_round: int) -> None:
        model["x"][:] = bad

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        async with Peer(
            transport=net.endpoint("p"),
            model=model,
            neighbourhood=StaticNeighbourhood(neighbours),
            train=explode,
            config=SIM,
        ) as peer:
            with pytest.raises(GossipflError, match="local training diverged"):
                await peer.run(2)
        nursery.cancel_scope.cancel()


async def test_a_restarted_peer_resumes_from_its_checkpoint(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    store = CheckpointStore(tmp_path)
    steps: list[int] = []

    def train(model: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
        def step(round: int) -> dict[str, float]:
            steps.append(round)
            model["x"] += 1.0
            return {"loss": 0.0}

        return step

    async def life(rounds: int, model: dict[str, np.ndarray]) -> tuple[int, int]:
        net = MemoryNetwork()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            async with Peer(
                transport=net.endpoint("p"),
                model=model,
                neighbourhood=StaticNeighbourhood({}),
                train=train(model),
                config=SIM,
                checkpoints=store,
            ) as peer:
                summary = await peer.run(rounds)
            nursery.cancel_scope.cancel()
        return summary.first_round, summary.last_round

    assert await life(3, {"x": np.zeros(2, np.float32)}) == (0, 2)
    fresh = {"x": np.zeros(2, np.float32)}
    assert await life(5, fresh) == (3, 4)  # picks up after round 2
    np.testing.assert_array_equal(fresh["x"], np.full(2, 5.0, np.float32))
    assert steps == [0, 1, 2, 3, 4]


async def test_a_silent_neighbour_is_detected_by_heartbeat(clock: trio.testing.MockClock) -> None:
    """A frozen peer keeps its connection but says nothing: after the heartbeat timeout
    rounds stop waiting for it, instead of each waiting out the whole deadline."""
    net = MemoryNetwork()
    frozen = net.endpoint("frozen")
    config = PeerConfig(threads=False, deadline=10.0, heartbeat_interval=0.5, heartbeat_timeout=2.0)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        async with Peer(
            transport=net.endpoint("live"),
            model={"x": np.zeros(2, np.float32)},
            neighbourhood=StaticNeighbourhood({"frozen": 0.5}),
            config=config,
        ) as peer:
            layout = peer.adapter.layout
            await frozen.send(
                "live",
                wire.encode(wire.Hello(network_id="gossipfl", layout=layout, codecs=("fp32",))),
            )
            await peer.run(20)
        nursery.cancel_scope.cancel()
    elapsed = trio.current_time() - start
    assert elapsed < 12.0  # one deadline at most, not twenty


async def test_run_needs_the_context_manager(clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    peer = Peer(
        transport=net.endpoint("p"),
        model={"x": np.zeros(1, np.float32)},
        neighbourhood=StaticNeighbourhood({}),
        config=SIM,
    )
    with pytest.raises(GossipflError, match="async with"):
        await peer.run(1)
    async with peer:
        with pytest.raises(GossipflError, match="serve"):
            await peer.serve()


def test_merge_drops_non_finite_neighbours_as_a_last_line_of_defence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The wire refuses NaN, but if one ever reached a merge the sender is dropped, not us."""
    from gossipfl.protocol import Merge

    net = MemoryNetwork()
    peer = Peer(
        transport=net.endpoint("p"),
        model={"x": np.zeros(2, np.float32)},
        neighbourhood=StaticNeighbourhood({"good": 0.25, "bad": 0.25}),
        config=SIM,
    )
    action = Merge(
        round=0,
        own=np.zeros(2, np.float32),
        peers=("bad", "good"),
        vectors=(np.array([np.nan, 1.0], np.float32), np.full(2, 4.0, np.float32)),
        weights=(0.25, 0.25),
    )
    with caplog.at_level(logging.WARNING, logger="gossipfl.peer.runtime"):
        merged = peer._merge(action, total_rounds=1)
    np.testing.assert_allclose(merged, [1.0, 1.0])  # 0.75 * 0 + 0.25 * 4
    assert "left the model from bad out of the merge: it holds NaN or inf" in caplog.text
    assert peer.counters.bad_frames == 1


async def test_models_larger_than_a_frame_travel_in_chunks(clock: trio.testing.MockClock) -> None:
    n = 100_000  # 400 kB of float32 against a 64 KiB frame limit
    small_frames = PeerConfig(
        heartbeat_interval=None, threads=False, deadline=1.0, max_frame=64 * 1024
    )
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    a, b = await run_two(({"x": xa.copy()}, {"x": xb.copy()}), (small_frames, small_frames))
    expected = 0.5 * xa + 0.5 * xb
    np.testing.assert_allclose(a.vector, expected, rtol=1e-6)
    np.testing.assert_allclose(b.vector, expected, rtol=1e-6)
    assert a.counters.frames_sent > 2 + n * 4 // (64 * 1024)  # hello + head + >= 6 chunks
    assert a.counters.bad_frames == b.counters.bad_frames == 0


class SlowFirstSave(CheckpointStore):
    """Round 0's save takes long (a slow disk); later saves are quick."""

    def save(self, round: int, vector: np.ndarray, fingerprint: bytes, **binding: Any) -> None:
        if round == 0:
            import time

            time.sleep(0.3)  # real time in a worker thread: the race the lock must prevent
        super().save(round, vector, fingerprint, **binding)


async def test_a_slow_early_checkpoint_never_overwrites_a_later_one(tmp_path: Path) -> None:
    store = SlowFirstSave(tmp_path)
    model = {"x": np.zeros(1, np.float32)}

    def step(round: int) -> None:
        model["x"] += 1.0

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        async with Peer(
            transport=net.endpoint("p"),
            model=model,
            neighbourhood=StaticNeighbourhood({}),
            train=step,
            config=SIM,
            checkpoints=store,
        ) as peer:
            await peer.run(4)
        nursery.cancel_scope.cancel()
    saved = store.load()
    assert saved is not None
    assert saved.round == 3
    np.testing.assert_array_equal(saved.vector, [4.0])


class SlowSends:
    """A transport whose sends take time (a slow uplink): the runtime must queue frames in
    per-neighbour outboxes, as it does for libp2p."""

    def __init__(self, inner: object, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds

    def __getattr__(self, name: str) -> object:
        if name == "send_nowait":
            raise AttributeError(name)  # force the sender-task path
        return getattr(self._inner, name)

    async def send(self, peer: str, data: bytes) -> None:
        await trio.sleep(self._seconds)
        await self._inner.send(peer, data)  # type: ignore[attr-defined]


async def test_the_last_model_still_leaves_after_run_returns(
    clock: trio.testing.MockClock,
) -> None:
    """A peer that finishes first must not take its final model with it: run() drains its
    outboxes (up to a deadline) so the slower neighbour can finish its last round."""
    net = MemoryNetwork()
    slow = SlowSends(net.endpoint("a"), seconds=0.5)
    config = PeerConfig(heartbeat_interval=None, threads=False, deadline=5.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)

        async def a_side() -> None:
            async with Peer(
                transport=slow,  # type: ignore[arg-type]
                model={"x": np.zeros(2, np.float32)},
                neighbourhood=pair_hood("b"),
                config=config,
            ) as a:
                await a.run(1)
            # leaving the block cancels a's tasks: anything still queued would be lost

        async with Peer(
            transport=net.endpoint("b"),
            model={"x": np.full(2, 2.0, np.float32)},
            neighbourhood=pair_hood("a"),
            config=config,
        ) as b:
            nursery.start_soon(a_side)
            await b.run(1)
            np.testing.assert_array_equal(b.vector, [1.0, 1.0])  # a's model did arrive
        nursery.cancel_scope.cancel()


async def test_wait_for_neighbours_reports_who_is_missing(clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    hood = StaticNeighbourhood({"late": 0.25, "never": 0.25})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        async with Peer(
            transport=net.endpoint("me"),
            model={"x": np.zeros(1, np.float32)},
            neighbourhood=hood,
            config=SIM,
        ) as me:
            start = trio.current_time()

            async def arrive_late() -> None:
                await trio.sleep(3.0)
                async with Peer(
                    transport=net.endpoint("late"),
                    model={"x": np.zeros(1, np.float32)},
                    neighbourhood=StaticNeighbourhood({"me": 0.5}),
                    config=SIM,
                ):
                    await trio.sleep_forever()

            nursery.start_soon(arrive_late)
            assert await me.wait_for_neighbours(10.0, minimum=1) == {"never"}
            assert 3.0 <= trio.current_time() - start < 10.0  # returned as soon as one came
            assert await me.wait_for_neighbours(2.0) == {"never"}  # all: times out
        nursery.cancel_scope.cancel()


def test_a_negative_compute_time_is_refused() -> None:
    with pytest.raises(GossipflError, match="compute_time must be >= 0 seconds"):
        Peer(
            transport=MemoryNetwork().endpoint("a"),
            model={"x": np.zeros(2, np.float32)},
            neighbourhood=pair_hood("b"),
            compute_time=-1.0,
        )


async def _training_threads(threads: bool | None) -> set[bool]:
    """Run two peers for two rounds; return whether training ran on the main thread."""
    on_main: set[bool] = set()

    def train(_round: int) -> None:
        on_main.add(threading.current_thread() is threading.main_thread())

    net = MemoryNetwork()
    config = PeerConfig(heartbeat_interval=None, threads=threads, deadline=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        async with (
            Peer(
                transport=net.endpoint("a"),
                model={"x": np.zeros(4, np.float32)},
                neighbourhood=pair_hood("b"),
                train=train,
                config=config,
            ) as a,
            Peer(
                transport=net.endpoint("b"),
                model={"x": np.ones(4, np.float32)},
                neighbourhood=pair_hood("a"),
                train=train,
                config=config,
            ) as b,
            trio.open_nursery() as runs,
        ):
            runs.start_soon(a.run, 2)
            runs.start_soon(b.run, 2)
        nursery.cancel_scope.cancel()
    return on_main


async def test_no_worker_threads_under_a_virtual_clock(clock: trio.testing.MockClock) -> None:
    """A thread's time is invisible to the mock clock, which would jump ahead and fire the
    round deadline while the thread runs: under it, the default is to work inline."""
    assert await _training_threads(None) == {True}
    assert await _training_threads(True) == {False}  # asked for explicitly


async def test_worker_threads_on_a_real_clock() -> None:
    with trio.fail_after(10):
        assert await _training_threads(None) == {False}
        assert await _training_threads(False) == {True}


async def test_a_first_compiled_merge_does_not_stall_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A merge that may take the compiled kernels runs in a worker thread on a real clock:
    a kernel's first use on a machine compiles it (here made to take 1 s), which inline
    would freeze the peer's event loop, and with it the network, for that long."""
    pytest.importorskip("numba")
    from gossipfl.merge import _compiled

    built: list[str] = []
    real_build = _compiled._build

    def slow_build(key: str, source: str, flags: Any) -> Any:
        built.append(key)
        time.sleep(1.0)  # a cold compile, in whatever thread asked for it
        return real_build(key, source, flags)

    monkeypatch.setattr(_compiled, "_kernels", {})
    monkeypatch.setattr(_compiled, "_build", slow_build)
    size = _compiled.AUTO_MIN_PARAMS
    net = MemoryNetwork()
    config = PeerConfig(heartbeat_interval=None, deadline=5.0)
    gaps: list[float] = []

    async def tick(done: trio.Event) -> None:
        last = trio.current_time()
        while not done.is_set():
            await trio.sleep(0.01)
            now = trio.current_time()
            gaps.append(now - last)
            last = now

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            done = trio.Event()
            nursery.start_soon(tick, done)
            async with (
                Peer(
                    transport=net.endpoint("a"),
                    model={"x": np.zeros(size, np.float32)},
                    neighbourhood=pair_hood("b"),
                    rule=make_rule("median", b=0),
                    config=config,
                ) as a,
                Peer(
                    transport=net.endpoint("b"),
                    model={"x": np.ones(size, np.float32)},
                    neighbourhood=pair_hood("a"),
                    rule=make_rule("median", b=0),
                    config=config,
                ) as b,
                trio.open_nursery() as runs,
            ):
                runs.start_soon(a.run, 2)
                runs.start_soon(b.run, 2)
            done.set()
            nursery.cancel_scope.cancel()
    assert built, "no kernel was compiled: the test measured nothing"
    assert max(gaps) < 0.5, f"the event loop stalled for {max(gaps):.2f} s"
    np.testing.assert_array_equal(a.adapter.get_flat(), np.full(size, 0.5, np.float32))


# ------------------------------------------------------------ extreme neighbours


class Scored(TransportWrapper):
    """A memory transport that records the runtime's penalties, as libp2p's scores them."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.penalties: list[tuple[str, str, str]] = []

    def penalize(self, peer: str, kind: str, detail: str = "") -> None:
        self.penalties.append((peer, kind, detail))


def least_squares(model: dict[str, np.ndarray], seed: int):  # type: ignore[no-untyped-def]
    """A local step that overflows on a model holding huge values (A @ x sums them), as
    real training does: the trap that made a neighbour's values look like our divergence."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(16, 4)).astype(np.float32)
    y = a @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)

    def step(_round: int) -> dict[str, float]:
        x = model["x"]
        with np.errstate(over="ignore", invalid="ignore"):
            x -= np.float32(0.01) * (a.T @ (a @ x - y))
            return {"loss": float(np.mean((a @ x - y) ** 2))}

    return step


async def test_a_neighbour_sending_float_max_is_left_out_named_and_penalized(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Rule mean, a neighbour sending ±3e38: its models are left out of every merge, the
    peer keeps training with the honest neighbour, and the log names the sender (it used
    to stop with "local training diverged; try a smaller learning rate")."""
    net = MemoryNetwork()
    names = ("victim", "honest", "mallory")
    hoods = {n: StaticNeighbourhood({m: 1 / 3 for m in names if m != n}) for n in names}
    models = {n: {"x": np.zeros(4, np.float32)} for n in names}
    extreme = np.float32(3e38) * np.array([1, -1, 1, -1], np.float32)
    victim_end = Scored(net.endpoint("victim"))
    ends: dict[str, Any] = {"victim": victim_end}
    ends |= {n: net.endpoint(n) for n in names[1:]}
    summaries: dict[str, Any] = {}
    with caplog.at_level(logging.WARNING, logger="gossipfl.peer.runtime"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            async with contextlib.AsyncExitStack() as stack:
                peers = {
                    n: await stack.enter_async_context(
                        Peer(
                            transport=ends[n],
                            model=models[n],
                            neighbourhood=hoods[n],
                            train=least_squares(models[n], i),
                            rule="mean",
                            config=SIM,
                            outgoing=(lambda _p, _r, _v: extreme) if n == "mallory" else None,
                        )
                    )
                    for i, n in enumerate(names)
                }

                async def run(name: str) -> None:
                    summaries[name] = await peers[name].run(6)

                async with trio.open_nursery() as runs:
                    for n in names:
                        runs.start_soon(run, n)
            nursery.cancel_scope.cancel()
    victim = peers["victim"]
    assert summaries["victim"].last_round == summaries["honest"].last_round == 5
    assert np.isfinite(victim.vector).all()
    assert float(np.abs(victim.vector).max()) < 10.0  # nothing of mallory's got in
    assert victim.counters.bad_frames == 6  # one model per round
    assert "left the model from mallory out of the merge: it holds values up to 3e+38" in (
        caplog.text
    )
    assert "diverged" not in caplog.text
    assert {(p, k) for p, k, _ in victim_end.penalties} == {("mallory", "bad_frame")}


def merge_action(own: list[float], **neighbours: list[float]) -> Any:
    from gossipfl.protocol import Merge

    weight = 1 / (len(neighbours) + 1)
    return Merge(
        round=3,
        own=np.array(own, np.float32),
        peers=tuple(neighbours),
        vectors=tuple(np.array(v, np.float32) for v in neighbours.values()),
        weights=(weight,) * len(neighbours),
    )


def lone_peer(rule: Any = "mean") -> Peer:
    return Peer(
        transport=MemoryNetwork().endpoint("p"),
        model={"x": np.zeros(2, np.float32)},
        neighbourhood=StaticNeighbourhood({}),
        rule=rule,
        config=SIM,
    )


def test_values_beyond_the_extreme_bound_are_left_out_and_the_rest_merged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer = lone_peer()
    action = merge_action([0.0, 0.0], good=[3.0, 3.0], big=[1e20, -1.0])
    with caplog.at_level(logging.WARNING, logger="gossipfl.peer.runtime"):
        merged = peer._merge(action, total_rounds=10)
    np.testing.assert_allclose(merged, [1.0, 1.0])  # (0 + 3) / 3: big's weight stays ours
    np.testing.assert_array_equal(peer.vector, merged)
    assert "left the model from big out of the merge: it holds values up to 1e+20" in caplog.text
    assert peer.counters.bad_frames == 1


def test_a_large_own_model_is_not_blamed_on_the_neighbours() -> None:
    """Our own model beyond the bound is our training's doing: a neighbour no larger is
    merged as usual (and if our training diverges next, that error is ours)."""
    peer = lone_peer()
    merged = peer._merge(merge_action([4e19, 0.0], near=[2e19, 0.0]), total_rounds=10)
    np.testing.assert_allclose(merged, [3e19, 0.0], rtol=1e-6)
    assert peer.counters.bad_frames == 0


def test_a_merge_that_overflows_with_no_culprit_keeps_our_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gossipfl.merge import Mean

    class Overflowing(Mean):
        def _merge(self, own: Any, rows: Any, weights: Any, context: Any) -> Any:
            return np.full_like(own, np.inf)

    peer = lone_peer(Overflowing())
    with caplog.at_level(logging.WARNING, logger="gossipfl.peer.runtime"):
        merged = peer._merge(merge_action([1.0, 2.0], q=[1.0, 1.0]), total_rounds=10)
    np.testing.assert_array_equal(merged, [1.0, 2.0])
    assert "merge overflowed" in caplog.text
    assert "kept our own model" in caplog.text
    assert peer.counters.bad_frames == 0  # nobody to blame


# ------------------------------------------------------------------ checkpoints


async def run_alone(
    store: CheckpointStore,
    rounds: int,
    *,
    name: str = "p",
    network: str = "gossipfl",
    compute_time: float | None = None,
) -> Any:
    """Run a peer alone with ``store``; return its summary, or the CheckpointError that
    refused the store."""
    model = {"x": np.zeros(2, np.float32)}

    def step(_round: int) -> None:
        model["x"] += 1.0

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        async with Peer(
            transport=net.endpoint(name),
            model=model,
            neighbourhood=StaticNeighbourhood({}),
            train=step,
            config=PeerConfig(
                heartbeat_interval=None, threads=False, deadline=1.0, network_id=network
            ),
            checkpoints=store,
            compute_time=compute_time,
        ) as peer:
            try:
                summary: Any = await peer.run(rounds)
            except CheckpointError as exc:
                summary = exc
        nursery.cancel_scope.cancel()
    return summary


async def test_a_checkpoint_is_bound_to_its_peer_and_network(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    store = CheckpointStore(tmp_path)
    await run_alone(store, 2, name="alice")
    saved = store.load()
    assert saved is not None
    assert (saved.peer, saved.network, saved.round) == ("alice", "gossipfl", 1)
    refused = await run_alone(store, 4, name="bob")
    assert isinstance(refused, CheckpointError)
    assert str(refused).startswith(f"checkpoint {store.path} belongs to peer alice, not to ")
    assert "this peer (bob)" in str(refused)
    assert "give this peer its own" in str(refused)
    refused = await run_alone(store, 4, name="alice", network="other")
    assert isinstance(refused, CheckpointError)
    assert "network 'gossipfl', and this peer is on 'other'" in str(refused)
    summary = await run_alone(store, 4, name="alice")  # its own peer resumes as before
    assert (summary.first_round, summary.last_round) == (2, 3)


def test_a_save_interrupted_by_sigkill_leaves_no_file_behind_after_the_restart(
    tmp_path: Path,
) -> None:
    """A peer killed mid-save leaves its temporary file (as large as the model); the
    restarted peer's first save removes it, but not a file another writer may be using."""
    old = tmp_path / ".checkpoint-killed.npz"
    old.write_bytes(b"\0" * 1000)
    os.utime(old, (time.time() - 60, time.time() - 60))
    fresh = tmp_path / ".checkpoint-in-progress.npz"
    fresh.write_bytes(b"\0" * 10)
    store = CheckpointStore(tmp_path)
    store.save(3, np.ones(4, np.float32), b"f" * 16)
    assert not old.exists()
    assert fresh.exists()
    saved = store.load()
    assert saved is not None
    assert saved.round == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, "checkpoint.npz"]


async def test_a_full_disk_fails_checkpoints_with_one_warning_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every round's save fails (real time, a little compute per round, so that each save
    is attempted rather than skipped while the previous one runs): one warning."""

    class FullDisk(CheckpointStore):
        def save(self, *args: Any, **kwargs: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    store = FullDisk(tmp_path)
    with caplog.at_level(logging.WARNING):
        summary = await run_alone(store, 20, compute_time=0.02)
    assert summary.last_round == 19
    warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert warnings[0].levelno == logging.WARNING
    assert str(store.path) in warnings[0].getMessage()
    assert "No space left on device (free some space on that disk)" in warnings[0].getMessage()
    assert store.failures.failures >= 15  # each round's, bar a few skipped while one ran


async def test_a_neighbour_that_decodes_other_codecs_gets_the_first_of_its_own(
    clock: trio.testing.MockClock,
) -> None:
    """docs/protocol.md 5.1: a model goes out in the sender's codec when the receiver
    decodes it, else in the first codec of the receiver's Hello the sender can encode."""
    from gossipfl.transport import Received

    net = MemoryNetwork()
    js = net.endpoint("js")
    start = np.linspace(-1, 1, 6).astype(np.float32)
    hood = StaticNeighbourhood({"js": 0.5})
    got: list[wire.Update] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        async with Peer(
            transport=net.endpoint("py"), model={"x": start.copy()}, neighbourhood=hood, config=SIM
        ) as peer:
            hello = wire.Hello(
                network_id="gossipfl", layout=peer.adapter.layout, codecs=("brotli", "fp16")
            )
            await js.send("py", wire.encode(hello))

            async def listen() -> None:
                async for event in js.events():
                    if isinstance(event, Received):
                        message = wire.decode(event.data)
                        if isinstance(message, wire.Update):
                            got.append(message)

            nursery.start_soon(listen)
            await peer.run(2)
        nursery.cancel_scope.cancel()
    # before js's Hello arrived: the configured codec; after it, js's first we can encode
    after = [m for m in got if m.round >= 1]
    assert after
    assert {m.codec for m in after} == {"fp16"}
    assert {m.codec for m in got} <= {"fp32", "fp16"}


async def test_each_model_version_is_hashed_once(
    clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model version's payload digest is computed once per codec, however many rounds,
    replies and neighbours it goes to (async push-pull sends one version as pushes in one
    round and as replies in the next)."""
    from gossipfl.protocol.events import Send
    from gossipfl.wire import chunking, envelope

    hashed: list[tuple[int, str]] = []
    real = envelope.update_fields

    def counting(update: wire.Update, codecs: Any) -> Any:
        if update.digest is None:  # this encoding computes the digest
            hashed.append((id(update.vector), update.codec))
        return real(update, codecs)

    monkeypatch.setattr(envelope, "update_fields", counting)
    monkeypatch.setattr(chunking, "update_fields", counting)
    one, two = np.arange(3, dtype=np.float32), np.ones(3, dtype=np.float32)
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        net.endpoint("b")
        net.endpoint("c")
        async with Peer(
            transport=net.endpoint("a"),
            model={"x": np.zeros(3, np.float32)},
            neighbourhood=StaticNeighbourhood({"b": 0.5, "c": 0.5}),
            config=SIM,
        ) as a:
            for action in (
                Send("b", 4, one, reply=True),
                Send("c", 4, one, reply=True),
                Send("b", 5, one),  # a reply, in the next round: the same version
                Send("c", 5, one, reply=True),
                Send("b", 5, two),  # a new version
            ):
                a._send_model(action)
        nursery.cancel_scope.cancel()
    assert hashed == [(id(one), "fp32"), (id(two), "fp32")]


def test_the_timer_wheel_calls_each_tick_at_its_time_in_order() -> None:
    from gossipfl.peer.timers import timer_wheel

    calls: list[tuple[str, float]] = []

    async def main() -> None:
        wheel = timer_wheel()
        assert timer_wheel() is wheel  # one per trio run

        def tick(name: str) -> Callable[[], None]:
            return lambda: calls.append((name, trio.current_time()))

        wheel.add(2.0, tick("b"))
        wheel.add(3.0, tick("c"))
        await trio.sleep(0.5)
        wheel.add(1.0, tick("a"))  # earlier than the sleeping wheel's next: re-armed
        wheel.add(2.0, tick("b2"))  # the same time: after b, in the order added
        wheel.add(0.0, tick("past"))  # already due: called at once
        await trio.sleep(5)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert calls == [("past", 0.5), ("a", 1.0), ("b", 2.0), ("b2", 2.0), ("c", 3.0)]
