"""Helpers for tests that run real ``gossipfl start`` processes.

Like :mod:`gossipfl.transport.libp2p.testing`, this ships with the library so that tests
elsewhere (and users' own integration tests) can drive daemons: start one as a command,
read its banner, follow its ``metrics.jsonl``, wait for a condition with a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from gossipfl.daemon.metrics import METRICS_FILE, read_metrics
from gossipfl.errors import GossipflError

T = TypeVar("T")


class Timeout(GossipflError):
    """A condition a test waited for did not happen in time."""


def wait_for(
    condition: Callable[[], T | bool | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    failed: Callable[[], str | None] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy (returned); raise
    :class:`Timeout` naming ``what`` after ``timeout`` seconds. ``failed`` is checked
    each time too: a non-empty message aborts the wait at once (a process died)."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value  # type: ignore[return-value]
        problem = failed() if failed is not None else None
        if problem:
            raise Timeout(f"gave up waiting for {what}: {problem}")
        if time.monotonic() > end:
            raise Timeout(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)


def metrics(home: Path, state: str = "state") -> list[dict[str, Any]]:
    """The rows of a daemon's ``metrics.jsonl``."""
    return read_metrics(home / state / METRICS_FILE)


def rounds_done(home: Path, state: str = "state") -> int:
    """How many rounds the daemon in ``home`` has completed (the last round + 1)."""
    rows = [r for r in metrics(home, state) if r.get("kind") == "round"]
    return max((int(r["round"]) for r in rows), default=-1) + 1


@dataclass
class Daemon:
    """A ``gossipfl start`` subprocess and what it printed."""

    home: Path
    process: subprocess.Popen[str]
    banner: dict[str, list[str]] = field(default_factory=dict)
    stderr_path: Path | None = None

    @property
    def peer_id(self) -> str:
        return self.banner["peer id"][0]

    @property
    def addresses(self) -> list[str]:
        return self.banner["listening"]

    @property
    def join(self) -> str:
        return self.banner["join with"][0]

    def stderr(self) -> str:
        if self.stderr_path is None:
            return ""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def died(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        return f"{self.home.name} exited with {code}: {self.stderr()[-2000:]}"


def start_daemon(
    home: Path,
    *args: str,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
    verbose: int = 0,
) -> Daemon:
    """Run ``gossipfl start --home HOME ARGS...`` (optionally behind ``prefix``, e.g.
    ``ip netns exec NS``; with ``verbose``, ``gossipfl -v``: info logs, twice: debug) and
    return once its banner has been printed. stderr goes to ``HOME/stderr.log``."""
    home.mkdir(parents=True, exist_ok=True)
    err_path = home / "stderr.log"
    err: IO[str] = err_path.open("w", encoding="utf-8")
    flags = ["-v"] * verbose
    command = [*prefix, sys.executable, "-m", "gossipfl", *flags, "start", "--home", str(home)]
    command += args
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    err.close()
    daemon = Daemon(home, process, stderr_path=err_path)
    assert process.stdout is not None
    end = time.monotonic() + timeout
    label = ""
    for line in process.stdout:
        if line[:1].strip() and ":" in line:
            label, _, value = line.partition(":")
            daemon.banner.setdefault(label.strip(), []).append(value.strip())
        elif label and line.strip():
            daemon.banner[label.strip()].append(line.strip())
        if "join with" in daemon.banner:
            return daemon
        if time.monotonic() > end:
            break
    process.kill()
    process.wait()
    raise Timeout(f"no banner from gossipfl start in {home}: {err_path.read_text()[-2000:]}")


def start_daemons(
    *starts: tuple[Path, Sequence[str]],
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    prefixes: Sequence[Sequence[str]] | None = None,
    verbose: int = 0,
) -> list[Daemon]:
    """:func:`start_daemon` for each ``(home, args)`` at once (one thread each), in the
    order given: a process's start-up is mostly imports (seconds with torch), and peers
    that join the same job need not wait for each other's. ``prefixes``: one per start.
    If any fails, the others are killed and its error is raised."""
    from concurrent.futures import ThreadPoolExecutor

    if prefixes is not None and len(prefixes) != len(starts):
        raise ValueError("give one prefix per start")
    with ThreadPoolExecutor(max(1, len(starts)), thread_name_prefix="start-daemon") as pool:
        futures = [
            pool.submit(
                start_daemon,
                home,
                *args,
                timeout=timeout,
                env=env,
                prefix=prefixes[i] if prefixes is not None else (),
                verbose=verbose,
            )
            for i, (home, args) in enumerate(starts)
        ]
    errors = [e for f in futures if (e := f.exception()) is not None]
    if errors:
        kill_all([f.result() for f in futures if f.exception() is None])
        raise errors[0]
    return [f.result() for f in futures]


def stop_daemon(daemon: Daemon, sig: int, *, timeout: float = 10.0) -> tuple[int, float]:
    """Send ``sig`` and wait for the exit; return (exit status, seconds it took)."""
    start = time.monotonic()
    daemon.process.send_signal(sig)
    code = daemon.process.wait(timeout=timeout)
    return code, time.monotonic() - start


def kill_all(daemons: Sequence[Daemon | None]) -> None:
    """SIGKILL whatever is still running (test cleanup)."""
    for d in daemons:
        if d is not None and d.process.poll() is None:
            d.process.kill()
            d.process.wait()
        if d is not None and d.process.stdout is not None:
            d.process.stdout.close()


__all__ = [
    "Daemon",
    "Timeout",
    "kill_all",
    "metrics",
    "rounds_done",
    "start_daemon",
    "start_daemons",
    "stop_daemon",
    "wait_for",
]
