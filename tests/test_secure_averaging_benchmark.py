"""The secure-averaging benchmark runs (--quick) and prints the JSON docs/benchmarks.md
quotes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import QuickBenchmark


@pytest.mark.timeout(120)
def test_secure_averaging_benchmark_reports_its_cost_against_plain_averaging(
    quick_benchmark: QuickBenchmark,
) -> None:
    report = quick_benchmark("secure_averaging", timeout=110)
    assert report["benchmark"] == "secure_averaging"
    (cell,) = report["per_round"]
    assert cell["bytes_per_model_secure"] == 2 * cell["bytes_per_model_fp32"]
    assert cell["share_s"] > 0
    assert cell["unmask_s"] > 0
    sim = report["simulation"]
    assert 1.9 < sim["secure_over_plain_bytes_ratio"] < 2.1  # 8 bytes a parameter, not 4
    assert sim["secure_accuracy"] == pytest.approx(sim["plain_accuracy"], abs=0.01)
