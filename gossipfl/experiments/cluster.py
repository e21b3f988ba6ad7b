"""Running a sweep's runs as Ray tasks, on one machine or a cluster.

Ray is optional (``pip install 'gossipfl[ray]'``); nothing here imports it before
:meth:`RayExecutor.__enter__`. A :class:`RayExecutor` stands in for the local
:class:`~gossipfl.experiments.workers.WorkerPool`: the same :class:`Task` in, the same
:class:`Outcome` out, so ``run_experiment`` keeps its resumability, progress events and
summaries unchanged.

- Each run is one Ray task (``num_cpus`` = :attr:`RayOptions.cpus_per_run`) that runs the
  simulation into a temporary directory **on the node that runs it** and returns the
  directory's files to the driver, which writes them under ``<out>/<run id>/`` the way a
  local worker does (assembled under ``.partial``, renamed into place when complete). So
  the nodes need gossipfl installed, not a shared filesystem.
- At most :attr:`RayExecutor.size` tasks are in flight (the cluster's CPUs divided by the
  CPUs per run, unless ``workers`` says otherwise); a run counts as started when it is
  submitted.
- A task whose worker process or node dies is retried by Ray (``max_retries``); a run
  that fails in the simulation is not (it would fail again): it is reported as failed.
- On Ctrl+C the tasks in flight are cancelled (``ray.cancel``: a ``KeyboardInterrupt`` in
  the task, then, after a grace period, a forced kill) and nothing of theirs is written.
- ``ray.init`` connects to ``address`` (``"auto"``, ``host:port`` or ``ray://...``); with
  no address, to ``RAY_ADDRESS`` if set, else to a fresh local Ray started for this
  sweep. ``ray.shutdown`` at the end disconnects, and stops only a Ray we started. If the
  calling program already called ``ray.init``, that connection is used and left open.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from gossipfl.errors import ConfigError
from gossipfl.experiments.workers import STOP_GRACE, Outcome, Task

INSTALL_HINT = "pip install 'gossipfl[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """How ``run_experiment(ray=...)`` uses Ray."""

    address: str | None = None
    """``ray.init`` address: ``"auto"``, ``"host:port"``, ``"ray://host:10001"``; None:
    ``RAY_ADDRESS`` if set, else a fresh local Ray for this sweep."""
    cpus_per_run: float = 1.0
    """CPUs Ray reserves for each run (``num_cpus`` of its task)."""
    max_retries: int = 3
    """Times Ray re-runs a task whose worker process or node died."""

    def __post_init__(self) -> None:
        if not self.cpus_per_run > 0:
            raise ConfigError(f"--ray-cpus-per-run must be positive, got {self.cpus_per_run}")
        if self.max_retries < 0:
            raise ConfigError(f"--ray-retries must be 0 or more, got {self.max_retries}")


def import_ray() -> ModuleType:
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def run_files(config: dict[str, Any]) -> tuple[str | None, dict[str, bytes], float, str]:
    """The body of a Ray task: run one simulation into a temporary directory; return
    (None or the error as text, the run directory's files by relative path, seconds, the
    id of the Ray node)."""
    import ray

    from gossipfl.experiments.runner import _run_one

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gossipfl-ray-") as tmp:
        run_dir = Path(tmp) / "run"
        error = _run_one(config, str(run_dir))
        files: dict[str, bytes] = {}
        if error is None:
            for path in sorted(run_dir.rglob("*")):
                if path.is_file():
                    files[path.relative_to(run_dir).as_posix()] = path.read_bytes()
    node = str(ray.get_runtime_context().get_node_id())
    return error, files, time.monotonic() - start, node


def install_files(run_dir: Path, files: dict[str, bytes]) -> None:
    """Write a run's files to ``run_dir``: under ``.partial`` first, renamed into place
    when all are written (an interrupted write leaves no run directory)."""
    import shutil

    partial = run_dir.with_name(run_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        root = partial.resolve()
        for name, data in files.items():
            target = (root / name).resolve()
            if target == root or not target.is_relative_to(root):
                raise ValueError(f"a run returned a file outside its directory: {name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        shutil.rmtree(run_dir, ignore_errors=True)
        partial.rename(run_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


class RayExecutor:
    """Runs :class:`Task` s as Ray tasks; a context manager like
    :class:`~gossipfl.experiments.workers.WorkerPool` (leaving it cancels what is still
    running and disconnects from Ray)."""

    def __init__(
        self, options: RayOptions, *, size: int | None = None, grace: float = STOP_GRACE
    ) -> None:
        self.options = options
        self.grace = grace
        self._wanted_size = size
        self.size = 1
        self._ray: Any = None
        self._started_ray = False
        self._in_flight: dict[Any, tuple[Task, float]] = {}
        self.interrupted: list[str] = []
        """Run ids that were running when the executor was stopped."""

    def __enter__(self) -> RayExecutor:
        self._ray, self._started_ray = connect(self.options.address)
        ray = self._ray
        cpus = float(ray.cluster_resources().get("CPU", 0))
        fits = int(cpus // self.options.cpus_per_run)
        self.size = max(1, self._wanted_size or fits)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            if self._started_ray:
                disconnect(self._ray)
                self._started_ray = False

    def nodes(self) -> int:
        """Nodes of the cluster that are alive."""
        return sum(1 for node in self._ray.nodes() if node.get("Alive"))

    def run(
        self, tasks: list[Task], *, started: Callable[[str], None] | None = None
    ) -> Iterator[Outcome]:
        """Submit ``tasks`` in order, at most :attr:`size` in flight; yield each outcome
        as it comes in, its files already written to the task's ``run_dir``."""
        if not tasks:
            return
        ray = self._ray
        remote = ray.remote(run_files).options(
            num_cpus=self.options.cpus_per_run,
            max_retries=self.options.max_retries,
            retry_exceptions=False,
        )
        queue = deque(tasks)
        while queue or self._in_flight:
            while queue and len(self._in_flight) < self.size:
                task = queue.popleft()
                self._in_flight[remote.remote(task.config)] = (task, time.monotonic())
                if started is not None:
                    started(task.run_id)
            # a short timeout: Ctrl+C is seen between waits
            ready, _ = ray.wait(list(self._in_flight), num_returns=1, timeout=0.5)
            for ref in ready:
                task, since = self._in_flight.pop(ref)
                yield self._collect(ref, task, since)

    def _collect(self, ref: Any, task: Task, since: float) -> Outcome:
        ray = self._ray
        try:
            error, files, seconds, node = ray.get(ref)
        except ray.exceptions.RayError as exc:  # retries used up, node lost, cancelled
            lines = str(exc).strip().splitlines()
            return Outcome(
                task.run_id,
                f"Ray: {lines[0] if lines else type(exc).__name__}",
                time.monotonic() - since,
            )
        if error is None:
            try:
                install_files(Path(task.run_dir), files)
            except OSError as exc:
                error = f"its files could not be written to {task.run_dir}: {exc}"
        return Outcome(task.run_id, error, seconds, node)

    def stop(self, grace: float | None = None) -> None:
        """Cancel the tasks in flight: a ``KeyboardInterrupt`` in each (its ``finally``
        blocks stop its peers), then after ``grace`` seconds a forced kill."""
        if not self._in_flight or self._ray is None:
            return
        ray = self._ray
        refs = list(self._in_flight)
        self.interrupted = [task.run_id for task, _ in self._in_flight.values()]
        self._in_flight.clear()
        grace = self.grace if grace is None else grace
        try:
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            _, left = ray.wait(refs, num_returns=len(refs), timeout=grace)
        except KeyboardInterrupt:
            left = refs
        for ref in left:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)


def connect(address: str | None) -> tuple[ModuleType, bool]:
    """``ray``, connected to ``address`` (None: ``RAY_ADDRESS`` if set, else a fresh local
    Ray), and whether this call connected it (False: the program had already called
    ``ray.init``; leave that connection open). Undo with :func:`disconnect`."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    options: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False}
    if address == "local":
        options["include_dashboard"] = False
    _check_reachable(address)
    try:
        with _keep_signal_handlers():  # ray.init makes SIGTERM exit the process
            ray.init(address=address, **options)
    except ConnectionError as exc:
        raise ConfigError(f"--ray {address}: cannot connect to Ray: {exc}") from None
    return ray, True


def disconnect(ray: ModuleType) -> None:
    """Disconnect from Ray (and stop a local Ray that :func:`connect` started)."""
    with _keep_signal_handlers():
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """For a ``host:port`` address, fail at once if nothing listens there (``ray.init``
    would retry for minutes)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not (host and port.isdigit()):
        raise ConfigError(
            f"--ray {address}: expected host:port (the head's --port), auto or ray://host:port"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(
            f"--ray {address}: no Ray head answers there ({exc.strerror or exc}); start one "
            f"with 'ray start --head --port={port}'"
        ) from None


@contextlib.contextmanager
def _keep_signal_handlers() -> Iterator[None]:
    """Restore the SIGINT and SIGTERM handlers that Ray replaces (its SIGTERM handler
    exits on the spot, which would skip the sweep's cleanup)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)
