"""Counting, logging and scoring the limits remote peers break; deciding their bans.

One :class:`Policing` per transport. Every refusal of the transport's guards and budgets
(and of the layers above it, through ``Libp2pTransport.penalize``) comes here as a
violation with a *kind*. It is

- counted, per peer and kind (``violations``, for metrics and tests);
- logged at WARNING with the peer ID, at most a few times a minute per peer and kind
  (:class:`~gossipfl.peerlog.PeerWarnings`): our loggers are visible under the CLI's
  default logging, py-libp2p's are not;
- added to the peer's score (:mod:`gossipfl.peerscore`). When the score reaches the
  policy's threshold the peer is banned: that is logged (always: bans are rare and
  matter), and ``on_ban`` is called so that the transport closes its connections.

Everything here is synchronous and cheap, so that it can run inside py-libp2p's frame
handling.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from gossipfl.peerlog import PeerWarnings
from gossipfl.peerscore import Ban, PeerScores, ScorePolicy

logger = logging.getLogger(__name__)

MAX_PEERS = 4096
"""Peers whose violation counters are kept; the least recently reported are dropped
first."""


class Policing:
    """Violation counters, warnings and bans of one transport (see the module docstring).
    ``clock`` is the bans' clock (``time.monotonic``: usable outside trio, and bans last
    real seconds)."""

    def __init__(
        self,
        policy: ScorePolicy,
        *,
        on_ban: Callable[[Ban], object] = lambda ban: None,
        clock: Callable[[], float] = time.monotonic,
        warnings: PeerWarnings | None = None,
    ) -> None:
        self.scores = PeerScores(policy, clock=clock)
        self.on_ban = on_ban
        """Called with each new :class:`~gossipfl.peerscore.Ban` (the transport sets it)."""
        self._clock = clock
        self._warnings = warnings or PeerWarnings()
        self._counts: OrderedDict[str, Counter[str]] = OrderedDict()
        self.total = 0
        self.bans = 0

    @property
    def violations(self) -> dict[str, dict[str, int]]:
        """Violations so far, by peer and kind (a copy)."""
        return {peer: dict(counts) for peer, counts in self._counts.items()}

    def ban_of(self, peer: str) -> Ban | None:
        return self.scores.ban_of(peer)

    def refusal(self, peer: str) -> str | None:
        """Why we refuse to talk to ``peer`` now (it is banned), or ``None``."""
        ban = self.scores.ban_of(peer)
        if ban is None:
            return None
        left = max(0.0, ban.until - self._clock())
        return f"banned for another {left:.1f} s (after repeated {ban.kind} violations)"

    def penalize(self, peer: str, kind: str, detail: str = "") -> Ban | None:
        """Record that ``peer`` broke a limit of ``kind``; return the ban this started, if
        any. A peer already banned is counted, not scored again."""
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"a violation's kind is a non-empty string, not {kind!r}")
        counts = self._counts.get(peer)
        if counts is None:
            if len(self._counts) >= MAX_PEERS:
                self._counts.popitem(last=False)
            counts = self._counts[peer] = Counter()
        else:
            self._counts.move_to_end(peer)
        counts[kind] += 1
        self.total += 1
        self._warnings.warn(
            logger,
            peer,
            f"peer %s broke a limit ({kind.replace('%', '%%')}): %s",
            peer,
            detail or "no details",
        )
        ban = self.scores.report(peer, kind)
        if ban is None:
            return None
        self.bans += 1
        logger.warning(
            "banned peer %s for %.1f s (ban #%d): its score reached %.0f (threshold %.0f) "
            "with a %s violation: %s. Its connections are closed; it may not connect, open "
            "streams or be dialed until the ban ends",
            peer,
            ban.duration,
            ban.nth,
            ban.score,
            self.scores.policy.threshold,
            kind,
            detail or "no details",
        )
        self.on_ban(ban)
        return ban


__all__ = ["Policing"]
