"""The learner interface and the factory that builds the built-in ones."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from gossipfl.data import Dataset
from gossipfl.errors import ConfigError
from gossipfl.model import ModelAdapter
from gossipfl.peerlog import PeerWarnings

if TYPE_CHECKING:
    from gossipfl.privacy.dpsgd import DPPlan

logger = logging.getLogger(__name__)
_budget_warnings = PeerWarnings(burst=1, period=math.inf)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# model name -> back ends that implement it
MODELS: dict[str, tuple[str, ...]] = {"softmax": ("numpy", "torch"), "mlp": ("torch",)}


class Learner(Protocol):
    """What the peer runtime needs from local training."""

    @property
    def adapter(self) -> ModelAdapter:
        """The model as one flat float32 vector (read with get_flat, write with set_flat)."""
        ...

    def train(self, round: int) -> Mapping[str, float]:
        """Run this round's local step(s) on the local data; return metrics (``loss``)."""
        ...

    def evaluate(self, x: FloatArray, y: IntArray) -> tuple[float, float]:
        """Accuracy and mean cross-entropy of the current model on (x, y)."""
        ...


@dataclass(frozen=True)
class LearnerConfig:
    """Hyper-parameters of local training, shared by all peers of a run."""

    model: str = "softmax"
    backend: str = "numpy"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 32
    local_steps: int = 1
    hidden: int = 64
    init_seed: int = 0

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(
                f"unknown model {self.model!r}; choose one of: {', '.join(sorted(MODELS))}"
            )
        if self.backend not in MODELS[self.model]:
            raise ConfigError(
                f"model {self.model!r} has no {self.backend!r} back end; "
                f"available: {', '.join(MODELS[self.model])}"
            )
        if self.lr <= 0 or self.batch_size < 1 or self.local_steps < 1 or self.hidden < 1:
            raise ConfigError(
                "local training needs lr > 0, batch_size >= 1, local_steps >= 1, hidden >= 1; "
                f"got lr={self.lr}, batch_size={self.batch_size}, "
                f"local_steps={self.local_steps}, hidden={self.hidden}"
            )
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")


@dataclass
class TrainingSettings:
    """The ``[training]`` keys that set local training, shared by the simulation's and the
    daemon's config files (which add their own keys). Mutable, as config sections are."""

    model: str = "softmax"
    backend: str = "numpy"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    local_steps: int = 1
    hidden: int = 64

    def learner_config(self, *, init_seed: int) -> LearnerConfig:
        """These settings as a :class:`LearnerConfig`; every peer starts from the model
        ``init_seed`` initializes."""
        return LearnerConfig(
            model=self.model,
            backend=self.backend,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            local_steps=self.local_steps,
            hidden=self.hidden,
            init_seed=init_seed,
        )


def dp_budget_spent(dp: DPPlan, round: int) -> Mapping[str, float]:
    """A round without training because DP-SGD's budget is spent: said once, and
    reported in the round's metrics (``dp_budget_spent``). The peer still gossips: merging
    what it already published costs no privacy."""
    _budget_warnings.warn(
        logger,
        "dp_budget_spent",
        "round %d: no more local training: its privacy budget (epsilon = %g) is spent; "
        "the peer keeps merging its neighbours' models",
        round,
        dp.budget,
    )
    return {**dp.metrics(), "dp_budget_spent": 1.0}


LearnerFactory = Callable[[Dataset, IntArray, int], Learner]
"""``make(dataset, indices, seed)``: a learner on ``dataset.x_train[indices]``, its
mini-batches drawn with ``seed``; every learner a factory makes starts from the same
model. A built-in configuration's (:func:`learner_factory`) or a task's."""


def learner_factory(config: LearnerConfig) -> LearnerFactory:
    """The factory of the built-in learners of ``config``."""

    def make(dataset: Dataset, indices: IntArray, seed: int) -> Learner:
        return make_learner(config, dataset, indices, seed=seed)

    return make


def make_learner(
    config: LearnerConfig, dataset: Dataset, indices: IntArray, *, seed: int
) -> Learner:
    """A learner on ``dataset.x_train[indices]``.

    Every learner built with the same ``config.init_seed`` starts from the same model:
    gossip assumes a shared initialization (and BALANCE's distance threshold, relative
    to the model's norm, would reject everything around a zero model). ``seed`` drives
    this peer's mini-batch sampling only.
    """
    config.validate()
    x, y = dataset.x_train[indices], dataset.y_train[indices]
    if len(y) == 0:
        raise ConfigError("a learner needs at least one training sample")
    if config.backend == "numpy":
        from gossipfl.learning.numpy_models import NumpySoftmaxLearner

        return NumpySoftmaxLearner(config, x, y, dataset.n_classes, seed=seed)
    from gossipfl.learning.torch_models import TorchLearner

    return TorchLearner(config, x, y, dataset.n_classes, seed=seed)


def evaluate_many(
    learner: Learner, vectors: FloatArray, x: FloatArray, y: IntArray
) -> tuple[FloatArray, FloatArray]:
    """Accuracy and loss of many models (rows of ``vectors``) of the learner's architecture.

    Simulations evaluate every peer on the common test split; models with a closed form
    (numpy softmax) do it in one batched product, others one model at a time through
    ``learner``'s adapter. The learner's own model is restored afterwards.
    """
    batched = getattr(learner, "evaluate_vectors", None)
    if batched is not None:
        acc, loss = batched(vectors, x, y)
        return np.asarray(acc, np.float32), np.asarray(loss, np.float32)
    saved = learner.adapter.get_flat()
    accs = np.empty(len(vectors), np.float32)
    losses = np.empty(len(vectors), np.float32)
    try:
        for i, vec in enumerate(vectors):
            learner.adapter.set_flat(vec)
            accs[i], losses[i] = learner.evaluate(x, y)
    finally:
        learner.adapter.set_flat(saved)
    return accs, losses
