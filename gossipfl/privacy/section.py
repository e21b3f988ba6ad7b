"""The ``[privacy]`` keys that configure DP-SGD, shared by ``gossipfl simulate``'s and
``gossipfl start``'s config files (the simulation adds its measurement keys)."""

from __future__ import annotations

from dataclasses import dataclass

from gossipfl.errors import ConfigError
from gossipfl.privacy.dpsgd import DPSettings

PRIVACY_MECHANISMS = ("none", "dp-sgd")


@dataclass
class DPSection:
    mechanism: str = "none"
    """``dp-sgd``: the peer trains with DP-SGD (:mod:`gossipfl.privacy.dpsgd`): per-sample
    clipping to ``clip``, Gaussian noise, Poisson mini-batches; its ε is counted after
    every round. ``none``: plain SGD."""
    epsilon: float | None = None
    """DP-SGD's budget ε per peer over the planned rounds. With ``noise_multiplier``
    unset, each peer's noise is calibrated to spend exactly this much; with both set, a
    run whose plan would spend more is refused before it starts."""
    delta: float = 1e-5
    """δ of the (ε, δ) guarantee."""
    clip: float = 1.0
    """DP-SGD's per-sample gradient norm bound C."""
    noise_multiplier: float | None = None
    """DP-SGD's noise σ in units of ``clip``; unset: calibrated to ``epsilon``."""

    def dp_settings(self) -> DPSettings | None:
        """The DP-SGD request (None without DP-SGD)."""
        if self.mechanism != "dp-sgd":
            return None
        return DPSettings(
            clip=self.clip,
            delta=self.delta,
            epsilon=self.epsilon,
            noise_multiplier=self.noise_multiplier,
        )

    def check(self, mode: str) -> None:
        """Refuse settings that cannot run (``mode``: the run's train/consensus mode)."""
        if self.mechanism not in PRIVACY_MECHANISMS:
            raise ConfigError(
                f"privacy.mechanism must be one of {', '.join(PRIVACY_MECHANISMS)}, "
                f"got {self.mechanism!r}"
            )
        settings = self.dp_settings()
        if settings is None:
            if self.epsilon is not None or self.noise_multiplier is not None:
                raise ConfigError(
                    "privacy.epsilon and privacy.noise_multiplier configure DP-SGD, which is "
                    "off: set privacy.mechanism = 'dp-sgd' (--privacy dp-sgd) to use them"
                )
            return
        if mode != "train":
            raise ConfigError("privacy.mechanism = 'dp-sgd' protects training data: mode = 'train'")
        settings.validate()


__all__ = ["PRIVACY_MECHANISMS", "DPSection"]
