"""Data poisoning: a Byzantine peer that follows the protocol on corrupted data.

``label-flip`` peers train like honest ones, on labels mapped ``y → C − 1 − y`` (9 − y on
digits), and gossip the resulting model. Nothing in the message is crafted: it is an honest
model of the wrong task, which is why distance-based rules see it as merely "different",
like an honest peer with unusual data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from gossipfl.attacks.base import Attack, AttackView

if TYPE_CHECKING:
    from gossipfl.data import Dataset


def flip_labels(y: npt.NDArray[np.int64], n_classes: int) -> npt.NDArray[np.int64]:
    """``C − 1 − y``: every class becomes its mirror image (a new array)."""
    labels = np.asarray(y)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    flipped: npt.NDArray[np.int64] = (n_classes - 1 - labels).astype(np.int64)
    return flipped


def with_flipped_labels(dataset: Dataset) -> Dataset:
    """``dataset`` with :func:`flip_labels` applied to its training labels (the test split
    is untouched: a label-flipping peer is still evaluated on the true task)."""
    return dataclasses.replace(dataset, y_train=flip_labels(dataset.y_train, dataset.n_classes))


@dataclass(kw_only=True, eq=False)
class LabelFlip(Attack):
    """Send the attacker's own model, trained on flipped labels (see the module doc).

    The training is the peer's (``trains = True``): the simulator gives each label-flipping
    peer a random share of the training data with labels flipped, the size of an honest
    peer's average share; a live peer flips its own labels with :func:`flip_labels`.
    """

    name = "label-flip"
    summary = "train on labels C − 1 − y and gossip that model (data poisoning)"
    trains = True

    def _craft(self, view: AttackView, rng: np.random.Generator) -> npt.NDArray[Any]:
        return np.asarray(view.own)


__all__ = ["LabelFlip", "flip_labels"]
