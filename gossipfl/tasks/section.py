"""The ``[task]`` section of the simulation's and the daemon's config files.

``name`` is a task reference (:func:`gossipfl.tasks.load_task`); its parameters are the
section's other keys, a ``[task.params]`` table, or ``--set task.params.KEY=VALUE``. An
empty name keeps the older way: ``[data] name`` and ``[training] model`` choose a built-in
workload (digits with softmax regression, by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossipfl.configfile import Scalar
from gossipfl.data import Dataset
from gossipfl.learning import Learner, LearnerFactory
from gossipfl.tasks.base import IntArray, Task


@dataclass
class TaskSection:
    name: str = ""
    """A built-in task (``gossipfl task list``), ``package.module:Class`` or
    ``path/to/file.py:Class``; empty: ``[data]`` and ``[training]`` choose."""
    params: dict[str, Scalar] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A short name for titles: the built-in name or the class (``Clinic`` for
        ``examples/tasks/clinic_table.py:Clinic``); empty when no task is set."""
        reference = self.name.strip()
        return reference.rsplit(":", 1)[-1] if ":" in reference else reference

    def build(self, *, base_dir: object = None) -> Task | None:
        """The task, built with its parameters; None when ``name`` is empty. A relative
        file reference is resolved against ``base_dir`` (the config file's folder)."""
        if not self.name.strip():
            return None
        from gossipfl.tasks.loading import load_task

        reference = self.name
        if base_dir is not None:
            reference = anchored(reference, Path(str(base_dir)))
        return load_task(reference, self.params)


def anchored(reference: str, base_dir: Path) -> str:
    """``reference`` with a relative task file that exists under ``base_dir`` (a config
    file's folder) made absolute; anything else unchanged (a built-in name, a module, a
    file relative to the working directory)."""
    from gossipfl.tasks.loading import split_reference

    if not reference.strip():
        return reference  # no task: [data] and [training] choose
    where, attr = split_reference(reference)
    if attr is None or not where.endswith(".py"):
        return reference
    path = Path(where).expanduser()
    if path.is_absolute() or not (base_dir / path).is_file():
        return reference
    return f"{(base_dir / path).resolve()}:{attr}"


def anchor_task_files(data: dict[str, Any], base_dir: Path) -> None:
    """In a config file's raw tables, make the task file of ``[task] name`` relative to
    the file's folder ``base_dir`` (as the docs promise), wherever the file is run from."""
    task = data.get("task")
    if isinstance(task, dict) and isinstance(task.get("name"), str):
        task["name"] = anchored(task["name"], base_dir)


def task_factory(task: Task, *, init_seed: int) -> LearnerFactory:
    """A learner factory (``make(dataset, indices, seed)``) of ``task``, every learner
    starting from the model ``init_seed`` builds."""

    def make(dataset: Dataset, indices: IntArray, seed: int) -> Learner:
        return task.learner(dataset, indices, init_seed=init_seed, seed=seed)

    return make


__all__ = ["TaskSection", "anchor_task_files", "anchored", "task_factory"]
