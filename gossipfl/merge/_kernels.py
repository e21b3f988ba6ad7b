"""Vectorised building blocks shared by the merge rules.

Every rule reduces to one or two passes over the ``(d, n)`` stack of neighbour models:

* **Distance rules** (Krum, geometric median, clipping, NNA, IOS, BALANCE) need only the
  Gram matrix of the models *centred on a reference point* (the peer's own model). With
  ``G = Y Yᵀ`` for ``Y = X − own`` every distance between the models, and between any point
  ``own + cᵀY`` and a model, is a small quadratic form in ``G``. So the rules run all their
  iterations (Weiszfeld, centred clipping, IOS's removals) on ``(d+1)``-sized coefficient
  vectors and touch the n coordinates only twice: once to build ``G``, once to form the
  output ``(1 − Σc)·own + c @ X`` with one BLAS ``gemv``.
* **Order-statistic rules** (median, trimmed mean) run a comparator network compiled
  for their (m, b) (:func:`trimmed_plan`) over the rows, column chunk by column chunk,
  with ``np.minimum``/``np.maximum``.

``G`` is built over column chunks that fit in cache: each chunk is centred in float32 and
multiplied with one BLAS call, and the chunks are summed in float64 (details and error
bounds above :func:`centred_gram`). A neighbour that sends huge but finite values would
overflow float32 (turning a distance into inf and a ranking into nonsense); that shows up
as inf and the pass is redone in float64, which nothing a float32 holds can overflow.
Non-finite inputs make ``G`` non-finite too, so distance rules need no separate validation
pass; the exact element-wise check runs only then, to name the culprits. The other
rules fold the check into their own pass in the same way: the mean into the sum of its
result (:func:`combine`), the order statistics into row sums of each chunk as it enters
the network (:func:`trimmed_mean`). :func:`ensure_finite` remains for rules that have no
such pass (rules defined outside this package, and merges that keep the own model).

With numba installed (the ``fast`` extra), :func:`trimmed_mean`, :func:`centred_gram` and
:func:`centred_sq_distances` hand their pass to the fused loops of
:mod:`gossipfl.merge._compiled` (one read of the inputs, float64 Gram sums); the code here
is the reference and the fallback, and ``GOSSIPFL_KERNELS=numpy`` forces it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from gossipfl.merge import _compiled
from gossipfl.merge.errors import MergeInputError, NonFiniteInputError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Gram chunks hold about this many products (k rows by k + 1 by the chunk's columns):
#: 7168 columns at d = 8, the cap of 16384 at d = 4, 1024 at d = 16, each measured best
#: or within noise of it (experiments/benchmarks/merge.py, one BLAS thread).
GRAM_CHUNK_PRODUCTS = 1 << 19
#: Columns per chunk for passes that need only row norms or an elementwise update.
NORM_CHUNK = 65536
#: Columns per chunk of the distances-to-the-centre pass: the (d, chunk) differences
#: stay in L2 while each row's norm is taken (65536 columns measured 1.5x slower at d = 8).
DIAG_CHUNK = 16384
#: Columns per chunk for the comparator networks: the scratch rows stay in L2 while the
#: plan's ufunc calls sweep them (2.2 µs per call at this width; 2048 to 32768 measured).
NETWORK_CHUNK = 16384
#: Columns per chunk for the finiteness check (one BLAS gemv against ones per chunk).
FINITE_CHUNK = 65536
#: Slack allowed above 1 for the sum of the neighbours' weights (float rounding of 1/k).
WEIGHT_SUM_SLACK = 1e-6


class Workspace:
    """Scratch buffers reused across merges, so a merge allocates no large temporaries.

    Freshly allocated multi-megabyte arrays cost page faults on every call (glibc hands
    them back to the kernel), which on this machine is comparable to the merge itself. A
    workspace keeps a few chunk-sized buffers alive; its size is bounded by the chunk
    constants above and the neighbourhood size, never by the model size n. One workspace
    belongs to one rule instance, hence to one peer; it is not thread-safe.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, npt.NDArray[Any]] = {}
        # combine()'s coefficients as float32, the own coefficient and whether none is
        # zero, for the last read-only coefficient array it saw (held, so its id is not
        # reused): a rule's remembered weights (MergeRule._weights), the same each round.
        self.coef_memo: tuple[F64, F32, np.float32, bool] | None = None

    def get(self, key: str, shape: tuple[int, ...], dtype: type[np.generic]) -> npt.NDArray[Any]:
        """A C-contiguous array of ``shape`` and ``dtype``; its contents are garbage."""
        need = math.prod(shape)
        buf = self._buffers.get(key)
        if buf is None or buf.size < need or buf.dtype != dtype:
            buf = np.empty(max(need, 1), dtype=dtype)
            self._buffers[key] = buf
        return buf[:need].reshape(shape)

    def ones(self, length: int) -> F32:
        """A float32 vector of ones (cached; never write to it)."""
        buf = self._buffers.get("ones")
        if buf is None or buf.size < length:
            buf = np.ones(max(length, 1), dtype=np.float32)
            self._buffers["ones"] = buf
        out: F32 = buf[:length]
        return out


# --------------------------------------------------------------------------- validation


def as_model(own: npt.ArrayLike, what: str = "own") -> F32:
    """``own`` as a 1-D float32 vector with at least one coordinate (no copy if it is one)."""
    try:
        arr = np.asarray(own, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise MergeInputError(f"{what} must be a numeric vector: {exc}") from None
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise MergeInputError(f"{what} must be a non-empty 1-D vector, got shape {arr.shape}")
    return arr


def as_stack(neighbours: npt.ArrayLike | Sequence[npt.ArrayLike], n: int, what: str) -> F32:
    """``neighbours`` as a C-contiguous ``(d, n)`` float32 stack.

    A ``(d, n)`` float32 C-contiguous array is used as is; a sequence of vectors is stacked
    (one copy). ``d`` may be 0.
    """
    if isinstance(neighbours, (list, tuple)) and len(neighbours) == 0:
        return np.empty((0, n), dtype=np.float32)
    try:
        arr = np.asarray(neighbours, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise MergeInputError(f"{what} must be a (d, n) numeric array: {exc}") from None
    if arr.ndim == 1 and arr.size == 0:
        return np.empty((0, n), dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != n:
        raise MergeInputError(
            f"{what} must have shape (d, {n}) to match the own model, got {arr.shape}"
        )
    return np.ascontiguousarray(arr)


def as_weights(weights: npt.ArrayLike, d: int) -> F64:
    """Mixing weights as float64: finite, non-negative, ``d`` of them, summing to at most 1."""
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MergeInputError(f"weights must be numeric: {exc}") from None
    if w.ndim != 1 or w.shape[0] != d:
        raise MergeInputError(
            f"weights must be a vector of one weight per neighbour (length {d}), "
            f"got shape {w.shape}"
        )
    if d == 0:
        return w
    # The ufunc reductions that .all(), .any() and .sum() call, without their Python
    # wrappers: a few microseconds of every merge of a large simulation.
    if not np.logical_and.reduce(np.isfinite(w)):
        raise MergeInputError(f"weights must be finite, got {w.tolist()}")
    if np.logical_or.reduce(w < 0):
        raise MergeInputError(f"weights must be non-negative, got {w.tolist()}")
    total = float(np.add.reduce(w))
    if total > 1.0 + WEIGHT_SUM_SLACK:
        raise MergeInputError(
            f"neighbour weights sum to {total:.6g} > 1; the own weight 1 − sum must be >= 0"
        )
    return w


def raise_if_non_finite(own: F32, rows: F32) -> None:
    """The exact (slow path) check: raise :class:`NonFiniteInputError` naming the culprits."""
    own_bad = not bool(np.isfinite(own).all())
    bad_rows = np.flatnonzero(~np.isfinite(rows).all(axis=1)) if rows.size else np.empty(0)
    if own_bad or bad_rows.size:
        raise NonFiniteInputError(own=own_bad, neighbours=tuple(int(i) for i in bad_rows))


def ensure_finite(own: F32, rows: F32, ws: Workspace) -> None:
    """Raise :class:`NonFiniteInputError` if any input holds NaN or ±inf.

    The fast path sums every row with BLAS (a gemv against a vector of ones, chunk by
    chunk): under IEEE arithmetic any NaN or inf makes its row sum non-finite, whatever the
    order of additions. A non-finite sum can also come from finite values overflowing, so
    only then the exact element-wise check runs and decides.
    """
    n = own.shape[0]
    ones = ws.ones(min(n, FINITE_CHUNK))
    ok = True
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, FINITE_CHUNK):
            stop = min(start + FINITE_CHUNK, n)
            part = ones[: stop - start]
            if not math.isfinite(float(np.dot(own[start:stop], part))):
                ok = False
                break
            if rows.shape[0] and not np.isfinite(rows[:, start:stop] @ part).all():
                ok = False
                break
    if not ok:
        raise_if_non_finite(own, rows)


def vectors_finite(vectors: Sequence[F32], ws: Workspace) -> bool:
    """Fast check: True if every vector's chunked BLAS sums are finite (then it holds no
    NaN or inf). False means non-finite *or* an overflowing sum: decide with
    :func:`raise_if_non_finite`."""
    with np.errstate(over="ignore", invalid="ignore"):
        for vec in vectors:
            n = vec.shape[0]
            ones = ws.ones(min(n, FINITE_CHUNK))
            for start in range(0, n, FINITE_CHUNK):
                stop = min(start + FINITE_CHUNK, n)
                if not math.isfinite(float(np.dot(vec[start:stop], ones[: stop - start]))):
                    return False
    return True


# --------------------------------------------------------------------------- distances
#
# Distances are computed from differences y = x − center, never from uncentred products
# (‖x‖² − 2x·c + ‖c‖² cancels catastrophically once models agree to a few digits, which
# is exactly what gossip drives them to). The fast path centres each column chunk in
# float32 (each difference exact to float32 rounding), forms the chunk's products with
# one BLAS call in float32 and accumulates the chunks in float64, so the relative error
# stays around 1e-6 for any n. A neighbour sending huge finite values (|y| ≳ 1e19) would
# overflow float32; that shows up as inf, and only then the chunk loop is redone in float64,
# where nothing a float32 input holds can overflow.


def gram_chunk(k: int) -> int:
    """Columns per Gram chunk for ``k`` rows: a multiple of 1024 from 1024 to 16384."""
    return max(1024, min(16384, GRAM_CHUNK_PRODUCTS // (k * (k + 1)) // 1024 * 1024))


def _gram_pass(
    center: F32, rows: F32, ws: Workspace, *, full: bool, wide: bool, center_norm: bool = False
) -> F64:
    """One chunked pass: the (k, k) centred Gram matrix (``full``) or its diagonal.

    ``wide`` selects the float64 path (centring and products in float64). Each chunk's
    products land in their own slot of a small (chunks, k, k+1) array, summed in float64
    at the end: no per-chunk Python arithmetic. For the diagonal, ``center_norm`` also
    takes ‖center‖² from the chunks while they are in cache, returned as entry k.
    """
    k, n = rows.shape
    dtype = np.float64 if wide else np.float32
    chunk = min(gram_chunk(k) if full else DIAG_CHUNK, n)
    count = -(-n // chunk)
    # Row 0 stays zero: the centre minus itself. Multiplying the k difference rows by all
    # k + 1 rows sends numpy to BLAS gemm; y @ y.T of one buffer goes to syrk, which
    # OpenBLAS runs 3-4x slower on this skinny shape (measured at d = 4, 8, 16).
    buf = ws.get("gram64" if wide else "gram32", (k + 1, chunk), dtype)
    buf[0] = 0.0
    cbuf: F64 = ws.get("gram64_center", (chunk,), np.float64) if wide else np.empty(0)
    shape = (count, k, k + 1) if full else (count, k + 1)
    parts = ws.get("gram_parts" + dtype.__name__, shape, dtype)
    for i, start in enumerate(range(0, n, chunk)):
        stop = min(start + chunk, n)
        y = buf[:, : stop - start]
        if wide:
            # Cast first, then subtract float64 from float64: exact, and faster than a
            # mixed-type ufunc loop.
            c = cbuf[: stop - start]
            c[...] = center[start:stop]
            y[1:] = rows[:, start:stop]
            y[1:] -= c
        else:
            np.subtract(rows[:, start:stop], center[start:stop], out=y[1:])
        if full:
            np.dot(y[1:], y.T, out=parts[i])
        else:
            part = parts[i]
            for j in range(k):
                part[j] = np.dot(y[j + 1], y[j + 1])
            if center_norm:
                own = cbuf[: stop - start] if wide else center[start:stop]
                part[k] = np.dot(own, own)
            else:
                part[k] = 0.0
    acc: F64 = parts.sum(axis=0, dtype=np.float64)
    return acc[:, 1:] if full else acc


def _center_sq_norm(center: F32) -> float:
    """‖center‖² accumulated in float64 over float32 chunk dot products."""
    n = center.shape[0]
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, NORM_CHUNK):
            part = center[start : start + NORM_CHUNK]
            total += float(np.dot(part, part))
    if not math.isfinite(total):
        wide = center.astype(np.float64)
        total = float(np.dot(wide, wide))
    return total


def _robust_pass(
    center: F32,
    rows: F32,
    ws: Workspace,
    *,
    full: bool,
    precise: bool = False,
    center_norm: bool = False,
) -> F64:
    # Overflow and inf − inf are expected here and handled below: keep numpy quiet.
    with np.errstate(over="ignore", invalid="ignore"):
        acc = _gram_pass(center, rows, ws, full=full, wide=precise, center_norm=center_norm)
    diag = acc.diagonal() if full else acc
    if np.isfinite(diag).all():
        return acc
    raise_if_non_finite(center, rows)  # NaN/inf inputs: reject
    if precise:  # pragma: no cover - float64 cannot overflow on float32 inputs
        raise AssertionError("float64 Gram overflowed on finite float32 inputs")
    # Finite but huge: float64.
    return _gram_pass(center, rows, ws, full=full, wide=True, center_norm=center_norm)


def centred_gram(
    center: F32, rows: F32, ws: Workspace, *, center_norm: bool = False, precise: bool = False
) -> tuple[F64, float]:
    """The Gram matrix of ``[center; rows] − center`` (float64 result), and ‖center‖².

    ``precise`` computes the differences and products in float64 (exact differences,
    exact products, float64 sums: ~1e-16 relative) at about twice the cost; the default
    float32 chunks are accurate to ~1e-6 relative to ‖y_j‖·‖y_l‖, which is plenty for
    ranking and thresholds but not for deciding whether a point is *exactly* optimal.

    Returns ``G`` of shape ``(k+1, k+1)`` for ``k`` rows, whose index 0 stands for
    ``center`` itself (a zero vector after centring, so row and column 0 are zero). Points
    are indexed the same way everywhere in the coefficient-space algorithms. Raises
    :class:`NonFiniteInputError` if an input holds NaN or inf (they make ``G`` non-finite).
    ``‖center‖²`` is computed only when ``center_norm`` is set (0.0 otherwise).
    """
    k = rows.shape[0]
    g = np.zeros((k + 1, k + 1), dtype=np.float64)
    if k and _compiled.enabled(center.shape[0]):
        inner, norm = _compiled.gram(center, rows, full=True, center_norm=center_norm)
        if not np.isfinite(inner.diagonal()).all() or not math.isfinite(norm):
            raise_if_non_finite(center, rows)
        g[1:, 1:] = inner
        return g, norm
    if k:
        inner = _robust_pass(center, rows, ws, full=True, precise=precise)
        # Symmetrise: BLAS may round the two triangles differently.
        g[1:, 1:] = 0.5 * (inner + inner.T)
    else:
        raise_if_non_finite(center, rows)
    return g, (_center_sq_norm(center) if center_norm else 0.0)


def centred_sq_distances(
    center: F32, rows: F32, ws: Workspace, *, center_norm: bool = False
) -> tuple[F64, float]:
    """``‖rows_j − center‖²`` for every row (float64), and ‖center‖² if asked.

    The diagonal of :func:`centred_gram` at a fraction of its cost: rules that only
    compare neighbours with the own model (NNA, clipping, BALANCE) need nothing more.
    Raises :class:`NonFiniteInputError` for NaN or inf inputs.
    """
    if rows.shape[0] == 0:
        raise_if_non_finite(center, rows)
        return np.zeros(0), (_center_sq_norm(center) if center_norm else 0.0)
    if _compiled.enabled(center.shape[0]):
        diag, norm = _compiled.gram(center, rows, full=False, center_norm=center_norm)
        if not np.isfinite(diag).all() or not math.isfinite(norm):
            raise_if_non_finite(center, rows)
        return diag, norm
    sq = _robust_pass(center, rows, ws, full=False, center_norm=center_norm)
    return sq[:-1], float(sq[-1])


def pairwise_sq_distances(g: F64) -> F64:
    """All squared distances between the points of a Gram matrix (clamped at 0)."""
    diag = g.diagonal()
    d2 = diag[:, None] + diag[None, :] - 2.0 * g
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return d2


def distances_from(g: F64, coef: F64) -> F64:
    """Distances from the point ``Σ coef_i p_i`` to every point ``p_j`` of the Gram matrix.

    ``coef`` need not sum to one: the points are taken relative to point 0 (the centre), so
    the missing mass sits on the centre itself.
    """
    gc = g @ coef
    sq = g.diagonal() - 2.0 * gc + float(coef @ gc)
    np.maximum(sq, 0.0, out=sq)
    return np.sqrt(sq)


# --------------------------------------------------------------------------- output


def _sgemv() -> Callable[..., F32]:
    """BLAS ``sgemv`` with a ``beta`` argument (numpy's dot always overwrites its output).

    SciPy's wrapper is imported on first use: ``scipy.linalg`` takes ~0.2 s to import,
    which ``import gossipfl.merge`` should not pay.
    """
    global _SGEMV
    if _SGEMV is None:
        from scipy.linalg.blas import sgemv

        _SGEMV = sgemv
    return _SGEMV


_SGEMV: Callable[..., F32] | None = None
#: Below this many columns the SciPy wrapper's call overhead (~10 µs) outweighs the
#: second pass over the result that numpy's dot plus an add costs.
SGEMV_MIN_COLUMNS = 1 << 16


def combine(center: F32, rows: F32, coef: F64, ws: Workspace, *, validate: bool = False) -> F32:
    """``(1 − Σ coef)·center + coef @ rows`` in float32, reading the stack once.

    This is ``center + Σ_j coef_j (rows_j − center)`` without forming the differences, so
    it cannot overflow when a row is huge. The own term is written first and one BLAS
    ``sgemv`` with ``beta = 1`` adds ``coef @ rows`` to it in place: the same memory
    traffic as a bare ``np.dot(coef, rows)`` plus one read of ``center`` (measured within
    1–5% of it at d = 8, n = 10⁶), where adding the own term afterwards cost 20–30%.

    ``validate`` makes this pass the finiteness check too, for rules with no other pass
    over the inputs (the mean): a NaN or ±inf in a row or in ``center`` makes the result
    non-finite wherever its coefficient is non-zero (IEEE: NaN·c = NaN, ±inf·c = ±inf for
    c ≠ 0, inf − inf = NaN), so the float32 sum of the result (one read of n values, not
    of the d·n inputs) is finite iff they are, or finite values overflowed. Only then does
    the exact element-wise check run and decide: it raises :class:`NonFiniteInputError`
    naming the culprits, and an overflow of finite values is returned as computed. Inputs
    whose float32 coefficient is exactly 0 do not reach the result, so they are checked
    on their own (rare: a zero weight, or an own weight of 0).
    """
    k = rows.shape[0]
    memo = ws.coef_memo
    if memo is not None and memo[0] is coef:
        _, c32, own_coef, none_zero = memo
    else:
        c32 = coef.astype(np.float32)
        own_coef = np.float32(1.0 - float(np.add.reduce(coef)))  # coef.sum(), unwrapped
        # (np.logical_and.reduce: whether every coefficient is non-zero, the usual case,
        # without np.flatnonzero's Python-level work)
        none_zero = bool(np.logical_and.reduce(c32))
        if not coef.flags.writeable and coef.base is None:  # nobody can change it
            ws.coef_memo = (coef, c32, own_coef, none_zero)
    with np.errstate(over="ignore", invalid="ignore"):
        out: F32 = np.multiply(center, own_coef) if own_coef != 0.0 else np.zeros_like(center)
        if k and rows.flags.c_contiguous and center.shape[0] >= SGEMV_MIN_COLUMNS:
            # rows.T is Fortran-ordered: the wrapper passes it to BLAS without a copy.
            res = _sgemv()(1.0, rows.T, c32, beta=1.0, y=out, overwrite_y=1)
            if res is not out:  # pragma: no cover - the wrapper copied after all
                out[...] = res
        elif k:
            out += np.dot(c32, rows)
        finite = not validate or math.isfinite(float(np.add.reduce(out)))
    if validate:
        if not finite:
            raise_if_non_finite(center, rows)  # NaN/inf inputs; else a finite overflow
        unseen = [] if none_zero else [rows[j] for j in np.flatnonzero(c32 == 0.0)]
        if own_coef == 0.0:
            unseen.append(center)
        if unseen and not vectors_finite(unseen, ws):
            raise_if_non_finite(center, rows)
    return out


# --------------------------------------------------------------------------- sorting networks


Comparators = tuple[tuple[int, int], ...]


def batcher_network(m: int) -> Comparators:
    """Batcher's merge-exchange sorting network for ``m`` wires (Knuth, TAOCP 5.2.2, M).

    A comparator ``(i, j)`` with ``i < j`` leaves the smaller value on wire ``i``. The
    network has O(m log² m) comparators and sorts any input (checked exhaustively with
    the 0-1 principle in the tests).
    """
    comps: list[tuple[int, int]] = []
    if m < 2:
        return ()
    t = (m - 1).bit_length()
    p = 1 << (t - 1)
    while p > 0:
        q = 1 << (t - 1)
        r = 0
        dist = p
        while True:
            comps.extend((i, i + dist) for i in range(m - dist) if i & p == r)
            if q == p:
                break
            dist = q - p
            q >>= 1
            r = p
        p >>= 1
    return tuple(comps)


def trimmed_network(m: int, b: int) -> Comparators:
    """The comparators of :func:`batcher_network` needed for the sum of the middle ranks.

    Working backwards from the output, a wire is *dead* (its value is never used: the b
    lowest and b highest ranks), *summed* (only its contribution to the sum of the middle
    ranks matters) or *live*. A comparator between two dead wires or two summed wires
    changes nothing we read (``min + max = a + b``), so it is dropped; any other makes both
    of its inputs live. For m = 9 this keeps 20 of 26 comparators for b = 1.
    """
    dead, summed, live = 0, 1, 2
    state = [summed if b <= k < m - b else dead for k in range(m)]
    kept: list[tuple[int, int]] = []
    for i, j in reversed(batcher_network(m)):
        if state[i] == state[j] != live:
            continue
        kept.append((i, j))
        state[i] = state[j] = live
    kept.reverse()
    return tuple(kept)


#: Known median-selection networks (Paeth; Devillard's ``opt_med``): comparators as
#: (wire that gets the min, wire that gets the max); the median ends on the given wire.
MEDIAN_NETWORKS: dict[int, tuple[Comparators, int]] = {
    3: (((0, 1), (1, 2), (0, 1)), 1),
    5: (((0, 1), (3, 4), (0, 3), (1, 4), (1, 2), (2, 3), (1, 2)), 2),
    7: (
        (
            (0, 5), (0, 3), (1, 6), (2, 4), (0, 1), (3, 5), (2, 6),
            (2, 3), (3, 6), (4, 5), (1, 4), (1, 3), (3, 4),
        ),
        3,
    ),
    9: (
        (
            (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
            (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2),
        ),
        4,
    ),
}  # fmt: skip


def extremes_network(m: int, b: int) -> tuple[Comparators, tuple[int, ...]]:
    """A network that moves the b smallest and b largest of ``m`` values onto wires
    ``0 .. 2b−1`` (the others, in no particular order, stay on the rest).

    Each round is the classic simultaneous min-max tournament over the wires left: pair
    them up, the smaller of each pair plays for the minimum and the larger for the
    maximum, ⌈3k/2⌉ − 2 comparators for k wires. For b = 1 it needs 12 comparators at
    m = 9 where the pruned sorting network keeps 20.
    """
    comps: list[tuple[int, int]] = []
    dead: list[int] = []
    wires = list(range(m))
    for _ in range(b):
        if len(wires) < 2:
            break
        lo, hi = wires[0], wires[1]
        comps.append((lo, hi))
        rest = wires[2:]
        for i in range(0, len(rest) - 1, 2):
            p, q = rest[i], rest[i + 1]
            comps += [(p, q), (lo, p), (q, hi)]
        if len(rest) % 2:
            comps += [(lo, rest[-1]), (rest[-1], hi)]
        dead += [lo, hi]
        wires = rest
    return tuple(comps), tuple(dead)


class NetworkPlan(NamedTuple):
    """A trimmed-mean network compiled to ufunc calls on numbered operands.

    Operands ``0 .. m−1`` are the inputs (0 the own model, j the neighbour j−1), the next
    ``slots`` are scratch rows, and the last ``keep`` receive the middle values (the
    trimmed mean is their average). Each op is ``(ufunc, a, b, out)`` with ``b = −1`` for
    a copy. ``calls`` is the number of ufunc calls per chunk.
    """

    m: int
    keep: int
    slots: int
    ops: tuple[tuple[Any, int, int, int], ...]

    @property
    def calls(self) -> int:
        return len(self.ops)


#: While a plan is compiled: the missing second operand of a copy, and the first
#: middle-value row.
COPY = -(1 << 30)
FINAL = 1 << 20


def _compile(comps: Comparators, m: int, dead: frozenset[int]) -> NetworkPlan:
    """Prune ``comps`` for the sum of the wires not in ``dead`` and allocate operands.

    Working backwards, a wire is dead (never read), summed (only its contribution to the
    sum matters) or live. A comparator between two dead or two summed wires changes
    nothing that is read (``min + max = a + b``) and is dropped; one whose min (or max)
    output is dead computes only the other. Going forwards, each comparator writes its
    outputs into free scratch rows, in place over an input row it consumes when it can,
    and straight into a middle-value row when that output is final.
    """
    dead_s, summed_s, live_s = 0, 1, 2
    state = [dead_s if w in dead else summed_s for w in range(m)]
    kept: list[tuple[int, int, int, int]] = []  # lo, hi, lo's role, hi's role (after)
    for lo, hi in reversed(comps):
        if state[lo] == state[hi] != live_s:
            continue
        kept.append((lo, hi, state[lo], state[hi]))
        state[lo] = state[hi] = live_s
    kept.reverse()
    slots_used = 0
    free: list[int] = []
    # The operand holding each wire: an input (0 .. m−1), a scratch slot (−1, −2, ...,
    # numbered once their count is known) or a middle-value row (FINAL + r).
    loc = list(range(m))
    ops: list[tuple[Any, int, int, int]] = []
    final = 0

    def fresh() -> int:
        nonlocal slots_used
        if free:
            return free.pop()
        slots_used += 1
        return -slots_used

    for lo, hi, lo_role, hi_role in kept:
        a, b = loc[lo], loc[hi]
        consumed = [x for x in (a, b) if x < 0]
        wanted = [
            (f, w, role)
            for f, w, role in ((np.minimum, lo, lo_role), (np.maximum, hi, hi_role))
            if role != dead_s
        ]
        for idx, (f, w, role) in enumerate(wanted):
            if role == summed_s:  # final: straight into a middle-value row
                dest = FINAL + final
                final += 1
            elif idx == len(wanted) - 1 and consumed:
                dest = consumed.pop()  # the last op may overwrite an input it consumes
            else:
                dest = fresh()
            ops.append((f, a, b, dest))
            loc[w] = dest
        free.extend(consumed)
    # Middle values no comparator touched are still inputs: copy them into their rows.
    for w in range(m):
        if w not in dead and 0 <= loc[w] < m:
            ops.append((np.positive, loc[w], COPY, FINAL + final))
            final += 1
    assert final == m - len(dead), (final, m, dead)

    def number(op: int) -> int:
        if op >= FINAL:
            return m + slots_used + (op - FINAL)
        if op < 0:
            return m - op - 1
        return op

    return NetworkPlan(
        m,
        final,
        slots_used,
        tuple((f, number(a), number(b) if b != COPY else -1, number(o)) for f, a, b, o in ops),
    )


@functools.lru_cache(maxsize=64)
def trimmed_plan(m: int, b: int) -> NetworkPlan:
    """The cheapest compiled network for the trimmed mean of ``m`` values dropping ``b``
    at each end: the pruned Batcher network, the min-max tournament, or (for the median
    of m ∈ {3, 5, 7, 9}) a known median network, whichever makes fewest ufunc calls."""
    candidates = [_compile(batcher_network(m), m, frozenset([*range(b), *range(m - b, m)]))]
    comps, dead = extremes_network(m, b)
    if len(dead) == 2 * b:
        candidates.append(_compile(comps, m, frozenset(dead)))
    if m - 2 * b == 1 and m in MEDIAN_NETWORKS:
        net, wire = MEDIAN_NETWORKS[m]
        candidates.append(_compile(net, m, frozenset(range(m)) - {wire}))
    return min(candidates, key=lambda plan: plan.calls)


def trimmed_mean(own: F32, rows: F32, b: int, ws: Workspace) -> F32:
    """Per coordinate: drop the ``b`` largest and ``b`` smallest of ``[own; rows]`` and
    average the rest. ``b = (m−1)//2`` gives the median (mean of the two middle values
    for even m). Requires ``m − 2b ≥ 1``.

    Runs :func:`trimmed_plan`'s ufunc calls chunk by chunk; the first comparators read
    the inputs where they lie (no copy), the rest work on cache-resident rows. The
    finiteness check rides along: each chunk's row sums (one BLAS gemv, which also brings
    the chunk into cache for the network) are finite iff the chunk holds no NaN or inf,
    or a sum of finite values overflowed; only then the exact check decides. Raises
    :class:`NonFiniteInputError` for NaN or inf inputs.
    """
    if _compiled.enabled(own.shape[0]):
        result, bad = _compiled.trimmed_mean(own, rows, b)
        if bad:
            raise_if_non_finite(own, rows)
        out_: F32 = result
        return out_
    m = rows.shape[0] + 1
    n = own.shape[0]
    plan = trimmed_plan(m, b)
    keep = plan.keep
    chunk = min(NETWORK_CHUNK, n)
    work: F32 = ws.get("net", (plan.slots + keep, chunk), np.float32)
    ones = ws.ones(chunk)
    scale = ws.get("net_scale", (keep,), np.float32)
    scale.fill(np.float32(1.0 / keep))
    count = -(-n // chunk)
    sums: F32 = ws.get("net_sums", (count, m), np.float32)
    out = np.empty(n, dtype=np.float32)
    overflowed: list[int] = []
    full = list(work)
    with np.errstate(over="ignore", invalid="ignore"):
        for i, start in enumerate(range(0, n, chunk)):
            stop = min(start + chunk, n)
            width = stop - start
            src = rows[:, start:stop]
            np.dot(src, ones[:width], out=sums[i, 1:])
            sums[i, 0] = np.dot(own[start:stop], ones[:width])
            scratch = full if width == chunk else [row[:width] for row in work]
            o = out[start:stop]
            middle = scratch[plan.slots :]
            if keep == 1:
                middle = [o]
            ref = [own[start:stop], *src, *scratch[: plan.slots], *middle]
            for f, a, b_, dst in plan.ops:
                if b_ < 0:
                    f(ref[a], out=ref[dst])
                else:
                    f(ref[a], ref[b_], out=ref[dst])
            if keep > 1:
                np.dot(scale, work[plan.slots :, :width], out=o)
                if not math.isfinite(float(np.dot(o, ones[:width]))):
                    overflowed.append(i)
        finite = bool(np.isfinite(sums).all())
    if not finite:
        raise_if_non_finite(own, rows)
    for i in overflowed:
        # Rounding pushed an average of huge middle values past float32: redo exactly.
        start, stop = i * chunk, min((i + 1) * chunk, n)
        block = np.vstack([own[None, start:stop], rows[:, start:stop]]).astype(np.float64)
        block.sort(axis=0)
        out[start:stop] = block[b : m - b].mean(axis=0)
    return out
