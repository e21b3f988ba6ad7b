"""``gossipfl topology``: browse the shipped topologies and inspect any topology.

``gossipfl topology list`` prints the ready-made topologies (``--families`` the families
and their parameters); ``gossipfl topology show SPEC`` builds one and prints its facts:
size, degrees, diameter, spectral gap and the rounds it predicts to reach consensus,
as a table or (``--json``) one JSON object, optionally drawing it to a PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from typing import Any

from gossipfl.errors import ConfigError

__all__ = ["parse_param", "register", "smallest_size"]


def parse_param(text: str) -> tuple[str, str]:
    """``"k=4"`` → ``("k", "4")``; values stay strings and are validated by the family."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--param expects key=value, got {text!r}; e.g. --param k=2")
    return key.strip(), value.strip()


def smallest_size(build: Callable[[int], object], peers: int, *, tries: int = 256) -> int | None:
    """The smallest peer count above ``peers`` for which ``build(count)`` succeeds (None
    if none does within ``tries``): what to suggest when a family cannot have ``peers``
    nodes (a torus needs 9, a hypercube a power of two). Trying beats parsing the
    family's message, and costs little: small graphs build in microseconds."""
    for count in range(peers + 1, peers + 1 + tries):
        try:
            build(count)
        except ConfigError:
            continue
        return count
    return None


def _build(args: argparse.Namespace, params: dict[str, str]) -> Any:
    """The topology of ``topology show``; a family that cannot have ``--peers`` nodes is
    refused with the smallest count that works."""
    from gossipfl.topology import build_topology
    from gossipfl.topology.families import get_family

    def build(peers: int | None) -> Any:
        return build_topology(args.spec, peers=peers, seed=args.seed, params=params)

    try:
        return build(args.peers)
    except ConfigError as exc:
        if args.peers is None or get_family(args.spec) is None:
            raise
        bigger = smallest_size(build, args.peers)
        if bigger is None:
            raise
        raise ConfigError(
            f"{args.spec} cannot have {args.peers} peers ({exc}): use --peers {bigger} (the "
            "next count it accepts), or another family (`gossipfl topology list --families`)"
        ) from None


def _plot(topology: Any, target: str) -> str:
    """Draw ``topology`` to ``target``; an unwritable path is the user's to fix."""
    from pathlib import Path

    from gossipfl.topology.plot import draw_topology

    directory = Path(target).expanduser().parent
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        raise ConfigError(
            f"--plot {target}: cannot write there ({directory} is not a directory you can "
            "write to); choose a directory you can write to"
        )
    return str(draw_topology(topology, target))


def register(subparsers: Any) -> None:
    """Add ``topology list`` and ``topology show`` to the CLI."""
    parser = subparsers.add_parser(
        "topology",
        help="list the shipped topologies, or show one's spectral gap, degrees and diameter",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    commands = parser.add_subparsers(dest="topology_command", metavar="ACTION", required=True)

    listing = commands.add_parser("list", help="the shipped, ready-made topologies")
    listing.add_argument(
        "--families", action="store_true", help="list the families and their parameters instead"
    )
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(handler=_list)

    show = commands.add_parser(
        "show",
        help="build a topology and print its facts",
        description=(
            "SPEC is a family name (ring, torus, base-k, epidemic, ...), a shipped name "
            "(torus-8x8, see `gossipfl topology list`) or a path to a .toml definition, an "
            "edge list or a .graphml file. For time-varying topologies the graph facts "
            "describe the union of one period's edges and round_degree the per-round cost."
        ),
    )
    show.add_argument("spec", metavar="SPEC")
    show.add_argument("--peers", type=int, default=None, help="number of peers (nodes)")
    show.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a family parameter, e.g. --param k=2 (repeatable)",
    )
    show.add_argument("--seed", type=int, default=None, help="seed for random families")
    show.add_argument(
        "--tolerance",
        type=float,
        default=1e-6,
        help="consensus error the predicted round count aims for (default 1e-6)",
    )
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.add_argument("--plot", metavar="FILE.png", default=None, help="draw the graph to a PNG")
    show.set_defaults(handler=_show)


def _degree_text(summary: dict[str, Any]) -> str:
    if summary["time_varying"]:
        return f"≤{summary['round_degree']['max']} per round"
    low, high = summary["degree"]["min"], summary["degree"]["max"]
    return str(low) if low == high else f"{low}–{high}"


def _list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from gossipfl.topology import FAMILIES, build_topology, describe_topology, list_topologies

    console = Console()
    if args.families:
        families: list[dict[str, Any]] = [
            {
                "name": family.name,
                "summary": family.summary,
                "time_varying": family.time_varying,
                "random": family.random,
                "params": {p.name: p.help for p in family.params},
            }
            for family in FAMILIES.values()
        ]
        if args.json:
            print(json.dumps({"families": families}, indent=2, ensure_ascii=False))
            return 0
        table = Table(title="topology families (gossipfl topology show FAMILY --peers N)")
        for column in ("family", "parameters", "description"):
            table.add_column(column)
        for family in FAMILIES.values():
            names = ", ".join(p.name for p in family.params) or "—"
            table.add_row(family.name, names, family.summary)
        console.print(table)
        return 0
    rows = []
    for shipped in list_topologies():
        summary = describe_topology(build_topology(shipped.path))
        rows.append(
            {
                "name": shipped.name,
                "family": shipped.family,
                "nodes": summary["nodes"],
                "degree": _degree_text(summary),
                "description": shipped.description,
            }
        )
    if args.json:
        print(json.dumps({"topologies": rows}, indent=2, ensure_ascii=False))
        return 0
    table = Table(title="shipped topologies (gossipfl topology show NAME)")
    for column, justify in (
        ("name", "left"),
        ("family", "left"),
        ("nodes", "right"),
        ("degree", "right"),
        ("description", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            row["name"], row["family"], str(row["nodes"]), row["degree"], row["description"]
        )
    console.print(table)
    return 0


def _format(value: Any) -> str:
    if isinstance(value, float):
        if value == 0.0 or math.isinf(value):
            return str(value)
        return f"{value:.6g}"
    if value is None:
        return "—"
    return str(value)


def _show(args: argparse.Namespace) -> int:
    from gossipfl.topology import describe_topology

    if not 0.0 < args.tolerance < 1.0:
        raise ConfigError(f"--tolerance must be in (0, 1), got {args.tolerance}; e.g. 1e-6")
    params = dict(parse_param(item) for item in args.param)
    topology = _build(args, params)
    summary = describe_topology(topology, tolerance=args.tolerance)
    if args.plot:
        summary["plot"] = _plot(topology, args.plot)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    _print_summary(summary)
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    degree = summary["degree"]
    rows: list[tuple[str, str]] = [
        ("family", summary["family"]),
        ("nodes", _format(summary["nodes"])),
        ("graph facts describe", summary["graph_scope"]),
        ("edges", _format(summary["edges"])),
        ("directed", "yes" if summary["directed"] else "no"),
        ("degree min/mean/max", f"{degree['min']} / {degree['mean']:.3g} / {degree['max']}"),
    ]
    if summary["time_varying"]:
        per_round = summary["round_degree"]
        rows.append(
            (
                "per-round degree",
                f"{per_round['min']} / {per_round['mean']:.3g} / {per_round['max']}",
            )
        )
        period = summary["period"]
        rows.append(("period", "aperiodic" if period == 0 else f"{period} rounds"))
    rows += [
        ("connected", "yes" if summary["connected"] else "[bold red]no[/]"),
        ("diameter", _format(summary["diameter"])),
        ("weighting", _format(summary["weighting"])),
        ("spectral gap", _format(summary["spectral_gap"])),
        ("  defined as", summary["spectral_gap_kind"]),
    ]
    if summary["finite_time_rounds"] is not None:
        rows.append(("exact average after", f"{summary['finite_time_rounds']} rounds"))
    rows.append(
        (
            f"rounds to {summary['consensus_tolerance']:g}",
            _format(summary["predicted_rounds"])
            + ("" if summary["predicted_rounds"] is not None else " (never: gap is 0)"),
        )
    )
    if "measured_rate" in summary:
        rows.append(("measured contraction", _format(summary["measured_rate"])))
    if "plot" in summary:
        rows.append(("plot", summary["plot"]))
    table = Table(
        title=f"{summary['name']}: {summary['description']}".rstrip(": "), show_header=False
    )
    table.add_column("fact", style="bold")
    table.add_column("value")
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
