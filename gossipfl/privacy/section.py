"""The ``[privacy]`` keys that configure DP-SGD, shared by ``gossipfl simulate``'s and
``gossipfl start``'s config files (the simulation adds its measurement keys)."""

from __future__ import annotations

from dataclasses import dataclass

from gossipfl.errors import ConfigError
from gossipfl.privacy.dpsgd import DPSettings

PRIVACY_MECHANISMS = ("none", "dp-sgd", "model-noise")


@dataclass
class DPSection:
    mechanism: str = "none"
    """``dp-sgd``: the peer trains with DP-SGD (:mod:`gossipfl.privacy.dpsgd`): per-sample
    clipping to ``clip``, Gaussian noise, Poisson mini-batches; its ε is counted after
    every round and protects each sample. ``model-noise``: each round's model update is
    clipped to ``clip`` and Gaussian noise added to the model it shares (Muffliato's
    mechanism, :mod:`gossipfl.privacy.model_noise`); ε protects the peer's whole data
    set. ``none``: plain SGD."""
    epsilon: float | None = None
    """DP-SGD's budget ε per peer over the planned rounds. With ``noise_multiplier``
    unset, each peer's noise is calibrated to spend exactly this much; with both set, a
    run whose plan would spend more is refused before it starts."""
    delta: float = 1e-5
    """δ of the (ε, δ) guarantee."""
    clip: float = 1.0
    """The norm bound C: of each sample's gradient (DP-SGD), or of a round's model update
    (model-noise)."""
    noise_multiplier: float | None = None
    """DP-SGD's noise σ in units of ``clip``; unset: calibrated to ``epsilon``."""
    secure_averaging: bool = False
    """Peers send masked shares instead of models, so that each learns only the weighted
    sum of its in-neighbours' models, never one model (:mod:`gossipfl.peer.secure`).
    Needs the ``mean`` rule (robust rules must see each model), the ``sync`` protocol
    and a static topology; a model travels as 8 bytes per parameter. Part of the job:
    all peers must agree."""

    def dp_settings(self) -> DPSettings | None:
        """The differential-privacy request of either mechanism (None without)."""
        if self.mechanism not in ("dp-sgd", "model-noise"):
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
                    "privacy.epsilon and privacy.noise_multiplier configure differential "
                    "privacy, which is off: set privacy.mechanism = 'dp-sgd' or 'model-noise' "
                    "(--privacy) to use them"
                )
            return
        if mode != "train":
            raise ConfigError(
                f"privacy.mechanism = {self.mechanism!r} protects training data: mode = 'train'"
            )
        settings.validate()


__all__ = ["PRIVACY_MECHANISMS", "DPSection"]
