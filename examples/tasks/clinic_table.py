"""A task of one's own on a table: a clinic's patients in a CSV file, one row each.

``data/clinic.csv`` (900 made-up patients: age, BMI, blood pressure, glucose, daily steps,
smoker, and the ``outcome`` to predict: low, medium or high risk) stands in for the
records a hospital would hold and never share. In a simulation the table is cut among the
peers; with ``gossipfl start`` every hospital points its own peer at its own file of the
same columns, which it trains on in full::

    gossipfl simulate --task examples/tasks/clinic_table.py:Clinic --peers 9 --rounds 60
    gossipfl start --task examples/tasks/clinic_table.py:Clinic --data-file our_patients.csv

The features are standardized with constants fixed in the task (not with statistics of
any one hospital's data: every peer must feed the model the same scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from gossipfl.data import Dataset
from gossipfl.merge.base import param
from gossipfl.tasks import ClassificationTask, read_table

HERE = Path(__file__).resolve().parent
TABLE = HERE / "data" / "clinic.csv"
LABEL = "outcome"
CLASSES = ("low", "medium", "high")
"""Every risk class, in order: a hospital whose file lacks one still maps the others to
the same outputs of the model (and builds a model of the same shape)."""
# Typical value and spread of each column (age, bmi, blood_pressure, glucose, daily_steps,
# smoker): public reference ranges, the same for every hospital.
CENTER = np.array([52.0, 27.0, 125.0, 100.0, 6000.0, 0.25], np.float32)
SCALE = np.array([19.0, 5.0, 16.0, 21.0, 3000.0, 0.43], np.float32)


def _standardized(data: Dataset) -> Dataset:
    return Dataset(
        data.name,
        (data.x_train - CENTER) / SCALE,
        data.y_train,
        (data.x_test - CENTER) / SCALE,
        data.y_test,
        n_classes=data.n_classes,
    )


@dataclass(kw_only=True, eq=False)
class Clinic(ClassificationTask):
    """An MLP on a patients table: predict the risk class."""

    hidden: int = param(32, "hidden units")
    lr: float = param(0.05, "SGD learning rate")

    def dataset(self, *, seed: int) -> Dataset:
        return _standardized(read_table(TABLE, label=LABEL, seed=0, classes=CLASSES))

    def local_dataset(self, path: Path, *, seed: int) -> Dataset:
        return _standardized(read_table(path, label=LABEL, seed=seed, classes=CLASSES))

    def model(self, data: Dataset) -> nn.Module:
        return nn.Sequential(
            nn.Linear(data.n_features, self.hidden), nn.ReLU(),
            nn.Linear(self.hidden, data.n_classes),
        )  # fmt: skip
