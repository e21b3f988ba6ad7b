"""Tasks: your model and your data, as one object that ``simulate``, ``experiment`` and
``start`` all run (see :mod:`gossipfl.tasks.base`, and docs/tasks.md)::

    from dataclasses import dataclass
    from torch import nn
    from gossipfl.tasks import ClassificationTask, from_arrays

    @dataclass(kw_only=True, eq=False)
    class MyTask(ClassificationTask):
        hidden: int = 32                       # a parameter: --set task.params.hidden=64

        def dataset(self, *, seed):
            x, y = load_my_data()              # numpy arrays
            return from_arrays(x, y, seed=seed)

        def model(self, data):
            return nn.Sequential(nn.Linear(data.n_features, self.hidden), nn.ReLU(),
                                 nn.Linear(self.hidden, data.n_classes))

and then ``gossipfl simulate --task my_task.py:MyTask``.
"""

from __future__ import annotations

from gossipfl.tasks.base import ClassificationTask, Task, TaskError
from gossipfl.tasks.builtin import BUILTIN_TASKS, MNIST1D, DigitsMLP, DigitsSoftmax, Synthetic
from gossipfl.tasks.data import from_arrays, from_torch_dataset, read_table
from gossipfl.tasks.loading import load_task, split_reference

__all__ = [
    "BUILTIN_TASKS",
    "MNIST1D",
    "ClassificationTask",
    "DigitsMLP",
    "DigitsSoftmax",
    "Synthetic",
    "Task",
    "TaskError",
    "from_arrays",
    "from_torch_dataset",
    "load_task",
    "read_table",
    "split_reference",
]
