"""Geometric median by smoothed Weiszfeld (RFA; Pillutla, Kakade, Harchaoui 2022).

The geometric median of the m = d+1 models (own included, equal weights) minimises
``Σ_j ‖z − x_j‖``. Smoothed Weiszfeld iterates ``z ← Σ_j β_j x_j / Σ_j β_j`` with
``β_j = 1 / max(ν, ‖z − x_j‖)``, starting from a robust point (see :func:`robust_start`),
accelerated by SQUAREM (see :func:`weiszfeld`).

Every iterate is an affine combination of the inputs (coefficients summing to 1: positive
after a Weiszfeld step, not always after an extrapolation), so the iterations run on the m
coefficients using the centred Gram matrix: each costs O(m²), independent of the model
size n. The n coordinates are read twice in total (Gram matrix, final combination),
whatever T is. This rule asks for the float64 Gram matrix (about twice the cost of the
float32 one the other distance rules use): Weiszfeld's fixed point and the exact test for
a median sitting on a model need distances between close models to many digits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gossipfl.merge import _compiled
from gossipfl.merge._kernels import (
    F32,
    F64,
    centred_gram,
    combine,
    distances_from,
    pairwise_sq_distances,
)
from gossipfl.merge.base import MergeRule, Requirement, check_float, check_int, param
from gossipfl.merge.context import MergeContext

#: Stop early once an iteration moves z by less than this fraction of the harmonic mean of
#: the distances from z to the models: the float32 output cannot resolve finer steps.
RELATIVE_TOLERANCE = 1e-7
#: A conservative bound on the relative error of the float64 centred Gram entries
#: (``centred_gram(precise=True)``: exact differences and products, float64 sums).
GRAM_RELATIVE_ERROR = 1e-12


def robust_start(g: F64) -> F64:
    """Coefficients of a starting point inside the majority cluster.

    The mean is the classic start, but a single neighbour sending values near the float32
    limit puts it ~1e38 away, and Weiszfeld then needs dozens of iterations just to walk
    back (each shrinks the outlier's weight by about the number of honest points). We
    start instead from the mean of the models no farther from the medoid (the model with
    the smallest sum of distances) than the median such distance: a majority of the
    models, so it is robust too, and an average of several, so it does not sit on a data
    point (where smoothed Weiszfeld would stall).
    """
    dist = np.sqrt(pairwise_sq_distances(g))
    medoid = int(np.argmin(dist.sum(axis=1)))
    near = dist[medoid] <= np.median(dist[medoid])
    coef: F64 = near / float(near.sum())
    return coef


def median_at_a_point(g: F64) -> F64 | None:
    """Coefficients of the geometric median if it sits on one of the models; else None.

    Point k minimises Σ_j ‖z − x_j‖ iff the unit vectors from x_k to the other points sum
    to a vector no longer than the number of points sitting on x_k (the subgradient
    condition). Weiszfeld only crawls towards such a point (sublinear convergence), and in
    small neighbourhoods with an outlier it is the common case (three points, one far
    away: the median is one of the other two whenever their angle is ≥ 120°), so it is
    tested exactly first: O(m³) on the Gram matrix, nothing per coordinate.

    When several models pass (the minimiser is not unique: two points, or an even number
    on a line), every point between them is a minimiser too, and their mean is returned:
    a canonical choice that does not depend on the order of the inputs.

    The test is evaluated from Gram entries G_jl accurate to about ε·r_j·r_l (r_j the
    distance of model j from the centre), and the expansion divides by distances between
    models, so its rounding is at most ε·(Σ_j (r_j + r_k)/d_kj)². A point within that
    margin of the condition is accepted: it is optimal up to the precision the float32
    inputs carry.
    """
    d2 = pairwise_sq_distances(g)
    same = d2 <= 1e-14 * max(float(d2.max()), 1e-300)
    with np.errstate(divide="ignore"):
        a = np.where(same, 0.0, 1.0 / np.sqrt(d2))
    ag = a @ g
    s = a.sum(axis=1)
    diag = g.diagonal()
    # ‖Σ_j a_kj (p_j − p_k)‖², expanded in Gram entries.
    norm2 = np.einsum("kj,kj->k", ag, a) - 2.0 * s * ag.diagonal() + s * s * diag
    multiplicity = same.sum(axis=1).astype(np.float64)
    r = np.sqrt(np.maximum(diag, 0.0))
    spread = a @ r + s * r
    margin = GRAM_RELATIVE_ERROR * spread * spread + 1e-9 * multiplicity**2
    optimal = norm2 - multiplicity**2 <= margin
    if not optimal.any():
        return None
    coef: F64 = optimal / float(optimal.sum())
    return coef


#: SQUAREM backtracks at most this many times (halving the extrapolation's excess over a
#: plain step) before it takes the plain Weiszfeld step instead.
BACKTRACKS = 2


def _step(g: F64, coef: F64, nu: float) -> tuple[F64, float]:
    """One smoothed-Weiszfeld step from ``coef``, and Σβ (the step's normaliser)."""
    beta = 1.0 / np.maximum(distances_from(g, coef), nu)
    total = float(beta.sum())
    new: F64 = beta / total
    return new, total


def _settled(g: F64, step: F64, total: float, m: int) -> bool:
    """Did a step move z by less than the tolerance? (m / Σβ is the harmonic mean of the
    distances: the scale of the near models, unmoved by a far outlier.)"""
    return float(step @ g @ step) <= (RELATIVE_TOLERANCE * m / total) ** 2


def weiszfeld(g: F64, *, iterations: int, nu: float, params: int | None = None) -> tuple[F64, int]:
    """Coefficients of the smoothed-Weiszfeld geometric median of the Gram points.

    Returns the coefficient vector (summing to 1) and the number of Weiszfeld steps run
    (at most ``iterations``; 0 when the median is one of the points, found exactly by
    :func:`median_at_a_point`). ``params``: the models' size, which picks the kernel path
    (see :func:`gossipfl.merge._compiled.enabled`); the compiled path runs the three
    steps (on-a-point test, robust start, iterations) in one call, with the same
    arithmetic.

    The steps are accelerated by SQUAREM (Varadhan and Roland 2008, scheme S3): two
    Weiszfeld steps c → c₁ → c₂ give r = c₁ − c and v = c₂ − 2c₁ + c; the point
    c − 2αr + α²v with α = −‖r‖/‖v‖ (norms in model space, through the Gram matrix)
    extrapolates along the path, and one more step from it stabilises. Where the
    extrapolation does not lower Σ‖z − x_j‖ it is shrunk, then dropped for the plain
    step, so the objective never rises. Plain Weiszfeld crawls when the median lies near,
    but not on, a model (the model's weight dominates every step): 500 steps could leave
    z 3e-2 of the points' spread from the true median; at the same budget this gets
    1e-4, and within the default 32 steps it gets 10–100× closer than the plain steps
    did (measured on 300 random draws with a far outlier).
    """
    if _compiled.enabled(params):
        return _compiled.weiszfeld(
            g,
            iterations=iterations,
            nu=nu,
            tolerance=RELATIVE_TOLERANCE,
            gram_error=GRAM_RELATIVE_ERROR,
            backtracks=BACKTRACKS,
        )
    at = median_at_a_point(g)
    if at is not None:
        return at, 0
    coef = robust_start(g)
    m = g.shape[0]
    done = 0
    # Each step is a handful of small numpy calls on m ≤ ~20 entries: call overhead
    # (~10 µs), independent of n.
    while done < iterations:
        c1, total = _step(g, coef, nu)
        done += 1
        if _settled(g, c1 - coef, total, m):
            return c1, done
        if iterations - done < 2:  # no budget for a SQUAREM cycle: a plain step
            coef = c1
            continue
        c2, total = _step(g, c1, nu)
        done += 1
        if _settled(g, c2 - c1, total, m):
            return c2, done
        r = c1 - coef
        v = (c2 - c1) - r
        vv = float(v @ g @ v)
        start = c2
        if vv > 0.0:
            alpha = -math.sqrt(max(float(r @ g @ r), 0.0) / vv)
            if alpha < -1.0:
                before = float(distances_from(g, coef).sum())
                for _ in range(BACKTRACKS + 1):
                    trial = coef - 2.0 * alpha * r + alpha * alpha * v
                    if float(distances_from(g, trial).sum()) <= before:
                        start = trial
                        break
                    alpha = 0.5 * (alpha - 1.0)
        c3, total = _step(g, start, nu)
        done += 1
        if _settled(g, c3 - start, total, m):
            return c3, done
        coef = c3
    return coef, done


@dataclass(kw_only=True, eq=False)
class GeometricMedian(MergeRule):
    """Smoothed-Weiszfeld geometric median of self + neighbours (equal weights).

    Breakdown point 1/2: tolerates b Byzantine neighbours when d+1 ≥ 2b + 1. ``nu`` is in
    model units; it bounds the weight any single point (including one the estimate sits
    on) can get. ``last_iterations`` records how many iterations the last merge ran.
    """

    name = "geometric-median"
    summary = "geometric median (RFA) of self + neighbours by smoothed Weiszfeld"
    _validates_finite = True

    T: int = param(32, "maximum Weiszfeld steps, SQUAREM-accelerated (stops once converged)")
    nu: float = param(1e-6, "smoothing ν: distances below ν count as ν (model units)")
    b: int = param(1, "Byzantine neighbours to tolerate; check() demands 2b+1 models")
    last_iterations: int = field(default_factory=int, init=False, repr=False, compare=False)

    def validate(self) -> None:
        check_int(self.name, "T", self.T, 1)
        check_float(self.name, "nu", self.nu, low=0.0, low_open=True)
        check_int(self.name, "b", self.b, 0)

    def requirement(self) -> Requirement:
        return Requirement(2 * self.b + 1, "2b+1", f"b={self.b}")

    def _median(self, center: F32, rows: F32) -> F32:
        g, _ = centred_gram(center, rows, self._ws, precise=True)
        coef, self.last_iterations = weiszfeld(
            g, iterations=self.T, nu=float(self.nu), params=center.shape[0]
        )
        return combine(center, rows, coef[1:], self._ws)

    def _merge(self, own: F32, rows: F32, weights: F64, context: MergeContext | None) -> F32:
        return self._median(own, rows)

    def aggregate(self, stack: npt.ArrayLike) -> F32:
        """Geometric median of the rows of ``stack``."""
        start = self._aggregate_prologue(stack)
        if not isinstance(start, tuple):
            return start
        return self._median(*start)
