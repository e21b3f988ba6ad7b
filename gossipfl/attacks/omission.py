"""Omission: a neighbour that stays connected but withholds its model.

The simplest insider attack, and a common fault (a peer stuck in a long step, a bug): the
peer keeps its connections and its heartbeats, so nobody marks it down, but from round
``after`` on it sends no model at all. A merge rule cannot see a message that never came;
what it costs is the runtime's business: how long the target waits for the model, and what
the rule does with a neighbourhood one short (see docs/robustness.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gossipfl.attacks.base import Attack, AttackView
from gossipfl.merge.base import check_int, param


@dataclass(kw_only=True, eq=False)
class Omission(Attack):
    """Send nothing from round ``after`` on (before it: the honest model)."""

    name = "omission"
    summary = "stay connected and heartbeat, but send no model from round `after` on"

    after: int = param(0, "first round in which no model is sent")

    def validate(self) -> None:
        check_int(self.name, "after", self.after, 0)

    def withholds(self, round: int) -> bool:
        return round >= self.after

    def _craft(self, view: AttackView, rng: np.random.Generator) -> npt.NDArray[Any]:
        return view.own.copy()  # before ``after``: behave honestly


__all__ = ["Omission"]
