"""Embed gossipfl in a program that is not async: one process is one peer.

The same application as embed_trio.py (digits_app.py), driven from plain synchronous code
with ``gossipfl.BlockingPeer``: the peer and its libp2p host live in a background thread
with their own trio event loop, and every method call waits for the answer. The peer also
keeps a checkpoint, so a peer that is stopped and started again with the same
``--checkpoints`` directory resumes after its last completed round.

    python examples/embed_sync.py --key a/identity.key --shard 1/2 --peer <B's peer ID> \\
        --checkpoints a/checkpoints
    python examples/embed_sync.py --key b/identity.key --shard 2/2 --peer <address A printed>
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
from collections.abc import AsyncIterator

import digits_app
import peer_args
import torch

from gossipfl import BlockingPeer, CheckpointStore, GossipflError, PeerConfig
from gossipfl.identity import load_identity
from gossipfl.peer import RoundReport
from gossipfl.protocol import StaticNeighbourhood
from gossipfl.transport.libp2p import Libp2pTransport

NETWORK_ID = "digits-demo"


def libp2p(peer: BlockingPeer) -> Libp2pTransport:
    """The peer's transport: the Libp2pTransport that ``open_transport`` opened."""
    assert isinstance(peer.transport, Libp2pTransport)
    return peer.transport


def main(args: argparse.Namespace) -> int:
    identity = load_identity(args.key)
    neighbours = peer_args.parse_neighbours(args.peer)
    index, count = peer_args.parse_shard(args.shard)

    shard = digits_app.load_shard(index, count)
    model = digits_app.make_model(seed=0)
    trainer = digits_app.Trainer(model, shard, steps=args.steps, seed=index)

    def report(r: RoundReport) -> None:
        # Runs in the peer's thread, between rounds: training is not running now.
        acc = digits_app.accuracy(model, shard.x_test, shard.y_test)
        loss = r.train_metrics.get("loss", math.nan)
        print(f"round {r.round:3d}  loss {loss:.3f}  accuracy {acc:.3f}", flush=True)

    @contextlib.asynccontextmanager
    async def open_transport() -> AsyncIterator[Libp2pTransport]:
        # Called in the peer's thread: trio objects belong to the loop that made them.
        async with Libp2pTransport.open(
            identity=identity, listen=[args.listen], allow=list(neighbours)
        ) as transport:
            for peer_id, address in neighbours.items():
                if address is not None:
                    transport.add_peer_address(peer_id, address)
            yield transport

    weight = 1 / (len(neighbours) + 1)
    with BlockingPeer(
        open_transport,
        neighbourhood=StaticNeighbourhood(dict.fromkeys(neighbours, weight)),
        model=model,
        train=trainer.train_round,
        rule=args.rule,
        config=PeerConfig(network_id=NETWORK_ID),
        on_round=report,
        checkpoints=CheckpointStore(args.checkpoints) if args.checkpoints else None,
    ) as peer:
        print(f"peer id {peer.id}", flush=True)
        for address in peer.call_sync(lambda: libp2p(peer).listen_addrs):
            print(f"listening on {address}", flush=True)
        missing = peer.wait_for_neighbours(args.wait)  # connected, handshakes accepted
        if missing:
            print(f"no connection with {', '.join(sorted(missing))} within {args.wait:g} s")
            return 1
        summary = peer.run(args.rounds)  # blocks until our last model has been sent
        final = peer.vector  # the merged model as one float32 vector, should you need it

    accuracy = digits_app.accuracy(model, shard.x_test, shard.y_test)
    print(f"done: rounds {summary.first_round}..{summary.last_round}", flush=True)
    print(f"accuracy on all digits {accuracy:.3f} ({final.size} parameters)", flush=True)
    return 0


if __name__ == "__main__":
    parser = peer_args.make_parser("One peer of a decentralized digits model (synchronous).")
    parser.add_argument("--checkpoints", help="directory for this peer's checkpoint (resume)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    torch.set_num_threads(1)
    try:
        sys.exit(main(parser.parse_args()))
    except GossipflError as exc:  # bad key file, malformed address, ...: one line, no trace
        sys.exit(f"error: {exc}")
