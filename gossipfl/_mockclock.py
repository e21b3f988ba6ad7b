"""trio's ``MockClock`` and ``wait_all_tasks_blocked`` without importing ``trio.testing``.

Both live in ``trio._core``; ``trio.testing`` re-exports them beside helpers that import
pytest where it is installed (``trio.testing.RaisesGroup``): ~0.1 s of every import of
the peer runtime in a development install, inside a sharded simulation's start-up (its
fork server imports the runtime before the shards can start). Here they are taken from
where they are defined, and from ``trio.testing`` should trio move them (``the same
objects`` is a test: ``tests/test_simulation.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # trio's stubs (trio-typing) know only the public names
    from trio.testing import MockClock, wait_all_tasks_blocked
else:
    try:
        from trio._core import MockClock, wait_all_tasks_blocked
    except ImportError:  # pragma: no cover - trio reorganised
        from trio.testing import MockClock, wait_all_tasks_blocked

__all__ = ["MockClock", "wait_all_tasks_blocked"]
