"""The Python peer against docs/conformance/vectors.json, the protocol's byte-exact
contract: it produces exactly these bytes from these fields, reads these fields back, and
refuses the invalid ones with the stated error and refusal code."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gossipfl import wire
from gossipfl.daemon.exchange import decode_view
from gossipfl.daemon.membership import MemberRecord

ROOT = Path(__file__).resolve().parents[1]
VECTORS = json.loads((ROOT / "docs" / "conformance" / "vectors.json").read_text("utf-8"))


def test_the_file_is_what_the_implementation_produces() -> None:
    spec = importlib.util.spec_from_file_location("conformance", ROOT / "docs/hooks/conformance.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build() == VECTORS, "regenerate with docs/hooks/conformance.py"


def read(vector: dict[str, Any]) -> wire.Message:
    limits = wire.Limits(max_frame=vector.get("max_frame", wire.DEFAULT_MAX_FRAME))
    decoder = wire.StreamDecoder(limits=limits)
    messages = []
    for frame in vector["frames"]:
        messages += decoder.feed(bytes.fromhex(frame))
    decoder.eof()
    assert len(messages) == 1
    return messages[0]


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vectors_read_back_to_their_fields(vector: dict[str, Any]) -> None:
    message = read(vector)
    fields = vector["fields"]
    kind = vector["kind"]
    if kind == "hello":
        assert isinstance(message, wire.Hello)
        assert message.network_id == fields["network_id"]
        assert message.layout.text == fields["layout_text"]
        assert message.layout.fingerprint.hex() == fields["fingerprint"]
        assert list(message.codecs) == fields["codecs"]
        assert message.name == fields["name"]
        assert dict(message.job) == fields["job"]
    elif kind == "update":
        assert isinstance(message, wire.Update)
        assert (message.sender, message.round, message.codec, message.reply) == (
            fields["sender"], fields["round"], fields["codec"], fields["reply"],
        )  # fmt: skip
        assert dict(message.meta) == fields["meta"]
        tolerance = {"fp32": 0.0, "fp16": 1e-3, "int8": 1 / 127}[fields["codec"]]
        np.testing.assert_allclose(message.vector, fields["vector"], atol=tolerance, rtol=0)
    elif kind == "heartbeat":
        assert message == wire.Heartbeat(round=fields["round"])
    elif kind == "pull":
        assert isinstance(message, wire.PullRequest)
        assert (message.round, message.codec, message.digest) == (4, "fp32", None)
    elif kind == "announce":
        assert isinstance(message, wire.Announce)
        assert message.digest.hex() == fields["digest"]
    elif kind == "refusal":
        assert isinstance(message, wire.Refusal)
        assert int(message.code) == fields["code"]
        assert message.code.name == fields["code_name"]
        assert message.text == fields["text"]
    else:  # pragma: no cover - a vector of a kind this test does not know
        pytest.fail(f"unknown kind {kind}")


def test_every_refusal_code_has_a_vector() -> None:
    codes = {v["fields"]["code"] for v in VECTORS["valid"] if v["kind"] == "refusal"}
    assert codes == {int(code) for code in wire.RefusalCode}


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors_are_refused_with_their_error_and_code(vector: dict[str, Any]) -> None:
    decoder = wire.StreamDecoder()

    def read_to_the_end() -> None:
        decoder.feed(bytes.fromhex(vector["bytes"]))
        decoder.eof()

    with pytest.raises(wire.WireError) as caught:
        read_to_the_end()
    assert type(caught.value).__name__ == vector["error"]
    assert caught.value.refusal_code.name == vector["refusal"]


def test_membership_vector_signs_and_reads_back() -> None:
    members = VECTORS["members"]
    network = members["network_id"]
    decoded = decode_view(bytes.fromhex(members["message"]))
    assert decoded.network == network
    assert decoded.job == members["job"]
    for heard, spec, signed in zip(
        decoded.heard, members["records"], members["signed_bytes"], strict=True
    ):
        record = heard.record
        assert record.peer == spec["peer"]
        assert list(record.addrs) == spec["addrs"]
        assert (record.incarnation, record.heartbeat, record.round, record.left) == (
            spec["incarnation"], spec["heartbeat"], spec["round"], spec["left"],
        )  # fmt: skip
        assert heard.age == pytest.approx(spec["age"])
        assert record.signed_bytes(network).hex() == signed
        assert record.verify(network)
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(spec["key_seed"]))
        assert key.sign(bytes.fromhex(signed)).hex() == spec["signature"]  # deterministic
        forged = MemberRecord(
            peer=record.peer, addrs=record.addrs, incarnation=record.incarnation + 1,
            heartbeat=record.heartbeat, round=record.round, left=record.left,
            signature=record.signature,
        )  # fmt: skip
        assert not forged.verify(network)
