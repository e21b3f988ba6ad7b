"""The wire benchmark script runs with --quick and prints the documented JSON keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import QuickBenchmark


def test_wire_benchmark_quick_prints_one_json_object(quick_benchmark: QuickBenchmark) -> None:
    report = quick_benchmark("wire", "--mb", "2")
    assert report["benchmark"] == "wire"
    large = report["large"]
    for key in ("memcpy_gbps", "bytes_copy_gbps", "digest_gbps", "finite_check_gbps", "target"):
        assert key in large
    assert set(large["codecs"]) == {"fp32", "fp16", "int8"}
    for row in large["codecs"].values():
        for op in ("encode", "encode_parts", "seal", "encode_parts_nodigest", "decode",
                   "decode_nodigest", "chunked_send", "chunked_receive"):  # fmt: skip
            assert row[f"{op}_gbps"] > 0
        assert set(row["roundtrip_vs_memcpy"]) == {
            "vectored_with_digest", "vectored_with_digest_one_receiver",
            "vectored_without_digest", "bytes_with_digest", "chunked_with_digest",
        }  # fmt: skip
    target = large["target"]
    assert target["ratio_without_digest"] > target["ratio_with_digest"] > 0
    assert target["ratio_with_digest"] > target["ratio_with_digest_one_receiver"] > 0
    assert target["goal"] == 0.8
    assert set(large["digest_gbps"]) == {
        "blake3", "blake3_and_finite_check_fused", "blake2b_one_stream",
    }  # fmt: skip
    assert isinstance(target["met_with_digest"], bool)
    small = report["small"]
    assert small["params"] == 650
    for codec in ("fp32", "fp16", "int8"):
        assert small[codec]["roundtrip_us"] > 0
    # fp32 is 4 bytes a parameter plus a header of a few dozen bytes.
    assert 2600 < small["fp32"]["wire_bytes"] < 2800
