"""Adversarial jobs: a small job of real ``gossipfl start`` daemons with insiders among
them, measured as an operator would see it.

Every peer is its own OS process on 127.0.0.1 with a static roster (started from the fork
server of :class:`~gossipfl.simulation.processes.PeerLauncher`). An *attacker* is the same
daemon with a few settings changed: an insider behaviour (``insider.name``), a model
attack (``attack.name = "omission"``), or a long ``training.step_time`` (a staller). A
scenario may also SIGKILL a peer at some round and restart it from its home. The job is
measured from outside:

* the honest peers' final test accuracy (from their ``metrics.jsonl``);
* the wall time from the first round to the last honest peer's last round;
* each honest process's resident memory (``/proc/PID/status``), sampled all along;
* what each honest peer counted and logged about the others: its ``stop`` row
  (runtime, transport and membership counters) and the WARNING lines of its stderr
  that name an attacker's peer ID.

:func:`run_job` runs one scenario; ``experiments/insiders/run.py`` runs the suite and
records it, ``tests/test_insiders.py`` runs short forms of each.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossipfl.configfile import Scalar
from gossipfl.daemon.metrics import METRICS_FILE, read_metrics
from gossipfl.errors import GossipflError

POLL = 0.25
"""Seconds between two looks at the peers (metrics, memory, exits)."""


@dataclass(frozen=True)
class JobSettings:
    """The job every scenario runs: the issue's setting by default (exponential graph over
    6 peers, 3 in-neighbours each, CS+, digits, 150 rounds)."""

    peers: int = 6
    rounds: int = 150
    topology: str = "exponential"
    rule: str = "cs-plus"
    seed: int = 0
    deadline: float = 5.0
    partition: str = "dirichlet"
    alpha: float = 1.0
    step_time: float = 0.05
    """Seconds each peer's local step lasts beyond its training: rounds of ~60 ms, so that
    a peer killed for a few seconds comes back mid-job."""
    start_timeout: float = 10.0
    """Seconds peers wait for the whole roster before round 0 at most."""
    linger: float = 2.0
    """Seconds honest peers keep serving after their last round (slower ones need it)."""
    dynamic: bool = False
    """Dynamic membership (peers find each other from a bootstrap address, and the graph
    is computed from the live members) instead of a static roster."""
    extra: Mapping[str, Scalar] = field(default_factory=dict)
    """More dotted settings for every peer."""


@dataclass(frozen=True)
class Scenario:
    """What goes wrong in a job."""

    name: str
    attackers: Mapping[int, Mapping[str, Scalar]] = field(default_factory=dict)
    """Node -> the dotted settings that make it an attacker."""
    kill: tuple[int, int] | None = None
    """(node, round): SIGKILL that peer once it has completed that round, then start it
    again from its home (same identity, resuming from its checkpoint)."""
    down_seconds: float = 2.0
    """How long a killed peer stays down before it is restarted."""


@dataclass
class PeerOutcome:
    name: str
    peer_id: str
    honest: bool
    accuracy: float | None = None
    last_round: int = -1
    rss_start_mb: float = 0.0
    """Resident memory once the job was under way (after its first round)."""
    rss_peak_mb: float = 0.0
    stop: dict[str, Any] = field(default_factory=dict)
    """The peer's ``stop`` row: why it stopped, and its counters."""
    warnings_about_attackers: int = 0
    """WARNING lines in its stderr that name an attacker's peer ID."""
    exit_code: int | None = None


@dataclass
class JobResult:
    scenario: str
    wall_s: float
    peers: list[PeerOutcome]

    @property
    def honest(self) -> list[PeerOutcome]:
        return [p for p in self.peers if p.honest]

    @property
    def honest_mean(self) -> float:
        accs = [p.accuracy for p in self.honest if p.accuracy is not None]
        return sum(accs) / len(accs) if accs else float("nan")

    @property
    def honest_worst(self) -> float:
        accs = [p.accuracy for p in self.honest if p.accuracy is not None]
        return min(accs) if accs else float("nan")

    @property
    def rss_growth_mb(self) -> float:
        """The largest growth of an honest peer's memory after its first round."""
        return max((p.rss_peak_mb - p.rss_start_mb for p in self.honest), default=0.0)

    @property
    def crashed(self) -> list[str]:
        return [p.name for p in self.honest if p.exit_code not in (0, None)]

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "wall_s": round(self.wall_s, 2),
            "honest_mean": self.honest_mean,
            "honest_worst": self.honest_worst,
            "rss_growth_mb": round(self.rss_growth_mb, 1),
            "crashed": self.crashed,
            "warnings": sum(p.warnings_about_attackers for p in self.honest),
        }


ATTACKER = 5
"""The node that turns: one of the 6 peers of the exponential graph (its out-neighbours
0, 1 and 3 are the peers it can reach directly)."""


def _insider(name: str, **params: Scalar) -> dict[str, Scalar]:
    return {"insider.name": name, **{f"insider.{k}": v for k, v in params.items()}}


SUITE: Mapping[str, tuple[Scenario, bool]] = {
    # The attacks and faults the runtime did not withstand (issue 11's table).
    "membership-poison": (
        Scenario("membership-poison", {ATTACKER: _insider("membership-poison")}),
        True,
    ),
    "window-flood": (Scenario("window-flood", {ATTACKER: _insider("window-flood")}), False),
    "frame-flood": (Scenario("frame-flood", {ATTACKER: _insider("frame-flood")}), False),
    "round-inflation": (
        Scenario(
            "round-inflation",
            {4: _insider("round-inflation"), ATTACKER: _insider("round-inflation")},
        ),
        False,
    ),
    "stall": (Scenario("stall", {ATTACKER: {"training.step_time": 4.5}}), False),
    "omission": (Scenario("omission", {ATTACKER: {"attack.name": "omission"}}), False),
    "kill-restart": (Scenario("kill-restart", kill=(2, 20)), False),
    # The cases that held, kept in the suite so that they keep holding.
    "garbage-frames": (Scenario("garbage-frames", {ATTACKER: _insider("garbage-frames")}), False),
    "nan-models": (Scenario("nan-models", {ATTACKER: _insider("nan-models")}), False),
    "replay": (Scenario("replay", {ATTACKER: _insider("replay")}), False),
    "spoofed-sender": (Scenario("spoofed-sender", {ATTACKER: _insider("spoofed-sender")}), False),
    "unfinished-chunks": (
        Scenario("unfinished-chunks", {ATTACKER: _insider("unfinished-chunks")}),
        False,
    ),
    "wrong-network": (
        Scenario("wrong-network", {ATTACKER: {"network.network_id": "elsewhere"}}),
        False,
    ),
    # Since peers state their job, this one is refused for its job (training.model and
    # backend differ) before the layouts are compared; either way it is refused.
    "wrong-layout": (
        Scenario(
            "wrong-layout", {ATTACKER: {"training.model": "mlp", "training.backend": "torch"}}
        ),
        False,
    ),
}
"""Every scenario of the adversarial suite, by name, with whether it runs under dynamic
membership (the poisoning needs it; the others use a static roster)."""


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _settings(
    job: JobSettings,
    node: int,
    port: int,
    roster: Path,
    data_file: Path,
    network_id: str,
    members: list[tuple[str, str]],
) -> dict[str, Scalar | list[str]]:
    """The daemon settings of peer ``node``; ``members`` are (peer ID, address) of all."""
    if job.dynamic:
        ids = [peer for peer, _ in members]
        bootstrap = members[(node + 1) % len(members)][1]
        placement: dict[str, Scalar | list[str]] = {
            "topology.name": job.topology,
            "topology.min_peers": job.peers,
            "topology.settle": 1.0,
            "network.allow": ids,
            "network.bootstrap": [bootstrap],
        }
    else:
        placement = {"topology.roster": str(roster)}
    return {
        **placement,
        "identity.key_file": "identity.key",
        "network.network_id": network_id,
        "network.listen": [f"/ip4/127.0.0.1/tcp/{port}"],
        "network.exchange_interval": 0.5,
        "network.member_timeout": 10.0,
        "network.heartbeat_interval": 1.0,
        "network.heartbeat_timeout": 5.0,
        # A roster member that never joins (one on another network, say) would hold
        # round 0 back until this passes: the job then starts with the peers present.
        "topology.start_timeout": job.start_timeout,
        "rule.name": job.rule,
        "training.rounds": job.rounds,
        "training.deadline": job.deadline,
        "training.seed": job.seed,
        "training.step_time": job.step_time,
        "data.file": str(data_file),
        "data.partition": job.partition,
        "data.alpha": job.alpha,
        "data.shard": node,
        "data.shards": job.peers,
        "output.dir": "state",
        "output.eval_every": job.rounds,
    }


def run_job(
    job: JobSettings,
    scenario: Scenario,
    workdir: Path,
    *,
    timeout: float = 600.0,
    progress: Callable[[str], None] | None = None,
) -> JobResult:
    """Run ``scenario`` to the end (every honest peer done) and measure it.

    Raises :class:`GossipflError` if the job does not finish within ``timeout`` seconds.
    Attackers are stopped once the honest peers are done.
    """
    from gossipfl.daemon.config import DaemonConfig
    from gossipfl.daemon.roster import roster_toml
    from gossipfl.daemon.workload import save_dataset_file
    from gossipfl.data import load_dataset
    from gossipfl.identity import save_identity
    from gossipfl.simulation.processes import PeerLauncher, loopback_peers, stop_processes

    workdir.mkdir(parents=True, exist_ok=True)
    n = job.peers
    names = [f"n{i}" for i in range(n)]
    identities, ports, entries = loopback_peers(names)
    roster = workdir / "roster.toml"
    roster.write_text(roster_toml(entries, {"name": job.topology}), encoding="utf-8")
    data_file = workdir / "data.npz"
    save_dataset_file(load_dataset("digits", seed=job.seed), data_file)
    network_id = f"insiders-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
    attacker_ids = {identities[i].peer_id for i in scenario.attackers}
    homes = []
    for i in range(n):
        home = workdir / names[i]
        home.mkdir(parents=True, exist_ok=True)
        save_identity(identities[i], home / "identity.key", overwrite=True)
        config = DaemonConfig(base_dir=home)
        members = [(e.peer_id, e.addresses[0]) for e in entries]
        values: dict[str, Any] = _settings(job, i, ports[i], roster, data_file, network_id, members)
        values.update(job.extra)
        values.update(scenario.attackers.get(i, {}))
        # attackers keep at it until they are stopped
        values["output.linger"] = 3600.0 if i in scenario.attackers else job.linger
        for key, value in values.items():
            config.set(key, value)
        config.validate()
        (home / "config.toml").write_text(config.to_toml(), encoding="utf-8")
        homes.append(home)

    outcomes = [
        PeerOutcome(names[i], identities[i].peer_id, i not in scenario.attackers) for i in range(n)
    ]
    launcher = PeerLauncher()
    processes: list[Any] = [launcher.start(home) for home in homes]
    say = progress or (lambda _text: None)
    say(f"{scenario.name}: started {n} peers")
    first_round_at: float | None = None
    last_round_at = 0.0
    kill_node = scenario.kill[0] if scenario.kill is not None else None
    killed = False
    restart_at: float | None = None
    deadline = time.monotonic() + timeout
    try:
        while True:
            all_done = True
            for i, outcome in enumerate(outcomes):
                rounds = [
                    r
                    for r in read_metrics(homes[i] / "state" / METRICS_FILE)
                    if r.get("kind") == "round"
                ]
                if rounds:
                    outcome.last_round = max(int(r["round"]) for r in rounds)
                    started = min(float(r["time"]) for r in rounds)
                    first_round_at = min(first_round_at or started, started)
                    if outcome.honest:
                        last_round_at = max(last_round_at, max(float(r["time"]) for r in rounds))
                process = processes[i]
                if rounds and process.exitcode is None:
                    rss = _rss_mb(process.pid)
                    if not outcome.rss_start_mb:
                        outcome.rss_start_mb = rss
                    outcome.rss_peak_mb = max(outcome.rss_peak_mb, rss)
                if not outcome.honest:
                    continue
                code = process.exitcode
                if code is None or (i == kill_node and restart_at is not None):
                    all_done = False
                    continue
                if code != 0 or outcome.last_round < job.rounds - 1:
                    outcome.exit_code = code
                    words = ""
                    with contextlib.suppress(OSError):
                        words = (homes[i] / "stderr.log").read_text(errors="replace")[-2000:]
                    raise GossipflError(
                        f"{outcome.name} exited with status {code} after round "
                        f"{outcome.last_round}: {words}"
                    )
                outcome.exit_code = 0
            kill_now = (
                kill_node is not None
                and scenario.kill is not None
                and not killed
                and outcomes[kill_node].last_round >= scenario.kill[1]
            )
            if kill_now:
                assert kill_node is not None
                os.kill(processes[kill_node].pid, signal.SIGKILL)
                processes[kill_node].join()
                killed = True
                restart_at = time.monotonic() + scenario.down_seconds
                say(
                    f"{scenario.name}: killed {names[kill_node]} after its round "
                    f"{outcomes[kill_node].last_round}"
                )
                all_done = False
            if kill_node is not None and restart_at is not None:
                if time.monotonic() >= restart_at:
                    processes[kill_node] = launcher.start(homes[kill_node])
                    restart_at = None
                    say(f"{scenario.name}: restarted {names[kill_node]}")
                all_done = False
            if all_done:
                break
            if time.monotonic() > deadline:
                raise GossipflError(f"scenario {scenario.name} did not finish in {timeout:g} s")
            time.sleep(POLL)
    finally:
        stop_processes(processes)
    for i, outcome in enumerate(outcomes):
        rows = read_metrics(homes[i] / "state" / METRICS_FILE)
        accs = [r for r in rows if r.get("kind") == "round" and r.get("accuracy") is not None]
        if accs:
            outcome.accuracy = float(max(accs, key=lambda r: int(r["round"]))["accuracy"])
        stops = [r for r in rows if r.get("kind") == "stop"]
        if stops:
            outcome.stop = stops[-1]
        with contextlib.suppress(OSError):
            text = (homes[i] / "stderr.log").read_text(encoding="utf-8", errors="replace")
            outcome.warnings_about_attackers = sum(
                1
                for line in text.splitlines()
                if " WARNING " in line and any(a in line for a in attacker_ids)
            )
    wall = last_round_at - (first_round_at or last_round_at)
    return JobResult(scenario.name, wall, outcomes)


__all__ = ["ATTACKER", "SUITE", "JobResult", "JobSettings", "PeerOutcome", "Scenario", "run_job"]
