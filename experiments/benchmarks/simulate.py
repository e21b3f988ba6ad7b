"""Benchmark: the full protocol path at scale over the in-memory network.

1,024 peers on a random 4-regular graph, softmax regression on digits, 100 rounds, every
frame really encoded and decoded, every peer a full `Peer` runtime. Prints one JSON object:
wall seconds, peer-rounds per second, peak RSS, and the same for a 16-peer run measured in
the same process as the baseline (peer-rounds per second should not collapse with scale).
It then runs the large case again with CPython's default garbage-collector thresholds
instead of the ones simulations use (`gossipfl.simulation.runner.rare_collections`) and
reports the ratio.

    .venv/bin/python experiments/benchmarks/simulate.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time

from gossipfl.simulation import SimulationConfig, run_simulation


def measure(
    peers: int, rounds: int, eval_every: int, gc_threshold: int | None = None
) -> dict[str, float]:
    config = SimulationConfig().with_overrides(
        [
            f"peers={peers}",
            f"rounds={rounds}",
            "topology.name=random-regular",
            "topology.degree=4",
            "data.partition=iid",
            f"output.eval_every={eval_every}",
        ]
    )
    start = time.perf_counter()
    result = run_simulation(config, gc_threshold=gc_threshold)
    wall = time.perf_counter() - start
    summary = result.summary()
    return {
        "peers": peers,
        "rounds": rounds,
        "wall_s": round(wall, 2),
        "peer_rounds_per_s": round(peers * rounds / wall, 1),
        "frames": result.network.frames_sent,
        "honest_mean_acc": summary["honest_mean_acc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run for tests")
    args = parser.parse_args()
    peers, rounds = (64, 10) if args.quick else (1024, 100)
    baseline = measure(16, rounds, eval_every=rounds)
    big = measure(peers, rounds, eval_every=rounds)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gc_default = measure(peers, rounds, eval_every=rounds, gc_threshold=0)
    out = {
        "benchmark": "simulate",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "baseline_16": baseline,
        "scale": big,
        "peak_rss_mib": round(rss_mib, 1),
        "throughput_ratio_vs_16": round(
            big["peer_rounds_per_s"] / baseline["peer_rounds_per_s"], 3
        ),
        "gc": {
            "peers": peers,
            "default_thresholds_wall_s": gc_default["wall_s"],
            "simulation_thresholds_wall_s": big["wall_s"],
            "speedup": round(gc_default["wall_s"] / big["wall_s"], 2),
        },
        "target": {"wall_s_max": 60, "rss_gib_max": 4},
        "meets_target": bool(big["wall_s"] <= 60 and rss_mib <= 4096) if not args.quick else None,
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
