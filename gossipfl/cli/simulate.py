"""``gossipfl simulate``: run an experiment with every peer in this process.

With no arguments it runs the default experiment (see ``SimulationConfig``'s defaults).
Settings come, in increasing priority, from the defaults, ``--config FILE``, the named
flags, and ``--set key=value`` overrides.

Every name (rule, attack, codec, topology, ...) and the output directory are checked
before the run starts, so a mistake is one line and exit status 2, never a traceback
after minutes of simulation (see :mod:`gossipfl.cli`). ``--attack NAME`` without
``--byzantine N`` is refused: with no Byzantine peer, nobody would send the attack, and a
run that silently does not do what it was asked is worse than no run. (``--byzantine N``
with no attack adds no one either; that prints a note, because the count alone is also
the setting of an experiment's "no attack" baseline.)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gossipfl.cli.task import TASK_FLAG_HELP

FLAG_KEYS = {
    "peers": "peers",
    "topology": "topology.name",
    "rule": "rule.name",
    "rounds": "rounds",
    "seed": "seed",
    "data": "data.name",
    "partition": "data.partition",
    "alpha": "data.alpha",
    "model": "training.model",
    "backend": "training.backend",
    "protocol": "protocol",
    "mode": "mode",
    "codec": "network.codec",
    "byzantine": "byzantine.count",
    "attack": "byzantine.attack",
    "byzantine_degree": "byzantine.degree",
    "allow_undefended": "byzantine.allow_undefended",
    "transport": "transport",
    "out": "output.dir",
    "task": "task.name",
    "privacy": "privacy.mechanism",
    "epsilon": "privacy.epsilon",
    "secure_averaging": "privacy.secure_averaging",
}


def register(subparsers: Any) -> None:
    from gossipfl.merge import rules_help

    p = subparsers.add_parser(
        "simulate",
        help="run a decentralized-learning experiment in-process",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="merge rules (--rule NAME, parameters with --set rule.KEY=VALUE):\n" + rules_help(),
        description=(
            "Run an experiment with many peers in this process over a simulated network "
            "(virtual time), through the same peer runtime and protocol as live peers. "
            "Writes runs/<timestamp>/ with config.toml, metrics.jsonl, summary.json and "
            "accuracy.png."
        ),
    )
    p.add_argument("--config", metavar="FILE", help="a TOML config (see docs/simulate.md)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set network.loss=0.1 --set rule.b=2 (repeatable)",
    )
    p.add_argument("--peers", type=int, help="number of honest peers")
    p.add_argument("--topology", help="topology family, shipped name or file (see `topology list`)")
    p.add_argument("--rule", help="merge rule (mean, median, trimmed-mean, cs-plus, ...)")
    p.add_argument("--rounds", type=int, help="rounds of local training + gossip")
    p.add_argument("--seed", type=int, help="seed of everything random in the run")
    p.add_argument(
        "--task",
        metavar="REF",
        help=TASK_FLAG_HELP,
    )
    p.add_argument("--data", help="data set: digits (bundled) or synthetic")
    p.add_argument("--partition", help="iid, dirichlet or label")
    p.add_argument("--alpha", type=float, help="Dirichlet concentration for --partition dirichlet")
    p.add_argument("--model", help="softmax or mlp")
    p.add_argument("--backend", help="numpy or torch")
    p.add_argument("--protocol", help="sync, async or epidemic")
    p.add_argument("--mode", help="train, or consensus (no training: random vectors, x <- Wx)")
    p.add_argument("--codec", help="wire codec: fp32, fp16 or int8")
    p.add_argument("--byzantine", type=int, metavar="B", help="add B Byzantine peers")
    p.add_argument("--attack", help="what the Byzantine peers send (see docs/attacks.md)")
    p.add_argument(
        "--byzantine-degree",
        type=int,
        metavar="K",
        help="honest peers each Byzantine peer links to",
    )
    p.add_argument(
        "--allow-undefended",
        action="store_const",
        const=True,
        help="run a placement that is refused otherwise: an honest node without a local "
        "honest majority (d < 2b+1), or, for cs-plus and clipped-gossip, Byzantine weight at "
        "or above the honest spectral gap",
    )
    p.add_argument(
        "--privacy",
        metavar="MECHANISM",
        help="dp-sgd (each sample protected) or model-noise (each peer's whole data, "
        "Muffliato's noise on the shared model): differential privacy, see docs/privacy.md",
    )
    p.add_argument(
        "--epsilon",
        type=float,
        help="the privacy budget per peer; the noise is calibrated to spend it",
    )
    p.add_argument(
        "--secure-averaging",
        action="store_const",
        const=True,
        help="peers send masked shares, so each sees only its neighbours' weighted sum "
        "(needs --rule mean; see docs/privacy.md)",
    )
    p.add_argument("--transport", help="memory (default) or libp2p (one OS process per peer)")
    p.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="split the run over N shards by graph partition, each a process of this "
        "machine (or a Ray actor with --ray): N cores at work, the metrics of the unsharded "
        "run bit for bit (docs/simulate.md)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the --shards as Ray actors, one CPU each: on the cluster at ADDRESS "
        "(auto, host:port, ray://host:port), or without ADDRESS on RAY_ADDRESS or a local "
        "Ray started for this run (needs gossipfl[ray])",
    )
    p.add_argument("--out", metavar="DIR", help="where run directories go (default: runs)")
    p.add_argument("--no-plot", action="store_true", help="do not draw accuracy.png")
    p.add_argument(
        "--json",
        action="store_true",
        help="print exactly one JSON object (the summary) on stdout; progress goes to stderr",
    )
    p.set_defaults(handler=run)


def name_choices() -> dict[str, tuple[str, ...]]:
    """The valid names of every setting that takes a name, by config key."""
    from gossipfl.attacks import ATTACKS, NO_ATTACK
    from gossipfl.data import DATASETS, PARTITIONS
    from gossipfl.learning.learner import MODELS
    from gossipfl.merge import RULES
    from gossipfl.privacy.section import PRIVACY_MECHANISMS
    from gossipfl.protocol import PROTOCOLS
    from gossipfl.wire.codecs import DEFAULT_CODECS

    return {
        "rule.name": tuple(RULES),
        "byzantine.attack": (NO_ATTACK, *ATTACKS),
        "network.codec": DEFAULT_CODECS.names,
        "protocol": tuple(PROTOCOLS),
        "mode": ("train", "consensus"),
        "transport": ("memory", "libp2p"),
        "data.name": tuple(DATASETS),
        "data.partition": tuple(PARTITIONS),
        "training.model": tuple(MODELS),
        "training.backend": tuple(dict.fromkeys(b for bs in MODELS.values() for b in bs)),
        "privacy.mechanism": PRIVACY_MECHANISMS,
    }


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def check_names(values: dict[str, str]) -> None:
    """Refuse a name that is not one of its setting's choices, with a "did you mean".

    Checked twice: on the flags' values before the config is built (its own checks of
    ``mode`` and ``transport`` have no suggestion), and on the built config (names from
    ``--set`` and ``--config``, most of which it leaves to the run to find).
    """
    from gossipfl.errors import ConfigError, did_you_mean

    flags = {key: flag for flag, key in FLAG_KEYS.items()}
    for key, choices in name_choices().items():
        value = values.get(key)
        if value is None or _canonical(str(value)) in choices:
            continue
        given = f"--{flags[key].replace('_', '-')}" if key in flags else key
        raise ConfigError(
            f"{given} {value!r} is not one of: {', '.join(choices)}{did_you_mean(value, choices)}"
        )


def config_from_args(args: argparse.Namespace) -> Any:
    from gossipfl.simulation import SimulationConfig

    check_names(
        {key: value for flag, key in FLAG_KEYS.items() if (value := getattr(args, flag, None))}
    )
    config = SimulationConfig.from_toml(args.config) if args.config else SimulationConfig()
    assignments = [
        f"{key}={json.dumps(value) if isinstance(value, str | bool) else value}"
        for flag, key in FLAG_KEYS.items()
        if (value := getattr(args, flag, None)) is not None
    ]
    config = config.with_overrides([*assignments, *args.overrides])
    if args.no_plot:
        config.output.plot = False
    return config


def is_showcase(args: argparse.Namespace) -> bool:
    """No setting given at all (output flags aside): run the robustness showcase."""
    settings = [flag for flag in FLAG_KEYS if flag != "out"]
    return (
        args.config is None
        and not args.overrides
        and all(getattr(args, flag, None) is None for flag in [*settings, "shards", "ray"])
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from gossipfl.simulation import run_simulation, write_run
    from gossipfl.simulation.results import new_run_dir

    err = Console(stderr=True)
    if is_showcase(args):
        from gossipfl.cli.showcase import run_showcase

        if args.out is not None:
            _check_out(args.out)
        return run_showcase(args, _run_with_progress, err, Console())
    config = config_from_args(args)
    preflight(config, args)
    if args.shards is not None:
        from gossipfl.simulation.sharded import check_shardable

        check_shardable(config, args.shards)
    elif args.ray is not None:
        from gossipfl.errors import ConfigError

        raise ConfigError("--ray runs the shards of a run: add --shards N (e.g. --shards 2)")
    _report_placement(config, err)
    if config.transport == "libp2p":
        from gossipfl.simulation.processes import run_processes

        # Each peer is a `gossipfl start` process with its home under <run dir>/peers.
        run_dir = new_run_dir(config.output.dir)

        def run_libp2p(cfg: Any, progress: Any) -> Any:
            return run_processes(cfg, progress=progress, workdir=run_dir / "peers")

        result = _run_with_progress(config, err, run_libp2p)
    elif args.shards is not None:
        result = _run_sharded(config, args, err)
        run_dir = new_run_dir(config.output.dir)
    else:
        result = _run_with_progress(config, err, run_simulation)
        run_dir = new_run_dir(config.output.dir)
    write_run(result, run_dir, plot=config.output.plot)
    summary = result.summary()
    summary["run_dir"] = str(run_dir)
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        _print_table(result, Console())
        Console().print(f"\nrun directory: [bold]{run_dir}[/bold]")
    return 0


def _run_sharded(config: Any, args: argparse.Namespace, console: Any) -> Any:
    """``--shards N``, as processes of this machine or (``--ray``) as Ray actors."""
    from gossipfl.simulation.sharded import ray_backend, run_sharded

    if args.ray is None:
        return _run_with_progress(
            config, console, lambda cfg, progress: run_sharded(cfg, args.shards, progress=progress)
        )
    with ray_backend(args.ray or None) as backend:
        return _run_with_progress(
            config,
            console,
            lambda cfg, progress: run_sharded(cfg, args.shards, progress=progress, backend=backend),
        )


def preflight(config: Any, args: argparse.Namespace) -> None:
    """Every check that needs the built config but not the run: names from any source,
    an attack with no one to send it, a topology that cannot have this many peers, and
    the output directory."""
    from gossipfl.errors import ConfigError

    by = config.byzantine
    check_names(
        {
            "rule.name": config.rule.name,
            "byzantine.attack": by.attack,
            "network.codec": config.network.codec,
            "protocol": config.protocol,
            "data.name": config.data.name,
            "data.partition": config.data.partition,
            "training.model": config.training.model,
            "training.backend": config.training.backend,
        }
    )
    if _canonical(by.attack) != "none" and by.count == 0:
        raise ConfigError(
            f"--attack {by.attack} needs Byzantine peers to send it, and there are none: add "
            "--byzantine N (e.g. --byzantine 2), or drop --attack"
        )
    default = type(config)().topology.name
    named = args.topology is not None or config.topology.name != default
    topology = check_topology_size(config, named=named)
    check_roles(config, topology)
    _check_out(config.output.dir)


def check_roles(config: Any, topology: Any) -> None:
    """Build what the run builds first (the rule, the attack, the learner settings) and
    check that the rule fits every honest node, as the run would a moment later, but
    before the progress bar and the placement report are printed."""
    from gossipfl.attacks import make_attack
    from gossipfl.merge import make_rule
    from gossipfl.simulation.byzantine import check_defended, place_byzantine
    from gossipfl.simulation.runner import check_rule_fits

    if config.mode == "train" and not config.task.name.strip():
        config.learner_config().validate()
    make_rule(config.rule.name, **config.rule.params)
    if _canonical(config.byzantine.attack) != "none":
        make_attack(config.byzantine.attack, **config.byzantine.params)
    placement = place_byzantine(config, topology)
    check_defended(config, placement)
    check_rule_fits(config, placement.topology if placement else topology, config.peers)


def _check_out(directory: str) -> None:
    from pathlib import Path

    from gossipfl.daemon.config import check_writable_directory

    check_writable_directory(Path(directory).expanduser(), what="--out (output.dir)")


FITS_MOST = ("ring", "exponential", "complete")
"""Families to suggest when a topology cannot have the requested number of peers."""


def check_topology_size(config: Any, *, named: bool) -> Any:
    """Build the run's topology now (and return it). If it cannot have ``config.peers``
    peers but could have a few more, say which topology it is, the smallest count that
    works, and a family that fits the count as it is: the default torus needs 9 peers,
    and ``--peers 8`` alone does not say that a torus is involved."""
    from gossipfl.errors import ConfigError
    from gossipfl.simulation.runner import build_topology_for
    from gossipfl.topology.families import get_family

    try:
        return build_topology_for(config)
    except ConfigError as exc:
        name = config.topology.name if config.protocol != "epidemic" else "epidemic"
        if get_family(name) is None:  # a misspelt name, a file: nothing to count
            raise
        bigger = _smallest_size(config, build_topology_for)
        if bigger is None:
            raise
        which = f"the {name} topology" + ("" if named else " (the default)")
        fits = [
            family
            for family in FITS_MOST
            if _builds(config.with_overrides([f"topology.name={family}"]), build_topology_for)
        ]
        other = f", or --topology {fits[0]} (fits {config.peers} peers)" if fits else ""
        raise ConfigError(
            f"{which} cannot have {config.peers} peers ({exc}): use --peers {bigger} (the next "
            f"count it accepts){other}"
        ) from None


def _builds(config: Any, build: Any) -> bool:
    from gossipfl.errors import ConfigError

    try:
        build(config)
    except ConfigError:
        return False
    return True


def _smallest_size(config: Any, build: Any) -> int | None:
    """The smallest peer count above ``config.peers`` the run's topology accepts."""
    from gossipfl.cli.topology import smallest_size

    return smallest_size(
        lambda peers: build(config.with_overrides([f"peers={peers}"])), config.peers
    )


def _report_placement(config: Any, console: Any) -> None:
    """With Byzantine peers: print δ_max and the undefended honest nodes before the run."""
    from gossipfl.simulation.byzantine import place_byzantine
    from gossipfl.simulation.runner import build_topology_for

    placement = place_byzantine(config, build_topology_for(config))
    if placement is not None:
        from gossipfl.cli.showcase import print_placement

        print_placement(placement, config, console)
    elif config.byzantine.count:
        console.print(
            f"note: byzantine.count = {config.byzantine.count} but the attack is "
            f"{config.byzantine.attack!r}: no Byzantine peers are added (name one with --attack)"
        )


def _run_with_progress(
    config: Any, console: Any, run_simulation: Any, *, label: str = "simulating"
) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn(f"[bold]{label}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rounds"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("run", total=config.rounds, status="")

        def on_round(summary: Any) -> None:
            status = ""
            if summary.mean_acc is not None:
                status = f"acc {100 * summary.mean_acc:5.1f}%"
            if summary.epsilon is not None:
                status += f" ε {summary.epsilon:.2f}"
            progress.update(task, completed=summary.round + 1, status=status)

        try:
            return run_simulation(config, progress=on_round)
        except BaseException:
            # The error gets its one line; a half-drawn bar above it would be a second.
            # (On a terminal the bar stays: silencing the console there would also
            # swallow the escape that shows the cursor again.)
            if not progress.console.is_terminal:
                progress.console.quiet = True
            raise


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}%" if pct else f"{x:.3g}"


def _print_table(result: Any, console: Any) -> None:
    from rich.table import Table

    cfg = result.config
    evaluated = [s for s in result.summaries if s.mean_acc is not None]
    title = (
        f"{cfg.peers} peers · {cfg.topology.name} · rule {cfg.rule.name} · {cfg.protocol} · "
        f"{cfg.data_label()}/{cfg.data.partition}"
    )
    if cfg.byzantine.count:
        title += f" · {cfg.byzantine.count} Byzantine ({cfg.byzantine.attack})"
    table = Table(title=title)
    table.add_column("round", justify="right")
    if cfg.mode == "train":
        table.add_column("mean acc", justify="right")
        table.add_column("worst peer", justify="right")
        table.add_column("avg model", justify="right")
    private = any(s.epsilon is not None for s in result.summaries)
    if private:
        table.add_column("ε (max)", justify="right")
    table.add_column("consensus dist.", justify="right")
    table.add_column("missing", justify="right")
    rows = evaluated if cfg.mode == "train" else result.summaries
    if rows:
        step = max(1, len(rows) // 10)
        picked = rows[step - 1 :: step]
        if picked[-1] is not rows[-1]:
            picked.append(rows[-1])
        for s in picked:
            cells = [str(s.round + 1)]
            if cfg.mode == "train":
                cells += [_fmt(s.mean_acc), _fmt(s.min_acc), _fmt(s.avg_model_acc)]
            if private:
                cells.append(_fmt(s.epsilon, pct=False))
            cells += [_fmt(s.consensus_distance, pct=False), str(s.missing)]
            table.add_row(*cells)
    console.print(table)
    summary = result.summary()
    # only the in-memory network has a virtual clock; over libp2p all time is wall time
    simulated = f"simulated {summary['virtual_s']:.1f}s · " if cfg.transport == "memory" else ""
    console.print(
        f"wall {summary['wall_s']:.1f}s · {simulated}"
        f"{summary['bytes_sent'] / 1e6:.1f} MB sent · spectral gap "
        f"{_fmt(summary['spectral_gap'], pct=False)}"
    )
    if private:
        mechanism = "DP-SGD" if cfg.privacy.mechanism == "dp-sgd" else "noise on the model"
        console.print(
            f"differential privacy ({mechanism}): every peer within epsilon = "
            f"{summary['epsilon']:.3g} at delta = {summary['delta']:g} (mean "
            f"{summary['epsilon_mean']:.3g}), noise multiplier "
            f"{summary['noise_multiplier_mean']:.3g} (mean), clip {summary['dp_clip']:g}"
        )
    if cfg.mode == "consensus":
        console.print(
            f"consensus rate: measured {_fmt(summary.get('consensus_rate'), pct=False)}, "
            f"predicted {_fmt(summary.get('predicted_rate'), pct=False)}; "
            f"mean drift {summary.get('mean_drift', 0):.2e}"
        )
