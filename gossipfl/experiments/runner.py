"""Running an experiment: every grid point, in parallel processes, resumably.

Each run is an ordinary simulation written to ``<out>/<run id>/`` (the same files as
``gossipfl simulate``). A run directory is assembled under a temporary name and renamed
into place only when complete, so a sweep that was interrupted -- Ctrl+C, SIGTERM, a
crash, a reboot -- resumes by skipping exactly the runs whose directory exists. When all
runs are done (or the sweep is interrupted), ``summary.jsonl`` and ``summary.csv`` list
one row per finished run: its grid values and its headline metrics.

Runs go to worker processes (:mod:`gossipfl.experiments.workers`; one per core by
default, one at a time for libp2p runs, which already use a process per peer): a
simulation is single-threaded Python, so processes are what buys parallelism, and a
process can be stopped for sure. On ``KeyboardInterrupt`` (Ctrl+C; the CLI turns SIGTERM
into one too) the workers and everything they started are stopped within a few seconds,
and :class:`ExperimentInterrupted` reports what finished.

With ``run_experiment(ray=RayOptions(...))`` (``gossipfl experiment run --ray``) the runs
are Ray tasks instead, on one machine or a cluster (:mod:`gossipfl.experiments.cluster`):
the same run directories, summaries, events and resumption.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gossipfl.experiments.progress import RunEvent, SweepProgress
from gossipfl.experiments.spec import ExperimentSpec, RunPoint
from gossipfl.experiments.workers import Task, WorkerPool

if TYPE_CHECKING:
    from gossipfl.experiments.cluster import RayExecutor, RayOptions

ProgressFn = Callable[[str, str], None]
"""Called as ``progress(run_id, status)`` with status ``done``, ``skipped`` or ``failed``."""
EventFn = Callable[[RunEvent], None]
"""Called with every :class:`~gossipfl.experiments.progress.RunEvent` (runs skipped,
started, done, failed), which carries the sweep's progress and time estimate."""


@dataclass
class ExperimentResult:
    spec: ExperimentSpec
    directory: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """run id -> error message"""
    total: int = 0
    """Runs the experiment defines."""
    interrupted: list[str] = field(default_factory=list)
    """Runs that were running when the sweep was interrupted (they run again next time)."""
    nodes: dict[str, int] = field(default_factory=dict)
    """Ray sweeps: node id -> runs of this invocation it ran."""

    @property
    def left(self) -> int:
        """Runs not finished: never started, interrupted or failed."""
        return self.total - len(self.rows)


class ExperimentInterrupted(KeyboardInterrupt):
    """``run_experiment`` was interrupted; its workers are stopped, the summary files list
    the runs that finished, and :attr:`result` says what happened. A ``KeyboardInterrupt``,
    so code that handles Ctrl+C handles this too."""

    def __init__(self, result: ExperimentResult) -> None:
        super().__init__(f"interrupted: {len(result.rows)} of {result.total} runs finished")
        self.result = result


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def run_experiment(
    spec: ExperimentSpec,
    *,
    out: str | Path | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    on_event: EventFn | None = None,
    ray: RayOptions | None = None,
) -> ExperimentResult:
    """Run every grid point of ``spec`` not already done under ``out`` (default
    ``runs/<name>``), then write the summary files.

    ``progress(run_id, status)`` hears of each run finished (or found finished);
    ``on_event`` gets a :class:`~gossipfl.experiments.progress.RunEvent` for that and for
    each run started, with the sweep's counts and time estimate. A failed run does not
    stop the others (see :attr:`ExperimentResult.failed`). On ``KeyboardInterrupt`` the
    workers are stopped (a few seconds at most), the summaries of the finished runs are
    written and :class:`ExperimentInterrupted` is raised.

    With ``ray`` (:class:`~gossipfl.experiments.cluster.RayOptions`) the runs are Ray
    tasks instead of local processes (:mod:`gossipfl.experiments.cluster`), and
    ``workers`` caps the runs in flight (default: what the cluster's CPUs fit); the run
    directories, summaries, events and resumption are the same."""
    directory = Path(out) if out is not None else Path("runs") / spec.name
    directory.mkdir(parents=True, exist_ok=True)
    _write_experiment_file(spec, directory)
    points = spec.points()
    preflight(points)
    result = ExperimentResult(spec, directory, total=len(points))
    todo = [p for p in points if not is_done(p, directory / p.id)]
    executor: WorkerPool | RayExecutor
    if ray is not None:
        from gossipfl.experiments.cluster import RayExecutor

        executor = RayExecutor(ray, size=workers)
    else:
        n_workers = max(1, min(workers or default_workers(), len(todo) or 1))
        if any(p.config.transport == "libp2p" for p in todo):
            n_workers = 1  # each libp2p run already uses one process per peer
        executor = WorkerPool(n_workers, _run_one)
    sweep = SweepProgress(points, executor.size)
    by_id = {p.id: p for p in points}

    def tell(kind: str, point: RunPoint, **details: Any) -> None:
        sweep.record(kind, point.id, details.get("seconds"))
        if progress is not None and kind != "started":
            progress(point.id, kind)
        if on_event is not None:
            on_event(RunEvent(kind, point, sweep, **details))

    waiting = {p.id for p in todo}
    for point in points:
        if point.id not in waiting:
            result.skipped += 1
            summary = read_summary(directory / point.id)
            tell("skipped", point, seconds=_wall(summary), summary=summary)
    tasks = [Task(p.id, p.config.to_dict(), str(directory / p.id)) for p in todo]
    try:
        with executor if tasks else contextlib.nullcontext(executor):  # no Ray to start
            sweep.workers = max(1, min(executor.size, len(tasks) or 1))
            for outcome in executor.run(tasks, started=lambda i: tell("started", by_id[i])):
                point = by_id[outcome.run_id]
                if outcome.node is not None:
                    result.nodes[outcome.node] = result.nodes.get(outcome.node, 0) + 1
                if outcome.error is None:
                    result.ran += 1
                    summary = read_summary(directory / point.id)
                    tell("done", point, seconds=outcome.seconds, summary=summary)
                else:
                    result.failed[point.id] = outcome.error
                    tell("failed", point, seconds=outcome.seconds, error=outcome.error)
    except KeyboardInterrupt as exc:
        result.interrupted = executor.interrupted
        result.rows = collect_rows(points, directory)
        write_summaries(result.rows, directory)
        raise ExperimentInterrupted(result) from exc
    result.rows = collect_rows(points, directory)
    write_summaries(result.rows, directory)
    return result


def _write_experiment_file(spec: ExperimentSpec, directory: Path) -> None:
    """``experiment.toml`` next to the runs: what they are, for a later resume or plot
    (also of an interrupted sweep)."""
    target = directory / "experiment.toml"
    if spec.source is None:
        target.write_text(spec.to_toml(), encoding="utf-8")
    elif not (target.exists() and target.samefile(spec.source)):
        shutil.copyfile(spec.source, target)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """A run's ``summary.json``, or None if it cannot be read."""
    try:
        data = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _wall(summary: dict[str, Any] | None) -> float | None:
    wall = (summary or {}).get("wall_s")
    return float(wall) if isinstance(wall, int | float) else None


def is_done(point: RunPoint, run_dir: Path) -> bool:
    """A run is done if its directory is complete and was made from the same config: after
    an edit of the experiment file, the affected runs run again."""
    from gossipfl.errors import ConfigError
    from gossipfl.simulation import SimulationConfig

    if not (run_dir / "summary.json").exists():
        return False
    try:
        saved = SimulationConfig.from_toml(run_dir / "config.toml")
    except ConfigError:
        return False
    return saved.to_dict() == point.config.to_dict()


def preflight(points: list[RunPoint]) -> None:
    """Refuse a sweep with an impossible grid point before running any of it: build each
    distinct topology once and check the rule against every honest node."""
    from gossipfl.errors import ConfigError
    from gossipfl.simulation.runner import build_topology_for, check_rule_fits

    seen: set[str] = set()
    for point in points:
        cfg = point.config
        key = json.dumps(
            [
                cfg.topology.name,
                cfg.topology.params,
                cfg.peers,
                cfg.seed,
                cfg.protocol,
                cfg.network.epidemic_s,
                cfg.rule.name,
                cfg.rule.params,
                cfg.byzantine.count,
                cfg.byzantine.degree,
            ],
            sort_keys=True,
        )
        if key in seen:
            continue
        seen.add(key)
        try:
            check_rule_fits(cfg, build_topology_for(cfg), cfg.peers)
        except ConfigError as exc:
            raise ConfigError(f"grid point {point.id}: {exc}") from None


def _run_one(config: dict[str, Any], run_dir: str) -> str | None:
    """Run one simulation into ``run_dir``; return None, or the error as text."""
    from gossipfl.errors import GossipflError, leaf_errors
    from gossipfl.simulation import SimulationConfig, write_run
    from gossipfl.simulation.processes import simulate

    final = Path(run_dir)
    partial = final.with_name(final.name + ".partial")
    try:
        cfg = SimulationConfig.from_dict(config)
        result = simulate(cfg)
        shutil.rmtree(partial, ignore_errors=True)
        write_run(result, partial, plot=cfg.output.plot)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    except Exception as exc:
        leaves = list(leaf_errors(exc))
        if all(isinstance(leaf, GossipflError) for leaf in leaves):
            return str(leaves[0])  # a simulation error (raised inside a nursery, maybe)
        return traceback.format_exc(limit=8)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return None


def collect_rows(points: list[RunPoint], directory: Path) -> list[dict[str, Any]]:
    """One row per finished run (:func:`is_done`): its id, its grid values, then its
    summary."""
    rows: list[dict[str, Any]] = []
    for point in points:
        if not is_done(point, directory / point.id):
            continue
        summary = read_summary(directory / point.id)
        if summary is None:
            continue
        row: dict[str, Any] = {"run_id": point.id, **point.values}
        row.update({k: v for k, v in summary.items() if k not in row})
        rows.append(row)
    return rows


def write_summaries(rows: list[dict[str, Any]], directory: Path) -> None:
    with (directory / "summary.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    columns: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key not in columns and not isinstance(value, dict | list):
                columns.append(key)
    with (directory / "summary.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
