"""The DP-SGD benchmark runs (--quick) and prints the JSON docs/benchmarks.md quotes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import QuickBenchmark


@pytest.mark.timeout(120)
def test_dp_sgd_benchmark_reports_each_learners_cost_against_plain_sgd(
    quick_benchmark: QuickBenchmark,
) -> None:
    report = quick_benchmark("dp_sgd", timeout=110)
    assert report["benchmark"] == "dp_sgd"
    assert [r["task"] for r in report["results"]] == ["digits-softmax", "digits-mlp", "mnist1d"]
    for result in report["results"]:
        assert result["plain_s_per_round"] > 0
        # per-sample gradients cost something, and not orders of magnitude
        assert 1.0 < result["dp_over_plain_ratio"] < 20.0
