"""Membership inference by loss threshold: does a model give away who trained it?

A curious neighbour holds the model peer i sent it and a sample it suspects was in i's
data. Models fit their training samples better than unseen ones, so a low loss says
"member". The attack scores each candidate by its negated loss (Yeom et al. 2018); its
quality over members (peer i's training samples) and non-members (samples i never saw,
from the same distribution) is the ROC curve's area (0.5: no leakage) and the
true-positive rate at a 1% false-positive rate, the regime that matters for a few
individuals (Carlini et al. 2022).

The calibrated variant (difficulty calibration, Watson et al. 2022) scores each sample
by how much lower its loss is under the attacked model than under a reference model
that did not train on it: easy samples have a low loss under every model, so a raw
loss threshold mistakes them for members. A curious neighbour has such a reference at
hand, its own model. Both attacks are lower bounds on what leaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gossipfl.errors import ConfigError

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class MembershipLeakage:
    """What the attack achieved against one model."""

    auc: float
    """Area under the ROC curve: 0.5 is a coin toss, 1 a perfect attack."""
    tpr_at_1pct_fpr: float
    """Members found when at most 1% of non-members are wrongly accused."""
    advantage: float
    """max(TPR − FPR) over thresholds: the attack's membership advantage."""
    members: int
    nonmembers: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "mia_auc": self.auc,
            "mia_tpr_at_1pct_fpr": self.tpr_at_1pct_fpr,
            "mia_advantage": self.advantage,
            "mia_members": self.members,
            "mia_nonmembers": self.nonmembers,
        }


def _scores(values: npt.ArrayLike, what: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ConfigError(f"membership inference needs at least one {what} sample")
    if not np.isfinite(array).all():
        raise ConfigError(f"the {what} scores hold NaN or infinity")
    return array


def auc(positive: npt.ArrayLike, negative: npt.ArrayLike) -> float:
    """P(a positive scores above a negative), ties counting one half (the Mann–Whitney U
    statistic over its maximum): the ROC curve's area, exactly, in O(n log n)."""
    from scipy.stats import rankdata

    pos, neg = _scores(positive, "member"), _scores(negative, "non-member")
    ranks = rankdata(np.concatenate([pos, neg]), method="average")  # 1-based, ties averaged
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def tpr_at_fpr(positive: npt.ArrayLike, negative: npt.ArrayLike, fpr: float = 0.01) -> float:
    """The share of positives scoring strictly above the threshold that at most ``fpr``
    of the negatives exceed."""
    if not 0.0 <= fpr < 1.0:
        raise ConfigError(f"fpr must be in [0, 1), got {fpr}")
    pos, neg = _scores(positive, "member"), _scores(negative, "non-member")
    ordered = np.sort(neg)[::-1]
    allowed = int(np.floor(fpr * neg.size))  # negatives that may lie above the threshold
    threshold = ordered[allowed] if allowed < neg.size else -np.inf
    return float((pos > threshold).mean())


def _advantage(positive: FloatArray, negative: FloatArray) -> float:
    thresholds = np.unique(np.concatenate([positive, negative]))
    pos = np.sort(positive)
    neg = np.sort(negative)
    tpr = 1.0 - np.searchsorted(pos, thresholds, side="left") / pos.size
    fpr = 1.0 - np.searchsorted(neg, thresholds, side="left") / neg.size
    return float(max(0.0, np.max(tpr - fpr)))


def loss_threshold_attack(
    member_losses: npt.ArrayLike, nonmember_losses: npt.ArrayLike
) -> MembershipLeakage:
    """The loss-threshold attack's quality, from per-sample losses of the attacked model
    on its owner's training samples (members) and on samples it never saw."""
    return _leakage(-_scores(member_losses, "member"), -_scores(nonmember_losses, "non-member"))


def _leakage(pos: FloatArray, neg: FloatArray) -> MembershipLeakage:
    """The quality of membership scores (higher: more likely a member)."""
    return MembershipLeakage(
        auc=auc(pos, neg),
        tpr_at_1pct_fpr=tpr_at_fpr(pos, neg, 0.01),
        advantage=_advantage(pos, neg),
        members=int(pos.size),
        nonmembers=int(neg.size),
    )


def calibrated_attack(
    member_losses: npt.ArrayLike,
    member_reference: npt.ArrayLike,
    nonmember_losses: npt.ArrayLike,
    nonmember_reference: npt.ArrayLike,
) -> MembershipLeakage:
    """The difficulty-calibrated loss attack: each sample scored by its loss under the
    reference model minus its loss under the attacked one (members: the attacked model
    fits them better than the reference does)."""
    pairs = (
        (_scores(member_reference, "member reference"), _scores(member_losses, "member")),
        (
            _scores(nonmember_reference, "non-member reference"),
            _scores(nonmember_losses, "non-member"),
        ),
    )
    if any(ref.size != loss.size for ref, loss in pairs):
        raise ConfigError("each sample needs its loss under both models")
    (member_ref, member), (outsider_ref, outsider) = pairs
    return _leakage(member_ref - member, outsider_ref - outsider)


def sample_losses(learner: Any, vector: npt.ArrayLike, x: Any, y: Any) -> FloatArray:
    """Per-sample cross-entropy of the model ``vector`` (a flat model of ``learner``'s
    architecture) on ``(x, y)``; the learner's own model is restored afterwards. The
    learner must offer ``sample_losses(x, y)`` (the built-in numpy and torch ones do)."""
    method = getattr(learner, "sample_losses", None)
    if method is None:
        raise ConfigError(
            f"{type(learner).__name__} cannot give per-sample losses (no sample_losses method)"
        )
    saved = learner.adapter.get_flat()
    try:
        learner.adapter.set_flat(np.asarray(vector, dtype=np.float32))
        return np.asarray(method(x, y), dtype=np.float64)
    finally:
        learner.adapter.set_flat(saved)


__all__ = [
    "MembershipLeakage",
    "auc",
    "calibrated_attack",
    "loss_threshold_attack",
    "sample_losses",
    "tpr_at_fpr",
]
