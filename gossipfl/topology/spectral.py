"""Spectral gap of a mixing matrix, and what it predicts.

For a doubly stochastic ``W`` the disagreement ``x_t - x̄`` shrinks by a factor of at most
``max(|λ₂|, |λ_n|)`` per round (the second-largest eigenvalue modulus, SLEM), so the
spectral gap ``1 - SLEM`` predicts the number of rounds to a target consensus error:
``ceil(ln ε / ln(1 - gap))``.

Small matrices use a dense symmetric eigensolver (``numpy.linalg.eigvalsh``, O(n³) but
exact and fast below a few hundred nodes). Large sparse symmetric matrices use ARPACK in
shift-invert mode on the Laplacian ``L = I - W``: the eigenvalues of ``L`` near 0 give
``λ₂`` and the ones near 2 give ``λ_n``. Shift-invert matters: on a 4096-ring
``λ₂ = 1 - 8e-7`` sits in a tight cluster that plain Lanczos resolves only after thousands
of iterations, while one sparse LU of ``L - σI`` separates it at once.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import networkx as nx
import numpy as np
import scipy.sparse as sp

from gossipfl.topology.mixing import is_doubly_stochastic, is_symmetric

__all__ = [
    "DENSE_EIGEN_THRESHOLD",
    "EigenMethod",
    "fiedler_vector",
    "predicted_rounds",
    "second_largest_eigenvalue_modulus",
    "spectral_gap",
]

#: Matrices with at most this many rows use the dense eigensolver under ``method="auto"``.
#: Chosen from experiments/benchmarks/topology.py (see docs/benchmarks.md § Topology).
DENSE_EIGEN_THRESHOLD = 256

EigenMethod = Literal["auto", "dense", "sparse"]

# Shifts for shift-invert on L = I - W, whose spectrum lies in [0, 2]. The lower shift is
# slightly negative so that L - σI stays non-singular although 0 is an eigenvalue.
_LOW_SHIFT = -1e-6
_HIGH_SHIFT = 2.0 + 1e-6
_NCV = 24
_LANCZOS_MAXITER = 100


def _linalg() -> Any:
    """``scipy.sparse.linalg``, imported on first use: with ``scipy.linalg`` under it,
    ~50 ms of every import of gossipfl's topologies (a sharded simulation's shard
    processes import them, and never ask for a spectral gap)."""
    import scipy.sparse.linalg as spla

    return spla


def _dense_slem(w: np.ndarray, symmetric: bool) -> float:
    if symmetric:
        values = np.linalg.eigvalsh((w + w.T) / 2.0)
        return float(max(abs(values[-2]), abs(values[0])))
    moduli = np.sort(np.abs(np.linalg.eigvals(w)))
    return float(moduli[-2])


def _lanczos(operator: object, which: str) -> float | None:
    """One extreme eigenvalue by plain (implicitly restarted) Lanczos, or None when it does
    not converge quickly: then the spectrum is clustered there and shift-invert is needed."""
    spla = _linalg()
    try:
        values = spla.eigsh(
            operator,
            k=1,
            which=which,
            ncv=_NCV,
            tol=0.0,
            maxiter=_LANCZOS_MAXITER,
            return_eigenvectors=False,
        )
    except spla.ArpackNoConvergence:
        return None
    return float(values[0])


def _shift_invert(laplacian: sp.csc_array, sigma: float, k: int) -> np.ndarray:
    """The ``k`` eigenvalues of ``L`` nearest ``sigma`` (one sparse LU of ``L - σI``)."""
    ncv = min(laplacian.shape[0] - 1, _NCV)
    spla = _linalg()
    return np.sort(
        spla.eigsh(
            laplacian, k=k, sigma=sigma, which="LM", ncv=ncv, tol=0.0, return_eigenvectors=False
        )
    )


def _sparse_symmetric_slem(w: sp.csr_array) -> float:
    """SLEM of a large sparse symmetric doubly stochastic matrix.

    λ₂ is the largest eigenvalue of the deflated ``W - J/n``. Expanders (random regular,
    Erdős–Rényi, small worlds) have it well separated and plain Lanczos finds it in a few
    dozen matrix-vector products; rings and tori have it in a tight cluster where Lanczos
    stalls but shift-invert on the Laplacian near 0 is instant (their LU has little
    fill-in). So: Lanczos with a small iteration budget, then shift-invert.

    λ_n often needs no solve at all: Gershgorin's theorem bounds it below by
    ``min_i (W_ii - Σ_j≠i |W_ij|)``, and when that bound is above ``-λ₂`` the SLEM is λ₂.
    """
    n = w.shape[0]

    def deflated(x: np.ndarray) -> np.ndarray:
        y = np.asarray(w @ x)
        centred: np.ndarray = y - y.mean()
        return centred

    operator = _linalg().LinearOperator((n, n), matvec=deflated, dtype=np.float64)
    laplacian: sp.csc_array | None = None
    lambda2 = _lanczos(operator, "LA")
    if lambda2 is None:
        laplacian = (sp.eye_array(n, format="csc") - w.tocsc()).tocsc()
        lambda2 = 1.0 - float(_shift_invert(laplacian, _LOW_SHIFT, 2)[1])
    diagonal = w.diagonal()
    off_diagonal = np.asarray(abs(w).sum(axis=1)).ravel() - np.abs(diagonal)
    if float((diagonal - off_diagonal).min()) >= -abs(lambda2):
        return abs(lambda2)
    lambda_n = _lanczos(w, "SA")
    if lambda_n is None:
        if laplacian is None:
            laplacian = (sp.eye_array(n, format="csc") - w.tocsc()).tocsc()
        lambda_n = 1.0 - float(_shift_invert(laplacian, _HIGH_SHIFT, 1)[-1])
    return max(abs(lambda2), abs(lambda_n))


def _sparse_general_slem(w: sp.csr_array) -> float:
    n = w.shape[0]
    ncv = min(n - 1, _NCV)
    spla = _linalg()
    if is_doubly_stochastic(w, atol=1e-9):
        # Deflate the known eigenpair (1, 𝟙): (I - J/n) W has the other eigenvalues of W
        # and 0 in place of 1, so the largest modulus left is the SLEM.
        def matvec(x: np.ndarray) -> np.ndarray:
            y = np.asarray(w @ x)
            centred: np.ndarray = y - y.mean()
            return centred

        operator = spla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
        values = spla.eigs(operator, k=1, which="LM", ncv=ncv, tol=0.0, return_eigenvectors=False)
        return float(np.abs(values).max())
    values = spla.eigs(w, k=2, which="LM", ncv=ncv, tol=0.0, return_eigenvectors=False)
    return float(np.sort(np.abs(values))[0])


def second_largest_eigenvalue_modulus(
    matrix: sp.csr_array | np.ndarray,
    *,
    method: EigenMethod = "auto",
    dense_threshold: int = DENSE_EIGEN_THRESHOLD,
) -> float:
    """``max(|λ₂|, |λ_n|)`` of a stochastic matrix (eigenvalues sorted by value when
    symmetric, by modulus otherwise). Zero for a 1×1 matrix."""
    n = matrix.shape[0]
    if n <= 1:
        return 0.0
    symmetric = is_symmetric(matrix, atol=1e-12)
    use_dense = method == "dense" or (method == "auto" and n <= dense_threshold) or n <= 3
    if use_dense:
        dense = (
            sp.csr_array(matrix).toarray()
            if sp.issparse(matrix)
            else np.asarray(matrix, dtype=np.float64)
        )
        return _dense_slem(dense, symmetric)
    w = sp.csr_array(matrix, dtype=np.float64)
    if symmetric:
        return _sparse_symmetric_slem(w)
    return _sparse_general_slem(w)


def spectral_gap(
    matrix: sp.csr_array | np.ndarray,
    *,
    method: EigenMethod = "auto",
    dense_threshold: int = DENSE_EIGEN_THRESHOLD,
) -> float:
    """``1 - max(|λ₂|, |λ_n|)`` of ``matrix``: 1 for exact one-round averaging, 0 for a
    disconnected (or periodic, bipartite) graph that never reaches consensus."""
    slem = second_largest_eigenvalue_modulus(matrix, method=method, dense_threshold=dense_threshold)
    return min(1.0, max(0.0, 1.0 - slem))


def predicted_rounds(gap: float, tolerance: float = 1e-6) -> int | None:
    """Rounds for the consensus error to shrink by ``tolerance``: ``ceil(ln ε / ln(1-gap))``.

    1 when ``gap ≥ 1`` (one round averages exactly); None when ``gap ≤ 0`` (never).
    """
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    if gap >= 1.0:
        return 1
    if gap <= 0.0:
        return None
    return max(1, math.ceil(math.log(tolerance) / math.log1p(-gap)))


def fiedler_vector(graph: nx.Graph, *, dense_threshold: int = DENSE_EIGEN_THRESHOLD) -> np.ndarray:
    """The unit eigenvector of the second-smallest eigenvalue of the graph's (unweighted)
    Laplacian, indexed like ``sorted(graph.nodes)``.

    It varies slowest along the graph: its sign splits the graph where it is hardest to
    mix, which is why the spectral attack pushes each node along its own coordinate. When
    that eigenvalue is repeated (a torus, a complete graph) any vector of its eigenspace
    qualifies; the dense solver's choice is returned, made deterministic by a positive
    first non-zero coordinate. Raises ValueError for fewer than two nodes or a
    disconnected graph (then the vector only marks the components).
    """
    nodes = sorted(graph.nodes)
    if len(nodes) < 2:
        raise ValueError("a Fiedler vector needs at least two nodes")
    if not nx.is_connected(graph):
        raise ValueError("the graph is disconnected: its Fiedler vector is not defined")
    if len(nodes) <= dense_threshold:
        lap = nx.laplacian_matrix(graph, nodelist=nodes, weight=None).toarray().astype(float)
        _, vectors = np.linalg.eigh(lap)
        vec = np.asarray(vectors[:, 1], dtype=np.float64)
    else:
        ordered = nx.Graph()
        ordered.add_nodes_from(nodes)  # nx returns the vector in node-iteration order
        ordered.add_edges_from(graph.edges)
        vec = np.asarray(
            nx.fiedler_vector(ordered, weight=None, method="tracemin_lu", seed=0),
            dtype=np.float64,
        )
    first = vec[np.flatnonzero(np.abs(vec) > 1e-12)[0]]
    vec = vec if first > 0 else -vec
    return vec / np.linalg.norm(vec)
