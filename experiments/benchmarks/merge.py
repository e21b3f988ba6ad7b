"""Time per merge for every merge rule, against plain gossip averaging in the same run.

Prints ONE JSON object. For every neighbourhood size d and model size n in the grid, each
rule merges the same float32 inputs (own model + d neighbours, equal mixing weights
1/(d+1)) ``--repeats`` times; rules are interleaved within each repeat so that a noisy
neighbour on the machine hurts all of them alike. Reported: the median seconds per merge
and the ratio to ``mean`` (the baseline), both including input validation. Each ratio is
the median over rounds of (rule time / mean time in the same round). ``mean`` itself is
compared the same way with a bare ``np.dot(weights, stack)`` of the same (d, n) stack,
timed in the same rounds (``mean_ratio_to_dot``).

BLAS runs on one thread (threadpoolctl, for numpy's and SciPy's OpenBLAS alike) unless
``--blas-threads`` says otherwise: a threaded gemv in the baseline against single-core
work in the rules measures the core count, not the rules, and on this shared 2-core
machine it mostly measures the neighbours' load.

The iterative rules (geometric-median, centered-clipping) also report the total for their
default iteration count and the marginal cost of one more iteration, measured as
(t(k) − t(1)) / (k − 1) with k iterations forced.

Both kernel paths are timed in the same rounds: the compiled one (numba, the ``fast``
extra; ``ratio_to_mean`` and ``numba_ratio_to_mean``) and the numpy one
(``numpy_ratio_to_mean``), against the same ``mean`` (which has no compiled kernel). The
``kernels`` section says which path a plain merge takes here and how long the compiled
kernels took to build: generated and compiled from scratch in a fresh process with an
empty cache, then loaded from that cache by a second process.

Targets checked at d = 8, n = 10⁶ (issue 12): ``mean`` ≤ 1.2x the bare ``np.dot``, order
statistics ≤ 2.5x mean, distance rules ≤ 2x mean (each with all its iterations), on the
default path.

    .venv/bin/python experiments/benchmarks/merge.py            # full grid
    .venv/bin/python experiments/benchmarks/merge.py --quick    # tiny grid, seconds
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg.blas  # noqa: F401 - load SciPy's OpenBLAS too, so the limit reaches it
from threadpoolctl import threadpool_info, threadpool_limits

from gossipfl.merge import RULES, GeometricMedian, MergeContext, MergeRule, _compiled, make_rule
from gossipfl.merge._kernels import Workspace, ensure_finite

ORDER_RULES = ("median", "trimmed-mean")
DISTANCE_RULES = (
    "krum",
    "multi-krum",
    "geometric-median",
    "nna",
    "clipped-gossip",
    "cs-plus",
    "centered-clipping",
    "ios",
    "balance",
)
TARGETS = {**dict.fromkeys(ORDER_RULES, 2.5), **dict.fromkeys(DISTANCE_RULES, 2.0)}
#: ``mean`` against a bare ``np.dot`` of the same stack.
MEAN_TARGET = 1.2
TARGET_POINT = (8, 1_000_000)
CONTEXT = MergeContext(round=10, total_rounds=100)


def make_inputs(d: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Own model, d neighbours near it (one of them far away, as under attack), weights."""
    rng = np.random.default_rng(seed)
    center = rng.standard_normal(n, dtype=np.float32)
    own = center + np.float32(0.1) * rng.standard_normal(n, dtype=np.float32)
    rows = center + np.float32(0.1) * rng.standard_normal((d, n), dtype=np.float32)
    rows[0] *= np.float32(-5.0)  # a sign-flipping neighbour, so filters have work to do
    weights = np.full(d, 1.0 / (d + 1))
    return own, rows, weights


def build_rules(d: int) -> dict[str, MergeRule]:
    """Every registered rule with defaults (b = f = 1) plus iteration-count variants."""
    rules = {name: make_rule(name) for name in RULES}
    rules["geometric-median@T=1"] = make_rule("geometric-median", T=1)
    rules["centered-clipping@L=1"] = make_rule("centered-clipping", L=1)
    rules["centered-clipping@L=10"] = make_rule("centered-clipping", L=10)
    return rules


def time_grid(d: int, n: int, repeats: int, seed: int, paths: tuple[str, ...]) -> dict[str, Any]:
    own, rows, weights = make_inputs(d, n, seed)
    default = paths[0]

    def merger(rule: MergeRule, path: str) -> Callable[[], object]:
        def call() -> object:
            _compiled.force(path)
            try:
                return rule.merge(own, rows, weights, context=CONTEXT)
            finally:
                _compiled.force(None)

        return call

    calls: dict[str, Callable[[], object]] = {}
    rules: dict[str, MergeRule] = {}
    for path in paths:
        for name, rule in build_rules(d).items():
            key = name if path == default else f"{name}#{path}"
            rules[key] = rule
            calls[key] = merger(rule, path)
    w32 = weights.astype(np.float32)
    calls["dot"] = lambda: np.dot(w32, rows)
    ws = Workspace()
    calls["finite-check"] = lambda: ensure_finite(own, rows, ws)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm up: workspaces, networks, BLAS threads
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    med = {name: statistics.median(s) for name, s in samples.items()}
    base = med["mean"]
    # Ratios pair each rule with the mean timed in the same round (seconds apart), so a
    # burst of load from another process moves both; the median over rounds is reported.
    paired = {
        name: statistics.median(t / b for t, b in zip(s, samples["mean"], strict=True))
        for name, s in samples.items()
    }
    result: dict[str, Any] = {
        "mean_seconds": base,
        "dot_seconds": med["dot"],
        "mean_ratio_to_dot": statistics.median(
            m / d for m, d in zip(samples["mean"], samples["dot"], strict=True)
        ),
        "finite_check_seconds": med["finite-check"],
        "rules": {},
    }
    for name in RULES:
        entry: dict[str, Any] = {
            "path": default,
            "seconds": med[name],
            "ratio_to_mean": paired[name],
        }
        for path in paths:
            key = name if path == default else f"{name}#{path}"
            entry[f"{path}_seconds"] = med[key]
            entry[f"{path}_ratio_to_mean"] = paired[key]
        result["rules"][name] = entry
    gm = rules["geometric-median"]
    assert isinstance(gm, GeometricMedian)
    gm_iters = max(gm.last_iterations, 1)
    per_gm = (med["geometric-median"] - med["geometric-median@T=1"]) / max(gm_iters - 1, 1)
    per_cc = (med["centered-clipping@L=10"] - med["centered-clipping@L=1"]) / 9
    result["iterative"] = {
        "geometric-median": {
            "iterations": gm_iters,
            "total_seconds": med["geometric-median"],
            "first_iteration_seconds": med["geometric-median@T=1"],
            "per_extra_iteration_seconds": per_gm,
            "per_extra_iteration_ratio_to_mean": per_gm / base,
            "total_ratio_to_mean": paired["geometric-median"],
        },
        "centered-clipping": {
            "iterations": rules["centered-clipping"].L,  # type: ignore[attr-defined]
            "total_seconds": med["centered-clipping"],
            "first_iteration_seconds": med["centered-clipping@L=1"],
            "per_extra_iteration_seconds": per_cc,
            "per_extra_iteration_ratio_to_mean": per_cc / base,
            "total_ratio_to_mean": paired["centered-clipping"],
        },
    }
    return result


COMPILE_SCRIPT = """
import json, sys, time
import numpy as np
from gossipfl.merge import RULES, MergeContext, make_rule
from gossipfl.merge import _compiled
d = int(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.standard_normal((d + 1, 1000)).astype(np.float32)
start = time.perf_counter()
for name in RULES:
    make_rule(name).merge(x[0], x[1:], np.full(d, 1 / (d + 1)),
                          context=MergeContext(round=1, total_rounds=2))
total = time.perf_counter() - start
print(json.dumps({"first_merge_of_every_rule_seconds": total,
                  "per_kernel_seconds": _compiled.compile_seconds}))
"""


def measure_compile(d: int) -> dict[str, Any]:
    """Kernel build times in fresh processes: an empty cache, then the cache it filled."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "GOSSIPFL_KERNEL_CACHE": cache, _compiled.ENV: "numba"}
        runs = []
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "-c", COMPILE_SCRIPT, str(d)],
                capture_output=True,
                text=True,
                env=env,
                timeout=600,
                check=True,
            )
            runs.append(json.loads(done.stdout))
    return {"d": d, "cold": runs[0], "cached": runs[1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny grid for smoke tests")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--blas-threads", type=int, default=1, help="BLAS threads (0: the library default)"
    )
    parser.add_argument(
        "--paths",
        default=None,
        help="kernel paths to time, default first (default: numba,numpy if numba imports)",
    )
    args = parser.parse_args(argv)
    _compiled.force("auto")
    numba_ok = _compiled.enabled()
    _compiled.force(None)
    paths = (
        tuple(args.paths.split(","))
        if args.paths
        else (("numba", "numpy") if numba_ok else ("numpy",))
    )
    if args.blas_threads > 0:
        threadpool_limits(args.blas_threads, user_api="blas")
    ds: tuple[int, ...]
    ns: tuple[int, ...]
    if args.quick:
        ds, ns, repeats = (4,), (1_000,), args.repeats or 3
    else:
        ds, ns, repeats = (4, 8, 16), (10_000, 1_000_000), args.repeats or 21
    load_before = os.getloadavg()
    started = time.perf_counter()
    kernels: dict[str, Any] = {"paths": list(paths), "default_path": paths[0]}
    if "numba" in paths:
        import numba

        kernels["numba"] = numba.__version__
        kernels["compile"] = [measure_compile(d) for d in ds]
    grid = []
    for d in ds:
        for n in ns:
            cell = time_grid(d, n, repeats, args.seed, paths)
            grid.append({"d": d, "n": n, **cell})
    targets: dict[str, Any] = {}
    for cell in grid:
        if (cell["d"], cell["n"]) == TARGET_POINT:
            ratio = cell["mean_ratio_to_dot"]
            targets["mean"] = {
                "baseline": "np.dot",
                "limit": MEAN_TARGET,
                "ratio": ratio,
                "met": ratio <= MEAN_TARGET,
            }
            for name, limit in TARGETS.items():
                # Iterative rules are held to the target with all their iterations.
                timing = cell["rules"][name]
                ratio = timing["ratio_to_mean"]
                targets[name] = {
                    "baseline": "mean",
                    "limit": limit,
                    "path": timing["path"],
                    "ratio": ratio,
                    "met": ratio <= limit,
                    **{
                        f"{path}_ratio": timing[f"{path}_ratio_to_mean"]
                        for path in paths
                        if path != timing["path"]
                    },
                }
    report = {
        "benchmark": "merge",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "quick": bool(args.quick),
        "repeats": repeats,
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
            "blas": [
                {key: lib.get(key) for key in ("internal_api", "version", "num_threads")}
                for lib in threadpool_info()
                if lib.get("user_api") == "blas"
            ],
            # Other processes' load: the threaded gemv baseline suffers most from it.
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "baseline": "mean",
        "kernels": kernels,
        "grid": grid,
        "targets_at": {"d": TARGET_POINT[0], "n": TARGET_POINT[1]},
        "targets": targets,
        "all_targets_met": bool(targets) and all(t["met"] for t in targets.values()),
        "seconds": time.perf_counter() - started,
    }
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
