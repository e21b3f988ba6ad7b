"""Small background jobs of the transport: resetting a stream, closing a banned peer's
connections.

Limits are checked where py-libp2p hands us bytes, often inside synchronous code that
holds Yamux's locks; the remedy (an RST frame, a closed connection) needs I/O, so it is
started as a task here. The tasks run in a nursery that the transport opens with its host
and closes with it: nothing outlives the transport.

The nursery is wrapped in its own cancel scope, so that closing it cancels only these
jobs, never the code that opened the transport. Every job is guarded: an exception is
logged, never raised into the nursery (which would cancel its siblings and the host).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    # libp2p depends on trio-typing, whose trio-stubs shadow trio's own annotations for
    # mypy and lack trio.TaskStatus (as in gossipfl.simulation.runner).
    from trio_typing import TaskStatus

logger = logging.getLogger(__name__)

Job = Callable[[], Awaitable[object]]


class TaskGroup:
    """Start with ``await nursery.start(group.run)``; :meth:`close` ends it."""

    def __init__(self, *, max_jobs: int = 10_000) -> None:
        self.max_jobs = max_jobs
        self.running = 0
        self.refused = 0
        """Jobs not started: the group was closed, or ``max_jobs`` were running."""
        self._nursery: trio.Nursery | None = None
        self._scope = trio.CancelScope()
        self._closed = False

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()

    def spawn(self, job: Job, name: str = "") -> bool:
        """Start ``job()`` in the background; ``False`` if it was not started (closed, or
        too many running: the caller has a fallback or the work no longer matters)."""
        nursery = self._nursery
        if self._closed or nursery is None or self.running >= self.max_jobs:
            self.refused += 1
            return False
        self.running += 1
        nursery.start_soon(self._guarded, job, name or getattr(job, "__name__", "job"))
        return True

    async def _guarded(self, job: Job, name: str) -> None:
        try:
            await job()
        except Exception:
            logger.exception("background job %s failed", name)
        finally:
            self.running -= 1

    def close(self) -> None:
        """Cancel every job and stop accepting new ones. Idempotent."""
        self._closed = True
        self._scope.cancel()


__all__ = ["TaskGroup"]
