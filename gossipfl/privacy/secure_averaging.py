"""One peer's part in secure neighbourhood averaging, without I/O.

:mod:`gossipfl.privacy.secagg` has the arithmetic (masks, fixed point, corrections);
this module keeps the state a peer needs to use it round after round, in both roles:

* **as a receiver**, it keeps its *group*: the in-neighbours whose mask keys it knows,
  with their weights. Whenever that changes it starts a new *epoch* and hands the
  runtime a :class:`~gossipfl.wire.SecureGroup` to send every member, so that each
  knows whom to mask against. At the merge, it names who is missing, asks the present
  members for their corrections (:class:`~gossipfl.wire.SecureFix`), and combines.
* **as a sender**, it keeps each receiver's latest group, turns its model into the
  receiver's :class:`~gossipfl.wire.SecureShare`, and answers a receiver's fix request
  at most once per round. Answering twice could hand a receiver the masks of two
  different missing sets, whose union may be every mask the share holds: then the share
  is unmasked. One answer per round, and never one that leaves fewer than
  :data:`~gossipfl.privacy.secagg.MIN_GROUP` members present (so the fix alone cannot
  strip a share of its masks).

Trust (docs/privacy.md): a receiver relays its members' keys. A receiver that follows the
protocol and is curious learns only sums of at least two models. One that put its own
key in place of a member's could unmask the others' shares towards that member, so each
key is signed by its owner's identity (:mod:`gossipfl.transport.signing`) and a member
masks only against keys their owners signed: a group with any other key is refused. A
receiver that keeps a share it declared missing can unmask it with the corrections
(double masking would close this; not built).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from gossipfl import wire
from gossipfl.errors import ConfigError
from gossipfl.privacy.secagg import (
    MIN_GROUP,
    MaskKey,
    SecureAggregationError,
    correction,
    masked_contribution,
    unmask,
)
from gossipfl.transport.signing import PeerSignatures

F32 = npt.NDArray[np.float32]
U64 = npt.NDArray[np.uint64]

#: Bytes of a share's frame besides its 8 bytes per parameter (the header, generously).
_SHARE_OVERHEAD = 4096


def check_secure_averaging(
    *,
    rule: str,
    protocol: str = "sync",
    num_params: int | None = None,
    max_frame: int = wire.DEFAULT_MAX_FRAME,
    in_degrees: Mapping[str, int] | None = None,
    static: bool = True,
) -> None:
    """Raise :class:`ConfigError`, saying why, for what secure averaging cannot run with.

    ``in_degrees`` (node name -> in-degree) checks each receiver's group: at least
    :data:`MIN_GROUP` members (one alone would be sent in the clear, so is never sent)
    and at most :data:`~gossipfl.wire.MAX_SECURE_GROUP`.
    """
    if rule != "mean":
        raise ConfigError(
            f"secure averaging cannot run with the {rule!r} rule: a peer then sees only the "
            "weighted sum of its neighbours' models, and a robust rule must inspect each "
            "model to judge it (distances, medians, clipping). Use rule 'mean' with secure "
            "averaging, or a robust rule without it (differential privacy works with both; "
            "docs/privacy.md weighs the trade-off)"
        )
    if protocol != "sync":
        raise ConfigError(
            f"secure averaging needs the sync protocol, not {protocol!r}: masks cancel only "
            "among the shares of one round"
        )
    if not static:
        raise ConfigError(
            "secure averaging needs a static topology: a receiver's group (whose masks "
            "cancel) is agreed per connection, not per round"
        )
    if num_params is not None and 8 * num_params + _SHARE_OVERHEAD > max_frame:
        raise ConfigError(
            f"secure averaging sends 8 bytes per parameter in one frame: {num_params} "
            f"parameters need {8 * num_params + _SHARE_OVERHEAD} bytes, above max_frame "
            f"{max_frame} (at most {(max_frame - _SHARE_OVERHEAD) // 8} parameters)"
        )
    for node, degree in (in_degrees or {}).items():
        if degree < MIN_GROUP or degree > wire.MAX_SECURE_GROUP:
            raise ConfigError(
                f"secure averaging needs {MIN_GROUP} to {wire.MAX_SECURE_GROUP} in-neighbours "
                f"per peer, and {node} has {degree}: "
                + (
                    "a single neighbour's share could not be masked, so it is never sent"
                    if degree < MIN_GROUP
                    else "a group message lists at most that many"
                )
            )


#: Rounds of sent shares remembered for fix requests (a fix comes within the round).
HISTORY = 4


class SecureAveraging:
    """The secure-averaging state of peer ``me`` (see the module docstring), signing its
    mask key with ``signatures`` (``me``'s identity) and checking the others' with it."""

    def __init__(
        self, me: str, size: int, signatures: PeerSignatures, key: MaskKey | None = None
    ) -> None:
        if signatures.me != me:
            raise ValueError(f"signatures of {signatures.me} cannot sign for {me}")
        self.me = me
        self.size = size  # parameters of the model: a correction's length
        self._key = key if key is not None else MaskKey()
        self._signatures = signatures
        self._signature = signatures.sign(wire.secure_key_bytes(me, self._key.public))
        # the mask keys of the peers we talk to, as they announced them (signed)
        self._keys: dict[str, wire.SecureKey] = {}
        self._secrets: dict[tuple[str, bytes], bytes] = {}
        self.group: wire.SecureGroup | None = None  # ours, as a receiver
        self._groups: dict[str, wire.SecureGroup] = {}  # each receiver's, as a sender
        self._sent: dict[tuple[str, int], wire.SecureGroup] = {}  # (receiver, round) -> group
        self._recent: dict[str, dict[int, npt.ArrayLike]] = {}  # receiver -> round -> model
        self._answered: set[tuple[str, int]] = set()

    # ---------------------------------------------------------------------- keys

    def key_message(self) -> wire.SecureKey:
        """Our public mask key, for every peer we connect to."""
        return wire.SecureKey(key=self._key.public, signature=self._signature)

    def key_of(self, peer: str) -> bytes | None:
        """The mask key ``peer`` announced, if any."""
        known = self._keys.get(peer)
        return known.key if known is not None else None

    def learn_key(self, peer: str, message: wire.SecureKey) -> None:
        """``peer`` announced its mask key (a restarted peer announces a new one). Raises
        :class:`SecureAggregationError` if ``peer`` did not sign it: we would relay it
        to our members, who check."""
        if not self._signatures.verify(
            peer, wire.secure_key_bytes(peer, message.key), message.signature
        ):
            raise SecureAggregationError(f"{peer}'s mask key is not signed by {peer}")
        self._keys[peer] = message

    # ----------------------------------------------------------------- receiver

    def regroup(self, weights: Mapping[str, float]) -> wire.SecureGroup | None:
        """Our group for in-neighbours with these weights: a new one (to send to every
        member) if it differs from the current group, else ``None``. Neighbours whose
        key we do not know yet are left out until it comes."""
        members = tuple(
            wire.SecureMember(peer, known.key, float(weights[peer]), known.signature)
            for peer in sorted(weights)
            if (known := self._keys.get(peer)) is not None and peer != self.me and weights[peer] > 0
        )
        if not members:
            return None
        if self.group is not None and self.group.members == members:
            return None
        epoch = 0 if self.group is None else self.group.epoch + 1
        self.group = wire.SecureGroup(epoch=epoch, members=members)
        return self.group

    def missing(self, present: Iterable[str]) -> tuple[str, ...]:
        """The members of our group whose shares are not among ``present``."""
        if self.group is None:
            return ()
        have = set(present)
        return tuple(m.peer for m in self.group.members if m.peer not in have)

    def usable(self, present: Iterable[str]) -> bool:
        """Whether the shares of ``present`` can be unmasked: at least :data:`MIN_GROUP`
        of them (a member refuses to correct for fewer, or its share would be bare)."""
        return self.group is not None and len(set(present)) >= MIN_GROUP

    def combine(
        self, own: npt.ArrayLike, shares: Mapping[str, U64], fixes: Iterable[U64] = ()
    ) -> F32:
        """``(1 − Σ w_j) own + Σ w_j x_j`` over the members whose ``shares`` came, with
        the ``fixes`` of the missing members' masks subtracted: what the mean rule
        computes from the plain models, to fixed-point precision."""
        if self.group is None:
            raise SecureAggregationError("no group: nothing to combine")
        weights = {m.peer: m.weight for m in self.group.members}
        unknown = set(shares) - set(weights)
        if unknown:
            raise SecureAggregationError(f"shares from non-members {sorted(unknown)}")
        if not shares:
            return np.array(own, dtype=np.float32, copy=True)
        total = unmask(shares.values(), fixes)
        kept = 1.0 - sum(weights[p] for p in shares)
        merged = np.asarray(own, dtype=np.float64) * kept + total
        out: F32 = merged.astype(np.float32)
        return out

    # ------------------------------------------------------------------- sender

    def learn_group(self, receiver: str, group: wire.SecureGroup) -> None:
        """``receiver`` states its group. Raises :class:`SecureAggregationError` if the
        group does not hold us with our own key (the receiver is not following the
        protocol, or has an old key of ours), or if another member's key is not signed by
        that member (the receiver would then hold the secrets of our masks with it)."""
        mine = [m for m in group.members if m.peer == self.me]
        if not mine or mine[0].key != self._key.public:
            raise SecureAggregationError(
                f"{receiver}'s group (epoch {group.epoch}) does not hold our current key"
            )
        if receiver in {m.peer for m in group.members}:
            raise SecureAggregationError(f"{receiver}'s group holds {receiver} itself")
        old = self._groups.get(receiver)
        if old is not None and group.epoch <= old.epoch:
            raise SecureAggregationError(
                f"{receiver}'s group epoch {group.epoch} is not newer than {old.epoch}"
            )
        self._pair_secrets(group)  # every key must agree with ours before we use the group
        self._groups[receiver] = group

    def forget(self, receiver: str) -> None:
        """``receiver`` (re)connected: it starts a new group with us (a restarted peer
        counts epochs from 0 again). Our latest model for it stays, to share when the
        group comes."""
        self._groups.pop(receiver, None)

    def share(self, receiver: str, round: int, vector: npt.ArrayLike) -> wire.SecureShare | None:
        """Our masked model for ``receiver`` at ``round``; ``None`` while we know no group
        of ``receiver`` with another member to mask against (:meth:`reshare` sends it
        when one comes)."""
        recent = self._recent.setdefault(receiver, {})
        recent[round] = vector
        for stale in [r for r in recent if r <= round - HISTORY]:
            del recent[stale]
        group = self._groups.get(receiver)
        if group is None or len(group.members) < MIN_GROUP:
            return None
        weight = next(m.weight for m in group.members if m.peer == self.me)
        secrets = self._pair_secrets(group)
        masked = masked_contribution(
            vector,
            weight,
            me=self.me,
            receiver=receiver,
            round=round,
            group=[m.peer for m in group.members],
            secrets=secrets,
            epoch=group.epoch,
        )
        self._sent[(receiver, round)] = group
        for old in [k for k in self._sent if k[0] == receiver and k[1] < round - HISTORY]:
            del self._sent[old]
            self._answered.discard(old)
        return wire.SecureShare(sender=self.me, round=round, epoch=group.epoch, vector=masked)

    def reshare(self, receiver: str) -> list[wire.SecureShare]:
        """Our models of the last :data:`HISTORY` rounds for ``receiver`` again, masked
        for its new group (masks drawn for the new epoch, independent of the first
        shares'): a receiver whose group formed late may still be waiting for an
        earlier round than ours."""
        recent = self._recent.get(receiver, {})
        shares = [self.share(receiver, round, vector) for round, vector in sorted(recent.items())]
        return [share for share in shares if share is not None]

    def answer(self, receiver: str, fix: wire.SecureFix) -> wire.SecureShare:
        """Our correction for ``receiver``'s sum at ``fix.round``. Raises
        :class:`SecureAggregationError` (with the reason, for the log) for a round we
        sent no share in, a second request, a stale epoch, or a missing set that names
        us or strangers or would leave too few present."""
        sent = self._sent.get((receiver, fix.round))
        if sent is None:
            raise SecureAggregationError(f"we sent {receiver} no share in round {fix.round}")
        if sent.epoch != fix.epoch:
            raise SecureAggregationError(
                f"{receiver} asks about epoch {fix.epoch}; our share used {sent.epoch}"
            )
        if (receiver, fix.round) in self._answered:
            raise SecureAggregationError(
                f"{receiver} already had our correction for round {fix.round}: a second one "
                "could unmask our share"
            )
        members = [m.peer for m in sent.members]
        vector = correction(
            me=self.me,
            receiver=receiver,
            round=fix.round,
            group=members,
            missing=fix.missing,
            secrets=self._pair_secrets(sent),
            size=self.size,
            epoch=sent.epoch,
        )
        self._answered.add((receiver, fix.round))
        return wire.SecureShare(
            sender=self.me, round=fix.round, epoch=fix.epoch, vector=vector, missing=fix.missing
        )

    def _pair_secrets(self, group: wire.SecureGroup) -> dict[str, bytes]:
        secrets = {}
        for member in group.members:
            if member.peer == self.me:
                continue
            cached = self._secrets.get((member.peer, member.key))
            if cached is None:
                signed = wire.secure_key_bytes(member.peer, member.key)
                if not self._signatures.verify(member.peer, signed, member.signature):
                    raise SecureAggregationError(
                        f"the mask key given for {member.peer} is not signed by {member.peer}"
                    )
                try:
                    cached = self._key.pair_secret(self.me, member.peer, member.key)
                except ValueError as exc:  # a low-order point: no shared secret with it
                    raise SecureAggregationError(
                        f"the mask key given for {member.peer} is unusable: {exc}"
                    ) from None
                self._secrets[(member.peer, member.key)] = cached
            secrets[member.peer] = cached
        return secrets


__all__ = ["HISTORY", "SecureAveraging", "check_secure_averaging"]
