"""torch models for local training: softmax regression and an MLP.

Imported only when the torch back end is asked for, so numpy-only installs never need
torch. Tiny models run faster single-threaded; the caller decides the thread count.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from gossipfl.errors import ConfigError
from gossipfl.learning.learner import LearnerConfig, dp_budget_spent
from gossipfl.model import TorchAdapter
from gossipfl.peerlog import PeerWarnings

if TYPE_CHECKING:
    from gossipfl.privacy.dpsgd import DPPlan, DPSettings

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
        self.dp: DPPlan | None = None
        """The DP-SGD plan once :meth:`enable_dp` was called."""
        self._forward: nn.Module = self.module
        self._seed = seed

    def enable_dp(self, settings: DPSettings, *, rounds: int) -> DPPlan:
        """Train with DP-SGD from now on, with Opacus: its per-sample gradients
        (``GradSampleModule``, the module's parameters unchanged, so the adapter still
        reads them) and its ``DPOptimizer`` (clipping, noise, division by the expected
        batch size); mini-batches become Poisson samples, as the accounting assumes."""
        try:
            from opacus import GradSampleModule
            from opacus.optimizers import DPOptimizer
        except ImportError:  # pragma: no cover - depends on the install
            raise ConfigError(
                "DP-SGD with a torch model needs opacus: pip install 'gossipfl[privacy-torch]'"
            ) from None
        cfg = self._config
        plan = settings.plan(
            samples=len(self._y), batch_size=cfg.batch_size, steps=rounds * cfg.local_steps
        )
        try:
            self._forward = GradSampleModule(self.module)
        except Exception as exc:  # opacus refuses layers it cannot privatize (BatchNorm)
            raise ConfigError(f"DP-SGD cannot train this model: {exc}") from None
        self._optimizer = DPOptimizer(
            torch.optim.SGD(
                self.module.parameters(),
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
            ),
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.clip,
            expected_batch_size=plan.expected_batch,
            generator=torch.Generator().manual_seed(self._seed + 0xD9),
        )
        self.dp = plan
        return plan

    @property
    def adapter(self) -> TorchAdapter:
        return self._adapter

    def train(self, round: int) -> Mapping[str, float]:
        """``local_steps`` mini-batch steps (DP-SGD ones after :meth:`enable_dp`). A step
        whose loss or gradient is not finite is skipped (as mixed-precision training
        does), so that one bad batch, or a model that neighbours' models pushed to extreme
        values, leaves the model and the momentum finite instead of turning them to NaN
        for good; ``skipped_steps`` in the metrics counts them."""
        n = len(self._y)
        size = min(self._config.batch_size, n)
        dp = self.dp
        if dp is not None and not dp.allows(self._config.local_steps):
            return dp_budget_spent(dp, round)
        self.module.train()
        loss_value = math.nan
        skipped = 0
        for _ in range(self._config.local_steps):
            if dp is not None:
                idx = torch.nonzero(
                    torch.rand(n, generator=self._generator) < dp.sampling_rate
                ).flatten()
            else:
                idx = torch.randperm(n, generator=self._generator)[:size]
            self._optimizer.zero_grad(set_to_none=True)
            if len(idx) == 0:  # an empty Poisson batch still takes its noise-only step
                self._noise_only_step(dp)
                continue
            with warnings.catch_warnings():
                # opacus' hooks on a first layer whose input needs no gradient
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss = self._loss(self._forward(self._x[idx]), self._y[idx])
                value = float(loss.detach())
                if math.isfinite(value):
                    loss.backward()
            if math.isfinite(value) and self._finite_gradients():
                self._optimizer.step()
                loss_value = value
                continue
            skipped += 1
        self._optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {"loss": loss_value}
        if dp is not None:
            dp.spend(self._config.local_steps)
            metrics.update(dp.metrics())
        if skipped:
            self.skipped_steps += skipped
            _warn_skipped(skipped, self._config.local_steps, round)
            metrics["skipped_steps"] = float(skipped)
        return metrics

    def _noise_only_step(self, dp: DPPlan | None) -> None:
        """DP-SGD's step on an empty batch: the noise alone, as the mechanism requires
        (skipping it would reveal that the batch was empty)."""
        assert dp is not None
        inner: Any = getattr(self._optimizer, "original_optimizer", self._optimizer)
        std = dp.noise_multiplier * dp.clip
        with torch.no_grad():
            for p in self.module.parameters():
                noise = torch.normal(0.0, std, size=p.shape, generator=self._generator)
                p.grad = noise / dp.expected_batch
        inner.step()
        inner.zero_grad(set_to_none=True)

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
