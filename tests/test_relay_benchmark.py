"""The relay benchmark runs (--quick) and prints the JSON docs/benchmarks.md quotes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import QuickBenchmark


@pytest.mark.network
@pytest.mark.timeout(120)
def test_quick_relay_benchmark_prints_one_json_object(quick_benchmark: QuickBenchmark) -> None:
    report = quick_benchmark("relay", timeout=100)
    assert report["benchmark"] == "relay"
    assert report["baseline"] == "direct"
    assert report["quick"] is True
    assert {
        "date",
        "command",
        "machine",
        "bytes_per_transfer",
        "frame_bytes",
        "repeats",
        "results",
        "ratio_relayed_to_direct",
        "ratio_per_round",
        "ratio_per_round_median",
        "relayed_path",
        "relay_cpu_ms_per_mib",
        "cpu_ratio_direct_to_relayed",
    } <= set(report)
    assert set(report["results"]) == {"direct", "relayed"}
    for result in report["results"].values():
        assert len(result["seconds"]) == report["repeats"]
        assert 0 < result["mib_per_s_median"] <= result["mib_per_s_best"]
    direct, relayed = report["results"]["direct"], report["results"]["relayed"]
    assert direct["path"] == {"before": "direct", "after": "direct"}
    assert relayed["path"]["before"] == relayed["path"]["after"] == report["relayed_path"]
    assert report["relayed_path"].startswith("relayed via 12D3KooW")
    assert len(report["ratio_per_round"]) == report["repeats"]
    assert report["ratio_relayed_to_direct"] > 0
