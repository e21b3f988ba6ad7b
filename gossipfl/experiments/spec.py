"""Experiment files: a base configuration and a grid of variations.

An experiment file is TOML::

    name = "topologies"
    description = "accuracy vs rounds on five topologies"
    [base]                    # any `gossipfl simulate` config keys
    peers = 64
    rounds = 200
    [grid]                    # dotted key -> list of values; runs = cartesian product
    "topology.name" = ["ring", "torus", "exponential"]
    seed = [0, 1, 2]

    [[exclude]]               # optional: grid points to skip (all keys must match)
    "topology.name" = "ring"
    seed = 2

Every grid point becomes one :class:`RunPoint`: a full
:class:`~gossipfl.simulation.SimulationConfig` and a stable id built from the varied values
(``topology=ring,seed=0``), which names its run directory. The id depends only on the
values, so re-running an experiment finds the runs it already finished.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossipfl.configfile import Scalar, read_toml
from gossipfl.errors import ConfigError
from gossipfl.simulation import SimulationConfig

_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


@dataclass(frozen=True)
class RunPoint:
    """One run of an experiment."""

    id: str
    values: dict[str, Scalar]
    """The grid values of this run, by dotted key."""
    config: SimulationConfig = field(compare=False)


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    base: dict[str, Any]
    grid: dict[str, list[Scalar]]
    description: str = ""
    exclude: tuple[dict[str, Scalar], ...] = ()
    source: Path | None = None

    @classmethod
    def from_toml(cls, path: str | Path, *, check: bool = True) -> ExperimentSpec:
        from gossipfl.tasks.section import anchor_task_files, anchored

        path = Path(path)
        data = read_toml(path, what="experiment file")
        folder = path.resolve().parent  # task files are relative to the experiment file
        if isinstance(data.get("base"), dict):
            anchor_task_files(data["base"], folder)
        grid = data.get("grid")
        if isinstance(grid, dict) and isinstance(grid.get("task.name"), list):
            grid["task.name"] = [
                anchored(v, folder) if isinstance(v, str) else v for v in grid["task.name"]
            ]
        return cls.from_dict(data, source=path, check=check)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, source: Path | None = None, check: bool = True
    ) -> ExperimentSpec:
        """The experiment ``data`` describes. With ``check`` (the default), every grid
        point must be possible (:func:`~gossipfl.experiments.runner.preflight`: it builds
        the topologies); reading back a finished experiment to plot it does not need that."""
        known = {"name", "description", "base", "grid", "exclude"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown key(s) in experiment file: {', '.join(unknown)}; "
                f"expected {', '.join(sorted(known))}"
            )
        name = data.get("name") or (source.stem if source else "")
        if not isinstance(name, str) or not name or _UNSAFE.search(name):
            raise ConfigError(
                f"an experiment needs a name of letters, digits, '.', '-', got {name!r}"
            )
        base = data.get("base", {})
        grid = data.get("grid", {})
        if not isinstance(base, dict) or not isinstance(grid, dict):
            raise ConfigError("[base] and [grid] must be tables")
        clean_grid: dict[str, list[Scalar]] = {}
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid key {key!r} needs a non-empty list of values")
            if len(set(map(repr, values))) != len(values):
                raise ConfigError(f"grid key {key!r} lists a value twice")
            clean_grid[key] = list(values)
        exclude = data.get("exclude", [])
        if not isinstance(exclude, list) or not all(isinstance(e, dict) for e in exclude):
            raise ConfigError("[[exclude]] entries must be tables of grid values")
        spec = cls(
            name=name,
            base=base,
            grid=clean_grid,
            description=str(data.get("description", "")),
            exclude=tuple(exclude),
            source=source,
        )
        if check:
            from gossipfl.experiments.runner import preflight

            preflight(spec.points())  # every grid point must be possible before anything runs
        return spec

    def to_toml(self) -> str:
        """The experiment file of this spec (written next to its runs when it was not
        read from a file)."""
        import tomli_w

        data: dict[str, Any] = {"name": self.name}
        if self.description:
            data["description"] = self.description
        data["base"] = self.base
        data["grid"] = self.grid
        if self.exclude:
            data["exclude"] = list(self.exclude)
        return tomli_w.dumps(data)

    def points(self) -> list[RunPoint]:
        """Every run, in a stable order (grid order, then value order)."""
        try:
            base = SimulationConfig.from_dict(self.base)
        except ConfigError as exc:
            raise ConfigError(f"[base] of experiment {self.name!r}: {exc}") from None
        keys = list(self.grid)
        short = _short_names(keys)
        points: list[RunPoint] = []
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            values = dict(zip(keys, combo, strict=True))
            if any(all(values.get(k) == v for k, v in ex.items()) for ex in self.exclude):
                continue
            run_id = ",".join(f"{short[k]}={_token(v)}" for k, v in values.items()) or "run"
            try:
                config = base.with_overrides(_assignment(k, v) for k, v in values.items())
            except ConfigError as exc:
                raise ConfigError(f"grid point {run_id}: {exc}") from None
            points.append(RunPoint(run_id, values, config))
        return points


def _assignment(key: str, value: Scalar) -> str:
    if isinstance(value, str):
        return f'{key}="{value}"'
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    return f"{key}={value!r}"


def _token(value: Scalar) -> str:
    return _UNSAFE.sub("_", str(value).lower() if isinstance(value, bool) else str(value))


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """``rule.name`` -> ``rule``, ``byzantine.attack`` -> ``attack``; full keys if two
    short names would collide."""
    short = {
        k: k.split(".")[-2] if k.endswith(".name") and "." in k else k.rsplit(".", 1)[-1]
        for k in keys
    }
    if len(set(short.values())) != len(short):
        return {k: k for k in keys}
    return short
