"""The compiled (numba) merge kernels against the numpy path, which is the reference.

Every rule must give the same result on both paths (within the float32 rounding of
their different summation orders), reject the same non-finite inputs naming the same
culprits, and behave the same at the edges (no neighbour, one neighbour, huge values).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.merge import RULES, MergeContext, MergeRule, NonFiniteInputError, make_rule
from gossipfl.merge import _compiled as compiled
from gossipfl.merge import _kernels as kernels

pytest.importorskip("numba")

ALL_RULES = sorted(RULES)
CTX = MergeContext(round=3, total_rounds=10)


@contextmanager
def kernel_path(path: str) -> Iterator[None]:
    """Force one path for the duration (usable inside hypothesis tests)."""
    old = os.environ.get(compiled.ENV)
    os.environ[compiled.ENV] = path
    try:
        yield
    finally:
        if old is None:
            del os.environ[compiled.ENV]
        else:
            os.environ[compiled.ENV] = old


def rule_for(name: str, p: int) -> MergeRule:
    params = {f.name for f in RULES[name].parameters()}
    return make_rule(name, **{key: p for key in ("b", "f") if key in params})


def on_both(call: Callable[[], Any]) -> tuple[Any, Any]:
    """``call()`` on the numpy path, then on the numba path; exceptions are returned."""
    results = []
    for path in ("numpy", "numba"):
        with kernel_path(path):
            try:
                results.append(call())
            except NonFiniteInputError as exc:
                results.append(exc)
    return results[0], results[1]


@st.composite
def neighbourhoods(
    draw: st.DrawFn, min_d: int = 0, max_d: int = 12
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Own model, d neighbours in general position (one possibly far), mixing weights."""
    d = draw(st.integers(min_d, max_d))
    n = draw(st.sampled_from([1, 2, 7, 33, 1000, kernels.NETWORK_CHUNK + 17]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    offset = draw(st.sampled_from([0.0, 1.0, -50.0]))
    own = (offset + scale * rng.standard_normal(n)).astype(np.float32)
    rows = (offset + scale * rng.standard_normal((d, n))).astype(np.float32)
    if d and draw(st.booleans()):
        rows[0] *= np.float32(draw(st.sampled_from([-5.0, 1e6, 1e30])))  # an attacker
    raw = rng.uniform(0.05, 1.0, d)
    total = draw(st.sampled_from([0.5, 0.9, 1.0]))
    weights = raw / raw.sum() * total * d / (d + 1) if d else raw
    return own, rows, weights


@pytest.mark.parametrize("name", ALL_RULES)
@settings(max_examples=40, deadline=None)
@given(data=neighbourhoods(), p=st.integers(0, 2))
def test_both_paths_merge_alike(
    name: str, data: tuple[np.ndarray, np.ndarray, np.ndarray], p: int
) -> None:
    own, rows, w = data
    a, b = on_both(lambda: rule_for(name, p).merge(own, rows, w, context=CTX))
    assert a.dtype == b.dtype == np.float32
    # Scale: the result's and the honest inputs' (an attacker at 1e30 in row 0 must not
    # loosen the tolerance for the rules that drop it).
    honest = float(np.abs(rows[1:] - own).max()) if rows.shape[0] > 1 else 0.0
    scale = float(np.abs(a).max()) + float(np.abs(own).max()) + honest
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * max(scale, 1e-30))


@pytest.mark.parametrize("name", ALL_RULES)
@settings(max_examples=20, deadline=None)
@given(data=neighbourhoods(min_d=1, max_d=10))
def test_both_paths_aggregate_alike(
    name: str, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    own, rows, _ = data
    rule = rule_for(name, 0)
    if not hasattr(rule, "aggregate") or rows.shape[0] + 1 < rule.requirement().min_models:
        return
    stack = np.vstack([own[None], rows])
    a, b = on_both(lambda: rule_for(name, 0).aggregate(stack))  # type: ignore[attr-defined]
    scale = float(np.abs(stack).max())
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * max(scale, 1e-30))


@st.composite
def poisoned(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = draw(st.integers(0, 10))
    n = draw(st.sampled_from([1, 7, 1000, kernels.NETWORK_CHUNK + 3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e30]))
    own = (scale * rng.standard_normal(n)).astype(np.float32)
    rows = (scale * rng.standard_normal((d, n))).astype(np.float32)
    spots = draw(
        st.lists(st.tuples(st.integers(-1, d - 1), st.integers(0, n - 1)), min_size=1, max_size=4)
    )
    for row, col in spots:
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        if row < 0:
            own[col] = value
        else:
            rows[row, col] = value
    return own, rows, np.full(d, 1.0 / (d + 1))


@pytest.mark.parametrize("name", ALL_RULES)
@settings(max_examples=25, deadline=None)
@given(case=poisoned(), p=st.integers(0, 2))
def test_both_paths_reject_the_same_non_finite_models(
    name: str, case: tuple[np.ndarray, np.ndarray, np.ndarray], p: int
) -> None:
    own, rows, w = case
    a, b = on_both(lambda: rule_for(name, p).merge(own, rows, w, context=CTX))
    assert isinstance(a, NonFiniteInputError)
    assert isinstance(b, NonFiniteInputError)
    assert (a.own, a.neighbours) == (b.own, b.neighbours)


@pytest.mark.parametrize("name", ALL_RULES)
@pytest.mark.parametrize("d", [0, 1])
def test_both_paths_agree_with_no_or_one_neighbour(name: str, d: int) -> None:
    rng = np.random.default_rng(d)
    own = rng.standard_normal(50).astype(np.float32)
    rows = rng.standard_normal((d, 50)).astype(np.float32)
    w = np.full(d, 0.5)
    a, b = on_both(lambda: rule_for(name, 0).merge(own, rows, w, context=CTX))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    if d == 0:
        assert np.array_equal(b, own)


@pytest.mark.parametrize("name", ALL_RULES)
def test_both_paths_agree_on_huge_finite_values(name: str) -> None:
    rng = np.random.default_rng(3)
    own = rng.standard_normal(300).astype(np.float32)
    rows = rng.standard_normal((6, 300)).astype(np.float32)
    rows[1] = np.float32(3e38) * np.sign(rng.standard_normal(300)).astype(np.float32)
    w = np.full(6, 1 / 7)
    a, b = on_both(lambda: rule_for(name, 1).merge(own, rows, w, context=CTX))
    assert np.isfinite(a).all() == np.isfinite(b).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * (1.0 + float(np.abs(a).max())))


@pytest.mark.parametrize("m", [*range(1, 12), 17])
def test_compiled_order_kernels_match_a_sort_with_ties_and_signed_zeros(m: int) -> None:
    # Every (m, b) up to m = 11; beyond, kernels take seconds each to compile, so only
    # d = 16's defaults (b = 1 and the median).
    rng = np.random.default_rng(m)
    n = 1001
    for b in range((m + 1) // 2) if m < 12 else (1, m // 2):
        x = rng.integers(-2, 3, size=(m, n)).astype(np.float32)
        x[x == 0] = rng.choice(np.array([0.0, -0.0], dtype=np.float32), size=int((x == 0).sum()))
        with kernel_path("numba"):
            out = kernels.trimmed_mean(x[0], x[1:], b, kernels.Workspace())
        ref = np.sort(x.astype(np.float64), axis=0)[b : m - b].mean(axis=0)
        np.testing.assert_allclose(out, ref, rtol=1e-7, atol=0)


def test_compiled_gram_is_exact_for_float32_inputs() -> None:
    # Exact differences, exact products (float64), float64 sums: ~1e-16, where the numpy
    # float32 path promises ~1e-6.
    rng = np.random.default_rng(11)
    n = 3 * compiled.GRAM_BLOCK + 5
    base = 1e3 + rng.standard_normal(n)
    own = (base + 1e-3 * rng.standard_normal(n)).astype(np.float32)
    rows = (base + 1e-3 * rng.standard_normal((5, n))).astype(np.float32)
    y = rows.astype(np.float64) - own.astype(np.float64)
    with kernel_path("numba"):
        g, norm = kernels.centred_gram(own, rows, kernels.Workspace(), center_norm=True)
        d2, norm2 = kernels.centred_sq_distances(own, rows, kernels.Workspace(), center_norm=True)
    np.testing.assert_allclose(g[1:, 1:], y @ y.T, rtol=1e-12)
    assert np.array_equal(g, g.T)
    assert np.all(g[0] == 0)
    np.testing.assert_allclose(d2, (y * y).sum(axis=1), rtol=1e-12)
    exact_norm = float(own.astype(np.float64) @ own.astype(np.float64))
    assert norm == pytest.approx(exact_norm, rel=1e-12)
    assert norm2 == pytest.approx(exact_norm, rel=1e-12)


def test_the_mode_variable_picks_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compiled.ENV, "numpy")
    assert compiled.backend() == "numpy"
    monkeypatch.setenv(compiled.ENV, "numba")
    assert compiled.backend() == "numba"
    monkeypatch.delenv(compiled.ENV)
    assert compiled.backend() == "numba"  # auto, with numba installed
    monkeypatch.setenv(compiled.ENV, "fortran")
    with pytest.raises(ValueError, match="GOSSIPFL_KERNELS must be one of"):
        compiled.backend()


def test_auto_leaves_small_models_to_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    # below the size where a compiled merge pays for its first compile, auto stays numpy
    monkeypatch.delenv(compiled.ENV, raising=False)
    small, large = compiled.AUTO_MIN_PARAMS - 1, compiled.AUTO_MIN_PARAMS
    assert not compiled.enabled(small)
    assert compiled.enabled(large)
    assert compiled.enabled()  # size unknown: the mode decides
    monkeypatch.setenv(compiled.ENV, "numba")
    assert compiled.enabled(small)
    # a merge takes the path its size picks: the numpy path's float32 sum keeps its bits
    rng = np.random.default_rng(3)
    own = rng.standard_normal(1000).astype(np.float32)
    rows = rng.standard_normal((6, 1000)).astype(np.float32)
    monkeypatch.delenv(compiled.ENV)
    auto = kernels.trimmed_mean(own, rows, 1, kernels.Workspace())
    monkeypatch.setenv(compiled.ENV, "numpy")
    assert np.array_equal(auto, kernels.trimmed_mean(own, rows, 1, kernels.Workspace()))


def test_without_numba_auto_falls_back_and_numba_mode_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compiled, "_numba", None)
    monkeypatch.setattr(compiled, "_import_error", ImportError("No module named 'numba'"))
    monkeypatch.delenv(compiled.ENV, raising=False)
    assert compiled.backend() == "numpy"
    out = make_rule("median").merge(np.ones(3), np.zeros((2, 3)), [0.3, 0.3])
    np.testing.assert_array_equal(out, np.zeros(3))
    monkeypatch.setenv(compiled.ENV, "numba")
    with pytest.raises(ImportError, match=r"gossipfl\[fast\]"):
        compiled.backend()


def test_kernels_compile_in_memory_when_the_cache_is_not_writable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("GOSSIPFL_KERNEL_CACHE", str(blocker / "kernels"))
    monkeypatch.setenv(compiled.ENV, "numba")
    monkeypatch.setattr(compiled, "_kernels", {})
    assert compiled.cache_dir() is None
    rng = np.random.default_rng(0)
    own = rng.standard_normal(20).astype(np.float32)
    rows = rng.standard_normal((2, 20)).astype(np.float32)
    out = kernels.trimmed_mean(own, rows, 1, kernels.Workspace())
    np.testing.assert_array_equal(out, np.median(np.vstack([own[None], rows]), axis=0))


def test_kernels_are_cached_on_disk_and_reloaded_by_a_new_process(tmp_path: Path) -> None:
    script = (
        "import numpy as np\n"
        "from gossipfl.merge import make_rule\n"
        "from gossipfl.merge import _compiled\n"
        "x = np.random.default_rng(0).standard_normal((5, 100)).astype(np.float32)\n"
        "make_rule('trimmed-mean', b=1).merge(x[0], x[1:], np.full(4, 0.2))\n"
        "make_rule('krum').merge(x[0], x[1:], np.full(4, 0.2))\n"
        "print(_compiled.compile_seconds['gram_k4_full'])\n"
    )
    env = {**os.environ, "GOSSIPFL_KERNEL_CACHE": str(tmp_path), compiled.ENV: "numba"}
    times = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-W", "error", "-c", script],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=True,
        )
        times.append(float(done.stdout))
    sources = sorted(p.name for p in tmp_path.glob("gossipfl_*.py"))
    assert len(sources) == 2
    assert any(tmp_path.glob("__pycache__/*.nbi")), "numba wrote no cache index"
    # The Krum kernel is not the first of its process (that one also pays numba's
    # import): compiling it takes ~0.3 s, loading it from the cache milliseconds.
    assert times[1] < times[0] / 2


def test_importing_the_merge_package_does_not_import_numba() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, gossipfl.merge; print('numba' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "False"


def test_compiled_weiszfeld_runs_the_same_iterations_as_numpy() -> None:
    from gossipfl.merge.geomedian import weiszfeld

    rng = np.random.default_rng(5)
    for trial in range(100):
        d = int(rng.integers(2, 12))
        x = rng.standard_normal((d + 1, 40)).astype(np.float32)
        if trial % 3 == 0:
            x[1] *= np.float32(1e6)  # a far outlier: more iterations
        g, _ = kernels.centred_gram(x[0], x[1:], kernels.Workspace(), precise=True)
        (a, ia), (b, ib) = on_both(lambda g=g: weiszfeld(g, iterations=32, nu=1e-6))
        assert ia == ib
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
