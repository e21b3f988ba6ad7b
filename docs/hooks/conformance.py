"""Write docs/conformance/vectors.json: byte-exact messages of the gossipfl protocol.

    .venv/bin/python docs/hooks/conformance.py

Each valid vector names a message by its fields and gives the exact frames (4-byte
length prefix included, hex) the reference implementation sends for it; each invalid
vector gives bytes a receiver must refuse, with the error and the refusal code. The
membership vector gives a signed record's signed bytes and the whole message, made with
keys derived from fixed seeds (stated in the file, so anyone can re-sign). Another
implementation passes when it produces the same bytes from the fields and reads the same
fields back; tests/test_conformance.py holds the Python one to the file.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from gossipfl import wire
from gossipfl.model.layout import Layout

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "conformance" / "vectors.json"

LAYOUT = [("bias", "float32", [2]), ("weight", "float32", [2, 3])]
JOB = {  # what `gossipfl start --set training.mode=consensus` states (protocol.md, 5.1.1)
    "rule.name": "cs-plus",
    "topology.name": "exponential",
    "training.codec": "fp32",
    "training.dimension": "100",
    "training.mode": "consensus",
    "training.protocol": "sync",
    "training.rounds": "100",
    "training.seed": "0",
}


#: The receiver's frame limit the chunked vectors are cut for (a real peer's is 16 MiB).
SMALL_FRAME = 256


def _frames(message: wire.Message, chunk_size: int | None = None) -> list[str]:
    """The frames of ``message``; with ``chunk_size``, as sent to a peer whose frame
    limit is :data:`SMALL_FRAME` (so even a small vector travels in chunks)."""
    limit = {"max_frame": SMALL_FRAME} if chunk_size is not None else {}
    return [f.hex() for f in wire.iter_frames(message, chunk_size=chunk_size, **limit)]


def _update(name: str, codec: str, vector: list[float], **extra: Any) -> dict[str, Any]:
    chunk = extra.pop("chunk_size", None)
    message = wire.Update(
        sender="peerA", round=3, vector=np.asarray(vector, np.float32), codec=codec, **extra
    )
    fields: dict[str, Any] = {
        "sender": "peerA",
        "round": 3,
        "codec": codec,
        "vector": vector,
        "reply": extra.get("reply", False),
        "meta": dict(extra.get("meta", {})),
    }
    out = {"name": name, "kind": "update", "fields": fields, "frames": _frames(message, chunk)}
    if chunk is not None:
        out["chunk_size"] = chunk
        out["max_frame"] = SMALL_FRAME
    return out


def valid() -> list[dict[str, Any]]:
    layout = Layout.of(LAYOUT)
    hello = wire.Hello(
        network_id="demo", layout=layout, codecs=("fp32", "int8"), name="peerA", job=JOB
    )
    vectors: list[dict[str, Any]] = [
        {
            "name": "hello",
            "kind": "hello",
            "fields": {
                "network_id": "demo",
                "layout": [list(t) for t in LAYOUT],
                "layout_text": layout.text,
                "fingerprint": layout.fingerprint.hex(),
                "codecs": ["fp32", "int8"],
                "name": "peerA",
                "job": JOB,
            },
            "frames": _frames(hello),
        },
        {
            "name": "heartbeat",
            "kind": "heartbeat",
            "fields": {"round": 7},
            "frames": _frames(wire.Heartbeat(round=7)),
        },
        _update("update-fp32", "fp32", [1.0, -2.0, 0.5, 3.25]),
        _update("update-fp16", "fp16", [1.0, -2.0, 0.5, 3.25], reply=True),
        _update("update-int8", "int8", [float(x) for x in np.linspace(-1, 1, 9)]),
        _update(
            "update-chunked",
            "fp32",
            [float(x) for x in np.arange(40) / 8],
            chunk_size=64,
            meta={"loss": 0.5},
        ),
        {
            "name": "pull",
            "kind": "pull",
            "fields": {"round": 4, "codec": "fp32", "digest": None},
            "frames": _frames(wire.PullRequest(round=4, codec="fp32")),
        },
        {
            "name": "announce",
            "kind": "announce",
            "fields": {"round": 4, "codec": "fp16", "digest": "ab" * 32},
            "frames": _frames(wire.Announce(round=4, codec="fp16", digest=bytes([0xAB]) * 32)),
        },
    ]
    for code in wire.RefusalCode:
        text = f"example {code.name.lower().replace('_', ' ')}"
        vectors.append(
            {
                "name": f"refusal-{code.name.lower().replace('_', '-')}",
                "kind": "refusal",
                "fields": {"code": int(code), "code_name": code.name, "text": text},
                "frames": _frames(wire.Refusal(code=code, text=text)),
            }
        )
    return vectors


def members() -> dict[str, Any]:
    """A membership message of two signed records, keys from fixed seeds."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.ed25519 import Ed25519PrivateKey as Libp2pKey
    from libp2p.peer.id import ID

    from gossipfl.daemon.exchange import encode_view
    from gossipfl.daemon.membership import Heard, MemberRecord

    network = "demo"
    records = []
    signed = []
    heard = []
    # The first record's owner listens (its address ends in its peer ID, as the reference
    # writes it); the second only dials (no addresses) and is leaving.
    for index, (listens, inc, hb, rnd, left, age) in enumerate(
        [(True, 1, 5, 12, False, 0.25), (False, 2, 9, 0, True, 1.5)]
    ):
        seed = hashlib.sha256(f"gossipfl conformance key {index}".encode()).digest()
        peer = str(ID.from_pubkey(Libp2pKey.from_bytes(seed).get_public_key()))
        addrs = [f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}"] if listens else []
        record = MemberRecord(
            peer=peer, addrs=tuple(addrs), incarnation=inc, heartbeat=hb, round=rnd, left=left
        )
        record = record.signed(network, Ed25519PrivateKey.from_private_bytes(seed).sign)
        signed.append(record.signed_bytes(network).hex())
        heard.append(Heard(record, age))
        records.append(
            {
                "key_seed": seed.hex(),
                "peer": peer,
                "addrs": addrs,
                "incarnation": inc,
                "heartbeat": hb,
                "round": rnd,
                "left": left,
                "age": age,
                "signature": record.signature.hex(),
            }
        )
    message = encode_view(network, heard, JOB)
    return {
        "protocol": "/gossipfl/members/2.0.0",
        "network_id": network,
        "job": JOB,
        "records": records,
        "signed_bytes": signed,
        "message": message.hex(),
        "note": "on the wire, each side's message travels in one frame (a u32 big-endian "
        "length, then these msgpack bytes) on a fresh stream: the requester's view, then "
        "the responder's, then the stream is closed",
    }


def dialback() -> dict[str, Any]:
    """A reachability check (section 14): the request and a reply, one frame each."""
    from gossipfl.transport.libp2p.reachability import (
        DIALBACK_PROTOCOL,
        encode_reply,
        encode_request,
    )

    ports, ip, reachable = [4141, 4142], "203.0.113.7", [True, False]
    return {
        "protocol": DIALBACK_PROTOCOL,
        "request": {"ports": ports, "bytes": encode_request(ports).hex()},
        "reply": {"ip": ip, "reachable": reachable, "bytes": encode_reply(ip, reachable).hex()},
        "note": "each message travels in one frame (a u32 big-endian length, then these "
        "msgpack bytes) on a fresh stream: the request, then the reply",
    }


def secure_averaging() -> dict[str, Any]:
    """A worked example of section 5.8: receiver ``peerR`` with members A, B, C (mask
    keys from fixed seeds), one round's shares of A and B, C missing, the fix request,
    A's and B's corrections, and the sum they unmask to; plus each kind's frame."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gossipfl.privacy.secagg import MaskKey, correction, masked_contribution, pair_mask

    receiver, round, epoch = "peerR", 5, 2
    names = ("peerA", "peerB", "peerC")
    seeds = {
        p: hashlib.sha256(f"gossipfl conformance mask key {p}".encode()).digest() for p in names
    }
    keys = {p: MaskKey.from_seed(seeds[p]) for p in names}
    # Each member signs its mask key with its identity (Ed25519, seeds stated below).
    identities = {
        p: Ed25519PrivateKey.from_private_bytes(
            hashlib.sha256(f"gossipfl conformance identity {p}".encode()).digest()
        )
        for p in names
    }
    signed = {p: wire.secure_key_bytes(p, keys[p].public) for p in names}
    signatures = {p: identities[p].sign(signed[p]) for p in names}
    weights = {"peerA": 0.25, "peerB": 0.25, "peerC": 0.25}
    models = {"peerA": [1.0, -2.0, 0.5], "peerB": [0.25, 4.0, -1.5], "peerC": [9.0, 9.0, 9.0]}
    group = wire.SecureGroup(
        epoch=epoch,
        members=tuple(
            wire.SecureMember(p, keys[p].public, weights[p], signatures[p]) for p in names
        ),
    )
    secrets = {
        (a, b): keys[a].pair_secret(a, b, keys[b].public) for a in names for b in names if a != b
    }
    n = 3
    present, missing = ("peerA", "peerB"), ("peerC",)
    shares, corrections = {}, {}
    for p in present:
        mine = {b: secrets[(p, b)] for b in names if b != p}
        vector = masked_contribution(
            np.asarray(models[p], np.float32), weights[p], me=p, receiver=receiver,
            round=round, group=names, secrets=mine, epoch=epoch,
        )  # fmt: skip
        shares[p] = _frames(wire.SecureShare(sender=p, round=round, epoch=epoch, vector=vector))[0]
        fix = correction(
            me=p, receiver=receiver, round=round, group=names, missing=missing,
            secrets=mine, size=n, epoch=epoch,
        )  # fmt: skip
        corrections[p] = _frames(
            wire.SecureShare(sender=p, round=round, epoch=epoch, vector=fix, missing=missing)
        )[0]
    total = sum(weights[p] * np.asarray(models[p], np.float64) for p in present)
    return {
        "section": "5.8",
        "receiver": receiver,
        "round": round,
        "epoch": epoch,
        "keys": {
            p: {
                "seed": seeds[p].hex(),
                "public": keys[p].public.hex(),
                "identity_seed": identities[p].private_bytes_raw().hex(),
                "identity_public": identities[p].public_key().public_bytes_raw().hex(),
                "signed_bytes": signed[p].hex(),
                "signature": signatures[p].hex(),
            }
            for p in names
        },
        "pair_secrets": {f"{a}|{b}": secrets[(a, b)].hex() for a, b in secrets if a < b},
        "pair_masks": {
            f"{a}|{b}": [
                str(int(v)) for v in pair_mask(secrets[(a, b)], receiver, round, n, epoch=epoch)
            ]
            for a, b in secrets
            if a < b
        },
        "models": models,
        "weights": weights,
        "frames": {
            "secure-key": _frames(
                wire.SecureKey(key=keys["peerA"].public, signature=signatures["peerA"])
            )[0],
            "secure-group": _frames(group)[0],
            "secure-fix": _frames(wire.SecureFix(round=round, epoch=epoch, missing=missing))[0],
        },
        "shares": shares,
        "missing": list(missing),
        "corrections": corrections,
        "sum": [float(v) for v in total],
        "note": "the seeds stand in for each peer's fresh X25519 private key "
        "(gossipfl.privacy.secagg.MaskKey.from_seed: BLAKE2b-256 of the seed, person "
        "'gossipfl-x25519k'); the receiver unmasks sum = decode(shares - corrections), "
        "which equals the weighted sum of the present models to 2^-24; each member signs "
        "signed_bytes (section 5.8: domain, owner's name, key) with its Ed25519 identity "
        "(identity_seed stands in for its key file; over libp2p the peer ID names "
        "identity_public, here the names peerA.. stand in for peer IDs)",
    }


def _header_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """A frame from an arbitrary header (for invalid vectors the encoder would refuse)."""
    packed = msgpack.packb(header)
    body = struct.pack(">I", len(packed)) + packed
    body += b"\0" * (-len(body) % 8) + payload  # the payload starts 8-byte aligned
    return struct.pack(">I", len(body)) + body


def _nan_update() -> bytes:
    """An fp32 update whose payload holds a NaN under a correct digest: what an encoder
    never sends, and a decoder must refuse after the digest check passes."""
    from gossipfl.wire.envelope import update_fields, update_header

    fields, _ = update_fields(
        wire.Update(sender="p", round=1, vector=np.ones(2, "f4")), wire.DEFAULT_CODECS
    )
    payload = np.array([1.0, np.nan], "f4").tobytes()
    fields["digest"] = wire.payload_digest(payload)
    body = update_header(fields) + payload
    return struct.pack(">I", len(body)) + body


def invalid() -> list[dict[str, Any]]:
    good = bytes.fromhex(_frames(wire.Heartbeat(round=7))[0])
    update = bytes.fromhex(_frames(wire.Update(sender="p", round=1, vector=np.ones(2, "f4")))[0])
    nan = _nan_update()
    bad_digest = bytearray(update)
    bad_digest[-4:] = struct.pack("<f", 2.0)
    head_and_chunks = _frames(
        wire.Update(sender="p", round=1, vector=np.arange(40, dtype="f4")), chunk_size=64
    )
    cases = [
        ("truncated-frame", good[:-3], "TruncatedError", "MALFORMED"),
        ("frame-over-limit", struct.pack(">I", 0x7FFF_FFFF), "TooLargeError", "TOO_LARGE"),
        (
            "unknown-version",
            _header_frame({"v": 2, "kind": "heartbeat", "round": 1}),
            "UnknownVersionError",
            "VERSION_MISMATCH",
        ),
        (
            "unknown-kind",
            _header_frame({"v": 1, "kind": "gossip", "round": 1}),
            "UnknownKindError",
            "MALFORMED",
        ),
        (
            "missing-field",
            _header_frame({"v": 1, "kind": "heartbeat"}),
            "SchemaError",
            "MALFORMED",
        ),
        ("non-finite-value", nan, "NonFiniteError", "MALFORMED"),
        ("digest-mismatch", bytes(bad_digest), "DigestMismatchError", "MALFORMED"),
        (
            "chunk-without-head",
            bytes.fromhex(head_and_chunks[1]),
            "SequenceError",
            "UNEXPECTED",
        ),
        (
            "message-inside-chunked-update",
            bytes.fromhex(head_and_chunks[0]) + good,
            "SequenceError",
            "UNEXPECTED",
        ),
    ]
    return [
        {"name": name, "bytes": data.hex(), "error": error, "refusal": refusal}
        for name, data, error, refusal in cases
    ]


#: Payload lengths of the digest vectors: around BLAKE3's 1 KiB chunks and its subtrees,
#: and past protocol 1's 1 MiB leaves.
DIGEST_LENGTHS = (0, 1, 8, 1023, 1024, 1025, 2048, 2049, 3072, 4097, 65_537, (1 << 20) + 1)


def pattern(length: int) -> bytes:
    """The payload of a digest vector: byte i is i mod 251 (as in BLAKE3's own vectors)."""
    return (bytes(range(251)) * (length // 251 + 1))[:length]


def digests() -> dict[str, Any]:
    return {
        "definition": "BLAKE3 (hash mode: no key, no context), 32-byte output, of the "
        "payload (docs/protocol.md, section 9; protocol version 2)",
        "payload": "byte i of a payload of `length` bytes is i mod 251",
        "vectors": [
            {"length": n, "digest": wire.payload_digest(pattern(n)).hex()} for n in DIGEST_LENGTHS
        ],
    }


def build() -> dict[str, Any]:
    return {
        "about": "gossipfl protocol conformance vectors; see docs/protocol.md. Frames are "
        "hex, each with its 4-byte big-endian length prefix. Regenerate with "
        "docs/hooks/conformance.py; tests/test_conformance.py checks the Python peer "
        "against this file.",
        "wire_version": wire.WIRE_VERSION,
        "protocol_version": wire.PROTOCOL_VERSION,
        "gossip_protocol": wire.PROTOCOL_GOSSIP,
        "payload_digest": digests(),
        "valid": valid(),
        "members": members(),
        "secure_averaging": secure_averaging(),
        "dialback": dialback(),
        "invalid": invalid(),
    }


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(build(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
