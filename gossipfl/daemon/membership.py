"""Who is in the job right now: a membership view kept up to date by anti-entropy.

Pure state (no I/O, no clock): the exchange service feeds it records, the sender's peer ID
and the time (monotonic and wall-clock, both passed in).

Every member owns one record: its peer ID, addresses, an *incarnation* (its wall clock in
milliseconds at start, so larger at every restart) and a *heartbeat* it increments every
exchange interval. Members swap their views with random partners (push-pull); for each
peer the record with the larger ``(incarnation, heartbeat)`` wins, so views converge
whatever the order of exchanges, and a record can only be replaced by a newer one.

**Only a record's owner can change it.** Records travel through third peers, and any of
them may be a Byzantine insider. A relayer that could write records of others could evict
every honest member at once (a record of each saying "left", with counters no honest
record can ever beat). So every record carries its owner's Ed25519 signature over
:meth:`MemberRecord.signed_bytes` (a domain-separation prefix, the network id, every
field), and the public key comes from the peer ID itself (no key travels, nobody needs to
be trusted for it). A record with a bad signature changes nothing. Only a record that
would *advance* our view is verified (≈ 0.1 ms each, see :meth:`MemberRecord.verify`), so
known copies cost nothing, and a message that carries one forged record is not read
further: an honest relayer only passes on records it verified, so its sender is faulty.

**Claims that cannot be true are refused**, even when signed, by :class:`Plausibility`:
an incarnation far ahead of our wall clock, a heartbeat or round that advanced faster
than any honest peer can. An owner can still lie about itself within those bounds; that
costs the others nothing but the lie.

Liveness is judged locally, never by clocks of other machines: a member is alive while its
version keeps advancing. We remember when it last advanced, from the *age* a sender
reports with each record (how long ago it saw the record advance). The age is a claim of
the relayer, unsigned, so it is bounded both ways: it can only make a record look older
than when we first received it (so no copy can keep a dead member alive beyond ``timeout``
after we first got its last record), and a newer version can never make a member look
*less* alive than the older one did, nor a later copy of the same version undo what an
earlier copy showed (so a liar relaying fresh records with a huge age cannot make a live
member look dead; it can at most delay the refresh until an honest copy arrives). A member
is gone when its record has not advanced for ``timeout`` seconds, or at once when it
announced its leave (``left``, signed by itself).

Because a dead member's record stops advancing, copies of it that keep circulating cannot
revive it; a restarted member comes back with a larger incarnation. A peer that sees a
record of *itself* newer than its own (signed by its own key: its previous life, with a
clock that went back) jumps its incarnation past it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from gossipfl.transport.signing import SIGNATURE_SIZE
from gossipfl.transport.signing import peer_public_key as public_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAX_RECORDS = 10_000
"""Records kept at most: a lying member cannot make us hold an unbounded view."""
MAX_COUNTER = (1 << 63) - 1
"""Largest incarnation, heartbeat or round (they are signed as unsigned 64-bit integers,
and msgpack implementations agree on signed 64-bit ones)."""
RECORD_DOMAIN = b"gossipfl/member-record/v2\0"
"""The first bytes of every signed record: a signature made for something else (another
protocol, another version of this one) can never pass for a membership record."""

Signer = Callable[[bytes], bytes]
"""Signs bytes with our Ed25519 key (:meth:`gossipfl.identity.Identity.signer`)."""


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack(">H", len(data)) + data


@dataclass(frozen=True)
class MemberRecord:
    peer: str
    addrs: tuple[str, ...]
    incarnation: int
    heartbeat: int
    round: int = 0
    """The round the member was at (informative; bounded by :class:`Plausibility`)."""
    left: bool = False
    """The member announced that it is leaving."""
    signature: bytes = field(default=b"", repr=False)
    """The owner's Ed25519 signature over :meth:`signed_bytes`; empty until signed."""

    @property
    def version(self) -> tuple[int, int]:
        return (self.incarnation, self.heartbeat)

    @property
    def rank(self) -> tuple[int, int, bool, int, tuple[str, ...]]:
        """Total order of records: the version, then (only an owner that equivocates signs
        two records with one version) the rest, so that every view keeps the same one."""
        return (self.incarnation, self.heartbeat, self.left, self.round, self.addrs)

    def signed_bytes(self, network_id: str) -> bytes:
        """What the owner signs: :data:`RECORD_DOMAIN`, then the network id (a record
        cannot be replayed into another job), then every field but the signature.

        Strings are a u16 big-endian byte count then UTF-8; ``addrs`` is a u16 count then
        its strings; counters are u64 big-endian; ``left`` one byte, 0 or 1. Fixed-width
        fields and explicit lengths make the encoding canonical and unambiguous, so another
        implementation reproduces it byte for byte (docs/protocol.md, section 13).
        """
        return b"".join(
            [
                RECORD_DOMAIN,
                _text(network_id),
                _text(self.peer),
                struct.pack(">H", len(self.addrs)),
                *(_text(a) for a in self.addrs),
                struct.pack(">QQQB", self.incarnation, self.heartbeat, self.round, self.left),
            ]
        )

    def signed(self, network_id: str, sign: Signer) -> MemberRecord:
        """This record with a fresh signature (``sign`` must hold the owner's key)."""
        return replace(self, signature=sign(self.signed_bytes(network_id)))

    def verify(self, network_id: str, key: Ed25519PublicKey | None = None) -> bool:
        """Whether the signature is the owner's, over this record in ``network_id``.

        ``key`` is the owner's public key if the caller holds it already; otherwise it is
        taken from the peer ID. Measured on a shared 2-core machine: ~0.09 ms per
        verification (OpenSSL through ``cryptography``), ~0.03 ms per signature; merging
        100 new records costs ~11 ms, ~1% of the default 1 s exchange interval.
        """
        if len(self.signature) != SIGNATURE_SIZE:
            return False
        if key is None:
            key = public_key(self.peer)
            if key is None:
                return False
        from cryptography.exceptions import InvalidSignature

        try:
            key.verify(self.signature, self.signed_bytes(network_id))
        except (InvalidSignature, ValueError, struct.error):
            return False
        return True


@dataclass(frozen=True)
class Heard:
    """A record as received, with its age at the sender (seconds since the sender last
    saw it advance): the sender's claim, not signed."""

    record: MemberRecord
    age: float = 0.0


@dataclass(frozen=True)
class Plausibility:
    """How far a member's signed claims may run ahead before we call them lies.

    A record refused by these bounds changes nothing (see :class:`Refusal`). Heartbeats
    and rounds are bounded per member and incarnation from the first record of that
    incarnation that the member sent us *itself*: a relayer could hand us an old record
    as the first one, and the member's honest progress since would then look like a jump.
    Before that, a heartbeat is bounded by the time since the incarnation began (it is a
    wall-clock timestamp), and a round not at all (a restarted member resumes from a
    checkpoint at any round). Time since a baseline is the larger of what our monotonic
    and wall clocks say (the first stops while our machine is suspended, the second may
    be stepped back). The defaults are generous: no honest peer comes near them.
    """

    max_skew: float = 600.0
    """Seconds an incarnation (its owner's wall clock at start) may be ahead of ours: the
    clock difference between two machines that we tolerate."""
    heartbeat_factor: float = 4.0
    """Heartbeats per *our* exchange interval a member may advance on average: other
    peers may run an exchange interval down to a quarter of ours."""
    heartbeat_burst: int = 16
    """Heartbeats a member may be ahead of that pace (a baseline ticked up to a few
    intervals before we received it, a leave, timing jitter)."""
    round_rate: float = 1000.0
    """Rounds per second a member may advance on average: a round takes at least one
    message over an authenticated, encrypted stream, so not less than a millisecond. A
    member that catches up after a freeze jumps no faster than the others progressed."""
    round_burst: int = 1000
    """Rounds a member may be ahead of that pace."""

    def __post_init__(self) -> None:
        if not (
            self.max_skew >= 0
            and self.heartbeat_factor > 0
            and self.round_rate > 0
            and self.heartbeat_burst >= 0
            and self.round_burst >= 0
        ):
            raise ValueError("plausibility bounds must be positive (skew and bursts >= 0)")


@dataclass(frozen=True)
class Refusal:
    """A record that changed nothing because it is forged or implausible."""

    kind: str
    """``bad_record`` (no valid signature by its owner: the *sender* made it up) or
    ``implausible_record`` (signed by its owner, but beyond :class:`Plausibility`)."""
    peer: str
    """Whose record it was."""
    detail: str
    sender_at_fault: bool
    """Whether the sender provably misbehaved: it forged the record, or it is the owner
    and signed the implausible claim itself. A relayer of a correctly signed record did
    nothing wrong: it may have found the record plausible by its own clock."""


@dataclass(frozen=True)
class Merged:
    """What :meth:`MembershipView.merge` did with a partner's records."""

    advanced: set[str]
    """The peers whose record advanced."""
    refused: list[Refusal]
    refuted: bool = False
    """A record of our previous life made us jump our incarnation."""


@dataclass(frozen=True)
class _Moment:
    """A time on both of our clocks."""

    now: float
    wall: float

    def elapsed(self, now: float, wall: float) -> float:
        """Seconds since then: the larger of the two clocks' answers, because the
        monotonic clock stops while the machine is suspended (the others go on
        advancing), and the wall clock may be stepped back."""
        return max(now - self.now, wall - self.wall)


@dataclass
class _Pace:
    """A member's progress as it told us itself, first in this incarnation."""

    incarnation: int
    since: _Moment
    heartbeat: int
    round_since: _Moment | None = None  # round 0 means "not started": no round baseline yet
    round: int = 0


class MembershipView:
    """This peer's view of the membership; see the module docstring.

    Args:
        me: our own record (signed here; its heartbeat is advanced by :meth:`tick`).
        network_id: the job's network id, part of every signed record.
        sign: signs with our key (:meth:`gossipfl.identity.Identity.signer`).
        timeout: seconds without an advance after which a member counts as gone.
        interval: our exchange interval in seconds (the heartbeat pace).
        admit: which peer IDs may be members at all (the allowlist, or the roster).
        bounds: how much a member may claim (:class:`Plausibility`).
    """

    def __init__(
        self,
        me: MemberRecord,
        *,
        network_id: str,
        sign: Signer,
        timeout: float,
        interval: float,
        admit: Callable[[str], bool] | None = None,
        bounds: Plausibility | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.me = me.peer
        self.network_id = network_id
        self.timeout = timeout
        self.interval = interval
        self.bounds = bounds or Plausibility()
        self._sign = sign
        self._admit = admit or (lambda _peer: True)
        key = public_key(me.peer)
        own = me.signed(network_id, sign)
        if key is None or not own.verify(network_id, key):
            raise ValueError(f"{me.peer} is not an Ed25519 peer ID, or `sign` is not its key")
        self._records: dict[str, MemberRecord] = {me.peer: own}
        self._keys: dict[str, Ed25519PublicKey] = {me.peer: key}
        self._advanced: dict[str, float] = {me.peer: -math.inf}
        self._first: dict[str, float] = {me.peer: -math.inf}
        self._pace: dict[str, _Pace] = {}

    # ------------------------------------------------------------------ our record

    @property
    def own(self) -> MemberRecord:
        return self._records[self.me]

    def _set_own(self, record: MemberRecord) -> MemberRecord:
        self._records[self.me] = record.signed(self.network_id, self._sign)
        return self._records[self.me]

    def tick(self, now: float, *, round: int | None = None) -> MemberRecord:
        """Advance our heartbeat (once per exchange interval); return our record."""
        own = self.own
        self._advanced[self.me] = now
        return self._set_own(
            replace(own, heartbeat=own.heartbeat + 1, round=own.round if round is None else round)
        )

    def set_addresses(self, addrs: Iterable[str]) -> None:
        self._set_own(replace(self.own, addrs=tuple(addrs)))

    def leave(self, now: float) -> MemberRecord:
        """Mark ourselves as leaving; the returned record tells the others."""
        return self._set_own(replace(self.tick(now), left=True))

    # --------------------------------------------------------------------- merging

    def merge(
        self, heard: Iterable[Heard], now: float, *, wall: float, sender: str | None = None
    ) -> Merged:
        """Take in records from a partner.

        Args:
            heard: the records, with the ages the sender claims.
            now: our monotonic clock, in seconds.
            wall: our wall clock, in seconds since the epoch (for incarnations).
            sender: who sent them (authenticated by the transport); its own record sets
                its pace (:class:`Plausibility`). None: a relayer we know nothing of.

        Records are taken one by one, in order; a record that proves its sender faulty (a
        forgery, or an implausible claim of the sender about itself) ends the message:
        the rest is not worth the verification.
        """
        advanced: set[str] = set()
        refused: list[Refusal] = []
        refuted = False
        for item in heard:
            rec = item.record
            if rec.peer == self.me:
                incarnation = self.own.incarnation
                refusal = self._refute(rec, wall)
                refuted = refuted or self.own.incarnation != incarnation
            else:
                refusal = self._take(rec, item.age, now, wall, sender, advanced)
            if refusal is not None:
                refused.append(refusal)
                if refusal.sender_at_fault:
                    break
        return Merged(advanced, refused, refuted)

    def _take(
        self,
        rec: MemberRecord,
        age: float,
        now: float,
        wall: float,
        sender: str | None,
        advanced: set[str],
    ) -> Refusal | None:
        """Merge one record of another peer (see :meth:`merge`)."""
        if not self._admit(rec.peer):
            return None
        known = self._records.get(rec.peer)
        if known is not None and rec.rank <= known.rank:
            if rec.rank == known.rank:  # a copy of what we hold: verified already
                self._corroborate(rec.peer, age, now)
                if sender == rec.peer:
                    self._set_pace(known, _Moment(now, wall))
            return None
        if known is None and len(self._records) >= MAX_RECORDS:
            return None
        key = self._keys.get(rec.peer) or public_key(rec.peer)
        if key is None or not rec.verify(self.network_id, key):
            why = "no valid signature by its owner"
            return Refusal("bad_record", rec.peer, why, sender_at_fault=True)
        problem = self._implausible(rec, now, wall)
        if problem is not None:
            return Refusal("implausible_record", rec.peer, problem, sender == rec.peer)
        self._records[rec.peer] = rec
        self._keys[rec.peer] = key
        # A newer version never makes the member look less alive than the older one did.
        previous = self._advanced.get(rec.peer, -math.inf)
        self._advanced[rec.peer] = max(previous, now - self._clamp(age))
        self._first[rec.peer] = now
        pace = self._pace.get(rec.peer)
        if pace is not None and pace.incarnation != rec.incarnation:
            del self._pace[rec.peer]  # a new life: no baseline until it speaks for itself
        if sender == rec.peer:
            self._set_pace(rec, _Moment(now, wall))
        advanced.add(rec.peer)
        return None

    def _refute(self, rec: MemberRecord, wall: float) -> Refusal | None:
        """A record of ourselves: if it is newer than ours and really ours (our previous
        life, with a clock that went back), jump our incarnation past it."""
        own = self.own
        if rec.rank <= own.rank or own.left:
            return None
        if not rec.verify(self.network_id, self._keys[self.me]):
            why = "a record of us that we did not sign"
            return Refusal("bad_record", rec.peer, why, sender_at_fault=True)
        problem = self._implausible_incarnation(rec, wall)
        if problem is not None:  # we signed it?! our clock was far ahead then: keep ours
            return Refusal("implausible_record", rec.peer, problem, sender_at_fault=False)
        self._set_own(replace(own, incarnation=rec.incarnation + 1))
        return None

    def _clamp(self, age: float) -> float:
        """An age a sender reports, within what an honest sender can report: it shares
        records that advanced less than two timeouts ago (:meth:`shareable`)."""
        if not math.isfinite(age) or age <= 0:
            return 0.0
        return min(age, 2 * self.timeout)

    def _corroborate(self, peer: str, age: float, now: float) -> None:
        """Another copy of the record we hold: it may show the record advanced later than
        we thought (an earlier sender exaggerated its age), but never later than when we
        first received it."""
        seen = min(self._first[peer], now - self._clamp(age))
        if seen > self._advanced[peer]:
            self._advanced[peer] = seen

    def _set_pace(self, rec: MemberRecord, when: _Moment) -> None:
        """The member's own record (sent by itself): the baseline of its pace."""
        pace = self._pace.get(rec.peer)
        if pace is None or pace.incarnation != rec.incarnation:
            pace = self._pace[rec.peer] = _Pace(rec.incarnation, when, rec.heartbeat)
        if pace.round_since is None and rec.round > 0:
            pace.round_since, pace.round = when, rec.round

    def _implausible_incarnation(self, rec: MemberRecord, wall: float) -> str | None:
        ahead = rec.incarnation / 1000 - wall
        if ahead > self.bounds.max_skew:
            return (
                f"incarnation {rec.incarnation} is {ahead:.0f} s ahead of our clock "
                f"(at most {self.bounds.max_skew:g} s)"
            )
        return None

    def _implausible(self, rec: MemberRecord, now: float, wall: float) -> str | None:
        """Why a (correctly signed) record cannot be true, or None."""
        problem = self._implausible_incarnation(rec, wall)
        if problem is not None:
            return problem
        b = self.bounds
        rate = b.heartbeat_factor / self.interval
        lived = max(0.0, wall - rec.incarnation / 1000 + b.max_skew)
        limit = b.heartbeat_burst + rate * lived
        if rec.heartbeat > limit:
            return f"heartbeat {rec.heartbeat} in an incarnation begun {lived:.0f} s ago"
        pace = self._pace.get(rec.peer)
        if pace is None or pace.incarnation != rec.incarnation:
            return None
        elapsed = pace.since.elapsed(now, wall)
        limit = pace.heartbeat + b.heartbeat_burst + rate * elapsed
        if rec.heartbeat > limit:
            return (
                f"heartbeat {rec.heartbeat} is {rec.heartbeat - pace.heartbeat} ahead of "
                f"{elapsed:.1f} s ago (at most {limit - pace.heartbeat:.0f})"
            )
        if pace.round_since is not None:
            elapsed = pace.round_since.elapsed(now, wall)
            limit = pace.round + b.round_burst + b.round_rate * elapsed
            if rec.round > limit:
                return (
                    f"round {rec.round} is {rec.round - pace.round} ahead of "
                    f"{elapsed:.1f} s ago (at most {limit - pace.round:.0f})"
                )
        return None

    # ---------------------------------------------------------------------- queries

    def is_alive(self, peer: str, now: float) -> bool:
        if peer == self.me:
            return not self.own.left
        rec = self._records.get(peer)
        if rec is None or rec.left:
            return False
        return now - self._advanced[peer] < self.timeout

    def live(self, now: float) -> list[str]:
        """The members alive now, ourselves included (unless leaving), sorted."""
        return sorted(p for p in self._records if self.is_alive(p, now))

    def record(self, peer: str) -> MemberRecord | None:
        return self._records.get(peer)

    def known(self) -> list[str]:
        """Every peer we hold a record of (alive or not), sorted."""
        return sorted(self._records)

    def shareable(self, now: float) -> list[Heard]:
        """What we tell a partner: our record, and every record that advanced within
        twice the timeout (so that leaves and deaths spread too), with its age."""
        out = [Heard(self.own, 0.0)]
        for peer, rec in self._records.items():
            if peer == self.me:
                continue
            age = max(0.0, now - self._advanced[peer])
            if age < 2 * self.timeout:
                out.append(Heard(rec, age))
        return out

    def prune(self, now: float) -> None:
        """Forget records that have not advanced for ten timeouts."""
        for peer in [p for p, t in self._advanced.items() if p != self.me]:
            if now - self._advanced[peer] > 10 * self.timeout:
                for table in (self._records, self._advanced, self._first, self._keys):
                    del table[peer]
                self._pace.pop(peer, None)


__all__ = [
    "MAX_COUNTER",
    "MAX_RECORDS",
    "RECORD_DOMAIN",
    "SIGNATURE_SIZE",
    "Heard",
    "MemberRecord",
    "MembershipView",
    "Merged",
    "Plausibility",
    "Refusal",
    "Signer",
    "public_key",
]
