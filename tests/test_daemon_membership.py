"""Membership: the anti-entropy view (pure), its wire format, the topology laid over it,
and the exchange between real libp2p hosts in one process.

Every record is signed by its owner, so the peers here are real Ed25519 identities; the
names in the tests ("me", "a", "liar") stand for their peer IDs."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from gossipfl.daemon.exchange import (
    BAD_MESSAGE,
    BAD_RECORD,
    IMPLAUSIBLE_RECORD,
    MEMBERS_PROTOCOL,
    MembershipExchange,
    MembershipFormatError,
    decode_view,
    encode_view,
)
from gossipfl.daemon.membership import (
    MAX_COUNTER,
    RECORD_DOMAIN,
    Heard,
    MemberRecord,
    MembershipView,
    Merged,
    Plausibility,
)
from gossipfl.daemon.neighbourhoods import TopologyRule, membership_neighbourhood
from gossipfl.errors import ConfigError
from gossipfl.identity import Identity, ed25519_public_key, generate_identity
from gossipfl.transport.base import TransportError

NET = "job"
WALL = 1_800_000_000.0
"""The wall clock the pure tests inject (seconds since the epoch)."""
NAMES = ["me", "a", "b", "new", "dead", "stranger", "liar", *(f"p{i}" for i in range(6))]
IDENTITIES: dict[str, Identity] = {name: generate_identity() for name in NAMES}
ID = {name: ident.peer_id for name, ident in IDENTITIES.items()}
SIGNERS = {ident.peer_id: ident.signer() for ident in IDENTITIES.values()}
PEERS = [ID[f"p{i}"] for i in range(6)]


def record(
    name: str,
    inc: int = 1,
    hb: int = 0,
    *,
    left: bool = False,
    round: int = 0,
    signer: str | None = None,
) -> MemberRecord:
    """A record of ``name``, signed by ``signer`` (by default its owner)."""
    rec = MemberRecord(ID[name], ("/ip4/10.0.0.1/tcp/4001",), inc, hb, round, left)
    return rec.signed(NET, SIGNERS[ID[signer or name]])


def new_view(name: str = "me", inc: int = 1, hb: int = 0, **options: object) -> MembershipView:
    options.setdefault("timeout", 5.0)
    options.setdefault("interval", 1.0)
    return MembershipView(
        record(name, inc, hb),
        network_id=NET,
        sign=SIGNERS[ID[name]],
        **options,  # type: ignore[arg-type]
    )


def merge(
    view: MembershipView,
    heard: Iterable[Heard | MemberRecord],
    now: float,
    *,
    sender: str | None = None,
    wall: float = WALL,
) -> Merged:
    items = [h if isinstance(h, Heard) else Heard(h) for h in heard]
    return view.merge(items, now, wall=wall, sender=ID.get(sender or "", sender))


def snapshot(view: MembershipView, now: float) -> tuple[object, ...]:
    return (
        [view.record(p) for p in view.known()],
        view.live(now),
        view.own,
        [(h.record, h.age) for h in view.shareable(now)],
    )


def test_a_member_is_alive_while_its_record_advances() -> None:
    view = new_view()
    assert merge(view, [record("a", 1, 1)], now=0.0).advanced == {ID["a"]}
    assert view.live(1.0) == sorted([ID["a"], ID["me"]])
    # The same version again is no news: liveness still dates from t=0.
    assert merge(view, [record("a", 1, 1)], now=4.0).advanced == set()
    assert view.live(5.5) == [ID["me"]]
    # A newer heartbeat revives it; an older one is ignored.
    assert merge(view, [record("a", 1, 2), record("a", 1, 0)], now=6.0).advanced == {ID["a"]}
    assert view.live(6.0) == sorted([ID["a"], ID["me"]])
    # A leave announcement (signed by the member) removes it at once.
    merge(view, [record("a", 1, 3, left=True)], now=6.5)
    assert view.live(6.5) == [ID["me"]]
    # A restart (larger incarnation) beats any heartbeat of the previous life.
    merge(view, [record("a", 2, 0)], now=7.0)
    assert view.live(7.0) == sorted([ID["a"], ID["me"]])


def test_a_relayed_stale_record_does_not_look_fresh() -> None:
    view = new_view()
    # A third peer last saw "dead" advance 6 s ago: we must not count it as alive.
    merge(view, [Heard(record("dead", 1, 9), age=6.0), Heard(record("new", 1, 1), age=1.0)], 10.0)
    assert view.live(10.0) == sorted([ID["me"], ID["new"]])
    assert view.live(14.5) == [ID["me"]]
    shared = {h.record.peer: h.age for h in view.shareable(12.0)}
    assert shared[ID["me"]] == 0.0
    assert shared[ID["new"]] == pytest.approx(3.0)
    # Every record we share is signed by its owner.
    assert all(h.record.verify(NET) for h in view.shareable(12.0))


def test_admission_and_self_refutation() -> None:
    view = new_view("me", 5, 3, admit=lambda p: p != ID["stranger"])
    merged = merge(view, [record("stranger", 1, 1), record("me", 9, 0)], now=0.0)
    assert view.known() == [ID["me"]]
    # Our previous life (signed by our own key) had a larger incarnation: we jump past it.
    assert merged.refuted
    assert view.own.incarnation == 10
    assert view.own.verify(NET)
    assert view.tick(1.0, round=4).heartbeat == 4
    assert view.own.round == 4
    assert view.own.verify(NET)
    view.prune(100.0)
    assert view.known() == [ID["me"]]


def test_only_our_own_key_makes_us_refute_ourselves() -> None:
    view = new_view("me", 5, 3)
    before = snapshot(view, 0.0)
    merged = merge(view, [record("me", 9, 0, signer="liar")], now=0.0, sender="liar")
    assert not merged.refuted
    assert [(r.kind, r.sender_at_fault) for r in merged.refused] == [(BAD_RECORD, True)]
    assert snapshot(view, 0.0) == before


# ------------------------------------------------------------------- forgeries


def forgeries(real: MemberRecord) -> dict[str, MemberRecord]:
    """Ways a relayer can try to pass off a record of ``real.peer`` it did not get."""
    worst = replace(real, incarnation=MAX_COUNTER, heartbeat=MAX_COUNTER, left=True)
    return {
        "signed by the liar": worst.signed(NET, SIGNERS[ID["liar"]]),
        "unsigned": replace(worst, signature=b""),
        "the owner's old signature": replace(worst, signature=real.signature),
        "one more heartbeat": replace(real, heartbeat=real.heartbeat + 1),
        "left, same version": replace(real, left=True),
        "signed for another network": worst.signed("other", SIGNERS[real.peer]),
        "a signature of 63 bytes": replace(real, heartbeat=9, signature=real.signature[:63]),
    }


@pytest.mark.parametrize("kind", list(forgeries(record("a"))))
def test_a_forged_record_never_changes_the_view(kind: str) -> None:
    view = new_view()
    merge(view, [record("a", 1, 3), record("b", 1, 3)], now=0.0)
    before = snapshot(view, 1.0)
    forged = forgeries(record("a", 1, 3))[kind]
    merged = merge(view, [forged, record("b", 1, 4)], now=1.0, sender="liar")
    assert snapshot(view, 1.0) == before
    # The forger is to blame, and the rest of its message is not read.
    assert [(r.kind, r.peer, r.sender_at_fault) for r in merged.refused] == [
        (BAD_RECORD, ID["a"], True)
    ]
    assert merged.advanced == set()


@given(bit=st.integers(0, 8 * 64 - 1), field=st.sampled_from(["signature", "content"]))
def test_any_flipped_bit_makes_a_record_worthless(bit: int, field: str) -> None:
    real = record("a", 7, 3, round=2)
    if field == "signature":
        sig = bytearray(real.signature)
        sig[bit // 8] ^= 1 << (bit % 8)
        forged = replace(real, signature=bytes(sig))
    else:  # the same bit position in the signed counters
        forged = replace(real, heartbeat=real.heartbeat ^ (1 << (bit % 63)))
    assert not forged.verify(NET)
    view = new_view()
    before = snapshot(view, 0.0)
    assert merge(view, [forged], now=0.0).refused[0].kind == BAD_RECORD
    assert snapshot(view, 0.0) == before


def test_left_is_only_believed_from_the_member_itself() -> None:
    view = new_view()
    merge(view, [record("a", 1, 1)], now=0.0)
    # The attack that was measured: "a" left, with counters no honest record can beat.
    lie = replace(record("a"), incarnation=MAX_COUNTER, heartbeat=MAX_COUNTER, left=True)
    merge(view, [lie.signed(NET, SIGNERS[ID["liar"]])], now=0.5, sender="liar")
    assert ID["a"] in view.live(0.5)
    merge(view, [record("a", 1, 2)], now=1.0)  # and "a" goes on advancing
    assert view.record(ID["a"]) == record("a", 1, 2)
    # Its own announcement, relayed by anyone, is believed at once.
    merge(view, [record("a", 1, 3, left=True)], now=1.5, sender="b")
    assert view.live(1.5) == [ID["me"]]


def test_the_signed_bytes_are_the_documented_ones() -> None:
    rec = MemberRecord(ID["a"], ("/ip4/1.2.3.4/tcp/1",), 5, 6, 7, True)
    peer = ID["a"].encode()
    addr = b"/ip4/1.2.3.4/tcp/1"
    assert rec.signed_bytes("job") == (
        b"gossipfl/member-record/v2\x00"
        + b"\x00\x03job"
        + len(peer).to_bytes(2, "big")
        + peer
        + b"\x00\x01"
        + len(addr).to_bytes(2, "big")
        + addr
        + (5).to_bytes(8, "big")
        + (6).to_bytes(8, "big")
        + (7).to_bytes(8, "big")
        + b"\x01"
    )
    assert rec.signed_bytes("job").startswith(RECORD_DOMAIN)
    # Anyone can check the signature from the peer ID alone (here with py-libp2p's own key).
    signed = rec.signed("job", SIGNERS[ID["a"]])
    key = IDENTITIES["a"].key_pair.public_key
    assert key.verify(signed.signed_bytes("job"), signed.signature)
    assert ed25519_public_key(ID["a"]) == key.to_bytes()
    assert ed25519_public_key("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N") is None


def test_the_example_of_the_protocol_docs() -> None:
    """docs/protocol.md, section 13.3: the same bytes, the same signature."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    key_pair = create_new_key_pair(bytes(range(32)))
    ident = Identity(key_pair, "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB")
    assert Identity.from_private_key_bytes(ident.private_key_bytes()).peer_id == ident.peer_id
    rec = MemberRecord(ident.peer_id, ("/ip4/10.0.0.1/tcp/4141",), 1767225600000, 42, 7)
    signed = rec.signed("gossipfl", ident.signer())
    docs = (
        "676f73736970666c2f6d656d6265722d7265636f72642f763200 0008 676f73736970666c "
        "0034 313244334b6f6f574134586f70314a6154334d487877594d6b436570597376346950566f704d"
        "5877437a35694859644266655342 "
        "0001 0016 2f6970342f31302e302e302e312f7463702f34313431 "
        "0000019b76daa800 000000000000002a 0000000000000007 00"
    )
    assert rec.signed_bytes("gossipfl") == bytes.fromhex(docs.replace(" ", ""))
    assert signed.signature.hex() == (
        "078fb6105ffb9cb13768765eeb7644d5197c7796140be5a90b5fbea5a715b722"
        "23a71ff003e51d9ac72d68866a81ab7ac6ade17dead3a4b497ddb8b952e48307"
    )
    assert signed.verify("gossipfl")
    assert not signed.verify("another-job")


def test_a_view_refuses_a_key_that_is_not_its_own() -> None:
    with pytest.raises(ValueError, match="not its key"):
        MembershipView(
            record("me"), network_id=NET, sign=SIGNERS[ID["a"]], timeout=5.0, interval=1.0
        )


# ------------------------------------------------------------------ plausibility


@pytest.mark.parametrize(
    "claim",
    [
        {"incarnation": MAX_COUNTER},
        {"heartbeat": MAX_COUNTER},
        {"incarnation": MAX_COUNTER, "heartbeat": MAX_COUNTER, "left": True},
        {"incarnation": int((WALL + 601) * 1000)},  # 11 minutes in the future
    ],
)
@pytest.mark.parametrize("sender", ["a", "b"])
def test_impossible_counters_are_refused_even_when_signed_by_their_owner(
    claim: dict[str, object], sender: str
) -> None:
    view = new_view()
    merge(view, [record("a", 1, 1)], now=0.0)
    before = snapshot(view, 1.0)
    lie = replace(record("a", 1, 1), **claim).signed(NET, SIGNERS[ID["a"]])  # type: ignore[arg-type]
    merged = merge(view, [lie], now=1.0, sender=sender)
    assert snapshot(view, 1.0) == before
    # The owner is to blame when it says so itself; a relayer may have had another clock.
    assert [(r.kind, r.sender_at_fault) for r in merged.refused] == [
        (IMPLAUSIBLE_RECORD, sender == "a")
    ]


def test_a_clock_within_the_skew_is_fine() -> None:
    view = new_view(bounds=Plausibility(max_skew=60.0))
    ahead = record("a", int((WALL + 59) * 1000), 0)
    assert merge(view, [ahead], now=0.0).advanced == {ID["a"]}
    assert merge(view, [record("b", int((WALL + 61) * 1000), 0)], now=0.0).refused


def test_a_heartbeat_may_not_run_ahead_of_the_pace_its_owner_set() -> None:
    inc = int((WALL - 3600) * 1000)  # started an hour ago: up to ~16,800 heartbeats
    view = new_view(interval=1.0)  # 4 heartbeats per second at most, 16 of burst
    assert merge(view, [record("a", inc, 100)], now=0.0, sender="a").advanced
    ok = merge(view, [record("a", inc, 100 + 16 + 4 * 2)], now=2.0, sender="b")
    assert ok.advanced == {ID["a"]}
    too_fast = merge(view, [record("a", inc, 100 + 16 + 4 * 3 + 1)], now=3.0, sender="a")
    assert [(r.kind, r.sender_at_fault) for r in too_fast.refused] == [(IMPLAUSIBLE_RECORD, True)]
    assert view.record(ID["a"]).heartbeat == 124  # type: ignore[union-attr]
    # Time passes: the same heartbeat becomes plausible.
    assert merge(view, [record("a", inc, 129)], now=4.0, sender="a").advanced
    # An honest peer with half our interval is well within the bound, for ever.
    for t in range(5, 100):
        assert merge(view, [record("a", inc, 129 + 2 * (t - 4))], float(t), sender="a").advanced


def test_a_pace_survives_our_machine_being_suspended() -> None:
    """The monotonic clock stops while the machine sleeps; the others go on: an hour
    later their heartbeats are an hour ahead, and that is no lie."""
    inc = int((WALL - 60) * 1000)
    view = new_view(interval=1.0)
    merge(view, [record("a", inc, 60)], now=10.0, sender="a", wall=WALL)
    later = merge(view, [record("a", inc, 3660)], now=11.0, sender="a", wall=WALL + 3600)
    assert later.advanced == {ID["a"]}
    lie = merge(view, [record("a", inc, 99_999)], now=12.0, sender="a", wall=WALL + 3601)
    assert [r.kind for r in lie.refused] == [IMPLAUSIBLE_RECORD]


def test_a_stale_first_copy_from_a_relayer_cannot_frame_the_owner() -> None:
    """Only the owner's own record sets its pace: a relayer that hands us an old record
    first would otherwise make the owner's real progress look like a jump."""
    inc = int((WALL - 3600) * 1000)
    view = new_view()
    merge(view, [record("a", inc, 5)], now=0.0, sender="liar")
    merged = merge(view, [record("a", inc, 3000)], now=0.5, sender="a")
    assert merged.advanced == {ID["a"]}
    assert not merged.refused


def test_a_round_may_start_anywhere_but_not_race_ahead() -> None:
    view = new_view(bounds=Plausibility(round_rate=100.0, round_burst=50))
    inc = int((WALL - 60) * 1000)
    merge(view, [record("a", inc, 1, round=0)], now=0.0, sender="a")  # not started yet
    # A restarted member resumes from its checkpoint at any round.
    assert merge(view, [record("a", inc, 2, round=5000)], now=1.0, sender="a").advanced
    assert merge(view, [record("a", inc, 3, round=5000 + 50 + 100)], now=2.0, sender="a").advanced
    lie = merge(view, [record("a", inc, 4, round=5000 + 50 + 200 + 1)], now=3.0, sender="a")
    assert [r.kind for r in lie.refused] == [IMPLAUSIBLE_RECORD]
    assert "round" in lie.refused[0].detail
    assert view.record(ID["a"]).round == 5150  # type: ignore[union-attr]
    # A restart is a new life: its round is free again.
    assert merge(view, [record("a", inc + 1, 0, round=9000)], now=3.5, sender="a").advanced


def test_a_restarted_member_with_a_newer_incarnation_is_accepted() -> None:
    view = new_view()
    old = int((WALL - 600) * 1000)
    merge(view, [record("a", old, 500)], now=0.0, sender="a")
    merge(view, [record("a", old, 501, left=True)], now=1.0, sender="a")
    assert ID["a"] not in view.live(1.0)
    back = merge(view, [record("a", int(WALL * 1000), 0)], now=2.0, sender="b")
    assert back.advanced == {ID["a"]}
    assert ID["a"] in view.live(2.0)


def test_a_liar_can_neither_bury_a_live_member_nor_keep_a_dead_one() -> None:
    """The age a relayer reports is its claim: it can delay when we see a member advance,
    never make a live member look dead, nor a dead one alive beyond ``timeout`` after we
    first got its last record."""
    view = new_view(timeout=5.0)
    merge(view, [record("a", 1, 1)], now=0.0, sender="a")
    # The liar is first with a's next heartbeat, and says it is ancient.
    merge(view, [Heard(record("a", 1, 2), age=1e9)], now=1.0, sender="liar")
    assert view.is_alive(ID["a"], 4.9)  # as alive as heartbeat 1 made it
    # An honest copy of the same heartbeat sets it right.
    merge(view, [Heard(record("a", 1, 2), age=0.5)], now=2.0, sender="b")
    assert view.is_alive(ID["a"], 5.9)
    # Then "a" dies; the liar keeps its last record "fresh": no later than when we got it.
    merge(view, [Heard(record("a", 1, 2), age=0.0)], now=5.9, sender="liar")
    assert view.is_alive(ID["a"], 5.9)
    assert not view.is_alive(ID["a"], 6.0)


# -------------------------------------------------------------------- convergence

records = st.builds(
    MemberRecord,
    peer=st.sampled_from(PEERS),
    addrs=st.just(("/ip4/10.0.0.1/tcp/1",)),
    incarnation=st.integers(0, 3),
    heartbeat=st.integers(0, 5),
    round=st.integers(0, 9),
    left=st.booleans(),
).map(lambda r: r.signed(NET, SIGNERS[r.peer]))


@given(st.lists(records, max_size=30), st.randoms())
def test_views_converge_whatever_the_order_of_exchanges(
    heard: list[MemberRecord], rnd: random.Random
) -> None:
    a = new_view("a", timeout=100.0)
    b = new_view("b", timeout=100.0)
    shuffled = list(heard)
    rnd.shuffle(shuffled)
    merge(a, heard, now=1.0)
    merge(b, shuffled, now=1.0)
    # One push-pull between them makes both agree on every record and on who is alive.
    merge(b, a.shareable(2.0), now=2.0, sender="a")
    merge(a, b.shareable(2.0), now=2.0, sender="b")
    for peer in PEERS:
        assert a.record(peer) == b.record(peer)
        if a.record(peer) is not None:
            best = max((r for r in heard if r.peer == peer), key=lambda r: r.version)
            assert a.record(peer).version == best.version  # type: ignore[union-attr]
    assert [p for p in a.live(2.0) if p in PEERS] == [p for p in b.live(2.0) if p in PEERS]


def test_signing_and_verifying_cost_far_less_than_an_interval() -> None:
    """Measured on the shared 2-core machine: a tick (one signature) ~0.035 ms; merging
    100 new records (100 verifications, ~0.1 ms each) ~11 ms, about 1% of the default 1 s
    exchange interval; merging them again (nothing new, nothing verified) ~0.08 ms. The
    bounds asserted here are ~10x looser, for a loaded machine."""
    peers = [generate_identity() for _ in range(100)]
    heard = [
        Heard(MemberRecord(p.peer_id, ("/ip4/10.0.0.1/tcp/4001",), 1, 1).signed(NET, p.signer()))
        for p in peers
    ]
    view = new_view(timeout=10.0)
    start = time.perf_counter()
    for t in range(100):
        view.tick(float(t))
    tick = (time.perf_counter() - start) / 100
    start = time.perf_counter()
    merged = merge(view, heard, now=1.0)
    verify = time.perf_counter() - start
    assert len(merged.advanced) == 100
    start = time.perf_counter()
    merge(view, heard, now=2.0)  # nothing new: nothing to verify
    relay = time.perf_counter() - start
    assert tick < 0.002
    assert verify < 0.1
    assert relay < verify / 5


# --------------------------------------------------------------------- the wire


def test_the_wire_format_round_trips() -> None:
    heard = [Heard(record("a", 3, 4), 1.5), Heard(record("b", 1, 0, left=True), 0.0)]
    network, back, job = decode_view(encode_view("job", heard, {"rule.name": "mean"}))
    assert network == "job"
    assert back == heard
    assert job == {"rule.name": "mean"}
    assert decode_view(encode_view("job", heard)).job == {}  # no job: no key at all
    assert all(h.record.verify(NET) for h in back)
    assert MEMBERS_PROTOCOL == "/gossipfl/members/2.0.0"


def garbage_messages() -> list[bytes]:
    def pack(obj: object) -> bytes:
        data: bytes = msgpack.packb(obj)
        return data

    sig = b"\x01" * 64
    good = ["p", ["/ip4/1.2.3.4/tcp/1"], 1, 1, 0, False, 0.0, sig]
    return [
        b"",
        b"\xc1",
        b"\x00" * 100,
        pack([1, 2, 3]),
        pack({"v": 1, "net": "job", "recs": []}),  # the unsigned version 1
        pack({"v": 1, "net": "job", "recs": [good[:7]]}),
        pack({"v": 2, "net": "", "recs": []}),
        pack({"v": 2, "net": "job", "recs": "x"}),
        pack({"v": 2, "net": "job", "recs": [good[:7]]}),
        pack({"v": 2, "net": "job", "recs": [[*good[:2], -1, *good[3:]]]}),
        pack({"v": 2, "net": "job", "recs": [[*good[:3], 1 << 63, *good[4:]]]}),
        pack({"v": 2, "net": "job", "recs": [[*good[:5], 1, *good[6:]]]}),
        pack({"v": 2, "net": "job", "recs": [[*good[:6], float("nan"), sig]]}),
        pack({"v": 2, "net": "job", "recs": [["p", ["x"] * 17, *good[2:]]]}),
        pack({"v": 2, "net": "job", "recs": [["p" * 300, *good[1:]]]}),
        pack({"v": 2, "net": "job", "recs": [[b"\x00", *good[1:]]]}),
        pack({"v": 2, "net": "job", "recs": [[*good[:7], sig[:63]]]}),
        pack({"v": 2, "net": "job", "recs": [[*good[:7], sig + b"\x00"]]}),
        pack({"v": 2, "net": "job", "recs": [[*good[:7], "x" * 64]]}),
        pack({"v": 2, "net": "job", "recs": [good, good]}),  # two records of one peer
        b"\x00" * (3 << 20),
    ]


@pytest.mark.parametrize("data", garbage_messages())
def test_malformed_messages_are_refused_with_a_reason(data: bytes) -> None:
    with pytest.raises(MembershipFormatError):
        decode_view(data)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_another_error(data: bytes) -> None:
    with contextlib.suppress(MembershipFormatError):
        decode_view(data)


# ------------------------------------------------------------- the exchange alone


class StubTransport:
    """What the exchange needs from a transport, with no network: every request fails."""

    def __init__(self, local_id: str) -> None:
        self.local_id = local_id
        self.addresses: dict[str, set[str]] = {}

    def set_request_handler(
        self, protocol: str, handler: Callable[[str, bytes], Awaitable[bytes | None]], **_: float
    ) -> None:
        pass

    async def request(self, peer: str, protocol: str, payload: bytes, **_: float) -> bytes:
        await trio.sleep(0)
        raise TransportError(f"{peer} is unreachable")

    def add_peer_address(self, peer: str, address: str) -> None:
        self.addresses.setdefault(peer, set()).add(address)


def stub_exchange(
    blamed: list[tuple[str, str, str]] | None = None,
) -> MembershipExchange:
    view = new_view("me")

    def on_violation(peer: str, kind: str, detail: str) -> None:
        if blamed is not None:
            blamed.append((peer, kind, detail))

    return MembershipExchange(
        StubTransport(ID["me"]),
        view,
        network_id=NET,
        interval=1.0,
        on_violation=on_violation,
        wall_clock=lambda: WALL,
    )


async def test_the_exchange_counts_blames_and_logs_violations(
    caplog: pytest.LogCaptureFixture,
) -> None:
    blamed: list[tuple[str, str, str]] = []
    ex = stub_exchange(blamed)
    liar, honest = ID["liar"], ID["b"]
    forged = forgeries(record("a", 1, 3))["signed by the liar"]
    with caplog.at_level(logging.WARNING, logger="gossipfl.daemon.exchange"):
        assert await ex._handle(liar, encode_view(NET, [Heard(record("liar")), Heard(forged)]))
        assert await ex._handle(liar, b"\x00garbage") is None
        # Someone else's implausible record relayed by an honest peer: counted, not blamed.
        lie = replace(record("a"), heartbeat=MAX_COUNTER).signed(NET, SIGNERS[ID["a"]])
        assert await ex._handle(honest, encode_view(NET, [Heard(record("b")), Heard(lie)]))
    assert ex.violations == {BAD_RECORD: 1, BAD_MESSAGE: 1, IMPLAUSIBLE_RECORD: 1}
    assert [(p, k) for p, k, _ in blamed] == [(liar, BAD_RECORD), (liar, BAD_MESSAGE)]
    assert ex.view.live(trio.current_time()) == sorted([ID["me"], liar, honest])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(liar in w and BAD_RECORD in w for w in warnings)
    assert any(honest in w and IMPLAUSIBLE_RECORD in w for w in warnings)
    # A flood is counted in full but logged a few times only.
    for _ in range(50):
        await ex._handle(liar, encode_view(NET, [Heard(forged)]))
    assert ex.violations[BAD_RECORD] == 51
    assert len(blamed) == 52
    logged = [r for r in caplog.records if liar in r.getMessage() and BAD_RECORD in r.getMessage()]
    assert len(logged) <= 5


class LinkedTransport(StubTransport):
    """Requests reach the handler another LinkedTransport registered (no network)."""

    def __init__(self, local_id: str, handlers: dict[str, Any]) -> None:
        super().__init__(local_id)
        self.handlers = handlers

    def set_request_handler(
        self, protocol: str, handler: Callable[[str, bytes], Awaitable[bytes | None]], **_: float
    ) -> None:
        self.handlers[self.local_id] = handler

    async def request(self, peer: str, protocol: str, payload: bytes, **_: float) -> bytes:
        reply = await self.handlers[peer](self.local_id, payload)
        if reply is None:
            raise TransportError(f"{peer} did not answer")
        return bytes(reply)


async def test_a_partner_of_another_job_is_told_why_and_never_merged() -> None:
    handlers: dict[str, Any] = {}
    told: list[tuple[str, str, str, bool]] = []
    exchanges = {}
    for name, rule in (("a", "trimmed-mean"), ("b", "cs-plus"), ("p0", "trimmed-mean")):

        def on_other_job(peer: str, differences: str, asked: bool, me: str = name) -> None:
            told.append((me, peer, differences, asked))

        exchanges[name] = MembershipExchange(
            LinkedTransport(ID[name], handlers),
            new_view(name),
            network_id=NET,
            interval=1.0,
            wall_clock=lambda: WALL,
            job={"rule.name": rule, "training.rounds": "30"},
            on_other_job=on_other_job,
        )
        exchanges[name].install()
    a, b, p0 = exchanges["a"], exchanges["b"], exchanges["p0"]
    assert not await b.exchange(ID["a"])
    difference = "rule.name: it runs 'trimmed-mean', this peer runs 'cs-plus'"
    assert b.other_jobs == {ID["a"]: difference}
    assert a.other_jobs == {ID["b"]: "rule.name: it runs 'cs-plus', this peer runs 'trimmed-mean'"}
    # The asker hears it as the answer to its own request; the asked as a request.
    assert sorted((me, asked) for me, _, _, asked in told) == [("a", False), ("b", True)]
    now = trio.current_time()
    assert a.view.live(now) == [ID["a"]]
    assert b.view.live(now) == [ID["b"]]
    # Peers of the same job merge as always, and what they pass on is only their own job.
    assert await p0.exchange(ID["a"])
    assert sorted(a.view.live(now)) == sorted([ID["a"], ID["p0"]])
    assert ID["b"] not in p0.view.known()


async def test_peers_of_another_job_are_remembered_within_a_bound() -> None:
    from gossipfl.daemon.exchange import MAX_OTHER_JOBS

    ex = MembershipExchange(
        StubTransport(ID["me"]),
        new_view("me"),
        network_id=NET,
        interval=1.0,
        wall_clock=lambda: WALL,
        job={"rule.name": "mean"},
    )
    other = encode_view(NET, [], {"rule.name": "krum"})
    for i in range(MAX_OTHER_JOBS + 40):  # peer IDs cost an attacker nothing
        reply = await ex._handle(f"stranger-{i}", other)
        assert reply is not None
        assert decode_view(reply).job == {"rule.name": "mean"}
    assert len(ex.other_jobs) == MAX_OTHER_JOBS
    assert "stranger-0" not in ex.other_jobs  # the oldest forgotten first
    assert f"stranger-{MAX_OTHER_JOBS + 39}" in ex.other_jobs


async def test_a_heartbeat_per_interval_however_often_candidates_wake_us(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ex = stub_exchange()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ex.run)
        for _ in range(40):  # each new candidate wakes the loop at once
            ex.add_candidate(generate_identity().peer_id)
            await trio.sleep(0.05)
        await trio.sleep(8.0)
        nursery.cancel_scope.cancel()
    assert ex.failures >= 40  # the loop did run for every one of them
    assert ex.view.own.heartbeat <= (trio.current_time() - start) / ex.interval + 1


# ----------------------------------------------------------------- the topology


@pytest.mark.parametrize("name", ["exponential", "ring", "torus", "random-regular", "complete"])
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_every_member_derives_the_same_graph_from_the_same_list(name: str, n: int) -> None:
    members = [generate_identity().peer_id for _ in range(n)]
    rule = TopologyRule(name, {}, seed=3)
    hoods = {p: membership_neighbourhood(rule, p, list(reversed(members)))[0] for p in members}
    for p in members:
        assert p not in hoods[p].receive_from(0)
        for q in hoods[p].receive_from(0):
            assert p in hoods[q].send_to(0)  # what p waits for, q sends
        total = sum(hoods[p].receive_from(0).values())
        assert total < 1.0 or n == 1
    if n == 1:
        assert dict(hoods[members[0]].receive_from(0)) == {}


def test_a_rule_that_cannot_fit_falls_back_or_says_why() -> None:
    rule = TopologyRule("torus", {}, seed=0)
    assert rule.build(7).n == 7  # no 7-torus: the fallback family
    with pytest.raises(ConfigError):
        rule.build(7, fallback=False)
    assert TopologyRule("ring", {}, seed=0, protocol="epidemic").name == "epidemic"


# ----------------------------------------------------------------- over libp2p


def host_view(ident: Identity, addrs: list[str]) -> MembershipView:
    return MembershipView(
        MemberRecord(ident.peer_id, tuple(addrs), time.time_ns() // 1_000_000, 0),
        network_id="job",
        sign=ident.signer(),
        timeout=5.0,
        interval=0.2,
    )


class ForgingExchange(MembershipExchange):
    """The measured attack, as an insider: an honest exchange in every way but one --
    what it sends says that every other member has left, with counters no honest record
    can ever beat (half signed with its own key, half with the owner's old signature)."""

    def __init__(self, *args: Any, sign: Callable[[bytes], bytes], **options: Any) -> None:
        super().__init__(*args, **options)
        self.sign = sign

    def _encode(self) -> bytes:
        heard = []
        for i, h in enumerate(self.view.shareable(trio.current_time())):
            rec = h.record
            if rec.peer != self.view.me:
                lie = replace(rec, incarnation=MAX_COUNTER, heartbeat=MAX_COUNTER, left=True)
                rec = lie.signed(self.network_id, self.sign) if i % 2 else lie
            heard.append(Heard(rec, h.age))
        return encode_view(self.network_id, heard, self.job)


@pytest.mark.network
@pytest.mark.timeout(60)
async def test_three_hosts_find_each_other_beyond_the_bootstrap_peer() -> None:
    from gossipfl.transport.libp2p import Libp2pTransport, TransportConfig
    from gossipfl.transport.libp2p.testing import open_raw_stream, open_stock_host

    identities = [generate_identity() for _ in range(3)]
    ids = [i.peer_id for i in identities]
    changes = [0, 0, 0]
    with trio.fail_after(40):
        async with contextlib.AsyncExitStack() as stack:
            transports = [
                await stack.enter_async_context(
                    Libp2pTransport.open(identity=ident, config=TransportConfig(dial_timeout=5))
                )
                for ident in identities
            ]
            exchanges = []
            for i, t in enumerate(transports):

                def bump(i: int = i) -> None:
                    changes[i] += 1

                ex = MembershipExchange(
                    t,
                    host_view(identities[i], t.listen_addrs),
                    network_id="job",
                    interval=0.2,
                    rng=random.Random(i),
                    on_change=bump,
                )
                ex.install()
                exchanges.append(ex)
            # A chain: 1 knows 0, 2 knows 1. Nobody is told about everyone.
            exchanges[1].add_candidate(ids[0], transports[0].listen_addrs[0])
            exchanges[2].add_candidate(ids[1], transports[1].listen_addrs[0])
            async with trio.open_nursery() as nursery:
                for ex in exchanges:
                    nursery.start_soon(ex.run)
                while not all(ex.view.live(trio.current_time()) == sorted(ids) for ex in exchanges):
                    await trio.sleep(0.05)
                assert all(changes)
                # Honest peers with real clocks never look like liars to each other.
                await trio.sleep(1.0)
                assert not any(ex.violations for ex in exchanges)
                # Garbage on the members protocol, from a stock host on no allowlist
                # (the transports run open): logged and dropped, nobody crashes.
                before = exchanges[0].rejected
                async with open_stock_host() as rogue:
                    stream = await open_raw_stream(
                        rogue, transports[0].listen_addrs[0], MEMBERS_PROTOCOL
                    )
                    await stream.write(b"\x00\x00\x00\x05hello")
                    while exchanges[0].rejected == before:
                        await trio.sleep(0.05)
                assert exchanges[0].violations[BAD_MESSAGE] == 1
                assert all(ex.view.live(trio.current_time()) == sorted(ids) for ex in exchanges)
                # Peer 2 leaves: the others drop it at once, not after the timeout.
                await exchanges[2].leave(timeout=1.0)
                start = trio.current_time()
                while any(ids[2] in ex.view.live(trio.current_time()) for ex in exchanges[:2]):
                    await trio.sleep(0.05)
                assert trio.current_time() - start < 2.0
                nursery.cancel_scope.cancel()
    assert [dict(ex.violations) for ex in exchanges] == [{BAD_MESSAGE: 1}, {}, {}]


@pytest.mark.network
@pytest.mark.timeout(90)
async def test_an_insider_that_forges_leaves_cannot_evict_anyone() -> None:
    from gossipfl.transport.libp2p import Libp2pTransport, TransportConfig

    identities = [generate_identity() for _ in range(4)]
    ids = [i.peer_id for i in identities]
    attacker = ids[3]
    blamed: list[tuple[str, str]] = []

    def on_violation(peer: str, kind: str, detail: str) -> None:
        blamed.append((peer, kind))

    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            transports = [
                await stack.enter_async_context(
                    Libp2pTransport.open(identity=ident, config=TransportConfig(dial_timeout=5))
                )
                for ident in identities
            ]
            exchanges = [
                MembershipExchange(
                    t,
                    host_view(identities[i], t.listen_addrs),
                    network_id="job",
                    interval=0.2,
                    rng=random.Random(i),
                    on_violation=on_violation,
                )
                for i, t in enumerate(transports[:3])
            ]
            exchanges.append(
                ForgingExchange(
                    transports[3],
                    host_view(identities[3], transports[3].listen_addrs),
                    network_id="job",
                    interval=0.2,
                    rng=random.Random(3),
                    on_violation=on_violation,
                    sign=identities[3].signer(),
                )
            )
            for ex in exchanges:
                ex.install()
            honest = exchanges[:3]
            # A chain again, and the attacker joins through peer 0.
            exchanges[1].add_candidate(ids[0], transports[0].listen_addrs[0])
            exchanges[2].add_candidate(ids[1], transports[1].listen_addrs[0])
            exchanges[3].add_candidate(ids[0], transports[0].listen_addrs[0])

            def all_alive() -> bool:
                return all(ex.view.live(trio.current_time()) == sorted(ids) for ex in honest)

            async with trio.open_nursery() as nursery:
                for ex in exchanges:
                    nursery.start_soon(ex.run)
                while not all_alive():
                    await trio.sleep(0.05)
                # Many exchanges later (25 intervals), nobody was ever evicted.
                until = trio.current_time() + 5.0
                while trio.current_time() < until or not all(
                    ex.violations[BAD_RECORD] >= 3 for ex in honest
                ):
                    assert all_alive()
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
    for ex in honest:
        for peer in ids[:3]:
            rec = ex.view.record(peer)
            assert rec is not None
            assert rec.incarnation < MAX_COUNTER
            assert not rec.left
    # Every blame points at the attacker; the honest peers blamed nobody else.
    assert blamed
    assert {peer for peer, _ in blamed} == {attacker}
    assert {kind for _, kind in blamed} == {BAD_RECORD}
