"""Attacks built from statistics of the target's honest neighbourhood.

Each sends a function of the honest models around the target (the target's own model and
its honest neighbours', unweighted, as in He, Karimireddy & Jaggi 2022's code): their mean,
or their per-coordinate mean and standard deviation. They need no knowledge of the mixing
weights, so they work the same from a live peer's local view.

* ``sign-flip``: ``−c · μ``. A huge pull for averaging (c = 1 sends the honest mean's
  mirror image).
* ``ipm`` (inner product manipulation, Xie, Koyejo, Gupta 2019): ``−ε · μ`` with a small
  ε, so the message stays near the origin and inside the spread robust rules tolerate
  while its inner product with the honest direction is negative.
* ``gaussian``: ``μ + N(0, σ² I)``, large random noise.
* ``alie`` (A Little Is Enough, Baruch et al. 2019): ``μ − z·σ`` per coordinate, just
  inside the honest spread so that coordinate-wise and distance-based rules keep it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from gossipfl.attacks.base import F64, Attack, AttackView
from gossipfl.errors import ConfigError
from gossipfl.merge.base import check_float, param


def alie_z(population: int, byzantine: int) -> float:
    """ALIE's z for n = ``population`` peers of which f = ``byzantine`` are Byzantine.

    Baruch et al.: with s = ⌊n/2 + 1⌋ − f supporters needed, ``z = Φ⁻¹((n − s)/n)``, the
    largest deviation for which enough honest values lie farther from the mean than the
    attacker. s is taken as at least 1 (with f ≥ n/2 + 1 the formula would leave the
    normal's support). Examples: n = 20, f = 4 gives 0.385; n = 12, f = 2 gives 0.210.
    """
    if population < 2 or not 1 <= byzantine < population:
        raise ValueError(f"need 1 <= byzantine < population, got {byzantine} of {population}")
    supporters = max(math.floor(population / 2 + 1) - byzantine, 1)
    return NormalDist().inv_cdf((population - supporters) / population)


def alie_z_local(degree: int, byzantine: int) -> float:
    """ALIE's z for one target with ``degree`` neighbours of which ``byzantine`` are
    Byzantine: the per-node form of the IOS paper's reference code (Wu et al. 2023), with
    s = ⌊(d + 1)/2⌋ − b supporters and ``z = Φ⁻¹((d − s)/d)``; s is taken as at least 1.
    Where a target has two Byzantine neighbours among 6 to 8 this gives 0.57 to 0.97,
    2–3 times the global formula's z (0.21 for 12 peers with 2 Byzantine)."""
    if degree < 1 or not 0 <= byzantine <= degree:
        raise ValueError(f"need 0 <= byzantine <= degree >= 1, got {byzantine} of {degree}")
    supporters = max(math.floor((degree + 1) / 2) - byzantine, 1)
    return NormalDist().inv_cdf((degree - supporters) / degree) if supporters < degree else 0.0


@dataclass(kw_only=True, eq=False)
class SignFlip(Attack):
    """``−c · mean(honest neighbourhood)``."""

    name = "sign-flip"
    summary = "send −c times the mean of the target's honest neighbourhood"

    c: float = param(1.0, "scale of the flipped mean (c = 1 in the decentralized papers)")

    def validate(self) -> None:
        check_float(self.name, "c", self.c, low=0.0, low_open=True)

    def _craft(self, view: AttackView, rng: np.random.Generator) -> npt.NDArray[Any]:
        return -float(self.c) * view.honest_mean()


@dataclass(kw_only=True, eq=False)
class InnerProductManipulation(Attack):
    """``−ε · mean(honest neighbourhood)``: small and pointing the wrong way."""

    name = "ipm"
    summary = "inner product manipulation: send −ε times the honest mean (Xie et al. 2019)"

    epsilon: float = param(0.1, "scale ε of the negated honest mean")

    def validate(self) -> None:
        check_float(self.name, "epsilon", self.epsilon, low=0.0, low_open=True)

    def _craft(self, view: AttackView, rng: np.random.Generator) -> npt.NDArray[Any]:
        return -float(self.epsilon) * view.honest_mean()


@dataclass(kw_only=True, eq=False)
class Gaussian(Attack):
    """``mean(honest neighbourhood) + N(0, σ² I)``, fresh noise per message."""

    name = "gaussian"
    summary = "send the honest mean plus Gaussian noise of standard deviation σ"

    sigma: float = param(30.0, "standard deviation σ of the noise, per coordinate")

    def validate(self) -> None:
        check_float(self.name, "sigma", self.sigma, low=0.0)

    def _craft(self, view: AttackView, rng: np.random.Generator) -> npt.NDArray[Any]:
        noise = rng.standard_normal(view.size, dtype=np.float32)
        noise *= np.float32(self.sigma)
        return view.honest_mean() + noise


@dataclass(kw_only=True, eq=False)
class ALittleIsEnough(Attack):
    """``μ − z·σ`` per coordinate over the target's honest neighbourhood.

    μ and σ are the per-coordinate mean and sample standard deviation (ddof = 1; 0 with a
    single honest model). ``z`` unset: with ``scope = "local"`` (the default, the
    strongest published form), :func:`alie_z_local` of the target's own degree and
    Byzantine neighbours, as the IOS paper's reference code computes it per node; with
    ``scope = "global"``, :func:`alie_z` of the whole system's population and Byzantine
    count, as in Baruch et al., 2–3 times weaker where a node has two Byzantine
    neighbours. A fixed z (1, or 10 for a blunt version) is also common.
    """

    name = "alie"
    summary = "a little is enough: μ − zσ per coordinate of the honest neighbourhood"

    z: float | None = param(None, "deviation in standard deviations; unset = from the scope")
    scope: str = param("local", "unset z per target (local) or from the whole system (global)")

    def validate(self) -> None:
        if self.z is not None:
            check_float(self.name, "z", self.z)
        if self.scope not in ("global", "local"):
            raise ConfigError(f"attack alie: scope must be 'global' or 'local', got {self.scope!r}")

    def z_for(self, view: AttackView) -> float:
        """The z used against ``view``'s target."""
        if self.z is not None:
            return float(self.z)
        if self.scope == "local":
            degree = view.neighbours.shape[0] + view.byzantine_count
            return alie_z_local(degree, view.byzantine_count)
        return alie_z(view.population, view.byzantine_total)

    def _craft(self, view: AttackView, rng: np.random.Generator) -> npt.NDArray[Any]:
        honest = view.honest()
        mu: F64 = honest.mean(axis=0, dtype=np.float64)
        if honest.shape[0] < 2:
            return mu
        sigma: F64 = honest.std(axis=0, ddof=1, dtype=np.float64)
        out: F64 = mu - self.z_for(view) * sigma
        return out


__all__ = [
    "ALittleIsEnough",
    "Gaussian",
    "InnerProductManipulation",
    "SignFlip",
    "alie_z",
    "alie_z_local",
]
