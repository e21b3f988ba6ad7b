"""torch models for local training: softmax regression and an MLP.

Imported only when the torch back end is asked for, so numpy-only installs never need
torch. Tiny models run faster single-threaded; the caller decides the thread count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from gossipfl.learning.learner import LearnerConfig
from gossipfl.model import TorchAdapter
from gossipfl.peerlog import PeerWarnings

logger = logging.getLogger(__name__)
_warnings = PeerWarnings(burst=3, period=math.inf)  # per process: peers all skip alike

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def build_model(name: str, features: int, classes: int, hidden: int) -> nn.Module:
    """The architectures the CLI knows by name."""
    if name == "softmax":
        return nn.Linear(features, classes)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def _warn_skipped(skipped: int, steps: int, round: int) -> None:
    _warnings.warn(
        logger,
        "skipped_steps",
        "round %d: skipped %d of %d local steps: the loss or a gradient was not finite "
        "(a learning rate too large, or a model pushed to extreme values by its "
        "neighbours' models)",
        round,
        skipped,
        steps,
    )


class TorchLearner:
    """Mini-batch SGD with cross-entropy on a torch module: one of the named ones (built
    from ``config.model`` under ``config.init_seed``, so every peer starts alike), or
    ``module``, built by the caller (a task) under that seed."""

    def __init__(
        self,
        config: LearnerConfig,
        x: FloatArray,
        y: IntArray,
        n_classes: int,
        *,
        seed: int,
        module: nn.Module | None = None,
    ) -> None:
        self._config = config
        if module is None:
            torch.manual_seed(config.init_seed)
            module = build_model(config.model, x.shape[1], n_classes, config.hidden)
        self.module = module
        self._adapter = TorchAdapter(self.module)
        self._x = torch.from_numpy(np.ascontiguousarray(x))
        self._y = torch.from_numpy(np.ascontiguousarray(y))
        self._optimizer = torch.optim.SGD(
            self.module.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self._generator = torch.Generator().manual_seed(seed)
        self._loss = nn.CrossEntropyLoss()
        self.skipped_steps = 0
        """Local steps skipped so far for a non-finite loss or gradient."""

    @property
    def adapter(self) -> TorchAdapter:
        return self._adapter

    def train(self, round: int) -> Mapping[str, float]:
        """``local_steps`` mini-batch steps. A step whose loss or gradient is not finite
        is skipped (as mixed-precision training does), so that one bad batch, or a model
        that neighbours' models pushed to extreme values, leaves the model and the
        momentum finite instead of turning them to NaN for good; ``skipped_steps`` in the
        metrics counts them."""
        n = len(self._y)
        size = min(self._config.batch_size, n)
        self.module.train()
        loss_value = math.nan
        skipped = 0
        for _ in range(self._config.local_steps):
            idx = torch.randperm(n, generator=self._generator)[:size]
            self._optimizer.zero_grad(set_to_none=True)
            loss = self._loss(self.module(self._x[idx]), self._y[idx])
            value = float(loss.detach())
            if math.isfinite(value):
                loss.backward()
                if self._finite_gradients():
                    self._optimizer.step()
                    loss_value = value
                    continue
            skipped += 1
        self._optimizer.zero_grad(set_to_none=True)
        if skipped:
            self.skipped_steps += skipped
            _warn_skipped(skipped, self._config.local_steps, round)
            return {"loss": loss_value, "skipped_steps": float(skipped)}
        return {"loss": loss_value}

    def _finite_gradients(self) -> bool:
        return all(
            bool(torch.isfinite(p.grad).all())
            for p in self.module.parameters()
            if p.grad is not None
        )

    def sample_losses(self, x: FloatArray, y: IntArray) -> FloatArray:
        """The cross-entropy of each sample under the current model (membership
        inference scores samples one by one)."""
        self.module.eval()
        with torch.no_grad():
            logits = self.module(torch.from_numpy(np.ascontiguousarray(x)))
            target = torch.from_numpy(np.ascontiguousarray(y))
            losses = nn.functional.cross_entropy(logits, target, reduction="none")
        return losses.numpy().astype(np.float32)

    def evaluate(self, x: FloatArray, y: IntArray) -> tuple[float, float]:
        self.module.eval()
        with torch.no_grad():
            logits = self.module(torch.from_numpy(np.ascontiguousarray(x)))
            target = torch.from_numpy(np.ascontiguousarray(y))
            loss = float(self._loss(logits, target))
            acc = float((logits.argmax(dim=1) == target).float().mean())
        return acc, loss
