"""Privacy in a simulated run: DP-SGD switched on for every honest learner, what it spent,
and the membership inference a curious neighbour runs on the final models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gossipfl.errors import ConfigError
from gossipfl.learning import Learner
from gossipfl.privacy import calibrated_attack, loss_threshold_attack, sample_losses
from gossipfl.privacy.dpsgd import DPPlan, enable_dp
from gossipfl.privacy.model_noise import with_model_noise
from gossipfl.simulation.config import SimulationConfig
from gossipfl.topology import Topology


def enable_dp_all(
    config: SimulationConfig,
    learners: list[Learner],
    ids: list[str],
    indices: Sequence[int] | None = None,
) -> list[DPPlan]:
    """Switch every honest learner to DP-SGD when ``[privacy]`` asks for it (each peer's
    noise calibrated to its own sampling rate; refuse a learner that cannot), or wrap it
    with noise on its model (``model-noise``, any learner), in place in ``learners``.

    ``learners[k]`` is peer ``indices[k]``'s (default: peer k's), named ``ids[indices[k]]``:
    a shard holds some peers only, and a peer's noise is seeded by its index, so that
    the split run draws the noise the whole one does."""
    settings = config.dp_settings()
    if settings is None:
        return []
    plans: list[DPPlan] = []
    for k, learner in enumerate(learners):
        i = k if indices is None else indices[k]
        try:
            if config.privacy.mechanism == "model-noise":
                noisy = with_model_noise(
                    learner, settings, rounds=config.rounds, seed=config.seed * 100_003 + i
                )
                learners[k] = noisy
                plans.append(noisy.plan)
            else:
                plans.append(enable_dp(learner, settings, rounds=config.rounds))
        except ConfigError as exc:
            raise ConfigError(f"peer {ids[i]}: {exc}") from None
    return plans


def dp_summary(plans: list[DPPlan]) -> dict[str, float]:
    """What DP-SGD spent, for the summary: ε of the peer that spent most (every peer's
    guarantee holds at that ε or better), the mean, δ, and the noise used."""
    spent = [p.epsilon for p in plans]
    return {
        "epsilon": float(max(spent)),
        "epsilon_mean": float(np.mean(spent)),
        "delta": float(plans[0].delta),
        "noise_multiplier_mean": float(np.mean([p.noise_multiplier for p in plans])),
        "dp_clip": float(plans[0].clip),
    }


def membership_leakage(
    config: SimulationConfig,
    finals: Sequence[npt.NDArray[np.float32]],
    probe: Learner,
    dataset: Any,
    parts: list[Any],
    topology: Topology,
    make: Any,
) -> dict[str, float]:
    """Membership inference against every honest peer's final model, by a curious
    neighbour: its own training samples (members) against test samples of the same
    classes in the same numbers (so that a skewed shard's class mix is not mistaken for
    membership), drawn from the seed. Two attacks: the loss threshold, and the same
    calibrated by a reference model that never saw the target's data: one the attacking
    neighbour (the target's lowest-numbered honest neighbour) trains alone on its own
    shard for the run's rounds, as a shadow of the target's model. Averaged over the
    peers, with the worst case (the largest AUC).

    With secure averaging no neighbour ever holds the target's model: the attacking
    neighbour holds the weighted average of its own in-neighbours' models, the target's
    among them (the sum its shares unmask to; approximated by their final models), and
    attacks that.

    ``finals`` holds every honest peer's final flat model, by index; ``probe`` is a
    learner of the same architecture that scores them (its own model is restored after
    each use), so the study needs the final models and nothing else of the peers: a
    sharded run's driver computes it from what its shards hand back."""
    rng = np.random.default_rng([config.seed, 7])
    by_class = {c: np.flatnonzero(dataset.y_test == c) for c in np.unique(dataset.y_test)}
    plain, calibrated = [], []
    shadows: dict[int, Any] = {}

    def shadow(attacker: int) -> Any:
        """The attacker's model trained alone on its own shard, never merged."""
        if attacker not in shadows:
            alone = make(dataset, parts[attacker], config.seed * 100_003 + 50_000 + attacker)
            for r in range(config.rounds):
                alone.train(r)
            shadows[attacker] = alone.adapter.get_flat()
        return shadows[attacker]

    for node, (vector, shard) in enumerate(zip(finals, parts, strict=True)):
        members = np.asarray(shard)
        members = members[[len(by_class.get(dataset.y_train[m], ())) > 0 for m in members]]
        if members.size == 0:
            continue
        outside = np.array([rng.choice(by_class[dataset.y_train[m]]) for m in members])
        sets = (
            (dataset.x_train[members], dataset.y_train[members]),
            (dataset.x_test[outside], dataset.y_test[outside]),
        )
        if config.privacy.secure_averaging:
            vector = _neighbourhood_view(topology, node, finals)
        inside, unseen = (sample_losses(probe, vector, x, y) for x, y in sets)
        plain.append(loss_threshold_attack(inside, unseen))
        honest = [j for j in topology.in_neighbours(node, 0) if j < len(finals)]
        if honest:
            reference = shadow(min(honest))
            ref_in, ref_out = (sample_losses(probe, reference, x, y) for x, y in sets)
            calibrated.append(calibrated_attack(inside, ref_in, unseen, ref_out))
    if not plain:
        return {}
    out = {
        "mia_auc": float(np.mean([f.auc for f in plain])),
        "mia_auc_max": float(np.max([f.auc for f in plain])),
        "mia_tpr_at_1pct_fpr": float(np.mean([f.tpr_at_1pct_fpr for f in plain])),
        "mia_advantage": float(np.mean([f.advantage for f in plain])),
    }
    if calibrated:
        out["mia_calibrated_auc"] = float(np.mean([f.auc for f in calibrated]))
        out["mia_calibrated_auc_max"] = float(np.max([f.auc for f in calibrated]))
        out["mia_calibrated_tpr_at_1pct_fpr"] = float(
            np.mean([f.tpr_at_1pct_fpr for f in calibrated])
        )
    return out


def _neighbourhood_view(
    topology: Topology, target: int, finals: Sequence[npt.NDArray[np.float32]]
) -> Any:
    """What secure averaging shows the target's lowest-numbered honest out-neighbour:
    the weighted average of that neighbour's honest in-neighbours' models."""
    receivers = [i for i in topology.out_neighbours(target, 0) if i < len(finals)]
    weights = {j: w for j, w in topology.weights(min(receivers), 0).items() if j < len(finals)}
    total = sum(weights.values())
    return sum(w / total * finals[j] for j, w in weights.items())


__all__ = ["dp_summary", "enable_dp_all", "membership_leakage"]
