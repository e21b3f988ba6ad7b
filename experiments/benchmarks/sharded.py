"""Benchmark: one simulation split over Ray actors, against the same run unsharded.

The ``large`` workload of ``simulate.py`` (a random 4-regular graph, the synthetic task
with 64 features: 650 parameters per model, 10 training samples per peer, evaluation at
the end) at 4,096 peers, run three ways on a local Ray with this machine's CPUs:

- ``unsharded``: :func:`run_simulation` in this process (the reference);
- ``1 actor``: :func:`run_sharded` with one shard, in one Ray actor (what sharding costs:
  the windows and the driver's collector, with no parallelism);
- ``2 actors``: two shards (the graph cut in two by Kernighan-Lin), one actor each.

For each: wall seconds, the peak RSS of each actor process, windows, frames per round
and cross-shard frames per round, the actors' start-up (until their peers are built),
each actor's busy wall and CPU seconds and how long the driver waited for them; and
whether the round metrics equal the unsharded run's, bit for bit. Then the numbers for
a paper estimate of larger runs: memory per peer (from the two actor sizes) and frames
per peer-round.

    .venv/bin/python experiments/benchmarks/sharded.py [--peers N] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simulate import overrides


def digest(result: Any) -> str:
    """A hash of every round summary and peer row: equal hashes, equal metrics."""
    rows = [s.__dict__ for s in result.summaries] + list(result.peer_rows)
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def measure(label: str, run: Any, config: Any) -> tuple[dict[str, Any], Any]:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = run(config)
    wall = time.perf_counter() - start
    row: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "frames_per_round": round(result.network.frames_sent / config.rounds, 1),
        "honest_mean_acc": result.summary()["honest_mean_acc"],
        "metrics_digest": digest(result),
        "load_before": round(load, 2),
    }
    sharding = result.extra.get("sharding")
    if sharding is not None:
        row.update(
            {
                "peak_rss_mib_per_actor": sharding["peak_rss_mib_per_shard"],
                "windows": sharding["windows"],
                "cut_edges": sharding["cut_edges"],
                "cross_shard_frames_per_round": round(
                    sharding["cross_shard_messages_per_round"], 1
                ),
                "cross_shard_mib_per_round": round(
                    sharding["cross_shard_bytes"] / config.rounds / 2**20, 2
                ),
                "start_s": sharding["start_s"],
                "actor_busy_s": sharding["shard_busy_s"],
                "actor_cpu_s": sharding["shard_cpu_s"],
                "driver_waited_s": sharding["driver_waited_s"],
            }
        )
    print(f"{label}: {row}", file=sys.stderr)
    return row, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="256 peers, 3 rounds")
    args = parser.parse_args()
    peers, rounds = (256, 3) if args.quick else (args.peers, args.rounds)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from gossipfl.simulation import SimulationConfig, run_simulation
    from gossipfl.simulation.sharded import ray_backend, run_sharded

    config = SimulationConfig().with_overrides(overrides("large", peers, rounds))
    out: dict[str, Any] = {
        "benchmark": "sharded",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "peers": peers,
        "rounds": rounds,
        "workload": "random 4-regular, synthetic task (64 features, 650 parameters)",
    }
    runs: dict[str, Any] = {}
    runs["unsharded"], reference = measure("unsharded", run_simulation, config)
    with ray_backend(None) as backend:
        for shards in (1, 2):
            label = f"{shards} actor{'s' if shards > 1 else ''}"

            def sharded(cfg: Any, shards: int = shards) -> Any:
                return run_sharded(cfg, shards, backend=backend)

            runs[label], _ = measure(label, sharded, config)
    out["runs"] = runs
    ref = runs["unsharded"]["metrics_digest"]
    out["bit_identical"] = all(r["metrics_digest"] == ref for r in runs.values())
    one, two = runs["1 actor"], runs["2 actors"]
    out["speedup_2_actors_over_1_ratio"] = round(one["wall_s"] / two["wall_s"], 2)
    out["sharding_overhead_1_actor_ratio"] = round(one["wall_s"] / ref_wall(runs), 2)
    # memory per peer: an actor with all peers against one with half of them
    per_peer_kib = (
        (one["peak_rss_mib_per_actor"][0] - max(two["peak_rss_mib_per_actor"]))
        * 1024
        / (peers - peers // 2)
    )
    out["estimate_inputs"] = {
        "memory_per_peer_kib": round(per_peer_kib, 1),
        "frames_per_peer_round": round(runs["unsharded"]["frames_per_round"] / peers, 2),
        "frame_bytes": round(reference.network.bytes_sent / max(reference.network.frames_sent, 1)),
        "wall_s_per_peer_round_1_actor": round(one["wall_s"] / (peers * rounds), 6),
    }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


def ref_wall(runs: dict[str, Any]) -> float:
    return float(runs["unsharded"]["wall_s"])


if __name__ == "__main__":
    main()
