"""Clipping rules: centred clipping, ClippedGossip (self-centred clipping) and CS+.

All three move the own model towards each neighbour by at most a radius τ:
``clip(v, τ) = v · min(1, τ/‖v‖)``. They differ in the centre and in how τ is chosen.

* ``centered-clipping`` (Karimireddy, He, Jaggi, ICML 2021) iterates
  ``v ← v + (1/m) Σ_j clip(x_j − v, τ)`` L times from the own model, over all m = d+1
  models with equal weights.
* ``clipped-gossip`` (He, Karimireddy, Jaggi 2022) is gossip with clipped differences:
  ``x_i ← x_i + Σ_j W_ij clip(x_j − x_i, τ_i)``. A fixed τ collapses under sign flipping,
  so by default τ_i adapts each round to the neighbours' distances (see :class:`ClippedGossip`).
* ``cs-plus`` (Gaucher, Dieuleveut, Hendrikx, ICML 2025) is the same update with step η and
  τ_i chosen so that exactly the farthest neighbours of total weight 2δ get clipped, which
  gives a near-optimal breakdown point.

Here δ, the Byzantine weight a node must withstand, is the sum of the b largest mixing
weights among the neighbours present: the worst case for b Byzantine neighbours.

Only distances from the centre are needed; they come from the centred Gram matrix, and
the result is one gemv: O(dn) plus O(d log d) for choosing τ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gossipfl.merge._kernels import (
    F32,
    F64,
    centred_gram,
    centred_sq_distances,
    combine,
    distances_from,
)
from gossipfl.merge.base import MergeRule, Requirement, check_float, check_int, param
from gossipfl.merge.context import MergeContext

#: Relative slack when comparing cumulative weights with a target (weights like 1/3 do
#: not add up exactly in floating point).
_CUMULATIVE_SLACK = 1e-9


def byzantine_weight(weights: F64, b: int) -> float:
    """δ: the sum of the ``b`` largest weights (the worst placement of b Byzantine)."""
    if b <= 0 or weights.size == 0:
        return 0.0
    return float(np.sort(weights)[-b:].sum())


def clip_scales(dist: F64, tau: float) -> F64:
    """``min(1, τ/dist)`` per entry, with 1 where ``dist`` is 0."""
    scale = np.ones_like(dist)
    far = dist > tau
    scale[far] = tau / dist[far]
    return scale


def he_radius(dist: F64, weights: F64, delta: float) -> float:
    """ClippedGossip's adaptive radius: ``τ² = (1/δ) Σ_{j∈H} w_j ‖x_j − x_i‖²``.

    H, the presumed honest neighbours, are the nearest ones whose weights add up to at
    most ``Σw − δ`` (He et al.'s rule with the δ farthest weight presumed Byzantine).
    """
    if delta <= 0.0:
        return math.inf
    order = np.argsort(dist, kind="stable")
    cum = np.cumsum(weights[order])
    total = float(cum[-1])
    honest = cum <= (total - delta) + _CUMULATIVE_SLACK * max(total, 1.0)
    sel = order[honest]
    return math.sqrt(float(weights[sel] @ dist[sel] ** 2) / delta)


def cs_plus_radius(dist: F64, weights: F64, delta: float) -> float:
    """CS+'s radius: the largest distance τ such that the neighbours farther than τ,
    counted from the farthest, carry at least weight 2δ.

    If no distance qualifies (the nearest neighbour alone weighs more than Σw − 2δ, which
    unequal weights allow even when d ≥ 2b + 1), the nearest neighbour's distance: with
    τ = 0 the node would never move again. Seen with Metropolis weights on Erdős–Rényi
    graphs: a degree-5 node with b = 2 froze at its own data (docs/robustness.md).
    """
    if delta <= 0.0:
        return math.inf
    order = np.argsort(dist, kind="stable")
    cum = np.cumsum(weights[order])
    total = float(cum[-1])
    inside = np.flatnonzero(cum <= (total - 2.0 * delta) + _CUMULATIVE_SLACK * max(total, 1.0))
    return float(dist[order[inside[-1] if inside.size else 0]])


@dataclass(kw_only=True, eq=False)
class CenteredClipping(MergeRule):
    """Centred clipping from the own model: L times ``v ← v + (1/m) Σ_j clip(x_j − v, τ)``
    over the m = d+1 models (equal weights).

    ``tau`` unset (the default) adapts per merge: τ = the largest distance from own among
    its d − b nearest neighbours, so b farthest get clipped to that radius in the first
    iteration. ``last_tau`` records the radius used. Each iteration moves v by at most τ
    (the first by τ·d/(d+1)). Needs d+1 ≥ 2b + 1.
    """

    name = "centered-clipping"
    summary = "iterative centred clipping from the own model (Karimireddy et al. 2021)"
    _validates_finite = True

    tau: float | None = param(None, "clipping radius τ in model units; unset = adaptive")
    L: int = param(3, "clipping iterations")
    b: int = param(1, "Byzantine neighbours to tolerate (adaptive τ; check() wants 2b+1)")
    last_tau: float = field(default_factory=float, init=False, repr=False, compare=False)

    def validate(self) -> None:
        if self.tau is not None:
            check_float(self.name, "tau", self.tau, low=0.0)
        check_int(self.name, "L", self.L, 1)
        check_int(self.name, "b", self.b, 0)

    def requirement(self) -> Requirement:
        return Requirement(2 * self.b + 1, "2b+1", f"b={self.b}")

    def _clip(self, center: F32, rows: F32) -> F32:
        g, _ = centred_gram(center, rows, self._ws)
        m = g.shape[0]
        coef = np.zeros(m)
        coef[0] = 1.0
        if self.tau is None:
            near = np.sort(np.sqrt(np.maximum(g.diagonal()[1:], 0.0)))
            tau = float(near[max(m - 1 - self.b, 1) - 1])
        else:
            tau = float(self.tau)
        self.last_tau = tau
        for _ in range(self.L):
            scale = clip_scales(distances_from(g, coef), tau)
            coef = coef * (1.0 - scale.sum() / m) + scale / m
        return combine(center, rows, coef[1:], self._ws)

    def _merge(self, own: F32, rows: F32, weights: F64, context: MergeContext | None) -> F32:
        return self._clip(own, rows)

    def aggregate(self, stack: npt.ArrayLike) -> F32:
        """Centred clipping over the rows of ``stack``, from the first row."""
        start = self._aggregate_prologue(stack)
        if not isinstance(start, tuple):
            return start
        return self._clip(*start)


@dataclass(kw_only=True, eq=False)
class ClippedGossip(MergeRule):
    """Self-centred clipping: ``x_i ← x_i + Σ_j w_j clip(x_j − x_i, τ_i)``.

    With ``tau`` unset, τ_i adapts every merge (He et al. 2022): the neighbours nearest to
    x_i whose weights add up to Σw − δ are presumed honest, and
    ``τ_i = sqrt((1/δ) Σ_{honest} w_j ‖x_j − x_i‖²)``. ``b = 0`` means δ = 0: plain gossip.
    A fixed ``tau`` is available for experiments but collapses under sign flipping.
    ``last_tau`` records the radius of the last merge; the model moves by at most
    τ·Σw per merge. Its guarantee depends on δ relative to the honest graph's spectral
    gap rather than on local counts, so it needs only one presumed-honest neighbour.
    """

    name = "clipped-gossip"
    summary = "gossip with self-centred clipping and adaptive radius (He et al. 2022)"
    _validates_finite = True

    tau: float | None = param(None, "fixed clipping radius τ; unset = adaptive per merge")
    b: int = param(1, "Byzantine neighbours presumed; δ = sum of the b largest weights")
    last_tau: float = field(default_factory=float, init=False, repr=False, compare=False)

    def validate(self) -> None:
        if self.tau is not None:
            check_float(self.name, "tau", self.tau, low=0.0)
        check_int(self.name, "b", self.b, 0)

    def requirement(self) -> Requirement:
        if self.tau is not None:
            return Requirement(1, "1", "")
        return Requirement(self.b + 2, "b+2", f"b={self.b}")

    def _merge(self, own: F32, rows: F32, weights: F64, context: MergeContext | None) -> F32:
        sq, _ = centred_sq_distances(own, rows, self._ws)
        dist = np.sqrt(sq)
        if self.tau is None:
            tau = he_radius(dist, weights, byzantine_weight(weights, self.b))
        else:
            tau = float(self.tau)
        self.last_tau = tau
        return combine(own, rows, weights * clip_scales(dist, tau), self._ws)


@dataclass(kw_only=True, eq=False)
class CSPlus(MergeRule):
    """CS+ robust gossip: ``x_i ← x_i − η Σ_j w_j clip(x_i − x_j, τ_i)`` where τ_i is the
    distance beyond which the farthest neighbours of total weight 2δ lie (they get
    clipped), δ = the sum of the b largest weights.

    Near-optimal breakdown point (Gaucher et al. 2025). Needs d ≥ 2b + 1 neighbours so that
    some neighbour stays unclipped. ``last_tau`` records the radius of the last merge; the
    model moves by at most η·τ·Σw per merge.

    Short rounds: with b + 1 to 2b neighbours present (the others silent or down), τ is the
    nearest neighbour's distance (see :func:`cs_plus_radius`). With at most b Byzantine
    among them, some honest neighbour is present and τ is at most its distance, so no
    model, Byzantine or not, pulls by more than η·w·(that distance): the honest spread
    bounds the damage, instead of the peer training alone until the silence ends.
    """

    name = "cs-plus"
    summary = "CS+ robust gossip: clip the 2δ farthest weight (Gaucher et al. 2025)"
    _validates_finite = True

    b: int = param(1, "Byzantine neighbours to tolerate; δ = sum of the b largest weights")
    eta: float = param(1.0, "communication step η in (0, 1]")
    last_tau: float = field(default_factory=float, init=False, repr=False, compare=False)

    def validate(self) -> None:
        check_int(self.name, "b", self.b, 0)
        check_float(self.name, "eta", self.eta, low=0.0, high=1.0, low_open=True)

    def requirement(self) -> Requirement:
        return Requirement(2 * self.b + 2, "2b+2", f"b={self.b}")

    @property
    def short_degree(self) -> int | None:
        return self.b + 1

    def _merge(self, own: F32, rows: F32, weights: F64, context: MergeContext | None) -> F32:
        sq, _ = centred_sq_distances(own, rows, self._ws)
        dist = np.sqrt(sq)
        tau = cs_plus_radius(dist, weights, byzantine_weight(weights, self.b))
        self.last_tau = tau
        return combine(own, rows, float(self.eta) * weights * clip_scales(dist, tau), self._ws)
