"""The secure-averaging messages on the wire: exact round trips, and every malformed
field refused with a WireError (never another exception)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossipfl import wire
from gossipfl.wire.envelope import PREFIX, WIRE_VERSION

KEY = bytes(range(32))
SIG = bytes(range(64, 128))
peer_ids = st.text(
    alphabet="123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz", min_size=1, max_size=52
)


@given(
    vector=hnp.arrays(np.uint64, st.integers(1, 300)),
    round=st.integers(0, 2**63 - 1),
    epoch=st.integers(0, 2**63 - 1),
    missing=st.lists(peer_ids, max_size=16, unique=True),
)
@settings(max_examples=150, deadline=None)
def test_a_share_round_trips_bit_for_bit(
    vector: np.ndarray, round: int, epoch: int, missing: list[str]
) -> None:
    share = wire.SecureShare(
        sender="12D3KooWsender", round=round, epoch=epoch, vector=vector, missing=tuple(missing)
    )
    back = wire.decode(wire.encode(share), limits=wire.Limits.for_params(vector.size))
    assert isinstance(back, wire.SecureShare)
    assert (back.sender, back.round, back.epoch, back.missing) == (
        share.sender,
        round,
        epoch,
        tuple(missing),
    )
    np.testing.assert_array_equal(back.vector, vector)
    assert back.vector.dtype == np.uint64
    assert not back.vector.flags.writeable


@given(
    members=st.lists(peer_ids, min_size=1, max_size=16, unique=True),
    epoch=st.integers(0, 2**63 - 1),
)
def test_a_group_round_trips(members: list[str], epoch: int) -> None:
    weight = 1.0 / (len(members) + 1)
    group = wire.SecureGroup(
        epoch=epoch, members=tuple(wire.SecureMember(p, KEY, weight, SIG) for p in members)
    )
    assert wire.decode(wire.encode(group)) == group


def test_keys_and_fixes_round_trip() -> None:
    key = wire.SecureKey(key=KEY, signature=SIG)
    assert wire.decode(wire.encode(key)) == key
    fix = wire.SecureFix(round=3, epoch=1, missing=("a", "b"))
    assert wire.decode(wire.encode(fix)) == fix


def message(header: dict[str, object], payload: bytes = b"") -> bytes:
    """A hand-made encoded message (section 3 of docs/protocol.md)."""
    packed = msgpack.packb({"v": WIRE_VERSION, **header}, use_bin_type=True)
    used = PREFIX.size + len(packed)
    return PREFIX.pack(len(packed)) + packed + bytes(-used % 8) + payload


SHARE = {"kind": "secure-share", "sender": "a", "round": 1, "epoch": 0, "n": 2, "missing": []}
GROUP_MEMBER = ["a", KEY, 0.5, SIG]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (message({"kind": "secure-key", "key": KEY[:31], "sig": SIG}), wire.SchemaError),
        (message({"kind": "secure-key", "key": KEY, "sig": SIG[:63]}), wire.SchemaError),
        (message({"kind": "secure-key", "key": KEY}), wire.SchemaError),  # unsigned
        (message({"kind": "secure-key", "key": KEY, "sig": SIG, "extra": 1}), wire.SchemaError),
        (message({"kind": "secure-key", "key": KEY, "sig": SIG}, b"\0" * 8), wire.MalformedError),
        (
            message({"kind": "secure-group", "epoch": 0, "members": [["a", KEY, 0.5]]}),
            wire.SchemaError,  # a member without its signature
        ),
        (
            message({"kind": "secure-group", "epoch": 0, "members": [["a", KEY, 0.5, KEY]]}),
            wire.SchemaError,  # a signature of the wrong size
        ),
        (message({"kind": "secure-group", "epoch": 0, "members": []}), wire.SchemaError),
        (
            message({"kind": "secure-group", "epoch": 0, "members": [GROUP_MEMBER, GROUP_MEMBER]}),
            wire.SchemaError,
        ),
        (
            message({"kind": "secure-group", "epoch": 0, "members": [["a", KEY, 1.5, SIG]]}),
            wire.SchemaError,
        ),
        (
            message({"kind": "secure-group", "epoch": 0, "members": [["a", KEY, 1, SIG]]}),
            wire.SchemaError,  # an int is not a float
        ),
        (
            message(
                {
                    "kind": "secure-group",
                    "epoch": 0,
                    "members": [["a", KEY, 0.6, SIG], ["b", KEY, 0.6, SIG]],
                }
            ),
            wire.SchemaError,  # weights above 1 in total
        ),
        (
            message(
                {
                    "kind": "secure-group",
                    "epoch": 0,
                    "members": [[f"p{i}", KEY, 0.01, SIG] for i in range(17)],
                }
            ),
            wire.MalformedError,  # 17 members: beyond msgpack's container bound
        ),
        (
            message({"kind": "secure-group", "epoch": -1, "members": [GROUP_MEMBER]}),
            wire.SchemaError,
        ),
        (message(SHARE, b"\0" * 8), wire.TruncatedError),
        (message(SHARE, b"\0" * 24), wire.MalformedError),
        (message({**SHARE, "n": 0}), wire.SchemaError),
        (message({**SHARE, "n": 10**9}, b""), wire.TooLargeError),
        (message({**SHARE, "missing": ["a", "a"]}, b"\0" * 16), wire.SchemaError),
        (message({**SHARE, "sender": "a b"}, b"\0" * 16), wire.SchemaError),
        (message({"kind": "secure-fix", "round": 1, "epoch": 0, "missing": []}), wire.SchemaError),
        (message({"kind": "secure-fix", "round": 1, "epoch": 0, "missing": "a"}), wire.SchemaError),
    ],
)
def test_malformed_secure_messages_are_refused(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        wire.decode(data, limits=wire.Limits.for_params(1000))


def test_a_refused_secure_message_carries_a_refusal_code() -> None:
    with pytest.raises(wire.WireError) as caught:
        wire.decode(message({"kind": "secure-key", "key": b"short"}))
    assert caught.value.refusal_code == wire.RefusalCode.MALFORMED
