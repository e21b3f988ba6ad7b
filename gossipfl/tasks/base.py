"""The task: your model and your data, as one object every command can run.

A task says four things, and nothing about networks:

* what data there is: :meth:`Task.dataset`, the task's own data set, whole (train and
  test). Simulations cut its training split among the peers with the configured
  partitioner (IID, Dirichlet, label separation); ``gossipfl start`` trains on it too,
  unless the operator points the peer at its own data (:meth:`Task.local_dataset`);
* how to build the model, from the job's seed, so that every peer starts from the same
  weights (gossip assumes a shared initialization);
* how to train it for one round on one peer's data;
* how to evaluate it.

The last three are a :class:`~gossipfl.learning.Learner`, which :meth:`Task.learner`
returns. Most tasks are classification with a torch model; they subclass
:class:`ClassificationTask`, write :meth:`~ClassificationTask.model` and
:meth:`~Task.dataset`, and inherit mini-batch SGD with cross-entropy and accuracy.

A task is a keyword-only dataclass whose fields are its parameters (like a merge rule's),
set from ``[task.params]`` in a config file, ``--set task.params.lr=0.05`` on a command
line, or a grid of an experiment (``"task.params.lr" = [0.01, 0.1]``). It is found by a
reference (:func:`gossipfl.tasks.load_task`): a built-in name, ``package.module:Class``,
or ``path/to/file.py:Class``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from gossipfl.data import Dataset
from gossipfl.errors import ConfigError
from gossipfl.learning import Learner, LearnerConfig
from gossipfl.merge.base import check_float, check_int, param
from gossipfl.textparams import init_fields

if TYPE_CHECKING:
    from torch import nn

IntArray = npt.NDArray[np.int64]


class TaskError(ConfigError):
    """A task that cannot be found, built, or run as configured."""


@dataclass(kw_only=True, eq=False)
class Task(abc.ABC):
    """Base class of every task; see the module docstring."""

    name: ClassVar[str] = ""
    """The built-in name (``gossipfl task list``); empty for a user's task."""
    summary: ClassVar[str] = ""
    """One line for listings."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # noqa: B027 - an optional hook
        """Raise :class:`TaskError` for a parameter out of range (called on creation)."""

    @classmethod
    def parameters(cls) -> tuple[dataclasses.Field[Any], ...]:
        """The task's parameters, in declaration order."""
        return init_fields(cls)

    def describe(self) -> str:
        """``name(p=v, ...)``, for logs and run summaries."""
        label = self.name or type(self).__name__
        values = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self.parameters())
        return f"{label}({values})" if values else label

    def settings(self) -> dict[str, Any]:
        """The parameter values, by name (what makes two peers' tasks the same)."""
        return {f.name: getattr(self, f.name) for f in self.parameters()}

    # ------------------------------------------------------------------ data

    @abc.abstractmethod
    def dataset(self, *, seed: int) -> Dataset:
        """The task's data set, whole: a training split (partitioned among the peers of a
        simulation) and a test split (every peer is evaluated on it). ``seed`` is the
        job's; a data set that must not vary between runs ignores it."""

    def local_dataset(self, path: Path, *, seed: int) -> Dataset:
        """A peer's own data (``gossipfl start --set data.file=PATH``): by default a table
        read by :func:`gossipfl.tasks.data.read_table` (``.npz``, ``.csv``, ``.parquet``),
        whose test split comes from the same file. Override it for other formats."""
        from gossipfl.tasks.data import read_table

        return read_table(path, seed=seed)

    # ------------------------------------------------------------------ learning

    @abc.abstractmethod
    def learner(self, data: Dataset, indices: IntArray, *, init_seed: int, seed: int) -> Learner:
        """A learner on ``data.x_train[indices]``: the model (the same for every
        ``init_seed``), one round of training, evaluation. ``seed`` drives this peer's
        own randomness (its mini-batches)."""


@dataclass(kw_only=True, eq=False)
class ClassificationTask(Task):
    """A classification task with a torch model: write :meth:`model` and
    :meth:`~Task.dataset`; training is mini-batch SGD on cross-entropy, ``local_steps``
    mini-batches a round, evaluation is accuracy and loss on the test split."""

    lr: float = param(0.05, "SGD learning rate")
    momentum: float = param(0.9, "SGD momentum in [0, 1)")
    weight_decay: float = param(0.0, "L2 weight decay")
    batch_size: int = param(32, "samples per mini-batch")
    local_steps: int = param(1, "mini-batches per round")

    def validate(self) -> None:
        label = self.name or type(self).__name__
        check_float(label, "lr", self.lr, low=0.0, low_open=True)
        check_float(label, "momentum", self.momentum, low=0.0, high=0.999)
        check_float(label, "weight_decay", self.weight_decay, low=0.0)
        check_int(label, "batch_size", self.batch_size, 1)
        check_int(label, "local_steps", self.local_steps, 1)

    @abc.abstractmethod
    def model(self, data: Dataset) -> nn.Module:
        """A fresh model for ``data`` (its ``input_shape`` and ``n_classes``). Called with
        torch's generator seeded from the job: build it with torch's own initializers and
        every peer gets the same weights."""

    def sgd_config(self, *, model: str, backend: str, init_seed: int) -> LearnerConfig:
        """The task's SGD parameters as a :class:`LearnerConfig` for ``model``."""
        return LearnerConfig(
            model=model, backend=backend, init_seed=init_seed, **training_params(self)
        )

    def learner(self, data: Dataset, indices: IntArray, *, init_seed: int, seed: int) -> Learner:
        try:
            import torch
        except ImportError:  # pragma: no cover - depends on the install
            raise TaskError(
                f"task {self.describe()} needs torch: pip install 'gossipfl[torch]'"
            ) from None
        from gossipfl.learning.torch_models import TorchLearner

        if len(indices) == 0:
            raise TaskError("a learner needs at least one training sample")
        torch.manual_seed(init_seed)
        module = self.model(data)
        if not isinstance(module, torch.nn.Module):
            raise TaskError(
                f"{type(self).__name__}.model() returned a {type(module).__name__}, "
                "not a torch nn.Module"
            )
        config = self.sgd_config(model="custom", backend="torch", init_seed=init_seed)
        x, y = data.x_train[indices], data.y_train[indices]
        return TorchLearner(config, x, y, data.n_classes, seed=seed, module=module)


def training_params(task: Task) -> Mapping[str, Any]:
    """The SGD settings of a task that has them (for summaries)."""
    names = ("lr", "momentum", "weight_decay", "batch_size", "local_steps")
    return {n: getattr(task, n) for n in names if hasattr(task, n)}


__all__ = ["ClassificationTask", "Task", "TaskError", "training_params"]
