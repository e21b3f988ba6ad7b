"""The large-model benchmark keeps working (`--quick`: ResNet-18 at an eighth of its width, 4
rounds): it times a round's parts, a 16-peer simulation and three `gossipfl start`
processes training the example task together on 127.0.0.1."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import QuickBenchmark


pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]


def test_quick_run_times_the_parts_the_simulation_and_the_start_peers(
    quick_benchmark: QuickBenchmark,
) -> None:
    result = quick_benchmark("large_model", "--rounds", "4", "--repeats", "1", timeout=290)
    parts = result["parts"]
    assert parts["parameters"] == 176_402  # width 8
    for name in ("train_step", "encode", "decode", "merge_mean", "merge_cs-plus"):
        assert parts[f"{name}_s"] > 0
        assert parts["in_memcpys"][name] > 0
    simulate = result["simulate"]
    assert simulate["peers"] == 16
    assert isinstance(simulate["s_per_round"], float)
    # Every peer of the exponential graph sends its 0.7 MB model to 4 others a round.
    assert simulate["mb_sent_per_peer_round"] == pytest.approx(4 * parts["megabytes"], rel=0.1)
    for peer in result["start"]["per_peer"]:
        assert peer["rounds"] == 4
        assert peer["received"] == [2, 2, 2, 2]  # both neighbours' models, every round
        # 2 neighbours a round; the last round's sends may land after its row
        assert peer["mb_sent_per_round"] == pytest.approx(2 * parts["megabytes"], rel=0.3)
