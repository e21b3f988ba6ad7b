"""Per-peer budgets: how fast one peer may make us work, whatever its connection allows.

Flow control (Yamux windows, the byte budget of ``events()``) bounds how many bytes a peer
can make us hold; it does not bound how many *frames* or *requests* it makes us process.
A peer sending millions of tiny valid frames stays within every window and still eats the
event loop and the consumer. So each peer gets a token bucket:

- :class:`FrameThrottle`, for gossip frames, applies *backpressure*: a reader that finds
  the peer's bucket empty waits for the next token before delivering the frame, and while
  it waits it does not read, so Yamux flow control slows that peer's sender down. An
  honest burst (a chunked model, a round of heartbeats) fits in the bucket or waits a
  little; a peer that keeps the bucket from refilling (to half) for ``strike_after``
  seconds on end, with frames waiting, is reported (kind ``frame_rate``), once per such
  period.
- :class:`RequestGate`, for one-frame request protocols, *refuses* instead: a request is
  cheap to retry, and a refused stream costs nothing further. It caps both the requests a
  peer has in progress and their rate.

:class:`TokenBucket` is the pure arithmetic, with the clock passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import trio

Report = Callable[[str, str, str], object]
"""``report(peer, kind, detail)``: where a budget reports a peer that broke it."""

MAX_PEERS = 4096
"""Peers whose buckets are remembered; idle ones are forgotten first."""


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second. Taking a token may leave the
    bucket in debt (negative): the caller then waits :meth:`take`'s answer before going on,
    and the next caller's wait includes it, so concurrent takers queue fairly."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not (rate > 0 and burst >= 1):
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last = now

    def refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now

    def take(self, now: float) -> float:
        """Take a token; return how long to wait before using it (0: at once)."""
        self.refill(now)
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def try_take(self, now: float) -> bool:
        """Take a token if one is there now; never goes into debt."""
        self.refill(now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def full(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= self.burst


class _Throttled:
    __slots__ = ("bucket", "since", "waiting")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.since: float | None = None
        self.waiting = 0


class FrameThrottle:
    """Frames per second per peer, with backpressure. See the module docstring."""

    def __init__(self, *, rate: float, burst: int, strike_after: float, report: Report) -> None:
        self.rate = rate
        self.burst = burst
        self.strike_after = strike_after
        self._report = report
        self._peers: OrderedDict[str, _Throttled] = OrderedDict()
        self.waits = 0
        """Frames that had to wait for a token (all peers)."""

    def _state(self, peer: str, now: float) -> _Throttled:
        state = self._peers.get(peer)
        if state is None:
            if len(self._peers) >= MAX_PEERS:
                self._forget_idle(now)
            state = self._peers[peer] = _Throttled(TokenBucket(self.rate, self.burst, now))
        else:
            self._peers.move_to_end(peer)
        return state

    def _forget_idle(self, now: float) -> None:
        for peer, state in list(self._peers.items()):
            if not state.waiting and state.bucket.full(now):
                del self._peers[peer]
        while len(self._peers) >= MAX_PEERS:  # everyone busy: forget the oldest
            self._peers.popitem(last=False)

    async def admit(self, peer: str) -> None:
        """Wait until ``peer`` may deliver one more frame.

        The peer "keeps the bucket empty" from the first frame that has to wait until the
        bucket is half full again (the peer slowed down for a while): an honest burst
        ends, a flood does not."""
        now = trio.current_time()
        state = self._state(peer, now)
        bucket = state.bucket
        bucket.refill(now)
        if bucket.tokens >= bucket.burst / 2:
            state.since = None
        delay = bucket.take(now)
        if delay <= 0:
            return
        self.waits += 1
        if state.since is None:
            state.since = now
        elif now - state.since >= self.strike_after:
            state.since = now
            self._report(
                peer,
                "frame_rate",
                f"sent frames faster than {self.rate:g} per second for "
                f"{self.strike_after:g} s on end",
            )
        state.waiting += 1
        try:
            await trio.sleep(delay)
        finally:
            state.waiting -= 1


class _Requests:
    __slots__ = ("active", "bucket")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.active = 0


class RequestGate:
    """Requests in progress and requests per second, per peer; excess is refused."""

    def __init__(self, *, concurrent: int, rate: float, burst: int) -> None:
        self.concurrent = concurrent
        self.rate = rate
        self.burst = burst
        self._peers: OrderedDict[str, _Requests] = OrderedDict()

    def enter(self, peer: str) -> tuple[str, str] | None:
        """Admit one request from ``peer`` (then call :meth:`leave` once it is done), or
        return why not: ``(kind, detail)``."""
        now = trio.current_time()
        state = self._peers.get(peer)
        if state is None:
            if len(self._peers) >= MAX_PEERS:
                self._forget_idle(now)
            state = self._peers[peer] = _Requests(TokenBucket(self.rate, self.burst, now))
        else:
            self._peers.move_to_end(peer)
        if state.active >= self.concurrent:
            return "requests", f"already has {state.active} requests in progress (the limit)"
        if not state.bucket.try_take(now):
            return "request_rate", f"sent requests faster than {self.rate:g} per second"
        state.active += 1
        return None

    def leave(self, peer: str) -> None:
        state = self._peers.get(peer)
        if state is not None and state.active:
            state.active -= 1

    def _forget_idle(self, now: float) -> None:
        for peer, state in list(self._peers.items()):
            if not state.active and state.bucket.full(now):
                del self._peers[peer]
        while len(self._peers) >= MAX_PEERS:
            self._peers.popitem(last=False)


__all__ = ["FrameThrottle", "Report", "RequestGate", "TokenBucket"]
