"""The merge benchmark runs (--quick) and prints the JSON the docs are built from."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gossipfl.merge import RULES

if TYPE_CHECKING:
    from conftest import QuickBenchmark


def test_quick_benchmark_prints_one_json_object_with_every_rule(
    quick_benchmark: QuickBenchmark,
) -> None:
    report = quick_benchmark("merge", timeout=60)
    assert report["benchmark"] == "merge"
    assert report["baseline"] == "mean"
    assert report["quick"] is True
    assert {"date", "command", "machine", "repeats", "grid", "targets", "targets_at"} <= set(report)
    assert {"load_average_before", "load_average_after", "openblas_num_threads"} <= set(
        report["machine"]
    )
    assert report["grid"], "the quick grid must not be empty"
    kernels = report["kernels"]
    paths = kernels["paths"]
    assert kernels["default_path"] == paths[0]
    assert set(paths) <= {"numba", "numpy"}
    assert "numpy" in paths  # the reference path is always timed
    if "numba" in paths:
        for build in kernels["compile"]:
            for run in ("cold", "cached"):
                assert build[run]["first_merge_of_every_rule_seconds"] > 0
                assert build[run]["per_kernel_seconds"]
    for cell in report["grid"]:
        assert {"d", "n", "mean_seconds", "finite_check_seconds", "rules", "iterative"} <= set(cell)
        assert set(cell["rules"]) == set(RULES)
        for timing in cell["rules"].values():
            assert timing["seconds"] > 0
            assert timing["ratio_to_mean"] > 0
            assert timing["path"] == paths[0]
            for path in paths:
                assert timing[f"{path}_ratio_to_mean"] > 0
        assert cell["rules"]["mean"]["ratio_to_mean"] == 1.0
        for name in ("geometric-median", "centered-clipping"):
            it = cell["iterative"][name]
            assert {
                "iterations",
                "total_seconds",
                "total_ratio_to_mean",
                "first_iteration_seconds",
                "per_extra_iteration_seconds",
            } <= set(it)
            assert it["iterations"] >= 1
