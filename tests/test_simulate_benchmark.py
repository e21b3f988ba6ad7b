"""The simulation benchmark runs (--quick) and prints the JSON the docs are built from."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import QuickBenchmark


def test_quick_benchmark_prints_one_json_object(quick_benchmark: QuickBenchmark) -> None:
    report = quick_benchmark("simulate")
    assert report["benchmark"] == "simulate"
    assert report["meets_target"] is None  # a quick run claims nothing
    for run, peers in (("baseline_16", 16), ("scale", 64)):
        row = report[run]
        assert row["peers"] == peers
        assert row["rounds"] == 10
        assert row["wall_s"] > 0
        assert row["peer_rounds_per_s"] > 0
        # a sync round sends one update per directed edge of the 4-regular graph (plus
        # the handshakes), so the frame count pins down that every message really went
        assert row["frames"] >= peers * 4 * 10
        assert 0.5 < row["honest_mean_acc"] <= 1.0
    assert 0 < report["peak_rss_mib"] < 4096
    gc = report["gc"]
    assert gc["peers"] == 64
    assert gc["simulation_thresholds_wall_s"] == report["scale"]["wall_s"]
    assert gc["speedup"] == round(
        gc["default_thresholds_wall_s"] / gc["simulation_thresholds_wall_s"], 2
    )
