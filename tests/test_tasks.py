"""Tasks: built-in ones, a user's own task found by reference, and the data adapters."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gossipfl.data import load_dataset
from gossipfl.tasks import (
    BUILTIN_TASKS,
    ClassificationTask,
    TaskError,
    from_arrays,
    from_torch_dataset,
    load_task,
    read_table,
)

USER_TASK = textwrap.dedent(
    '''
    from dataclasses import dataclass

    import numpy as np
    from torch import nn

    from gossipfl.merge.base import param
    from gossipfl.tasks import ClassificationTask, from_arrays


    @dataclass(kw_only=True, eq=False)
    class Blobs(ClassificationTask):
        """Two Gaussian blobs per class, and a small MLP."""

        hidden: int = param(8, "hidden units")

        def dataset(self, *, seed):
            rng = np.random.default_rng(7)
            y = np.arange(400) % 3
            x = rng.normal(size=(400, 5)) + 3 * np.eye(3, 5)[y]
            return from_arrays(x, y, seed=seed, name="blobs")

        def model(self, data):
            return nn.Sequential(
                nn.Linear(data.n_features, self.hidden), nn.ReLU(),
                nn.Linear(self.hidden, data.n_classes),
            )


    def small(**params):
        return Blobs(hidden=4, **params)


    class Undecorated(Blobs):
        width: int = 3  # meant as a parameter, but the class is not a dataclass
    '''
)


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "my_task.py"
    path.parent.mkdir()
    path.write_text(USER_TASK)
    return path


def test_the_built_in_tasks_load_by_name_with_text_parameters() -> None:
    assert set(BUILTIN_TASKS) == {"digits-softmax", "digits-mlp", "synthetic", "mnist1d"}
    task = load_task("digits-softmax", {"lr": "0.05", "local_steps": "2"})
    assert task.describe().startswith("digits-softmax(lr=0.05")
    assert task.settings()["local_steps"] == 2
    with pytest.raises(TaskError, match="did you mean 'digits-mlp'"):
        load_task("digits-mpl")
    with pytest.raises(TaskError, match="has no parameter"):
        load_task("mnist1d", {"depth": 3})
    with pytest.raises(TaskError, match="model_name must be one of"):
        load_task("mnist1d", {"model_name": "resnet"})


def test_the_synthetic_test_split_is_a_parameter() -> None:
    # large simulations keep the test split small: every peer's model is scored on it
    data = load_task("synthetic", {"samples": "12000", "test_fraction": "0.1"}).dataset(seed=0)
    assert (len(data.y_train), len(data.y_test)) == (10_800, 1_200)
    with pytest.raises(TaskError, match=r"test_fraction must be in \(0, 1\)"):
        load_task("synthetic", {"test_fraction": 1.0})


def test_digits_read_without_scikit_learn_are_load_digits_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bundled file is read directly (a scikit-learn import costs each peer process
    most of a second): the same arrays as ``load_digits``, and the same data set when the
    file is not where it is looked for and ``load_digits`` is used instead."""
    from sklearn.datasets import load_digits

    from gossipfl.data import datasets

    data, target = datasets._digits_arrays()
    bunch = load_digits()
    assert data.dtype == bunch.data.dtype
    assert target.dtype == bunch.target.dtype
    assert np.array_equal(data, bunch.data)
    assert np.array_equal(target, bunch.target)
    fast = datasets.digits()
    monkeypatch.setattr(datasets, "_bundled_digits_file", lambda: None)
    slow = datasets.digits()  # the fallback
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(fast, field), getattr(slow, field)), field


def test_evaluating_many_models_in_chunks_changes_no_bit() -> None:
    from gossipfl.learning import numpy_models
    from gossipfl.learning.numpy_models import NumpySoftmaxLearner

    data = load_dataset("digits")
    learner = load_task("digits-softmax").learner(data, np.arange(100), init_seed=0, seed=0)
    assert isinstance(learner, NumpySoftmaxLearner)
    vectors = np.random.default_rng(1).normal(size=(9, 650)).astype(np.float32)
    whole = learner.evaluate_vectors(vectors, data.x_test, data.y_test)
    saved = numpy_models.EVAL_CHUNK
    try:
        for rows in (2, 3, 4):  # 4 leaves one model over: it joins the last chunk
            numpy_models.EVAL_CHUNK = rows * len(data.y_test) * 10
            chunked = learner.evaluate_vectors(vectors, data.x_test, data.y_test)
            assert all(np.array_equal(a, b) for a, b in zip(whole, chunked, strict=True))
    finally:
        numpy_models.EVAL_CHUNK = saved


def test_a_users_task_file_outside_the_package_trains(task_file: Path) -> None:
    task = load_task(f"{task_file}:Blobs", {"hidden": "16", "lr": "0.1"})
    assert isinstance(task, ClassificationTask)
    assert task.settings()["hidden"] == 16
    data = task.dataset(seed=0)
    learners = [
        task.learner(data, np.arange(i, len(data.y_train), 2), init_seed=5, seed=i)
        for i in range(2)
    ]
    # the same initial weights on every peer (the job's seed), whatever their data
    assert np.array_equal(learners[0].adapter.get_flat(), learners[1].adapter.get_flat())
    before, _ = learners[0].evaluate(data.x_test, data.y_test)
    for r in range(150):
        learners[0].train(r)
    after, _ = learners[0].evaluate(data.x_test, data.y_test)
    assert after > max(before, 0.8)
    # a factory function works too
    assert load_task(f"{task_file}:small").settings()["hidden"] == 4


def test_a_bad_reference_says_what_is_there(task_file: Path) -> None:
    with pytest.raises(TaskError, match="its tasks: Blobs"):
        load_task(f"{task_file}:Nope")
    with pytest.raises(TaskError, match="does not exist"):
        load_task(f"{task_file.parent / 'missing.py'}:Blobs")
    with pytest.raises(TaskError, match=r"cannot import task module 'no_such_pkg\.tasks'"):
        load_task("no_such_pkg.tasks:Blobs")
    with pytest.raises(TaskError, match="does not define dataset, model"):
        load_task("gossipfl.tasks:ClassificationTask")
    with pytest.raises(TaskError, match="must look like"):
        load_task("a:b:")
    with pytest.raises(TaskError, match=r"width look like parameters.*put @dataclass"):
        load_task(f"{task_file}:Undecorated")


def test_mnist1d_is_generated_offline_and_leaves_the_global_generators_alone() -> None:
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002 - the state a user's own code may rely on
    expected = (random.random(), np.random.random())  # noqa: NPY002
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002
    data = load_dataset("mnist1d")
    assert (random.random(), np.random.random()) == expected  # noqa: NPY002
    assert data.x_train.shape == (4000, 40)
    assert data.x_test.shape == (1000, 40)
    assert data.n_classes == 10
    again = load_dataset("mnist1d", seed=99)  # the data do not depend on the run's seed
    assert np.array_equal(data.x_test, again.x_test)


def test_the_mnist1d_cnn_runs_on_its_signals() -> None:
    task = load_task("mnist1d", {"model_name": "cnn"})
    data = task.dataset(seed=0)
    learner = task.learner(data, np.arange(64), init_seed=0, seed=0)
    assert learner.train(0)["loss"] > 0
    acc, _ = learner.evaluate(data.x_test[:50], data.y_test[:50])
    assert 0.0 <= acc <= 1.0


def test_arrays_and_tables_become_data_sets(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3)).astype(np.float32)
    labels = np.array(["cat", "dog", "eel", "fox"] * 25)
    data = from_arrays(x, labels, seed=0, name="pets")
    assert data.n_classes == 4
    assert len(data.y_train) == 80
    assert "cat, dog, eel, fox" in data.name
    csv = tmp_path / "table.csv"
    rows = ["a,b,c,kind", *(f"{r[0]},{r[1]},{r[2]},{k}" for r, k in zip(x, labels, strict=True))]
    csv.write_text("\n".join(rows) + "\n")
    table = read_table(csv)
    assert table.n_features == 3
    assert table.n_classes == 4
    np.savez(tmp_path / "arrays.npz", x=x, y=np.arange(100) % 4)
    assert read_table(tmp_path / "arrays.npz").n_classes == 4
    with pytest.raises(TaskError, match="no column 'label'"):
        read_table(csv, label="label")
    csv.write_text("a,kind\nnot-a-number,cat\n")
    with pytest.raises(TaskError, match="must be numeric"):
        read_table(csv)
    with pytest.raises(TaskError, match=r"needs pyarrow|does not exist"):
        read_table(tmp_path / "missing.parquet")
    with pytest.raises(TaskError, match="NaN"):
        from_arrays(np.full((10, 2), np.nan), np.arange(10) % 2)


def test_declared_classes_mean_the_same_on_every_peer() -> None:
    """Two hospitals' files: one lacks a class. With the task's classes both map every
    label alike and build models with the same outputs; without, the sorted mapping
    would shift (which is why tasks on peers' own files should declare them)."""
    x = np.zeros((40, 2), np.float32)
    full = np.array(["low", "medium", "high", "high"] * 10)
    partial = np.array(["low", "high"] * 20)
    classes = ("low", "medium", "high")
    a = from_arrays(x, full, seed=0, classes=classes)
    b = from_arrays(x, partial, seed=0, classes=classes)
    assert a.n_classes == b.n_classes == 3
    assert set(b.y_train.tolist()) == {0, 2}  # "high" is class 2 here too
    assert from_arrays(x, partial, seed=0).n_classes == 2  # the shift classes prevent
    with pytest.raises(TaskError, match=r"labels \['severe'\] are not among the classes"):
        from_arrays(x, np.array(["low", "severe"] * 20), seed=0, classes=classes)
    with pytest.raises(TaskError, match="distinct"):
        from_arrays(x, full, seed=0, classes=("low", "low"))
    # digits as text (as a CSV holds them) are class indices, in numeric order
    text = from_arrays(np.zeros((120, 1)), np.array([str(i % 12) for i in range(120)]), seed=0)
    assert text.n_classes == 12
    assert sorted(set(text.y_train.tolist()) | set(text.y_test.tolist())) == list(range(12))
    # a test split's text labels map as the training split's did, even with one missing
    split = from_arrays(x, full, x_test=x[:4], y_test=np.array(["medium", "high"] * 2), seed=0)
    assert split.y_test.tolist() == [2, 0, 2, 0]  # sorted: high=0, low=1, medium=2


def test_a_torch_dataset_is_read_into_arrays() -> None:
    torch = pytest.importorskip("torch")
    images = torch.randn(60, 1, 8, 8)
    targets = torch.arange(60) % 3
    pairs = torch.utils.data.TensorDataset(images, targets)
    data = from_torch_dataset(pairs, seed=0)
    assert data.input_shape == (1, 8, 8)
    assert data.n_features == 64
    assert data.n_classes == 3
