"""Privacy, measured: how much the models peers share leak about their data.

Today: :mod:`gossipfl.privacy.membership`, a membership-inference attack run by a curious
neighbour on a model it received (the loss-threshold attack of Yeom et al. 2018),
reported as the attack's AUC and its true-positive rate at a low false-positive rate.
It is the measure the privacy mechanisms still to come (differential privacy, secure
neighbourhood averaging) are judged by.
"""

from __future__ import annotations

from gossipfl.privacy.membership import (
    MembershipLeakage,
    auc,
    loss_threshold_attack,
    sample_losses,
    tpr_at_fpr,
)

__all__ = ["MembershipLeakage", "auc", "loss_threshold_attack", "sample_losses", "tpr_at_fpr"]
