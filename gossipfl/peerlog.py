"""Warnings about what a remote peer did, rate-limited per peer and kind of event.

A broken or hostile peer can make us refuse thousands of frames, streams or connections a
second. Every refusal is counted (transport stats, peer counters) and the first few are
logged with the peer's ID, so an operator can see who and why; but the log must not become
the attack's amplifier, filling the disk and burying everything else. So each
:class:`PeerWarnings` logs at most ``burst`` warnings per (message, peer) in any ``period``
seconds, and when the next window opens it says how many it left out.

The count of left-out warnings is reported with the first warning of the next window: if
the peer goes quiet, the last count is never logged (the counters still have it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Warnings logged per (message, peer) in one window.
BURST = 5
#: Length of a window, in seconds.
PERIOD = 60.0
#: (message, peer) pairs remembered; the oldest are forgotten first, so a flood of new
#: peer IDs costs bounded memory (at worst a forgotten pair is logged again).
MAX_KEYS = 4096


@dataclass
class _Window:
    start: float
    logged: int = 1
    suppressed: int = 0


class PeerWarnings:
    """A rate limiter for warnings about remote peers. One per component that logs them
    (a transport, a peer runtime), so that two peers in one process do not share a budget.
    """

    def __init__(
        self,
        *,
        burst: int = BURST,
        period: float = PERIOD,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or period <= 0 or max_keys < 1:
            raise ValueError("need burst >= 1, period > 0 and max_keys >= 1")
        self.burst = burst
        self.period = period
        self.max_keys = max_keys
        self._clock = clock
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self.suppressed = 0
        """Warnings left out so far, over all peers."""

    def warn(self, logger: logging.Logger, peer: object, msg: str, *args: object) -> None:
        """``logger.warning(msg, *args)`` unless ``peer`` already had ``burst`` warnings
        with this ``msg`` in the current window."""
        key = (logger.name, msg, str(peer))
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.start < self.period:
            if window.logged < self.burst:
                window.logged += 1
                logger.warning(msg, *args)
            else:
                window.suppressed += 1
                self.suppressed += 1
            return
        left_out = window.suppressed if window is not None else 0
        self._windows.pop(key, None)  # re-inserted last: the dict's order is by age
        self._windows[key] = _Window(start=now)
        while len(self._windows) > self.max_keys:
            del self._windows[next(iter(self._windows))]
        if left_out:
            logger.warning(
                msg + " (%d more like this from the same peer were not logged)",
                *args,
                left_out,
            )
        else:
            logger.warning(msg, *args)
