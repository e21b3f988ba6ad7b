"""Benchmark: the full protocol path at scale over the in-memory network.

Every peer is a full `Peer` runtime: wire encoding and decoding with digests, the sync
core, merging and numpy softmax training, over the in-memory network on a virtual clock.
Three runs, each in its own process (so that each peak RSS is its own):

- ``baseline``: 16 peers, digits, 100 rounds;
- ``scale``: 1,024 peers on a random 4-regular graph, digits IID, 100 rounds (issue 12's
  target: at most 20 s);
- ``large``: 10,000 peers on a random 4-regular graph, 100 rounds (target: at most 10
  minutes and 4 GiB). Digits has room for 1,438 peers only, so this run uses the
  ``synthetic`` task with 64 features (650 parameters, as on digits), 10 training samples
  per peer and a test split of 2,000. ``--large-rounds`` runs fewer rounds; the time for
  100 is then extrapolated from the per-round rate and marked so.

With ``--shards N`` (default: the machine's cores), the ``scale`` run is repeated split
over N shard processes (``gossipfl simulate --shards N``), and the two are checked to
give the same metrics bit for bit.

Evaluation runs once, at the end. Prints one JSON object: for each run the peers, rounds,
wall and CPU seconds, peer-rounds per second, frames, peak RSS and the load average
around it; then the targets and whether each holds. Wall time depends on what else runs on
the machine: the load average is printed beside it, and CPU seconds too.

    .venv/bin/python experiments/benchmarks/simulate.py [--quick] [--large-rounds R]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any

TARGETS = {"scale_wall_s_max": 20.0, "large_wall_s_max": 600.0, "large_rss_gib_max": 4.0}
LARGE_PEERS = 10_000
TEST_SAMPLES = 2_000
FULL_ROUNDS = 100


def overrides(case: str, peers: int, rounds: int) -> list[str]:
    common = [
        f"peers={peers}",
        f"rounds={rounds}",
        "data.partition=iid",
        f"output.eval_every={rounds}",
    ]
    if case == "baseline":
        return common  # the default torus on digits
    graph = ["topology.name=random-regular", "topology.degree=4"]
    if case == "scale":
        return [*common, *graph]
    # 10 training samples per peer, and a test split of 2,000 whatever the peers: every
    # peer's model is scored on it at the end, so a split growing with the peers would
    # make that evaluation quadratic (10,000 peers, 25,000 test samples: over 3 minutes)
    samples = 10 * peers + TEST_SAMPLES
    return [
        *common,
        *graph,
        "task.name=synthetic",
        f"task.params.samples={samples}",
        f"task.params.test_fraction={TEST_SAMPLES / samples}",
        "task.params.features=64",
    ]


def run_case(case: str, peers: int, rounds: int, shards: int = 0) -> dict[str, Any]:
    """One run in this process (split over ``shards`` shard processes if > 0): its
    numbers, with this process's peak RSS (and each shard's)."""
    from gossipfl.simulation import SimulationConfig, run_simulation
    from gossipfl.simulation.sharded import run_sharded

    config = SimulationConfig().with_overrides(overrides(case, peers, rounds))
    load_before = os.getloadavg()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = run_sharded(config, shards) if shards else run_simulation(config)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    summary = result.summary()
    extra: dict[str, Any] = {}
    if shards:
        sharding = result.extra["sharding"]
        extra = {
            "shards": shards,
            "cpu_s": None,  # the shards' CPU is in their processes
            "cpu_ms_per_peer_round": None,
            "shard_peak_rss_mib": sharding["peak_rss_mib_per_shard"],
            "cross_shard_frames_per_round": round(sharding["cross_shard_messages_per_round"]),
            # where a sharded run's wall time goes: starting the shard processes (and
            # building their peers), then each shard's busy time and CPU
            "windows": sharding["windows"],
            "start_s": sharding["start_s"],
            "shard_busy_s": sharding["shard_busy_s"],
            "shard_process_cpu_s": sharding["shard_process_cpu_s"],
        }
    rows = [s.__dict__ for s in result.summaries] + list(result.peer_rows)
    return {
        "case": case,
        "data": "synthetic task, 64 features" if case == "large" else "digits",
        "peers": peers,
        "rounds": rounds,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peer_rounds_per_s": round(peers * rounds / wall, 1),
        "cpu_ms_per_peer_round": round(1000 * cpu / (peers * rounds), 4),
        "frames": result.network.frames_sent,
        "honest_mean_acc": summary["honest_mean_acc"],
        "virtual_s": round(result.virtual_s, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "metrics_digest": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[
            :16
        ],
        **extra,
    }


def in_child(case: str, peers: int, rounds: int, shards: int = 0) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--case", case, str(peers), str(rounds), str(shards)],
        check=True,
        stdout=subprocess.PIPE,  # its stderr is ours: a warning or traceback shows
        text=True,
    ).stdout
    row: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return row


def one_round_s(case: str, peers: int) -> float:
    """Wall seconds of a 1-round run: start-up, one round and the final evaluation, the
    fixed part when extrapolating to 100 rounds."""
    one = in_child(case, peers, 1)
    return float(one["wall_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small runs for tests")
    parser.add_argument(
        "--large-rounds", type=int, default=FULL_ROUNDS, help="rounds of the large run"
    )
    parser.add_argument("--large-peers", type=int, default=LARGE_PEERS)
    parser.add_argument("--skip-large", action="store_true", help="only baseline and scale")
    parser.add_argument(
        "--shards",
        type=int,
        default=os.cpu_count() or 1,
        help="shard processes for the sharded scale run (0: skip it)",
    )
    parser.add_argument(
        "--case", nargs=4, metavar=("CASE", "PEERS", "ROUNDS", "SHARDS"), help="internal"
    )
    args = parser.parse_args()
    if args.case:
        case, peers, rounds, shards = args.case[0], *(int(x) for x in args.case[1:])
        json.dump(run_case(case, peers, rounds, shards), sys.stdout)
        sys.stdout.write("\n")
        return
    if args.quick:
        rounds, scale_peers, large_peers, large_rounds = 10, 64, 200, 5
    else:
        rounds, scale_peers = FULL_ROUNDS, 1024
        large_peers, large_rounds = args.large_peers, args.large_rounds
    out: dict[str, Any] = {
        "benchmark": "simulate",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "targets": TARGETS,
    }
    out["baseline"] = in_child("baseline", 16, rounds)
    out["scale"] = scale = in_child("scale", scale_peers, rounds)
    sharded = None
    if args.shards > 1:
        out["scale_sharded"] = sharded = in_child("scale", scale_peers, rounds, args.shards)
        sharded["same_metrics_as_unsharded"] = (
            sharded.pop("metrics_digest") == scale["metrics_digest"]
        )
        sharded["speedup_ratio"] = round(scale["wall_s"] / sharded["wall_s"], 2)
    large = None
    if not args.skip_large:
        out["large"] = large = in_child("large", large_peers, large_rounds)
    if args.quick:
        out["meets_target"] = None  # a quick run claims nothing
    else:
        checks: dict[str, bool | None] = {
            "scale_wall": scale["wall_s"] <= TARGETS["scale_wall_s_max"],
            "scale_wall_sharded": (
                sharded["wall_s"] <= TARGETS["scale_wall_s_max"] if sharded else None
            ),
            "large_wall": None,
            "large_rss": None,
        }
        if large is not None:
            wall = large["wall_s"]
            full = large["rounds"] >= FULL_ROUNDS
            if not full:
                # a 1-round run, plus the measured rate of the further rounds times 99
                fixed = one_round_s("large", large["peers"])
                per_round = max(0.0, wall - fixed) / max(1, large["rounds"] - 1)
                wall = fixed + per_round * (FULL_ROUNDS - 1)
                large["wall_s_for_100_rounds_extrapolated"] = round(wall, 1)
                large["wall_s_1_round"] = fixed
            checks["large_wall"] = bool(
                large["peers"] >= LARGE_PEERS and wall <= TARGETS["large_wall_s_max"]
            )
            # memory grows with the rounds (a metrics row per peer and round): only a full
            # run says whether it holds
            checks["large_rss"] = (
                bool(
                    large["peers"] >= LARGE_PEERS
                    and large["peak_rss_mib"] <= TARGETS["large_rss_gib_max"] * 1024
                )
                if full
                else None
            )
            out["large_extrapolated"] = not full
        out["checks"] = checks
        # the 1,024-peer target holds if either way of running it meets it
        scale_ok = checks["scale_wall"] or checks["scale_wall_sharded"] is True
        others = [v for k, v in checks.items() if not k.startswith("scale")]
        out["meets_target"] = scale_ok and all(v is True for v in others)  # None: not known
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
