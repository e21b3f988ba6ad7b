"""``gossipfl init``: create this peer's identity and a commented ``config.toml``.

The home directory (``--home``, else ``$GOSSIPFL_HOME``, else ``~/.gossipfl``) receives:

``identity.key``
    the Ed25519 private key (mode 0600) whose peer ID names this peer; never replaced
    without ``--force``, because replacing it changes the peer ID that other peers'
    allowlists and bootstrap lists refer to;
``config.toml``
    every setting ``gossipfl start`` reads, with its default and a comment saying what
    it does. Written only if absent (with ``--force`` the old one is kept as
    ``config.toml.bak``).

The peer ID is printed (alone with ``--quiet``, for scripts).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomli_w

from gossipfl.errors import ConfigError

HOME_ENV = "GOSSIPFL_HOME"
DEFAULT_HOME = Path("~/.gossipfl")
KEY_FILE = "identity.key"
CONFIG_FILE = "config.toml"
DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/4141",)
DEFAULT_NETWORK_ID = "gossipfl"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "init",
        help="create this peer's identity (key file) and a commented config.toml",
        description=(
            "Create the peer's home directory with an Ed25519 identity (identity.key, "
            "mode 0600) and a config.toml documenting every setting `gossipfl start` "
            "reads. Prints the peer ID. Refuses to replace an existing identity "
            "without --force."
        ),
    )
    p.add_argument(
        "--home",
        metavar="DIR",
        help=f"where to put the files (default: ${HOME_ENV}, else {DEFAULT_HOME})",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing identity (the peer ID changes; config.toml is kept as .bak)",
    )
    p.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help=f"address to listen on (repeatable; default {DEFAULT_LISTEN[0]})",
    )
    p.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="a peer to contact at start, /ip4/.../tcp/.../p2p/<peer id> (repeatable)",
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="PEER_ID",
        help="a peer ID allowed to connect (repeatable; none: any peer may connect)",
    )
    p.add_argument(
        "--network-id",
        default=DEFAULT_NETWORK_ID,
        help="peers with different network ids refuse each other: letters, digits, '.', '_' "
        "and '-' (default: %(default)s)",
    )
    p.add_argument(
        "--upgrade-key",
        action="store_true",
        help="rewrite an existing key file of an earlier version (a 32-byte seed, which "
        "js-libp2p and go-libp2p cannot read) in the libp2p spec's form; same peer ID",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the peer ID")
    p.set_defaults(handler=run)


def resolve_home(flag: str | None, environ: dict[str, str] | None = None) -> Path:
    """``--home``, else ``$GOSSIPFL_HOME``, else ``~/.gossipfl``."""
    environ = dict(os.environ) if environ is None else environ
    raw = flag or environ.get(HOME_ENV) or str(DEFAULT_HOME)
    if not raw.strip():
        raise ConfigError(
            f"the home directory must not be empty; give --home DIR or unset ${HOME_ENV}"
        )
    home = Path(raw).expanduser()
    if home.exists() and not home.is_dir():
        raise ConfigError(
            f"home {home} exists and is not a directory; choose another --home (a directory, "
            "or a path that does not exist yet)"
        )
    return home


def _validated(args: argparse.Namespace) -> tuple[list[str], list[str], list[str], str]:
    """The addresses, peer IDs and network id of the flags, each checked before anything
    is written, so that a mistake leaves no half-made home behind."""
    from gossipfl.daemon.config import check_network_id
    from gossipfl.transport.libp2p.allowlist import (
        parse_listen_address,
        parse_multiaddr,
        parse_peer_id,
    )

    listen = [parse_listen_address(text) for text in args.listen or DEFAULT_LISTEN]
    bootstrap = [parse_multiaddr(text, need_peer_id=True)[0] for text in args.bootstrap]
    allow = [parse_peer_id(text) for text in args.allow]
    network_id = check_network_id(args.network_id, what="--network-id")
    return listen, bootstrap, allow, network_id


def _write_config(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write {path}: {exc.strerror or exc}; choose a --home you can write to"
        ) from None


def upgrade_key(key_path: Path) -> int:
    """``--upgrade-key``: rewrite a legacy key file in the spec's form, atomically."""
    from gossipfl.identity import load_identity, save_identity

    identity = load_identity(key_path)
    if not identity.legacy:
        print(f"{key_path} is already in the libp2p spec's form (peer {identity.peer_id})")
        return 0
    save_identity(identity, key_path, overwrite=True)
    print(
        f"rewrote {key_path} in the libp2p spec's form (seed and public key, readable by "
        f"js-libp2p and go-libp2p); peer {identity.peer_id}, unchanged"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from gossipfl.identity import IdentityError, create_identity, load_identity

    home = resolve_home(args.home)
    key_path = home / KEY_FILE
    if getattr(args, "upgrade_key", False):
        return upgrade_key(key_path)
    listen, bootstrap, allow, network_id = _validated(args)
    config_path = home / CONFIG_FILE
    if (key_path.exists() or key_path.is_symlink()) and not args.force:
        try:
            existing = f" (peer {load_identity(key_path).peer_id})"
        except IdentityError:
            existing = ""
        raise IdentityError(
            f"{key_path} already exists{existing}: this home already has an identity. "
            "Use --force to replace it (the peer ID will change), or --home for another peer"
        )
    identity = create_identity(key_path, overwrite=args.force)
    kept = ""
    if config_path.exists():
        if args.force:
            backup = config_path.with_name(CONFIG_FILE + ".bak")
            os.replace(config_path, backup)
            kept = f" (the previous one is {backup.name})"
        else:
            kept = " (kept the existing file)"
    if not config_path.exists():
        _write_config(
            config_path,
            config_template(
                peer_id=identity.peer_id,
                listen=listen,
                bootstrap=bootstrap,
                allow=allow,
                network_id=network_id,
            ),
        )
    if args.quiet:
        print(identity.peer_id)
        return 0
    print(f"peer id:  {identity.peer_id}")
    print(f"key file: {key_path}  (mode 0600: keep it secret, back it up)")
    print(f"config:   {config_path}{kept}")
    print()
    print("Next: put your peers' addresses in [network] bootstrap and their peer IDs in")
    print("[network] allow, then run `gossipfl start`. Other peers allow this one with:")
    print(f'  allow = ["{identity.peer_id}"]')
    return 0


def _toml(value: object) -> str:
    """``value`` as a TOML literal (strings quoted and escaped, lists inline)."""
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _toml_list(items: Sequence[str], indent: str = "") -> str:
    if not items:
        return "[]"
    inner = "".join(f"{indent}  {_toml(item)},\n" for item in items)
    return f"[\n{inner}{indent}]"


def config_template(
    *,
    peer_id: str,
    listen: Sequence[str] = DEFAULT_LISTEN,
    bootstrap: Sequence[str] = (),
    allow: Sequence[str] = (),
    network_id: str = DEFAULT_NETWORK_ID,
    date: dt.date | None = None,
) -> str:
    """The commented ``config.toml`` of a new peer. Every key holds its default."""
    date = date or dt.date.today()
    return f"""\
# gossipfl peer configuration, written by `gossipfl init` on {date.isoformat()}.
# `gossipfl start` reads this file from the peer's home directory (--home, else
# $GOSSIPFL_HOME, else ~/.gossipfl). A missing key takes the default shown here.
# Relative paths are relative to this file's directory.
# Operations guide (ports, firewalls, allowlists): docs/operations.md

[identity]
# This peer's Ed25519 private key (mode 0600). The key file IS the peer: its peer ID,
#   {peer_id}
# is how other peers name it (in their allowlist and bootstrap lists). Back it up;
# never share it; `gossipfl init --force` replaces it with a new one (new peer ID).
key_file = {_toml(KEY_FILE)}

[network]
# Peers with different network ids refuse each other at the handshake: give each
# training job its own, so two jobs on the same machines never mix their models.
network_id = {_toml(network_id)}
# Where to listen (multiaddrs). /ip4/0.0.0.0 = every IPv4 interface; /tcp/0 = any free
# port (fine for tests; servers want a fixed port, opened in the firewall).
listen = {_toml_list(listen)}
# Peers to contact at start, as full multiaddrs ending in /p2p/<peer id>, e.g.
#   "/ip4/192.0.2.7/tcp/4141/p2p/12D3KooW..."
# Every peer prints its own when it starts. One reachable peer is enough to join.
bootstrap = {_toml_list(bootstrap)}
# Peer IDs allowed to connect to this peer, and the only ones it dials. A peer not on
# the list is refused during the encrypted handshake, before it can send anything.
# An EMPTY list lets ANY peer that reaches the port in: acceptable on a private LAN or
# for a test, not on a network you do not control. List every peer of your job here.
allow = {_toml_list(allow)}
# Also find peers on the local network by mDNS (LAN only; they must pass `allow`).
mdns = false
# Behind NAT (docs/operations.md, "Behind NAT"): relay for the allowed peers that cannot
# be dialled (needs `allow`), and relays to be reachable through, as full multiaddrs
# ending in /p2p/<relay id> (each must be on `allow`, and this peer on its list).
relay_service = false
relays = []
# Peers that meet through a relay try to connect directly by hole punching (DCUtR); they
# stay relayed when their NATs do not allow it.
hole_punching = true
# Advanced (defaults shown; uncomment to change):
# Also look peers up in a Kademlia DHT run by the job's members (beyond bootstrap).
# dht = false
# dial_timeout = 10.0
# Heartbeats to neighbours; one silent for heartbeat_timeout is not waited for.
# heartbeat_interval = 1.0
# heartbeat_timeout = 5.0
# Members swap their member lists every exchange_interval; a member not heard of
# (directly or through others) for member_timeout has left.
# exchange_interval = 1.0
# member_timeout = 10.0

[topology]
# How peers are wired together: a family (ring, torus, hypercube, exponential,
# one-peer-exponential, random-regular, erdos-renyi, small-world, complete, ...), a
# shipped topology or a file. See `gossipfl topology list`. Family parameters go here.
name = "exponential"
# Static membership: a roster file listing every peer of the job ([[peer]] tables with
# name and address; see docs/operations.md). Empty: dynamic membership, where the
# topology above is laid over the sorted list of live members and recomputed when peers
# join or leave.
roster = ""
# Members to wait for before round 0; 0 = the whole roster, or 2 without one.
min_peers = 0
# Dynamic membership: apply a membership change once it has been stable this long (s).
settle = 2.0
# Stop waiting for min_peers after this many seconds and start anyway; 0 = wait forever.
start_timeout = 0.0

[rule]
# How a peer merges its neighbours' models. mean = plain gossip averaging (no defence);
# robust rules: median, trimmed-mean, krum, multi-krum, geometric-median,
# centered-clipping, clipped-gossip, cs-plus, nna, ios, balance. Rule parameters go
# here too (e.g. b = 1: Byzantine neighbours tolerated). See `gossipfl simulate --help`.
name = "cs-plus"

[training]
# Rounds of (local training, then gossip with neighbours).
rounds = 100
# train, or consensus (no data: peers average random vectors; checks a deployment).
mode = "train"
# sync: rounds with a deadline; async: push-pull without rounds; epidemic: each round
# each peer sends to a few random peers.
protocol = "sync"
# Sync: seconds to wait for the neighbours' models each round.
deadline = 5.0
# Sync: round 0 waits at least this many seconds for neighbours that started later.
start_grace = 3.0
# Encoding of models on the wire: fp32, fp16, or int8 (about 4x fewer bytes).
codec = "fp32"
# The model every peer trains (peers must agree): softmax or mlp; numpy or torch.
model = "softmax"
backend = "numpy"
hidden = 64
lr = 0.1
momentum = 0.9
weight_decay = 0.0
batch_size = 32
local_steps = 1
# Every peer must start from the same random initialization: keep the same seed.
seed = 0
# Consensus mode: length of the random vector.
dimension = 100
# Seconds added to every local step, to play a slower device in a testbed (0: none).
step_time = 0.0
# Leave the job after this many rounds, to play churn in a testbed (0: train to the end).
leave_after = 0

[data]
# This peer's training data: digits (bundled with scikit-learn) or synthetic.
name = "digits"
# How the data set is split among peers: iid, dirichlet (alpha: smaller = more skewed)
# or label.
partition = "dirichlet"
alpha = 1.0
# A data set of your own. With a [task] below: this peer's own file, read by the task
# (.npz, .csv or .parquet by default). Without: an .npz with x_train, y_train, x_test,
# y_test.
file = ""
# Which part of the split this peer trains on (0-based) and into how many parts it is
# cut. Unset: the peer's roster index and the roster size, or its place in the sorted
# membership and its size when training starts. Set both for an exact partition.
# shard = 0
# shards = 8

[task]
# Your own model and data (docs/tasks.md): a built-in task (`gossipfl task list`),
# package.module:Class or path/to/task.py:Class (relative to this file). Empty: the
# built-in workload of [data] name and [training] model. With a task, [data] file is
# this peer's own data (read by the task), all of it trained on, no sharding. Every
# peer of a job runs the same task with the same parameters.
name = ""
# Its parameters go in a [task.params] table below this one, one key each (`gossipfl
# task show NAME` lists them), or on the command line: --set task.params.lr=0.05.

[privacy]
# Differential privacy for this peer's own data (docs/privacy.md): "dp-sgd" trains
# with DP-SGD (per-sample clipping, Gaussian noise: each sample protected);
# "model-noise" clips each round's update to `clip` and adds noise to the model it
# shares (its whole data set protected); either reports the epsilon spent every round.
# "none" trains plainly. Each peer's own choice: peers of one job may differ.
mechanism = "none"
# The budget over this peer's rounds: the noise is calibrated to spend it (--epsilon).
# Or set noise_multiplier and read epsilon in metrics.jsonl; with both, a plan over
# the budget is refused.
# epsilon = 4.0
# noise_multiplier = 1.0
delta = 1e-05
clip = 1.0
# Secure averaging (--secure-averaging): send masked shares instead of models, so that
# each neighbour learns only the weighted sum of its neighbours' models. Part of the
# job (every peer or none); needs rule "mean" and a static topology.
secure_averaging = false

[output]
# Checkpoints (a restarted peer resumes from its latest one) and metrics, relative to
# this file.
dir = "state"
checkpoint_every = 1
# Evaluate on the common test split every this many rounds (0: never).
eval_every = 5
# Also append every round's model to models.bin (simulate --transport libp2p uses it).
record_models = false
# Seconds to keep answering neighbours after the last round before leaving.
linger = 1.0

[limits]
# What one peer may cost this one (docs/operations.md, "Resource limits and peer
# scores"): bytes, seconds, per second. A peer that breaks one is counted against
# ([score]), then banned. The defaults suit models up to a few million parameters.
max_frame = 16777216
read_timeout = 30.0
write_timeout = 30.0
max_connections = 300
max_inbound_streams = 32
max_streams_per_peer = 4
max_buffered = 67108864
max_buffered_per_peer = 16777216
max_connection_buffer = 67108864
frame_rate = 1000.0
frame_burst = 5000
max_requests_per_peer = 8
request_rate = 50.0
request_burst = 100
connection_rate = 1.0
connection_burst = 20

[score]
# Each violation adds its kind's weight to the peer's score, which halves every
# half_life seconds; reaching threshold bans the peer for `ban` seconds (doubling on
# each repeat, up to max_ban).
threshold = 100.0
half_life = 60.0
ban = 60.0
max_ban = 3600.0
forget_bans_after = 86400.0
default_weight = 10.0
# Weights by kind of violation, replacing the defaults of the kinds named (the kinds:
# docs/operations.md), e.g. {{ replay = 50.0, bad_frame = 50.0 }}.
weights = {{}}

# Tests and experiments only: make this peer Byzantine (see docs/attacks.md).
# [attack]
# name = "sign-flip"

# Tests and experiments only: an otherwise honest peer that attacks the runtime
# (see docs/robustness.md, "Insiders").
# [insider]
# name = "round-inflation"
"""
