"""Command-line handling shared by the embedding examples: who this peer is, whom it
gossips with, which shard of the data it holds."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from gossipfl.transport.libp2p import parse_multiaddr, parse_peer_id


def make_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--key", required=True, help="this peer's key file (gossipfl init)")
    parser.add_argument(
        "--listen", default="/ip4/127.0.0.1/tcp/0", help="multiaddr to listen on (tcp/0: any port)"
    )
    parser.add_argument(
        "--peer",
        action="append",
        required=True,
        help="a neighbour: its full multiaddr (dialed) or its peer ID (it dials us); repeatable",
    )
    parser.add_argument(
        "--shard",
        default="1/1",
        help="I/N, counted from 1 as in gossipfl start: hold the digits c with c %% N == I-1",
    )
    parser.add_argument("--rounds", type=int, default=30, help="training rounds")
    parser.add_argument("--steps", type=int, default=10, help="SGD steps per round")
    parser.add_argument("--rule", default="mean", help="merge rule, e.g. trimmed-mean, cs-plus")
    parser.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for every neighbour to connect"
    )
    return parser


def parse_neighbours(texts: Sequence[str]) -> dict[str, str | None]:
    """Peer ID -> address to dial (``None``: that neighbour dials us).

    Invalid input raises ``gossipfl.ConfigError`` with a message that names it."""
    neighbours: dict[str, str | None] = {}
    for text in texts:
        if text.startswith("/"):
            address, peer_id = parse_multiaddr(text, need_peer_id=True)
            assert peer_id is not None  # need_peer_id guarantees it
            neighbours[peer_id] = address
        else:
            neighbours[parse_peer_id(text)] = None
    return neighbours


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/3"`` (the first of three, counted from 1 as ``gossipfl start --shard`` does)
    -> ``(0, 3)``: the index from 0, and the count."""
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count or 1)
    except ValueError:
        raise SystemExit(f"--shard takes I/N with whole numbers (1/2), not {text!r}") from None
    if not 1 <= i <= n:
        raise SystemExit(f"--shard {text}: I counts from 1 to N (1/{n} is the first)")
    return i - 1, n
