"""The worker processes of a sweep, and how they are stopped.

A sweep hands its runs to a few long-lived worker processes. Stopping them is the hard
part, and the reason this is not a :class:`concurrent.futures.ProcessPoolExecutor`: a
pool does not say which run each worker is doing, cannot signal its workers, and knows
nothing of the processes *they* start (the fork server and the peer processes of a
``transport = "libp2p"`` run). Here:

- Each worker is **spawned** (a fresh interpreter, BLAS pinned to one thread) and leads
  **its own process group**, which everything it starts joins. Whatever a run leaves
  behind, one ``killpg`` reaches it. (A group of its own also keeps the terminal's Ctrl+C
  away from the workers: the parent decides how they stop.)
- A worker turns **SIGTERM into SIGINT**, so both end a run the same way: a
  ``KeyboardInterrupt`` (delivered safely inside trio) whose ``finally`` blocks stop the
  run's peers and delete its unfinished directory.
- On Linux a worker asks the kernel for **SIGTERM when its parent dies**
  (``PR_SET_PDEATHSIG``), so even a SIGKILLed parent leaves no worker running.
- :meth:`WorkerPool.stop` interrupts the busy workers, gives them ``grace`` seconds, then
  SIGKILLs each worker's whole process group. A second interrupt while it waits cuts the
  wait short; the kills themselves run with SIGINT and SIGTERM blocked.

A run interrupted this way leaves no run directory, so the next ``run_experiment`` runs it
again; runs that finished are kept.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from types import FrameType, TracebackType
from typing import Any

from gossipfl.childenv import SINGLE_THREADED, die_with_parent, environment

logger = logging.getLogger(__name__)

RunFn = Callable[[dict[str, Any], str], "str | None"]
"""``run(config, run_dir)`` -> None, or the run's error as text. Must be picklable (a
module-level function): it is sent to spawned processes."""

STOP_GRACE = 5.0
"""Seconds an interrupted worker gets to clean up (stop its peers, delete its partial
run directory) before its process group is killed."""

EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Task:
    run_id: str
    config: dict[str, Any]
    run_dir: str


@dataclass(frozen=True)
class Outcome:
    run_id: str
    error: str | None
    """None: the run finished; else why not."""
    seconds: float
    """Wall time of the run in its worker (since it was handed out, if the worker died)."""
    node: str | None = None
    """The Ray node that ran it (Ray sweeps only)."""


@dataclass
class _Worker:
    process: Any
    """A started spawn-context :class:`multiprocessing.Process`."""
    conn: Connection
    task: Task | None = None
    since: float = 0.0


class WorkerPool:
    """At most ``size`` worker processes running :data:`RunFn` tasks.

    Use it as a context manager: leaving the block, normally or by an exception (Ctrl+C,
    SIGTERM turned into ``KeyboardInterrupt``), stops every worker and what they started::

        with WorkerPool(2, run) as pool:
            for outcome in pool.run(tasks):
                ...
    """

    def __init__(self, size: int, run: RunFn, *, grace: float = STOP_GRACE) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, got {size}")
        self.size = size
        self.grace = grace
        self._run = run
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self.interrupted: list[str] = []
        """Run ids that were running when the pool was stopped."""

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> list[str]:
        """Run ids being worked on now."""
        return [w.task.run_id for w in self._workers if w.task is not None]

    def pids(self) -> list[int]:
        """Process ids of the live workers (each is also the id of its process group)."""
        return [w.process.pid for w in self._workers]

    def run(
        self, tasks: list[Task], *, started: Callable[[str], None] | None = None
    ) -> Iterator[Outcome]:
        """Hand out ``tasks`` in order, at most :attr:`size` at a time; yield each outcome
        as it comes in. ``started(run_id)`` is called when a task is handed out. A worker
        that dies mid-run (killed, out of memory) fails that run and is replaced."""
        queue = deque(tasks)
        while queue or any(w.task is not None for w in self._workers):
            while queue:
                worker = next((w for w in self._workers if w.task is None), None)
                if worker is None:
                    if len(self._workers) >= self.size:
                        break
                    worker = self._spawn()
                task = queue.popleft()
                worker.task, worker.since = task, time.monotonic()  # busy from now on
                try:
                    worker.conn.send(task)
                except OSError:  # it died while idle: retire it, hand the task to another
                    worker.task = None
                    self._retire(worker)
                    queue.appendleft(task)
                    continue
                if started is not None:
                    started(task.run_id)
            busy = [w for w in self._workers if w.task is not None]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                if worker.conn in ready or worker.process.sentinel in ready:
                    yield self._collect(worker, exited=worker.process.sentinel in ready)

    def _spawn(self) -> _Worker:
        mine, theirs = self._context.Pipe()
        with environment(SINGLE_THREADED):
            process = self._context.Process(
                target=_worker_main,
                args=(theirs, os.getpid(), self._run),
                name="gossipfl-experiment-worker",
            )
            process.start()
        theirs.close()
        worker = _Worker(process, mine)
        self._workers.append(worker)
        return worker

    def _collect(self, worker: _Worker, *, exited: bool) -> Outcome:
        task = worker.task
        assert task is not None
        outcome = None
        try:
            if worker.conn.poll():
                run_id, error, seconds = worker.conn.recv()
                outcome = Outcome(run_id, error, seconds)
        except (EOFError, OSError):
            pass
        worker.task = None
        if exited or outcome is None:
            self._retire(worker)
        if outcome is not None:
            return outcome
        # It died without an answer (killed, out of memory): fail its run.
        code = worker.process.exitcode
        how = (
            f"killed by {signal.Signals(-code).name}"
            if code is not None and code < 0
            else "interrupted"
            if code == EXIT_INTERRUPTED
            else f"exited with status {code}"
        )
        return Outcome(
            task.run_id, f"the worker process running it was {how}", time.monotonic() - worker.since
        )

    def _retire(self, worker: _Worker) -> None:
        """Forget a worker that has exited (or is about to): kill what is left in its
        process group, reap it."""
        self._workers.remove(worker)
        _kill_group(worker)
        worker.process.join()
        worker.conn.close()

    def stop(self, grace: float | None = None) -> None:
        """Stop every worker: idle ones are asked to leave, busy ones are interrupted
        (SIGINT); after ``grace`` seconds (default :attr:`grace`) or a second interrupt,
        each worker's process group is SIGKILLed. Returns once all are reaped."""
        workers, self._workers = self._workers, []
        if not workers:
            return
        self.interrupted = [w.task.run_id for w in workers if w.task is not None]
        grace = self.grace if grace is None else grace
        try:
            for worker in workers:
                if worker.task is None:
                    with contextlib.suppress(OSError):
                        worker.conn.send(None)
                elif _unreaped(worker.process.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.process.pid, signal.SIGINT)
            deadline = time.monotonic() + grace
            pending = [w.process.sentinel for w in workers]
            while pending and (left := deadline - time.monotonic()) > 0:
                for sentinel in wait(pending, left):
                    pending.remove(sentinel)
            if pending:
                logger.warning("%d worker(s) did not stop within %g s: killed", len(pending), grace)
        except KeyboardInterrupt:
            logger.warning("interrupted again: killing the workers now")
        finally:
            with _signals_blocked():
                for worker in workers:
                    _kill_group(worker)
                for worker in workers:
                    worker.process.join()
                    worker.conn.close()


def _unreaped(pid: int) -> bool:
    """True while ``pid`` is our child and not yet reaped (running or a zombie): its
    number cannot have been reused, so it is safe to signal it and its group."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _kill_group(worker: _Worker) -> None:
    """SIGKILL the worker and everything left in its process group (a fork server, the
    peers of a libp2p run). Call before reaping the worker: the zombie keeps its pid (and
    so the group id) from being reused."""
    pid = worker.process.pid
    if not _unreaped(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # in case it had not made its group yet


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM held back (delivered on exit) while the kills run."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# ------------------------------------------------------------------- in the worker


def _worker_main(conn: Connection, parent: int, run: RunFn) -> None:
    """Body of a worker: take tasks until told to stop, the parent goes or a signal."""
    interrupted = False
    try:
        _detach(parent)
        _serve(conn, run)
    except* KeyboardInterrupt:  # bare, or grouped by the nurseries of a trio simulation
        interrupted = True
    if interrupted:
        sys.exit(EXIT_INTERRUPTED)


def _serve(conn: Connection, run: RunFn) -> None:
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return  # the parent is gone
        if task is None:
            return
        start = time.monotonic()
        error = run(task.config, task.run_dir)
        conn.send((task.run_id, error, time.monotonic() - start))


def _detach(parent: int) -> None:
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_as_sigint)
    die_with_parent(parent)


def _sigterm_as_sigint(signum: int, frame: FrameType | None) -> None:
    # Re-raised as SIGINT rather than raising here: inside trio.run (in-process
    # simulations), trio's own SIGINT handler delivers KeyboardInterrupt at a safe point.
    signal.raise_signal(signal.SIGINT)
