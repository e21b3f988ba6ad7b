"""The membership exchange: members swap their views on ``/gossipfl/members/2.0.0``.

Every ``interval`` a peer sends its view to one random live member and to the candidates
it has not heard from yet (bootstrap addresses, peers found by mDNS or the DHT, roster
entries); the partner merges it and replies with its own view, which we merge in turn
(push-pull anti-entropy). A view spreads to all n members in O(log n) intervals.

The message is small msgpack (records of peer ID, addresses, version, round, age and the
owner's signature), checked field by field and bounded in size before it reaches the
view; a peer on another network id is answered with nothing. Anything wrong is logged
with the sender's peer ID (rate-limited) and dropped, never raised.

Every peer speaking this protocol is on the allowlist, and may still lie. What it sends
that proves it faulty -- a message that does not parse, a record its owner did not sign,
an impossible claim about itself (see :class:`~gossipfl.daemon.membership.Plausibility`)
-- is counted in :attr:`MembershipExchange.violations` and reported to ``on_violation``
(which the daemon feeds to the transport's peer score). Version 1 (``1.0.0``, unsigned
records) is gone on purpose: a peer that cannot sign its record cannot be a member, and
a separate protocol ID makes the mismatch a clean "protocol not supported" rather than a
stream of messages that look forged.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import NamedTuple, Protocol

import msgpack
import trio

from gossipfl.daemon.membership import (
    MAX_COUNTER,
    SIGNATURE_SIZE,
    Heard,
    MemberRecord,
    MembershipView,
)
from gossipfl.errors import GossipflError
from gossipfl.peerlog import PeerWarnings
from gossipfl.transport.base import TransportError
from gossipfl.wire.errors import SchemaError
from gossipfl.wire.job import Job, describe_job_mismatch, job_text, parse_job

logger = logging.getLogger(__name__)

MEMBERS_PROTOCOL = "/gossipfl/members/2.0.0"
FORMAT_VERSION = 2
MAX_MESSAGE = 2 << 20
"""Largest membership message (2 MiB: ~10,000 records of one address)."""
MAX_ADDRS = 16
MAX_TEXT = 256
MAX_INT = MAX_COUNTER
MAX_OTHER_JOBS = 256
"""Peers of another job remembered (the oldest is forgotten first)."""
MAX_BACKOFF = 30.0
"""Seconds between two attempts to reach a candidate that keeps failing, at most."""

BAD_MESSAGE = "bad_membership_message"
"""A violation: a membership message that does not parse or breaks a bound."""
BAD_RECORD = "bad_record"
"""A violation: a record without a valid signature by its owner (the sender forged it)."""
IMPLAUSIBLE_RECORD = "implausible_record"
"""A violation: a signed claim no honest peer makes (reported when the owner sent it)."""

ViolationHandler = Callable[[str, str, str], None]
"""``on_violation(peer, kind, detail)``: ``peer`` sent something that proves it faulty."""


_TAKEN, _UNUSABLE, _OTHER_JOB = "taken", "unusable", "other job"


class MembershipFormatError(GossipflError):
    """A membership message that is not one (malformed, oversized, wrong version)."""


class RequestTransport(Protocol):
    """What the exchange needs from the libp2p transport."""

    @property
    def local_id(self) -> str: ...

    def set_request_handler(
        self,
        protocol: str,
        handler: Callable[[str, bytes], Awaitable[bytes | None]],
        *,
        max_request: int = ...,
        max_reply: int = ...,
        timeout: float = ...,
    ) -> None: ...

    async def request(
        self,
        peer: str,
        protocol: str,
        payload: bytes,
        *,
        max_request: int = ...,
        max_reply: int = ...,
        timeout: float = ...,
    ) -> bytes: ...

    def add_peer_address(self, peer: str, address: str) -> None: ...


# ------------------------------------------------------------------------- codec


class MembersMessage(NamedTuple):
    """A decoded membership message."""

    network: str
    heard: list[Heard]
    job: dict[str, str]
    """The sender's job manifest (:mod:`gossipfl.wire.job`; empty: it states none)."""


def encode_view(network_id: str, heard: Iterable[Heard], job: Job | None = None) -> bytes:
    records = [
        [
            h.record.peer,
            list(h.record.addrs),
            h.record.incarnation,
            h.record.heartbeat,
            h.record.round,
            h.record.left,
            round(h.age, 3),
            h.record.signature,
        ]
        for h in heard
    ]
    message: dict[str, object] = {"v": FORMAT_VERSION, "net": network_id, "recs": records}
    if job:  # absent when empty, as in a Hello
        message["job"] = job_text(job)
    data: bytes = msgpack.packb(message)
    return data


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT:
        raise MembershipFormatError(f"{what} must be a string of 1 to {MAX_TEXT} characters")
    return value


def _int(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise MembershipFormatError(f"{what} must be a non-negative integer")
    return value


def decode_view(data: bytes) -> MembersMessage:
    """A membership message's network id, records and job, every field checked."""
    if len(data) > MAX_MESSAGE:
        raise MembershipFormatError(f"message of {len(data)} bytes; the limit is {MAX_MESSAGE}")
    try:
        message = msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_bin_len=SIGNATURE_SIZE, max_ext_len=0
        )
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MembershipFormatError(f"not msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(message, dict) or message.get("v") != FORMAT_VERSION:
        raise MembershipFormatError(f"not a version-{FORMAT_VERSION} membership message")
    network = _text(message.get("net"), "net")
    try:
        job = parse_job(message.get("job", ""))
    except SchemaError as exc:
        raise MembershipFormatError(str(exc)) from None
    raw = message.get("recs")
    if not isinstance(raw, list):
        raise MembershipFormatError("recs must be a list")
    out: list[Heard] = []
    peers: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, list) or len(item) != 8:
            raise MembershipFormatError(f"record {i} must be a list of 8 fields")
        peer, addrs, inc, hb, rnd, left, age, sig = item
        if not isinstance(addrs, list) or len(addrs) > MAX_ADDRS:
            raise MembershipFormatError(f"record {i}: at most {MAX_ADDRS} addresses")
        if not isinstance(left, bool):
            raise MembershipFormatError(f"record {i}: left must be a boolean")
        if not isinstance(age, int | float) or isinstance(age, bool) or not math.isfinite(age):
            raise MembershipFormatError(f"record {i}: age must be a finite number")
        if not isinstance(sig, bytes) or len(sig) != SIGNATURE_SIZE:
            raise MembershipFormatError(f"record {i}: sig must be {SIGNATURE_SIZE} bytes")
        record = MemberRecord(
            peer=_text(peer, f"record {i} peer"),
            addrs=tuple(_text(a, f"record {i} address") for a in addrs),
            incarnation=_int(inc, f"record {i} incarnation"),
            heartbeat=_int(hb, f"record {i} heartbeat"),
            round=_int(rnd, f"record {i} round"),
            left=left,
            signature=sig,
        )
        if record.peer in peers:  # an honest view holds one record per peer
            raise MembershipFormatError(f"record {i}: a second record of {record.peer}")
        peers.add(record.peer)
        out.append(Heard(record, max(0.0, float(age))))
    return MembersMessage(network, out, job)


# ----------------------------------------------------------------------- service


class MembershipExchange:
    """Runs the exchange for one peer: answers partners and contacts them.

    Args:
        transport: the libp2p transport (request/response on a side protocol).
        view: the membership view to keep up to date.
        network_id: peers of other networks are ignored.
        interval: seconds between rounds of exchanges (and between two heartbeats).
        on_change: called (in the event loop) whenever the set of live members may
            have changed.
        current_round: our round, put in our record at every heartbeat.
        on_violation: called as ``on_violation(peer, kind, detail)`` (in the event loop)
            when ``peer`` sent something that proves it faulty: ``kind`` is
            :data:`BAD_MESSAGE`, :data:`BAD_RECORD` or :data:`IMPLAUSIBLE_RECORD`. A
            relayer of someone else's implausible (but signed) record is not reported:
            by its clock the record may have looked fine.
        wall_clock: seconds since the epoch (tests inject it).
        job: our job manifest (:mod:`gossipfl.wire.job`). A partner stating another job
            is not merged (it is not in our job, however it got our address): we answer
            its request with our job alone, so that it learns why, and record it in
            :attr:`other_jobs`.
        on_other_job: called as ``on_other_job(peer, differences, asked)`` when a
            partner states another job: ``asked`` is True when it is the answer to our
            request (the daemon stops if that partner is one its operator named to join
            through), False when the partner's request said so.
    """

    def __init__(
        self,
        transport: RequestTransport,
        view: MembershipView,
        *,
        network_id: str,
        interval: float,
        rng: random.Random | None = None,
        on_change: Callable[[], None] | None = None,
        current_round: Callable[[], int] | None = None,
        on_violation: ViolationHandler | None = None,
        wall_clock: Callable[[], float] = time.time,
        job: Job | None = None,
        on_other_job: Callable[[str, str, bool], None] | None = None,
    ) -> None:
        self.transport = transport
        self.job: dict[str, str] = dict(job or {})
        self._on_other_job = on_other_job
        self.other_jobs: dict[str, str] = {}
        """Partners that state another job: peer -> the settings that differ."""
        self.view = view
        self.network_id = network_id
        self.interval = interval
        self._rng = rng or random.Random()
        self._on_change = on_change
        self._current_round = current_round
        self._on_violation = on_violation
        self._wall_clock = wall_clock
        self._candidates: set[str] = set()  # peers to contact that we have not heard from
        self._wake = trio.Event()
        self._live: list[str] = []
        self._next_tick = -math.inf
        self.exchanges = 0
        self.failures = 0
        self._retry: dict[str, tuple[float, float]] = {}  # peer -> (next try, backoff)
        self.unreachable: dict[str, str] = {}
        """Why the last exchange with each peer failed (cleared when one succeeds)."""
        self.rejected = 0
        """Messages refused whole (malformed, or of another network)."""
        self.violations: Counter[str] = Counter()
        """Refusals by kind: :data:`BAD_MESSAGE` and :data:`BAD_RECORD` (each one blamed
        on its sender), :data:`IMPLAUSIBLE_RECORD` (every refused claim, whoever relayed
        it)."""
        self._warnings = PeerWarnings()

    # ------------------------------------------------------------------ candidates

    def add_candidate(self, peer: str, address: str | None = None) -> None:
        """A peer to contact (found by bootstrap, mDNS, DHT or a roster), optionally with a
        full address; contacted at the next exchange, and every interval until it answers."""
        if peer == self.view.me:
            return
        if address is not None:
            try:
                self.transport.add_peer_address(peer, address)
            except GossipflError as exc:
                logger.warning("ignoring address %s of %s: %s", address, peer, exc)
                return
        if self.view.record(peer) is None:
            self._candidates.add(peer)
            self._wake.set()

    # ---------------------------------------------------------------------- serving

    def install(self) -> None:
        """Register the request handler on the transport."""
        self.transport.set_request_handler(
            MEMBERS_PROTOCOL,
            self._handle,
            max_request=MAX_MESSAGE,
            max_reply=MAX_MESSAGE,
            timeout=max(2.0, 2 * self.interval),
        )

    async def _handle(self, peer: str, body: bytes) -> bytes | None:
        taken = self._take(peer, body)
        if taken == _OTHER_JOB:  # tell it why it is not taken in: our job, no members
            if self._on_other_job is not None:
                self._on_other_job(peer, self.other_jobs[peer], False)
            return encode_view(self.network_id, [], self.job)
        if taken != _TAKEN:
            return None
        return self._encode()

    def message(self) -> bytes:
        """Our view as a membership message, as we send it to a partner now."""
        return self._encode()

    def _encode(self) -> bytes:
        return encode_view(self.network_id, self.view.shareable(trio.current_time()), self.job)

    def _take(self, peer: str, body: bytes) -> str:
        """Merge a partner's message: :data:`_TAKEN`, :data:`_UNUSABLE`, or
        :data:`_OTHER_JOB` (the partner states another job; nothing merged)."""
        try:
            network, heard, job = decode_view(body)
        except MembershipFormatError as exc:
            self.rejected += 1
            self._violation(peer, BAD_MESSAGE, str(exc), blame=True)
            return _UNUSABLE
        if network != self.network_id:
            self.rejected += 1
            self._warnings.warn(
                logger,
                peer,
                "peer %s is on network %r, not %r: ignoring its membership",
                peer,
                network,
                self.network_id,
            )
            return _UNUSABLE
        if job != self.job:
            self.rejected += 1
            differences = describe_job_mismatch(self.job, job, who="it", me="this peer")
            self.other_jobs.pop(peer, None)
            if len(self.other_jobs) >= MAX_OTHER_JOBS:  # bounded: peer IDs cost nothing
                del self.other_jobs[next(iter(self.other_jobs))]
            self.other_jobs[peer] = differences
            self._candidates.discard(peer)
            if self._on_other_job is None:  # else the owner reports it
                self._warnings.warn(
                    logger, peer, "peer %s runs another job (%s): not a member", peer, differences
                )
            return _OTHER_JOB
        self.other_jobs.pop(peer, None)
        now = trio.current_time()
        merged = self.view.merge(heard, now, wall=self._wall_clock(), sender=peer)
        for refusal in merged.refused:
            detail = f"record of {refusal.peer}: {refusal.detail}"
            if refusal.peer == peer:
                detail = f"its own record: {refusal.detail}"
            self._violation(peer, refusal.kind, detail, blame=refusal.sender_at_fault)
        if merged.refuted:
            logger.info(
                "a record of this peer's previous life came from %s: incarnation now %d",
                peer,
                self.view.own.incarnation,
            )
        for who in merged.advanced:
            self._candidates.discard(who)
            rec = self.view.record(who)
            for address in rec.addrs if rec is not None else ():
                try:
                    self.transport.add_peer_address(who, address)
                except GossipflError:
                    logger.debug("member %s advertises an unusable address %s", who, address)
        self._candidates.discard(peer)
        self._check_change(now)
        return _TAKEN

    def _violation(self, peer: str, kind: str, detail: str, *, blame: bool) -> None:
        """Count a refusal, log it (rate-limited per peer and kind) and, if ``peer`` is
        to blame, report it."""
        self.violations[kind] += 1
        if blame:
            self._warnings.warn(logger, peer, f"{kind} from peer %s: %s", peer, detail)
            if self._on_violation is not None:
                self._on_violation(peer, kind, detail)
        else:
            self._warnings.warn(logger, peer, f"{kind} relayed by peer %s: %s", peer, detail)

    def _check_change(self, now: float) -> None:
        live = self.view.live(now)
        if live != self._live:
            self._live = live
            if self._on_change is not None:
                self._on_change()

    # -------------------------------------------------------------------- contacting

    async def exchange(self, peer: str, *, timeout: float | None = None) -> bool:
        """One push-pull exchange with ``peer``; False if it failed."""
        try:
            reply = await self.transport.request(
                peer,
                MEMBERS_PROTOCOL,
                self._encode(),
                max_request=MAX_MESSAGE,
                max_reply=MAX_MESSAGE,
                timeout=timeout or max(2.0, 2 * self.interval),
            )
        except (TransportError, GossipflError) as exc:
            self.failures += 1
            self.unreachable[peer] = str(exc)
            # Back off from a peer that keeps failing (down, or refusing us), with jitter.
            _, backoff = self._retry.get(peer, (0.0, self.interval / 2))
            backoff = min(MAX_BACKOFF, 2 * backoff)
            when = trio.current_time() + backoff * (0.5 + self._rng.random())
            self._retry[peer] = (when, backoff)
            logger.debug("membership exchange with %s failed: %s", peer, exc)
            return False
        self.exchanges += 1
        self.unreachable.pop(peer, None)
        self._retry.pop(peer, None)
        taken = self._take(peer, reply)
        if taken == _OTHER_JOB and self._on_other_job is not None:
            self._on_other_job(peer, self.other_jobs[peer], True)
        return taken == _TAKEN

    def partners(self, now: float) -> list[str]:
        """Whom to contact this interval: one random live member, and up to 8 peers that
        are not live -- candidates not heard from yet, and known members that went silent
        without saying goodbye (a crash, or the other side of a partition that may have
        healed) -- each once its backoff after a failure has passed."""
        live = self.view.live(now)
        silent = set()
        for peer in self.view.known():
            rec = self.view.record(peer)
            if rec is not None and not rec.left and peer not in live:
                silent.add(peer)
        pool = (self._candidates | silent) - {self.view.me}
        out = sorted(p for p in pool if self._retry.get(p, (0.0, 0.0))[0] <= now)
        if len(out) > 8:
            out = self._rng.sample(out, 8)
        others = [p for p in live if p != self.view.me and p not in out]
        if others:
            out.append(self._rng.choice(others))
        return out

    async def run(self) -> None:
        """Exchange every ``interval`` (sooner when a candidate appears), forever."""
        while True:
            now = trio.current_time()
            # One heartbeat per interval, however often a new candidate wakes us: the
            # others refuse heartbeats that run far ahead of that pace.
            if now >= self._next_tick:
                round_now = self._current_round() if self._current_round is not None else None
                self.view.tick(now, round=round_now)
                self._next_tick = now + self.interval
            self.view.prune(now)
            self._wake = trio.Event()
            async with trio.open_nursery() as nursery:
                for peer in self.partners(now):
                    nursery.start_soon(self.exchange, peer)
            self._check_change(trio.current_time())
            with trio.move_on_after(self.interval):
                await self._wake.wait()

    async def leave(self, *, timeout: float) -> None:
        """Announce our departure to a few live members (best effort, within ``timeout``)."""
        now = trio.current_time()
        self.view.leave(now)
        others = [p for p in self.view.live(now) if p != self.view.me]
        targets = self._rng.sample(others, min(3, len(others)))
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for peer in targets:
                    nursery.start_soon(functools.partial(self.exchange, peer, timeout=timeout))


__all__ = [
    "BAD_MESSAGE",
    "BAD_RECORD",
    "IMPLAUSIBLE_RECORD",
    "MEMBERS_PROTOCOL",
    "MembersMessage",
    "MembershipExchange",
    "MembershipFormatError",
    "ViolationHandler",
    "decode_view",
    "encode_view",
]
