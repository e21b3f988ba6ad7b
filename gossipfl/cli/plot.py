"""``gossipfl plot``: draw the plots of a run or experiment directory."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plot",
        help="plot a run directory or an experiment directory",
        description=(
            "For a run directory: accuracy and consensus distance per round. For an "
            "experiment directory: accuracy and consensus curves per grid point (seeds "
            "averaged), rule x attack heatmaps, topology comparison. PNG and SVG. An "
            "unfinished experiment is plotted from the runs that finished; the missing "
            "ones are listed."
        ),
    )
    p.add_argument("directory", metavar="RUN_DIR")
    p.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=["png", "svg", "pdf"],
        help="output format (repeatable; default: png and svg)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write the plots and list them; for an unfinished experiment (an interrupted
    sweep), plot the runs that finished and say which are missing."""
    import sys
    from pathlib import Path

    from gossipfl.experiments import plot_directory
    from gossipfl.experiments.plots import is_experiment_directory, load_experiment

    directory = Path(args.directory)
    for path in plot_directory(directory, formats=tuple(args.formats or ("png", "svg"))):
        print(path)
    if is_experiment_directory(directory):
        exp = load_experiment(directory)
        if exp.missing:
            shown = ", ".join(exp.missing[:5]) + (", ..." if len(exp.missing) > 5 else "")
            print(
                f"gossipfl: {len(exp.missing)} of {exp.total} runs missing (not finished: "
                f"{shown}); plotted the {len(exp.rows)} that finished. "
                "`gossipfl experiment run` on the same file finishes them.",
                file=sys.stderr,
            )
    return 0
