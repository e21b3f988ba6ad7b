"""Ray on a two-node local cluster: ``gossipfl experiment run --ray`` (a grid as Ray
tasks) and ``gossipfl simulate --shards N --ray`` (one simulation over Ray actors).

One cluster for the module (Ray takes seconds to start): two nodes of one CPU each,
started with the venv's ``ray start --block`` in process groups of their own, which the
fixture kills at the end (``ray stop`` would stop every Ray of this user on the machine).
The Ray grid benchmark's test is here too, to run on the same cluster (module scope, not
session: an idle cluster must not sit beside the timing-sensitive tests of other modules).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gossipfl.cli import main
from gossipfl.experiments import ExperimentInterrupted, ExperimentSpec, run_experiment
from gossipfl.experiments.cluster import RayOptions

if TYPE_CHECKING:
    from conftest import QuickBenchmark

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None or not RAY.exists(),
    reason="Ray is not installed (pip install 'gossipfl[ray]')",
)

GRID = """
name = "raygrid"
[base]
peers = 4
rounds = 3
[base.output]
eval_every = 3
plot = false
[grid]
"topology.name" = ["ring", "complete"]
seed = [0, 1]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_node(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    ports = [f"--dashboard-agent-listen-port={_free_port()}"]
    command = [str(RAY), "start", *args, *ports, "--num-cpus=1", "--block"]
    command.append("--disable-usage-stats")
    with log.open("wb") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _wait_started(node: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if node.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start failed:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def _in_sessions(sessions: set[int]) -> list[int]:
    """Processes whose session one of ``sessions`` leads: a node's raylet, GCS and agents,
    and its task workers (which lead process groups of their own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry.name)) in sessions:
                    found.append(int(entry.name))
    return found


def _stop(nodes: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL each node's process group (raylet, GCS, agents) and whatever else of its
    session is left (task workers), reap the ``ray start`` processes, and wait until no
    process of those sessions is left."""
    sessions = {node.pid for node in nodes}
    for node in nodes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
    for node in nodes:
        node.wait(10)
    deadline = time.monotonic() + 10
    while (left := _in_sessions(sessions)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


@dataclass(frozen=True)
class Cluster:
    address: str
    sessions: frozenset[int]
    """Session ids of the nodes' processes (each ``ray start`` leads one)."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """The address of a fresh two-node Ray cluster, one CPU per node (no token
    authentication, whatever ``~/.ray/auth_token`` says: it is a test cluster)."""
    temp = Path(tempfile.mkdtemp(prefix="gfray-"))  # short: Ray's socket paths must fit
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        head_args = [
            "--head",
            f"--port={port}",
            f"--ray-client-server-port={_free_port()}",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
        ]
        nodes.append(_start_node(head_args, temp / "head.log", env))
        _wait_started(nodes[0], temp / "head.log")
        nodes.append(_start_node([f"--address=127.0.0.1:{port}"], temp / "node.log", env))
        _wait_started(nodes[1], temp / "node.log")
        with pytest.MonkeyPatch.context() as patch:  # the driver, in this process
            patch.setenv("RAY_AUTH_MODE", "disabled")
            patch.delenv("RAY_ADDRESS", raising=False)
            yield Cluster(f"127.0.0.1:{port}", frozenset(node.pid for node in nodes))
    finally:
        _stop(nodes)
        shutil.rmtree(temp, ignore_errors=True)


def _summaries(directory: Path) -> dict[str, dict[str, Any]]:
    """summary.jsonl by run id, without the one field that is a measurement: wall time."""
    rows = [json.loads(line) for line in (directory / "summary.jsonl").read_text().splitlines()]
    return {row["run_id"]: {k: v for k, v in row.items() if k != "wall_s"} for row in rows}


@needs_ray
@pytest.mark.network
@pytest.mark.timeout(180)
def test_a_grid_on_a_two_node_cluster_matches_the_local_run_and_resumes(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    spec = ExperimentSpec.from_toml(path)
    local = run_experiment(spec, out=tmp_path / "local", workers=2)
    assert (local.ran, local.failed) == (4, {})

    out = tmp_path / "ray"
    on_ray = run_experiment(spec, out=out, ray=RayOptions(cluster.address))
    assert (on_ray.ran, on_ray.skipped, on_ray.failed) == (4, 0, {})
    assert len(on_ray.nodes) == 2, on_ray.nodes  # both nodes ran runs
    # deterministic simulations: the same numbers, bit for bit
    assert _summaries(out) == _summaries(tmp_path / "local")
    first = out / "topology=ring,seed=0"
    assert (first / "config.toml").read_text() == (
        tmp_path / "local" / first.name / "config.toml"
    ).read_text()
    assert not list(out.glob("*.partial"))

    # resume through the CLI: the one run missing runs again, the rest are kept
    shutil.rmtree(first)
    capsys.readouterr()
    assert main(["experiment", "run", str(path), "--out", str(out), "--ray", cluster.address]) == 0
    printed = capsys.readouterr().out
    assert "raygrid: 1 ran on 1 Ray node, 3 already done, 0 failed" in printed
    assert _summaries(out) == _summaries(tmp_path / "local")


@needs_ray
@pytest.mark.network
@pytest.mark.timeout(180)
def test_one_simulation_sharded_over_both_nodes_equals_the_unsharded_run(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gossipfl.simulation import SimulationConfig, run_simulation
    from gossipfl.simulation.sharded import ray_backend, run_sharded

    config = SimulationConfig().with_overrides(
        ["peers=256", "rounds=4", "topology.name=random-regular", "data.partition=iid"]
    )
    alone = run_simulation(config)
    with ray_backend(cluster.address) as backend:
        split = run_sharded(config, 2, backend=backend)
    assert [s.__dict__ for s in split.summaries] == [s.__dict__ for s in alone.summaries]
    assert split.peer_rows == alone.peer_rows
    sharding = split.extra["sharding"]
    # one actor per node (each node has one CPU, each actor takes one), none in here
    assert sharding["processes"] == 2
    assert sharding["cross_shard_messages"] > 0

    # the CLI's --shards --ray, into a run directory like any other
    args = ["simulate", "--peers", "16", "--rounds", "3", "--partition", "iid", "--no-plot"]
    out = ["--json", "--out", str(tmp_path)]
    assert main([*args, *out, "--shards", "2", "--ray", cluster.address]) == 0
    on_ray = json.loads(capsys.readouterr().out)
    assert main([*args, *out]) == 0
    here = json.loads(capsys.readouterr().out)
    assert on_ray["sharding"]["processes"] == 2
    for key in ("honest_mean_acc", "honest_min_acc", "consensus_distance", "rounds_completed"):
        assert on_ray[key] == here[key], key


@needs_ray
@pytest.mark.network
@pytest.mark.timeout(120)
def test_an_interrupted_ray_sweep_cancels_its_tasks_and_keeps_nothing_partial(
    cluster: Cluster, tmp_path: Path
) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(GRID.replace("rounds = 3", "rounds = 100000"))
    spec = ExperimentSpec.from_toml(path)

    def interrupt(event: Any) -> None:
        if event.kind == "started" and event.sweep.counts["done"] == 0:
            started.append(event.run_id)
            if len(started) == 2:
                time.sleep(1.0)  # both tasks running on the cluster
                raise KeyboardInterrupt

    started: list[str] = []
    begin = time.monotonic()
    with pytest.raises(ExperimentInterrupted) as caught:
        run_experiment(
            spec, out=tmp_path / "out", ray=RayOptions(cluster.address), on_event=interrupt
        )
    assert time.monotonic() - begin < 60
    result = caught.value.result
    assert sorted(result.interrupted) == sorted(started)
    assert (result.rows, result.left) == ([], 4)
    assert (tmp_path / "out" / "summary.jsonl").read_text() == ""
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "experiment.toml",
        "summary.csv",
        "summary.jsonl",
    ]
    # the cluster is free again: a short grid runs on both CPUs
    path.write_text(GRID)
    short = ExperimentSpec.from_toml(path)
    again = run_experiment(short, out=tmp_path / "again", ray=RayOptions(cluster.address))
    assert (again.ran, again.failed) == (4, {})


def _kill_a_running_task(sessions: frozenset[int], killed: list[int]) -> None:
    """SIGKILL the first worker process of our cluster seen running a run (Ray titles it
    ``ray::run_files``); give up after 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not killed:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            with contextlib.suppress(OSError):
                title = (entry / "cmdline").read_bytes().split(b"\0")[0]
                if title.startswith(b"ray::run_files") and os.getsid(pid) in sessions:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
        time.sleep(0.05)


@needs_ray
@pytest.mark.network
@pytest.mark.timeout(120)
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds workers in /proc")
def test_a_run_whose_worker_dies_is_retried_by_ray(cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    text = GRID.replace("rounds = 3", "rounds = 1000").replace('"complete"', "")
    path.write_text(text.replace("seed = [0, 1]", "seed = [0]"))
    spec = ExperimentSpec.from_toml(path)
    assert len(spec.points()) == 1

    def run(retries: int) -> tuple[Any, list[int]]:
        killed: list[int] = []

        def kill_when_started(event: Any) -> None:
            if event.kind == "started":
                args = (cluster.sessions, killed)
                threading.Thread(target=_kill_a_running_task, args=args, daemon=True).start()

        options = RayOptions(cluster.address, max_retries=retries)
        out = tmp_path / f"retries{retries}"
        return run_experiment(spec, out=out, ray=options, on_event=kill_when_started), killed

    result, killed = run(retries=1)
    assert len(killed) == 1
    assert (result.ran, result.failed) == (1, {})
    # no retries: the run fails, and says why
    result, killed = run(retries=0)
    assert len(killed) == 1
    assert result.ran == 0
    (error,) = result.failed.values()
    assert error.startswith("Ray: The worker died unexpectedly"), error
    assert not (tmp_path / "retries0" / spec.points()[0].id).exists()


def test_ray_without_ray_installed_is_a_one_line_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["experiment", "run", str(path), "--out", str(tmp_path), "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install 'gossipfl[ray]'" in err
    assert not (tmp_path / "summary.jsonl").exists()
    # and the Ray flags mean nothing without --ray
    assert main(["experiment", "run", str(path), "--ray-cpus-per-run", "2"]) == 2
    assert "--ray-cpus-per-run needs --ray" in capsys.readouterr().err


def test_gossipfl_never_imports_ray_unless_asked() -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
        "import gossipfl, gossipfl.cli, gossipfl.experiments, gossipfl.experiments.cluster\n"
        "from gossipfl.cli import build_parser; build_parser()\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


@needs_ray
def test_an_address_where_no_ray_head_listens_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    address = f"127.0.0.1:{_free_port()}"  # ray.init would retry it for minutes
    begin = time.monotonic()
    assert main(["experiment", "run", str(path), "--out", str(tmp_path), "--ray", address]) == 2
    assert time.monotonic() - begin < 20
    err = capsys.readouterr().err.strip()
    assert err == (
        f"gossipfl: error: --ray {address}: no Ray head answers there (Connection refused); "
        f"start one with 'ray start --head --port={address.split(':')[1]}'"
    )


@needs_ray
@pytest.mark.network
@pytest.mark.timeout(150)
def test_quick_ray_grid_benchmark_prints_one_json_object(
    cluster: Cluster, quick_benchmark: QuickBenchmark
) -> None:
    """experiments/benchmarks/ray_grid.py --quick, on this module's cluster (the script
    starts one of the same shape, two nodes of one CPU, when given no --address)."""
    report = quick_benchmark("ray_grid", "--address", cluster.address, timeout=140)
    assert report["benchmark"] == "ray_grid"
    assert report["quick"] is True
    assert report["identical_results"] is True
    assert report["repeats"] == 1
    assert (
        len(report["results"]["local"]["seconds"]) == len(report["results"]["ray"]["seconds"]) == 1
    )
    assert report["results"]["ray"]["nodes"] == 2
    assert report["results"]["ray"]["cluster_start_seconds"] is None  # it used ours
    assert report["ratio_ray_to_local"] > 0
