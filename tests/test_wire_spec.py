"""The worked examples of docs/protocol.md are what the implementation produces."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from gossipfl import wire


def test_heartbeat_example_bytes() -> None:
    framed = wire.frame(wire.encode(wire.Heartbeat(round=7)))
    expected = bytes.fromhex(
        "00000020 0000001a 83 a176 01 a46b696e64 a9686561727462656174 a5726f756e64 07 0000"
        .replace(" ", "")
    )  # fmt: skip
    assert framed == expected


def test_update_example_layout_and_digest() -> None:
    vec = np.array([1.0, -2.0], dtype=np.float32)
    framed = wire.frame(wire.encode(wire.Update(sender="peerA", round=1, vector=vec)))
    assert len(framed) == 148
    assert struct.unpack_from(">II", framed) == (144, 131)
    assert framed[4 + 4 + 131] == 0  # one byte of padding
    assert framed[-8:] == bytes.fromhex("0000803f000000c0")
    digest = "54847fa2028a3457068a78ba8e6a086cccf672def025d7e4cb2761b538edbf3f"
    assert wire.payload_digest(vec.tobytes()).hex() == digest
    assert bytes.fromhex(digest) in framed
    # section 9 states this example and the empty payload's digest
    section_9 = PROTOCOL_MD.read_text().split("## 9. Payload digest")[1].split("## 10.")[0]
    assert f"`{digest}`" in section_9
    assert f"`{wire.payload_digest(b'').hex()}`" in section_9
    assert f"currently `{wire.PROTOCOL_VERSION}`" in PROTOCOL_MD.read_text()


def test_protocol_ids() -> None:
    assert wire.PROTOCOL_GOSSIP == "/gossipfl/gossip/1.0.0"
    assert wire.PROTOCOL_PULL == "/gossipfl/pull/1.0.0"
    assert wire.announce_topic("digits") == "/gossipfl/digits/announce/1.0.0"


def test_announce_is_small_enough_for_pubsub() -> None:
    data = wire.encode(wire.Announce(round=1 << 40, codec="int8", digest=bytes(32)))
    assert len(data) < 100


PROTOCOL_MD = Path(__file__).parent.parent / "docs" / "protocol.md"


@pytest.mark.parametrize("sets", [[], ["training.mode=consensus"]])
def test_the_manifests_of_section_5_1_1_are_what_gossipfl_start_states(sets: list[str]) -> None:
    from gossipfl.daemon.config import DaemonConfig
    from gossipfl.daemon.job import job_manifest

    text = wire.job_text(job_manifest(DaemonConfig().with_overrides(sets)))
    assert f"```\n{text}\n```" in PROTOCOL_MD.read_text()


@pytest.mark.parametrize(
    "sets",
    [
        ["training.mode=consensus"],
        [],
        ["training.backend=torch"],
        ["task.name=digits-mlp"],
        ["task.name=synthetic"],
    ],
)
def test_the_layouts_of_section_8_are_what_gossipfl_start_states(sets: list[str]) -> None:
    from gossipfl.daemon.config import DaemonConfig
    from gossipfl.daemon.workload import build_workload, load_data
    from gossipfl.peer.runtime import as_adapter

    config = DaemonConfig().with_overrides(sets)
    data = None if config.training.mode == "consensus" else load_data(config)
    adapter = as_adapter(build_workload(config, data, shard=0, shards=2).model)
    layout, n = adapter.layout.text, f"{adapter.get_flat().size:,}"
    if config.training.mode == "consensus":  # the table writes D for training.dimension
        assert (layout, n) == ("x float32 [100]\n", "100")
        layout, n = "x float32 [D]\n", "`D`"
    cell = ", ".join(f"`{line}`" for line in layout.splitlines())
    rows = [r for r in PROTOCOL_MD.read_text().splitlines() if f"| {cell} | {n} |" in r]
    assert rows, f"no row of section 8 states {cell} with n = {n}"
