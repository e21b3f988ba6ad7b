"""``gossipfl new NAME``: start a task of your own from a commented template.

Writes ``NAME.py`` (a task: its parameters, its data set, its model, each commented with
what to change) and ``NAME.experiment.toml`` (a 2 x 2 sweep of it), both runnable as they
are, and prints the commands that check, simulate, sweep and deploy it.
"""

from __future__ import annotations

import argparse
import keyword
import re
from pathlib import Path
from typing import Any

from gossipfl.errors import ConfigError

__all__ = ["register", "scaffold"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def register(subparsers: Any) -> None:
    """Add ``new`` to the CLI."""
    parser = subparsers.add_parser(
        "new",
        help="write a task of your own from a commented template, and say how to run it",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("name", metavar="NAME", help="the task's name, e.g. sensor-cnn")
    parser.add_argument(
        "--dir", default=".", metavar="DIR", help="where to write the files (default: here)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.set_defaults(handler=_run)


def names(name: str) -> tuple[str, str]:
    """``(module, Class)`` for a task name: ``sensor-cnn`` -> ``sensor_cnn``, ``SensorCnn``."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"a task name is letters, digits, '-' and '_', starting with a letter; got {name!r}"
        )
    module = name.replace("-", "_").lower()
    if keyword.iskeyword(module):
        raise ConfigError(f"{name!r} is a Python keyword; choose another task name")
    cls = "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_]+", name) if part)
    return module, cls


def scaffold(name: str, directory: Path, *, force: bool = False) -> tuple[Path, Path, str]:
    """Write the task module and its experiment file; return their paths and the class."""
    module, cls = names(name)
    task_file = directory / f"{module}.py"
    sweep_file = directory / f"{module}.experiment.toml"
    existing = [p for p in (task_file, sweep_file) if p.exists()]
    if existing and not force:
        raise ConfigError(
            f"{existing[0]} exists already; choose another name, or --force to overwrite it"
        )
    directory.mkdir(parents=True, exist_ok=True)
    task_file.write_text(TASK_TEMPLATE.format(cls=cls, module=module, name=name))
    sweep_file.write_text(SWEEP_TEMPLATE.format(cls=cls, module=module, name=name))
    return task_file, sweep_file, cls


def _run(args: argparse.Namespace) -> int:
    task_file, sweep_file, cls = scaffold(args.name, Path(args.dir), force=args.force)
    ref = f"{_shown(task_file)}:{cls}"
    print(f"wrote {_shown(task_file)}: task {cls} (edit its dataset() and model())")
    print(f"wrote {_shown(sweep_file)}: a 2 x 2 sweep of it (rule x learning rate)")
    print()
    print("check it (builds the data and the model, prints their shapes):")
    print(f"  gossipfl task show {ref}")
    print("simulate it (9 peers on a torus, in one process):")
    print(f"  gossipfl simulate --task {ref} --peers 9 --rounds 30")
    print("sweep it (4 runs, a table and plots):")
    print(f"  gossipfl experiment run {_shown(sweep_file)}")
    print("deploy it: on the first host (it prints the join command for the others)")
    print(f"  gossipfl start --task {ref}")
    print("  and on each other host, with the task file copied to the same place:")
    print("  the join command the first host printed, plus --data-file FILE for its own data")
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


TASK_TEMPLATE = '''\
"""{cls}: a gossipfl task (written by `gossipfl new {name}`; make it yours).

A task says what every peer trains: its parameters (the dataclass fields), its data set
(dataset(), and local_dataset() for a peer that brings its own file) and its model
(model()). Training -- mini-batch SGD on cross-entropy -- and evaluation (accuracy and
loss on the test split) come with ClassificationTask. Check it, then run it:

    gossipfl task show {module}.py:{cls}
    gossipfl simulate --task {module}.py:{cls} --peers 9 --rounds 30
    gossipfl experiment run {module}.experiment.toml
    gossipfl start --task {module}.py:{cls}

Parameters are set with --set task.params.NAME=VALUE, or under [task.params] in a
config file, and swept like any other key ("task.params.lr" = [0.02, 0.1]). Every peer
must build the same model from the same parameters: the job's seed initializes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from gossipfl.data import Dataset
from gossipfl.merge.base import param
from gossipfl.tasks import ClassificationTask, from_arrays, read_table


# kw_only and eq=False are required: parameters are keyword-only, and a task is compared
# by its parameters (task.settings()), not by dataclass equality.
@dataclass(kw_only=True, eq=False)
class {cls}(ClassificationTask):
    """One line saying what this task learns."""

    # Parameters: a default and a sentence each. Inherited ones: lr (0.05), momentum (0.9),
    # weight_decay (0), batch_size (32), local_steps (1 mini-batch per round).
    hidden: int = param(64, "units of the hidden layer")
    samples: int = param(3000, "samples generated (train and test)")

    def dataset(self, *, seed: int) -> Dataset:
        """The whole data set of a simulation: gossipfl splits its training part among
        the peers (iid, Dirichlet or by label) and tests every peer on its test part.

        Replace the generated data below by your own, for example:
            return read_table("data/my_table.csv", label="outcome")   # .csv .parquet .npz
            return from_arrays(x, y, name="mine")                      # numpy arrays
            return from_torch_dataset(train_set, test_set)             # torch datasets
        Never download at run time: every peer must get the same data offline.
        """
        rng = np.random.default_rng(7)  # fixed: the same data in every run and peer
        centers = rng.normal(0.0, 2.0, size=(4, 10))  # 4 classes in 10 dimensions
        y = np.arange(self.samples) % 4
        x = centers[y] + rng.normal(0.0, 1.5, size=(self.samples, 10))
        return from_arrays(x.astype(np.float32), y, seed=0, name="{name}")

    def local_dataset(self, path: Path, *, seed: int) -> Dataset:
        """The data of one peer started with `gossipfl start --data-file PATH`: all of it
        is trained on. List the class names so that every peer numbers them alike, even
        one whose file lacks a class."""
        return read_table(path, classes=[0, 1, 2, 3])

    def model(self, data: Dataset) -> nn.Module:
        """A fresh torch model for data.input_shape and data.n_classes. Build it with
        torch's own initializers: every peer then starts from the same weights."""
        features = int(np.prod(data.input_shape))
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, data.n_classes),
        )
'''

SWEEP_TEMPLATE = """\
# A sweep of the task in {module}.py (written by `gossipfl new {name}`).
#   gossipfl experiment show {module}.experiment.toml   # list the runs
#   gossipfl experiment run {module}.experiment.toml    # run them: a table, then plots
# Every key of `gossipfl simulate` goes under [base]; [grid] varies dotted keys.
name = "{name}"
description = "the {cls} task: two merge rules x two learning rates, 8 peers"

[base]
peers = 8
rounds = 30

[base.task]
name = "{module}.py:{cls}"   # relative to this file

[base.topology]
name = "exponential"

[base.data]
partition = "dirichlet"
alpha = 1.0

[grid]
"rule.name" = ["mean", "trimmed-mean"]
"task.params.lr" = [0.02, 0.1]
"""
