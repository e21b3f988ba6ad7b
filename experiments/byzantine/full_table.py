"""The full matrix at a glance: per setting, the default rule against its targets and the
oracle, and the rule that did best. Prints the Markdown table of docs/robustness.md.

    .venv/bin/python experiments/byzantine/full_table.py

Reads ``results/full-<task>-<topology>/cells.json`` (report.py --split topology.name) and
the oracle runs in ``results/full-oracle-<task>/summary.csv``.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TASKS = {
    "digits": "digits, softmax",
    "mnist1d-softmax": "MNIST-1D, softmax",
    "mnist1d-mlp": "MNIST-1D, MLP",
}
TOPOLOGIES = {"torus": "torus", "random-regular": "random 4-regular"}
DEFAULT = "cs-plus"


def drops(by_attack: dict[str, dict[str, Any]]) -> tuple[float, str, float, str]:
    """Largest mean drop and largest worst-peer drop against the attack-free run."""
    clean = by_attack["none"]
    mean_drop, mean_at, worst_drop, worst_at = 0.0, "–", 0.0, "–"
    for attack, cell in by_attack.items():
        if attack == "none" or "mean" not in cell:
            continue
        d = 100 * (clean["mean"] - cell["mean"])
        w = 100 * (clean["worst_avg"] - cell["worst_avg"])
        if d > mean_drop:
            mean_drop, mean_at = d, attack
        if w > worst_drop:
            worst_drop, worst_at = w, attack
    return mean_drop, mean_at, worst_drop, worst_at


def excess(by_attack: dict[str, dict[str, Any]], plain: float) -> float:
    """How far a rule misses the issue's targets, in points: mean drop over 2, worst-peer
    drop over 5, cost without attack over 0.5 (0: every target met)."""
    mean_drop, _, worst_drop, _ = drops(by_attack)
    cost = plain - 100 * by_attack["none"]["mean"]
    return max(0.0, mean_drop - 2) + max(0.0, worst_drop - 5) + max(0.0, cost - 0.5)


def oracle(task: str, topology: str) -> float | None:
    path = RESULTS / f"full-oracle-{task}" / "summary.csv"
    if not path.exists():
        return None
    with path.open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["topology.name"] == topology]
    return 100 * statistics.fmean(float(r["honest_mean_acc"]) for r in rows) if rows else None


def main() -> None:
    lines = [
        "| setting | plain gossip, no attack | `cs-plus`: cost without attack | largest mean "
        "drop | largest worst-peer drop | oracle under attack | rule nearest the targets: "
        "mean / worst-peer drop, cost |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, task_label in TASKS.items():
        for topology, topo_label in TOPOLOGIES.items():
            path = RESULTS / f"full-{task}-{topology}" / "cells.json"
            if not path.exists():
                continue
            cells = json.loads(path.read_text(encoding="utf-8"))
            plain = 100 * cells["mean"]["none"]["mean"]
            ours = cells[DEFAULT]
            cost = plain - 100 * ours["none"]["mean"]
            mean_drop, mean_at, worst_drop, worst_at = drops(ours)
            best = min(
                (r for r in cells if r != "mean" and "none" in cells[r]),
                key=lambda r: (round(excess(cells[r], plain), 6), r != DEFAULT),
            )
            b_drop, _, b_worst, _ = drops(cells[best])
            b_cost = plain - 100 * cells[best]["none"]["mean"]
            best_oracle = oracle(task, topology)
            lines.append(
                f"| {task_label}, {topo_label} | {plain:.1f} | {cost:+.1f} | "
                f"{mean_drop:.1f} ({mean_at}) | {worst_drop:.1f} ({worst_at}) | "
                + (f"{best_oracle:.1f}" if best_oracle is not None else "–")
                + f" | `{best}`: {b_drop:.1f} / {b_worst:.1f}, cost {b_cost:+.1f} |"
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
