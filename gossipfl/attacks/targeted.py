"""Attacks aimed at one target's gossip step: they use the target's own model and weights.

* ``dissensus`` (He, Karimireddy & Jaggi 2022) sends
  ``x_i − ε Σ_{j honest} W_ij (x_j − x_i) / δ_i``. Every Byzantine neighbour of i sends the
  same vector, so together they add ``−ε`` times the honest gossip step to the target's
  averaging step: with ε = 1 plain gossip leaves x_i exactly where it was, with ε > 1 it
  pushes x_i away from its neighbours. Honest models never agree, and with non-IID data
  each keeps fitting only its own classes.
* ``isolation`` (Wu, Chen & Ling 2023, the IOS paper) sends the vector that makes the
  *unweighted* average of everything the target's neighbours sent equal to the target's
  own model: ``x_i − Σ_{j honest} (x_j − x_i) / b_i``. Under equal weights this is
  dissensus with ε = 1; under Metropolis weights the two differ.
* ``spectral`` (Gaucher, Dieuleveut & Hendrikx 2025) sends ``x_i + s · u_i Σ_k u_k x_k``
  with u the Fiedler vector of the honest graph: each target is pushed along the honest
  models' component on the graph's slowest-mixing direction, the two sides of the graph
  apart, which gossip undoes most slowly. The scale s is line-searched against the
  target's rule (:mod:`gossipfl.attacks.search`).
* ``sample-duplication`` sends a copy of one honest neighbour's model (by default the one
  farthest from the target), over-weighting that neighbour's data: nothing about the
  message is abnormal, so no rule can reject it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gossipfl.attacks.base import F32, F64, Attack, AttackView
from gossipfl.attacks.search import DEFAULT_EVALS, deviation_objective, line_maximize
from gossipfl.errors import ConfigError
from gossipfl.merge.base import check_float, check_int, param


def _honest_step(view: AttackView, weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``Σ_j weights_j (x_j − x_ref)`` over the target's honest neighbours (float64)."""
    ref = view.reference().astype(np.float64)
    if view.neighbours.shape[0] == 0:
        return np.zeros_like(ref)
    stacked = np.asarray(view.neighbours, np.float64)
    step: npt.NDArray[np.float64] = weights @ stacked - weights.sum() * ref
    return step


def _mean_merge(view: AttackView) -> Callable[[F32], F32]:
    """The target's merge under plain weighted averaging, for an attacker that does not
    know the target's rule: ``x_i + Σ_j w_j (x_j − x_i) + δ_i (m − x_i)``."""
    ref = view.reference().astype(np.float64)
    honest = ref + _honest_step(view, np.asarray(view.weights, np.float64))
    delta = view.byzantine_weight

    def merge(message: F32) -> F32:
        out: F32 = (honest + delta * (message.astype(np.float64) - ref)).astype(np.float32)
        return out

    return merge


def searched_scale(
    view: AttackView, message: Callable[[float], F64], *, evals: int = DEFAULT_EVALS
) -> float:
    """The scale ``s ≥ 0`` for which ``message(s)`` moves the target's merged model
    farthest from its honest gossip step (:func:`~gossipfl.attacks.search.line_maximize`
    against ``view.merge``, or plain averaging when the rule is unknown)."""
    weights = np.asarray(view.weights, np.float64)
    honest_target = view.reference().astype(np.float64) + _honest_step(view, weights)
    merge = view.merge if view.merge is not None else _mean_merge(view)
    return line_maximize(deviation_objective(merge, honest_target, message), evals=evals)


def _scaled_along(view: AttackView, direction: F64, scale: float | None, evals: int) -> F64:
    """``x_i + s · direction``, with ``s`` given or (``None``) searched."""
    ref = view.reference().astype(np.float64)

    def message(s: float) -> F64:
        out: F64 = ref + s * direction
        return out

    return message(searched_scale(view, message, evals=evals) if scale is None else scale)


@dataclass(kw_only=True, eq=False)
class Dissensus(Attack):
    """``x_i − ε Σ_{j honest} W_ij (x_j − x_i) / δ_i`` (δ_i: the target's Byzantine weight).

    ``epsilon`` unset: searched per target and round against the target's rule, as in
    Gaucher et al. 2025's experiments (``evals`` merges per message)."""

    name = "dissensus"
    summary = "cancel (ε = 1) or reverse (ε > 1) the target's gossip step (He et al. 2022)"

    epsilon: float | None = param(1.5, "multiple ε of the honest gossip step; unset = searched")
    evals: int = param(DEFAULT_EVALS, "merges tried per message when epsilon is unset")

    def validate(self) -> None:
        if self.epsilon is not None:
            check_float(self.name, "epsilon", self.epsilon, low=0.0)
        check_int(self.name, "evals", self.evals, 1)

    def _craft(self, view: AttackView, rng: np.random.Generator) -> npt.NDArray[Any]:
        step = _honest_step(view, np.asarray(view.weights, np.float64))
        return _scaled_along(view, step / -view.byzantine_weight, self.epsilon, self.evals)


@dataclass(kw_only=True, eq=False)
class Spectral(Attack):
    """``x_i + s · u_i Σ_k u_k x_k``, u the Fiedler vector of the honest graph.

    The direction needs every honest model (an omniscient attacker); a live peer, which
    sees only its neighbours, falls back to the local counterpart, the target's row of
    the graph Laplacian: ``−Σ_{j honest} (x_j − x_i)``. ``scale`` unset (the default, as
    in Gaucher et al. 2025): searched per target and round against the target's rule.
    """

    name = "spectral"
    summary = "push each target along the honest graph's Fiedler vector (Gaucher et al. 2025)"
    uses_spectral = True

    scale: float | None = param(None, "scale s of the direction; unset = line-searched")
    evals: int = param(DEFAULT_EVALS, "merges tried per message when scale is unset")

    def validate(self) -> None:
        if self.scale is not None:
            check_float(self.name, "scale", self.scale, low=0.0)
        check_int(self.name, "evals", self.evals, 1)

    def _craft(self, view: AttackView, rng: np.random.Generator) -> npt.NDArray[Any]:
        if view.spectral is not None:
            direction = np.asarray(view.spectral, np.float64)
        else:
            ones = np.ones(view.neighbours.shape[0], dtype=np.float64)
            direction = -_honest_step(view, ones)
        return _scaled_along(view, direction, self.scale, self.evals)


@dataclass(kw_only=True, eq=False)
class Isolation(Attack):
    """``x_i − Σ_{j honest} (x_j − x_i) / b_i``: the unweighted average of what the
    target's neighbours send becomes its own model."""

    name = "isolation"
    summary = "make the target's neighbourhood average equal its own model (Wu et al. 2023)"

    def _craft(self, view: AttackView, rng: np.random.Generator) -> npt.NDArray[Any]:
        ones = np.ones(view.neighbours.shape[0], dtype=np.float64)
        ref = view.reference().astype(np.float64)
        return ref - _honest_step(view, ones) / view.byzantine_count


SAMPLE_PICKS = ("farthest", "nearest", "random")


@dataclass(kw_only=True, eq=False)
class SampleDuplication(Attack):
    """A copy of one honest neighbour's model of this round.

    ``pick``: ``farthest`` from the target's model (default: the most different data),
    ``nearest``, or ``random``. Without honest neighbours in view, the target's own model.
    """

    name = "sample-duplication"
    summary = "send a copy of one honest neighbour's model (over-weights its data)"

    pick: str = param("farthest", "which honest neighbour to copy: farthest, nearest, random")

    def validate(self) -> None:
        if self.pick not in SAMPLE_PICKS:
            raise ConfigError(
                f"{self.name} parameter pick must be one of {', '.join(SAMPLE_PICKS)}, "
                f"got {self.pick!r}"
            )

    def source(self, view: AttackView, rng: np.random.Generator) -> int | None:
        """Index into ``view.neighbours`` of the model copied (None: no neighbour known)."""
        k = view.neighbours.shape[0]
        if k == 0:
            return None
        if self.pick == "random":
            return int(rng.integers(k))
        diff = np.asarray(view.neighbours, np.float64) - view.reference().astype(np.float64)
        dist = np.einsum("ij,ij->i", diff, diff)
        return int(np.argmax(dist) if self.pick == "farthest" else np.argmin(dist))

    def _craft(self, view: AttackView, rng: np.random.Generator) -> npt.NDArray[Any]:
        index = self.source(view, rng)
        if index is None:
            return view.reference()
        return np.asarray(view.neighbours[index])


__all__ = [
    "SAMPLE_PICKS",
    "Dissensus",
    "Isolation",
    "SampleDuplication",
    "Spectral",
    "searched_scale",
]
