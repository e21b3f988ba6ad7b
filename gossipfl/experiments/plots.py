"""Plots of a run directory or of an experiment directory.

For one run (a directory with ``metrics.jsonl``): honest accuracy and consensus distance
per round. For an experiment (a directory with ``summary.jsonl`` and run directories):

- ``accuracy_vs_rounds``: mean honest accuracy per round, one line per grid point with the
  seeds averaged (a band shows their spread);
- ``consensus_vs_rounds``: the consensus distance, log scale;
- ``heatmap_*``: final honest accuracy (mean over seeds), rules × attacks, when the grid
  varies both ``rule.name`` and ``byzantine.attack``; one for the mean peer, one for the
  worst peer;
- ``topologies``: final accuracy and consensus distance per topology, when the grid varies
  ``topology.name``;
- ``accuracy_vs_bytes``: mean honest accuracy against the megabytes sent per peer, when
  the grid varies ``network.codec`` or ``topology.name`` (what a bit of accuracy costs).

Every figure is written as PNG and SVG.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gossipfl.configfile import read_toml
from gossipfl.errors import ConfigError

Groups = dict[tuple[tuple[str, Any], ...], list[dict[str, Any]]]
"""Runs grouped by their non-seed grid values."""

FORMATS = ("png", "svg")
SEED_KEY = "seed"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, base: Path, formats: Sequence[str]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = base.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=120)
        paths.append(path)
    _pyplot().close(fig)
    return paths


def read_round_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The per-round rows of a run's metrics.jsonl, in round order."""
    path = run_dir / "metrics.jsonl"
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("kind") == "round":
                rows.append(row)
    return sorted(rows, key=lambda r: int(r["round"]))


def plot_directory(path: str | Path, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Draw every plot that fits ``path``; return the files written."""
    directory = Path(path)
    if (directory / "summary.jsonl").exists():
        return plot_experiment(directory, formats=formats)
    if (directory / "metrics.jsonl").exists():
        return plot_run(directory, formats=formats)
    raise ConfigError(
        f"{directory} is neither a run directory (metrics.jsonl) nor an experiment "
        "directory (summary.jsonl)"
    )


# --------------------------------------------------------------------------- one run


def plot_run(directory: Path, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    rows = read_round_rows(directory)
    if not rows:
        raise ConfigError(f"{directory}/metrics.jsonl holds no round rows")
    plt = _pyplot()
    written: list[Path] = []
    evaluated = [r for r in rows if r.get("mean_acc") is not None]
    if evaluated:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        x = [r["round"] + 1 for r in evaluated]
        ax.fill_between(
            x,
            [100 * r["min_acc"] for r in evaluated],
            [100 * r["max_acc"] for r in evaluated],
            alpha=0.25,
            label="honest peers: min–max",
        )
        ax.plot(x, [100 * r["mean_acc"] for r in evaluated], label="honest peers: mean")
        if all(r.get("avg_model_acc") is not None for r in evaluated):
            ax.plot(
                x,
                [100 * r["avg_model_acc"] for r in evaluated],
                "--",
                label="average of honest models",
            )
        _finish(ax, "round", "test accuracy (%)", directory.name, ylim=(0, 100))
        written += _save(fig, directory / "accuracy", formats)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.semilogy([r["round"] + 1 for r in rows], [max(r["consensus_distance"], 1e-30) for r in rows])
    _finish(ax, "round", "consensus distance", directory.name)
    written += _save(fig, directory / "consensus", formats)
    return written


def _finish(
    ax: Any, xlabel: str, ylabel: str, title: str, *, ylim: tuple[float, float] | None = None
) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.figure.tight_layout()


# ----------------------------------------------------------------------- experiments


def _experiment_file(directory: Path) -> dict[str, Any] | None:
    """The experiment's ``experiment.toml``, if the directory has one."""
    spec_path = directory / "experiment.toml"
    return read_toml(spec_path) if spec_path.exists() else None


def _grid_keys(spec: dict[str, Any] | None, rows: list[dict[str, Any]]) -> list[str]:
    if spec is not None:
        return [k for k in spec.get("grid", {}) if any(k in r for r in rows)]
    # without the experiment file: keys that look like config keys and vary across runs
    keys = [k for k in rows[0] if "." in k or k == SEED_KEY]
    return [k for k in keys if len({json.dumps(r.get(k)) for r in rows}) > 1]


def _label(values: Iterable[tuple[str, Any]]) -> str:
    return ", ".join(f"{k.removesuffix('.name').rsplit('.', 1)[-1]}={v}" for k, v in values)


def _experiment_name(spec: dict[str, Any] | None, directory: Path) -> str:
    name = spec.get("name") if spec is not None else None
    return name if isinstance(name, str) and name else directory.name


def plot_experiment(directory: Path, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    rows = [
        json.loads(line)
        for line in (directory / "summary.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    if not rows:
        raise ConfigError(f"{directory}/summary.jsonl lists no finished runs")
    spec = _experiment_file(directory)
    keys = _grid_keys(spec, rows)
    title = _experiment_name(spec, directory)
    group_keys = [k for k in keys if k != SEED_KEY]
    groups: Groups = defaultdict(list)
    for row in rows:
        groups[tuple((k, row.get(k)) for k in group_keys)].append(row)
    written = _plot_curves(directory, groups, formats, title)
    if "rule.name" in keys and "byzantine.attack" in keys:
        written += _plot_heatmaps(directory, rows, keys, formats, title)
    if "topology.name" in keys:
        written += _plot_topologies(directory, groups, formats, title)
    if "network.codec" in keys or "topology.name" in keys:
        written += _plot_vs_bytes(directory, groups, formats, title)
    return written


def _mean_curve(runs: list[dict[str, Any]], directory: Path, field: str) -> tuple[Any, Any, Any]:
    curves = []
    for run in runs:
        run_dir = directory / str(run["run_id"])
        if not (run_dir / "metrics.jsonl").exists():
            continue
        points = {
            r["round"]: r[field] for r in read_round_rows(run_dir) if r.get(field) is not None
        }
        if points:
            curves.append(points)
    if not curves:
        return None, None, None
    rounds = sorted(set.intersection(*(set(c) for c in curves)))
    matrix = np.array([[c[r] for r in rounds] for c in curves], dtype=float)
    return np.array(rounds) + 1, matrix.mean(axis=0), matrix.std(axis=0)


def _plot_curves(
    directory: Path,
    groups: Groups,
    formats: Sequence[str],
    title: str,
) -> list[Path]:
    plt = _pyplot()
    written: list[Path] = []
    for field, name, ylabel, log in (
        ("mean_acc", "accuracy_vs_rounds", "mean honest test accuracy (%)", False),
        ("consensus_distance", "consensus_vs_rounds", "consensus distance", True),
    ):
        fig, ax = plt.subplots(figsize=(8, 4.8))
        drawn = 0
        for group, runs in sorted(groups.items(), key=lambda g: str(g[0])):
            x, mean, std = _mean_curve(runs, directory, field)
            if x is None:
                continue
            scale = 100.0 if field == "mean_acc" else 1.0
            label = _label(group) or directory.name
            (line,) = ax.plot(x, scale * mean, label=label)
            if len(runs) > 1:
                ax.fill_between(
                    x,
                    scale * (mean - std),
                    scale * (mean + std),
                    alpha=0.15,
                    color=line.get_color(),
                )
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        if log:
            ax.set_yscale("log")
        _finish(ax, "round", ylabel, title)
        if drawn > 12:
            ax.legend(fontsize="x-small", ncol=2)
        written += _save(fig, directory / name, formats)
    return written


def _bytes_curve(
    runs: list[dict[str, Any]], directory: Path
) -> tuple[Any, Any] | tuple[None, None]:
    """Mean accuracy against cumulative MB sent per peer, averaged over runs (seeds)."""
    xs, ys = [], []
    for run in runs:
        run_dir = directory / str(run["run_id"])
        if not (run_dir / "metrics.jsonl").exists():
            continue
        sent = 0.0
        x, y = [], []
        for row in read_round_rows(run_dir):
            sent += row.get("bytes_sent", 0) / max(1, row.get("peers", 1)) / 1e6
            if row.get("mean_acc") is not None:
                x.append(sent)
                y.append(100 * row["mean_acc"])
        if x:
            xs.append(x)
            ys.append(y)
    if not xs:
        return None, None
    length = min(len(x) for x in xs)
    return (
        np.mean([x[:length] for x in xs], axis=0),
        np.mean([y[:length] for y in ys], axis=0),
    )


def _plot_vs_bytes(
    directory: Path,
    groups: Groups,
    formats: Sequence[str],
    title: str,
) -> list[Path]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    drawn = 0
    for group, runs in sorted(groups.items(), key=lambda g: str(g[0])):
        x, y = _bytes_curve(runs, directory)
        if x is not None:
            ax.plot(x, y, label=_label(group) or directory.name)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return []
    ax.set_xscale("log")
    _finish(ax, "MB sent per peer (log)", "mean honest test accuracy (%)", title)
    return _save(fig, directory / "accuracy_vs_bytes", formats)


def _plot_heatmaps(
    directory: Path,
    rows: list[dict[str, Any]],
    keys: list[str],
    formats: Sequence[str],
    title: str,
) -> list[Path]:
    plt = _pyplot()
    rules = list(dict.fromkeys(r["rule.name"] for r in rows))
    attacks = list(dict.fromkeys(r["byzantine.attack"] for r in rows))
    others = [k for k in keys if k not in ("rule.name", "byzantine.attack", SEED_KEY)]
    panels: Groups = defaultdict(list)
    for row in rows:
        panels[tuple((k, row.get(k)) for k in others)].append(row)
    written: list[Path] = []
    for field, which in (("honest_mean_acc", "mean"), ("honest_min_acc", "worst")):
        for panel, panel_rows in panels.items():
            table = np.full((len(rules), len(attacks)), math.nan)
            for i, rule in enumerate(rules):
                for j, attack in enumerate(attacks):
                    values = [
                        r[field]
                        for r in panel_rows
                        if r["rule.name"] == rule
                        and r["byzantine.attack"] == attack
                        and r.get(field) is not None
                    ]
                    if values:
                        table[i, j] = 100 * float(np.mean(values))
            fig, ax = plt.subplots(figsize=(1.1 * len(attacks) + 2.5, 0.45 * len(rules) + 1.8))
            image = ax.imshow(table, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
            ax.set_xticks(range(len(attacks)), attacks, rotation=35, ha="right")
            ax.set_yticks(range(len(rules)), rules)
            for i in range(len(rules)):
                for j in range(len(attacks)):
                    if not math.isnan(table[i, j]):
                        ax.text(j, i, f"{table[i, j]:.1f}", ha="center", va="center", fontsize=8)
            fig.colorbar(image, ax=ax, label=f"{which} honest accuracy (%)")
            suffix = ("_" + "_".join(str(v) for _, v in panel)) if panel else ""
            where = f" — {_label(panel)}" if panel else ""
            ax.set_title(f"{title}: {which} honest accuracy{where}")
            fig.tight_layout()
            written += _save(fig, directory / f"heatmap_{which}{suffix}", formats)
    return written


def _plot_topologies(
    directory: Path,
    groups: Groups,
    formats: Sequence[str],
    title: str,
) -> list[Path]:
    plt = _pyplot()
    labels, accs, dists = [], [], []
    for group, runs in sorted(groups.items(), key=lambda g: str(g[0])):
        acc = [r["honest_mean_acc"] for r in runs if r.get("honest_mean_acc") is not None]
        dist = [r["consensus_distance"] for r in runs if r.get("consensus_distance") is not None]
        labels.append(_label(group))
        accs.append(100 * float(np.mean(acc)) if acc else math.nan)
        dists.append(float(np.mean(dist)) if dist else math.nan)
    from matplotlib.ticker import NullFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * len(labels) + 2))
    bars = left.barh(labels, accs, color="tab:blue")
    left.bar_label(bars, fmt="%.1f", padding=3, fontsize="small")
    low = np.nanmin(accs) if not all(math.isnan(a) for a in accs) else 0.0
    left.set_xlim(max(0.0, low - 10), 100)
    left.set_xlabel("final mean honest accuracy (%)")
    bars = right.barh(labels, dists, color="tab:orange")
    right.bar_label(bars, fmt="%.2g", padding=3, fontsize="small")
    right.set_xscale("log")
    right.xaxis.set_minor_formatter(NullFormatter())
    right.set_xlabel("final consensus distance (log)")
    right.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, directory / "topologies", formats)
