"""What a daemon trains: its model, its shard of the data, and how it is evaluated.

**Which shard.** The training split is cut into ``shards`` parts with the configured
partition and seed, exactly as ``gossipfl simulate`` cuts it, and a peer trains on part
``shard``. The two numbers come from, in order: ``[data] shard``/``shards`` in the config
(robust: set them when you know the job), the peer's node index and the roster size
(static membership), or the peer's place in the sorted membership and its size when
training starts (dynamic membership: peers that start together agree; a late joiner's
shard may overlap another's, which only matters for non-IID experiments). The choice is
saved in the state directory (``shard.json``): a restarted peer keeps its shard.

**Same start.** Every peer builds its model from ``[training] seed``, so all start from
the same initialization, as gossip (and BALANCE's relative threshold) assumes.

**Evaluation** uses the data set's common test split, so the accuracy logged by every peer
is comparable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gossipfl.daemon.config import DaemonConfig
from gossipfl.data import Dataset
from gossipfl.errors import ConfigError
from gossipfl.privacy.dpsgd import DPPlan, enable_dp
from gossipfl.privacy.model_noise import with_model_noise

logger = logging.getLogger(__name__)

Vector = npt.NDArray[np.float32]
TrainFn = Callable[[int], Mapping[str, float] | None]
EvaluateFn = Callable[[Vector], tuple[float, float]]

SEED_STRIDE = 100_003
"""A peer's mini-batch seed is ``seed * SEED_STRIDE + shard``, as in the simulator."""


@dataclass
class Workload:
    model: Any
    """A :class:`~gossipfl.model.ModelAdapter` (or a dict of arrays)."""
    train: TrainFn | None
    evaluate: EvaluateFn | None
    shard: int
    shards: int
    samples: int
    """Training samples in this peer's shard (0 in consensus mode)."""
    data: str = ""
    """The data set's name (a file's name for ``data.file``)."""
    task: str = ""
    """The task's short name, if one is configured."""
    dp: DPPlan | None = None
    """The peer's DP-SGD plan and account (``[privacy]``), if it trains privately."""

    def describe(self) -> str:
        if self.train is None and self.evaluate is None:
            return "consensus: averaging a random vector"
        if self.shards == 1:
            text = f"all {self.samples} training samples of {self.data}"
        else:
            text = f"shard {self.shard + 1} of {self.shards} ({self.samples} samples)"
        return f"{text}, task {self.task}" if self.task else text


def load_data(config: DaemonConfig) -> Dataset:
    """The configured data set: ``[data] file``, else the task's own data set, else the
    built-in ``[data] name``.

    With a task, ``[data] file`` is the operator's own data, read by the task's
    ``local_dataset`` (a table by default: ``.npz``, ``.csv``, ``.parquet``); an ``.npz``
    written by gossipfl itself (``simulate --transport libp2p``) is read as such."""
    task = config.task.build(base_dir=config.base_dir)
    if config.data.file:
        path = config.path(config.data.file)
        if task is None or _is_dataset_file(path):
            return load_dataset_file(path)
        return task.local_dataset(path, seed=config.training.seed)
    if task is not None:
        return task.dataset(seed=config.training.seed)
    from gossipfl.data import load_dataset

    return load_dataset(config.data.name, seed=config.training.seed)


def _is_dataset_file(path: Path) -> bool:
    """An ``.npz`` in the layout :func:`save_dataset_file` writes."""
    if path.suffix != ".npz":
        return False
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {"x_train", "y_train", "x_test", "y_test"} <= set(npz.files)
    except (OSError, ValueError):
        return False


def load_dataset_file(path: Path) -> Dataset:
    """A data set saved with :func:`save_dataset_file` (or by hand: arrays ``x_train``,
    ``y_train``, ``x_test``, ``y_test``; ``n_classes`` optional)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            x_train = np.asarray(npz["x_train"], np.float32)
            y_train = np.asarray(npz["y_train"], np.int64)
            x_test = np.asarray(npz["x_test"], np.float32)
            y_test = np.asarray(npz["y_test"], np.int64)
            n_classes = int(npz["n_classes"]) if "n_classes" in npz else None
            name = str(npz["name"]) if "name" in npz else path.stem
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"data file {path} is unusable ({exc}); it must be an .npz with x_train, "
            "y_train, x_test and y_test"
        ) from exc
    if x_train.ndim < 2 or x_train.shape[1:] != x_test.shape[1:]:
        raise ConfigError(
            f"data file {path}: x_train and x_test must hold samples of the same shape"
        )
    if len(x_train) != len(y_train) or len(x_test) != len(y_test) or len(y_train) == 0:
        raise ConfigError(f"data file {path}: each x needs one label per row, and some rows")
    classes = n_classes or int(max(y_train.max(), y_test.max())) + 1
    return Dataset(name, x_train, y_train, x_test, y_test, n_classes=classes)


def save_dataset_file(dataset: Dataset, path: Path) -> None:
    np.savez(
        path,
        x_train=dataset.x_train,
        y_train=dataset.y_train,
        x_test=dataset.x_test,
        y_test=dataset.y_test,
        n_classes=np.int64(dataset.n_classes),
        name=np.str_(dataset.name),
    )


def consensus_vector(seed: int, index: int, dimension: int) -> Vector:
    """Peer ``index``'s starting vector in consensus mode: the ``index``-th draw of the
    seed's generator, as the simulator draws them."""
    rng = np.random.default_rng(seed)
    vector = np.empty(dimension, np.float32)
    for _ in range(index + 1):
        vector = rng.normal(size=dimension).astype(np.float32)
    return vector


def _enable_dp(config: DaemonConfig, learner: Any) -> tuple[Any, DPPlan | None]:
    """The learner with the privacy ``[privacy]`` asks for: switched to DP-SGD, or with
    noise on its model (then wrapped), planned over the rounds this peer will train
    (``training.leave_after`` if it leaves early); and its plan."""
    settings = config.privacy.dp_settings()
    if settings is None:
        return learner, None
    tc = config.training
    rounds = min(tc.rounds, tc.leave_after) if tc.leave_after else tc.rounds
    if config.privacy.mechanism == "model-noise":
        noisy = with_model_noise(learner, settings, rounds=rounds, seed=tc.seed)
        return noisy, noisy.plan
    return learner, enable_dp(learner, settings, rounds=rounds)


def build_workload(
    config: DaemonConfig,
    dataset: Dataset | None,
    *,
    shard: int,
    shards: int,
    flip_labels: bool = False,
) -> Workload:
    """The model, training step and evaluation of a peer holding ``shard`` of ``shards``.

    ``flip_labels``: train on y' = C-1-y (a label-flipping Byzantine peer).
    """
    if not 0 <= shard < shards:
        raise ConfigError(f"shard {shard} is not in 0..{shards - 1}")
    tc = config.training
    if tc.mode == "consensus":
        model = {"x": consensus_vector(tc.seed, shard, tc.dimension)}
        return Workload(model, None, None, shard, shards, 0)
    if dataset is None:
        raise ConfigError("training needs a data set")
    from gossipfl.data import partition
    from gossipfl.learning import evaluate_many, learner_factory

    params = {"alpha": config.data.alpha} if config.data.partition == "dirichlet" else {}
    parts = partition(dataset.y_train, shards, config.data.partition, seed=tc.seed, **params)
    data = dataset
    if flip_labels:
        from gossipfl.attacks import with_flipped_labels

        data = with_flipped_labels(dataset)
    task = config.task.build(base_dir=config.base_dir)
    if task is not None:
        from gossipfl.tasks.section import task_factory

        make = task_factory(task, init_seed=tc.seed)
    else:
        make = learner_factory(config.learner_config())
        if tc.backend == "torch":
            import torch

            torch.set_num_threads(1)  # small models: threads cost more than they give
    learner = make(data, parts[shard], tc.seed * SEED_STRIDE + shard)
    learner, dp = _enable_dp(config, learner)
    x_test, y_test = dataset.x_test, dataset.y_test

    def evaluate(vector: Vector) -> tuple[float, float]:
        acc, loss = evaluate_many(learner, np.asarray(vector, np.float32)[None, :], x_test, y_test)
        return float(acc[0]), float(loss[0])

    return Workload(
        learner.adapter,
        learner.train,
        evaluate,
        shard,
        shards,
        len(parts[shard]),
        data=dataset.name.split(" (")[0],
        task=config.task.label,
        dp=dp,
    )


__all__ = [
    "SEED_STRIDE",
    "Workload",
    "build_workload",
    "consensus_vector",
    "load_data",
    "load_dataset_file",
    "save_dataset_file",
]
