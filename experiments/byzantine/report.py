"""Turn a finished Byzantine experiment into the recorded results: table, cells, heatmap.

Usage (after ``gossipfl experiment run experiments/byzantine/matrix.toml --out DIR``)::

    .venv/bin/python experiments/byzantine/report.py DIR --name matrix

writes ``experiments/byzantine/results/<name>/``:

* ``summary.csv`` -- the harness's one row per run, copied;
* ``cells.json`` -- per rule × attack over seeds: mean honest accuracy (mean and standard
  deviation), worst honest peer (the lowest over seeds), their drop against the same
  rule's attack-free run, and the rule's attack-free cost against plain gossip;
* ``table.md`` -- the same as a Markdown table (mean / worst, in %);
* ``heatmap.png`` -- mean accuracy, worst peer and drop, rules × attacks;
* ``curves.png`` -- mean honest accuracy per round of ``mean`` and ``--highlight`` under a
  few attacks (seed-averaged), when the run directories are still there.

"Attack-free" is the run with ``byzantine.attack = "none"``: no Byzantine peers at all.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NONE = "none"


def load_rows(directory: Path) -> list[dict[str, Any]]:
    with (directory / "summary.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def failed_points(
    directory: Path, rows: list[dict[str, Any]], split: tuple[str, Any] | None = None
) -> list[tuple[str, str]]:
    """(rule, attack) of every grid point of the experiment that has no result (among
    the points whose ``split`` key has the given value)."""
    from gossipfl.experiments import ExperimentSpec

    spec = ExperimentSpec.from_toml(directory / "experiment.toml")
    done = {row["run_id"] for row in rows}
    return [
        (p.config.rule.name, p.config.byzantine.attack)
        for p in spec.points()
        if p.id not in done and (split is None or p.values.get(split[0]) == split[1])
    ]


def column(row: dict[str, Any], key: str | None) -> str:
    """The table column of a run: its attack, qualified by the grid value ``key``."""
    if key is None or key not in row:
        return str(row["attack"])
    return f"{row['attack']} {key.rsplit('.', 1)[-1]}={row[key]}"


def cells(
    rows: list[dict[str, Any]], key: str | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """rule -> column -> statistics over seeds (accuracies as fractions)."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[(row["rule"], column(row, key))].append(row)
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (rule, attack), runs in grouped.items():
        means = [float(r["honest_mean_acc"]) for r in runs]
        worsts = [float(r["honest_min_acc"]) for r in runs]
        out[rule][attack] = {
            "seeds": len(runs),
            "mean": statistics.fmean(means),
            "mean_sd": statistics.stdev(means) if len(means) > 1 else 0.0,
            "worst": min(worsts),
            "worst_avg": statistics.fmean(worsts),
            "undefended": max(len(r.get("undefended") or []) for r in runs),
            "stale_views": sum(int(r.get("stale_views") or 0) for r in runs),
        }
    for by_attack in out.values():
        clean = by_attack.get(NONE)
        for attack, cell in by_attack.items():
            if clean is not None:
                cell["drop"] = clean["mean"] - cell["mean"]
                cell["worst_drop"] = clean["worst"] - cell["worst"]
            if "mean" in out and NONE in out["mean"] and attack == NONE:
                cell["cost_vs_gossip"] = out["mean"][NONE]["mean"] - cell["mean"]
    return out


def ordered(values: list[str], preferred: list[str]) -> list[str]:
    return [v for v in preferred if v in values] + sorted(v for v in values if v not in preferred)


def add_failures(
    stats: dict[str, dict[str, dict[str, Any]]], failures: list[tuple[str, str]]
) -> None:
    """Mark cells whose runs failed (e.g. honest models diverged to inf)."""
    for rule, attack in failures:
        cell = stats.setdefault(rule, {}).setdefault(attack, {"seeds": 0})
        cell["failed"] = cell.get("failed", 0) + 1


def markdown_table(stats: dict[str, dict[str, dict[str, Any]]], attacks: list[str]) -> str:
    head = "| rule | " + " | ".join(attacks) + " | worst drop |"
    sep = "|---|" + "---|" * (len(attacks) + 1)
    lines = [head, sep]
    for rule in stats:
        row = stats[rule]
        cells_ = []
        for attack in attacks:
            c = row.get(attack)
            if c is None:
                cells_.append("–")
            elif "mean" not in c:
                cells_.append(f"failed ×{c['failed']}")
            else:
                text = f"{100 * c['mean']:.1f} / {100 * c['worst']:.1f}"
                cells_.append(text + (f" (+{c['failed']} failed)" if c.get("failed") else ""))
        drops = [c.get("drop", math.nan) for a, c in row.items() if a != NONE]
        worst_drop = max(drops) if drops else math.nan
        lines.append(f"| `{rule}` | " + " | ".join(cells_) + f" | {100 * worst_drop:.1f} |")
    return "\n".join(lines) + "\n"


def heatmap(
    stats: dict[str, dict[str, dict[str, Any]]], attacks: list[str], path: Path, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rules = list(stats)
    panels = [
        ("mean honest accuracy (%)", "mean", "viridis", (0, 100)),
        ("worst honest peer (%)", "worst", "viridis", (0, 100)),
        ("drop vs the rule's attack-free run (points)", "drop", "magma_r", (0, 30)),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(19, 0.42 * len(rules) + 2.6), dpi=110)
    for ax, (label, key, cmap, (lo, hi)) in zip(axes, panels, strict=True):
        grid = np.full((len(rules), len(attacks)), np.nan)
        for i, rule in enumerate(rules):
            for j, attack in enumerate(attacks):
                cell = stats[rule].get(attack)
                if cell is not None and key in cell:
                    grid[i, j] = 100 * cell[key]
        ax.imshow(grid, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        for i in range(len(rules)):
            for j in range(len(attacks)):
                if not math.isnan(grid[i, j]):
                    value = grid[i, j]
                    dark = (value - lo) / (hi - lo) < 0.55 if cmap == "viridis" else value > 12
                    ax.text(
                        j,
                        i,
                        f"{value:.0f}" if key != "drop" else f"{value:.1f}",
                        ha="center",
                        va="center",
                        fontsize=7.5,
                        color="white" if dark else "black",
                    )
        for i, rule in enumerate(rules):
            for j, attack in enumerate(attacks):
                cell = stats[rule].get(attack)
                if cell is not None and "mean" not in cell and cell.get("failed"):
                    ax.text(j, i, "failed", ha="center", va="center", fontsize=7, color="red")
        ax.set_xticks(range(len(attacks)), attacks, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(rules)), rules, fontsize=8)
        ax.set_title(label, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def curves(directory: Path, rows: list[dict[str, Any]], highlight: str, path: Path) -> bool:
    """Seed-averaged accuracy per round for plain gossip and ``highlight``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = [
        a for a in ("none", "sign-flip", "alie", "dissensus") if any(r["attack"] == a for r in rows)
    ]
    if not attacks:
        return False
    fig, grid = plt.subplots(
        1, len(attacks), figsize=(4.2 * len(attacks), 3.6), dpi=110, squeeze=False
    )
    axes = list(grid[0])
    found = False
    for ax, attack in zip(axes, attacks, strict=True):
        for rule, style in (("mean", "--"), (highlight, "-")):
            series: dict[int, list[float]] = defaultdict(list)
            for row in rows:
                if row["rule"] != rule or row["attack"] != attack:
                    continue
                metrics = directory / row["run_id"] / "metrics.jsonl"
                if not metrics.exists():
                    continue
                with metrics.open(encoding="utf-8") as f:
                    for line in f:
                        rec = json.loads(line)
                        if rec.get("kind") == "round" and rec.get("mean_acc") is not None:
                            series[rec["round"] + 1].append(100 * rec["mean_acc"])
            if series:
                found = True
                xs = sorted(series)
                ax.plot(xs, [statistics.fmean(series[x]) for x in xs], style, label=rule)
        ax.set_title(f"attack: {attack}", fontsize=10)
        ax.set_ylim(0, 100)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean honest accuracy (%)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right")
            break
    fig.tight_layout()
    if found:
        fig.savefig(path)
    plt.close(fig)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="the experiment's output directory")
    parser.add_argument("--name", required=True, help="results/<name>/ to write")
    parser.add_argument("--title", default="", help="heatmap title")
    parser.add_argument("--highlight", default="cs-plus", help="rule drawn against mean")
    parser.add_argument("--column", help="a grid key that splits the attack columns")
    parser.add_argument(
        "--reference", type=Path, help="another experiment whose attack-free runs to compare"
    )
    parser.add_argument(
        "--split",
        metavar="KEY",
        help="a grid key (e.g. topology.name): one result folder <name>-<value> per value",
    )
    args = parser.parse_args()
    rows = load_rows(args.directory)
    if args.reference is not None:
        # attack-free runs for the rules (and plain gossip) that have none of their own
        present = {r["rule"] for r in rows} | {"mean"}
        have = {r["rule"] for r in rows if r["attack"] == NONE}
        rows += [
            r
            for r in load_rows(args.reference)
            if r["attack"] == NONE and r["rule"] in present - have
        ]
    if args.split is None:
        report(args, rows, args.name, None)
        return
    for value in sorted({r[args.split] for r in rows}, key=str):
        part = [r for r in rows if r[args.split] == value]
        report(args, part, f"{args.name}-{value}", (args.split, value))


def report(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    name: str,
    split: tuple[str, Any] | None,
) -> None:
    """Write results/<name>/ from ``rows``."""
    out = HERE / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    with (args.directory / "summary.csv").open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        kept = [r for r in reader if split is None or r[split[0]] == str(split[1])]
        fields = reader.fieldnames or []
    with (out / "summary.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    preferred_rules = [
        "mean", "median", "trimmed-mean", "krum", "multi-krum", "geometric-median",
        "centered-clipping", "clipped-gossip", "cs-plus", "nna", "ios", "balance",
    ]  # fmt: skip
    preferred_attacks = [
        NONE, "sign-flip", "label-flip", "gaussian", "alie", "ipm", "dissensus", "isolation",
        "sample-duplication", "spectral",
    ]  # fmt: skip
    raw = cells(rows, args.column)
    if args.column is None:
        add_failures(raw, failed_points(args.directory, rows, split))
    stats = {r: raw[r] for r in ordered(list(raw), preferred_rules)}
    attacks = ordered(sorted({column(r, args.column) for r in rows}), preferred_attacks)
    (out / "cells.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    (out / "table.md").write_text(markdown_table(stats, attacks), encoding="utf-8")
    title = f"{args.title} ({split[1]})" if args.title and split else args.title or name
    heatmap(stats, attacks, out / "heatmap.png", title)
    drew = curves(args.directory, rows, args.highlight, out / "curves.png")
    print(json.dumps({"runs": len(kept), "written": str(out), "curves": drew}))


if __name__ == "__main__":
    main()
