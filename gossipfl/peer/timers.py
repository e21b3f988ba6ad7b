"""One timer task for every peer of a trio run: batched wake-ups for simulations.

A peer that trains inline (simulations: ``threads = False``) waits on two timers per
round: the simulated end of its local step and the round's deadline. Waiting with
``trio.move_on_at`` costs a cancel scope per wait and, when it fires, a ``Cancelled``
exception raised and caught in the peer's task: about 20 µs of CPU each, measured with
1,024 peers on trio's ``MockClock``, against 4 µs for a wake-up by a channel. Here the run
keeps one heap of timers and one system task that sleeps until the earliest; when a time
comes, it posts a tick to each peer whose timer is due. The peer then checks its own
timers (a tick for a timer since cleared or moved later is ignored), so a timer never
needs to be removed from the heap.

The heap is per trio run (:class:`trio.lowlevel.RunVar`), started on first use.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import trio

Tick = Callable[[], None]


class TimerWheel:
    """Calls each registered ``tick`` once its time has come (on trio's clock)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Tick]] = []
        self._seq = itertools.count()
        self._wakeup = trio.Event()
        self._now = trio.lowlevel.current_clock().current_time

    def add(self, at: float, tick: Tick) -> None:
        """Call ``tick()`` at trio time ``at`` (soon, if that has passed)."""
        heapq.heappush(self._heap, (at, next(self._seq), tick))
        if self._heap[0][0] == at:  # the new timer is due first: re-arm the sleep
            self._wakeup.set()

    async def run(self) -> None:
        heap = self._heap
        while True:
            if not heap:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            at = heap[0][0]
            if at > self._now():
                with trio.move_on_at(at):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            while heap and heap[0][0] <= at:  # everything due now, in order
                heapq.heappop(heap)[2]()


_WHEEL: trio.lowlevel.RunVar[TimerWheel] = trio.lowlevel.RunVar("gossipfl_timer_wheel")


def timer_wheel() -> TimerWheel:
    """This trio run's wheel, its task started on first use."""
    try:
        return _WHEEL.get()
    except LookupError:
        wheel = TimerWheel()
        _WHEEL.set(wheel)
        trio.lowlevel.spawn_system_task(wheel.run, name="gossipfl timer wheel")
        return wheel
