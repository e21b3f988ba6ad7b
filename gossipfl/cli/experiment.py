"""``gossipfl experiment``: run sweeps of simulations from an experiment file."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from gossipfl.experiments import ExperimentResult, ExperimentSpec
    from gossipfl.experiments.cluster import RayOptions


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="run a grid of simulations from an experiment file",
        description=(
            "Run every combination of an experiment file's [grid] on top of its [base] "
            "config, in parallel processes. Finished runs are skipped, so an interrupted "
            "sweep resumes where it stopped. See docs/experiments.md for the file format."
        ),
    )
    sub = p.add_subparsers(dest="experiment_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="run (or resume) an experiment")
    run.add_argument("file", metavar="FILE", help="experiment file (TOML)")
    run.add_argument(
        "--workers", type=int, metavar="N", help="parallel processes (default: one per core)"
    )
    run.add_argument("--out", metavar="DIR", help="output directory (default: runs/<name>)")
    run.add_argument("--no-plot", action="store_true", help="skip the plots at the end")
    run.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help=(
            "run the grid points as Ray tasks: on the cluster at ADDRESS (host:port, auto, "
            "ray://host:port), or without ADDRESS on RAY_ADDRESS or a local Ray started for "
            "this sweep; --workers then caps the runs in flight (needs gossipfl[ray])"
        ),
    )
    run.add_argument(
        "--ray-cpus-per-run",
        type=float,
        metavar="N",
        help="CPUs Ray reserves for each run (default: 1)",
    )
    run.add_argument(
        "--ray-retries",
        type=int,
        metavar="N",
        help="times Ray re-runs a run whose worker process or node died (default: 3)",
    )
    run.set_defaults(handler=run_command)
    show = sub.add_parser("show", help="list the runs an experiment file defines")
    show.add_argument("file", metavar="FILE")
    show.set_defaults(handler=show_command)


def run_command(args: argparse.Namespace) -> int:
    """Run the sweep with a live progress bar on a terminal, one plain line per finished
    run otherwise; SIGTERM and SIGINT stop the workers (and their peers) and leave the
    sweep resumable (exit status 128 + the signal number)."""
    import sys
    import time

    from rich.console import Console

    from gossipfl.errors import ConfigError
    from gossipfl.experiments import ExperimentInterrupted, ExperimentSpec, plot_directory
    from gossipfl.experiments.progress import format_seconds

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    ray = _ray_options(args)
    spec = ExperimentSpec.from_toml(args.file)
    console = Console(stderr=True)
    start = time.monotonic()
    with _signals_interrupt() as received:
        try:
            result = _run_with_progress(spec, args, console, ray)
        except ExperimentInterrupted as exc:
            partial = exc.result
            name = signal.Signals(received[0]).name if received else "SIGINT"
            running = f" (stopped: {', '.join(partial.interrupted)})" if partial.interrupted else ""
            print(
                f"gossipfl: interrupted by {name}: {len(partial.rows)} of {partial.total} runs "
                f"finished and kept, {partial.left} to do{running}; run the same command "
                "again to resume",
                file=sys.stderr,
                flush=True,
            )
            return 128 + (received[0] if received else signal.SIGINT)
    elapsed = format_seconds(time.monotonic() - start)
    nodes = len(result.nodes)
    where = f" on {nodes} Ray node{'s' if nodes != 1 else ''}" if nodes else ""
    print(
        f"{spec.name}: {result.ran} ran{where}, {result.skipped} already done, "
        f"{len(result.failed)} failed in {elapsed} → {result.directory}",
        flush=True,
    )
    for run_id, error in result.failed.items():
        print(f"failed {run_id}: {error.strip().splitlines()[-1]}", flush=True)
    if not args.no_plot and result.rows:
        for path in plot_directory(result.directory, formats=("png", "svg")):
            if path.suffix == ".png":
                print(f"plot: {path}", flush=True)
    return 1 if result.failed else 0


def _ray_options(args: argparse.Namespace) -> RayOptions | None:
    """The ``--ray*`` flags as :class:`RayOptions` (None without ``--ray``); checks that
    Ray is installed before anything runs."""
    from gossipfl.errors import ConfigError
    from gossipfl.experiments.cluster import RayOptions, import_ray

    if args.ray is None:
        for flag in ("ray_cpus_per_run", "ray_retries"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} needs --ray")
        return None
    import_ray()
    given = {"cpus_per_run": args.ray_cpus_per_run, "max_retries": args.ray_retries}
    return RayOptions(args.ray or None, **{k: v for k, v in given.items() if v is not None})


def _run_with_progress(
    spec: ExperimentSpec, args: argparse.Namespace, console: Console, ray: RayOptions | None
) -> ExperimentResult:
    """``run_experiment`` with progress output: a live bar when stderr is a terminal; one
    plain line per finished run (status, runs finished/total, run id, headline numbers,
    elapsed, estimate of what is left) on stdout -- or above the bar when stdout is the
    terminal too."""
    import sys

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from gossipfl.experiments import run_experiment
    from gossipfl.experiments.progress import RunEvent, SweepProgress, format_seconds

    live = console.is_terminal
    lines_on_bar = live and sys.stdout.isatty()
    sweep: list[SweepProgress] = []
    skipped: list[str] = []

    def left() -> str:
        if not sweep:
            return ""
        estimate = sweep[0].describe()
        elapsed = f"elapsed {format_seconds(sweep[0].elapsed())}"
        return f"{elapsed}, {estimate}" if estimate else elapsed

    progress = Progress(
        TextColumn(f"[bold]{spec.name}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs"),
        _text_column(left),
        console=console,
        disable=not live,
    )

    def emit(line: str) -> None:
        if lines_on_bar:
            progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, flush=True)

    def on_event(event: RunEvent) -> None:
        if not sweep:
            sweep.append(event.sweep)
            progress.update(task, total=event.sweep.total)
        if event.kind == "skipped":
            skipped.append(event.run_id)
            progress.update(task, completed=event.sweep.finished)
            return
        if skipped:  # once, before the first run of this invocation
            emit(f"kept {len(skipped)} of {event.sweep.total} runs finished earlier")
            skipped.clear()
        if event.kind in ("done", "failed"):
            progress.update(task, completed=event.sweep.finished)
            emit(event.line())

    with progress:
        task = progress.add_task("runs", total=None)
        result = run_experiment(
            spec, out=args.out, workers=args.workers, on_event=on_event, ray=ray
        )
    if skipped:
        emit(f"kept {len(skipped)} of {sweep[0].total} runs finished earlier: nothing to do")
    return result


def _text_column(text: Callable[[], str]) -> Any:
    """A progress column showing ``text()`` (elapsed time and the honest estimate)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class TextOf(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(text(), style="progress.remaining", no_wrap=True, overflow="ellipsis")

    return TextOf()


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[list[int]]:
    """SIGTERM and SIGINT both raise ``KeyboardInterrupt`` for the duration, so the sweep's
    cleanup runs (the default SIGTERM would kill this process on the spot and leave its
    workers running); the list receives the signals seen. Outside the main thread,
    signals are left alone."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def show_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from gossipfl.experiments import ExperimentSpec

    spec = ExperimentSpec.from_toml(args.file)
    points = spec.points()
    table = Table(title=f"{spec.name}: {len(points)} runs")
    table.add_column("run id")
    for key in spec.grid:
        table.add_column(key)
    for point in points:
        table.add_row(point.id, *(str(point.values[k]) for k in spec.grid))
    Console().print(table)
    if spec.description:
        Console().print(spec.description)
    return 0
