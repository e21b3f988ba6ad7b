"""The Ray grid benchmark runs (--quick) and prints the JSON docs/benchmarks.md quotes."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import QuickBenchmark


@pytest.mark.network
@pytest.mark.timeout(150)
@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed (gossipfl[ray])"
)
def test_quick_ray_grid_benchmark_prints_one_json_object(
    quick_benchmark: QuickBenchmark,
) -> None:
    report = quick_benchmark("ray_grid", timeout=140)
    assert report["benchmark"] == "ray_grid"
    assert report["quick"] is True
    assert report["identical_results"] is True
    assert report["repeats"] == 1
    assert (
        len(report["results"]["local"]["seconds"]) == len(report["results"]["ray"]["seconds"]) == 1
    )
    assert report["results"]["ray"]["nodes"] == 2
    assert report["ratio_ray_to_local"] > 0
