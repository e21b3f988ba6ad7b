"""Noise on the shared model (Muffliato's noise-then-gossip), accounted per peer.

Muffliato (Cyffers, Even, Bellet & Massoulié, NeurIPS 2022, arXiv 2206.05091) makes a
peer add Gaussian noise to its local update before gossiping it, and shows that gossip
then *amplifies* the privacy towards peers far away in the graph (pairwise network DP).
This module is the mechanism with its **local** accounting, the guarantee that holds
against every party, a neighbour included: the network amplification for non-neighbours
is not computed here (it is smaller; see docs/privacy.md).

Each round, the peer trains as usual from its merged model ``x``, takes the update
``u = x_trained − x``, clips it to norm C (``privacy.clip``) and keeps
``x + u·min(1, C/‖u‖) + N(0, (σC)² I)`` as its model: the model it shares and goes on
from. Whatever its data, ``u`` lies in a ball of radius C, so replacing the peer's whole
data set moves the release by at most 2C: each round is the Gaussian mechanism with
sensitivity 2C and noise σC (noise multiplier σ/2 in the accountant's units), and T
rounds compose to the (ε, δ) of :func:`~gossipfl.privacy.accounting.dp_sgd_epsilon` at
sampling rate 1. The unit is the **peer** (all of its data, every sample at once: user-
level DP), against DP-SGD's single sample: a much stronger promise, so it takes much
more noise for the same ε.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gossipfl.errors import ConfigError
from gossipfl.learning.learner import dp_budget_spent
from gossipfl.privacy.accounting import calibrate_noise, dp_sgd_epsilon
from gossipfl.privacy.dpsgd import BUDGET_SLACK, DPPlan, DPSettings

#: The replace-one-data-set sensitivity of a clipped update, in units of C.
SENSITIVITY = 2.0


@dataclass
class ModelNoisePlan(DPPlan):
    """One peer's noise-on-the-model plan: a step is a round; ``noise_multiplier`` σ is
    the noise's standard deviation in units of C (the accountant sees σ / 2)."""

    def epsilon_after(self, steps: int) -> float:
        return dp_sgd_epsilon(1.0, self.noise_multiplier / SENSITIVITY, steps, self.delta)


def plan_model_noise(settings: DPSettings, *, rounds: int, who: str = "a peer") -> ModelNoisePlan:
    """The plan of a peer that trains ``rounds`` rounds with noise on its model."""
    settings.validate()
    sigma = settings.noise_multiplier
    if sigma is None:
        assert settings.epsilon is not None
        sigma = SENSITIVITY * calibrate_noise(1.0, rounds, settings.epsilon, settings.delta)
    elif settings.epsilon is not None:
        planned = dp_sgd_epsilon(1.0, sigma / SENSITIVITY, rounds, settings.delta)
        if planned > settings.epsilon * (1 + BUDGET_SLACK):
            needed = SENSITIVITY * calibrate_noise(1.0, rounds, settings.epsilon, settings.delta)
            raise ConfigError(
                f"{who} would spend epsilon = {planned:.3g} over its {rounds} planned rounds "
                f"of noise on its model (noise multiplier {sigma:g}), over its budget of "
                f"{settings.epsilon:g}: raise privacy.noise_multiplier to {needed:.3g}, or "
                "leave it unset to calibrate it, or plan fewer rounds"
            )
    return ModelNoisePlan(
        clip=settings.clip,
        noise_multiplier=sigma,
        sampling_rate=1.0,
        expected_batch=1,
        delta=settings.delta,
        budget=settings.epsilon,
        planned_steps=rounds,
        mechanism="model-noise",
    )


class NoisyUpdates:
    """``learner`` with every round's model update clipped and noised (module docstring).

    Everything but :meth:`train` is the learner's own (evaluation, sample losses, ...).
    """

    def __init__(self, learner: Any, plan: ModelNoisePlan, *, seed: int) -> None:
        self._learner = learner
        self.plan = plan
        self._rng = np.random.default_rng([seed, 0x4D7F])

    @property
    def adapter(self) -> Any:
        return self._learner.adapter

    def train(self, round: int) -> Mapping[str, float]:
        plan = self.plan
        if not plan.allows(1):
            return dp_budget_spent(plan, round)
        adapter = self._learner.adapter
        start = adapter.get_flat()
        metrics = self._learner.train(round)
        update = adapter.get_flat().astype(np.float64) - start
        norm = float(np.linalg.norm(update))
        if norm > plan.clip:
            update *= plan.clip / norm
        noise = self._rng.normal(0.0, plan.noise_multiplier * plan.clip, size=update.shape)
        adapter.set_flat((start + update + noise).astype(np.float32))
        plan.spend(1)
        return {**metrics, **plan.metrics(), "update_norm": norm}

    def evaluate(self, x: Any, y: Any) -> tuple[float, float]:
        result: tuple[float, float] = self._learner.evaluate(x, y)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._learner, name)


def with_model_noise(
    learner: Any, settings: DPSettings, *, rounds: int, seed: int, who: str = "a peer"
) -> NoisyUpdates:
    """``learner`` with noise on its model planned over ``rounds`` (any learner: the
    mechanism needs only its adapter)."""
    return NoisyUpdates(learner, plan_model_noise(settings, rounds=rounds, who=who), seed=seed)


__all__ = ["SENSITIVITY", "ModelNoisePlan", "NoisyUpdates", "plan_model_noise", "with_model_noise"]
