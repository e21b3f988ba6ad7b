"""The runtime side of secure averaging: its messages in and out, and the masked merge.

The state and the rules live in :class:`~gossipfl.privacy.secure_averaging.SecureAveraging`
(no I/O); this module connects them to a peer's outboxes and clock. Message flow
(docs/protocol.md, section 5.8):

1. after each other's ``hello``, two peers exchange ``secure-key`` messages;
2. a receiver whose set of in-neighbours with known keys changes starts a new epoch and
   sends its ``secure-group`` to every member;
3. each round a member sends the receiver a ``secure-share`` (its masked, weighted
   model) instead of an ``update``; the protocol core collects them like models;
4. at the merge, if members are missing, the receiver sends the present ones a
   ``secure-fix`` naming them, and waits up to the round deadline for their corrections
   (``secure-share`` with ``missing`` set); then it unmasks the sum. Without enough
   present members, or if a correction does not come, it keeps its own model for the
   round (counted in :class:`~gossipfl.peer.reports.PeerCounters`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import cast

import numpy as np
import numpy.typing as npt
import trio

from gossipfl import wire
from gossipfl.peer.reports import PeerCounters, Vector
from gossipfl.peerlog import PeerWarnings
from gossipfl.privacy.secagg import SecureAggregationError
from gossipfl.privacy.secure_averaging import SecureAveraging
from gossipfl.protocol import Merge, PeerId
from gossipfl.transport.signing import PeerSignatures

logger = logging.getLogger(__name__)

U64 = npt.NDArray[np.uint64]

#: Work a neighbour may make us do per round of ours, beyond which its secure-averaging
#: messages are refused: new keys (a restarted peer sends one), and new groups (each makes
#: us mask our recent models again; a group grows once per member as keys arrive).
MAX_KEY_CHANGES = 1
MAX_REGROUPS = wire.MAX_SECURE_GROUP

SendFrames = Callable[[PeerId, tuple[bytes, ...]], None]


class SecureExchange:
    """Secure averaging for one peer's runtime (see the module docstring)."""

    def __init__(
        self,
        me: PeerId,
        size: int,
        *,
        signatures: PeerSignatures,
        send: SendFrames,
        counters: PeerCounters,
        name: str,
    ) -> None:
        self.state = SecureAveraging(me, size, signatures)
        self._send = send
        self._counters = counters
        self._name = name
        self._warnings = PeerWarnings()
        self._shares: dict[tuple[PeerId, int], tuple[int, U64]] = {}  # (epoch, share)
        self._fixes: dict[int, dict[PeerId, U64]] = {}  # corrections awaited, by round
        self._arrived = trio.Event()
        self.round = 0  # ours, set by the runtime: the unit of the work bounds
        self._work: dict[tuple[PeerId, str], tuple[int, int]] = {}  # -> (round, count)

    # --------------------------------------------------------------- messages out

    def greet(self, peer: PeerId) -> None:
        """``peer``'s hello was accepted: a new connection, so a new exchange of keys
        and groups with it."""
        self.state.forget(peer)
        self._send(peer, (wire.encode(self.state.key_message()),))

    def regroup(self, weights: Mapping[PeerId, float], *, also: PeerId | None = None) -> None:
        """Our in-neighbours (or their keys) may have changed: send a new group to every
        member if it did; else send the current one to ``also`` (a member that just
        (re)connected) if it is a member."""
        group = self.state.regroup(weights)
        if group is not None:
            logger.debug(
                "%s: secure group epoch %d: %s",
                self._name,
                group.epoch,
                [m.peer for m in group.members],
            )
            frame = wire.encode(group)
            for member in group.members:
                self._send(member.peer, (frame,))
            return
        current = self.state.group
        members = {m.peer for m in current.members} if current is not None else set()
        if current is not None and also in members:
            self._send(also, (wire.encode(current),))

    def share(self, peer: PeerId, round: int, vector: Vector) -> tuple[bytes, ...] | None:
        """Our masked model for ``peer`` (``None``: it has told us no usable group yet)."""
        try:
            message = self.state.share(peer, round, vector)
        except SecureAggregationError as exc:  # our own model beyond fixed point's range
            self._counters.secure_unsent += 1
            self._warnings.warn(logger, "range", "%s: round %d: %s", self._name, round, exc)
            return None
        logger.debug("%s: share for %s round %d: %s", self._name, peer, round, message is not None)
        if message is None:
            self._counters.secure_unsent += 1
            return None
        return (wire.encode(message),)

    # ---------------------------------------------------------------- messages in

    def on_control(
        self,
        peer: PeerId,
        message: wire.SecureKey | wire.SecureGroup | wire.SecureFix,
        weights: Mapping[PeerId, float],
    ) -> None:
        """A key, a group or a fix request from ``peer``."""
        try:
            if isinstance(message, wire.SecureKey):
                if self.state.key_of(peer) not in (None, message.key):
                    self._spend(peer, "key", MAX_KEY_CHANGES)
                self.state.learn_key(peer, message)
                if peer in weights:
                    self.regroup(weights, also=peer)
            elif isinstance(message, wire.SecureGroup):
                logger.debug("%s: %s's group epoch %d", self._name, peer, message.epoch)
                self._spend(peer, "group", MAX_REGROUPS)
                self.state.learn_group(peer, message)
                for again in self.state.reshare(peer):  # recent models, for the new group
                    self._send(peer, (wire.encode(again),))
            else:
                answer = self.state.answer(peer, message)
                self._send(peer, (wire.encode(answer),))
        except SecureAggregationError as exc:
            self._counters.secure_refused += 1
            self._warnings.warn(
                logger, peer, "%s: secure averaging with %s: %s", self._name, peer, exc
            )

    def _spend(self, peer: PeerId, what: str, limit: int) -> None:
        """Count one unit of ``what`` work ``peer`` asked of us this round; refuse beyond
        ``limit`` (an insider must not make us recompute masks without end)."""
        round, count = self._work.get((peer, what), (self.round, 0))
        if round != self.round:
            count = 0
        if count >= limit:
            raise SecureAggregationError(
                f"more than {limit} new {what}(s) from it in round {self.round}; refused"
            )
        self._work[(peer, what)] = (self.round, count + 1)

    def on_share(self, peer: PeerId, share: wire.SecureShare) -> Vector | None:
        """A share from ``peer``: a contribution is returned for the protocol core (which
        carries it like a model); a correction is kept for the merge waiting for it."""
        if share.missing:
            waiting = self._fixes.get(share.round)
            if waiting is None or peer in waiting:
                self._counters.secure_refused += 1  # unasked, late or repeated
                return None
            waiting[peer] = share.vector
            self._arrived.set()
            self._arrived = trio.Event()
            return None
        group = self.state.group
        if group is None or share.epoch != group.epoch:
            self._counters.secure_stale += 1  # masked against a group we no longer use
            return None
        # The newest share of a round counts (a member shares again for a new group); the
        # core files the first as it files models, never looking inside it.
        self._shares[(peer, share.round)] = (share.epoch, share.vector)
        return cast(Vector, share.vector)

    # ---------------------------------------------------------------------- merge

    async def merge(self, action: Merge, wait: float) -> Vector:
        """Our model after the masked merge of ``action`` (see the module docstring)."""
        own = np.array(action.own, dtype=np.float32, copy=True)
        group = self.state.group
        shares: dict[PeerId, U64] = {}
        for peer in action.peers:
            filed = self._shares.get((peer, action.round))
            if group is not None and filed is not None and filed[0] == group.epoch:
                shares[peer] = filed[1]
        for key in [k for k in self._shares if k[1] <= action.round]:
            del self._shares[key]
        if group is None or not shares:
            return own
        if not self.state.usable(shares):
            self._counters.secure_failed += 1
            return own
        missing = self.state.missing(shares)
        fixes: dict[PeerId, U64] = {}
        if missing:
            fixes = self._fixes[action.round] = {}
            frame = wire.encode(
                wire.SecureFix(round=action.round, epoch=group.epoch, missing=missing)
            )
            for peer in sorted(shares):
                self._send(peer, (frame,))
            with trio.move_on_after(wait):
                while len(fixes) < len(shares):
                    await self._arrived.wait()
            del self._fixes[action.round]
            if len(fixes) < len(shares):
                self._counters.secure_failed += 1
                self._warnings.warn(
                    logger,
                    "fix",
                    "%s: round %d: %d of %d corrections came; kept our own model",
                    self._name,
                    action.round,
                    len(fixes),
                    len(shares),
                )
                return own
            self._counters.secure_fixes += 1
        merged = self.state.combine(own, shares, fixes.values())
        self._counters.secure_merges += 1
        return merged


__all__ = ["SecureExchange"]
