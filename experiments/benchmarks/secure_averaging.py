"""What secure averaging costs, against plain averaging in the same run.

Prints ONE JSON object with two parts:

* ``per_round``: one receiver with d in-neighbours and an n-parameter model. Each round,
  secure averaging makes every neighbour compute its share (d − 1 ChaCha20 masks of n
  64-bit words, fixed-point encoding) and the receiver unmask the sum; plain averaging
  encodes each model once (fp32) and merges with the ``mean`` rule. Timed alternately,
  medians over repeats: the seconds a *sender* spends per share against one fp32 encode,
  the seconds the *receiver* spends to unmask against the ``mean`` merge, and the bytes
  on the wire per model (8 per parameter against 4).
* ``simulation``: the same ``gossipfl simulate`` run (16 peers, torus, digits softmax),
  plain and secure, alternately: wall seconds per run, bytes sent, final accuracy.

    .venv/bin/python experiments/benchmarks/secure_averaging.py            # full
    .venv/bin/python experiments/benchmarks/secure_averaging.py --quick    # seconds
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

from gossipfl import wire
from gossipfl.merge import make_rule
from gossipfl.privacy.secure_averaging import SecureAveraging
from gossipfl.simulation import run_simulation
from gossipfl.simulation.config import SimulationConfig
from gossipfl.transport.signing import KeyDirectory


def per_round(d: int, n: int, repeats: int) -> dict[str, Any]:
    names = [f"peer{i:02d}" for i in range(d + 1)]
    keys = KeyDirectory()  # the simulation's identities: each peer signs its mask key
    peers = {name: SecureAveraging(name, n, keys.signatures(name)) for name in names}
    receiver, members = peers[names[0]], names[1:]
    for name in members:
        receiver.learn_key(name, peers[name].key_message())
    group = receiver.regroup(dict.fromkeys(members, 1.0 / (d + 1)))
    assert group is not None
    for name in members:
        peers[name].learn_group(names[0], group)
    rng = np.random.default_rng(0)
    models = {name: rng.standard_normal(n).astype(np.float32) for name in names}
    stack = np.stack([models[m] for m in members])
    weights = np.full(d, 1.0 / (d + 1))
    rule = make_rule("mean")
    times: dict[str, list[float]] = {"share": [], "fp32": [], "unmask": [], "mean": []}
    for r in range(repeats):
        start = time.perf_counter()
        shares = {}
        for name in members:
            share = peers[name].share(names[0], r, models[name])
            assert share is not None
            shares[name] = share.vector
        times["share"].append((time.perf_counter() - start) / d)
        start = time.perf_counter()
        for name in members:
            wire.encode(wire.Update(sender=name, round=r, vector=models[name]))
        times["fp32"].append((time.perf_counter() - start) / d)
        start = time.perf_counter()
        receiver.combine(models[names[0]], shares)
        times["unmask"].append(time.perf_counter() - start)
        start = time.perf_counter()
        rule.merge(models[names[0]], stack, weights)
        times["mean"].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "d": d,
        "n": n,
        "share_s": med["share"],
        "fp32_encode_s": med["fp32"],
        "share_over_fp32_encode_ratio": statistics.median(
            s / p for s, p in zip(times["share"], times["fp32"], strict=True)
        ),
        "unmask_s": med["unmask"],
        "mean_merge_s": med["mean"],
        "unmask_over_mean_ratio": statistics.median(
            u / m for u, m in zip(times["unmask"], times["mean"], strict=True)
        ),
        "bytes_per_model_secure": 8 * n,
        "bytes_per_model_fp32": 4 * n,
    }


def simulation(rounds: int, repeats: int) -> dict[str, Any]:
    out: dict[str, list[dict[str, Any]]] = {"plain": [], "secure": []}
    warm_up = {"peers": 4, "rounds": 1, "topology": {"name": "ring"}}
    run_simulation(SimulationConfig.from_dict(warm_up))  # imports, data: not timed
    for _ in range(repeats):
        for label in ("plain", "secure"):
            config = SimulationConfig.from_dict(
                {
                    "peers": 16,
                    "rounds": rounds,
                    "topology": {"name": "torus"},
                    "rule": {"name": "mean"},
                    "privacy": {"secure_averaging": label == "secure"},
                    "output": {"plot": False, "eval_every": rounds},
                }
            )
            start = time.perf_counter()
            result = run_simulation(config)
            wall = time.perf_counter() - start
            summary = result.summary()
            out[label].append(
                {
                    "wall_s": wall,
                    "bytes_sent": summary["bytes_sent"],
                    "accuracy": summary["honest_mean_acc"],
                }
            )
    ratios = [s["wall_s"] / p["wall_s"] for s, p in zip(out["secure"], out["plain"], strict=True)]
    return {
        "peers": 16,
        "rounds": rounds,
        "plain_wall_s": statistics.median(r["wall_s"] for r in out["plain"]),
        "secure_wall_s": statistics.median(r["wall_s"] for r in out["secure"]),
        "secure_over_plain_wall_ratio": statistics.median(ratios),
        "secure_over_plain_bytes_ratio": out["secure"][0]["bytes_sent"]
        / out["plain"][0]["bytes_sent"],
        "plain_accuracy": out["plain"][0]["accuracy"],
        "secure_accuracy": out["secure"][0]["accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    args = parser.parse_args(argv)
    if args.quick:
        cells = [per_round(4, 10_000, 3)]
        sim = simulation(5, 1)
    else:
        cells = [per_round(d, n, 15) for d in (4, 8) for n in (15_210, 1_000_000)]
        sim = simulation(100, 3)
    report = {
        "benchmark": "secure_averaging",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average": os.getloadavg(),
        },
        "per_round": cells,
        "simulation": sim,
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
