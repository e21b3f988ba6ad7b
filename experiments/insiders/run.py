"""The adversarial suite, recorded: every insider scenario against an attack-free job.

    .venv/bin/python experiments/insiders/run.py [--seeds 0 1 2] [--rounds 150] [--only NAME...]

Each scenario of :data:`gossipfl.daemon.adversarial.SUITE` runs a job of 6 real
``gossipfl start`` daemons on 127.0.0.1 (exponential graph, 3 in-neighbours each, CS+,
digits, 150 rounds of ~60 ms), one or two of them turned into the attacker, and is
compared with the attack-free job of the same seed (static roster, or dynamic membership
for the poisoning). Printed and written to ``experiments/insiders/results/``:
``runs.jsonl`` (every job), ``summary.json`` (per scenario, over the seeds), ``table.md``
(the table of docs/robustness.md) and ``insiders.png``.

Targets (issue 11): honest mean within 1.0 point of the attack-free job for membership
poisoning, round claims, omission and a killed-and-restarted peer; victim memory growth
at most 256 MiB under every flood; the stalling insider at most 2x the job time; no honest
peer crashes; every attack leaves a counted, logged trace.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gossipfl.daemon.adversarial import SUITE, JobResult, JobSettings, Scenario, run_job

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ACCURACY_TARGET = {"membership-poison", "round-inflation", "omission", "kill-restart"}
FLOODS = {"window-flood", "frame-flood"}


def trace(result: JobResult) -> dict[str, Any]:
    """What the honest peers counted and logged about the attackers."""
    attackers = {p.peer_id for p in result.peers if not p.honest}
    counted: dict[str, int] = {}
    for peer in result.honest:
        stop = peer.stop
        for who, kinds in (stop.get("violations") or {}).items():
            if who in attackers:
                for kind, n in kinds.items():
                    counted[f"transport.{kind}"] = counted.get(f"transport.{kind}", 0) + n
        for kind, n in (stop.get("membership") or {}).items():
            counted[f"membership.{kind}"] = counted.get(f"membership.{kind}", 0) + n
        for kind, n in (stop.get("runtime") or {}).items():
            counted[f"runtime.{kind}"] = counted.get(f"runtime.{kind}", 0) + n
    banned = sum(1 for p in result.honest if attackers & set(p.stop.get("banned") or ()))
    return {
        "counted": counted,
        "warnings": sum(p.warnings_about_attackers for p in result.honest),
        "banned_by": banned,
    }


def row(name: str, seed: int, result: JobResult, base: JobResult) -> dict[str, Any]:
    return {
        "scenario": name,
        "seed": seed,
        "honest_mean": result.honest_mean,
        "honest_worst": result.honest_worst,
        "drop": base.honest_mean - result.honest_mean,
        "worst_drop": base.honest_worst - result.honest_worst,
        "wall_s": result.wall_s,
        "time_ratio": result.wall_s / base.wall_s if base.wall_s else None,
        "rss_growth_mb": result.rss_growth_mb,
        "crashed": result.crashed,
        **trace(result),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["scenario"] for r in rows):
        mine = [r for r in rows if r["scenario"] == name]
        counted: dict[str, int] = {}
        for r in mine:
            for k, v in r["counted"].items():
                counted[k] = counted.get(k, 0) + v
        out[name] = {
            "seeds": len(mine),
            "drop": statistics.mean(r["drop"] for r in mine),
            "worst_drop": max(r["worst_drop"] for r in mine),
            "time_ratio": statistics.mean(r["time_ratio"] for r in mine if r["time_ratio"]),
            "rss_growth_mb": max(r["rss_growth_mb"] for r in mine),
            "crashed": sorted({c for r in mine for c in r["crashed"]}),
            "warnings": sum(r["warnings"] for r in mine),
            "banned_by": statistics.mean(r["banned_by"] for r in mine),
            "counted": counted,
        }
    return out


def verdict(name: str, s: dict[str, Any]) -> str:
    problems = []
    if name in ACCURACY_TARGET and s["drop"] > 0.01:
        problems.append("accuracy")
    if name in FLOODS and s["rss_growth_mb"] > 256:
        problems.append("memory")
    if name == "stall" and s["time_ratio"] > 2:
        problems.append("time")
    if s["crashed"]:
        problems.append("crash")
    if name != "kill-restart" and not (s["counted"] and s["warnings"]):
        problems.append("no trace")
    return "met" if not problems else "MISSED: " + ", ".join(problems)


def table(summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| scenario | honest mean drop (points) | worst peer drop | job time | "
        "memory growth | counted (all honest peers, all seeds) | warnings | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        counted = ", ".join(f"{k} {v}" for k, v in sorted(s["counted"].items())) or "-"
        lines.append(
            f"| {name} | {100 * s['drop']:+.2f} | {100 * s['worst_drop']:+.2f} | "
            f"{s['time_ratio']:.2f}x | {s['rss_growth_mb']:.0f} MiB | {counted} | "
            f"{s['warnings']} | {verdict(name, s)} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, (acc, slow) = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.5), sharey=True)
    drops = [100 * summary[n]["drop"] for n in names]
    acc.barh(names, drops, color=["#c44" if d > 1 else "#4a7" for d in drops])
    acc.axvline(1.0, color="k", ls="--", lw=1)
    acc.set_xlabel("honest mean accuracy drop vs attack-free (points; target <= 1)")
    ratios = [summary[n]["time_ratio"] for n in names]
    slow.barh(names, ratios, color=["#c44" if r > 2 else "#47a" for r in ratios])
    slow.axvline(2.0, color="k", ls="--", lw=1)
    slow.set_xlabel("job time vs attack-free (x; stall target <= 2)")
    acc.invert_yaxis()
    fig.suptitle("Insiders against 5 honest gossipfl peers (exponential graph, CS+, digits)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from rich.progress import Progress

    names = [n for n in SUITE if args.only is None or n in args.only]
    rows: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with (
        tempfile.TemporaryDirectory(prefix="gossipfl-insiders-") as tmp,
        Progress() as progress,
    ):
        task = progress.add_task("insiders", total=len(args.seeds) * (len(names) + 2))
        for seed in args.seeds:
            bases: dict[bool, JobResult] = {}
            for dynamic in (False, True):
                job = JobSettings(rounds=args.rounds, seed=seed, dynamic=dynamic)
                label = f"baseline-{'dynamic' if dynamic else 'static'}"
                bases[dynamic] = run_job(job, Scenario(label), Path(tmp) / f"{label}-{seed}")
                progress.advance(task)
            for name in names:
                scenario, dynamic = SUITE[name]
                job = JobSettings(rounds=args.rounds, seed=seed, dynamic=dynamic)
                result = run_job(job, scenario, Path(tmp) / f"{name}-{seed}")
                rows.append(row(name, seed, result, bases[dynamic]))
                r = rows[-1]
                progress.console.print(
                    f"{name:18s} seed {seed}: drop {100 * r['drop']:+.2f} points, "
                    f"time {r['time_ratio']:.2f}x, memory +{r['rss_growth_mb']:.0f} MiB, "
                    f"{r['warnings']} warnings, counted {r['counted']}"
                )
                progress.advance(task)
    summary = summarize(rows)
    with (args.out / "runs.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (args.out / "table.md").write_text(table(summary))
    plot(summary, args.out / "insiders.png")
    print(table(summary))
    took = time.time() - started
    print(json.dumps({"scenarios": len(summary), "jobs": len(rows), "wall_s": took}))


if __name__ == "__main__":
    main()
