"""Choosing an attack's scale by line search against the target's merge rule.

Several papers do not fix the scale of a crafted message: for each target and round the
attacker tries a few scales and keeps the one that moves the target's merged model
farthest from where honest gossip alone would take it (Gaucher, Dieuleveut & Hendrikx
2025 search 16 scales for their dissensus and spectral attacks). This is the strongest
form of a direction-plus-scale attack: a fixed scale is either clipped away (too large for
a clipping rule) or too timid (too small for averaging), and the search finds the scale
just inside what the rule lets through.

The search is a derivative-free exploration of a function on [0, ∞) with a budget of
evaluations: double the step while the value improves, then probe around the best point
with steps that shrink geometrically. It needs no gradient and no bracket, which suits
merge rules whose output is piecewise smooth in the scale (a clipping radius or a
selection changes at some scales).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from gossipfl.merge.errors import MergeInputError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Evaluations per search when an attack does not say (as in Gaucher et al.'s code).
DEFAULT_EVALS = 16


def line_maximize(
    objective: Callable[[float], float],
    *,
    evals: int = DEFAULT_EVALS,
    start: float = 0.0,
    step: float = 1.0,
    shrink: float = 0.8,
) -> float:
    """A best-effort maximiser of ``objective`` over ``[0, ∞)`` in ``evals`` calls.

    Expansion: from ``start``, try ``best + step`` and double ``step`` after each
    improvement; the first failure ends it. Refinement: alternate probes on either side of
    the best point found, shrinking ``step`` by ``shrink`` after each probe. Probes never
    go below 0. Non-finite objective values count as worse than any finite one.
    """
    if evals < 1:
        raise ValueError(f"evals must be >= 1, got {evals}")
    if not 0.0 < shrink < 1.0:
        raise ValueError(f"shrink must be in (0, 1), got {shrink}")

    def value(x: float) -> float:
        y = objective(x)
        return y if math.isfinite(y) else -math.inf

    best_x, best_y = start, value(start)
    left = evals - 1
    probe = best_x
    while left > 0:  # expansion
        probe = best_x + step
        y = value(probe)
        left -= 1
        if y > best_y:
            best_x, best_y = probe, y
            step *= 2.0
        else:
            step *= shrink
            break
    while left > 0:  # refinement around the best point, alternating sides
        probe = probe + step if probe < best_x else max(probe - step, 0.0)
        if probe == best_x:
            probe = best_x + step
        y = value(probe)
        left -= 1
        if y > best_y:
            best_x, best_y = probe, y
        step *= shrink
    return best_x


def deviation_objective(
    merge: Callable[[F32], F32], honest_target: F64, message: Callable[[float], F64]
) -> Callable[[float], float]:
    """``s ↦ ‖merge(message(s)) − honest_target‖²``: how far the target lands from where
    honest gossip alone would take it when every Byzantine neighbour sends
    ``message(s)``. A message the rule refuses (non-finite after scaling) scores −∞."""

    def objective(scale: float) -> float:
        crafted = message(scale).astype(np.float32)
        if not np.all(np.isfinite(crafted)):
            return -math.inf
        try:
            merged = merge(crafted)
        except MergeInputError:
            return -math.inf
        diff = merged.astype(np.float64) - honest_target
        return float(diff @ diff)

    return objective


__all__ = ["DEFAULT_EVALS", "deviation_objective", "line_maximize"]
