"""Mixing weights and spectral gaps against closed forms and the shared reference table."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.errors import ConfigError
from gossipfl.topology import (
    build_topology,
    check_mixing_matrix,
    fiedler_vector,
    is_doubly_stochastic,
    is_symmetric,
    max_degree_weights,
    metropolis_hastings_weights,
    predicted_rounds,
    spectral_gap,
)
from gossipfl.topology import generators as gen

# ------------------------------------------------------------------ mixing matrices


@st.composite
def connected_graphs(draw: st.DrawFn) -> nx.Graph:
    n = draw(st.integers(2, 30))
    p = draw(st.floats(0.05, 1.0))
    seed = draw(st.integers(0, 2**31 - 1))
    graph = nx.gnp_random_graph(n, p, seed=seed)
    # Make it connected with a path, so every example is a usable topology.
    graph.add_edges_from((i, i + 1) for i in range(n - 1))
    return graph


@given(graph=connected_graphs())
def test_metropolis_hastings_is_symmetric_doubly_stochastic(graph: nx.Graph) -> None:
    w = metropolis_hastings_weights(graph)
    check_mixing_matrix(w)  # raises on failure
    dense = w.toarray()
    degree = dict(graph.degree())
    for u, v in graph.edges:
        assert dense[u, v] == pytest.approx(1.0 / (1 + max(degree[u], degree[v])), abs=1e-15)
    assert (dense.diagonal() > 0).all()  # MH keeps a positive self weight
    off_edges = (dense > 0) & ~np.eye(len(dense), dtype=bool)
    assert off_edges.sum() == 2 * graph.number_of_edges()


@given(graph=connected_graphs())
def test_max_degree_weights_are_uniform_and_doubly_stochastic(graph: nx.Graph) -> None:
    w = max_degree_weights(graph)
    assert is_symmetric(w)
    assert is_doubly_stochastic(w)
    d_max = max(d for _, d in graph.degree())
    for u, v in graph.edges:
        assert w[u, v] == pytest.approx(1.0 / (1 + d_max), abs=1e-15)


def test_regular_graph_weightings_coincide() -> None:
    graph = gen.torus_graph(rows=4, cols=6)
    assert np.allclose(
        metropolis_hastings_weights(graph).toarray(), max_degree_weights(graph).toarray()
    )


def test_check_mixing_matrix_names_the_failure() -> None:
    bad_rows = np.array([[0.5, 0.6], [0.5, 0.4]])
    with pytest.raises(ConfigError, match="row 0 sums"):
        check_mixing_matrix(bad_rows)
    not_doubly = np.array([[0.5, 0.5], [1.0, 0.0]])
    with pytest.raises(ConfigError, match="column 0"):
        check_mixing_matrix(not_doubly)
    check_mixing_matrix(not_doubly, doubly_stochastic=False, symmetric=False)
    asymmetric = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    with pytest.raises(ConfigError, match="not symmetric"):
        check_mixing_matrix(asymmetric)
    with pytest.raises(ConfigError, match="negative"):
        check_mixing_matrix(np.array([[1.5, -0.5], [-0.5, 1.5]]))


def test_weightings_refuse_directed_graphs_and_bad_names() -> None:
    with pytest.raises(ConfigError, match="undirected"):
        metropolis_hastings_weights(nx.DiGraph([(0, 1)]))
    with pytest.raises(ConfigError, match="unknown weighting"):
        build_topology("ring", peers=8, params={"weighting": "fancy"})


# ------------------------------------------------------------------ closed forms


def ring_gap(n: int) -> float:
    return (2.0 / 3.0) * (1.0 - math.cos(2.0 * math.pi / n))


def torus_gap(side: int) -> float:
    return 0.4 * (1.0 - math.cos(2.0 * math.pi / side))


def hypercube_gap(n: int) -> float:
    return 2.0 / (math.log2(n) + 1.0)


CLOSED_FORMS = (
    [("ring", n, {}, ring_gap(n)) for n in (16, 64, 256, 1024)]
    + [("torus", side * side, {}, torus_gap(side)) for side in (4, 8, 16, 32)]
    + [("hypercube", n, {}, hypercube_gap(n)) for n in (16, 64, 256, 1024)]
    + [("exponential", n, {}, hypercube_gap(n)) for n in (16, 64, 256, 1024)]
    + [("complete", n, {}, 1.0) for n in (16, 64, 256)]
    + [("two-castle", n, {}, (n - 2) / (n - 1)) for n in (6, 12, 40)]
    + [("star", n, {}, 1.0 / n) for n in (8, 16, 300)]
)


@pytest.mark.parametrize(("family", "n", "params", "expected"), CLOSED_FORMS)
def test_spectral_gap_matches_closed_form(
    family: str, n: int, params: dict[str, object], expected: float
) -> None:
    topology = build_topology(family, peers=n, params=params)
    assert topology.spectral_gap() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("family", "n"), [("ring", 1024), ("torus", 1024), ("hypercube", 1024)])
def test_sparse_and_dense_solvers_agree(family: str, n: int) -> None:
    w = build_topology(family, peers=n).mixing_matrix(sparse=True)
    sparse_gap = spectral_gap(w, method="sparse")
    dense_gap = spectral_gap(w, method="dense")
    assert sparse_gap == pytest.approx(dense_gap, abs=1e-9)


def test_sparse_solver_on_a_4096_ring_matches_the_closed_form() -> None:
    w = build_topology("ring", peers=4096).mixing_matrix(sparse=True)
    assert spectral_gap(w, method="sparse") == pytest.approx(ring_gap(4096), abs=1e-12)


@pytest.mark.parametrize("family", ["random-regular", "erdos-renyi", "small-world", "star"])
def test_sparse_solver_handles_expanders_and_irregular_graphs(family: str) -> None:
    """The Lanczos path (expanders) and the Gershgorin shortcut (λ_n) stay exact."""
    w = build_topology(family, peers=600, seed=1).mixing_matrix(sparse=True)
    assert spectral_gap(w, method="sparse") == pytest.approx(
        spectral_gap(w, method="dense"), abs=1e-9
    )


def test_sparse_solver_for_directed_doubly_stochastic_matrices() -> None:
    w = build_topology("exponential", peers=1024).mixing_matrix(sparse=True)
    assert spectral_gap(w, method="sparse") == pytest.approx(hypercube_gap(1024), abs=1e-9)


def test_bipartite_graph_counts_the_negative_end() -> None:
    """A 2-node path with zero self weight oscillates forever: gap 0 from λ_n = -1."""
    w = sp.csr_array(np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert spectral_gap(w) == 0.0


def test_disconnected_graph_has_zero_gap() -> None:
    graph = nx.disjoint_union(nx.cycle_graph(5), nx.cycle_graph(5))
    w = metropolis_hastings_weights(graph)
    assert spectral_gap(w, method="dense") == pytest.approx(0.0, abs=1e-12)
    assert spectral_gap(w, method="sparse") == pytest.approx(0.0, abs=1e-9)


# The table in /work/shared/REFERENCES.md (numpy, Metropolis–Hastings weights), to the
# digits given there.
REFERENCE_TABLE = {
    "ring": {16: 5.075e-2, 64: 3.210e-3, 256: 2.008e-4, 1024: 1.255e-5},
    "torus": {16: 0.400, 64: 0.1172, 256: 3.045e-2, 1024: 7.686e-3},
    "hypercube": {16: 0.400, 64: 0.2857, 256: 0.2222, 1024: 0.1818},
    "exponential": {16: 0.400, 64: 0.2857, 256: 0.2222, 1024: 0.1818},
    "complete": {16: 1.0, 64: 1.0, 256: 1.0},
}


@pytest.mark.parametrize(
    ("family", "n", "value"),
    [(family, n, value) for family, row in REFERENCE_TABLE.items() for n, value in row.items()],
)
def test_gap_matches_reference_table(family: str, n: int, value: float) -> None:
    """Every entry is given to 4 significant digits (0.400 and 1 to 3: trailing zeros)."""
    gap = build_topology(family, peers=n).spectral_gap()
    assert float(f"{gap:.4g}") == pytest.approx(value, rel=1e-12)


RANDOM_REFERENCE = {
    ("random-regular", 16): 0.235,
    ("random-regular", 64): 0.136,
    ("random-regular", 256): 0.116,
    ("random-regular", 1024): 0.109,
    ("small-world", 16): 0.128,
    ("small-world", 64): 0.027,
    ("small-world", 256): 0.015,
    ("small-world", 1024): 0.011,
}


@pytest.mark.parametrize(("key", "value"), list(RANDOM_REFERENCE.items()))
def test_random_families_are_near_the_reference_on_average(
    key: tuple[str, int], value: float
) -> None:
    family, n = key
    gaps = [build_topology(family, peers=n, seed=seed).spectral_gap() for seed in range(12)]
    assert np.mean(gaps) == pytest.approx(value, rel=0.25)


def test_random_regular_gap_tends_to_the_ramanujan_limit() -> None:
    limit = 1.0 - (1.0 + 2.0 * math.sqrt(3.0)) / 5.0
    gap = build_topology("random-regular", peers=4096, seed=0).spectral_gap()
    assert limit - 0.005 < gap < limit + 0.01


# ------------------------------------------------------------------ predictions


@given(gap=st.floats(1e-6, 0.999), tolerance=st.floats(1e-12, 0.5))
@settings(max_examples=200)
def test_predicted_rounds_is_the_first_round_below_tolerance(gap: float, tolerance: float) -> None:
    rounds = predicted_rounds(gap, tolerance)
    assert rounds is not None
    assert (1 - gap) ** rounds <= tolerance * (1 + 1e-9)
    if rounds > 1:
        assert (1 - gap) ** (rounds - 1) > tolerance * (1 - 1e-9)


def test_predicted_rounds_edge_cases() -> None:
    assert predicted_rounds(1.0) == 1
    assert predicted_rounds(0.0) is None
    assert predicted_rounds(ring_gap(64)) == math.ceil(math.log(1e-6) / math.log(1 - ring_gap(64)))
    with pytest.raises(ValueError, match="tolerance"):
        predicted_rounds(0.5, tolerance=2.0)


def test_fiedler_vector_of_a_path_is_the_first_cosine_mode() -> None:
    n = 9
    vec = fiedler_vector(nx.path_graph(n))
    expected = np.cos(np.pi * (np.arange(n) + 0.5) / n)  # the path Laplacian's second mode
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(vec, expected, atol=1e-9)
    assert vec[0] > 0  # sign fixed: first non-zero coordinate positive
    assert abs(vec.sum()) < 1e-9  # orthogonal to the constant vector


def test_fiedler_vector_sparse_solver_agrees_with_the_dense_one() -> None:
    graph = nx.relabel_nodes(nx.path_graph(40), {i: 39 - i for i in range(40)})  # reversed order
    dense = fiedler_vector(graph)
    sparse = fiedler_vector(graph, dense_threshold=2)
    np.testing.assert_allclose(np.abs(sparse @ dense), 1.0, atol=1e-6)
    np.testing.assert_allclose(sparse, dense, atol=1e-5)  # same sign convention


def test_fiedler_vector_refuses_graphs_without_one() -> None:
    with pytest.raises(ValueError, match="disconnected"):
        fiedler_vector(nx.Graph([(0, 1), (2, 3)]))
    with pytest.raises(ValueError, match="two nodes"):
        fiedler_vector(nx.empty_graph(1))
