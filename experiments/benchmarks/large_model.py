"""What a round costs with an 11-million-parameter model, and where the time goes.

The model is ResNet-18 (``examples/tasks/resnet18.py``: 11,173,962 parameters, 44.7 MB
as float32) on 3×16×16 images, one mini-batch of 16 per round. Prints ONE JSON object:

* **parts** of one peer's round, each the median of ``--repeats`` timings in this
  process, next to a plain ``memcpy`` of the same 44.7 MB as the yardstick (this
  machine is shared and noisy: compare ratios): one local training step, reading the
  model into a flat vector and writing it back, encoding an update (fp32, with its
  digest) and decoding it (digest verified), and merging 5 models (ours and 4
  neighbours', as on a 16-peer exponential graph) with ``mean`` and with ``cs-plus``;
* **simulate**: ``gossipfl simulate`` of 16 peers on an exponential graph (4
  in-neighbours each), in one process: wall seconds per round (the difference between a
  run of 1 and one of ``1 + --rounds`` rounds, so start-up and the final evaluation are
  left out, and reported apart), peak memory (max RSS) and the megabytes sent;
* **start**: three ``gossipfl start`` processes on 127.0.0.1 (complete graph, so 2
  neighbours each) for ``--rounds`` rounds: seconds per round on each peer, from the
  timestamps of its ``metrics.jsonl``.

Run: ``.venv/bin/python experiments/benchmarks/large_model.py [--quick]`` (``--quick``:
a width-8 model of 176k parameters, to check the script).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TASK = f"{ROOT / 'examples' / 'tasks' / 'resnet18.py'}:ResNet18"


def _median_s(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 4)


def parts(width: int, repeats: int) -> dict[str, Any]:
    """One peer's round, piece by piece, next to a memcpy of the model's size."""
    from gossipfl import wire
    from gossipfl.merge import make_rule
    from gossipfl.merge.context import MergeContext
    from gossipfl.tasks import load_task

    task = load_task(TASK, {"width": str(width)})
    data = task.dataset(seed=0)
    learner = task.learner(data, np.arange(100), init_seed=0, seed=0)
    vector = learner.adapter.get_flat()
    n = int(vector.size)
    target = np.empty_like(vector)
    rng = np.random.default_rng(0)
    neighbours = [vector + rng.normal(0, 1e-3, n).astype(np.float32) for _ in range(4)]
    update = wire.Update(sender="peer", round=1, vector=vector)
    encoded = wire.encode(update)
    # One message, as a benchmark of the codec; on the wire a model above max_frame travels
    # as a head and chunks, decoded by the same code.
    limits = wire.Limits.for_params(n, max_frame=len(encoded))
    out: dict[str, Any] = {
        "parameters": n,
        "megabytes": round(vector.nbytes / 1e6, 1),
        "memcpy_s": _median_s(lambda: np.copyto(target, vector), repeats),
        "train_step_s": _median_s(lambda: learner.train(1), repeats),
        "get_flat_s": _median_s(learner.adapter.get_flat, repeats),
        "set_flat_s": _median_s(lambda: learner.adapter.set_flat(vector), repeats),
        "encode_s": _median_s(lambda: wire.encode(update), repeats),
        "decode_s": _median_s(lambda: wire.decode(encoded, limits=limits), repeats),
    }
    rows = np.stack(neighbours)
    weights = np.full(len(neighbours), 1.0 / (len(neighbours) + 1))
    context = MergeContext(round=1, total_rounds=100)
    for name in ("mean", "cs-plus"):
        rule = make_rule(name)
        out[f"merge_{name}_s"] = _median_s(
            lambda rule=rule: rule.merge(vector, rows, weights, context=context), repeats
        )
    copy = out["memcpy_s"] or 1e-9
    out["in_memcpys"] = {
        k.removesuffix("_s"): round(v / copy, 1)
        for k, v in out.items()
        if k.endswith("_s") and k != "memcpy_s"
    }
    return out


def _simulate_once(width: int, rounds: int, out: Path) -> tuple[float, dict[str, Any]]:
    command = [
        sys.executable, "-m", "gossipfl", "simulate", "--task", TASK,
        "--set", f"task.params.width={width}", "--peers", "16", "--topology", "exponential",
        "--rule", "cs-plus", "--rounds", str(rounds), "--set", "output.eval_every=1000",
        "--no-plot", "--json", "--out", str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, json.loads(done.stdout)


def simulate(width: int, rounds: int, out: Path) -> dict[str, Any]:
    """16 peers in one process. A run of 1 round and one of ``1 + rounds``: their
    difference is what the rounds cost, without start-up (16 models built, the data
    split) and the final evaluation."""
    short, _ = _simulate_once(width, 1, out)
    long, summary = _simulate_once(width, 1 + rounds, out)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "peers": 16,
        "rounds": rounds,
        "s_per_round": round((long - short) / rounds, 2),
        "s_start_and_final_eval": round(short - (long - short) / rounds, 1),
        "max_rss_gb": round(peak_kb / 1e6, 2),
        "mb_sent_per_peer_round": round(float(summary["bytes_sent"]) / 16 / (1 + rounds) / 1e6, 1),
    }


def start_peers(width: int, rounds: int, base: Path) -> dict[str, Any]:
    """Three `gossipfl start` processes; seconds per round from their metrics."""
    from gossipfl.daemon.testing import kill_all, metrics, start_daemon

    args = [
        "--listen", "/ip4/127.0.0.1/tcp/0", "--task", TASK, "--set", f"task.params.width={width}",
        "--rule", "mean", "--topology", "complete", "--rounds", str(rounds), "--min-peers", "3",
        "--set", "training.deadline=120", "--set", "output.eval_every=1000",
        "--set", "output.linger=2",
    ]  # fmt: skip
    daemons = []
    try:
        first = start_daemon(base / "p0", *args)
        daemons.append(first)
        join = first.join.split()[2:]
        # the two joiners start side by side (each start-up imports torch: seconds)
        with ThreadPoolExecutor(2) as pool:
            joining = [pool.submit(start_daemon, base / f"p{i}", *args, *join) for i in (1, 2)]
        daemons += [f.result() for f in joining if f.exception() is None]
        errors = [e for f in joining if (e := f.exception()) is not None]
        if errors:  # after the other one is in `daemons`, to be killed below
            raise errors[0]
        for d in daemons:
            d.process.wait(timeout=1800)
    finally:
        kill_all(daemons)
    per_peer = []
    for d in daemons:
        rows = [r for r in metrics(d.home) if r["kind"] == "round"]
        times = [r["time"] for r in rows]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # bytes_sent is cumulative, and a round's row can be written just before or just
        # after the next round's first send: the total over the rounds is exact.
        total = rows[-1]["bytes_sent"] if rows else 0
        per_peer.append(
            {
                "rounds": len(rows),
                "received": [r["received"] for r in rows],
                "s_per_round": round(statistics.median(gaps), 2) if gaps else None,
                "mb_sent_per_round": round(total / len(rows) / 1e6, 1) if rows else None,
            }
        )
    return {"peers": 3, "rounds": rounds, "per_peer": per_peer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 176k-parameter model (width 8)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    width = 8 if args.quick else 64
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        print("parts ...", file=sys.stderr)
        result: dict[str, Any] = {
            "benchmark": "large model: cost of a round",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {
                "platform": platform.platform(),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            },
            "task": f"ResNet18(width={width})",
            "parts": parts(width, args.repeats),
        }
        print("simulate ...", file=sys.stderr)
        result["simulate"] = simulate(width, args.rounds, base / "runs")
        print("start ...", file=sys.stderr)
        result["start"] = start_peers(width, args.rounds, base / "peers")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
