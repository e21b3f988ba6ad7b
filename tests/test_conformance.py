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


def test_digest_vectors() -> None:
    import blake3_reference

    assert VECTORS["protocol_version"] == wire.PROTOCOL_VERSION == 2
    for vector in VECTORS["payload_digest"]["vectors"]:
        n = vector["length"]
        payload = (bytes(range(251)) * (n // 251 + 1))[:n]
        assert wire.payload_digest(payload).hex() == vector["digest"]
        if n <= 8192:  # the reference is pure Python: slow
            assert blake3_reference.blake3(payload).hex() == vector["digest"]


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


def test_the_secure_averaging_example_recomputes_from_its_keys() -> None:
    """Section 5.8 by hand: pair secrets and masks from the seeded keys, the shares and
    corrections as frames, and the sum they unmask to."""
    from gossipfl.privacy.secagg import MaskKey, pair_mask, unmask

    example = VECTORS["secure_averaging"]
    receiver, round, epoch = example["receiver"], example["round"], example["epoch"]
    keys = {p: MaskKey.from_seed(bytes.fromhex(k["seed"])) for p, k in example["keys"].items()}
    for peer, key in keys.items():
        assert key.public.hex() == example["keys"][peer]["public"]
    for pair, secret in example["pair_secrets"].items():
        a, b = pair.split("|")
        assert keys[a].pair_secret(a, b, keys[b].public).hex() == secret
        assert keys[b].pair_secret(b, a, keys[a].public).hex() == secret  # both sides agree
        mask = pair_mask(bytes.fromhex(secret), receiver, round, 3, epoch=epoch)
        assert [str(int(v)) for v in mask] == example["pair_masks"][pair]
    limits = wire.Limits.for_params(3)
    group = wire.decode(bytes.fromhex(example["frames"]["secure-group"])[4:], limits=limits)
    assert isinstance(group, wire.SecureGroup)
    assert group.epoch == epoch
    assert {m.peer: m.weight for m in group.members} == example["weights"]
    # Each member's key, as the group relays it, is signed by that member's identity.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    for member in group.members:
        stated = example["keys"][member.peer]
        signed = wire.secure_key_bytes(member.peer, member.key)
        assert signed.hex() == stated["signed_bytes"]
        assert member.signature.hex() == stated["signature"]
        identity = Ed25519PublicKey.from_public_bytes(bytes.fromhex(stated["identity_public"]))
        identity.verify(member.signature, signed)  # raises if it is not the member's
    fix = wire.decode(bytes.fromhex(example["frames"]["secure-fix"])[4:], limits=limits)
    assert fix == wire.SecureFix(round=round, epoch=epoch, missing=tuple(example["missing"]))
    shares, fixes = [], []
    for frames, into in ((example["shares"], shares), (example["corrections"], fixes)):
        for peer, frame in frames.items():
            message = wire.decode(bytes.fromhex(frame)[4:], limits=limits)
            assert isinstance(message, wire.SecureShare)
            assert (message.sender, message.round, message.epoch) == (peer, round, epoch)
            into.append(message.vector)
    np.testing.assert_allclose(unmask(shares, fixes), example["sum"], atol=2**-23)


def test_dialback_vector_encodes_and_reads_back() -> None:
    from gossipfl.transport.libp2p.reachability import (
        DIALBACK_PROTOCOL,
        decode_reply,
        decode_request,
        encode_reply,
        encode_request,
    )

    example = VECTORS["dialback"]
    assert example["protocol"] == DIALBACK_PROTOCOL
    request, reply = example["request"], example["reply"]
    assert encode_request(request["ports"]).hex() == request["bytes"]
    assert decode_request(bytes.fromhex(request["bytes"])) == request["ports"]
    assert encode_reply(reply["ip"], reply["reachable"]).hex() == reply["bytes"]
    decoded = decode_reply(bytes.fromhex(reply["bytes"]), len(request["ports"]))
    assert decoded == (reply["ip"], reply["reachable"])
