"""Your data as a :class:`~gossipfl.data.Dataset`: numpy arrays, CSV and Parquet tables,
torch datasets.

A data set is a training split and a test split of (samples, labels): the labels are
class indices 0..C-1 (a table's text labels are mapped to indices in sorted order, and the
mapping is kept in the name). Without a test split one is cut off, stratified by class,
from the training data. Features are used as they are (standardize them yourself if the
model needs it: a peer only ever sees its own data, so "the data's mean" is a choice the
task makes).

Parquet needs ``pyarrow`` (``pip install 'gossipfl[parquet]'``); a torch dataset needs
torch. Everything here is a plain function: call them from a task's ``dataset()`` or
``local_dataset()``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gossipfl.data import Dataset
from gossipfl.data.datasets import stratified_split
from gossipfl.tasks.base import TaskError

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def _as_text(value: Any) -> str:
    """A label as text: ``3``, ``3.0`` and ``"3"`` are all ``"3"``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _labels(
    values: Sequence[Any] | np.ndarray,
    *,
    where: str,
    classes: Sequence[Any] | None = None,
) -> tuple[IntArray, list[str]]:
    """Class indices for ``values``, and the class names when they were not indices.

    With ``classes`` (every class, in order), label ``classes[i]`` is class ``i`` and any
    other label is an error: the mapping is the same on every peer, whatever labels its
    own file happens to hold. Without, integer labels (also ``"3"`` or ``3.0``) are class
    indices and anything else is mapped to indices in sorted order, which only agrees
    between peers that hold every class."""
    array = np.asarray(values)
    if classes is not None:
        names = [_as_text(c) for c in classes]
        if len(set(names)) != len(names) or not names:
            raise TaskError(f"{where}: classes must be distinct and not empty, got {names}")
        index = {n: i for i, n in enumerate(names)}
        texts = [_as_text(v) for v in array.tolist()]
        unknown = sorted(set(texts) - set(index))
        if unknown:
            raise TaskError(f"{where}: labels {unknown[:5]} are not among the classes {names}")
        return np.asarray([index[t] for t in texts], np.int64), names
    if array.dtype.kind in "USO":
        texts = [_as_text(v) for v in array.tolist()]
        if texts and all(t.isdigit() for t in texts):
            array = np.asarray([int(t) for t in texts], np.int64)
    if array.dtype.kind in "iu":
        if array.size and array.min() < 0:
            raise TaskError(f"{where}: labels must be class indices >= 0, found {array.min()}")
        return array.astype(np.int64), []
    if array.dtype.kind == "f" and np.all(array == np.round(array)) and array.min() >= 0:
        return array.astype(np.int64), []
    names = sorted({_as_text(v) for v in array.tolist()})
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[_as_text(v)] for v in array.tolist()], np.int64), names


def from_arrays(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    x_test: npt.ArrayLike | None = None,
    y_test: npt.ArrayLike | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str = "arrays",
    classes: Sequence[Any] | None = None,
) -> Dataset:
    """A data set of numpy arrays: ``x`` of shape ``(n, ...)`` (rows of features, or
    images), ``y`` of ``n`` class labels. Without ``x_test``/``y_test``, a stratified
    ``test_fraction`` of the samples (drawn with ``seed``) is the test split.

    ``classes`` lists every class in order (``["low", "medium", "high"]``): give it
    whenever peers read their own files, so that a label means the same class, and the
    model has the same number of outputs, on a peer whose file lacks a class."""
    xs = np.asarray(x, np.float32)
    labels, names = _labels(np.asarray(y), where=name, classes=classes)
    if xs.ndim < 2 or len(xs) != len(labels) or len(xs) == 0:
        raise TaskError(
            f"{name}: x must have shape (samples, ...) and y one label per sample; got "
            f"x {xs.shape} and y {labels.shape}"
        )
    if not np.isfinite(xs).all():
        raise TaskError(f"{name}: the features hold NaN or infinite values")
    if (x_test is None) != (y_test is None):
        raise TaskError(f"{name}: give both x_test and y_test, or neither")
    if x_test is not None and y_test is not None:
        xt = np.asarray(x_test, np.float32)
        # text labels of the test split map as the training split's did
        yt, _ = _labels(np.asarray(y_test), where=f"{name} (test)", classes=names or None)
        if xt.shape[1:] != xs.shape[1:] or len(xt) != len(yt):
            raise TaskError(f"{name}: the test split's shape {xt.shape} does not match {xs.shape}")
        x_train, y_train, x_tst, y_tst = xs, labels, xt, yt
    else:
        if not 0 < test_fraction < 1:
            raise TaskError(f"{name}: test_fraction must be in (0, 1), got {test_fraction}")
        train, test = stratified_split(labels, test_fraction, np.random.default_rng(seed))
        if len(test) == 0 or len(train) == 0:
            raise TaskError(f"{name}: too few samples ({len(labels)}) to split off a test set")
        x_train, y_train, x_tst, y_tst = xs[train], labels[train], xs[test], labels[test]
    seen = int(max(y_train.max(initial=0), y_tst.max(initial=0))) + 1
    label = f"{name} (labels: {', '.join(names)})" if names else name
    return Dataset(label, x_train, y_train, x_tst, y_tst, n_classes=max(seen, len(names)))


def _read_csv(path: Path, label: str | None) -> tuple[FloatArray, list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise TaskError(f"{path} is empty") from None
        rows = [row for row in reader if row]
    column = label if label is not None else header[-1]
    if column not in header:
        raise TaskError(f"{path} has no column {column!r}; its columns: {', '.join(header)}")
    at = header.index(column)
    try:
        features = np.asarray(
            [[float(v) for i, v in enumerate(row) if i != at] for row in rows], np.float32
        )
    except ValueError as exc:
        raise TaskError(f"{path}: every column but {column!r} must be numeric ({exc})") from None
    return features, [row[at] for row in rows]


def _read_parquet(path: Path, label: str | None) -> tuple[FloatArray, list[Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskError(f"reading {path} needs pyarrow: pip install 'gossipfl[parquet]'") from None
    table = pq.read_table(path)
    names = table.column_names
    column = label if label is not None else names[-1]
    if column not in names:
        raise TaskError(f"{path} has no column {column!r}; its columns: {', '.join(names)}")
    features = np.column_stack(
        [np.asarray(table.column(n).to_numpy(), np.float32) for n in names if n != column]
    )
    return features, table.column(column).to_pylist()


def read_table(
    path: str | Path,
    *,
    label: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    classes: Sequence[Any] | None = None,
) -> Dataset:
    """A data set from a file: ``.npz`` (arrays ``x_train``, ``y_train`` and optionally
    ``x_test``, ``y_test``; or ``x`` and ``y``), ``.csv`` (a header row; ``label`` names
    the label column, by default the last one; every other column is a feature) or
    ``.parquet`` (the same, with pyarrow). ``classes``: see :func:`from_arrays`."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise TaskError(f"data file {file} does not exist")
    suffix = file.suffix.lower()
    if suffix == ".npz":
        with np.load(file, allow_pickle=False) as data:
            keys = set(data.files)
            if {"x_train", "y_train"} <= keys:
                test = {"x_test", "y_test"} <= keys
                return from_arrays(
                    data["x_train"],
                    data["y_train"],
                    x_test=data["x_test"] if test else None,
                    y_test=data["y_test"] if test else None,
                    test_fraction=test_fraction,
                    seed=seed,
                    name=file.name,
                    classes=classes,
                )
            if {"x", "y"} <= keys:
                return from_arrays(
                    data["x"],
                    data["y"],
                    test_fraction=test_fraction,
                    seed=seed,
                    name=file.name,
                    classes=classes,
                )
        raise TaskError(f"{file} must hold arrays x_train and y_train (or x and y)")
    if suffix == ".csv":
        features, labels = _read_csv(file, label)
    elif suffix in (".parquet", ".pq"):
        features, labels = _read_parquet(file, label)
    else:
        raise TaskError(f"{file}: give an .npz, .csv or .parquet file")
    return from_arrays(
        features,
        labels,
        test_fraction=test_fraction,
        seed=seed,
        name=file.name,
        classes=classes,
    )


def from_torch_dataset(
    train: Iterable[tuple[Any, Any]],
    test: Iterable[tuple[Any, Any]] | None = None,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str = "torch dataset",
    classes: Sequence[Any] | None = None,
) -> Dataset:
    """A data set from torch datasets (anything that yields ``(sample, label)`` pairs),
    read into memory once: gossipfl partitions and evaluates on arrays. ``classes``: see
    :func:`from_arrays`."""

    def arrays(items: Iterable[tuple[Any, Any]]) -> tuple[FloatArray, IntArray]:
        xs, ys = [], []
        for sample, target in items:
            xs.append(np.asarray(sample, np.float32))
            ys.append(int(np.asarray(target)))
        if not xs:
            raise TaskError(f"{name} is empty")
        return np.stack(xs), np.asarray(ys, np.int64)

    x, y = arrays(train)
    if test is None:
        return from_arrays(x, y, test_fraction=test_fraction, seed=seed, name=name, classes=classes)
    xt, yt = arrays(test)
    return from_arrays(x, y, x_test=xt, y_test=yt, name=name, classes=classes)


__all__ = ["from_arrays", "from_torch_dataset", "read_table"]
