"""Secure averaging in the peer runtime: over the memory network (mock clock) and libp2p.

A peer that averages securely must end each round with exactly what plain averaging over
the same present neighbours gives (to fixed-point precision), whoever drops out, and
must never see a neighbour's model in the clear.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from gossipfl import wire
from gossipfl.daemon.testing import Daemon, kill_all, metrics, start_daemon, start_daemons
from gossipfl.errors import ConfigError
from gossipfl.identity import generate_identity
from gossipfl.peer import Peer, PeerConfig, PeerCounters
from gossipfl.peer.secure import MAX_KEY_CHANGES, MAX_REGROUPS, SecureExchange
from gossipfl.privacy.secagg import SecureAggregationError
from gossipfl.privacy.secure_averaging import SecureAveraging, check_secure_averaging
from gossipfl.protocol import StaticNeighbourhood
from gossipfl.transport import MemoryNetwork
from gossipfl.transport.signing import KeyDirectory, identity_signatures

SECURE = PeerConfig(heartbeat_interval=None, threads=False, deadline=1.0, secure_averaging=True)
NAMES = "abcde"
N = 1000
TOL = 1e-6  # fixed point rounds each weighted model to 2^-24


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def models(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(N).astype(np.float32) for name in NAMES}


Hook = Callable[[str, int, np.ndarray], np.ndarray | None]


async def run_complete_graph(
    start: dict[str, np.ndarray],
    *,
    config: PeerConfig = SECURE,
    hooks: dict[str, Hook] | None = None,
    rounds: int = 1,
    names: Sequence[str] = NAMES,
) -> dict[str, Peer]:
    """Every peer of ``names`` linked to every other, each neighbour weighted 1/n."""
    net = MemoryNetwork()
    weight = 1.0 / len(names)
    peers: dict[str, Peer] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        async with contextlib.AsyncExitStack() as stack:
            for name in names:
                hood = StaticNeighbourhood({o: weight for o in names if o != name})
                peers[name] = await stack.enter_async_context(
                    Peer(
                        transport=net.endpoint(name),
                        model={"x": start[name].copy()},
                        neighbourhood=hood,
                        config=config,
                        outgoing=(hooks or {}).get(name),
                    )
                )
            async with trio.open_nursery() as runs:
                for peer in peers.values():
                    runs.start_soon(peer.run, rounds)
        nursery.cancel_scope.cancel()
    return peers


def expected(start: dict[str, np.ndarray], me: str, present: Sequence[str]) -> np.ndarray:
    """Plain averaging over ``present``: each neighbour 1/5, the rest kept by ``me``."""
    w = 1.0 / len(NAMES)
    out = start[me].astype(np.float64) * (1 - w * len(present))
    for peer in present:
        out += w * start[peer]
    return out


async def test_five_peers_average_securely_to_what_plain_averaging_gives(
    clock: trio.testing.MockClock,
) -> None:
    start = models()
    peers = await run_complete_graph(start)
    mean = np.mean(list(start.values()), axis=0)
    for name, peer in peers.items():
        np.testing.assert_allclose(peer.vector, mean, atol=TOL, err_msg=name)
        assert peer.counters.secure_merges == 1
        assert peer.counters.secure_fixes == peer.counters.secure_failed == 0
        assert peer.counters.secure_refused == 0
    # The same run in the clear lands within fixed-point precision of it.
    plain = await run_complete_graph(
        start, config=PeerConfig(heartbeat_interval=None, threads=False, deadline=1.0)
    )
    for name in NAMES:
        np.testing.assert_allclose(peers[name].vector, plain[name].vector, atol=TOL)


@pytest.mark.parametrize("dropped", [("b",), ("b", "c")])
async def test_neighbours_that_miss_the_round_are_corrected_for(
    clock: trio.testing.MockClock, dropped: tuple[str, ...]
) -> None:
    """b (and c) never send their share to a: a asks the others for corrections and
    averages exactly over who was present."""
    start = models(1)

    def silent_to_a(peer: str, round: int, vector: np.ndarray) -> np.ndarray | None:
        return None if peer == "a" else vector

    peers = await run_complete_graph(start, hooks=dict.fromkeys(dropped, silent_to_a))
    present = [p for p in NAMES if p not in dropped and p != "a"]
    np.testing.assert_allclose(peers["a"].vector, expected(start, "a", present), atol=TOL)
    assert peers["a"].counters.secure_fixes == 1
    assert peers["a"].counters.secure_failed == 0
    # Nobody else lost anything.
    for name in NAMES[1:]:
        np.testing.assert_allclose(
            peers[name].vector, expected(start, name, [p for p in NAMES if p != name]), atol=TOL
        )


async def test_a_lone_share_is_never_unmasked_the_receiver_keeps_its_model(
    clock: trio.testing.MockClock,
) -> None:
    """Three of a's four neighbours stay silent: the one share left could only be unmasked
    by corrections that would reveal it, so a keeps its own model."""
    start = models(2)

    def silent_to_a(peer: str, round: int, vector: np.ndarray) -> np.ndarray | None:
        return None if peer == "a" else vector

    peers = await run_complete_graph(start, hooks=dict.fromkeys("bcd", silent_to_a))
    np.testing.assert_array_equal(peers["a"].vector, start["a"])
    assert peers["a"].counters.secure_failed == 1
    assert peers["a"].counters.secure_merges == 0


async def test_training_over_several_rounds_matches_plain_gossip(
    clock: trio.testing.MockClock,
) -> None:
    start = models(3)
    secure = await run_complete_graph(start, rounds=5)
    plain = await run_complete_graph(
        start, rounds=5, config=PeerConfig(heartbeat_interval=None, threads=False, deadline=1.0)
    )
    for name in NAMES:
        np.testing.assert_allclose(secure[name].vector, plain[name].vector, atol=5 * TOL)
        assert secure[name].counters.secure_merges == 5


async def test_a_secure_peer_and_a_plain_peer_merge_nothing_from_each_other(
    clock: trio.testing.MockClock,
) -> None:
    start = models(4)
    net = MemoryNetwork()
    plain = PeerConfig(heartbeat_interval=None, threads=False, deadline=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        async with (
            Peer(
                transport=net.endpoint("a"),
                model={"x": start["a"].copy()},
                neighbourhood=StaticNeighbourhood({"b": 0.5}),
                config=SECURE,
            ) as a,
            Peer(
                transport=net.endpoint("b"),
                model={"x": start["b"].copy()},
                neighbourhood=StaticNeighbourhood({"a": 0.5}),
                config=plain,
            ) as b,
            trio.open_nursery() as runs,
        ):
            runs.start_soon(a.run, 1)
            runs.start_soon(b.run, 1)
        nursery.cancel_scope.cancel()
    np.testing.assert_array_equal(a.vector, start["a"])
    np.testing.assert_array_equal(b.vector, start["b"])
    assert a.counters.secure_refused >= 1  # b's plain model, refused
    assert b.counters.secure_refused >= 1  # a's key, refused


def test_robust_rules_are_refused_with_the_reason() -> None:
    net = MemoryNetwork()
    with pytest.raises(ConfigError, match="must inspect each model"):
        Peer(
            transport=net.endpoint("a"),
            model={"x": np.zeros(3, np.float32)},
            neighbourhood=StaticNeighbourhood({"b": 0.5}),
            rule="cs-plus",
            config=SECURE,
        )
    with pytest.raises(ConfigError, match="sync protocol"):
        PeerConfig(protocol="async", secure_averaging=True).validate()
    with pytest.raises(ConfigError, match="static topology"):
        check_secure_averaging(rule="mean", static=False)
    with pytest.raises(ConfigError, match="node 3 has 1"):
        check_secure_averaging(rule="mean", in_degrees={"node 3": 1})
    with pytest.raises(ConfigError, match="8 bytes per parameter"):
        check_secure_averaging(rule="mean", num_params=3_000_000)


def test_a_share_on_the_wire_is_uniform_whatever_the_model() -> None:
    """The share b sends a for an all-zero model: its 64-bit words look uniform (each
    byte value about equally often), and it differs from the share of another model in
    about half of all bits, as two independent uniform vectors do."""
    keys = KeyDirectory()
    members = {p: SecureAveraging(p, 4096, keys.signatures(p)) for p in "abc"}
    a = members["a"]
    for p in "bc":
        a.learn_key(p, members[p].key_message())
    group = a.regroup({"b": 0.5, "c": 0.5})
    assert group is not None
    for p in "bc":
        members[p].learn_group("a", group)
    zero = members["b"].share("a", 0, np.zeros(4096, np.float32))
    ones = members["b"].share("a", 1, np.ones(4096, np.float32))
    assert zero is not None
    assert ones is not None
    counts = np.bincount(zero.vector.view(np.uint8), minlength=256)
    chi2 = float((((counts - counts.mean()) ** 2) / counts.mean()).sum())
    assert chi2 < 400  # 255 degrees of freedom: p < 1e-8 beyond ~390
    differing = np.unpackbits((zero.vector ^ ones.vector).view(np.uint8)).mean()
    assert 0.49 < differing < 0.51
    # What the wire carries is exactly that vector.
    decoded = wire.decode(wire.encode(zero), limits=wire.Limits.for_params(4096))
    assert isinstance(decoded, wire.SecureShare)
    np.testing.assert_array_equal(decoded.vector, zero.vector)


@pytest.mark.network
@pytest.mark.timeout(60)
async def test_three_peers_average_securely_over_libp2p() -> None:
    from gossipfl.transport.libp2p import Libp2pTransport, TransportConfig

    identities = [generate_identity() for _ in range(3)]
    ids = [identity.peer_id for identity in identities]
    rng = np.random.default_rng(5)
    start = [rng.standard_normal(N).astype(np.float32) for _ in range(3)]
    config = PeerConfig(deadline=5.0, heartbeat_interval=0.5, secure_averaging=True)
    finals: dict[int, np.ndarray] = {}
    counters = {}
    with trio.fail_after(45):
        async with contextlib.AsyncExitStack() as stack:
            transports = [
                await stack.enter_async_context(
                    Libp2pTransport.open(
                        identity=identity, allow=ids, config=TransportConfig(dial_timeout=5)
                    )
                )
                for identity in identities
            ]
            for i, transport in enumerate(transports):
                for j in range(3):
                    if j != i:
                        transport.add_peer_address(ids[j], transports[j].listen_addrs[0])

            async def run(i: int) -> None:
                hood = StaticNeighbourhood({ids[j]: 1 / 3 for j in range(3) if j != i})
                async with Peer(
                    transport=transports[i], model={"x": start[i]}, neighbourhood=hood,
                    config=config,
                ) as peer:  # fmt: skip
                    await peer.wait_for_neighbours(20)
                    await peer.run(2)
                    finals[i] = peer.vector
                    counters[i] = peer.counters

            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(run, i)
    mean = np.mean(start, axis=0)
    for i in range(3):
        np.testing.assert_allclose(finals[i], mean, atol=4 * TOL)
        assert counters[i].secure_merges == 2
        assert counters[i].bad_frames == 0


@pytest.mark.network
@pytest.mark.timeout(120)
def test_three_gossipfl_start_peers_train_with_secure_averaging(tmp_path: Path) -> None:
    """`gossipfl start --secure-averaging`: the job carries it (the join command says
    so), three peers on 127.0.0.1 train every round from masked shares, and nothing
    they send each other is refused."""
    rounds = 8
    common = (
        "--listen", "/ip4/127.0.0.1/tcp/0", "--rule", "mean", "--rounds", str(rounds),
        "--set", "output.eval_every=4", "--set", "training.deadline=3.0",
        "--set", "topology.min_peers=3", "--secure-averaging",
    )  # fmt: skip
    daemons: list[Daemon | None] = []
    try:
        first = start_daemon(tmp_path / "a", *common)
        daemons.append(first)
        assert "--set privacy.secure_averaging=true" in first.join
        daemons += start_daemons(
            *[(tmp_path / n, [*first.join.split()[2:], *common]) for n in "bc"]
        )
        for daemon in daemons:
            assert daemon is not None
            assert daemon.process.wait(timeout=90) == 0, daemon.stderr()
        for daemon in daemons:
            assert daemon is not None
            stop = next(r for r in metrics(daemon.home) if r["kind"] == "stop")
            counters = stop["counters"]
            assert counters["secure_merges"] >= rounds - 2, counters
            assert counters["secure_refused"] == counters["bad_frames"] == 0, counters
            done = [r for r in metrics(daemon.home) if r["kind"] == "round"]
            assert len(done) == rounds
            assert done[-1]["accuracy"] > 0.5  # digits: they learned, from sums alone
    finally:
        kill_all(daemons)


KEYS = KeyDirectory()


def exchange(me: str, size: int = 64) -> tuple[SecureExchange, list[tuple[str, bytes]]]:
    """A runtime-side exchange whose sends are recorded, not delivered."""
    sent: list[tuple[str, bytes]] = []

    def send(peer: str, frames: tuple[bytes, ...]) -> None:
        sent.extend((peer, frame) for frame in frames)

    exchange = SecureExchange(
        me, size, signatures=KEYS.signatures(me), send=send, counters=PeerCounters(), name=me
    )
    return exchange, sent


def test_an_insider_cannot_make_a_peer_remask_without_end() -> None:
    """A neighbour sending group after group (each would make us mask our recent models
    again) or key after key gets a bounded amount of work per round, then refusals."""
    ours, sent = exchange("b")
    insider = SecureAveraging("a", 64, KEYS.signatures("a"))
    other = SecureAveraging("c", 64, KEYS.signatures("c"))
    ours.greet("a")
    my_key = wire.decode(sent[0][1])
    assert isinstance(my_key, wire.SecureKey)
    ours.share("a", 0, np.ones(64, np.float32))  # no group yet: kept for later
    theirs = other.key_message()
    for epoch in range(40):
        group = wire.SecureGroup(
            epoch=epoch,
            members=(
                wire.SecureMember("b", my_key.key, 0.25, my_key.signature),
                wire.SecureMember("c", theirs.key, 0.25, theirs.signature),
            ),
        )
        ours.on_control("a", group, {})
    shares = [m for _, f in sent if isinstance(m := wire.decode(f), wire.SecureShare)]
    assert len(shares) == MAX_REGROUPS  # one re-share per accepted group, then no more
    refused = ours._counters.secure_refused
    assert refused == 40 - MAX_REGROUPS
    ours.round = 1  # a new round: a legitimate change of group is accepted again
    ours.on_control("a", wire.SecureGroup(epoch=100, members=group.members), {})
    assert ours._counters.secure_refused == refused
    # Keys: one change per round (a restarted peer), the rest refused.
    for _ in range(5):
        ours.on_control("a", insider.key_message(), {"a": 0.5})
        insider = SecureAveraging("a", 64, KEYS.signatures("a"))
    assert ours._counters.secure_refused == refused + 5 - 1 - MAX_KEY_CHANGES


def signed_group(receiver: SecureAveraging, weights: dict[str, float]) -> wire.SecureGroup:
    group = receiver.regroup(weights)
    assert group is not None
    return group


def test_a_receiver_cannot_swap_a_members_mask_key_for_its_own() -> None:
    """Receiver a relays its members' keys. Were it to give c its own key in place of
    b's, a would hold the secret of c's masks with b and could strip c's share: c checks
    b's signature on the key and refuses the group, and shares nothing for it."""
    keys = KeyDirectory()
    a, b, c = (SecureAveraging(p, 64, keys.signatures(p)) for p in "abc")
    for member in (b, c):
        a.learn_key(member.me, member.key_message())
    honest = signed_group(a, {"b": 0.25, "c": 0.25})
    c.learn_group("a", honest)  # the genuine group is accepted
    swapped = tuple(
        wire.SecureMember(m.peer, a.key_message().key, m.weight, m.signature)
        if m.peer == "b"
        else m
        for m in honest.members
    )
    # With b's signature over the wrong key, with a's own signature over a's key, with
    # a signature b made for another peer's key: all refused.
    forged = [
        swapped,
        tuple(
            wire.SecureMember("b", a.key_message().key, 0.25, a.key_message().signature)
            if m.peer == "b"
            else m
            for m in honest.members
        ),
        tuple(
            wire.SecureMember("b", c.key_message().key, 0.25, b.key_message().signature)
            if m.peer == "b"
            else m
            for m in honest.members
        ),
    ]
    for epoch, members in enumerate(forged, start=1):
        with pytest.raises(SecureAggregationError, match="not signed by b"):
            c.learn_group("a", wire.SecureGroup(epoch=epoch, members=members))
    assert c.share("a", 0, np.ones(64, np.float32)) is not None  # still for the honest group
    assert c._groups["a"] == honest


def test_a_mask_key_its_owner_did_not_sign_is_refused() -> None:
    keys = KeyDirectory()
    a, b, c = (SecureAveraging(p, 64, keys.signatures(p)) for p in "abc")
    # c's genuine signed key, announced by b as b's: the owner is inside what is signed.
    with pytest.raises(SecureAggregationError, match="not signed by b"):
        a.learn_key("b", c.key_message())
    flipped = bytearray(b.key_message().signature)
    flipped[0] ^= 1
    with pytest.raises(SecureAggregationError, match="not signed by b"):
        a.learn_key("b", wire.SecureKey(key=b.key_message().key, signature=bytes(flipped)))
    assert a.key_of("b") is None
    a.learn_key("b", b.key_message())
    assert a.key_of("b") == b.key_message().key


def test_libp2p_identities_sign_mask_keys_checked_against_their_peer_ids() -> None:
    """Over libp2p the peer ID is the key: no directory, and a name that is not an
    Ed25519 peer ID can never vouch for a key."""
    ids = [generate_identity() for _ in range(2)]
    first, second = (identity_signatures(i) for i in ids)
    mine = SecureAveraging(ids[0].peer_id, 64, first)
    theirs = SecureAveraging(ids[1].peer_id, 64, second)
    mine.learn_key(ids[1].peer_id, theirs.key_message())
    assert mine.key_of(ids[1].peer_id) == theirs.key_message().key
    message = wire.secure_key_bytes(ids[1].peer_id, theirs.key_message().key)
    assert message.startswith(wire.SECURE_KEY_DOMAIN)
    assert second.verify(ids[1].peer_id, message, theirs.key_message().signature)
    assert not second.verify(ids[0].peer_id, message, theirs.key_message().signature)
    assert not second.verify("peer-1", message, theirs.key_message().signature)
    with pytest.raises(ValueError, match="cannot sign for"):
        SecureAveraging(ids[0].peer_id, 64, second)


def test_simulated_identities_are_the_seeds_so_shards_and_reruns_agree() -> None:
    first, again, other = KeyDirectory(7), KeyDirectory(7), KeyDirectory(8)
    signed = first.signatures("peer-3").sign(b"a mask key")
    assert again.signatures("peer-9").verify("peer-3", b"a mask key", signed)
    assert not other.signatures("peer-9").verify("peer-3", b"a mask key", signed)
    assert not again.signatures("peer-9").verify("peer-4", b"a mask key", signed)
