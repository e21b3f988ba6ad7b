"""The topology benchmark script runs (--quick) and prints the JSON it promises."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import QuickBenchmark


def test_quick_benchmark_prints_one_json_object(quick_benchmark: QuickBenchmark) -> None:
    report = quick_benchmark("topology")
    assert report["benchmark"] == "topology"
    assert report["quick"] is True
    assert {"results", "queries", "summary", "dense_eigen_threshold", "date"} <= set(report)
    row = report["results"][0]
    for key in ("family", "n", "build_s", "gap_sparse_s", "gap_dense_s", "speedup", "gap"):
        assert key in row
    assert report["summary"]["max_gap_abs_diff"] < 1e-9
    assert report["queries"]["us_per_node_round"] > 0
