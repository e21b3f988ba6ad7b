"""The peer runtime over real libp2p hosts: the contract of gossipfl.transport.base holds
for Libp2pTransport as it does for the memory network (handshake first, ordered frames,
Connected before Received), so peers in a ring reach consensus."""

from __future__ import annotations

import contextlib
import gc
import logging

import numpy as np
import pytest
import trio

from gossipfl.identity import Identity, generate_identity
from gossipfl.peer.config import PeerConfig
from gossipfl.peer.runtime import Peer
from gossipfl.protocol.neighbourhood import StaticNeighbourhood, TopologyNeighbourhood
from gossipfl.topology.build import build_topology
from gossipfl.transport.libp2p import Libp2pTransport, TransportConfig

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]


async def open_transports(
    stack: contextlib.AsyncExitStack, identities: list[Identity]
) -> list[Libp2pTransport]:
    """One transport per identity on 127.0.0.1, each allowing all of them."""
    ids = [identity.peer_id for identity in identities]
    return [
        await stack.enter_async_context(
            Libp2pTransport.open(
                identity=identity, allow=ids, config=TransportConfig(dial_timeout=5)
            )
        )
        for identity in identities
    ]


async def test_four_peers_in_a_ring_average_their_vectors_over_libp2p() -> None:
    n, rounds = 4, 30
    identities = [generate_identity() for _ in range(n)]
    ids = [identity.peer_id for identity in identities]
    topology = build_topology("ring", n)
    rng = np.random.default_rng(7)
    models = [{"x": rng.normal(size=5000).astype(np.float32)} for _ in range(n)]
    target = np.mean([m["x"] for m in models], axis=0)
    initial_spread = max(float(np.abs(m["x"] - target).max()) for m in models)
    finals: dict[int, np.ndarray] = {}
    config = PeerConfig(deadline=5.0, heartbeat_interval=0.5, heartbeat_timeout=3.0)
    with trio.fail_after(45):
        async with contextlib.AsyncExitStack() as stack:
            transports = await open_transports(stack, identities)
            for i, transport in enumerate(transports):
                for j in (i - 1) % n, (i + 1) % n:
                    transport.add_peer_address(ids[j], transports[j].listen_addrs[0])

            async def run(i: int) -> None:
                hood = TopologyNeighbourhood(topology, i, ids)
                async with Peer(
                    transport=transports[i], model=models[i], neighbourhood=hood, config=config
                ) as peer:
                    summary = await peer.run(rounds)
                    assert summary.last_round == rounds - 1
                    assert summary.counters.bad_frames == 0
                    assert summary.counters.send_failures == 0
                    finals[i] = peer.vector

            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(run, i)
    assert sorted(finals) == list(range(n))
    # Metropolis-Hastings on a 4-ring: the error shrinks by |lambda_2| = 1/3 per round.
    final_spread = max(float(np.abs(v - target).max()) for v in finals.values())
    assert final_spread < 1e-4 * initial_spread


# py-libp2p leaves one TCP socket unclosed when both sides drop a refused connection while
# a stream opens on it (seen before this fix too, once per redial); tracked in the notes.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_peer_of_another_network_is_not_redialled_every_half_second() -> None:
    """A refused handshake (another network id) would only be refused again: both sides
    hold off about dial_backoff_max before redialling. Measured before: a redial every
    0.5 s, each a Noise handshake."""
    identities = [generate_identity() for _ in range(2)]
    ids = [identity.peer_id for identity in identities]
    dials = [0, 0]
    config = PeerConfig(
        deadline=1.0, heartbeat_interval=0.5, heartbeat_timeout=2.0, dial_backoff_max=4.0
    )
    peers: list[Peer] = []
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            transports = await open_transports(stack, identities)
            for i, transport in enumerate(transports):
                transport.add_peer_address(ids[1 - i], transports[1 - i].listen_addrs[0])
                connect = transport.connect

                async def counting(peer: str, _i: int = i, _connect: object = connect) -> None:
                    dials[_i] += 1
                    await _connect(peer)  # type: ignore[operator]

                transport.connect = counting  # type: ignore[method-assign]

            async def run(i: int) -> None:
                hood = StaticNeighbourhood({ids[1 - i]: 0.5})
                async with Peer(
                    transport=transports[i],
                    model={"x": np.zeros(3, np.float32)},
                    neighbourhood=hood,
                    config=PeerConfig(**{**config.__dict__, "network_id": f"net-{i}"}),
                ) as peer:
                    peers.append(peer)
                    await peer.run(50)  # no neighbour: the rounds pass at once
                    with trio.move_on_after(4):
                        await peer.serve()  # still wanting the neighbour, still dialling

            async with trio.open_nursery() as nursery:
                for i in range(2):
                    nursery.start_soon(run, i)
    gc.collect()  # the leaked socket (see above) is reported here, not after the session
    assert all(p.counters.refused >= 1 for p in peers)
    # ~5 s: the first dial, then one per 2-6 s hold-off (was one per ~0.2 s: 43-45 dials
    # in ~9 s, so ~20 in these 5 s; a redial every 0.5 s would still make ~10)
    assert max(dials) <= 6, dials


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_peer_refused_by_an_allowlist_learns_why_and_holds_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """b has not put a on its allowlist. a dials b: b lets the handshake through only to
    tell a why (one refusal, NOT_ALLOWED), and a logs the reason and holds off its
    redials instead of meeting a broken pipe every backoff."""
    a_id, b_id = generate_identity(), generate_identity()
    config = PeerConfig(deadline=1.0, heartbeat_interval=0.5, dial_backoff_max=4.0)
    caplog.set_level(logging.WARNING, logger="gossipfl.peer.runtime")
    with trio.fail_after(30):
        async with (
            Libp2pTransport.open(
                identity=a_id, allow=[b_id.peer_id], config=TransportConfig(dial_timeout=5)
            ) as a,
            Libp2pTransport.open(
                identity=b_id, allow=[b_id.peer_id], config=TransportConfig(dial_timeout=5)
            ) as b,
        ):
            a.add_peer_address(b.local_id, b.listen_addrs[0])
            async with Peer(
                transport=a,
                model={"x": np.zeros(3, np.float32)},
                neighbourhood=StaticNeighbourhood({b.local_id: 0.5}),
                config=config,
            ) as peer:
                with trio.move_on_after(5.5):  # rounds without b, then still wanting it
                    await peer.run(3)
                    await peer.serve()
            dials = b.refused_peers  # every handshake of a's that reached b
    gc.collect()
    reasons = [r.getMessage() for r in caplog.records if "refused us" in r.getMessage()]
    assert reasons, caplog.text
    assert f"peer {a_id.peer_id} is not on the allowlist of peer {b_id.peer_id}" in reasons[0]
    assert dials >= 1
    # held off 2-6 s after learning why, then dial_backoff_max: 3 in 5.5 s (was 5-6). Counted
    # at b's handshakes: a's connect() calls also include checks with no dial behind them.
    assert dials <= 3, dials
