"""The built-in tasks (``gossipfl task list``): what the CLI trains when told nothing else.

* ``digits-softmax``: scikit-learn's 8×8 digits, softmax regression (650 parameters), in
  numpy (or torch). Central logistic regression: 97.2% on the fixed test split.
* ``digits-mlp``: the same data, a one-hidden-layer MLP in torch.
* ``synthetic``: Gaussian clusters of tunable difficulty, softmax regression.
* ``mnist1d``: MNIST-1D (40-value 1-D signals of the ten digits, shifted, scaled, sheared
  and noised; generated offline), with softmax regression, an MLP or a small 1-D CNN.
  Harder than digits: central logistic regression about 33%, MLP 55-61%, CNN about 94%
  per its paper; our own central numbers are in docs/tasks.md.

Every one is a :class:`~gossipfl.tasks.base.Task` like a user's, with the same knobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gossipfl.data import Dataset, load_dataset
from gossipfl.learning import Learner, make_learner
from gossipfl.merge.base import check_float, check_int, param
from gossipfl.tasks.base import ClassificationTask, IntArray, TaskError

if TYPE_CHECKING:
    from torch import nn


@dataclass(kw_only=True, eq=False)
class _Softmax(ClassificationTask):
    """Softmax regression on a named data set, in numpy (fast, no torch) or torch."""

    backend: str = param("numpy", "numpy or torch")
    lr: float = param(0.1, "SGD learning rate")

    def validate(self) -> None:
        super().validate()
        if self.backend not in ("numpy", "torch"):
            raise TaskError(f"{self.name} parameter backend must be numpy or torch")

    def dataset_name(self) -> str:
        """The name of the data set in :data:`gossipfl.data.DATASETS`."""
        raise NotImplementedError

    def data_params(self) -> dict[str, Any]:
        """Parameters of that data set."""
        return {}

    def dataset(self, *, seed: int) -> Dataset:
        return load_dataset(self.dataset_name(), seed=seed, **self.data_params())

    def model(self, data: Dataset) -> nn.Module:
        from torch import nn

        return nn.Linear(data.n_features, data.n_classes)

    def learner(self, data: Dataset, indices: IntArray, *, init_seed: int, seed: int) -> Learner:
        if self.backend == "torch":
            return super().learner(data, indices, init_seed=init_seed, seed=seed)
        config = self.sgd_config(model="softmax", backend="numpy", init_seed=init_seed)
        return make_learner(config, data, indices, seed=seed)


@dataclass(kw_only=True, eq=False)
class DigitsSoftmax(_Softmax):
    """Softmax regression on scikit-learn's digits (650 parameters)."""

    name = "digits-softmax"
    summary = "8x8 digits (bundled with scikit-learn), softmax regression: 650 parameters"

    def dataset_name(self) -> str:
        return "digits"


@dataclass(kw_only=True, eq=False)
class Synthetic(_Softmax):
    """Gaussian clusters, one per class; ``separation`` sets the difficulty."""

    name = "synthetic"
    summary = "Gaussian clusters of tunable difficulty, softmax regression"

    samples: int = param(2000, "samples in all (train and test)")
    features: int = param(20, "features per sample")
    classes: int = param(10, "classes")
    separation: float = param(1.5, "spread of the class means (1: hard, 3: easy)")
    test_fraction: float = param(0.2, "share of the samples held out as the test split")

    def validate(self) -> None:
        super().validate()
        check_int(self.name, "classes", self.classes, 2)
        check_int(self.name, "features", self.features, 1)
        check_int(self.name, "samples", self.samples, 2 * self.classes)
        check_float(self.name, "separation", self.separation, low=0.0, low_open=True)
        check_float(self.name, "test_fraction", self.test_fraction, low=0.0, high=1.0)
        if not 0.0 < self.test_fraction < 1.0:
            raise TaskError(f"{self.name} parameter test_fraction must be in (0, 1)")

    def dataset_name(self) -> str:
        return "synthetic"

    def data_params(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "features": self.features,
            "classes": self.classes,
            "separation": self.separation,
            "test_fraction": self.test_fraction,
        }


@dataclass(kw_only=True, eq=False)
class DigitsMLP(ClassificationTask):
    """A one-hidden-layer MLP on scikit-learn's digits."""

    name = "digits-mlp"
    summary = "8x8 digits, an MLP with one hidden layer (torch)"

    hidden: int = param(64, "units of the hidden layer")
    lr: float = param(0.1, "SGD learning rate")

    def validate(self) -> None:
        super().validate()
        check_int(self.name, "hidden", self.hidden, 1)

    def dataset(self, *, seed: int) -> Dataset:
        return load_dataset("digits", seed=seed)

    def model(self, data: Dataset) -> nn.Module:
        from torch import nn

        return nn.Sequential(
            nn.Linear(data.n_features, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, data.n_classes),
        )


MNIST1D_MODELS = ("softmax", "mlp", "cnn")


@dataclass(kw_only=True, eq=False)
class MNIST1D(ClassificationTask):
    """MNIST-1D with softmax regression, an MLP, or a small 1-D CNN."""

    name = "mnist1d"
    summary = "MNIST-1D (1-D digit signals, generated offline): softmax, mlp or cnn"

    model_name: str = param("mlp", "softmax, mlp or cnn")
    hidden: int = param(100, "units of the MLP's hidden layers / channels of the CNN")
    lr: float = param(0.05, "SGD learning rate")

    def validate(self) -> None:
        super().validate()
        if self.model_name not in MNIST1D_MODELS:
            raise TaskError(
                f"mnist1d parameter model_name must be one of {', '.join(MNIST1D_MODELS)}"
            )
        check_int(self.name, "hidden", self.hidden, 1)

    def dataset(self, *, seed: int) -> Dataset:
        return load_dataset("mnist1d", seed=seed)

    def model(self, data: Dataset) -> nn.Module:
        from torch import nn

        n, classes, h = data.n_features, data.n_classes, self.hidden
        if self.model_name == "softmax":
            return nn.Linear(n, classes)
        if self.model_name == "mlp":
            return nn.Sequential(
                nn.Linear(n, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, classes)
            )
        return nn.Sequential(  # the MNIST-1D paper's CNN, in spirit: 3 conv layers
            nn.Unflatten(1, (1, n)),
            nn.Conv1d(1, 25, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(25, 25, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(25, 25, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(25 * _conv_length(n), classes),
        )


def _conv_length(n: int) -> int:
    """The signal length after the three strided convolutions of the MNIST-1D CNN."""
    for kernel, padding in ((5, 1), (3, 1), (3, 1)):
        n = (n + 2 * padding - kernel) // 2 + 1
    return n


BUILTIN_TASKS: dict[str, type[ClassificationTask]] = {
    cls.name: cls for cls in (DigitsSoftmax, DigitsMLP, Synthetic, MNIST1D)
}
"""The built-in tasks by name."""


__all__ = ["BUILTIN_TASKS", "MNIST1D", "DigitsMLP", "DigitsSoftmax", "Synthetic"]
