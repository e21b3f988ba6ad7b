"""A simulation's trio scheduler, made to choose the same order every run.

trio runs the tasks that became runnable together in a random order (it reverses each
batch with probability 1/2, so that no program comes to rely on an order it never
promised). A simulation runs on a virtual clock, so many events happen at one virtual
instant; most of the runtime's work does not depend on their order (the metrics of a run
are the same under every order, which the sharded runner's bit-for-bit tests check), but
some does: when churned peers rejoin, which neighbour's redial and which model lands
first, at one instant, decides whether a model counts as late. Before this, six runs of
one churn configuration gave five different results.

So a simulation seeds trio's scheduling random generator from its own seed for the
duration of the run (and gives the generator its state back after): the same
configuration then replays the same order, and another seed another one. This reaches
into trio's internals (``trio._core._run._r``); should they change, it does nothing and
says so in a warning, and runs with churn are then not reproducible bit for bit.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Iterator
from typing import Any

from gossipfl._mockclock import MockClock


def _scheduler_random() -> random.Random | None:
    try:
        from trio._core import _run
    except ImportError:  # pragma: no cover - trio reorganised
        return None
    rng = getattr(_run, "_r", None)
    return rng if isinstance(rng, random.Random) else None


@contextlib.contextmanager
def seeded_scheduler(seed: int | str) -> Iterator[None]:
    """Run the block (one ``trio.run``) with trio's scheduling order drawn from ``seed``."""
    rng = _scheduler_random()
    if rng is None:
        warnings.warn(
            "cannot seed trio's scheduler (its internals changed): simulations with churn "
            "may not be reproducible bit for bit",
            RuntimeWarning,
            stacklevel=3,
        )
        yield
        return
    state = rng.getstate()
    rng.seed(f"gossipfl-scheduler:{seed}")
    try:
        yield
    finally:
        rng.setstate(state)


def virtual_clock() -> MockClock:
    """A simulation's clock: trio's :class:`~trio.testing.MockClock`, jumping to the next
    deadline whenever every task waits (``autojump_threshold=0``), whose time is read
    without the real clock while its rate is 0.

    Why: at rate 0 the mock clock's time is its virtual base plus ``0.0 * (real -
    real_base)``, the base itself, bit for bit; but it read ``time.perf_counter`` and did
    that arithmetic on every call (150 ns against 50), and a simulation asks for the time
    about 30 times per peer and round (the runtime, the sync core, the network, trio's
    run loop). MockClock cannot be subclassed (trio marks it final), so the instance gets
    its own ``current_time``. At any other rate the mock clock's own computation runs.
    This reads two attributes of trio's class (``_rate``, ``_virtual_base``);
    ``tests/test_simulation.py`` checks that the two readings agree, so a trio that
    renames them fails a test, not a run.
    """
    clock = MockClock(autojump_threshold=0)
    measured = MockClock.current_time
    state: Any = clock  # its private attributes, untyped

    def current_time() -> float:
        if state._rate == 0.0:
            base: float = state._virtual_base
            return base
        return measured(clock)

    clock.current_time = current_time  # type: ignore[method-assign]
    return clock


__all__ = ["seeded_scheduler", "virtual_clock"]
