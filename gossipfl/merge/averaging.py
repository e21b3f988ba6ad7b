"""Plain gossip averaging: the baseline every robust rule is measured against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gossipfl.merge._kernels import F32, F64, combine
from gossipfl.merge.base import MergeRule
from gossipfl.merge.context import MergeContext


@dataclass(kw_only=True, eq=False)
class Mean(MergeRule):
    """D-PSGD gossip: ``x_i ← (1 − Σ_j w_j) x_i + Σ_j w_j x_j``.

    With Metropolis–Hastings weights this is row i of ``W @ X``. It tolerates nothing: one
    neighbour sending ``c·e`` moves the result by ``w_j·c``, without bound.
    Cost: one gemv over the (d, n) stack; the finiteness check rides on it (see
    :func:`~gossipfl.merge._kernels.combine`).
    """

    name = "mean"
    summary = "weighted gossip average with the mixing weights (D-PSGD); not robust"
    _validates_finite = True

    def _merge(self, own: F32, rows: F32, weights: F64, context: MergeContext | None) -> F32:
        return combine(own, rows, weights, self._ws, validate=True)

    def aggregate(self, stack: npt.ArrayLike) -> F32:
        """The plain mean of the rows."""
        start = self._aggregate_prologue(stack)
        if not isinstance(start, tuple):
            return start
        first, rest = start
        m = rest.shape[0] + 1
        return combine(first, rest, np.full(m - 1, 1.0 / m), self._ws, validate=True)
