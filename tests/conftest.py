"""Shared test configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# CI runs on a shared 2-core machine: hypothesis deadlines would flake on timing alone,
# so property tests bound their work by example counts instead.
settings.register_profile(
    "ci", deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"
QuickBenchmark = Callable[..., dict[str, Any]]


def run_quick_benchmark(name: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run ``experiments/benchmarks/NAME.py --quick ARGS`` in a fresh interpreter; it must
    succeed without a traceback on stderr (an error logged and swallowed, say) and print
    exactly one JSON object, which is returned."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert isinstance(report, dict)
    return report


@pytest.fixture
def quick_benchmark() -> QuickBenchmark:
    """:func:`run_quick_benchmark`, for the tests that keep the benchmark scripts working."""
    return run_quick_benchmark


def _numba_installed() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(params=["numpy", "numba"])
def kernel_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once on each merge-kernel path (``GOSSIPFL_KERNELS``); the numba run is
    skipped when the fast extra is not installed."""
    path = str(request.param)
    if path == "numba" and not _numba_installed():
        pytest.skip("numba is not installed (the fast extra)")
    monkeypatch.setenv("GOSSIPFL_KERNELS", path)
    return path
