"""``gossipfl task``: the tasks every command can train (see docs/tasks.md).

``gossipfl task list`` prints the built-in tasks and their parameters; ``gossipfl task
show REF`` loads a task by reference (a built-in name, ``package.module:Class`` or
``path/to/task.py:Class``), builds its data set and model, and prints what it found:
the way to check a task of your own before simulating it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["TASK_FLAG_HELP", "register"]

TASK_FLAG_HELP = (
    "your own model and data: a built-in task (`gossipfl task list`), package.module:Class "
    "or path/to/task.py:Class; parameters with --set task.params.KEY=VALUE"
)
"""The help of ``--task``, the same in every command that takes one."""


def register(subparsers: Any) -> None:
    """Add ``task list`` and ``task show`` to the CLI."""
    parser = subparsers.add_parser(
        "task",
        help="list the built-in tasks, or check one of your own",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    commands = parser.add_subparsers(dest="task_command", metavar="ACTION", required=True)
    listing = commands.add_parser("list", help="the built-in tasks and their parameters")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(handler=_list)
    show = commands.add_parser("show", help="load a task, build its data and model, describe")
    show.add_argument(
        "reference", metavar="REF", help="built-in name, pkg.mod:Class or file.py:Class"
    )
    show.add_argument(
        "--set",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a task parameter (repeatable)",
    )
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(handler=_show)


def _parameters(cls: Any) -> list[dict[str, Any]]:
    return [
        {"name": f.name, "default": f.default, "help": f.metadata.get("doc", "")}
        for f in cls.parameters()
    ]


def _list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from gossipfl.tasks import BUILTIN_TASKS

    tasks: list[dict[str, Any]] = [
        {"name": name, "summary": cls.summary, "params": _parameters(cls)}
        for name, cls in BUILTIN_TASKS.items()
    ]
    if args.json:
        print(json.dumps({"tasks": tasks}, indent=2, default=str))
        return 0
    table = Table(title="built-in tasks (--task NAME; your own: --task path/to/task.py:Class)")
    for column in ("task", "parameters (defaults)", "description"):
        table.add_column(column)
    for task in tasks:
        params = ", ".join(f"{p['name']}={p['default']}" for p in task["params"])
        table.add_row(str(task["name"]), params, str(task["summary"]))
    Console().print(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    import numpy as np

    from gossipfl.errors import ConfigError
    from gossipfl.tasks import load_task

    params: dict[str, str] = {}
    for text in args.params:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {text!r}; e.g. --set lr=0.05")
        params[key.strip().removeprefix("task.params.")] = value.strip()
    task = load_task(args.reference, params)
    data = task.dataset(seed=0)
    learner = task.learner(data, np.arange(len(data.y_train)), init_seed=0, seed=0)
    facts = {
        "task": task.describe(),
        "data": data.describe(),
        "input_shape": list(data.input_shape),
        "parameters": int(learner.adapter.get_flat().size),
        "untrained_accuracy": round(learner.evaluate(data.x_test, data.y_test)[0], 4),
    }
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    width = max(len(k) for k in facts) + 1
    for key, value in facts.items():
        print(f"{key + ':':<{width}} {value}")
    return 0
