"""The simulation benchmark runs (--quick) and prints the JSON the docs are built from."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import QuickBenchmark


def test_quick_benchmark_prints_one_json_object(quick_benchmark: QuickBenchmark) -> None:
    report = quick_benchmark("simulate")
    assert report["benchmark"] == "simulate"
    assert report["meets_target"] is None  # a quick run claims nothing
    assert report["targets"] == {
        "scale_wall_s_max": 20.0,
        "large_wall_s_max": 600.0,
        "large_rss_gib_max": 4.0,
    }
    for run, peers, rounds, data in (
        ("baseline", 16, 10, "digits"),
        ("scale", 64, 10, "digits"),
        # more peers than digits has samples for would need: a generated data set
        ("large", 200, 5, "synthetic task, 64 features"),
    ):
        row = report[run]
        assert row["case"] == run
        assert row["data"] == data
        assert row["peers"] == peers
        assert row["rounds"] == rounds
        assert row["wall_s"] > 0
        assert row["cpu_s"] > 0
        assert row["peer_rounds_per_s"] > 0
        # a sync round sends one update per directed edge of the 4-regular graph (plus
        # the handshakes), so the frame count pins down that every message really went
        assert row["frames"] >= peers * 4 * rounds
        assert 0.5 < row["honest_mean_acc"] <= 1.0
        assert 0 < row["peak_rss_mib"] < 4096
        assert len(row["load_before"]) == len(row["load_after"]) == 3
    # the scale run again, split over the machine's cores: the same metrics, bit for bit
    sharded = report.get("scale_sharded")
    if sharded is not None:
        assert sharded["same_metrics_as_unsharded"] is True
        assert sharded["shards"] >= 2
        assert sharded["frames"] >= report["scale"]["frames"]
        assert sharded["cross_shard_frames_per_round"] > 0
        assert sharded["windows"] >= 2 * report["scale"]["rounds"]
        assert len(sharded["shard_process_cpu_s"]) == sharded["shards"]
