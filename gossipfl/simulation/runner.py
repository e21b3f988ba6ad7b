"""Runs a simulated experiment: real peers, a simulated network, virtual time.

Every simulated peer is a full :class:`~gossipfl.peer.Peer` -- the same runtime, protocol
core, wire encoding and merge rules as a live peer -- on a
:class:`~gossipfl.transport.MemoryNetwork`. The run happens under trio's ``MockClock`` with
``autojump_threshold=0``: whenever every task is waiting, the clock jumps to the next
deadline or delivery, so simulated seconds cost nothing and a round takes as long as its
computation. Training runs inline (not in threads) so that it takes zero virtual time.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from gossipfl.errors import ConfigError
from gossipfl.learning import Learner, evaluate_many
from gossipfl.merge import make_rule
from gossipfl.peer import Peer, PeerConfig, RoundReport
from gossipfl.privacy.dpsgd import DPPlan
from gossipfl.protocol import Neighbourhood, TopologyNeighbourhood
from gossipfl.simulation.byzantine import (
    ByzantinePeer,
    ByzantineSetup,
    DetectorNeighbourhood,
    check_defended,
    place_byzantine,
    rule_params,
    setup_byzantine,
)
from gossipfl.simulation.collector import Evaluate, MetricsCollector, RoundSummary
from gossipfl.simulation.config import SimulationConfig
from gossipfl.simulation.privacy import dp_summary, enable_dp_all, membership_leakage
from gossipfl.simulation.scheduling import seeded_scheduler, virtual_clock
from gossipfl.topology import Topology, build_topology
from gossipfl.transport import LinkProfile, MemoryNetwork, NetworkStats

if TYPE_CHECKING:
    # libp2p depends on trio-typing, whose trio-stubs shadow trio's own annotations for
    # mypy and lack trio.TaskStatus; its own TaskStatus is the one mypy sees.
    from trio_typing import TaskStatus

    from gossipfl.simulation.sharded import ShardSide

Progress = Callable[[RoundSummary], None]


@dataclass
class SimulationResult:
    """Everything a run produced; :meth:`summary` is the JSON the CLI prints."""

    config: SimulationConfig
    summaries: list[RoundSummary]
    peer_rows: list[dict[str, object]]
    wall_s: float
    virtual_s: float
    network: NetworkStats
    spectral_gap: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def final(self) -> RoundSummary | None:
        evaluated = [s for s in self.summaries if s.mean_acc is not None]
        if evaluated:
            return evaluated[-1]
        return self.summaries[-1] if self.summaries else None

    def summary(self) -> dict[str, Any]:
        cfg = self.config
        last = self.final()
        out: dict[str, Any] = {
            "honest_mean_acc": last.mean_acc if last else None,
            "honest_min_acc": last.min_acc if last else None,
            "honest_avg_model_acc": last.avg_model_acc if last else None,
            "consensus_distance": last.consensus_distance if last else None,
            "rounds": cfg.rounds,
            "rounds_completed": (last.round + 1) if last else 0,
            "peers": cfg.peers,
            "wall_s": round(self.wall_s, 3),
            "virtual_s": round(self.virtual_s, 3),
            "mode": cfg.mode,
            "protocol": cfg.protocol,
            "topology": cfg.topology.name,
            "rule": cfg.rule.name,
            "seed": cfg.seed,
            "byzantine": cfg.byzantine.count,
            "attack": cfg.byzantine.attack,
            "spectral_gap": self.spectral_gap,
            "bytes_sent": self.network.bytes_sent,
            "frames_lost": self.network.frames_lost,
            "missing_total": sum(s.missing for s in self.summaries),
            "late_total": sum(s.late for s in self.summaries),
        }
        out.update(self.extra)
        return out


class _RoundWatch:
    """Lets a task wait until the collector has finalized a given round."""

    def __init__(self) -> None:
        self.final = 0
        self._changed = trio.Event()

    def advance(self, final_round: int) -> None:
        if final_round > self.final:
            self.final = final_round
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, round: int) -> None:
        while self.final < round:
            await self._changed.wait()


def build_topology_for(config: SimulationConfig) -> Topology:
    """The run's topology: the configured family, or the epidemic schedule."""
    if config.protocol == "epidemic":
        return build_topology(
            "epidemic",
            peers=config.peers,
            seed=config.seed,
            params={"s": config.network.epidemic_s},
        )
    return build_topology(
        config.topology.name,
        peers=config.peers,
        seed=config.seed,
        params=dict(config.topology.params),
    )


def check_rule_fits(config: SimulationConfig, topology: Topology, honest: int) -> None:
    """Refuse, before running, a rule that some honest node's neighbourhood cannot meet.

    Given the honest topology of a run with Byzantine peers, the check is made on the
    combined graph (Byzantine neighbours count in an honest node's degree).
    """
    if topology.n == honest:
        placement = place_byzantine(config, topology)
        check_defended(config, placement)
        if placement is not None:
            topology = placement.topology
    rule = make_rule(config.rule.name, **config.rule.params)
    if config.privacy.secure_averaging:
        from gossipfl.privacy.secure_averaging import check_secure_averaging

        check_secure_averaging(
            rule=rule.name,
            protocol=config.protocol,
            static=topology.is_static,
            in_degrees={
                f"node {node}": len(topology.in_neighbours(node, 0)) for node in range(honest)
            },
        )
    if config.protocol == "async":
        return
    for node in range(honest):
        degree = len(topology.in_neighbours(node, 0))
        try:
            rule.check(degree)
        except ConfigError as exc:
            raise ConfigError(f"node {node} of {topology.name!r}: {exc}") from None


def check_room(config: SimulationConfig, samples: int, honest: int) -> None:
    """Refuse, with what to use instead, a data set with fewer training samples than peers
    (every peer needs at least one; digits has 1,438 training samples)."""
    if samples >= honest:
        return
    need = math.ceil(honest * 10 / 0.8)
    raise ConfigError(
        f"{config.data_label()} has {samples:,} training samples, fewer than the {honest:,} "
        "peers (each peer needs at least one). For large simulations, generate a data set "
        "with room: --task synthetic --set task.params.samples=N (Gaussian clusters, numpy "
        f"softmax regression; N samples in all, about 80% of them for training: {need:,} give "
        "each peer about 10)"
    )


def workload_parts(config: SimulationConfig, honest: int) -> tuple[Any, Any, list[Any]]:
    """The run's data set, learner factory and each honest peer's part of the training
    split (deterministic in the seed: every shard of a sharded run computes the same)."""
    from gossipfl.data import partition

    dataset, make, _ = config.workload()
    check_room(config, len(dataset.y_train), honest)
    params = {"alpha": config.data.alpha} if config.data.partition == "dirichlet" else {}
    parts = partition(dataset.y_train, honest, config.data.partition, seed=config.seed, **params)
    return dataset, make, parts


def evaluator_on_test_split(probe: Learner, dataset: Any) -> Evaluate:
    """Accuracy and loss of many models on ``dataset``'s test split, through ``probe``
    (its own model is restored after each use)."""
    test_x, test_y = dataset.x_test, dataset.y_test

    def evaluate(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return evaluate_many(probe, vectors, test_x, test_y)

    return evaluate


def learner_seed(config: SimulationConfig, peer: int) -> int:
    """The seed of peer ``peer``'s learner."""
    return config.seed * 100_003 + peer


def consensus_start(config: SimulationConfig, honest: int) -> list[np.ndarray]:
    """Consensus mode: every honest peer's starting vector."""
    rng = np.random.default_rng(config.seed)
    return [rng.normal(size=config.dimension).astype(np.float32) for _ in range(honest)]


def run_simulation(
    config: SimulationConfig,
    *,
    progress: Progress | None = None,
    gc_threshold: int | None = None,
) -> SimulationResult:
    """Run ``config`` to completion and return its metrics.

    ``gc_threshold``: allocations between garbage-collector passes during the run
    (default :data:`GC_THRESHOLD`, or :data:`GC_ALLOCATIONS_PER_PEER` per peer if that is
    more, see :func:`rare_collections`); ``0`` leaves the collector's settings alone.
    """
    config.validate()
    if config.transport != "memory":
        raise ConfigError(
            "this runner simulates in-process (transport = 'memory'); "
            "transport = 'libp2p' runs each peer as its own OS process"
        )
    clock = virtual_clock()
    threshold = gc_threshold
    if threshold is None:
        threshold = gc_threshold_for(config)
    with (
        rare_collections(threshold) if threshold else contextlib.nullcontext(),
        seeded_scheduler(config.seed),
    ):
        result: SimulationResult = trio.run(_simulate, config, progress, clock=clock)
    return result


#: Allocations between two young-generation passes of the cyclic garbage collector while a
#: simulation runs (CPython's default is 700).
GC_THRESHOLD = 50_000

#: ... or this many per peer, if that is more: a round allocates in proportion to the
#: peers, so the passes per round stay as few at 10,000 peers as at 1,000 (at 4,000
#: peers, 8 rounds: 32 passes for 2.3 s at 50,000; 6 for 1.3 s at 250,000).
GC_ALLOCATIONS_PER_PEER = 50


def gc_threshold_for(config: SimulationConfig) -> int:
    """The garbage collector's young-generation threshold for a run of ``config``."""
    return max(GC_THRESHOLD, GC_ALLOCATIONS_PER_PEER * config.peers)


@contextlib.contextmanager
def rare_collections(threshold: int = GC_THRESHOLD) -> Iterator[None]:
    """Run the block with the cyclic garbage collector triggered every ``threshold``
    allocations instead of every 700; the previous thresholds come back on exit.

    Why: a simulation keeps a large, long-lived heap (1,024 peers: ~230,000 tracked
    objects) and allocates millions of short-lived ones (messages, events, trio's
    bookkeeping) that reference counting frees, not the collector. With the default
    thresholds the collector ran 1,758 times in 30 rounds of 1,024 peers, 14 of them full
    passes over the whole heap, and took 23% of the wall time to find a few thousand
    objects. At 50,000 it runs 19 times, none of them full, for 0.2 s; peak memory is
    unchanged.
    """
    old = gc.get_threshold()
    gc.set_threshold(max(threshold, old[0]), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


async def _simulate(
    config: SimulationConfig, progress: Progress | None, shard: ShardSide | None = None
) -> SimulationResult:
    """The run, in one trio run. With ``shard``, only that shard's peers run here, on its
    network; their reports go to the shard (the driver's collector computes the metrics)
    and the run ends when the driver says every peer of every shard is done."""
    wall_start = time.perf_counter()
    topology = honest_topology = build_topology_for(config)
    honest = config.peers
    placement = place_byzantine(config, honest_topology)
    check_defended(config, placement)
    if placement is not None:
        topology = placement.topology  # honest nodes weigh their Byzantine neighbours too
    check_rule_fits(config, topology, honest)
    ids = [f"peer-{i:04d}" for i in range(topology.n)]
    # This run's honest peers, and its Byzantine ones (a shard runs those it holds).
    local = list(range(honest)) if shard is None else [i for i in shard.peers if i < honest]
    attackers = set(range(honest, topology.n) if shard is None else shard.peers) - set(local)

    learners: list[Learner] = []
    learner_of: dict[int, Learner] = {}
    dp_plans: list[DPPlan] = []
    parts: list[Any] = []
    evaluate = None
    dataset = None
    make = None
    if config.mode == "train":
        dataset, make, parts = workload_parts(config, honest)
        if config.training.backend == "torch" or config.task.name:
            with contextlib.suppress(ImportError):
                import torch

                torch.set_num_threads(1)  # many small models in one process: no threads
        learner_of = {i: make(dataset, parts[i], learner_seed(config, i)) for i in local}
        learners = list(learner_of.values())  # without shards: every peer's, in order
        dp_plans = enable_dp_all(config, learners, ids, local)  # may wrap them, in place
        learner_of = dict(zip(local, learners, strict=True))
        evaluate = evaluator_on_test_split(learners[0], dataset)

    byzantine: ByzantineSetup | None = None
    if placement is not None:
        byzantine = setup_byzantine(config, placement, ids, dataset=dataset, make=make)

    watch = _RoundWatch()

    def on_final(summary: RoundSummary) -> None:
        if progress is not None:
            progress(summary)

    collector = MetricsCollector(
        ids[:honest],
        rounds=config.rounds,
        evaluate=evaluate,
        eval_every=config.output.eval_every,
        on_round=on_final,
    )

    def on_round(report: RoundReport) -> None:
        last_reported[report.peer] = report.round
        if shard is not None:
            shard.report(report)
            return
        collector.add(report)
        watch.advance(collector.final_round)

    net_cfg = config.network
    link = LinkProfile(
        latency=net_cfg.latency,
        jitter=net_cfg.jitter,
        bandwidth=net_cfg.bandwidth,
        loss=net_cfg.loss,
        duplicate=net_cfg.duplicate,
    )
    network = (
        MemoryNetwork(seed=config.seed, default=link)
        if shard is None
        else shard.network(seed=config.seed, default=link)
    )
    peer_config = PeerConfig(
        network_id="simulation",
        protocol=config.protocol,
        codec=net_cfg.codec,
        deadline=net_cfg.deadline,
        fanout=net_cfg.fanout,
        max_staleness=net_cfg.max_staleness,
        threads=False,
        heartbeat_interval=None,
        inbox_size=1_000_000,
        seed=config.seed,
        secure_averaging=config.privacy.secure_averaging,
    )
    models: dict[int, Any]
    if config.mode == "consensus":  # drawn for every peer, so that each shard draws the same
        models = {i: {"x": x} for i, x in enumerate(consensus_start(config, honest))}
    else:
        models = {i: learner.adapter for i, learner in learner_of.items()}
    initial_mean = (
        np.mean([m["x"] for m in models.values()], axis=0) if config.mode == "consensus" else None
    )

    tc = config.training
    step_times = config.step_times(topology.n)

    remaining = set(local)
    if shard is not None and not remaining:
        shard.local_done = True  # a shard of Byzantine peers only: they wait for the rest
    all_done = trio.Event()
    scopes: dict[int, trio.CancelScope] = {}
    last_reported: dict[str, int] = {}

    def done_with(i: int) -> None:
        remaining.discard(i)
        if not remaining:
            if shard is None:
                all_done.set()
            else:
                shard.local_done = True  # the driver sets all_done when every shard is

    def neighbourhood(i: int) -> Neighbourhood:
        hood = TopologyNeighbourhood(topology, i, ids)
        if placement is not None and config.byzantine.oracle:
            return DetectorNeighbourhood(hood, [ids[b] for b in placement.byzantine])
        return hood

    async def run_peer(
        i: int,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        scope = trio.CancelScope()
        scopes[i] = scope
        with scope:
            transport = network.endpoint(ids[i])
            try:
                async with Peer(
                    transport=transport,
                    model=models[i],
                    neighbourhood=neighbourhood(i),
                    train=learner_of[i].train if learners else None,
                    rule=make_rule(config.rule.name, **rule_params(config, placement, i)),
                    config=peer_config,
                    on_round=on_round,
                    compute_time=float(step_times[i]) if tc.step_time else None,
                    name=ids[i],
                    outgoing=byzantine.recorder(i) if byzantine is not None else None,
                ) as peer:
                    task_status.started()
                    await peer.run(
                        config.rounds,
                        start_round=last_reported.get(ids[i], -1) + 1,
                        away_since=left_at.get(i),
                    )
                    done_with(i)
                    async with trio.open_nursery() as serving:
                        serving.start_soon(peer.serve)
                        await all_done.wait()
                        serving.cancel_scope.cancel()
            finally:
                await transport.aclose()

    async def run_byzantine(spec: ByzantinePeer, step_time: float) -> None:
        """A Byzantine peer: attacks until every honest peer is done, then stops."""
        transport = network.endpoint(ids[spec.node])
        try:
            async with (
                Peer(
                    transport=spec.wrap(transport),
                    model=spec.model,
                    neighbourhood=TopologyNeighbourhood(topology, spec.node, ids),
                    train=spec.train,
                    rule="mean",
                    config=peer_config,
                    outgoing=spec.outgoing,
                    compute_time=step_time,
                    name=ids[spec.node],
                ) as peer,
                trio.open_nursery() as attacking,
            ):
                attacking.start_soon(_run_then_serve, peer, config.rounds)
                await all_done.wait()
                attacking.cancel_scope.cancel()
        finally:
            await transport.aclose()

    churners = config.churn_nodes()
    ch = config.churn
    rejoin = ch.leave_round + ch.away_rounds < config.rounds

    left_at: dict[int, float] = {}

    async def churn(nursery: trio.Nursery) -> None:
        await watch.wait_for(ch.leave_round)
        for i in churners:
            scopes[i].cancel()
            left_at[i] = trio.current_time()
            collector.leave(ids[i])
            if not rejoin:
                done_with(i)
        if not rejoin:
            return
        await watch.wait_for(ch.leave_round + ch.away_rounds)
        for i in churners:
            collector.join(ids[i])
            await nursery.start(run_peer, i)

    async with trio.open_nursery() as outer:
        outer.start_soon(network.run)
        if shard is not None:
            outer.start_soon(shard.gate, all_done)
        async with trio.open_nursery() as peers:
            for i in local:
                peers.start_soon(run_peer, i)
            if byzantine is not None:
                byzantine_step = float(step_times[:honest].max()) + byzantine.lag
                for spec in byzantine.peers:
                    if spec.node in attackers:
                        peers.start_soon(run_byzantine, spec, byzantine_step)
            if churners:
                peers.start_soon(churn, peers)
        outer.cancel_scope.cancel()
    collector.finish()
    if shard is not None:
        if config.mode == "consensus":
            shard.finals = {i: np.asarray(models[i]["x"]) for i in local}
        elif config.privacy.mia:  # the driver runs the study on every peer's final model
            shard.finals = {i: learner_of[i].adapter.get_flat() for i in local}
        shard.dp_plans = dict(zip(local, dp_plans, strict=True)) if dp_plans else {}
        shard.byzantine = byzantine.summary(attackers) if byzantine is not None else {}
        return SimulationResult(
            config, [], [], time.perf_counter() - wall_start, trio.current_time(), network.stats
        )

    result = SimulationResult(
        config=config,
        summaries=sorted(collector.summaries, key=lambda s: s.round),
        peer_rows=collector.peer_rows,
        wall_s=time.perf_counter() - wall_start,
        virtual_s=trio.current_time(),
        network=network.stats,
        spectral_gap=_gap_or_none(honest_topology),
    )
    if byzantine is not None:
        result.extra.update(byzantine.summary())
    if dp_plans:
        result.extra.update(dp_summary(dp_plans))
    if config.mode == "train" and config.privacy.mia and learners:
        finals = [learner.adapter.get_flat() for learner in learners]
        result.extra.update(
            membership_leakage(config, finals, learners[0], dataset, parts, topology, make)
        )
    if config.mode == "consensus":
        assert initial_mean is not None
        finals = [np.asarray(m["x"], np.float64) for m in models.values()]
        result.extra.update(consensus_fit(result.summaries, honest_topology))
        result.extra["mean_drift"] = mean_drift(finals, initial_mean)
    return result


def mean_drift(finals: list[np.ndarray], initial_mean: np.ndarray) -> float:
    """How far consensus moved the peers' average (0 for doubly stochastic mixing)."""
    return float(np.abs(np.mean(finals, axis=0) - initial_mean).max())


async def _run_then_serve(peer: Peer, rounds: int) -> None:
    await peer.run(rounds)
    await peer.serve()


def _gap_or_none(topology: Topology) -> float | None:
    try:
        return float(topology.spectral_gap())
    except (ConfigError, ValueError, NotImplementedError):
        return None


def consensus_fit(summaries: list[RoundSummary], topology: Topology) -> dict[str, float | None]:
    """Measured per-round contraction of ‖x − x̄‖ against the topology's prediction.

    The rate is the slope of log ‖x_t − x̄‖ fitted over the rounds after the first fifth
    (when faster modes have died out) and before the error nears float32 resolution.
    """
    norms = np.sqrt([max(s.consensus_distance, 0.0) for s in summaries])
    if len(norms) < 5 or norms[0] == 0:
        return {"consensus_rate": None, "predicted_rate": None}
    rel = norms / norms[0]
    usable = np.flatnonzero(rel > 1e-5)
    end = int(usable[-1]) + 1 if len(usable) else 0
    start = end // 5
    predicted = None
    gap = _gap_or_none(topology)
    if gap is not None and topology.is_static:
        predicted = 1.0 - gap
    if end - start < 3:
        return {"consensus_rate": None, "predicted_rate": predicted}
    rounds = np.arange(start, end)
    slope = np.polyfit(rounds, np.log(norms[start:end]), 1)[0]
    return {"consensus_rate": float(math.exp(slope)), "predicted_rate": predicted}
