"""Softmax regression in plain numpy: no torch needed, and cheap enough for thousands of
simulated peers (the whole population can be evaluated in one batched product)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from gossipfl.learning.learner import LearnerConfig, dp_budget_spent
from gossipfl.model import NumpyAdapter
from gossipfl.privacy.dpsgd import DPPlan, DPSettings

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


EVAL_CHUNK = 1 << 22
"""Logits computed at once by :meth:`NumpySoftmaxLearner.evaluate_vectors` (16 MiB of float32)."""


def _log_softmax(logits: FloatArray) -> FloatArray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    out: FloatArray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def _views(flat: FloatArray, shape: tuple[int, ...]) -> dict[str, FloatArray]:
    """``weight`` (of ``shape``) and ``bias``, consecutive views of ``flat``."""
    size = math.prod(shape)
    return {"weight": flat[:size].reshape(shape), "bias": flat[size:]}


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
        weight = (init.normal(0.0, 0.01, size=(features, n_classes))).astype(np.float32)
        # Both tensors are views of one flat buffer (weight, then bias: the layout's
        # order), and so are their velocities and gradients: a step updates the model in
        # one pass instead of one per tensor, and the adapter's flat vector is that buffer
        # (get_flat/set_flat: one copy). Element for element the same arithmetic.
        self._flat: FloatArray | None = np.zeros(weight.size + n_classes, np.float32)
        self.params: dict[str, FloatArray] = _views(self._flat, weight.shape)
        self.params["weight"][...] = weight
        self._adapter = NumpyAdapter(self.params)
        self._velocity_flat: FloatArray | None = np.zeros_like(self._flat)
        self._velocity = _views(self._velocity_flat, weight.shape)
        self._grad_flat: FloatArray | None = np.empty_like(self._flat)
        self._grads = _views(self._grad_flat, weight.shape)
        self._rng = np.random.default_rng(seed)
        self._features, self._classes = features, n_classes
        self.dp: DPPlan | None = None
        """The DP-SGD plan once :meth:`enable_dp` was called."""
        self._noise = np.random.default_rng([seed, 0xD9])
        self._row_index: IntArray | None = None
        self._own_class_index: IntArray | None = None  # see _own_classes

    def enable_dp(self, settings: DPSettings, *, rounds: int) -> DPPlan:
        """Train with DP-SGD from now on (see :mod:`gossipfl.privacy.dpsgd`): Poisson
        mini-batches, per-sample gradients clipped in closed form, Gaussian noise."""
        cfg = self._config
        self.dp = settings.plan(
            samples=len(self._y), batch_size=cfg.batch_size, steps=rounds * cfg.local_steps
        )
        return self.dp

    def __getstate__(self) -> dict[str, object]:
        # Pickled views come back as arrays of their own: a copy trains tensor by tensor.
        return {**self.__dict__, "_flat": None, "_velocity_flat": None, "_grad_flat": None}

    @property
    def adapter(self) -> NumpyAdapter:
        return self._adapter

    def _batch(self) -> tuple[FloatArray, IntArray]:
        n = len(self._y)
        size = min(self._config.batch_size, n)
        if size < n:
            idx = self._rng.choice(n, size=size, replace=False)
            return self._x[idx], self._y[idx]
        # The whole set (a large simulation's peers hold a sample or two): the arrays
        # themselves, not a gathered copy of the same values in the same order.
        return self._x, self._y

    def _rows(self, size: int) -> IntArray:
        """``np.arange(size)``, kept: it picks each sample's own class in the step."""
        rows = self._row_index
        if rows is None or len(rows) != size:
            rows = self._row_index = np.arange(size)
        return rows

    def _own_classes(self) -> IntArray:
        """Where each training sample's own class sits in its flattened (samples ×
        classes) row block: ``logp.reshape(-1)[i]`` is ``logp[rows, y]`` when the batch
        is the whole set (as a large simulation's peers, with a sample or two, have it).
        One index array into a flat view takes 0.27 µs and 1.6 µs to read and update,
        where the pair of index arrays took 0.79 and 2.6 µs; the same elements."""
        index = self._own_class_index
        if index is None:
            index = self._own_class_index = np.arange(len(self._y)) * self._classes + self._y
        return index

    def _sgd_gradients(self) -> tuple[FloatArray, FloatArray, float]:
        """One mini-batch's gradients (weight, bias) and loss.

        Written out with ufunc calls (``np.maximum.reduce`` for ``.max``, ``np.add.reduce``
        for ``.sum`` and ``.mean``), which are what those methods call, so every bit is
        as before. Why: in a large simulation a peer holds one or two samples, and the
        step was numpy's per-call overhead (the methods' Python wrappers, an index array
        per call, a gathered copy of the whole batch); it took 27 µs and takes ~15.
        """
        xb, yb = self._batch()
        weight = self.params["weight"]
        size = len(yb)
        rows = self._rows(size)
        logits = xb @ weight + self.params["bias"]
        shifted = logits - np.maximum.reduce(logits, axis=-1, keepdims=True)
        logp = shifted - np.log(np.add.reduce(np.exp(shifted), axis=-1, keepdims=True))
        # ndarray.mean of float32: a float32 sum divided by the count as a float64, back
        # to float32 (numpy's _mean); the sign flips before it, exactly, as it did there
        if yb is self._y:  # the whole set: its own classes' flat positions are known
            own = self._own_classes()
            picked = logp.reshape(-1)[own]
        else:
            own = None
            picked = logp[rows, yb]
        loss = float(np.float32(float(np.add.reduce(-picked, axis=None)) / size))
        grad = np.exp(logp)
        if own is not None:
            grad.reshape(-1)[own] -= 1.0
        else:
            grad[rows, yb] -= 1.0
        grad /= size
        if self._grad_flat is None:
            grad_weight = xb.T @ grad
            if self._config.weight_decay:
                grad_weight = grad_weight + self._config.weight_decay * weight
            return grad_weight, np.add.reduce(grad, axis=0), loss
        # into the flat gradient buffer (see __init__): the same products and sums
        grad_weight, grad_bias = self._grads["weight"], self._grads["bias"]
        np.matmul(xb.T, grad, out=grad_weight)
        if self._config.weight_decay:
            np.add(grad_weight, self._config.weight_decay * weight, out=grad_weight)
        np.add.reduce(grad, axis=0, out=grad_bias)
        return grad_weight, grad_bias, loss

    def _dp_gradients(self, dp: DPPlan) -> tuple[dict[str, FloatArray], float]:
        """One DP-SGD gradient: each sample of a Poisson batch contributes
        ``x_i ⊗ r_i`` (r_i = softmax − one-hot), whose norm is ‖r_i‖·sqrt(‖x_i‖² + 1)
        with the bias, clipped to ``dp.clip``; noise N(0, (σC)²) on the sum; divided
        by the expected batch size."""
        weight, bias = self.params["weight"], self.params["bias"]
        chosen = np.flatnonzero(self._rng.random(len(self._y)) < dp.sampling_rate)
        xb, yb = self._x[chosen], self._y[chosen]
        logp = _log_softmax(xb @ weight + bias)
        loss = float(-logp[np.arange(len(yb)), yb].mean()) if len(yb) else float("nan")
        resid = np.exp(logp)
        resid[np.arange(len(yb)), yb] -= 1.0
        norms = np.sqrt((np.einsum("ij,ij->i", xb, xb) + 1.0) * np.einsum("ij,ij->i", resid, resid))
        resid *= (dp.clip / np.maximum(norms, dp.clip))[:, None]
        std = dp.noise_multiplier * dp.clip
        grads = {
            "weight": xb.T @ resid + self._noise.normal(0.0, std, size=weight.shape),
            "bias": resid.sum(axis=0) + self._noise.normal(0.0, std, size=bias.shape),
        }
        for g in grads.values():
            g /= dp.expected_batch
        return {k: v.astype(np.float32) for k, v in grads.items()}, loss

    def train(self, round: int) -> Mapping[str, float]:
        cfg = self._config
        weight = self.params["weight"]
        dp = self.dp
        if dp is not None and not dp.allows(cfg.local_steps):
            return dp_budget_spent(dp, round)
        loss = 0.0
        flat, velocity, gradient = self._flat, self._velocity_flat, self._grad_flat
        for _ in range(cfg.local_steps):
            if dp is None and flat is not None and velocity is not None and gradient is not None:
                # both tensors at once (their flat buffers): what the loop below does
                _, _, loss = self._sgd_gradients()
                step = gradient
                if cfg.momentum:
                    velocity *= cfg.momentum
                    velocity += gradient
                    step = velocity
                flat -= (cfg.lr * step).astype(np.float32, copy=False)
                continue
            if dp is not None:
                grads, loss = self._dp_gradients(dp)
                grads["weight"] += cfg.weight_decay * weight
            else:
                grad_weight, grad_bias, loss = self._sgd_gradients()
                grads = {"weight": grad_weight, "bias": grad_bias}
            for name, g in grads.items():
                step = g
                if cfg.momentum:
                    vel = self._velocity[name]
                    vel *= cfg.momentum
                    vel += g
                    step = vel
                # float32 already (a copy only if not): the same bits, no copy a step
                self.params[name] -= (cfg.lr * step).astype(np.float32, copy=False)
        if dp is not None:
            dp.spend(cfg.local_steps)
            return {"loss": loss, **dp.metrics()}
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
        """Accuracy and loss of each row of ``vectors`` (flat models), in batched
        products of at most :data:`EVAL_CHUNK` logits (10,000 peers on 25,000 test
        samples would otherwise need 10 GB at once); each model's numbers do not depend
        on the chunking."""
        f, c = self._features, self._classes
        vecs = np.asarray(vectors, np.float32).reshape(len(vectors), -1)
        rows = max(2, EVAL_CHUNK // max(1, len(y) * c))
        acc = np.empty(len(vecs), np.float32)
        loss = np.empty(len(vecs), np.float32)
        picked = np.arange(len(y))
        starts = list(range(0, len(vecs), rows))
        if len(starts) > 1 and len(vecs) - starts[-1] == 1:
            # a batch of one model takes another path through matmul, whose last bits
            # may differ from the same model's in a batch: never split one off
            starts.pop()
        for i, start in enumerate(starts):
            chunk = vecs[start : starts[i + 1] if i + 1 < len(starts) else len(vecs)]
            weight = chunk[:, : f * c].reshape(-1, f, c)
            bias = chunk[:, f * c : f * c + c]
            logits = np.matmul(x[None, :, :], weight) + bias[:, None, :]
            logp = _log_softmax(logits)
            end = start + len(chunk)
            acc[start:end] = (logits.argmax(axis=-1) == y[None, :]).mean(axis=1)
            loss[start:end] = -logp[:, picked, y].mean(axis=1)
        return acc, loss
