"""Misbehaviour scores of remote peers, and the bans they lead to.

A Byzantine peer can be an *insider*: it is on the allowlist, passes the Noise handshake
and speaks every protocol. Each limit it breaks (a Yamux receive window, a stream cap, a
frame rate, a malformed record...) is refused where it happens; this module decides when
the refusals have added up to "stop talking to this peer for a while".

The policy, :class:`ScorePolicy`, is deliberately simple so that an operator can predict
it:

- every violation has a *kind* (a short string such as ``"window"`` or ``"bad_frame"``)
  and a *weight* (``weights[kind]``, or ``default_weight`` for a kind the policy does not
  name: the set of kinds is open, other layers report their own);
- a peer's score is the sum of its weights, decaying exponentially with ``half_life``: a
  one-off glitch (a truncated frame after a crash) fades, a steady stream of them does
  not;
- when a report brings the score to ``threshold`` or more, the peer is banned for
  ``ban`` seconds, doubled on each further ban (capped at ``max_ban``), and its score
  starts again from zero. A peer that has not been banned for ``forget_bans_after``
  seconds starts again from the first ban's duration.

Reports about a peer that is banned are ignored (its connections are being closed; what
is still in flight says nothing new). :class:`PeerScores` is pure: no I/O, the clock is
injected, the state is bounded (``max_peers`` peers remembered, the ones with nothing
pending forgotten first).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gossipfl.errors import ConfigError

DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        # Flow control ignored: no honest implementation does this; two within half a
        # minute ban.
        "window": 60.0,
        "buffered": 60.0,
        # Limits an honest peer can brush against under load: many to ban.
        "streams": 10.0,
        "requests": 10.0,
        "request_rate": 10.0,
        "frame_rate": 20.0,
        # Malformed input: a broken peer, or a hostile one.
        "bad_frame": 25.0,
        "bad_request": 25.0,
        "bad_membership_message": 25.0,
        # A synchronous model older than one the same peer sent before on the same
        # connection: links are ordered, so only a replay does this.
        "replay": 25.0,
        # A membership record with a bad signature: a forgery (or a relayer that did not
        # check what it relayed: no honest implementation).
        "bad_record": 25.0,
        # A member's own signed claim that no honest clock allows (an incarnation far in
        # the future, counters that jump): a liar, or a badly misconfigured peer.
        "implausible_record": 25.0,
    }
)
"""The weights of the kinds of violation the transport reports (see
docs/operations.md, "Resource limits and peer scores")."""


@dataclass(frozen=True)
class ScorePolicy:
    """When misbehaviour becomes a ban. Times in seconds; see the module docstring."""

    weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_WEIGHTS)
    """Weight of each kind of violation."""
    default_weight: float = 10.0
    """Weight of a kind not in ``weights``."""
    half_life: float = 60.0
    """A score halves in this time when nothing new is reported."""
    threshold: float = 100.0
    """A score reaching this bans the peer."""
    ban: float = 60.0
    """Length of a first ban."""
    max_ban: float = 3600.0
    """Bans double on each repeat, up to this."""
    forget_bans_after: float = 24 * 3600.0
    """A peer with no ban for this long (after the last one ended) is a first offender
    again."""
    max_peers: int = 4096
    """Peers remembered. Beyond it the least recently reported peer that is not banned is
    forgotten, so a flood of fresh peer IDs costs bounded memory."""

    def __post_init__(self) -> None:
        weights = dict(self.weights)
        for kind, weight in weights.items():
            if not (isinstance(kind, str) and kind):
                raise ConfigError(f"ScorePolicy.weights: kinds are non-empty strings, not {kind!r}")
            if not _finite(weight) or weight < 0:
                raise ConfigError(
                    f"ScorePolicy.weights[{kind!r}] must be a finite number >= 0, got {weight!r}"
                )
        object.__setattr__(self, "weights", MappingProxyType(weights))
        if not _finite(self.default_weight) or self.default_weight < 0:
            raise ConfigError("ScorePolicy.default_weight must be a finite number >= 0")
        for name in ("half_life", "threshold", "ban", "max_ban", "forget_bans_after"):
            value = getattr(self, name)
            if not _finite(value) or value <= 0:
                raise ConfigError(f"ScorePolicy.{name} must be a positive finite number")
        if self.max_ban < self.ban:
            raise ConfigError("ScorePolicy.max_ban must be at least ScorePolicy.ban")
        if type(self.max_peers) is not int or self.max_peers < 1:
            raise ConfigError("ScorePolicy.max_peers must be a positive int")

    def __hash__(self) -> int:  # the weights mapping is not hashable itself
        return hash(
            (
                tuple(sorted(self.weights.items())),
                self.default_weight,
                self.half_life,
                self.threshold,
                self.ban,
                self.max_ban,
                self.forget_bans_after,
                self.max_peers,
            )
        )

    def weight(self, kind: str) -> float:
        return self.weights.get(kind, self.default_weight)

    def ban_duration(self, nth: int) -> float:
        """Length of a peer's ``nth`` ban in a row (1 for the first)."""
        if nth < 1:
            raise ValueError("bans are counted from 1")
        # min() before the power would overflow: 2**1100 is not a float.
        doublings = min(nth - 1, math.ceil(math.log2(self.max_ban / self.ban)) + 1)
        return min(self.ban * 2.0**doublings, self.max_ban)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Ban:
    """A peer we refuse to talk to until ``until`` (on the :class:`PeerScores` clock)."""

    peer: str
    start: float
    until: float
    nth: int
    """1 for a peer's first ban, 2 for the next one, ..."""
    kind: str
    """The kind of violation that tipped the score over the threshold."""
    score: float
    """The score that reached the threshold."""

    @property
    def duration(self) -> float:
        return self.until - self.start


@dataclass
class _Record:
    score: float = 0.0
    at: float = 0.0
    bans: int = 0
    ban: Ban | None = field(default=None)


class PeerScores:
    """The scores and bans of remote peers under one :class:`ScorePolicy`.

    ``clock`` gives the current time in seconds (``time.monotonic`` by default; tests
    pass a fake one). Not thread-safe: use it from one thread (one trio run).
    """

    def __init__(
        self, policy: ScorePolicy | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or ScorePolicy()
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def _decayed(self, record: _Record, now: float) -> float:
        elapsed = now - record.at
        if elapsed <= 0 or record.score == 0.0:
            return record.score
        return record.score * math.pow(0.5, elapsed / self.policy.half_life)

    def score(self, peer: str) -> float:
        """``peer``'s score now (0 for a peer never reported, or banned)."""
        record = self._records.get(peer)
        if record is None:
            return 0.0
        now = self._clock()
        if record.ban is not None and now < record.ban.until:
            return 0.0
        return self._decayed(record, now)

    def ban_of(self, peer: str) -> Ban | None:
        """``peer``'s ban if it is in force now, else ``None``."""
        record = self._records.get(peer)
        if record is None or record.ban is None:
            return None
        return record.ban if self._clock() < record.ban.until else None

    def is_banned(self, peer: str) -> bool:
        return self.ban_of(peer) is not None

    def bans(self) -> dict[str, Ban]:
        """Every ban in force now, by peer."""
        now = self._clock()
        return {
            peer: record.ban
            for peer, record in self._records.items()
            if record.ban is not None and now < record.ban.until
        }

    def report(self, peer: str, kind: str, *, weight: float | None = None) -> Ban | None:
        """Add a violation of ``kind`` (with the policy's weight for it, unless ``weight``
        is given) to ``peer``'s score. Returns the :class:`Ban` if this report started
        one, else ``None`` (also while the peer is banned: the report is ignored)."""
        policy = self.policy
        w = policy.weight(kind) if weight is None else weight
        if not _finite(w) or w < 0:
            raise ValueError(f"a violation's weight is a finite number >= 0, not {w!r}")
        now = self._clock()
        record = self._records.get(peer)
        if record is None:
            self._make_room(now)
            record = self._records[peer] = _Record(at=now)
        else:
            self._records.move_to_end(peer)
        if record.ban is not None:
            if now < record.ban.until:
                return None
            if now - record.ban.until >= policy.forget_bans_after:
                record.bans = 0
        score = self._decayed(record, now) + w
        if score < policy.threshold:
            record.score, record.at = score, now
            return None
        record.bans += 1
        ban = Ban(
            peer=peer,
            start=now,
            until=now + policy.ban_duration(record.bans),
            nth=record.bans,
            kind=kind,
            score=score,
        )
        record.score, record.at, record.ban = 0.0, now, ban
        return ban

    def _make_room(self, now: float) -> None:
        if len(self._records) < self.policy.max_peers:
            return
        for peer, record in self._records.items():  # least recently reported first
            if record.ban is None or record.ban.until <= now:
                del self._records[peer]
                return
        self._records.popitem(last=False)  # all banned: forget the oldest ban


__all__ = ["DEFAULT_WEIGHTS", "Ban", "PeerScores", "ScorePolicy"]
