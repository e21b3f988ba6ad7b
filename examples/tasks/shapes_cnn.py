"""A task of one's own: a small CNN on 28×28 images of shapes, generated on the spot.

Four classes (a square outline, a filled disc, a cross, a horizontal bar), each drawn at a
random place and size, with noise: nothing to download, the same images for every seed.
Run it with any command that takes a task::

    gossipfl simulate --task examples/tasks/shapes_cnn.py:Shapes --peers 9 --rounds 40
    gossipfl start --task examples/tasks/shapes_cnn.py:Shapes ...

Everything gossipfl needs is the two methods below; training (mini-batch SGD on
cross-entropy) and evaluation (accuracy) come with :class:`ClassificationTask`, and so do
its parameters (``lr``, ``momentum``, ``batch_size``, ``local_steps``: ``--set
task.params.lr=0.05``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from gossipfl.data import Dataset
from gossipfl.merge.base import param
from gossipfl.tasks import ClassificationTask, from_arrays

SIZE = 28


def draw(kind: int, rng: np.random.Generator) -> np.ndarray:
    """One noisy 28×28 image of shape ``kind``."""
    image = np.zeros((SIZE, SIZE), np.float32)
    r = int(rng.integers(4, 9))
    cy, cx = (int(v) for v in rng.integers(r + 1, SIZE - r - 1, size=2))
    ys, xs = np.ogrid[:SIZE, :SIZE]
    if kind == 0:  # a square outline
        image[cy - r : cy + r + 1, cx - r] = image[cy - r : cy + r + 1, cx + r] = 1
        image[cy - r, cx - r : cx + r + 1] = image[cy + r, cx - r : cx + r + 1] = 1
    elif kind == 1:  # a filled disc
        image[(ys - cy) ** 2 + (xs - cx) ** 2 <= r * r] = 1
    elif kind == 2:  # a cross
        image[cy - r : cy + r + 1, cx] = image[cy, cx - r : cx + r + 1] = 1
    else:  # a horizontal bar
        image[cy - 1 : cy + 2, cx - r : cx + r + 1] = 1
    return image + rng.normal(0, 0.3, size=image.shape).astype(np.float32)


@dataclass(kw_only=True, eq=False)
class Shapes(ClassificationTask):
    """A CNN on generated 28×28 images of four shapes."""

    samples: int = param(2000, "images in all (train and test)")
    channels: int = param(8, "channels of the convolutions")
    local_steps: int = param(4, "mini-batches per round")

    def dataset(self, *, seed: int) -> Dataset:
        rng = np.random.default_rng(2024)  # the data do not change with the run's seed
        labels = np.arange(self.samples) % 4
        images = np.stack([draw(int(k), rng) for k in labels])[:, None]  # (n, 1, 28, 28)
        return from_arrays(images, labels, seed=0, name="shapes")

    def model(self, data: Dataset) -> nn.Module:
        c = self.channels
        return nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14×14
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 7×7
            nn.Flatten(),
            nn.Linear(2 * c * 7 * 7, data.n_classes),
        )  # fmt: skip
