"""A grid of runs on the local process pool against the same grid as Ray tasks.

Prints ONE JSON object. The grid is ``--runs`` seeds of one small simulation (8 peers on
a ring, digits, ``--rounds`` rounds: 200, about a second of one core each), run into
fresh directories ``--repeats`` times by each engine, the order alternating:

``local``
    ``run_experiment(workers=2)``: the process pool of ``gossipfl experiment run``;
``ray``
    ``run_experiment(ray=RayOptions(address))`` on a Ray cluster of two nodes of one CPU
    each, both on this machine, started by this script with the venv's ``ray start
    --block`` (each node in a process group of its own, killed at the end). The time
    counts connecting to the cluster, not starting it (reported apart). With ``--address``
    the script uses a running cluster of that shape instead (the test suite's own: it is
    started once for every Ray test), and reports no start time.

Reported: each sweep's wall time, the ratio ray/local of the medians and per repeat.

Both use two CPUs, so the ratio ray/local is Ray's overhead on this kind of sweep: task
submission, a worker per node and the run's files shipped back to the driver. The
summaries of the two are compared (the simulations are deterministic; only ``wall_s``
may differ) and the result reported as ``identical_results``.

    .venv/bin/python experiments/benchmarks/ray_grid.py           # 64 runs of 200 rounds
    .venv/bin/python experiments/benchmarks/ray_grid.py --quick   # 8 runs of 20 rounds
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gossipfl.experiments import ExperimentSpec, run_experiment
from gossipfl.experiments.cluster import RayOptions

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def two_node_cluster(temp: Path) -> Iterator[str]:
    """Two Ray nodes of one CPU on this machine; yields the head's address."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    nodes: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: Path) -> None:
        command = [str(RAY), "start", *args, "--num-cpus=1", "--block", "--disable-usage-stats"]
        command.append(f"--dashboard-agent-listen-port={_free_port()}")
        with log.open("wb") as out:
            node = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        nodes.append(node)
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)

    try:
        head = ["--head", f"--port={port}", f"--ray-client-server-port={_free_port()}"]
        start([*head, "--include-dashboard=false", f"--temp-dir={temp}"], temp / "head.log")
        start([f"--address=127.0.0.1:{port}"], temp / "node.log")
        yield f"127.0.0.1:{port}"
    finally:
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
        for node in nodes:
            node.wait(10)
        # task workers lead process groups of their own, in the nodes' sessions
        sessions = {node.pid for node in nodes}
        deadline = time.monotonic() + 10
        while (left := _in_sessions(sessions)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)


def _in_sessions(sessions: set[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry.name)) in sessions:
                    found.append(int(entry.name))
    return found


def grid(runs: int, rounds: int) -> str:
    return f"""
name = "ray-grid"
[base]
peers = 8
rounds = {rounds}
[base.topology]
name = "ring"
[base.output]
eval_every = {rounds}
plot = false
[grid]
seed = {list(range(runs))}
"""


def summaries(directory: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (directory / "summary.jsonl").read_text().splitlines()]
    return {r["run_id"]: {k: v for k, v in r.items() if k != "wall_s"} for r in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 runs, for smoke tests")
    parser.add_argument("--runs", type=int, help="grid points (default 64; --quick 8)")
    parser.add_argument("--rounds", type=int, help="rounds per run (default 200; --quick 20)")
    parser.add_argument("--repeats", type=int, default=2, help="sweeps of each (default 2)")
    parser.add_argument(
        "--address", help="a running cluster's head (HOST:PORT) instead of one started here"
    )
    args = parser.parse_args()
    runs = args.runs or (8 if args.quick else 64)
    rounds = args.rounds or (20 if args.quick else 200)
    repeats = 1 if args.quick else args.repeats
    started = time.perf_counter()
    load_before = os.getloadavg()
    temp = Path(tempfile.mkdtemp(prefix="gfbray-"))  # short: Ray's socket paths must fit
    seconds: dict[str, list[float]] = {"local": [], "ray": []}
    nodes: dict[str, int] = {}
    identical = True
    try:
        path = temp / "grid.toml"
        path.write_text(grid(runs, rounds))
        spec = ExperimentSpec.from_toml(path)
        t = time.perf_counter()
        cluster = contextlib.nullcontext(args.address) if args.address else two_node_cluster(temp)
        with cluster as address:
            cluster_s = None if args.address else round(time.perf_counter() - t, 2)
            for repeat in range(repeats):
                # alternate the order, so that neither always runs on a busier machine
                for engine in ("local", "ray") if repeat % 2 == 0 else ("ray", "local"):
                    out = temp / f"{engine}{repeat}"
                    ray = RayOptions(address) if engine == "ray" else None
                    t = time.perf_counter()
                    result = run_experiment(
                        spec, out=out, workers=2 if ray is None else None, ray=ray
                    )
                    seconds[engine].append(time.perf_counter() - t)
                    assert (result.ran, result.failed) == (runs, {}), result.failed
                    if ray is not None:
                        nodes = result.nodes
                identical &= summaries(temp / f"local{repeat}") == summaries(temp / f"ray{repeat}")
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    load_after = os.getloadavg()
    local_s, ray_s = (statistics.median(seconds[k]) for k in ("local", "ray"))
    report = {
        "benchmark": "ray_grid",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "quick": bool(args.quick),
        "runs": runs,
        "run": {"peers": 8, "topology": "ring", "task": "digits", "rounds": rounds},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)],
        },
        "baseline": "local",
        "repeats": repeats,
        "results": {
            "local": {"workers": 2, "seconds": [round(x, 2) for x in seconds["local"]]},
            "ray": {
                "nodes": len(nodes),
                "cpus": 2,
                "seconds": [round(x, 2) for x in seconds["ray"]],
                "runs_per_node": sorted(nodes.values()),
                "cluster_start_seconds": cluster_s,
            },
        },
        "ratio_ray_to_local": round(ray_s / local_s, 3),
        "ratio_per_repeat": [
            round(r / loc, 3) for loc, r in zip(seconds["local"], seconds["ray"], strict=True)
        ],
        "identical_results": identical,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
