"""The transport benchmark runs (--quick) and prints the JSON docs/benchmarks.md quotes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import QuickBenchmark


@pytest.mark.network
@pytest.mark.timeout(120)
def test_quick_transport_benchmark_prints_one_json_object(
    quick_benchmark: QuickBenchmark,
) -> None:
    report = quick_benchmark("transport", timeout=100)
    assert report["benchmark"] == "transport"
    assert report["baseline"] == "tcp"
    assert report["quick"] is True
    assert {
        "date",
        "command",
        "machine",
        "bytes_per_transfer",
        "frame_bytes",
        "repeats",
        "results",
        "ratio_libp2p_to_tcp",
        "ratio_libp2p_to_tcp_in_place",
        "ratio_libp2p_to_crypto_ceiling_two_cores",
        "ratio_untuned_to_tcp",
        "speedup_over_untuned",
        "target_ratio",
        "meets_target",
        "meets_target_in_place",
        "socket_plus_cipher",
        "params_per_s",
        "crypto",
    } <= set(report)
    assert report["target_ratio"] == 0.6
    assert set(report["results"]) == {"tcp", "tcp_in_place", "libp2p", "libp2p_untuned"}
    for result in report["results"].values():
        assert len(result["seconds"]) == report["repeats"]
        assert 0 < result["mib_per_s_median"] <= result["mib_per_s_best"]
        # Each side's CPU per transfer: both move every byte through a socket.
        assert result["sender_cpu_s_median"] > 0
        assert result["receiver_cpu_s_median"] > 0
    assert report["ratio_libp2p_to_tcp"] > 0
    assert report["meets_target"] == (report["ratio_libp2p_to_tcp"] >= 0.6)
    # TCP in place's CPU per side plus the cipher's time for the bytes, and ours against it.
    estimate = report["socket_plus_cipher"]
    in_place = report["results"]["tcp_in_place"]
    cipher_s = report["bytes_per_transfer"] / (report["crypto"]["encrypt_gib_per_s"] * 2**30)
    assert estimate["sender_cpu_s"] == pytest.approx(
        in_place["sender_cpu_s_median"] + cipher_s, rel=0.05, abs=2e-4
    )
    assert estimate["receiver_cpu_s"] > in_place["receiver_cpu_s_median"]
    assert 0 < estimate["ratio_to_tcp_in_place_by_cpu"] < 1
    libp2p = report["results"]["libp2p"]
    assert estimate["libp2p_cpu_share"]["sender"] == pytest.approx(
        libp2p["sender_cpu_s_median"] / estimate["sender_cpu_s"], rel=0.03
    )
    crypto = report["crypto"]
    assert crypto["encrypt_gib_per_s"] > 0
    assert crypto["decrypt_gib_per_s"] > 0
    assert 0 < crypto["ceiling_mib_per_s_one_core"] <= crypto["ceiling_mib_per_s_two_cores"]
    params = report["params_per_s"]
    assert params["libp2p_int8"] > params["libp2p_fp32"] > 0
