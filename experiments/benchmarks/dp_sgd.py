"""What DP-SGD costs in local training time, against plain SGD in the same run.

Prints ONE JSON object. For each learner (the numpy softmax on digits: per-sample
gradients in closed form; the torch MLP on digits and on MNIST-1D: Opacus), two learners
are built on the same shard and trained round by round, alternating plain and DP-SGD so
that a noisy neighbour on the machine hurts both alike. Reported: the median seconds per
round of each and their ratio (the median over rounds of DP time / plain time in the
same round). Bytes on the wire do not change: the model sent is the same size.

    .venv/bin/python experiments/benchmarks/dp_sgd.py            # 60 rounds each
    .venv/bin/python experiments/benchmarks/dp_sgd.py --quick    # 10 rounds
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from typing import Any

import numpy as np

from gossipfl.privacy import DPSettings
from gossipfl.tasks import load_task

CASES = (
    ("digits-softmax", {}),
    ("digits-mlp", {}),
    ("mnist1d", {"model_name": "mlp"}),
)


def measure(task_name: str, params: dict[str, Any], rounds: int) -> dict[str, Any]:
    task = load_task(task_name, {"local_steps": 4, **params})
    data = task.dataset(seed=0)
    shard = np.arange(min(90, len(data.y_train)))  # a peer's share in a 16-peer job
    plain = task.learner(data, shard, init_seed=0, seed=1)
    private = task.learner(data, shard, init_seed=0, seed=1)
    private.enable_dp(DPSettings(epsilon=4.0), rounds=rounds)  # type: ignore[attr-defined]
    times: dict[str, list[float]] = {"plain": [], "dp": []}
    for r in range(rounds):
        for label, learner in (("plain", plain), ("dp", private)):
            start = time.perf_counter()
            learner.train(r)
            times[label].append(time.perf_counter() - start)
    ratios = [d / p for d, p in zip(times["dp"], times["plain"], strict=True)]
    return {
        "task": task_name,
        "samples": int(shard.size),
        "local_steps": 4,
        "plain_s_per_round": statistics.median(times["plain"]),
        "dp_s_per_round": statistics.median(times["dp"]),
        "dp_over_plain_ratio": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="10 rounds")
    args = parser.parse_args()
    rounds = 10 if args.quick else args.rounds
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - the numpy case still runs
        pass
    results = [measure(name, params, rounds) for name, params in CASES]
    print(
        json.dumps(
            {
                "benchmark": "dp_sgd",
                "date": dt.date.today().isoformat(),
                "machine": {
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                },
                "rounds": rounds,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
