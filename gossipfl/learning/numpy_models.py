"""Softmax regression in plain numpy: no torch needed, and cheap enough for thousands of
simulated peers (the whole population can be evaluated in one batched product)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from gossipfl.learning.learner import LearnerConfig
from gossipfl.model import NumpyAdapter

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def _log_softmax(logits: FloatArray) -> FloatArray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    out: FloatArray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


class NumpySoftmaxLearner:
    """Multinomial logistic regression trained with mini-batch SGD (optional momentum).

    Parameters: ``weight`` (features × classes) and ``bias`` (classes); 650 parameters on
    digits. Initialized N(0, 0.01²) from ``config.init_seed`` so that all peers agree.
    """

    def __init__(
        self, config: LearnerConfig, x: FloatArray, y: IntArray, n_classes: int, *, seed: int
    ) -> None:
        self._config = config
        self._x, self._y = x, y
        init = np.random.default_rng(config.init_seed)
        features = x.shape[1]
        self.params: dict[str, FloatArray] = {
            "weight": (init.normal(0.0, 0.01, size=(features, n_classes))).astype(np.float32),
            "bias": np.zeros(n_classes, np.float32),
        }
        self._adapter = NumpyAdapter(self.params)
        self._velocity = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._rng = np.random.default_rng(seed)
        self._features, self._classes = features, n_classes

    @property
    def adapter(self) -> NumpyAdapter:
        return self._adapter

    def _batch(self) -> tuple[FloatArray, IntArray]:
        n = len(self._y)
        size = min(self._config.batch_size, n)
        idx = self._rng.choice(n, size=size, replace=False) if size < n else np.arange(n)
        return self._x[idx], self._y[idx]

    def train(self, round: int) -> Mapping[str, float]:
        cfg = self._config
        weight, bias = self.params["weight"], self.params["bias"]
        loss = 0.0
        for _ in range(cfg.local_steps):
            xb, yb = self._batch()
            logp = _log_softmax(xb @ weight + bias)
            loss = float(-logp[np.arange(len(yb)), yb].mean())
            grad = np.exp(logp)
            grad[np.arange(len(yb)), yb] -= 1.0
            grad /= len(yb)
            grads = {"weight": xb.T @ grad + cfg.weight_decay * weight, "bias": grad.sum(axis=0)}
            for name, g in grads.items():
                step = g
                if cfg.momentum:
                    vel = self._velocity[name]
                    vel *= cfg.momentum
                    vel += g
                    step = vel
                self.params[name] -= (cfg.lr * step).astype(np.float32)
        return {"loss": loss}

    def evaluate(self, x: FloatArray, y: IntArray) -> tuple[float, float]:
        acc, loss = self.evaluate_vectors(self._adapter.get_flat()[None, :], x, y)
        return float(acc[0]), float(loss[0])

    def sample_losses(self, x: FloatArray, y: IntArray) -> FloatArray:
        """The cross-entropy of each sample under the current model (membership
        inference scores samples one by one)."""
        logp = _log_softmax(x @ self.params["weight"] + self.params["bias"])
        losses: FloatArray = -logp[np.arange(len(y)), y]
        return losses

    def evaluate_vectors(
        self, vectors: FloatArray, x: FloatArray, y: IntArray
    ) -> tuple[FloatArray, FloatArray]:
        """Accuracy and loss of each row of ``vectors`` (flat models), in one product."""
        f, c = self._features, self._classes
        vecs = np.asarray(vectors, np.float32).reshape(len(vectors), -1)
        weight = vecs[:, : f * c].reshape(-1, f, c)
        bias = vecs[:, f * c : f * c + c]
        logits = np.matmul(x[None, :, :], weight) + bias[:, None, :]
        logp = _log_softmax(logits)
        acc = (logits.argmax(axis=-1) == y[None, :]).mean(axis=1)
        loss = -logp[:, np.arange(len(y)), y].mean(axis=1)
        return acc.astype(np.float32), loss.astype(np.float32)
