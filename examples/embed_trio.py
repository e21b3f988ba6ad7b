"""Embed gossipfl in a trio program: one process is one peer.

The application (digits_app.py: a torch model, a shard of data, an SGD loop) trains as
usual; gossipfl runs next to it and, after every round, merges its weights with the
neighbours' weights received over libp2p. Give every peer an identity first
(`gossipfl init --home DIR --quiet` prints the peer ID), then start one peer with its
neighbours' peer IDs and the others with its address:

    python examples/embed_trio.py --key a/identity.key --shard 1/2 --peer <B's peer ID>
    python examples/embed_trio.py --key b/identity.key --shard 2/2 --peer <address A printed>

A neighbour given by its full address (``/ip4/.../tcp/.../p2p/<peer ID>``) is dialed; one
given by its peer ID alone must dial us. Ctrl+C stops the peer cleanly.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

import digits_app
import peer_args
import torch
import trio

from gossipfl import GossipflError, Peer, PeerConfig
from gossipfl.identity import load_identity
from gossipfl.peer import RoundReport
from gossipfl.protocol import StaticNeighbourhood
from gossipfl.transport.libp2p import Libp2pTransport

NETWORK_ID = "digits-demo"
"""Peers of another job (another network id) are refused at the handshake."""


async def main(args: argparse.Namespace) -> int:
    identity = load_identity(args.key)
    neighbours = peer_args.parse_neighbours(args.peer)
    index, count = peer_args.parse_shard(args.shard)

    # The application, exactly as it would run without gossipfl.
    shard = digits_app.load_shard(index, count)
    model = digits_app.make_model(seed=0)  # the same initial weights on every peer
    trainer = digits_app.Trainer(model, shard, steps=args.steps, seed=index)

    def report(r: RoundReport) -> None:
        # Called in the event loop after each merge: keep it quick (here, well under 1 ms).
        acc = digits_app.accuracy(model, shard.x_test, shard.y_test)
        loss = r.train_metrics.get("loss", math.nan)
        print(
            f"round {r.round:3d}  loss {loss:.3f}  accuracy {acc:.3f}  "
            f"models received {r.stats.received}/{r.stats.expected}",
            flush=True,
        )

    # Uniform weights over the group: with everyone connected to everyone this is what
    # Metropolis-Hastings gives. For a sparse topology use TopologyNeighbourhood.
    weight = 1 / (len(neighbours) + 1)
    neighbourhood = StaticNeighbourhood(dict.fromkeys(neighbours, weight))

    async with Libp2pTransport.open(
        identity=identity, listen=[args.listen], allow=list(neighbours)
    ) as transport:
        for peer_id, address in neighbours.items():
            if address is not None:
                transport.add_peer_address(peer_id, address)
        print(f"peer id {transport.local_id}", flush=True)
        for address in transport.listen_addrs:
            print(f"listening on {address}", flush=True)

        async with Peer(
            transport=transport,
            model=model,
            train=trainer.train_round,  # runs in a worker thread: the network stays served
            neighbourhood=neighbourhood,
            rule=args.rule,
            config=PeerConfig(network_id=NETWORK_ID),
            on_round=report,
        ) as peer:
            # Training before the neighbours are up would race through rounds nobody
            # hears, so wait until each is connected and its handshake accepted.
            missing = await peer.wait_for_neighbours(args.wait)
            if missing:
                print(f"no connection with {', '.join(sorted(missing))} within {args.wait:g} s")
                return 1
            # run() returns once our last model has left for the neighbours too.
            summary = await peer.run(args.rounds)

    own = torch.isin(shard.y_test, torch.tensor(shard.classes))
    everything = digits_app.accuracy(model, shard.x_test, shard.y_test)
    mine = digits_app.accuracy(model, shard.x_test[own], shard.y_test[own])
    print(f"done: rounds {summary.first_round}..{summary.last_round}", flush=True)
    print(f"accuracy on all digits {everything:.3f}, on own digits {mine:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # py-libp2p reports routine shutdown events at error level; gossipfl's own warnings
    # (refused peers, bad frames) stay visible.
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    torch.set_num_threads(1)  # several peers may share this machine's cores
    args = peer_args.make_parser("One peer of a decentralized digits model (trio).").parse_args()
    try:
        sys.exit(trio.run(main, args))
    except GossipflError as exc:  # bad key file, malformed address, ...: one line, no trace
        sys.exit(f"error: {exc}")
