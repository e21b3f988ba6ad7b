"""Coordinate-wise order statistics: median and trimmed mean.

Both treat the peer's own model and its d neighbours' models alike (m = d + 1 values per
coordinate) and ignore the mixing weights: a weighted median is a different estimator with
a different breakdown point, and the guarantees below are stated for counts.

They run a comparator network compiled for their (m, b) (the cheapest of a pruned Batcher
sorting network, a min-max tournament and a known median network; see
:func:`gossipfl.merge._kernels.trimmed_plan`) over column chunks: O(m log² m) vectorised
min/max passes at most, no Python loop over coordinates and no ``np.partition`` along a
strided axis (which measured 10–25x slower here). NaN or inf inputs raise
:class:`~gossipfl.merge.NonFiniteInputError`, checked chunk by chunk in the same pass.
With numba (the ``fast`` extra) the same networks run per coordinate on registers in one
fused loop (:mod:`gossipfl.merge._compiled`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy.typing as npt

from gossipfl.merge._kernels import F32, F64, trimmed_mean
from gossipfl.merge.base import MergeRule, Requirement, check_int, param
from gossipfl.merge.context import MergeContext


@dataclass(kw_only=True, eq=False)
class TrimmedMean(MergeRule):
    """Per coordinate, drop the b largest and b smallest of the m = d+1 values (own
    included) and average the remaining m − 2b.

    Tolerates up to b Byzantine neighbours: each output coordinate then lies within the
    [min, max] of the honest values of that coordinate. Needs m ≥ 2b + 1.
    """

    name = "trimmed-mean"
    summary = "coordinate-wise trimmed mean of self + neighbours, dropping b at each end"
    _validates_finite = True

    b: int = param(1, "values dropped at each end of every coordinate (Byzantine tolerated)")

    def validate(self) -> None:
        check_int(self.name, "b", self.b, 0)

    def requirement(self) -> Requirement:
        return Requirement(2 * self.b + 1, "2b+1", f"b={self.b}")

    def _merge(self, own: F32, rows: F32, weights: F64, context: MergeContext | None) -> F32:
        return trimmed_mean(own, rows, self.b, self._ws)

    def aggregate(self, stack: npt.ArrayLike) -> F32:
        """Trimmed mean of the rows of ``stack``."""
        start = self._aggregate_prologue(stack)
        if not isinstance(start, tuple):
            return start
        return trimmed_mean(*start, self.b, self._ws)


@dataclass(kw_only=True, eq=False)
class Median(MergeRule):
    """Coordinate-wise median of the m = d+1 values (own included); for even m the mean
    of the two middle values.

    Tolerates b Byzantine neighbours while they are a minority (m ≥ 2b + 1); ``b`` only
    sets what :meth:`check` demands. Known weakness: on non-IID data it loses accuracy
    even with no attack (≈85% vs 96% on digits, Dirichlet α = 0.1, torus).
    """

    name = "median"
    summary = "coordinate-wise median of self + neighbours"
    _validates_finite = True

    b: int = param(1, "Byzantine neighbours to tolerate; check() demands 2b+1 models")

    def validate(self) -> None:
        check_int(self.name, "b", self.b, 0)

    def requirement(self) -> Requirement:
        return Requirement(2 * self.b + 1, "2b+1", f"b={self.b}")

    def _merge(self, own: F32, rows: F32, weights: F64, context: MergeContext | None) -> F32:
        return trimmed_mean(own, rows, rows.shape[0] // 2, self._ws)

    def aggregate(self, stack: npt.ArrayLike) -> F32:
        """Coordinate-wise median of the rows of ``stack``."""
        start = self._aggregate_prologue(stack)
        if not isinstance(start, tuple):
            return start
        first, rest = start
        return trimmed_mean(first, rest, rest.shape[0] // 2, self._ws)
