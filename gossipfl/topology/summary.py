"""A topology's vital statistics, as one JSON-ready dictionary.

This is what ``gossipfl topology show`` prints. For time-varying topologies the graph
facts (edges, degree, diameter, connectivity) describe the **union** of the edges used in
one period, which is what decides whether information can reach everyone; the
**per-round** in-degree (the real communication cost) is reported separately under
``round_degree``. Aperiodic schedules (epidemic) never repeat, so their graph facts
describe the union of the first few rounds (``APERIODIC_UNION_ROUNDS``); they also get a
measured consensus rate next to their (mean-square, estimated) spectral gap.
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp

from gossipfl.topology.consensus import measure_consensus_rate
from gossipfl.topology.topology import GAP_KINDS, Topology

__all__ = ["describe_topology", "diameter"]

_DIAMETER_CHUNK = 256


def diameter(graph: nx.Graph | nx.DiGraph) -> int | None:
    """Longest shortest path (directed if the graph is), or None if some node is
    unreachable. Breadth-first search from every node in C (scipy), in chunks so memory
    stays O(chunk × n)."""
    import scipy.sparse.csgraph as csgraph  # on first use: it imports scipy.sparse.linalg

    n = graph.number_of_nodes()
    if n <= 1:
        return 0
    adjacency = nx.to_scipy_sparse_array(graph, nodelist=range(n), format="csr")
    longest = 0.0
    for start in range(0, n, _DIAMETER_CHUNK):
        indices = np.arange(start, min(n, start + _DIAMETER_CHUNK))
        distances = csgraph.shortest_path(
            sp.csr_array(adjacency), directed=graph.is_directed(), unweighted=True, indices=indices
        )
        worst = float(distances.max())
        if math.isinf(worst):
            return None
        longest = max(longest, worst)
    return int(longest)


def _connected(graph: nx.Graph | nx.DiGraph) -> bool:
    if graph.number_of_nodes() == 0:
        return False
    if graph.is_directed():
        return bool(nx.is_strongly_connected(graph))
    return bool(nx.is_connected(graph))


def _stats(values: np.ndarray) -> dict[str, float | int]:
    return {"min": int(values.min()), "mean": float(values.mean()), "max": int(values.max())}


def _json_value(value: Any) -> Any:
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


def describe_topology(topology: Topology, *, tolerance: float = 1e-6) -> dict[str, Any]:
    """Nodes, edges, degrees, diameter, connectivity, spectral gap and predicted rounds.

    Keys always present: ``name``, ``family``, ``nodes``, ``edges``, ``directed``,
    ``time_varying``, ``period``, ``finite_time_rounds``, ``graph_scope``, ``connected``,
    ``diameter``, ``degree`` (``min``/``mean``/``max`` in-degree of the reported graph),
    ``round_degree``, ``weighting``, ``spectral_gap``, ``spectral_gap_kind``,
    ``consensus_tolerance``, ``predicted_rounds``.
    """
    period = topology.period
    sample_rounds = list(range(topology.union_rounds()))
    if period == 1:
        scope = "static graph"
    elif period > 1:
        scope = f"union of the {period} rounds of one period"
    else:
        scope = f"union of rounds 0..{len(sample_rounds) - 1} (aperiodic: every round differs)"
    graph = topology.union_graph()
    if graph.is_directed():
        degrees = np.array([d for _, d in graph.in_degree()], dtype=np.int64)
    else:
        degrees = np.array([d for _, d in graph.degree()], dtype=np.int64)
    per_round = np.stack([topology.round_degrees(t) for t in sample_rounds])
    connected = _connected(graph)
    gap = topology.spectral_gap()
    summary: dict[str, Any] = {
        "name": topology.name,
        "family": topology.family,
        "description": topology.description,
        "params": {k: _json_value(v) for k, v in topology.params.items()},
        "seed": topology.seed,
        "nodes": topology.n,
        "edges": graph.number_of_edges(),
        "directed": graph.is_directed(),
        "time_varying": not topology.is_static,
        "period": period,
        "finite_time_rounds": topology.finite_time_rounds,
        "graph_scope": scope,
        "connected": connected,
        "diameter": diameter(graph) if connected else None,
        "degree": _stats(degrees),
        "round_degree": {
            "min": int(per_round.min()),
            "mean": float(per_round.mean()),
            "max": int(per_round.max()),
            "rounds_sampled": len(sample_rounds),
        },
        "weighting": topology.weighting,
        "spectral_gap": gap,
        "spectral_gap_kind": GAP_KINDS[topology.gap_kind],
        "consensus_tolerance": tolerance,
        "predicted_rounds": topology.predicted_rounds(tolerance),
    }
    if period == 0:
        measured = measure_consensus_rate(topology, seed=topology.seed or 0, max_rounds=2_000)
        summary["measured_rate"] = measured.rate
        summary["measured_rounds"] = measured.rounds_to(tolerance)
    return summary
