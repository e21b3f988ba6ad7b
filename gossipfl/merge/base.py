"""The merge-rule contract: what every rule takes, returns, checks and documents.

A rule is a small dataclass whose fields are its parameters (each documented in the
field's metadata, which is where ``make_rule`` and the CLI help read them from). It merges
one peer's model with what its neighbours sent::

    rule.merge(own, neighbours, weights, *, context=None) -> merged

``own`` has shape ``(n,)``, ``neighbours`` shape ``(d, n)`` (or a sequence of d vectors),
``weights`` shape ``(d,)``: the mixing weights of exactly the neighbours that arrived, so
the own weight ``1 − sum(weights)`` grows when some are missing. Inputs are float32;
anything else is converted. The result is a new float32 vector; inputs are never modified.

State. A rule instance belongs to one peer. It may keep per-peer state between merges:
scratch buffers (so merges allocate no large temporaries), diagnostics such as the last
clipping radius, and a count of skipped merges. Never share an instance between peers or
threads.

Too few neighbours. Each robust rule needs a minimum number of models (self included) to
do what it promises, e.g. a trimmed mean with b = 2 needs five. :meth:`MergeRule.check`
turns a topology that can never provide them into a :class:`~gossipfl.errors.ConfigError`
before a run starts. When a round merely delivers fewer neighbours than needed (some were
late, silent or down), what is left depends on the rule:

* a rule whose guarantee degrades gracefully declares :attr:`MergeRule.short_degree`, the
  fewest neighbours it still merges with, in a weaker mode it documents (CS+ with fewer
  than 2b + 1 neighbours clips every one at the nearest one's distance, so that no model,
  honest or not, pulls by more than the honest spread); ``short_merges`` counts those;
* any other rule keeps the own model unchanged for that round rather than average with
  too few witnesses; ``skipped_merges`` counts those rounds.

Keeping the own model is safe but isolating: one silent neighbour of a degree-3 peer
running CS+ with b = 1 would leave it training alone for as long as the silence lasts
(measured: 13 points of accuracy on digits). The runtime therefore also reuses a missing
neighbour's last model for a few rounds (``PeerConfig.max_reuse``) before a merge runs
short.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from gossipfl.errors import ConfigError
from gossipfl.merge._kernels import (
    F32,
    F64,
    Workspace,
    as_model,
    as_stack,
    as_weights,
    ensure_finite,
)
from gossipfl.merge.context import MergeContext
from gossipfl.merge.errors import MergeInputError
from gossipfl.textparams import init_fields

logger = logging.getLogger(__name__)


def param(default: Any, doc: str) -> Any:
    """Declare a rule parameter: a keyword-only dataclass field with its help text."""
    return field(default=default, metadata={"doc": doc})


class Requirement(NamedTuple):
    """How many models (self + neighbours) a rule needs, and why, for error messages."""

    min_models: int
    formula: str  # e.g. "2b+1"; equal to str(min_models) when it has no parameters
    params: str  # the parameters the formula uses, e.g. "b=2"


def check_int(rule: str, name: str, value: object, minimum: int) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{rule} parameter {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{rule} parameter {name} must be >= {minimum}, got {value}")


def check_float(
    rule: str,
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number within the bounds
    (``low`` exclusive when ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ConfigError(f"{rule} parameter {name} must be a number, got {value!r}")
    v = float(value)
    if not np.isfinite(v):
        raise ConfigError(f"{rule} parameter {name} must be finite, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        bound = ">" if low_open else ">="
        raise ConfigError(f"{rule} parameter {name} must be {bound} {low}, got {value!r}")
    if high is not None and v > high:
        raise ConfigError(f"{rule} parameter {name} must be <= {high}, got {value!r}")


@dataclass(kw_only=True, eq=False)
class MergeRule(abc.ABC):
    """Base class of every merge rule. Subclasses are keyword-only dataclasses.

    Subclasses define ``name`` and ``summary`` (one line for help), their parameters as
    fields made with :func:`param`, :meth:`requirement`, and :meth:`_merge`, which receives
    validated float32 inputs with at least ``requirement().min_models − 1`` neighbours.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    #: True if :meth:`_merge` itself raises :class:`~gossipfl.merge.NonFiniteInputError`
    #: for NaN/inf inputs, in a pass it makes anyway (distance rules: their Gram matrix;
    #: the mean: its result; order statistics: their sorting network's chunks). False
    #: (the default, for rules written outside this package) runs a separate check first.
    _validates_finite: ClassVar[bool] = False

    skipped_merges: int = field(default=0, init=False, repr=False, compare=False)
    short_merges: int = field(default=0, init=False, repr=False, compare=False)
    _ws: Workspace = field(default_factory=Workspace, init=False, repr=False, compare=False)
    _weights_memo: tuple[tuple[str, int, bytes], F64] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # noqa: B027 - an optional hook, not an abstract one
        """Raise :class:`ConfigError` if a parameter is out of range (called on creation)."""

    # ------------------------------------------------------------------ configuration

    def requirement(self) -> Requirement:
        """The minimum number of models (self + neighbours) this rule needs."""
        return Requirement(1, "1", "")

    @property
    def min_degree(self) -> int:
        """The smallest number of neighbours a merge can defend with."""
        return self.requirement().min_models - 1

    @property
    def short_degree(self) -> int | None:
        """The fewest neighbours this rule still merges with when a round delivers fewer
        than :attr:`min_degree` (with weaker guarantees, documented by the rule); ``None``:
        below :attr:`min_degree` the own model is kept (the default)."""
        return None

    @property
    def byzantine_tolerance(self) -> int:
        """How many Byzantine neighbours the rule is configured to withstand: its ``b``
        (or Krum's ``f``); 0 for rules that take no such parameter. The runtime needs
        more agreeing neighbours than this before it believes what they claim about
        rounds."""
        for name in ("b", "f"):
            value = getattr(self, name, None)
            if isinstance(value, int | np.integer) and not isinstance(value, bool):
                return int(value)
        return 0

    def check(self, degree: int) -> None:
        """Raise :class:`ConfigError` if a node with ``degree`` neighbours cannot use this
        rule as configured. Call it for every node before a run starts."""
        if isinstance(degree, bool) or not isinstance(degree, int | np.integer) or degree < 0:
            raise ConfigError(f"degree must be a non-negative integer, got {degree!r}")
        req = self.requirement()
        if degree + 1 >= req.min_models:
            return
        with_params = f" with {req.params}" if req.params else ""
        needs = (
            f"{req.formula} = {req.min_models}"
            if req.formula != str(req.min_models)
            else str(req.min_models)
        )
        raise ConfigError(
            f"{self.name}{with_params} needs at least {needs} models (self + neighbours) "
            f"but node has degree {degree}"
        )

    @classmethod
    def parameters(cls) -> tuple[dataclasses.Field[Any], ...]:
        """The rule's parameters (init fields), in declaration order."""
        return init_fields(cls)

    # ------------------------------------------------------------------ merging

    def merge(
        self,
        own: npt.ArrayLike,
        neighbours: npt.ArrayLike | Sequence[npt.ArrayLike],
        weights: npt.ArrayLike,
        *,
        context: MergeContext | None = None,
    ) -> F32:
        """Merge ``own`` with the ``neighbours`` that arrived this round.

        Raises :class:`~gossipfl.merge.NonFiniteInputError` if any model holds NaN or inf
        and :class:`~gossipfl.merge.MergeInputError` for malformed shapes or weights. With
        no neighbour (d = 0) the result is a copy of ``own``.
        """
        own32 = as_model(own)
        rows = as_stack(neighbours, own32.shape[0], "neighbours")
        d = rows.shape[0]
        w = self._weights(weights, d)
        short = self.short_degree
        if 0 < d < self.min_degree and short is not None and d >= short:
            self.short_merges += 1
        elif d == 0 or d < self.min_degree:
            if d:
                self.skipped_merges += 1
                logger.debug(
                    "%s: %d neighbour(s) arrived, fewer than the %d needed; keeping own model",
                    self.name,
                    d,
                    self.min_degree,
                )
            ensure_finite(own32, rows, self._ws)
            return own32.copy()
        if not self._validates_finite:
            ensure_finite(own32, rows, self._ws)
        return self._merge(own32, rows, w, context)

    def _weights(self, weights: npt.ArrayLike, d: int) -> F64:
        """:func:`~gossipfl.merge._kernels.as_weights`, remembered for the last weights
        array seen, by its dtype and bytes: a peer merges with the same weights round
        after round (its in-neighbours' mixing weights), and checking them again cost
        ~4 µs of a ~14 µs merge of four 650-parameter models. Equal bytes of one dtype
        are equal values, so the result is what ``as_weights`` would return, bit for
        bit; it is read-only (a rule computes from its weights, never in them)."""
        if type(weights) is not np.ndarray or weights.ndim != 1:
            return as_weights(weights, d)
        key = (weights.dtype.str, d, weights.tobytes())
        memo = self._weights_memo
        if memo is not None and memo[0] == key:
            return memo[1]
        w = as_weights(weights, d)
        if w is weights:  # float64 already: as_weights returned the caller's array
            w = w.copy()
        w.flags.writeable = False
        self._weights_memo = (key, w)
        return w

    @abc.abstractmethod
    def _merge(self, own: F32, rows: F32, weights: F64, context: MergeContext | None) -> F32:
        """Merge validated inputs; ``rows`` has at least ``min_degree`` (and >= 1) rows."""

    # ------------------------------------------------------------------ helpers

    def _stack_view(self, stack: npt.ArrayLike) -> tuple[F32, F32]:
        """Validate an ``aggregate`` stack and split it into (first row, the others)."""
        try:
            arr = np.asarray(stack, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise MergeInputError(f"stack must be a (m, n) numeric array: {exc}") from None
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise MergeInputError(f"stack must have shape (m, n) with m, n >= 1, got {arr.shape}")
        arr = np.ascontiguousarray(arr)
        return arr[0], arr[1:]

    def _aggregate_prologue(self, stack: npt.ArrayLike) -> tuple[F32, F32] | F32:
        """Shared start of ``aggregate``: validate; return a result early if m is too small.

        An aggregate over fewer models than the rule needs is a caller error here (there is
        no own model to fall back on), so it raises :class:`ConfigError` via :meth:`check`.
        """
        first, rest = self._stack_view(stack)
        self.check(rest.shape[0])
        if rest.shape[0] == 0:
            ensure_finite(first, rest, self._ws)
            return first.copy()
        if not self._validates_finite:
            ensure_finite(first, rest, self._ws)
        return first, rest


@runtime_checkable
class Aggregator(Protocol):
    """A rule with a plain aggregation form over a ``(m, n)`` stack of models."""

    def aggregate(self, stack: npt.ArrayLike) -> F32:
        """Aggregate the rows of ``stack`` (all models count alike)."""
        ...


__all__ = [
    "Aggregator",
    "MergeRule",
    "Requirement",
    "check_float",
    "check_int",
    "param",
]
