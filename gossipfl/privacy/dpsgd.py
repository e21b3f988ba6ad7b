"""DP-SGD for a peer: what the user asks for, and one peer's plan and running account.

DP-SGD (Abadi et al. 2016) makes each local step differentially private: every sample of
a Poisson-sampled mini-batch contributes a gradient clipped to norm C, the clipped
gradients are summed, Gaussian noise of standard deviation σ·C is added, and the sum is
divided by the expected batch size. Everything a peer shares afterwards is then
post-processing of private steps, so the guarantee covers every model it sends, to
neighbours and non-neighbours alike, and whatever they compute from it (a membership
inference included).

:class:`DPSettings` is the run's request (``[privacy]``): the clipping norm, δ, and either
a budget ε (the noise is then calibrated, per peer, so that the planned rounds spend at
most ε) or a noise multiplier σ (ε is then reported), or both (a run whose plan would
exceed the budget is refused before it starts). Each peer's :class:`DPPlan` fixes its
sampling rate q = batch size / its sample count and its σ, counts the steps taken, and
refuses steps beyond the budget. The learners do the clipping and the noise
(:mod:`gossipfl.learning`); :mod:`gossipfl.privacy.accounting` counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gossipfl.errors import ConfigError, GossipflError
from gossipfl.privacy.accounting import calibrate_noise, dp_sgd_epsilon

#: Slack when comparing a spent ε with its budget (the calibration is within 1e-3 below).
BUDGET_SLACK = 1e-9


class PrivacyBudgetExhausted(GossipflError):
    """A DP-SGD step was asked for after the peer's privacy budget was spent."""


@dataclass(frozen=True)
class DPSettings:
    """A run's DP-SGD request, the same for every peer.

    Attributes:
        clip: the per-sample gradient norm bound C.
        delta: δ of the (ε, δ) guarantee; keep it well below 1 / (samples per peer).
        epsilon: the budget ε per peer over the planned rounds; with ``noise_multiplier``
            unset the noise is calibrated to it.
        noise_multiplier: σ, the noise's standard deviation in units of C; unset, it is
            calibrated to ``epsilon``.
    """

    clip: float = 1.0
    delta: float = 1e-5
    epsilon: float | None = None
    noise_multiplier: float | None = None

    def validate(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"privacy.clip must be a finite number > 0, got {self.clip}")
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"privacy.delta must be in (0, 1), got {self.delta}")
        if self.epsilon is None and self.noise_multiplier is None:
            raise ConfigError(
                "DP-SGD needs privacy.epsilon (a budget; the noise is calibrated to it) or "
                "privacy.noise_multiplier (the noise; epsilon is then reported), or both"
            )
        if self.epsilon is not None and not self.epsilon > 0:
            raise ConfigError(f"privacy.epsilon must be > 0, got {self.epsilon}")
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            raise ConfigError(
                f"privacy.noise_multiplier must be a finite number > 0, got {self.noise_multiplier}"
            )

    def plan(self, *, samples: int, batch_size: int, steps: int, who: str = "a peer") -> DPPlan:
        """The plan of a peer with ``samples`` training samples, expected mini-batches of
        ``batch_size`` and ``steps`` planned local steps (rounds × local steps)."""
        self.validate()
        if samples < 1:
            raise ConfigError(f"{who} has no training sample to protect")
        rate = min(1.0, batch_size / samples)
        sigma = self.noise_multiplier
        if sigma is None:
            assert self.epsilon is not None
            sigma = calibrate_noise(rate, steps, self.epsilon, self.delta)
        elif self.epsilon is not None:
            planned = dp_sgd_epsilon(rate, sigma, steps, self.delta)
            if planned > self.epsilon * (1 + BUDGET_SLACK):
                needed = calibrate_noise(rate, steps, self.epsilon, self.delta)
                raise ConfigError(
                    f"{who} would spend epsilon = {planned:.3g} over its {steps} planned "
                    f"DP-SGD steps (sampling rate {rate:.3g}, noise multiplier {sigma:g}), "
                    f"over its budget of {self.epsilon:g}: raise privacy.noise_multiplier "
                    f"to {needed:.3g}, or leave it unset to calibrate it, or plan fewer rounds"
                )
        return DPPlan(
            clip=self.clip,
            noise_multiplier=sigma,
            sampling_rate=rate,
            expected_batch=max(1, round(rate * samples)),
            delta=self.delta,
            budget=self.epsilon,
            planned_steps=steps,
        )


@dataclass
class DPPlan:
    """One peer's DP-SGD: its noise, its sampling rate, and the steps it has taken."""

    clip: float
    noise_multiplier: float
    sampling_rate: float
    expected_batch: int
    delta: float
    budget: float | None
    planned_steps: int
    steps_taken: int = field(default=0)
    mechanism: str = "dp-sgd"
    """``dp-sgd`` (a step is a local mini-batch step) or ``model-noise`` (a step is a
    round: :mod:`gossipfl.privacy.model_noise`)."""

    def epsilon_after(self, steps: int) -> float:
        """ε after ``steps`` steps in all."""
        return dp_sgd_epsilon(self.sampling_rate, self.noise_multiplier, steps, self.delta)

    @property
    def epsilon(self) -> float:
        """ε spent so far."""
        return self.epsilon_after(self.steps_taken)

    def allows(self, steps: int) -> bool:
        """True when ``steps`` more steps stay within the budget (always, without one)."""
        if self.budget is None:
            return True
        spent = self.epsilon_after(self.steps_taken + steps)
        return spent <= self.budget * (1 + BUDGET_SLACK)

    def spend(self, steps: int) -> None:
        """Count ``steps`` steps taken; :class:`PrivacyBudgetExhausted` past the budget."""
        if not self.allows(steps):
            raise PrivacyBudgetExhausted(
                f"{steps} more DP-SGD steps would spend epsilon = "
                f"{self.epsilon_after(self.steps_taken + steps):.3g}, over the budget of "
                f"{self.budget:g}"
            )
        self.steps_taken += steps

    def metrics(self) -> dict[str, float]:
        """What a round reports: ε spent so far and the noise multiplier."""
        return {"epsilon": self.epsilon, "noise_multiplier": self.noise_multiplier}


def enable_dp(learner: object, settings: DPSettings, *, rounds: int) -> DPPlan:
    """Switch ``learner`` to DP-SGD planned over ``rounds``; refuse a learner that cannot
    (the built-in learners and ``ClassificationTask``'s have ``enable_dp``)."""
    enable = getattr(learner, "enable_dp", None)
    if enable is None:
        raise ConfigError(
            f"privacy.mechanism = 'dp-sgd' needs a learner with enable_dp(); "
            f"{type(learner).__name__} has none (the built-in learners and "
            "ClassificationTask's have it)"
        )
    plan: DPPlan = enable(settings, rounds=rounds)
    return plan


__all__ = ["BUDGET_SLACK", "DPPlan", "DPSettings", "PrivacyBudgetExhausted", "enable_dp"]
