"""``simulate --transport libp2p``: the same experiment, each peer its own OS process.

Every peer is a ``gossipfl start`` daemon on 127.0.0.1 with a static roster, so this runs
the operator's product end to end: real libp2p hosts, Noise, Yamux, the membership
exchange, checkpoints. The parent process

1. builds the topology (and the Byzantine placement) exactly as the in-process simulator
   does, creates one home directory per peer (identity, config, free port) and a roster
   listing them all, and saves the data set once as ``data.npz`` for the children;
2. starts the peers; each waits until the whole roster is up before round 0, then trains
   on shard i of n (the simulator's partition and seeds) and appends every round's model
   and statistics to its ``models.bin``;
3. reads those files as they grow into the simulator's
   :class:`~gossipfl.simulation.collector.MetricsCollector`, which evaluates the models
   on the common test split and computes the consensus distance, so the per-round and
   per-peer metrics and the summary have the same keys as an in-process run;
4. stops the Byzantine peers once every honest one has finished.

Differences from the in-process run, by nature: time is real (``virtual_s`` is wall
time; ``network.deadline`` and ``training.step_time`` are real seconds: each peer
sleeps its step time after training), links are loopback TCP (no simulated
latency, loss or bandwidth), and a Byzantine peer only knows the models it receives
(``byzantine.omniscient`` is treated as false). Churn is played with the processes
themselves: the chosen peers are started with ``--set training.leave_after=LEAVE_ROUND``
(not ``--rounds``, which would make them another job), so each stops cleanly after its
last round before leaving, checkpoint written; once the others'
round ``leave_round + away_rounds`` is final (as the parent reads it, so possibly a round
or two later), they are started again from their home directories: the same identity,
resuming from the checkpoint and catching up by skipping rounds. The same peers churn as
in-process (:meth:`SimulationConfig.churn_nodes`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gossipfl.childenv import SINGLE_THREADED, environment, exit_with
from gossipfl.errors import ConfigError, GossipflError
from gossipfl.simulation.collector import MetricsCollector, RoundSummary
from gossipfl.simulation.config import SimulationConfig
from gossipfl.simulation.runner import SimulationResult, _gap_or_none, consensus_fit
from gossipfl.transport import NetworkStats

if TYPE_CHECKING:
    from gossipfl.daemon.roster import RosterEntry
    from gossipfl.identity import Identity

logger = logging.getLogger(__name__)

Progress = Callable[[RoundSummary], None]

START_TIMEOUT = 120.0
"""Seconds a peer waits for the whole roster before round 0 (process start-up is slow:
~2 s of imports per process, all competing for the same cores)."""
POLL = 0.2
"""Seconds between two reads of the peers' model files."""
CHILD_ENV = SINGLE_THREADED


PRELOAD = (
    "__main__",  # imported once by the server, not again by every peer (pytest: ~0.3 s)
    "gossipfl.cli",
    "gossipfl.cli.start",
    "gossipfl.daemon.node",
    "gossipfl.daemon.exchange",
    "gossipfl.daemon.workload",
    "gossipfl.transport.libp2p.host",  # the package alone loads nothing (PEP 562)
    "gossipfl.peer",
    "gossipfl.learning",
    "gossipfl.learning.numpy_models",
    "gossipfl.attacks",
    "gossipfl.simulation.processes",
    "rich.progress",
)
"""Modules the fork server imports once, so that a peer process starts in ~0.1 s instead
of the ~2 s (and ~2,700 modules) a fresh interpreter needs."""


def _peer_main(argv: list[str], stdout: str, stderr: str, launcher: int) -> None:
    """Body of a peer process: ``gossipfl <argv>`` with its output in two files. It stops
    (SIGTERM) when the ``launcher`` process does: a SIGKILLed experiment leaves no peer
    behind."""
    exit_with(launcher)
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    from gossipfl.cli import main

    sys.exit(main(argv))


class PeerLauncher:
    """Starts ``gossipfl start`` peers as OS processes, fast.

    Each peer is a real process of its own (its own pid: it can be SIGKILLed, SIGSTOPped,
    restarted), forked from a multiprocessing fork server that has already imported the
    daemon. Its stdout and stderr go to ``stdout.log`` and ``stderr.log`` in its home.
    BLAS libraries are limited to one thread per peer.
    """

    def __init__(self) -> None:
        import multiprocessing

        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(PRELOAD))

    def start(self, home: Path, *args: str, config: Path | None = None) -> Any:
        """Start ``gossipfl start --home HOME [--config CONFIG] ARGS...``; return the
        :class:`multiprocessing.Process`."""
        argv = ["start", "--home", str(home)]
        if config is not None:
            argv += ["--config", str(config)]
        argv += list(args)
        with environment(CHILD_ENV):
            process = self._context.Process(
                target=_peer_main,
                args=(argv, str(home / "stdout.log"), str(home / "stderr.log"), os.getpid()),
                name=f"gossipfl-peer-{home.name}",
            )
            process.start()
        return process


@dataclass
class Child:
    """One peer process."""

    node: int
    name: str
    peer_id: str
    home: Path
    honest: bool
    process: Any = None
    """A started :class:`multiprocessing.Process`."""
    away: bool = False
    """Stopped by the churn schedule (its exit is not a failure)."""

    @property
    def stderr_path(self) -> Path:
        return self.home / "stderr.log"

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


#: Ports below this are left alone (well-known and registered services live there).
_LOWEST_PORT = 10_000


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for automatically assigned ports (Linux; the usual default
    elsewhere)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
        low, high = (int(part) for part in text.split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago (bound, then released).

    A peer's port must be known before the peer starts (it goes in everyone's roster), so
    there is a moment between this check and the peer's own bind. The ports are drawn at
    random from below the kernel's ephemeral range: an outgoing connection made in that
    moment (by our other peers, or anyone) is given an ephemeral port, so it cannot take
    one of ours; only a process binding that exact port could.
    """
    low, _ = _ephemeral_range()
    candidates = list(range(_LOWEST_PORT, low))
    random.SystemRandom().shuffle(candidates)
    chosen: list[int] = []
    for port in candidates[: max(64, 50 * count)]:
        if len(chosen) == count:
            break
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        chosen.append(port)
    if len(chosen) < count:  # a crowded range: let the kernel pick the rest
        sockets: list[socket.socket] = []
        try:
            while len(chosen) + len(sockets) < count:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(s)
                s.bind((host, 0))
            chosen.extend(s.getsockname()[1] for s in sockets)
        finally:
            for s in sockets:
                s.close()
    return chosen


def simulate(
    config: SimulationConfig,
    *,
    progress: Progress | None = None,
    workdir: Path | None = None,
) -> SimulationResult:
    """Run ``config`` with its transport: in-process (memory) or one process per peer."""
    if config.transport == "libp2p":
        if workdir is None:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="gossipfl-peers-") as tmp:
                return run_processes(config, progress=progress, workdir=Path(tmp))
        return run_processes(config, progress=progress, workdir=workdir)
    from gossipfl.simulation.runner import run_simulation

    return run_simulation(config, progress=progress)


def run_processes(
    config: SimulationConfig,
    *,
    progress: Progress | None = None,
    workdir: Path,
    timeout: float | None = None,
) -> SimulationResult:
    """Run ``config`` with every peer as a ``gossipfl start`` process (see the module doc).

    ``workdir`` receives one directory per peer (identity, config, logs, metrics) and the
    roster; it is kept for inspection. ``timeout`` bounds the whole run (default: none).
    """
    config.validate()
    # Absolute, because every path written into a peer's config.toml (roster, data file,
    # topology edges) is read relative to that peer's home, not to our working directory.
    plan = _plan(config, workdir.resolve())
    launcher = PeerLauncher()
    wall_start = time.time()
    try:
        for child in plan.children:
            _first_launch(plan, launcher, child)
        _monitor(plan, launcher, progress=progress, timeout=timeout, started=wall_start)
    finally:
        _stop_all(plan.children)
    return _result(plan, wall_start)


# --------------------------------------------------------------------------- plan


@dataclass
class _Plan:
    config: SimulationConfig
    workdir: Path
    children: list[Child]
    collector: MetricsCollector
    names: dict[str, str]
    honest_topology: Any
    placement: Any
    readers: dict[str, Any]
    churn: _Churn | None = None


@dataclass
class _Churn:
    """The churn schedule: ``nodes`` leave once ``leave_round`` is final and, when
    ``back_round`` is set, start again once that round is."""

    nodes: list[int]
    leave_round: int
    back_round: int | None
    stage: str = "before"  # -> "away" -> "back"


def _churn_schedule(config: SimulationConfig) -> _Churn | None:
    nodes = config.churn_nodes()
    if not nodes:
        return None
    ch = config.churn
    back = ch.leave_round + ch.away_rounds
    return _Churn(nodes, ch.leave_round, back if back < config.rounds else None)


def _plan(config: SimulationConfig, workdir: Path) -> _Plan:
    from gossipfl.daemon.config import DaemonConfig
    from gossipfl.daemon.metrics import MODELS_FILE, ModelRecordReader
    from gossipfl.daemon.roster import roster_toml
    from gossipfl.daemon.workload import save_dataset_file
    from gossipfl.identity import save_identity
    from gossipfl.simulation.byzantine import check_defended, place_byzantine
    from gossipfl.simulation.runner import build_topology_for, check_rule_fits

    honest_topology = build_topology_for(config)
    placement = place_byzantine(config, honest_topology)
    check_defended(config, placement)
    if placement is not None and (config.byzantine.oracle or config.byzantine.known_b):
        raise ConfigError(
            "byzantine.oracle and byzantine.known_b (honest peers that know who, or how many, "
            "the attackers are) exist only in in-process simulations: drop transport = "
            "'libp2p', or those settings"
        )
    topology = placement.topology if placement is not None else honest_topology
    honest = config.peers
    check_rule_fits(config, topology, honest)
    if placement is not None and config.byzantine.omniscient:
        logger.warning(
            "live Byzantine peers are not omniscient: each attacks from the models it receives"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    n = topology.n
    names = [f"peer-{i:04d}" for i in range(n)]
    identities, ports, entries = loopback_peers(names)
    roster_topology: dict[str, Any]
    if placement is not None:
        edges = workdir / "topology.edges"
        graph = topology.graph(0)
        edges.write_text("".join(f"{u} {v}\n" for u, v in sorted(graph.edges())), encoding="utf-8")
        roster_topology = {"name": str(edges), "weighting": topology.weighting or "metropolis"}
    elif config.protocol == "epidemic":
        roster_topology = {"name": "epidemic", "s": config.network.epidemic_s}
    else:
        roster_topology = {"name": config.topology.name, **config.topology.params}
    roster_path = workdir / "roster.toml"
    roster_path.write_text(roster_toml(entries, roster_topology), encoding="utf-8")

    dataset = None
    evaluate = None
    data_file = workdir / "data.npz"
    if config.mode == "train":
        from gossipfl.learning import evaluate_many

        dataset, make, _ = config.workload()
        save_dataset_file(dataset, data_file)
        probe = make(dataset, np.arange(min(len(dataset.y_train), 16)), 0)
        test_x, test_y = dataset.x_test, dataset.y_test

        def evaluate(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return evaluate_many(probe, vectors, test_x, test_y)

    network_id = f"simulation-{secrets.token_hex(4)}"
    churn = _churn_schedule(config)
    churners = set(churn.nodes) if churn is not None else set()
    step_times = config.step_times(n)
    children: list[Child] = []
    for i in range(n):
        home = workdir / names[i]
        home.mkdir(parents=True, exist_ok=True)
        save_identity(identities[i], home / "identity.key", overwrite=True)
        is_honest = i < honest
        daemon = DaemonConfig(base_dir=home)
        values = _daemon_settings(
            config,
            node=i,
            honest=is_honest,
            port=ports[i],
            roster=roster_path,
            data_file=data_file if dataset is not None else None,
            network_id=network_id,
            step_time=float(step_times[i]) if i < honest else float(step_times[:honest].max()),
        )
        if i in churners:  # resume from the last round before leaving
            values["output.checkpoint_every"] = 1
        for key, value in values.items():
            daemon.set(key, value)
        daemon.validate()
        (home / "config.toml").write_text(daemon.to_toml(), encoding="utf-8")
        children.append(Child(i, names[i], identities[i].peer_id, home, is_honest))

    collector = MetricsCollector(
        names[:honest],
        rounds=config.rounds,
        evaluate=evaluate,
        eval_every=config.output.eval_every,
    )
    readers = {c.name: ModelRecordReader(c.home / "state" / MODELS_FILE) for c in children}
    return _Plan(
        config,
        workdir,
        children,
        collector,
        {c.peer_id: c.name for c in children},
        honest_topology,
        placement,
        readers,
        churn,
    )


def loopback_peers(names: list[str]) -> tuple[list[Identity], list[int], list[RosterEntry]]:
    """Fresh identities, free ports on 127.0.0.1 and roster entries for peers called
    ``names``: a job of daemons on this machine (simulations over libp2p, adversarial
    jobs, tests)."""
    from gossipfl.daemon.roster import RosterEntry
    from gossipfl.identity import generate_identity

    identities = [generate_identity() for _ in names]
    ports = free_ports(len(names))
    entries = [
        RosterEntry(name, ident.peer_id, (f"/ip4/127.0.0.1/tcp/{port}/p2p/{ident.peer_id}",))
        for name, ident, port in zip(names, identities, ports, strict=True)
    ]
    return identities, ports, entries


def _daemon_settings(
    config: SimulationConfig,
    *,
    node: int,
    honest: bool,
    port: int,
    roster: Path,
    data_file: Path | None,
    network_id: str,
    step_time: float,
) -> dict[str, Any]:
    """The daemon config of peer ``node`` as dotted keys."""
    tc, net = config.training, config.network
    heartbeat_timeout = max(2.0, 3 * net.deadline)
    out: dict[str, Any] = {
        "identity.key_file": "identity.key",
        "network.network_id": network_id,
        "network.listen": [f"/ip4/127.0.0.1/tcp/{port}"],
        "network.exchange_interval": 0.5,
        "network.member_timeout": 10.0,
        "network.heartbeat_interval": min(1.0, heartbeat_timeout / 3),
        "network.heartbeat_timeout": heartbeat_timeout,
        "topology.roster": str(roster),
        "topology.start_timeout": START_TIMEOUT,
        "rule.name": config.rule.name,
        "training.rounds": config.rounds,
        "training.protocol": config.protocol,
        "training.deadline": net.deadline,
        "training.codec": net.codec,
        "training.mode": config.mode,
        "training.model": tc.model,
        "training.backend": tc.backend,
        "training.hidden": tc.hidden,
        "training.lr": tc.lr,
        "training.momentum": tc.momentum,
        "training.weight_decay": tc.weight_decay,
        "training.batch_size": tc.batch_size,
        "training.local_steps": tc.local_steps,
        "training.seed": config.seed,
        "training.dimension": config.dimension,
        "training.step_time": step_time,
        "data.name": config.data.name,
        "data.partition": config.data.partition,
        "data.alpha": config.data.alpha,
        "data.shard": node % config.peers,
        "data.shards": config.peers,
        "output.dir": "state",
        "output.checkpoint_every": max(1, config.rounds),
        "output.eval_every": 0,
        "output.record_models": True,
        "output.linger": 0.5 if honest else 3600.0,
    }
    for key, value in config.rule.params.items():
        out[f"rule.{key}"] = value
    if config.task.name.strip():
        from gossipfl.tasks.loading import absolute_reference

        out["task.name"] = absolute_reference(config.task.name)
        for key, value in config.task.params.items():
            out[f"task.params.{key}"] = value
    if data_file is not None:
        out["data.file"] = str(data_file)
    if not honest:
        out["attack.name"] = config.byzantine.attack
        for key, value in config.byzantine.params.items():
            out[f"attack.{key}"] = value
    return out


# ------------------------------------------------------------------------ running


def _feed(plan: _Plan, started: float) -> None:
    for child in plan.children:
        reports = plan.readers[child.name].poll()
        if not child.honest:
            continue
        for report in reports:
            plan.collector.add(_renamed(report, child.name, started))


def _renamed(report: Any, name: str, started: float) -> Any:
    from gossipfl.peer import RoundReport

    return RoundReport(
        peer=name,
        round=report.round,
        vector=report.vector,
        stats=report.stats,
        train_metrics=report.train_metrics,
        bytes_sent=report.bytes_sent,
        time=report.time - started,
    )


def _launch(launcher: PeerLauncher, child: Child, *extra: str) -> None:
    child.process = launcher.start(child.home, "--quiet", *extra, config=child.home / "config.toml")


def _first_launch(plan: _Plan, launcher: PeerLauncher, child: Child) -> None:
    """Start a peer; a churning one is told to stop after ``leave_round`` rounds."""
    churn = plan.churn
    if churn is not None and child.node in churn.nodes:
        # Not --rounds: a peer of fewer rounds would be another job, refused by the rest.
        _launch(launcher, child, "--set", f"training.leave_after={churn.leave_round}")
    else:
        _launch(launcher, child)


def _play_churn(plan: _Plan, launcher: PeerLauncher) -> None:
    """Note the churning peers' leave; restart them when their time comes."""
    churn = plan.churn
    if churn is None:
        return
    churners = [plan.children[i] for i in churn.nodes]
    if churn.stage == "before":
        for child in churners:
            if not child.away and child.process is not None and child.process.exitcode == 0:
                child.away = True  # it stopped after its last round before leaving
                plan.collector.leave(child.name)
                logger.info("churn: %s left after round %d", child.name, churn.leave_round - 1)
        if all(c.away for c in churners):
            churn.stage = "away"
    if (
        churn.stage == "away"
        and churn.back_round is not None
        and plan.collector.final_round >= churn.back_round
    ):
        for child in churners:
            plan.collector.join(child.name)
            _launch(launcher, child)  # resumes from its checkpoint and catches up
            child.away = False
        churn.stage = "back"
        logger.info(
            "churn: %s rejoined at round %d",
            ", ".join(c.name for c in churners),
            plan.collector.final_round,
        )


def _monitor(
    plan: _Plan,
    launcher: PeerLauncher,
    *,
    progress: Progress | None,
    timeout: float | None,
    started: float,
) -> None:
    """Follow the peers until every honest one has exited (playing the churn schedule
    meanwhile); raise if one fails."""
    deadline = started + timeout if timeout else None
    reported = 0
    while True:
        _feed(plan, started)
        _play_churn(plan, launcher)
        while progress is not None and reported < len(plan.collector.summaries):
            progress(plan.collector.summaries[reported])
            reported += 1
        for child in plan.children:
            assert child.process is not None
            if child.away:
                continue
            code = child.process.exitcode
            if code not in (None, 0):
                words = child.tail() or (
                    "(nothing: it failed before starting. Peer processes are started by "
                    "multiprocessing, which re-imports the main script: call run_processes "
                    "under `if __name__ == '__main__':`)"
                )
                raise GossipflError(
                    f"{child.name} ({'honest' if child.honest else 'Byzantine'}) exited with "
                    f"status {code}; its last words:\n{words}"
                )
        running = [c for c in plan.children if c.honest and not c.away]
        to_rejoin = (
            plan.churn is not None
            and plan.churn.stage == "away"
            and (plan.churn.back_round is not None)
        )
        if not to_rejoin and all(
            c.process is not None and c.process.exitcode == 0 for c in running
        ):
            _feed(plan, started)
            return
        if deadline is not None and time.time() > deadline:
            raise GossipflError(f"the libp2p run did not finish within {timeout:g} s")
        time.sleep(POLL)


def stop_processes(processes: Iterable[Any], grace: float = 5.0) -> None:
    """SIGTERM every process still running (SIGCONT first, in case one is stopped), then
    SIGKILL what is left after ``grace`` seconds."""
    running = [p for p in processes if p is not None and p.is_alive()]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
    end = time.monotonic() + grace
    for process in running:
        process.join(max(0.0, end - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _stop_all(children: list[Child]) -> None:
    stop_processes(c.process for c in children)


# ------------------------------------------------------------------------- result


def _result(plan: _Plan, started: float) -> SimulationResult:
    from gossipfl.daemon.metrics import read_metrics

    config = plan.config
    _feed(plan, started)
    plan.collector.finish()
    wall = time.time() - started
    bytes_sent = 0
    crafted = 0
    for child in plan.children:
        rows = read_metrics(child.home / "state" / "metrics.jsonl")
        sent = [int(r["bytes_sent"]) for r in rows if r.get("kind") == "round"]
        bytes_sent += max(sent, default=0)
        crafted += sum(int(r.get("crafted") or 0) for r in rows if r.get("kind") == "stop")
    result = SimulationResult(
        config=config,
        summaries=sorted(plan.collector.summaries, key=lambda s: s.round),
        peer_rows=plan.collector.peer_rows,
        wall_s=wall,
        virtual_s=wall,
        network=NetworkStats(bytes_sent=bytes_sent),
        spectral_gap=_gap_or_none(plan.honest_topology),
    )
    if plan.placement is not None:
        from gossipfl.simulation.byzantine import build_attack

        result.extra.update(plan.placement.summary())
        result.extra.update(
            {
                "attack_detail": build_attack(config).describe(),
                "omniscient": False,
                "stale_views": 0,
                "crafted": crafted,
            }
        )
    if config.mode == "consensus":
        from gossipfl.daemon.workload import consensus_vector

        result.extra.update(consensus_fit(result.summaries, plan.honest_topology))
        initial = np.mean(
            [consensus_vector(config.seed, i, config.dimension) for i in range(config.peers)],
            axis=0,
        )
        last = _final_vectors(plan)
        drift = float(np.abs(np.mean(last, axis=0) - initial).max()) if last else None
        result.extra["mean_drift"] = drift
    return result


def _final_vectors(plan: _Plan) -> list[np.ndarray]:
    from gossipfl.daemon.metrics import read_model_records

    out = []
    for child in plan.children:
        if not child.honest:
            continue
        last = None
        for report in read_model_records(child.home / "state" / "models.bin"):
            last = report.vector
        if last is not None:
            out.append(np.asarray(last, np.float64))
    return out


__all__ = [
    "PRELOAD",
    "START_TIMEOUT",
    "PeerLauncher",
    "free_ports",
    "run_processes",
    "simulate",
    "stop_processes",
]
