"""Plots of a run directory or of an experiment directory.

For one run (a directory with ``metrics.jsonl``): honest accuracy and consensus distance
per round. For an experiment (a directory with ``experiment.toml`` and run directories, or
a ``summary.jsonl``):

- ``accuracy_vs_rounds``: mean honest accuracy per round, one line per grid point with the
  seeds averaged (a band shows their spread);
- ``consensus_vs_rounds``: the consensus distance, log scale;
- ``heatmap_*``: final honest accuracy (mean over seeds), rules × attacks, when the grid
  varies both ``rule.name`` and ``byzantine.attack``; one for the mean peer, one for the
  worst peer;
- ``topologies``: final accuracy (bars from 0 to 100%) and consensus distance per
  topology, when the grid varies ``topology.name``;
- ``accuracy_vs_bytes``: mean honest accuracy against the megabytes sent per peer, when
  the grid varies ``network.codec`` or ``topology.name`` (what a bit of accuracy costs).

Every title names the experiment and, on a second line, the settings it holds constant
(peers, rounds, topology, rule, attack, data and any other setting off its default), so
a figure read on its own says what it shows. An experiment that is not finished (an
interrupted sweep) is plotted from the runs that finished: its titles say ``partial: 5 of
8 runs`` and :func:`load_experiment` lists the missing ones.

:func:`draw_directory` returns the matplotlib figures; :func:`plot_directory` writes them
as PNG and SVG.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gossipfl.configfile import read_toml
from gossipfl.errors import ConfigError

Groups = dict[tuple[tuple[str, Any], ...], list[dict[str, Any]]]
"""Runs grouped by their non-seed grid values."""
Drawn = list[tuple[Path, Any]]
"""Figures to write: (path without suffix, matplotlib Figure)."""

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


def is_experiment_directory(directory: Path) -> bool:
    return (directory / "experiment.toml").exists() or (directory / "summary.jsonl").exists()


def draw_directory(path: str | Path) -> Drawn:
    """Every figure that fits ``path`` (a run or an experiment directory), not yet
    written: pairs of (path without suffix, matplotlib Figure). Close them when done."""
    directory = Path(path)
    if is_experiment_directory(directory):
        return draw_experiment(load_experiment(directory))
    if (directory / "metrics.jsonl").exists():
        return draw_run(directory)
    raise ConfigError(
        f"{directory} is neither a run directory (metrics.jsonl) nor an experiment "
        "directory (experiment.toml or summary.jsonl); give the directory `gossipfl "
        "simulate` or `gossipfl experiment run` wrote"
    )


def plot_directory(path: str | Path, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Draw every plot that fits ``path`` and write it in each of ``formats``; return the
    files written. An unfinished experiment is plotted from the runs that finished
    (:func:`load_experiment` says which are missing)."""
    drawn = draw_directory(path)
    plt = _pyplot()
    written: list[Path] = []
    try:
        for base, fig in drawn:
            written += _save(fig, base, formats)
    finally:
        for _, fig in drawn:
            plt.close(fig)
    return written


# ------------------------------------------------------------------ settings in titles


_HEADLINE_PREFIXES = ("topology.", "rule.", "data.", "output.")
_HEADLINE_KEYS = {"peers", "rounds", SEED_KEY, "byzantine.count", "byzantine.attack"}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _params(flat: dict[str, Any], section: str, skip: Iterable[str] = ("name",)) -> str:
    values = [
        f"{k.removeprefix(section + '.')}={v}"
        for k, v in flat.items()
        if k.startswith(section + ".") and k.removeprefix(section + ".") not in skip
    ]
    return f" ({', '.join(values)})" if values else ""


def describe_settings(config: Any, varied: Iterable[str] = (), *, seeds: int = 1) -> str:
    """The settings of ``config`` (a :class:`~gossipfl.simulation.SimulationConfig`) that
    the dotted keys in ``varied`` leave constant, in words: peers, rounds, topology, rule,
    Byzantine peers and attack, data, then every other setting that differs from its
    default. ``seeds`` > 1: the figures average that many seeds."""
    from gossipfl.simulation import SimulationConfig

    varied = set(varied)
    # "task.params.lr" in a grid is "task.lr" in the flattened config (and so for the
    # rule's, topology's and attack's parameters)
    varied |= {v.replace(".params.", ".", 1) for v in varied if ".params." in v}

    def free(*prefixes: str) -> bool:
        return not any(v == p or v.startswith(p + ".") for v in varied for p in prefixes)

    flat = _flatten(config.to_dict())
    default = _flatten(SimulationConfig().to_dict())
    parts: list[str] = []
    if free("peers"):
        parts.append(f"{config.peers} peers")
    if free("rounds"):
        parts.append(f"{config.rounds} rounds")
    if free("topology"):
        parts.append(f"topology {config.topology.name}{_params(flat, 'topology')}")
    if free("rule"):
        parts.append(f"rule {config.rule.name}{_params(flat, 'rule')}")
    byz = config.byzantine
    standard = {"count", "attack", "degree", "omniscient", "lag"}
    if free("byzantine.count") and byz.count == 0 and free("byzantine.attack"):
        parts.append("no Byzantine peers")
    else:
        words = []
        if free("byzantine.count"):
            words.append(f"{byz.count} Byzantine")
        if free("byzantine.attack"):
            words.append(f"attack {byz.attack}{_params(flat, 'byzantine', standard)}")
        if words:
            parts.append(", ".join(words))
    if config.mode == "train" and free("data", "task.name"):
        data = f"data {config.data_label()}, {config.data.partition}"
        if config.data.partition == "dirichlet":
            data += f" α={config.data.alpha:g}"
        parts.append(data)
    if seeds > 1:
        parts.append(f"mean of {seeds} seeds")
    elif free(SEED_KEY):
        parts.append(f"seed {config.seed}")
    for key, value in flat.items():
        section = key.split(".", 1)[0]
        covered = key in _HEADLINE_KEYS or key.startswith(_HEADLINE_PREFIXES)
        if section == "byzantine" and key.split(".", 1)[1] not in standard:
            covered = True  # an attack parameter: named with the attack
        if section == "byzantine" and byz.count == 0:
            covered = True
        if section == "training" and config.mode != "train":
            covered = True
        if covered or not free(key) or default.get(key) == value:
            continue
        parts.append(f"{key}={value}")
    return " · ".join(parts)


def _titled(text: str, subtitle: str, width: int) -> str:
    """``text`` over the settings in ``subtitle``, wrapped between settings (at `` · ``)
    into lines of about ``width`` characters."""
    lines = [text]
    current = ""
    for part in subtitle.split(" · ") if subtitle else []:
        if current and len(current) + 3 + len(part) > width:
            lines.append(current)
            current = part
        else:
            current = f"{current} · {part}" if current else part
    if current:
        lines.append(current)
    return "\n".join(lines)


# ----------------------------------------------------------------------- experiments


@dataclass
class ExperimentData:
    """The finished runs of an experiment directory, as the plots see them."""

    directory: Path
    name: str
    rows: list[dict[str, Any]]
    """One per finished run: ``run_id``, grid values, summary."""
    keys: list[str]
    """The grid's keys."""
    total: int
    """Runs the experiment defines (= ``len(rows)`` when only summary.jsonl is known)."""
    missing: list[str] = field(default_factory=list)
    """Runs not finished (interrupted, failed or not run yet)."""
    config: Any = None
    """The configuration of a finished run (for the constant settings), if known."""

    @property
    def varied(self) -> list[str]:
        """Grid keys that take more than one value among the finished runs."""
        return [k for k in self.keys if len({json.dumps(r.get(k)) for r in self.rows}) > 1]

    @property
    def title(self) -> str:
        if self.missing:
            return f"{self.name} (partial: {len(self.rows)} of {self.total} runs)"
        return self.name

    @property
    def settings(self) -> str:
        """The settings held constant, in words (empty if unknown)."""
        if self.config is None:
            return ""
        seeds = len({json.dumps(r.get(SEED_KEY)) for r in self.rows})
        varied = self.varied
        return describe_settings(self.config, varied, seeds=seeds if SEED_KEY in varied else 1)


def _experiment_file(directory: Path) -> dict[str, Any] | None:
    """The experiment's ``experiment.toml``, if the directory has one."""
    spec_path = directory / "experiment.toml"
    return read_toml(spec_path) if spec_path.exists() else None


def _summary_rows(directory: Path) -> list[dict[str, Any]]:
    path = directory / "summary.jsonl"
    if not path.exists():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def load_experiment(directory: str | Path) -> ExperimentData:
    """The finished runs of an experiment directory.

    With ``experiment.toml`` (written when a sweep starts), the runs it defines are looked
    up in their directories, so an interrupted sweep shows what finished and
    :attr:`ExperimentData.missing` what did not. A directory with only ``summary.jsonl``
    (a copy of the results, without the run directories) is read from that file.
    """
    from gossipfl.experiments.runner import collect_rows
    from gossipfl.experiments.spec import ExperimentSpec
    from gossipfl.simulation import SimulationConfig

    directory = Path(directory)
    data = _experiment_file(directory)
    if data is not None:
        spec = ExperimentSpec.from_dict(data, source=directory / "experiment.toml", check=False)
        points = spec.points()
        rows = collect_rows(points, directory) or _summary_rows(directory)
        finished = {str(r.get("run_id")) for r in rows}
        missing = [p.id for p in points if p.id not in finished]
        configs = {p.id: p.config for p in points}
        config = configs.get(str(rows[0].get("run_id"))) if rows else None
        result = ExperimentData(
            directory, spec.name, rows, list(spec.grid), len(points), missing, config
        )
    else:
        rows = _summary_rows(directory)
        if not rows:
            raise ConfigError(
                f"{directory}/summary.jsonl lists no finished runs; plot a directory that "
                "holds some"
            )
        first = directory / str(rows[0].get("run_id")) / "config.toml"
        config = SimulationConfig.from_toml(first) if first.exists() else None
        keys = [k for k in rows[0] if "." in k or k == SEED_KEY]
        result = ExperimentData(directory, directory.name, rows, keys, len(rows), [], config)
    if not result.rows:
        raise ConfigError(
            f"{directory}: no finished runs to plot yet "
            f"({len(result.missing)} of {result.total} runs missing); run "
            f"`gossipfl experiment run {directory / 'experiment.toml'} --out {directory}` "
            "to run them"
        )
    return result


def _label(values: Iterable[tuple[str, Any]]) -> str:
    return ", ".join(f"{k.removesuffix('.name').rsplit('.', 1)[-1]}={v}" for k, v in values)


def plot_experiment(directory: Path, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    return plot_directory(directory, formats=formats)


def draw_experiment(exp: ExperimentData) -> Drawn:
    """The figures of an experiment (see the module doc)."""
    keys = exp.keys
    varied = exp.varied
    group_keys = [k for k in varied if k != SEED_KEY]
    groups: Groups = defaultdict(list)
    for row in exp.rows:
        groups[tuple((k, row.get(k)) for k in group_keys)].append(row)
    drawn = _plot_curves(exp, groups)
    if "rule.name" in keys and "byzantine.attack" in keys:
        drawn += _plot_heatmaps(exp)
    if "topology.name" in keys:
        drawn += _plot_topologies(exp, groups)
    if "network.codec" in keys or "topology.name" in keys:
        drawn += _plot_vs_bytes(exp, groups)
    return drawn


# --------------------------------------------------------------------------- one run


def plot_run(directory: Path, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    return plot_directory(directory, formats=formats)


def draw_run(directory: Path) -> Drawn:
    """Accuracy (when evaluated) and consensus distance per round of one run; the titles
    name its settings (from its ``config.toml``)."""
    from gossipfl.simulation import SimulationConfig

    rows = read_round_rows(directory)
    if not rows:
        raise ConfigError(f"{directory}/metrics.jsonl holds no round rows")
    settings = ""
    if (directory / "config.toml").exists():
        settings = describe_settings(SimulationConfig.from_toml(directory / "config.toml"))
    title = _titled(directory.name, settings, 85)
    plt = _pyplot()
    drawn: Drawn = []
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
        _finish(ax, "round", "test accuracy (%)", title, ylim=(0, 100))
        drawn.append((directory / "accuracy", fig))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.semilogy([r["round"] + 1 for r in rows], [max(r["consensus_distance"], 1e-30) for r in rows])
    _finish(ax, "round", "consensus distance", title)
    drawn.append((directory / "consensus", fig))
    return drawn


def _finish(
    ax: Any, xlabel: str, ylabel: str, title: str, *, ylim: tuple[float, float] | None = None
) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.figure.tight_layout()


# ------------------------------------------------------------------- experiment figures


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


def _plot_curves(exp: ExperimentData, groups: Groups) -> Drawn:
    plt = _pyplot()
    drawn: Drawn = []
    title = _titled(exp.title, exp.settings, 95)
    for field_name, name, ylabel, log in (
        ("mean_acc", "accuracy_vs_rounds", "mean honest test accuracy (%)", False),
        ("consensus_distance", "consensus_vs_rounds", "consensus distance", True),
    ):
        fig, ax = plt.subplots(figsize=(8, 4.8))
        count = 0
        for group, runs in sorted(groups.items(), key=lambda g: str(g[0])):
            x, mean, std = _mean_curve(runs, exp.directory, field_name)
            if x is None:
                continue
            scale = 100.0 if field_name == "mean_acc" else 1.0
            label = _label(group) or exp.name
            (line,) = ax.plot(x, scale * mean, label=label)
            if len(runs) > 1:
                ax.fill_between(
                    x,
                    scale * (mean - std),
                    scale * (mean + std),
                    alpha=0.15,
                    color=line.get_color(),
                )
            count += 1
        if not count:
            plt.close(fig)
            continue
        if log:
            ax.set_yscale("log")
        _finish(ax, "round", ylabel, title)
        if count > 12:
            ax.legend(fontsize="x-small", ncol=2)
        drawn.append((exp.directory / name, fig))
    return drawn


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


def _plot_vs_bytes(exp: ExperimentData, groups: Groups) -> Drawn:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    count = 0
    for group, runs in sorted(groups.items(), key=lambda g: str(g[0])):
        x, y = _bytes_curve(runs, exp.directory)
        if x is not None:
            ax.plot(x, y, label=_label(group) or exp.name)
            count += 1
    if not count:
        plt.close(fig)
        return []
    ax.set_xscale("log")
    title = _titled(exp.title, exp.settings, 95)
    _finish(ax, "MB sent per peer (log)", "mean honest test accuracy (%)", title)
    return [(exp.directory / "accuracy_vs_bytes", fig)]


def _plot_heatmaps(exp: ExperimentData) -> Drawn:
    plt = _pyplot()
    rows = exp.rows
    rules = list(dict.fromkeys(r["rule.name"] for r in rows))
    attacks = list(dict.fromkeys(r["byzantine.attack"] for r in rows))
    others = [k for k in exp.varied if k not in ("rule.name", "byzantine.attack", SEED_KEY)]
    # Rules and attacks are the axes: the subtitle leaves them out even when one is fixed.
    settings = (
        describe_settings(
            exp.config,
            [*exp.varied, "rule", "byzantine.attack"],
            seeds=len({json.dumps(r.get(SEED_KEY)) for r in rows}),
        )
        if exp.config is not None
        else ""
    )
    panels: Groups = defaultdict(list)
    for row in rows:
        panels[tuple((k, row.get(k)) for k in others)].append(row)
    drawn: Drawn = []
    for field_name, which in (("honest_mean_acc", "mean"), ("honest_min_acc", "worst")):
        for panel, panel_rows in panels.items():
            table = np.full((len(rules), len(attacks)), math.nan)
            for i, rule in enumerate(rules):
                for j, attack in enumerate(attacks):
                    values = [
                        r[field_name]
                        for r in panel_rows
                        if r["rule.name"] == rule
                        and r["byzantine.attack"] == attack
                        and r.get(field_name) is not None
                    ]
                    if values:
                        table[i, j] = 100 * float(np.mean(values))
            width = 1.1 * len(attacks) + 2.5
            fig, ax = plt.subplots(figsize=(max(width, 6.0), 0.45 * len(rules) + 2.2))
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
            heading = f"{exp.title}: {which} honest accuracy{where}"
            ax.set_title(_titled(heading, settings, int(11 * max(width, 6.0))), fontsize="medium")
            fig.tight_layout()
            drawn.append((exp.directory / f"heatmap_{which}{suffix}", fig))
    return drawn


def _plot_topologies(exp: ExperimentData, groups: Groups) -> Drawn:
    """Final accuracy and consensus distance per grid point, as bars. The accuracy axis
    runs from 0 to 100%: a truncated axis turns a 3-point gap into a bar twice as long."""
    plt = _pyplot()
    labels, accs, dists = [], [], []
    for group, runs in sorted(groups.items(), key=lambda g: str(g[0])):
        acc = [r["honest_mean_acc"] for r in runs if r.get("honest_mean_acc") is not None]
        dist = [r["consensus_distance"] for r in runs if r.get("consensus_distance") is not None]
        labels.append(_label(group) or exp.name)
        accs.append(100 * float(np.mean(acc)) if acc else math.nan)
        dists.append(float(np.mean(dist)) if dist else math.nan)
    from matplotlib.ticker import NullFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * len(labels) + 2.4))
    bars = left.barh(labels, accs, color="tab:blue")
    left.bar_label(bars, fmt="%.1f", label_type="center", color="white", fontsize="small")
    left.set_xlim(0, 100)
    left.set_xlabel("final mean honest accuracy (%)")
    bars = right.barh(labels, dists, color="tab:orange")
    right.bar_label(bars, fmt="%.2g", padding=3, fontsize="small")
    right.set_xscale("log")
    right.xaxis.set_minor_formatter(NullFormatter())
    right.set_xlabel("final consensus distance (log)")
    right.set_yticks([])
    fig.suptitle(_titled(exp.title, exp.settings, 130), fontsize="medium")
    fig.tight_layout()
    return [(exp.directory / "topologies", fig)]
