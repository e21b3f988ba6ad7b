"""Experiments: sweeps of simulations over a grid of settings, and their plots.

:class:`ExperimentSpec` reads an experiment file (a base config plus a grid),
:func:`run_experiment` runs its grid points in parallel processes, resumably (and stops
them all on Ctrl+C or SIGTERM), or as Ray tasks on a cluster (:class:`RayOptions`; Ray is
the optional extra ``gossipfl[ray]``, imported only then), and
:func:`plot_directory` draws a run or a whole experiment. The CLI front ends are
``gossipfl experiment run`` and ``gossipfl plot``.
"""

from __future__ import annotations

from gossipfl.experiments.cluster import RayOptions
from gossipfl.experiments.plots import plot_directory
from gossipfl.experiments.progress import RunEvent, SweepProgress
from gossipfl.experiments.runner import (
    ExperimentInterrupted,
    ExperimentResult,
    default_workers,
    run_experiment,
)
from gossipfl.experiments.spec import ExperimentSpec, RunPoint

__all__ = [
    "ExperimentInterrupted",
    "ExperimentResult",
    "ExperimentSpec",
    "RayOptions",
    "RunEvent",
    "RunPoint",
    "SweepProgress",
    "default_workers",
    "plot_directory",
    "run_experiment",
]
