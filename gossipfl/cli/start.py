"""``gossipfl start``: run this peer until its training is done (or Ctrl+C / SIGTERM).

Settings come, in increasing priority, from the defaults, the config file (``--config``,
else ``<home>/config.toml`` if it exists), the flags, and ``--set key=value``. ``--listen``
replaces the configured listen addresses; ``--bootstrap`` and ``--allow`` add to the
configured lists. The identity is ``<home>/identity.key`` (or ``[identity] key_file``).
It is created on the first start of a bare home (no config file, no state) and nowhere
else: a key file missing from a peer that has a config or a past is refused, with the
``gossipfl init`` command that creates one, because a new key is a new peer ID that the
other peers' allowlists and bootstrap lists do not know.

Every mistake in the flags, the config file or the paths is found before the peer binds
its port or writes its key: one line on stderr, exit status 2 (see :mod:`gossipfl.cli`).
Rounds and shards are counted from 1 in what this command prints and in ``--shard``;
``metrics.jsonl``, checkpoints and ``[data] shard`` count from 0.

The peer ID, the full listen addresses and a ready-to-paste join command go to stdout;
progress goes to stderr. SIGINT and SIGTERM stop the peer cleanly (checkpoint kept,
leave announced, connections closed) in well under a second; a second signal stops it at
once. Exit status: 0 when training finished or on SIGTERM, 130 on SIGINT, 2 on a
configuration error.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gossipfl.cli.task import TASK_FLAG_HELP
from gossipfl.errors import ConfigError

EXIT_INTERRUPTED = 130


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "start",
        help="run this peer: join the job, train and gossip until done",
        description=(
            "Start this peer: listen, find the other peers (bootstrap addresses, roster, "
            "mDNS, DHT), train on its shard and gossip with its neighbours. Prints the peer "
            "ID, its addresses and the command another peer joins with. Writes "
            "metrics.jsonl and checkpoints under [output] dir. Ctrl+C stops it cleanly."
        ),
    )
    p.add_argument("--config", metavar="FILE", help="config file (default: <home>/config.toml)")
    p.add_argument(
        "--home", metavar="DIR", help="the peer's directory (default: $GOSSIPFL_HOME, ~/.gossipfl)"
    )
    p.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help="listen address, e.g. /ip4/0.0.0.0/tcp/4141 (repeatable; replaces the config's)",
    )
    p.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="a peer to join through, /ip4/.../tcp/.../p2p/<peer id> (repeatable)",
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="PEER_ID",
        help="a peer ID allowed to connect (repeatable; adds to [network] allow)",
    )
    p.add_argument(
        "--topology",
        metavar="SPEC",
        help="topology family, shipped name or file; a roster file (TOML with [[peer]]) "
        "means static membership",
    )
    p.add_argument("--roster", metavar="FILE", help="static membership: the job's roster file")
    p.add_argument("--rule", help="merge rule (mean, trimmed-mean, cs-plus, ...)")
    p.add_argument(
        "--task",
        metavar="REF",
        help=TASK_FLAG_HELP,
    )
    p.add_argument(
        "--data-file",
        metavar="FILE",
        help="this peer's own data (.npz, .csv, .parquet, or what the task reads): all of "
        "it is trained on, no sharding",
    )
    p.add_argument("--rounds", type=int, metavar="T", help="rounds to train")
    p.add_argument("--min-peers", type=int, metavar="N", help="members to wait for before round 0")
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="train on shard I of N, counted from 1: 1/4 is the first of four "
        "([data] shard in config.toml counts from 0)",
    )
    p.add_argument("--mdns", action="store_true", help="also find peers by mDNS (LAN)")
    p.add_argument(
        "--relay-service",
        action="store_true",
        help="relay for allowlisted peers behind NAT (circuit relay v2; needs an allowlist)",
    )
    p.add_argument(
        "--no-hole-punching",
        action="store_true",
        help="keep relayed connections relayed (no DCUtR hole punching)",
    )
    p.add_argument(
        "--relay",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="a relay to be reachable through, /ip4/.../tcp/.../p2p/<relay id> (repeatable; "
        "adds to [network] relays)",
    )
    p.add_argument("--dht", action="store_true", help="also find peers through a Kademlia DHT")
    p.add_argument(
        "--privacy",
        metavar="MECHANISM",
        help="dp-sgd or model-noise: train with differential privacy (see docs/privacy.md)",
    )
    p.add_argument(
        "--epsilon",
        type=float,
        help="this peer's privacy budget over its rounds; the noise is calibrated to it",
    )
    p.add_argument(
        "--secure-averaging",
        action="store_true",
        help="send masked shares, so that neighbours see only sums (part of the job; needs "
        "--rule mean; see docs/privacy.md)",
    )
    p.add_argument(
        "--attack",
        metavar="NAME",
        help="make this peer Byzantine (tests and experiments only; see docs/attacks.md)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set training.lr=0.05 (repeatable)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start a new job: move the state of a previous one (checkpoint, metrics) aside "
        "to state.<date>/ instead of resuming it",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print the banner only")
    p.set_defaults(handler=run)


def load_config(args: argparse.Namespace) -> tuple[Any, Path]:
    """The daemon config the flags describe, and the home directory."""
    from gossipfl.cli.init import CONFIG_FILE, resolve_home
    from gossipfl.daemon.config import DaemonConfig

    home = resolve_home(args.home)
    path = Path(args.config).expanduser() if args.config else home / CONFIG_FILE
    if args.config or path.exists():
        config = DaemonConfig.from_toml(path)
    else:
        config = DaemonConfig(base_dir=home.resolve())
    return config.with_overrides(flag_overrides(args, config)), home


def flag_overrides(args: argparse.Namespace, config: Any) -> list[str]:
    """Apply the flags that replace or extend lists to ``config`` in place, and return
    the rest as ``key=value`` assignments, followed by ``--set``'s (which win)."""
    from gossipfl.daemon.roster import is_roster_file

    sets: list[str] = []
    if args.topology:
        if is_roster_file(args.topology):
            config.topology.roster = str(Path(args.topology).expanduser().resolve())
        else:
            config.topology.name = args.topology
    if args.roster:
        config.topology.roster = str(Path(args.roster).expanduser().resolve())
    if args.listen:
        config.network.listen = list(args.listen)
    config.network.bootstrap = [*config.network.bootstrap, *args.bootstrap]
    config.network.allow = [*config.network.allow, *args.allow]
    if args.mdns:
        config.network.mdns = True
    if args.relay_service:
        config.network.relay_service = True
    config.network.relays = [*config.network.relays, *args.relay]
    if args.no_hole_punching:
        config.network.hole_punching = False
    if args.dht:
        config.network.dht = True
    if args.rule:
        config.rule.name = args.rule
        config.rule.params = {}
    if getattr(args, "task", None):
        from gossipfl.tasks.loading import absolute_reference

        config.task.name = absolute_reference(args.task)  # relative to where we run
    if getattr(args, "data_file", None):
        config.data.file = str(Path(args.data_file).expanduser().resolve())
    if args.rounds is not None:
        sets.append(f"training.rounds={args.rounds}")
    if args.min_peers is not None:
        sets.append(f"topology.min_peers={args.min_peers}")
    if args.shard:
        index, count = parse_shard(args.shard)
        sets += [f"data.shard={index}", f"data.shards={count}"]
    if args.attack:
        sets.append(f"attack.name={args.attack}")
    if getattr(args, "privacy", None):
        sets.append(f"privacy.mechanism={args.privacy}")
    if getattr(args, "epsilon", None) is not None:
        sets.append(f"privacy.epsilon={args.epsilon}")
    if getattr(args, "secure_averaging", False):
        sets.append("privacy.secure_averaging=true")
    return [*sets, *args.overrides]


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` (I counted from 1, as people count) as ``(data.shard, data.shards)``
    (counted from 0, as the config file and the metrics do)."""
    index, sep, count = text.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise ConfigError(f"--shard expects I/N, e.g. 1/8 for the first of 8, got {text!r}")
    i, n = int(index), int(count)
    if n < 1 or not 1 <= i <= n:
        first = f"--shard 1/{n}" if n >= 1 else "--shard 1/8"
        raise ConfigError(
            f"--shard {text}: I must be between 1 and N (shards count from 1 here: the "
            f"first is {first})"
        )
    return i - 1, n


def run(args: argparse.Namespace) -> int:
    import libp2p  # noqa: F401  (imported now: it resets its loggers' levels on import)
    import trio

    from gossipfl.cli import configure_logging
    from gossipfl.cli.init import CONFIG_FILE
    from gossipfl.daemon.node import Node
    from gossipfl.daemon.progress import Reporter

    configure_logging(getattr(args, "verbose", 0))  # so apply the CLI's choice again
    config, home = load_config(args)
    bare = is_bare_home(config, has_config_file=bool(args.config) or (home / CONFIG_FILE).exists())
    if bare:
        make_home(home)
    preflight(config)
    identity, created = start_identity(config, may_create=bare)
    reporter = Reporter(quiet=args.quiet)
    if created:
        reporter.say(f"created a new identity in {identity.path}")
    if identity.legacy:
        home_flag = f" --home {identity.path.parent}" if identity.path is not None else ""
        reporter.say(
            f"note: key file {identity.path} is in the form of earlier versions (a 32-byte "
            "seed), which js-libp2p and go-libp2p cannot read; `gossipfl init"
            f"{home_flag} --upgrade-key` rewrites it (same peer ID)"
        )
    node = Node(config, identity, reporter=reporter, fresh=bool(getattr(args, "fresh", False)))
    result = trio.run(serve_until_signal, node)
    reporter.finished(
        result.reason,
        first_round=result.first_round,
        last_round=result.last_round,
        accuracy=result.accuracy,
    )
    status = EXIT_INTERRUPTED if result.reason == "SIGINT" else 0
    exit_now_if_command(status)
    return status


def preflight(config: Any) -> None:
    """Find every mistake that can be found before the peer starts: the roster, the
    listen ports, the data file and the output directory. After this, what fails is the
    network (reported by the running peer) or a bug."""
    if config.topology.roster:  # refuse a bad roster before creating anything
        from gossipfl.daemon.roster import load_roster

        load_roster(config.path(config.topology.roster))
    check_listen_ports(config.network.listen)
    config.check_files()


def check_listen_ports(listen: list[str]) -> None:
    """Refuse a listen port that is taken (or an address this host does not have) now,
    with what to do, rather than from inside the starting peer."""
    import multiaddr

    from gossipfl.transport.libp2p.workarounds import check_ports_free

    try:
        check_ports_free([multiaddr.Multiaddr(text) for text in listen])
    except ConfigError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            fix = (
                "stop the other peer, or choose another port with --listen (/tcp/0 picks a "
                "free one)"
            )
        elif isinstance(cause, OSError) and cause.errno == errno.EADDRNOTAVAIL:
            fix = "listen on an address of this host, or on /ip4/0.0.0.0 (every interface)"
        elif isinstance(cause, OSError) and cause.errno == errno.EACCES:
            fix = "ports below 1024 need privileges: choose another port above 1023"
        else:
            raise
        raise ConfigError(f"{exc}; {fix}") from None


def is_bare_home(config: Any, *, has_config_file: bool) -> bool:
    """Whether this is the first start of a peer nobody knows yet: no config file, the
    default key file, and no output directory from an earlier run."""
    from gossipfl.cli.init import KEY_FILE

    return (
        not has_config_file
        and config.identity.key_file == KEY_FILE
        and not config.path(config.output.dir).exists()
    )


def make_home(home: Path) -> None:
    """Create a bare home (mode 0700: it will hold the private key)."""
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the home directory {home}: {exc.strerror or exc}; choose a "
            "--home you can write to"
        ) from None


def start_identity(config: Any, *, may_create: bool) -> tuple[Any, bool]:
    """This peer's identity, and whether it was just created.

    A missing key file is created only when ``may_create`` (a bare home, see
    :func:`is_bare_home`). Anywhere else it is refused: the peer would come back under a
    new peer ID that nobody's allowlist or bootstrap list knows, and that must never
    happen silently.
    """
    from gossipfl.cli.init import KEY_FILE
    from gossipfl.identity import IdentityError, load_identity, load_or_create_identity

    path = config.path(config.identity.key_file)
    if path.exists() or path.is_symlink():
        return load_identity(path), False
    if not may_create:
        if path.name == KEY_FILE:
            fix = f"or run `gossipfl init --home {path.parent}` to create a new one there"
        else:
            fix = (
                "or create a new one with `gossipfl init --home DIR` and set key_file to "
                "DIR/identity.key"
            )
        raise IdentityError(
            f"no key file at {path}, and this peer has a configuration: refusing to create "
            "a new identity silently (the peer ID would change, and the other peers' "
            f"allowlists and bootstrap lists would not know it). Restore the key file, {fix}"
        )
    return load_or_create_identity(path)


def exit_now_if_command(status: int) -> None:
    """End the process at once when it is the ``gossipfl`` command itself.

    Everything that matters is done by now (checkpoint, metrics, leave, connections
    closed), but the interpreter's own teardown of the ~2,700 modules that numpy, scikit-
    learn and py-libp2p bring in takes about a second on a busy 2-core machine: longer
    than an operator's Ctrl+C should wait. Library callers (tests calling
    :func:`gossipfl.cli.main` in-process) are never exited.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    is_command = (spec is not None and spec.name == "gossipfl.__main__") or Path(
        sys.argv[0]
    ).name == "gossipfl"
    if not is_command:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


async def serve_until_signal(node: Any) -> Any:
    """Run ``node``; the first SIGINT/SIGTERM stops it cleanly, a second one at once."""
    import trio

    from gossipfl.daemon.node import NodeResult

    results: list[Any] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                stopping = False
                async for signum in signals:
                    if stopping:
                        nursery.cancel_scope.cancel()
                        return
                    stopping = True
                    node.stop(signal.Signals(signum).name)

            nursery.start_soon(watch)
            results.append(await node.run())
            nursery.cancel_scope.cancel()
    if results:
        return results[0]
    return NodeResult(node.identity.peer_id, 0, -1, "killed by a second signal")
