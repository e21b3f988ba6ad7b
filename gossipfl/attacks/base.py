"""The attack contract: what a Byzantine peer knows when it crafts a message, and what it sends.

A Byzantine neighbour sends one model per target and round. What it can compute depends on
what it knows, which :class:`AttackView` spells out:

* **omniscient** (simulation, as in the papers): the target's own model of the round, the
  models of the target's honest neighbours, and the mixing weights the target gives each of
  them and to its Byzantine neighbours;
* **local** (a live Byzantine peer, see :mod:`gossipfl.attacks.local`): only the models
  this peer received from its own neighbours, with the target's model among them when the
  target sent one, and equal weights assumed.

An attack is a small dataclass whose fields are its parameters (documented like merge
rules' parameters) with one method, :meth:`Attack.craft`, a pure function of the view and a
random generator. The same attack code therefore runs in both modes; only the view differs.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from gossipfl.errors import GossipflError
from gossipfl.textparams import init_fields

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


class AttackInputError(GossipflError):
    """An :class:`AttackView` whose arrays do not fit together (shapes, weights)."""


@dataclass(frozen=True, eq=False)
class AttackView:
    """Everything an attacker knows about one target in one round.

    Attributes:
        round: the gossip round the message is for.
        own: the attacker's own model (what it would send if it were honest; a
            label-flipping peer sends it).
        neighbours: ``(k, n)`` models of the target's honest neighbours this round
            (the target itself excluded). ``k`` may be 0.
        weights: ``(k,)`` the target's mixing weight for each of those neighbours.
        target: the target's own model this round, or ``None`` when unknown.
        target_weight: the target's self weight ``W_ii`` (``None`` when unknown).
        byzantine_weight: ``δ_i``, the total mixing weight the target gives its Byzantine
            neighbours (this attacker included), > 0.
        byzantine_count: ``b_i``, the target's number of Byzantine neighbours, >= 1.
        population: peers in the whole system, honest and Byzantine (ALIE's n).
        byzantine_total: Byzantine peers in the whole system (ALIE's f).
        omniscient: True when the view comes from the simulator's oracle.
        merge: the target's merge of this round as a function of the message every
            Byzantine neighbour sends (its own rule, weights and honest neighbours), for
            attacks that search their scale; ``None`` when unknown (a live peer).
        spectral: ``u_i Σ_k u_k x_k``, the honest models projected on the honest graph's
            Fiedler vector u and scaled by the target's coordinate u_i (the spectral
            attack's direction); ``None`` unless the attack asks for it and the
            attacker sees every honest model.
    """

    round: int
    own: F32
    neighbours: F32
    weights: F64
    target: F32 | None = None
    target_weight: float | None = None
    byzantine_weight: float = 1.0
    byzantine_count: int = 1
    population: int = 2
    byzantine_total: int = 1
    omniscient: bool = True
    merge: Callable[[F32], F32] | None = None
    spectral: F64 | None = None

    def __post_init__(self) -> None:
        own = np.asarray(self.own)
        n = own.shape[0] if own.ndim == 1 else -1
        if own.ndim != 1 or n == 0:
            raise AttackInputError(f"own must be a non-empty vector, got shape {own.shape}")
        nb = np.asarray(self.neighbours)
        if nb.ndim != 2 or nb.shape[1] != n:
            raise AttackInputError(f"neighbours must have shape (k, {n}), got {nb.shape}")
        w = np.asarray(self.weights)
        if w.shape != (nb.shape[0],):
            raise AttackInputError(f"weights must have shape ({nb.shape[0]},), got {w.shape}")
        if w.size and not (np.all(np.isfinite(w)) and w.min() >= 0):
            raise AttackInputError("weights must be finite and non-negative")
        if self.target is not None and np.asarray(self.target).shape != (n,):
            raise AttackInputError(f"target must have shape ({n},)")
        if self.spectral is not None and np.asarray(self.spectral).shape != (n,):
            raise AttackInputError(f"spectral must have shape ({n},)")
        if not (np.isfinite(self.byzantine_weight) and self.byzantine_weight > 0):
            raise AttackInputError(f"byzantine_weight must be > 0, got {self.byzantine_weight}")
        if self.byzantine_count < 1:
            raise AttackInputError(f"byzantine_count must be >= 1, got {self.byzantine_count}")
        if not 1 <= self.byzantine_total < self.population:
            raise AttackInputError(
                "need 1 <= byzantine_total < population, got "
                f"{self.byzantine_total} of {self.population}"
            )

    @property
    def size(self) -> int:
        """Model length n."""
        return int(np.asarray(self.own).shape[0])

    def honest(self) -> F32:
        """The honest models around the target, the target's own first when known:
        ``(m, n)`` with m = k + 1 (or k). Falls back to the attacker's own model when the
        attacker knows nothing else, so every statistic below is defined."""
        rows = [np.asarray(self.target, np.float32)[None, :]] if self.target is not None else []
        if self.neighbours.shape[0]:
            rows.append(np.asarray(self.neighbours, np.float32))
        if not rows:
            rows.append(np.asarray(self.own, np.float32)[None, :])
        return np.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]

    def honest_mean(self) -> F64:
        """Unweighted mean of :meth:`honest` (float64)."""
        mean: F64 = self.honest().mean(axis=0, dtype=np.float64)
        return mean

    def reference(self) -> F32:
        """The target's model when known, else the mean of what is known about it."""
        if self.target is not None:
            return np.asarray(self.target, np.float32)
        return self.honest_mean().astype(np.float32)


@dataclass(kw_only=True, eq=False)
class Attack(abc.ABC):
    """Base class of every attack. Subclasses are keyword-only dataclasses whose fields,
    made with :func:`gossipfl.merge.base.param`, are the attack's parameters."""

    name: ClassVar[str]
    summary: ClassVar[str]
    #: True when the Byzantine peer must train a model of its own (label flipping).
    trains: ClassVar[bool] = False
    #: True when the attack needs :attr:`AttackView.spectral` (every honest model).
    uses_spectral: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # noqa: B027 - an optional hook, not an abstract one
        """Raise :class:`~gossipfl.errors.ConfigError` for an out-of-range parameter."""

    @classmethod
    def parameters(cls) -> tuple[dataclasses.Field[Any], ...]:
        """The attack's parameters (init fields), in declaration order."""
        return init_fields(cls)

    def describe(self) -> str:
        """``name(p=v, ...)`` with the parameter values in use, for tables and logs."""
        values = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self.parameters())
        return f"{self.name}({values})" if values else self.name

    def withholds(self, round: int) -> bool:
        """True when the attacker sends nothing at all in ``round`` (an omission): the
        peer stays connected and keeps its heartbeats, so it is not detected as down."""
        return False

    def craft(self, view: AttackView, rng: np.random.Generator) -> F32:
        """The float32 model to send to the view's target (a new array)."""
        out: F32 = np.array(self._craft(view, rng), dtype=np.float32, order="C")
        if out.shape != (view.size,):
            raise AttackInputError(
                f"{self.name} crafted shape {out.shape}, expected ({view.size},)"
            )
        return out

    @abc.abstractmethod
    def _craft(self, view: AttackView, rng: np.random.Generator) -> npt.NDArray[Any]:
        """The message, in any float dtype; :meth:`craft` converts and checks it."""


__all__ = ["F32", "F64", "Attack", "AttackInputError", "AttackView"]
