"""Splitting a communication graph into parts with few edges between them.

A sharded simulation (:mod:`gossipfl.simulation.sharded`) runs each part in its own
process and ships every message that crosses a cut edge through the driver, so the
fewer cut edges, the less it ships. This is the job METIS does; networkx's
Kernighan–Lin refinement does it well enough at the sizes one machine simulates, with
no extra dependency: recursive bisection, each split starting from a breadth-first
ordering (which already keeps neighbours together) and refined by Kernighan–Lin, which
swaps pairs of nodes across the cut while that removes edges (part sizes never change).

Deterministic: the same graph, parts and seed give the same parts in every process.
"""

from __future__ import annotations

from collections import deque

import networkx as nx

from gossipfl.errors import ConfigError

#: Kernighan–Lin passes per bisection (networkx's default is 10; later passes of our
#: graphs rarely move a node, and each pass costs O(edges · log nodes)).
REFINE_PASSES = 4


def partition_nodes(graph: nx.Graph | nx.DiGraph, parts: int, *, seed: int = 0) -> list[list[int]]:
    """``parts`` sorted lists of nodes, sizes within one of each other, covering ``graph``.

    Directed graphs are split as their undirected version (a message either way
    crosses the cut).
    """
    nodes = sorted(graph.nodes)
    if not 1 <= parts <= len(nodes):
        raise ConfigError(f"cannot split {len(nodes)} peers into {parts} shards")
    undirected = graph.to_undirected(as_view=True) if graph.is_directed() else graph
    return _split(undirected, nodes, parts, seed)


def cut_edges(graph: nx.Graph | nx.DiGraph, parts: list[list[int]]) -> int:
    """Edges of ``graph`` whose ends lie in different parts (directed edges count once
    each)."""
    part_of = {node: k for k, nodes in enumerate(parts) for node in nodes}
    return sum(1 for u, v in graph.edges if part_of[u] != part_of[v])


def _split(graph: nx.Graph, nodes: list[int], parts: int, seed: int) -> list[list[int]]:
    if parts == 1:
        return [nodes]
    left_parts = parts // 2
    size = len(nodes) * left_parts // parts
    sub = graph.subgraph(nodes)
    order = _breadth_first(sub, nodes)
    left, right = set(order[:size]), set(order[size:])
    if sub.number_of_edges():
        a, b = nx.community.kernighan_lin_bisection(
            sub, partition=(left, right), max_iter=REFINE_PASSES, seed=seed
        )
        left, right = (a, b) if len(a) == size else (b, a)  # sizes kept, order not
    return _split(graph, sorted(left), left_parts, seed) + _split(
        graph, sorted(right), parts - left_parts, seed
    )


def _breadth_first(graph: nx.Graph, nodes: list[int]) -> list[int]:
    """Every node, breadth first from the smallest, neighbours in sorted order; each
    further component from its smallest node."""
    seen: set[int] = set()
    order: list[int] = []
    for root in nodes:
        if root in seen:
            continue
        seen.add(root)
        queue = deque([root])
        while queue:
            node = queue.popleft()
            order.append(node)
            for other in sorted(graph.neighbors(node)):
                if other not in seen:
                    seen.add(other)
                    queue.append(other)
    return order
