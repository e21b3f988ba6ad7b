"""One simulation split over shards computes exactly what one process computes.

The shards here are threads of the test process (the Ray actors are tested on a
two-node cluster in test_experiments_ray.py); the windows, the routing and the metrics
are the same code either way.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest
import trio
import trio.testing

from gossipfl.cli import main
from gossipfl.errors import ConfigError
from gossipfl.peer import RoundReport
from gossipfl.protocol.events import RoundStats
from gossipfl.simulation import SimulationConfig, SimulationResult, run_simulation, sharded
from gossipfl.simulation.collector import MetricsCollector
from gossipfl.simulation.sharded import (
    ShardNetwork,
    check_shardable,
    process_backend,
    run_sharded,
    thread_backend,
)
from gossipfl.topology.partition import cut_edges, partition_nodes
from gossipfl.transport import LinkProfile, Received


def metrics(result: SimulationResult) -> tuple[list[dict[str, Any]], list[dict[str, object]]]:
    return [s.__dict__ for s in result.summaries], result.peer_rows


def config(*overrides: str) -> SimulationConfig:
    return SimulationConfig().with_overrides(["data.partition=iid", *overrides])


def test_256_peers_sharded_equal_the_unsharded_run_bit_for_bit() -> None:
    cfg = config("peers=256", "rounds=8", "topology.name=random-regular")
    alone = run_simulation(cfg)
    split = run_sharded(cfg, 2)
    assert metrics(split) == metrics(alone)
    assert len(split.summaries) == 8
    assert split.summaries[-1].mean_acc is not None
    assert split.summaries[-1].mean_acc > 0.8
    sharding = split.extra["sharding"]
    assert sharding["peers_per_shard"] == [128, 128]
    # Kernighan-Lin keeps most edges inside a shard (a random split would cut half)
    assert 0 < sharding["cut_edges"] < 0.25 * sharding["edges"]
    assert sharding["cross_shard_messages"] > 0
    assert split.network.frames_sent >= alone.network.frames_sent
    # computed beside the shards' start, in a thread of the driver
    assert alone.spectral_gap is not None
    assert split.spectral_gap == pytest.approx(alone.spectral_gap, rel=1e-9)


def test_work_set_aside_returns_its_result_or_raises_its_error() -> None:
    started = threading.Event()
    go_on = threading.Event()

    def slow(x: int, y: int) -> int:
        started.set()
        assert go_on.wait(timeout=30)
        return x * y

    aside = sharded._Aside(slow, 6, 7)
    assert started.wait(timeout=30)  # running before anyone asks for it
    go_on.set()
    assert aside.result() == 42

    def broken() -> None:
        raise ValueError("no gap here")

    with pytest.raises(ValueError, match="no gap here"):
        sharded._Aside(broken).result()


@pytest.mark.parametrize(
    "overrides",
    [
        # lossy, jittery, duplicating links with stragglers (per-link randomness, deadlines)
        (
            "network.loss=0.1",
            "network.jitter=0.01",
            "network.duplicate=0.05",
            "training.step_time_spread=0.5",
        ),
        ("protocol=async", "topology.name=ring"),
        ("mode=consensus", "dimension=8", "rounds=25"),
        ("network.codec=fp16", "rule.name=trimmed-mean", "output.eval_every=2"),
        ("protocol=epidemic",),
        ("topology.name=one-peer-exponential",),  # time-varying: split by its union
    ],
    ids=["faulty-links", "async-ring", "consensus", "fp16-trimmed-mean", "epidemic", "tv"],
)
def test_sharded_runs_equal_unsharded_runs_in_every_mode(overrides: tuple[str, ...]) -> None:
    cfg = config("peers=36", "rounds=6", *overrides)
    alone = run_simulation(cfg)
    # two shards in processes (the default), three in threads of this process
    for shards, backend in ((2, process_backend), (3, thread_backend)):
        split = run_sharded(cfg, shards, backend=backend)
        assert metrics(split) == metrics(alone), f"{shards} shards"
        assert split.extra["sharding"]["processes"] == (shards if shards == 2 else 1)
    if cfg.mode == "consensus":
        assert split.extra["mean_drift"] == alone.extra["mean_drift"]
        assert split.extra["consensus_rate"] == alone.extra["consensus_rate"]


@pytest.mark.parametrize(
    "overrides",
    [
        ("privacy.mechanism=dp-sgd", "privacy.epsilon=4"),
        ("privacy.mechanism=model-noise", "privacy.epsilon=8"),
    ],
    ids=["dp-sgd", "model-noise"],
)
def test_private_runs_shard_with_the_same_noise_and_the_same_spending(
    overrides: tuple[str, ...],
) -> None:
    """Every peer's noise is seeded by its index, whichever shard runs it: the split run
    is the whole one, bit for bit, and the driver reports what all the peers spent."""
    cfg = config("peers=24", "rounds=4", *overrides)
    alone = run_simulation(cfg)
    split = run_sharded(cfg, 2)
    assert metrics(split) == metrics(alone)
    spent = ("epsilon", "epsilon_mean", "delta", "noise_multiplier_mean", "dp_clip")
    assert {k: split.extra[k] for k in spent} == {k: alone.extra[k] for k in spent}
    budget = float(overrides[1].split("=")[1])
    assert 0 < split.extra["epsilon"] <= budget * 1.01  # within the budget (and its slack)


@pytest.mark.parametrize("attack", ["alie", "gaussian", "label-flip"])
def test_byzantine_peers_that_attack_from_what_they_receive_shard(attack: str) -> None:
    """Attackers working from the models they receive (byzantine.omniscient = false) run
    in the shards that hold them, wherever their honest neighbours are: the split run is
    the whole one, bit for bit, attack counts included."""
    cfg = config(
        "peers=24", "rounds=4", "rule.name=trimmed-mean", "byzantine.count=3",
        f"byzantine.attack={attack}", "byzantine.omniscient=false",
    )  # fmt: skip
    alone = run_simulation(cfg)
    split = run_sharded(cfg, 2)
    assert metrics(split) == metrics(alone)
    facts = ("byzantine_attached", "crafted", "omniscient", "attack_detail", "delta_max")
    assert {k: split.extra[k] for k in facts} == {k: alone.extra[k] for k in facts}
    assert split.extra["byzantine_attached"] == 3
    assert split.extra["crafted"] > 0
    assert sorted(split.extra["sharding"]["peers_per_shard"]) == [13, 14]  # 27 peers in all


@pytest.mark.parametrize("topology", ["ring", "exponential"])
def test_secure_averaging_shards_its_keys_crossing_like_any_message(topology: str) -> None:
    """Mask keys and groups travel as messages, signed by keys every shard derives alike
    from the peers' names: the split run is the whole one, bit for bit, and the keys
    cross between shards (more traffic than the same split without masking)."""
    cfg = config("peers=24", "rounds=4", f"topology.name={topology}")
    masked = cfg.with_overrides(["privacy.secure_averaging=true"])
    alone = run_simulation(masked)
    assert metrics(alone) != metrics(run_simulation(cfg))  # the masks were at work
    split = run_sharded(masked, 2)
    assert metrics(split) == metrics(alone)
    assert metrics(run_sharded(masked, 3, backend=thread_backend)) == metrics(alone)
    assert split.summaries[-1].mean_acc is not None
    assert split.summaries[-1].mean_acc > 0.75
    crossed = split.extra["sharding"]["cross_shard_messages"]
    assert crossed > run_sharded(cfg, 2).extra["sharding"]["cross_shard_messages"]


@pytest.mark.parametrize(
    "overrides",
    [(), ("privacy.secure_averaging=true",), ("privacy.mechanism=dp-sgd", "privacy.epsilon=4")],
    ids=["plain", "secure-averaging", "dp-sgd"],
)
def test_the_membership_inference_study_runs_on_the_shards_final_models(
    overrides: tuple[str, ...],
) -> None:
    """The shards hand back their peers' final models and the driver attacks them as the
    unsharded run does: the same numbers, to the last bit."""
    cfg = config("peers=12", "rounds=4", "privacy.mia=true", *overrides)
    alone, split = run_simulation(cfg), run_sharded(cfg, 2)
    study = {k: v for k, v in alone.extra.items() if k.startswith("mia_")}
    assert len(study) == 7  # the plain attack's four numbers, the calibrated one's three
    assert {k: split.extra[k] for k in study} == study
    assert metrics(split) == metrics(alone)
    assert 0.3 < study["mia_auc"] < 0.8


def test_a_script_without_a_main_guard_can_shard(tmp_path: Path) -> None:
    # shard processes start from a fork server, which would re-run such a script
    script = tmp_path / "run.py"
    script.write_text(
        "from gossipfl.simulation import SimulationConfig\n"
        "from gossipfl.simulation.sharded import run_sharded\n"
        "cfg = SimulationConfig().with_overrides(['peers=16', 'rounds=2'])\n"
        "print('rounds', len(run_sharded(cfg, 2).summaries))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["rounds 2"]


def test_one_shard_is_the_unsharded_run() -> None:
    cfg = config("peers=16", "rounds=4")
    split = run_sharded(cfg, 1)
    assert metrics(split) == metrics(run_simulation(cfg))
    assert split.extra["sharding"]["cross_shard_messages"] == 0


def test_idle_stretches_cost_one_window_not_one_per_latency() -> None:
    # a 2 s local step and 5 ms links: windows of one latency would number ~400 a round
    cfg = config("peers=16", "rounds=3", "training.step_time=2.0")
    split = run_sharded(cfg, 2)
    assert split.virtual_s > 6
    assert split.extra["sharding"]["windows"] < 20 * cfg.rounds


def test_a_shard_that_fails_or_dies_stops_the_run_with_its_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = config("peers=16", "rounds=50")

    async def broken(*args: object) -> None:
        raise ValueError("the shard's own error")

    with monkeypatch.context() as patch:
        patch.setattr(sharded, "_simulate", broken)
        with pytest.raises(ValueError, match="the shard's own error"):
            run_sharded(cfg, 2, backend=thread_backend)

    def killing(*args: Any) -> Any:
        backend = process_backend(*args)
        run = backend.run

        def die_then_run(collector: Any) -> Any:
            backend.processes[1].kill()
            return run(collector)

        backend.run = die_then_run  # type: ignore[method-assign]
        return backend

    # shard 0 finds its link to shard 1 closed (PeerShardGone): the error named is
    # shard 1's end, not shard 0's broken link
    with pytest.raises(RuntimeError, match=r"shard 1's process ended \(exit code -9\)"):
        run_sharded(cfg, 2, backend=killing)

    def failing(config: Any, parts: list[list[int]], ids: list[str], until: float) -> Any:
        # shard 1 is handed a peer that does not exist: it fails in its own process
        return process_backend(config, [parts[0], [*parts[1], len(ids)]], ids, until)

    # ... and with shard 1's own error, not shard 0's broken link
    with pytest.raises(IndexError):
        run_sharded(cfg, 2, backend=failing)


def test_partition_is_balanced_deterministic_and_cuts_few_edges() -> None:
    torus = nx.convert_node_labels_to_integers(nx.grid_2d_graph(16, 16, periodic=True))
    halves = partition_nodes(torus, 2, seed=0)
    assert sorted(n for part in halves for n in part) == list(range(256))
    assert [len(p) for p in halves] == [128, 128]
    assert cut_edges(torus, halves) == 32  # the best cut: two rings of 16 edges
    regular = nx.random_regular_graph(4, 300, seed=5)
    parts = partition_nodes(regular, 3, seed=1)
    assert sorted(len(p) for p in parts) == [100, 100, 100]
    assert parts == partition_nodes(regular, 3, seed=1)
    # a random 3-way split cuts 2/3 of the edges; a partition far fewer
    assert cut_edges(regular, parts) < 0.45 * regular.number_of_edges()
    with pytest.raises(ConfigError, match="cannot split 256 peers into 257"):
        partition_nodes(torus, 257)


@pytest.mark.parametrize(
    ("overrides", "shards", "message"),
    [
        (("byzantine.count=1", "byzantine.attack=sign-flip"), 2, "omniscient Byzantine"),
        (("churn.fraction=0.25",), 2, "churn"),
        (("network.latency=0",), 2, "needs network.latency > 0"),
        ((), 0, "at least 1"),
        (("transport=libp2p",), 2, "in-process"),
    ],
)
def test_what_cannot_be_sharded_yet_is_refused_by_name(
    overrides: tuple[str, ...], shards: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check_shardable(config("peers=16", *overrides), shards)


def test_a_message_that_would_arrive_in_a_shards_past_is_an_error() -> None:
    async def body() -> None:
        net = ShardNetwork(seed=0, default=LinkProfile(), remote=frozenset({"far"}))
        near = net.endpoint("near")
        await trio.sleep(1.0)
        net.inject([(1.5, "far", "near", None), (1.5, "far", "near", b"on time")])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            kinds = []
            with trio.move_on_after(1):
                async for event in near.events():
                    kinds.append(type(event).__name__)
                    if isinstance(event, Received):
                        break
            nursery.cancel_scope.cancel()
        assert kinds == ["Connected", "Received"]
        with pytest.raises(RuntimeError, match="let a shard run past a message's arrival"):
            net.inject([(0.5, "far", "near", b"late")])

    trio.run(body, clock=trio.testing.MockClock(autojump_threshold=0))


def test_cli_shards_a_run_and_records_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", "--peers", "16", "--rounds", "3", "--partition", "iid", "--no-plot"]
    assert main([*args, "--shards", "2", "--json", "--out", str(tmp_path / "a")]) == 0
    split = json.loads(capsys.readouterr().out)
    assert main([*args, "--json", "--out", str(tmp_path / "b")]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert split["honest_mean_acc"] == alone["honest_mean_acc"]
    assert split["consensus_distance"] == alone["consensus_distance"]
    assert split["sharding"]["shards"] == 2
    assert math.isclose(sum(split["sharding"]["peers_per_shard"]), 16)
    rows_a = (Path(split["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    rows_b = (Path(alone["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    assert [r for r in rows_a if '"round"' in r] == [r for r in rows_b if '"round"' in r]


def test_cli_refuses_ray_without_shards_and_unshardable_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--peers", "16", "--ray"]) != 0
    assert "--ray runs the shards of a run: add --shards N" in capsys.readouterr().err
    byzantine = ["--byzantine", "1", "--attack", "sign-flip", "--shards", "2"]
    assert main(["simulate", "--peers", "16", *byzantine]) != 0
    assert "cannot have omniscient Byzantine peers" in capsys.readouterr().err


def test_round_reports_travel_compact_and_come_back_equal() -> None:
    made = [
        RoundReport(
            peer=f"peer-{i:04d}",
            round=3 + i,
            vector=np.arange(5, dtype=np.float32) * (i + 0.5),
            stats=RoundStats(
                expected=4, received=3, missing=("peer-0009",), deadline=0.5, slow=("x",)
            ),
            train_metrics={"loss": 0.25 * i, "epsilon": 1.5},
            bytes_sent=100 * i,
            time=0.125 * i,
        )
        for i in range(3)
    ]
    batch = sharded.ReportBatch()
    for report in made:
        batch.add(report)
    back = pickle.loads(pickle.dumps(batch.packed()))
    assert isinstance(back.vectors, np.ndarray)  # one array, not one per report
    assert len(back) == 3
    for got, want in zip(back.reports(), made, strict=True):
        for name in ("peer", "round", "stats", "train_metrics", "bytes_sent", "time"):
            assert getattr(got, name) == getattr(want, name)
        assert got.vector.dtype == np.float32
        assert np.array_equal(got.vector, want.vector)
    # vectors of different lengths (never in one run) still travel, one array each
    odd = sharded.ReportBatch()
    odd.add(made[0])
    odd.add(RoundReport(peer="p", round=0, vector=np.ones(2, np.float32), stats=RoundStats()))
    assert [len(r.vector) for r in pickle.loads(pickle.dumps(odd.packed())).reports()] == [5, 2]


def test_shards_in_processes_route_among_themselves_to_the_routed_result() -> None:
    """Three shard processes send each other their messages directly (no driver in
    between): the run is the unsharded one, and the one routed by the driver (threads)."""
    cfg = config("peers=36", "rounds=5", "topology.name=random-regular", "network.jitter=0.01")
    alone = run_simulation(cfg)
    direct = run_sharded(cfg, 3)
    routed = run_sharded(cfg, 3, backend=thread_backend)
    assert metrics(direct) == metrics(alone) == metrics(routed)
    counted = ("windows", "cross_shard_messages", "cross_shard_bytes")
    assert {k: direct.extra["sharding"][k] for k in counted} == {
        k: routed.extra["sharding"][k] for k in counted
    }
    assert direct.extra["sharding"]["processes"] == 3
    # a shard's process spends its thread's CPU and more (pickling, the mesh's sends)
    shard_cpu = direct.extra["sharding"]["shard_cpu_s"]
    process_cpu = direct.extra["sharding"]["shard_process_cpu_s"]
    assert all(0 < c <= p for c, p in zip(shard_cpu, process_cpu, strict=True))
    assert direct.extra["sharding"]["cross_shard_messages"] > 0


def test_a_shard_mesh_agrees_on_the_next_window_and_keeps_the_routed_order() -> None:
    links = {(a, b): multiprocessing.Pipe() for a in range(3) for b in range(a + 1, 3)}
    ends: list[dict[int, Any]] = [{} for _ in range(3)]
    for (a, b), (end_a, end_b) in links.items():
        ends[a][b], ends[b][a] = end_a, end_b
    shard_of = {"a": 0, "b": 1, "c": 2}
    meshes = [sharded.ShardMesh(k, ends[k], shard_of, 0.005) for k in range(3)]
    big = bytes(300_000)  # more than a pipe holds, sent both ways at once
    sent: list[list[Any]] = [
        [(1.0, "a", "c", big), (0.5, "a", "b", None), (1.1, "a", "c", b"second")],
        [(0.9, "b", "c", b"x"), (0.7, "b", "a", big)],
        [],
    ]
    next_events = [2.0, math.inf, 0.8]

    def exchange_all(done: list[bool], messages: list[list[Any]]) -> list[Any]:
        commands: list[Any] = [None] * 3

        def one(k: int) -> None:
            window = sharded.Window(messages[k], sharded.ReportBatch(), next_events[k], done[k])
            commands[k] = meshes[k].exchange(window)

        threads = [threading.Thread(target=one, args=(k,)) for k in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert not any(thread.is_alive() for thread in threads)
        return commands

    commands = exchange_all([False, True, False], sent)
    # every shard: the earliest timer or arrival anywhere (a's notice to b, 0.5) + latency
    assert [c.until for c in commands] == [0.505] * 3
    assert not any(c.all_done for c in commands)
    assert commands[0].inbound == [(0.7, "b", "a", big)]
    assert commands[1].inbound == [(0.5, "a", "b", None)]
    # shard by shard in index order, each in send order: as the driver routed them
    assert commands[2].inbound == [
        (1.0, "a", "c", big),
        (1.1, "a", "c", b"second"),
        (0.9, "b", "c", b"x"),
    ]
    assert (meshes[0].cross_messages, meshes[0].cross_bytes) == (2, 300_006)  # no notice
    assert [m.windows for m in meshes] == [1, 1, 1]

    commands = exchange_all([True, True, True], [[], [], []])
    assert all(c.all_done and c.until == math.inf for c in commands)

    for mesh in meshes:
        mesh.close()
    ends[0][1].close()  # shard 0 is gone: shard 1 hears it instead of waiting for ever
    with pytest.raises(sharded.PeerShardGone, match="shard 0 ended mid-run"):
        meshes[1].exchange(sharded.Window([], sharded.ReportBatch(), 1.0, False))


def test_the_driver_names_the_shard_that_ended_not_the_one_that_lost_its_link() -> None:
    class Ended:
        exitcode = -9

        def join(self, timeout: float | None = None) -> None:
            pass

    ours = [multiprocessing.Pipe() for _ in range(2)]
    backend = object.__new__(sharded._ProcessBackend)
    backend.pipes = [driver_end for driver_end, _ in ours]
    backend.processes = [Ended(), Ended()]
    backend._started = 0.0
    shard_0, shard_1 = (shard_end for _, shard_end in ours)
    shard_0.send(sharded.PeerShardGone("shard 1 ended mid-run"))
    shard_0.close()  # shard 0 hands in its broken link and exits ...
    threading.Timer(0.3, shard_1.close).start()  # ... before shard 1's end is seen
    collector = MetricsCollector(["peer-0000"], rounds=1)
    with pytest.raises(RuntimeError, match=r"shard 1's process ended \(exit code -9\)"):
        backend.run(collector)
