"""The daemon benchmark script keeps working (`--quick`: one peer, one repeat)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import QuickBenchmark


pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]


def test_quick_run_prints_one_json_object_with_its_ratios(
    quick_benchmark: QuickBenchmark,
) -> None:
    result = quick_benchmark("daemon", timeout=110)
    assert set(result) == {
        "benchmark", "quick", "peers", "repeats", "load_1min",
        "startup_fresh_s", "startup_forked_s", "startup_speedup",
        "shutdown_command_s", "shutdown_library_teardown_s", "shutdown_ratio",
        "startup_fresh_runs", "startup_forked_runs",
        "shutdown_command_runs", "shutdown_library_runs",
    }  # fmt: skip
    assert result["quick"] is True
    assert result["peers"] == 1
    assert 0 < result["shutdown_command_s"] < 5
    assert result["startup_speedup"] == pytest.approx(
        result["startup_fresh_s"] / result["startup_forked_s"], rel=0.01
    )
