"""Privacy, measured: how much the models peers share leak about their data.

* :mod:`gossipfl.privacy.membership`: a membership-inference attack run by a curious
  neighbour on a model it received (the loss-threshold attack of Yeom et al. 2018),
  reported as the attack's AUC and its true-positive rate at a low false-positive rate:
  the measure every mechanism is judged by.
* :mod:`gossipfl.privacy.dpsgd`: differential privacy per peer with DP-SGD, a peer's
  plan (noise, sampling rate, budget) and running account;
  :mod:`gossipfl.privacy.accounting` counts (ε, δ) with dp-accounting's RDP accountant.
"""

from __future__ import annotations

from gossipfl.privacy.accounting import calibrate_noise, dp_sgd_epsilon
from gossipfl.privacy.dpsgd import DPPlan, DPSettings, PrivacyBudgetExhausted
from gossipfl.privacy.membership import (
    MembershipLeakage,
    auc,
    calibrated_attack,
    loss_threshold_attack,
    sample_losses,
    tpr_at_fpr,
)

__all__ = [
    "DPPlan",
    "DPSettings",
    "MembershipLeakage",
    "PrivacyBudgetExhausted",
    "auc",
    "calibrate_noise",
    "calibrated_attack",
    "dp_sgd_epsilon",
    "loss_threshold_attack",
    "sample_losses",
    "tpr_at_fpr",
]
