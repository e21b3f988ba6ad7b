"""Accuracy and membership leakage against the privacy budget, from the recorded studies.

    .venv/bin/python experiments/privacy/report.py

Reads ``results/privacy-dp-sgd/`` (DP-SGD at each ε) and ``results/privacy-leakage/``
(the same setting without privacy: ε = ∞, same seeds), and writes
``results/privacy-dp-sgd/table.md`` and ``epsilon.png`` (also into
docs/assets/studies/privacy-dp-sgd/): per task and partition, mean over seeds, the
honest mean accuracy and the loss-threshold attack's AUC at each ε. With the secure
averaging studies recorded (``privacy-dp-sgd-secure``, ``privacy-leakage-secure``), also
``table-secure.md`` and ``secure.png``: the same with secure averaging, and the attack's
AUC with and without it side by side.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TASKS = {
    "digits-softmax": "digits, softmax",
    "digits-mlp": "digits, MLP",
    "mnist1d": "MNIST-1D, MLP",
}
PARTS = {"iid": "IID", "dirichlet": "Dirichlet 1.0"}


def rows(name: str) -> list[dict[str, Any]]:
    path = HERE / "results" / name / "summary.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


Cells = dict[tuple[str, str], dict[float, list[dict[str, Any]]]]


def collect(dp: str, plain: str) -> Cells:
    """Runs by (task, partition) and ε (∞: the study without DP)."""
    cells: Cells = defaultdict(lambda: defaultdict(list))
    for row in rows(dp):
        cells[(row["task.name"], row["data.partition"])][float(row["privacy.epsilon"])].append(row)
    for row in rows(plain):
        cells[(row["task.name"], row["data.partition"])][math.inf].append(row)
    return cells


def mean(runs: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in runs if r.get(key) is not None]
    return statistics.fmean(values) if values else math.nan


def table(cells: Cells, budgets: list[float]) -> str:
    lines = [
        "| task | shards | "
        + " | ".join("ε = ∞" if math.isinf(e) else f"ε = {e:g}" for e in budgets)
        + " |",
        "|---|---|" + "---|" * len(budgets),
    ]
    for task, part in sorted(cells, key=lambda k: (list(TASKS).index(k[0]), k[1] != "iid")):
        by = cells[(task, part)]
        out = []
        for e in budgets:
            runs = by.get(e, [])
            acc, auc = mean(runs, "honest_mean_acc"), mean(runs, "mia_auc")
            out.append(f"{100 * acc:.1f}% / {auc:.3f}" if runs else "–")
        lines.append(
            f"| {TASKS.get(task, task)} | {PARTS.get(part, part)} | " + " | ".join(out) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    cells = collect("privacy-dp-sgd", "privacy-leakage")
    budgets = sorted({e for by in cells.values() for e in by})

    text = table(cells, budgets)
    target = HERE / "results" / "privacy-dp-sgd"
    (target / "table.md").write_text(text, encoding="utf-8")

    positions = list(range(len(budgets)))
    labels = ["∞" if math.isinf(e) else f"{e:g}" for e in budgets]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (task, part), by in sorted(cells.items()):
        label = f"{TASKS.get(task, task)}, {PARTS.get(part, part)}"
        style = "-" if part == "iid" else "--"
        accs = [100 * mean(by.get(e, []), "honest_mean_acc") for e in budgets]
        aucs = [mean(by.get(e, []), "mia_auc") for e in budgets]
        left.plot(positions, accs, style, marker="o", label=label)
        right.plot(positions, aucs, style, marker="o", label=label)
    for ax, title in ((left, "honest mean accuracy (%)"), (right, "membership inference AUC")):
        ax.set_xticks(positions, labels)
        ax.set_xlabel("privacy budget ε per peer (δ = 1e-5)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    left.set_ylim(0, 100)
    right.axhline(0.5, color="grey", lw=1, ls=":")
    right.legend(fontsize=7, loc="upper left")
    fig.suptitle("DP-SGD, 16 peers on a 4×4 torus, plain gossip, 100 rounds, mean of 2 seeds")
    fig.tight_layout()
    docs = ROOT / "docs" / "assets" / "studies" / "privacy-dp-sgd"
    docs.mkdir(parents=True, exist_ok=True)
    for place in (target / "epsilon.png", docs / "epsilon.png"):
        fig.savefig(place, dpi=110)
    print(text)
    if (HERE / "results" / "privacy-dp-sgd-secure" / "summary.jsonl").is_file():
        secure(cells, budgets, docs)


def secure(plain: Cells, budgets: list[float], docs: Path) -> None:
    """The secure-averaging studies: their table, and the attack's AUC with and without
    secure averaging side by side (mean over partitions and seeds)."""
    cells = collect("privacy-dp-sgd-secure", "privacy-leakage-secure")
    text = table(cells, budgets)
    target = HERE / "results" / "privacy-dp-sgd-secure"
    (target / "table.md").write_text(text, encoding="utf-8")
    print(text)
    positions = list(range(len(budgets)))
    labels = ["∞" if math.isinf(e) else f"{e:g}" for e in budgets]
    fig, axes = plt.subplots(1, len(TASKS), figsize=(13, 4), sharey=True)
    for ax, (task, title) in zip(axes, TASKS.items(), strict=True):
        for name, source, style in (
            ("plain gossip", plain, "-"),
            ("secure averaging", cells, "--"),
        ):
            runs = [
                [r for part in PARTS for r in source.get((task, part), {}).get(e, [])]
                for e in budgets
            ]
            ax.plot(positions, [mean(r, "mia_auc") for r in runs], style, marker="o", label=name)
        ax.axhline(0.5, color="grey", lw=1, ls=":")
        ax.set_xticks(positions, labels)
        ax.set_xlabel("privacy budget ε per peer (δ = 1e-5)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("membership inference AUC")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "What a curious neighbour learns: the target's model (plain) or its neighbourhood's "
        "sum (secure); 16 peers, 4×4 torus, mean of 2 partitions × 2 seeds"
    )
    fig.tight_layout()
    for place in (target / "secure.png", docs / "secure.png"):
        fig.savefig(place, dpi=110)


if __name__ == "__main__":
    main()
