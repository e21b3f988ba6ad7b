"""A large model: ResNet-18 (11.2 million parameters) on generated 16×16 colour images.

The size of the models people fine-tune on devices, to measure what a round of
decentralized training costs at that size (``experiments/benchmarks/large_model.py``;
results in docs/benchmarks.md). Ten classes, each a fixed random colour pattern seen
through noise, shifts and changing brightness: nothing to download.

    gossipfl simulate --task examples/tasks/resnet18.py:ResNet18 --peers 16 \\
        --topology exponential --rounds 3
    gossipfl simulate --task examples/tasks/resnet18.py:ResNet18 --set task.params.width=8

``width`` is the channels of the first stage (64 is ResNet-18; 8 is 175k parameters, for
a quick check). Normalization is GroupNorm, not BatchNorm: batch statistics of one peer's
skewed shard would be averaged into a model whose running statistics fit no one (and a
BatchNorm's running statistics are buffers every peer would have to merge too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gossipfl.data import Dataset
from gossipfl.merge.base import param
from gossipfl.tasks import ClassificationTask, from_arrays

SIZE = 16


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 2), channels)


class Block(nn.Module):
    """A basic residual block: two 3×3 convolutions and a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


@dataclass(kw_only=True, eq=False)
class ResNet18(ClassificationTask):
    """ResNet-18 (4 stages of 2 residual blocks) on generated 3×16×16 images."""

    width: int = param(64, "channels of the first stage (64: ResNet-18, 11.2M parameters)")
    samples: int = param(2000, "images in all (train and test)")
    batch_size: int = param(16, "samples per mini-batch")
    lr: float = param(0.02, "SGD learning rate")

    def dataset(self, *, seed: int) -> Dataset:
        rng = np.random.default_rng(18)  # the same images in every run and on every peer
        patterns = rng.normal(0.0, 1.0, size=(10, 3, SIZE, SIZE)).astype(np.float32)
        labels = np.arange(self.samples) % 10
        shifts = rng.integers(-1, 2, size=(self.samples, 2))
        brightness = rng.uniform(0.6, 1.4, size=(self.samples, 1, 1, 1)).astype(np.float32)
        moved = zip(labels, shifts, strict=True)
        images = np.stack([np.roll(patterns[k], tuple(s), axis=(1, 2)) for k, s in moved])
        noise = rng.normal(0.0, 0.8, size=images.shape).astype(np.float32)
        return from_arrays(images * brightness + noise, labels, seed=0, name="patterns-16")

    def model(self, data: Dataset) -> nn.Module:
        w = self.width
        layers: list[nn.Module] = [nn.Conv2d(3, w, 3, 1, 1, bias=False), _norm(w), nn.ReLU()]
        cin = w
        for cout, stride in ((w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)):
            layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, data.n_classes)]
        return nn.Sequential(*layers)
