"""The :class:`Topology` object the gossip engine talks to.

The engine asks, for every peer and every round, "whose models do I receive, with which
weights, and to whom do I send?". Those calls sit on the hot path of thousand-peer
simulations, so a Topology answers each in O(degree): the per-node neighbour tuples and
weights of a round are derived once from that round's sparse mixing matrix and kept in a
small per-instance cache (every round of a short period, or the few most recent rounds of
an aperiodic schedule).

Conventions: nodes are ``0..n-1``; ``W[i, j] > 0`` means *i receives from j*; a round's
in-neighbours of ``i`` are the ``j ≠ i`` with ``W[i, j] > 0`` and its out-neighbours the
``j ≠ i`` with ``W[j, i] > 0``; the self weight is ``W[i, i] = 1 - Σ_j W[i, j]``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp

from gossipfl.errors import ConfigError
from gossipfl.topology.mixing import check_mixing_matrix, mixing_matrix_for, normalize_weighting
from gossipfl.topology.schedules import (
    MixingSchedule,
    StaticSchedule,
    mean_square_contraction,
)
from gossipfl.topology.spectral import DENSE_EIGEN_THRESHOLD, predicted_rounds, spectral_gap

__all__ = ["APERIODIC_UNION_ROUNDS", "GAP_KINDS", "Topology"]

logger = logging.getLogger(__name__)

#: How :meth:`Topology.spectral_gap` is defined for each kind of schedule.
GAP_KINDS = {
    "static": "1 - max(|λ2|, |λn|) of the mixing matrix W",
    "finite-time": "1 by construction: the product of one period of rounds is exactly J/n",
    "periodic": "per-round rate of the one-period product P: 1 - ρ(P - J/n)^(1/period)",
    "mean-square": (
        "1 - √μ where E‖z_(t+1)‖² = μ‖z_t‖² for the disagreement z (random rounds; "
        "μ averaged over rounds 0..63)"
    ),
}

_RECENT_ROUNDS = 4

#: Rounds merged into the union graph of an aperiodic schedule (which never repeats).
APERIODIC_UNION_ROUNDS = 8
_CACHE_WHOLE_PERIOD = 64


@dataclass(frozen=True, slots=True)
class _RoundStructure:
    """Everything per-node about one round, precomputed from its matrix."""

    matrix: sp.csr_array
    in_neighbours: tuple[tuple[int, ...], ...]
    in_weights: tuple[tuple[float, ...], ...]
    out_neighbours: tuple[tuple[int, ...], ...]

    @classmethod
    def from_matrix(cls, matrix: sp.csr_array) -> _RoundStructure:
        in_columns, in_values = _split_rows(matrix)
        out_columns, _ = _split_rows(sp.csr_array(matrix.T))
        return cls(
            matrix=matrix,
            in_neighbours=tuple(tuple(part.tolist()) for part in in_columns),
            in_weights=tuple(tuple(part.tolist()) for part in in_values),
            out_neighbours=tuple(tuple(part.tolist()) for part in out_columns),
        )


def _split_rows(matrix: sp.csr_array) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-row off-diagonal column indices (sorted) and values of a CSR matrix."""
    m = sp.csr_array(matrix)
    m.sort_indices()
    n = m.shape[0]
    counts = np.diff(m.indptr)
    rows = np.repeat(np.arange(n), counts)
    keep = m.indices != rows
    kept_counts = np.bincount(rows[keep], minlength=n)
    cuts = np.cumsum(kept_counts)[:-1]
    return np.split(m.indices[keep], cuts), np.split(m.data[keep], cuts)


def _graph_from_matrix(matrix: sp.csr_array, directed: bool) -> nx.Graph | nx.DiGraph:
    """The communication graph of a round: edge ``j → i`` whenever ``W[i, j] > 0``."""
    coo = sp.coo_array(matrix)
    n = matrix.shape[0]
    graph: nx.Graph | nx.DiGraph = nx.DiGraph() if directed else nx.Graph()
    graph.add_nodes_from(range(n))
    mask = coo.row != coo.col
    graph.add_edges_from(zip(coo.col[mask].tolist(), coo.row[mask].tolist(), strict=True))
    return graph


class Topology:
    """A named communication graph with its mixing weights, possibly changing per round.

    Build one with :func:`gossipfl.topology.build_topology` (families, shipped names,
    files) or :meth:`Topology.from_graph` (any undirected networkx graph). Instances are
    immutable from the outside and safe to share between tasks; the per-round cache is
    guarded by a lock.
    """

    def __init__(
        self,
        schedule: MixingSchedule,
        *,
        name: str,
        family: str,
        params: Mapping[str, Any] | None = None,
        description: str = "",
        weighting: str | None = None,
        seed: int | None = None,
        graph: nx.Graph | nx.DiGraph | None = None,
        gap_kind: str | None = None,
    ) -> None:
        self._schedule = schedule
        self.name = name
        self.family = family
        self.params: Mapping[str, Any] = MappingProxyType(dict(params or {}))
        self.description = description
        self.weighting = weighting
        self.seed = seed
        self._graph = nx.freeze(graph) if graph is not None else None
        if gap_kind is None:
            if schedule.period == 1:
                gap_kind = "static"
            elif schedule.finite_time_rounds is not None:
                gap_kind = "finite-time"
            elif schedule.period > 1:
                gap_kind = "periodic"
            else:
                gap_kind = "mean-square"
        if gap_kind not in GAP_KINDS:
            raise ConfigError(f"unknown spectral-gap kind {gap_kind!r}")
        self.gap_kind = gap_kind
        self._cache: OrderedDict[int, _RoundStructure] = OrderedDict()
        period = schedule.period
        self._cache_size = period if 0 < period <= _CACHE_WHOLE_PERIOD else _RECENT_ROUNDS
        self._lock = threading.Lock()
        self._gap: float | None = None

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_graph(
        cls,
        graph: nx.Graph,
        *,
        weighting: str = "metropolis",
        name: str = "custom",
        family: str = "graph",
        params: Mapping[str, Any] | None = None,
        description: str = "",
        seed: int | None = None,
    ) -> Topology:
        """A static topology on an undirected graph whose nodes are ``0..n-1``.

        ``weighting`` is ``"metropolis"`` (default) or ``"max-degree"`` (alias
        ``"uniform"``). The graph is copied and frozen.
        """
        if graph.is_directed():
            raise ConfigError(
                "Topology.from_graph needs an undirected graph; use Topology.from_matrix "
                "for directed mixing"
            )
        if graph.number_of_nodes() == 0:
            raise ConfigError("a topology needs at least one peer")
        canonical = normalize_weighting(weighting)
        matrix = mixing_matrix_for(graph, canonical)
        copy = nx.Graph(graph)
        copy.remove_edges_from(list(nx.selfloop_edges(copy)))
        return cls(
            StaticSchedule(matrix, directed=False),
            name=name,
            family=family,
            params=params,
            description=description,
            weighting=canonical,
            seed=seed,
            graph=copy,
        )

    @classmethod
    def from_matrix(
        cls,
        matrix: sp.csr_array | np.ndarray,
        *,
        name: str = "custom",
        family: str = "matrix",
        params: Mapping[str, Any] | None = None,
        description: str = "",
        doubly_stochastic: bool = True,
    ) -> Topology:
        """A static topology from an explicit mixing matrix (directed if not symmetric).

        The matrix is checked: non-negative, rows summing to one and, unless
        ``doubly_stochastic=False``, columns too.
        """
        check_mixing_matrix(matrix, symmetric=False, doubly_stochastic=doubly_stochastic)
        csr = sp.csr_array(matrix, dtype=np.float64)
        directed = bool(abs(csr - csr.T).sum() > 1e-12)
        return cls(
            StaticSchedule(csr, directed=directed),
            name=name,
            family=family,
            params=params,
            description=description,
        )

    # ----------------------------------------------------------------- properties

    @property
    def n(self) -> int:
        """Number of peers."""
        return self._schedule.n

    @property
    def is_static(self) -> bool:
        """True when every round uses the same graph and weights."""
        return self._schedule.period == 1

    @property
    def period(self) -> int:
        """1 if static; rounds until the schedule repeats; 0 if aperiodic (epidemic)."""
        return self._schedule.period

    @property
    def finite_time_rounds(self) -> int | None:
        """Rounds after which the product of the W's (from round 0) is exactly the average."""
        return self._schedule.finite_time_rounds

    @property
    def directed(self) -> bool:
        """True when a round's graph can be directed (receivers ≠ senders)."""
        return self._schedule.directed

    @property
    def schedule(self) -> MixingSchedule:
        """The source of per-round matrices (read-only use)."""
        return self._schedule

    def __repr__(self) -> str:
        return (
            f"Topology(name={self.name!r}, family={self.family!r}, n={self.n}, "
            f"period={self.period})"
        )

    # ----------------------------------------------------------------- per round

    def _structure(self, round: int) -> _RoundStructure:
        if round < 0:
            raise ConfigError(f"round must be non-negative, got {round}")
        period = self._schedule.period
        key = round % period if period else round
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        structure = _RoundStructure.from_matrix(self._schedule.matrix(key))
        with self._lock:
            self._cache[key] = structure
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return structure

    def _check_node(self, node: int) -> None:
        if not 0 <= node < self._schedule.n:
            raise ConfigError(f"node {node} out of range 0..{self._schedule.n - 1}")

    def in_neighbours(self, node: int, round: int = 0) -> tuple[int, ...]:
        """Sorted peers whose models ``node`` receives in ``round``. O(1)."""
        self._check_node(node)
        return self._structure(round).in_neighbours[node]

    def out_neighbours(self, node: int, round: int = 0) -> tuple[int, ...]:
        """Sorted peers ``node`` sends its model to in ``round``. O(1)."""
        self._check_node(node)
        return self._structure(round).out_neighbours[node]

    def weights(self, node: int, round: int = 0) -> dict[int, float]:
        """``W[node, j]`` for each in-neighbour ``j`` (self weight is ``1 - sum``). O(degree)."""
        self._check_node(node)
        structure = self._structure(round)
        return dict(zip(structure.in_neighbours[node], structure.in_weights[node], strict=True))

    def self_weight(self, node: int, round: int = 0) -> float:
        """``W[node, node]``. O(degree)."""
        self._check_node(node)
        return 1.0 - math.fsum(self._structure(round).in_weights[node])

    def mixing_matrix(self, round: int = 0, *, sparse: bool = False) -> Any:
        """``W`` of ``round`` as a dense array (default) or a CSR array; always a copy."""
        matrix = self._structure(round).matrix
        return matrix.copy() if sparse else matrix.toarray()

    def graph(self, round: int = 0) -> nx.Graph | nx.DiGraph:
        """The communication graph of ``round`` (frozen; nodes ``0..n-1``).

        Undirected when the schedule is symmetric; otherwise a DiGraph with an edge
        ``j → i`` when ``i`` receives from ``j``.
        """
        if self._graph is not None:
            if round < 0:
                raise ConfigError(f"round must be non-negative, got {round}")
            return self._graph
        return nx.freeze(_graph_from_matrix(self._structure(round).matrix, self.directed))

    def union_rounds(self) -> int:
        """How many rounds :meth:`union_graph` merges: the period, or
        ``APERIODIC_UNION_ROUNDS`` for aperiodic schedules."""
        return self.period if self.period > 0 else APERIODIC_UNION_ROUNDS

    def union_graph(self) -> nx.Graph | nx.DiGraph:
        """Every edge used in rounds ``0..union_rounds()-1``: the graph itself when static,
        one period when periodic, the first few rounds when aperiodic."""
        if self.period == 1:
            return self.graph(0)
        union = nx.DiGraph() if self.directed else nx.Graph()
        union.add_nodes_from(range(self.n))
        for round in range(self.union_rounds()):
            union.add_edges_from(self.graph(round).edges)
        return nx.freeze(union)

    def round_degrees(self, round: int = 0) -> np.ndarray:
        """In-degree of every node in ``round`` (models received, the per-round cost)."""
        structure = self._structure(round)
        return np.fromiter((len(x) for x in structure.in_neighbours), dtype=np.int64, count=self.n)

    # ----------------------------------------------------------------- spectra

    def spectral_gap(self) -> float:
        """The spectral gap; its definition depends on the schedule (see ``gap_kind``).

        * static: ``1 - max(|λ₂|, |λ_n|)`` of ``W``;
        * finite-time schedules: 1 (the one-period product is exactly ``J/n``);
        * other periodic schedules: ``1 - ρ(P - J/n)^(1/period)`` where ``P`` is the
          one-period product, i.e. the per-round rate, comparable with static gaps;
        * aperiodic random schedules (epidemic): ``1 - √μ``, the mean-square per-round
          contraction of the disagreement (see
          :func:`~gossipfl.topology.schedules.mean_square_contraction`).

        Computed once and kept.
        """
        if self._gap is None:
            self._gap = self._compute_gap()
        return self._gap

    def _compute_gap(self) -> float:
        kind = self.gap_kind
        if kind == "static":
            return spectral_gap(self._schedule.matrix(0))
        if kind == "finite-time":
            return 1.0
        if kind == "mean-square":
            return 1.0 - mean_square_contraction(self._schedule)
        return self._periodic_gap()

    def _periodic_gap(self) -> float:
        n, period = self.n, self.period
        matrices = [self._schedule.matrix(t) for t in range(period)]
        if n <= DENSE_EIGEN_THRESHOLD:
            product = np.eye(n)
            for matrix in matrices:
                product = matrix @ product
            moduli = np.abs(np.linalg.eigvals(product - 1.0 / n))
            rho = float(moduli.max())
        else:

            def apply(x: np.ndarray) -> np.ndarray:
                for matrix in matrices:
                    x = np.asarray(matrix @ x)
                centred: np.ndarray = x - x.mean()
                return centred

            import scipy.sparse.linalg as spla  # on first use (see spectral._linalg)

            operator = spla.LinearOperator((n, n), matvec=apply, dtype=np.float64)
            values = spla.eigs(operator, k=1, which="LM", tol=1e-10, return_eigenvectors=False)
            rho = float(np.abs(values).max())
        return min(1.0, max(0.0, 1.0 - float(rho ** (1.0 / period))))

    def predicted_rounds(self, tolerance: float = 1e-6) -> int | None:
        """Rounds to shrink the consensus error by ``tolerance``.

        Finite-time schedules report their exact round count; everything else uses the
        gap: ``ceil(ln ε / ln(1 - gap))``; None when the gap is 0 (never).
        """
        if self.finite_time_rounds is not None:
            return self.finite_time_rounds
        return predicted_rounds(self.spectral_gap(), tolerance)
