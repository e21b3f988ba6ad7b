"""Membership-inference measurement: the AUC is the exact pairwise probability, the
low-FPR rate respects its FPR, and per-sample losses agree with the learners' mean loss."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossipfl.errors import ConfigError
from gossipfl.privacy import auc, loss_threshold_attack, sample_losses, tpr_at_fpr
from gossipfl.tasks import load_task

scores = st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=30)


@given(scores, scores)
def test_auc_is_the_pairwise_probability_with_ties_as_half(
    pos: list[float], neg: list[float]
) -> None:
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg]
    assert auc(pos, neg) == pytest.approx(sum(pairs) / len(pairs))


@given(scores, scores, st.sampled_from([0.0, 0.01, 0.1, 0.5]))
def test_tpr_at_fpr_never_exceeds_its_false_positive_rate(
    pos: list[float], neg: list[float], fpr: float
) -> None:
    rate = tpr_at_fpr(pos, neg, fpr)
    assert 0.0 <= rate <= 1.0
    # The threshold it used lets at most fpr of the negatives through: recompute it.
    ordered = sorted(neg, reverse=True)
    allowed = int(np.floor(fpr * len(neg)))
    threshold = ordered[allowed] if allowed < len(neg) else -np.inf
    assert sum(n > threshold for n in neg) <= fpr * len(neg)
    assert rate == pytest.approx(sum(p > threshold for p in pos) / len(pos))


def test_separable_losses_are_found_and_equal_ones_are_not() -> None:
    rng = np.random.default_rng(0)
    found = loss_threshold_attack(rng.uniform(0, 1, 500), rng.uniform(2, 3, 500))
    assert (found.auc, found.tpr_at_1pct_fpr, found.advantage) == (1.0, 1.0, 1.0)
    blind = loss_threshold_attack(rng.normal(size=4000), rng.normal(size=4000))
    assert blind.auc == pytest.approx(0.5, abs=0.03)
    assert blind.tpr_at_1pct_fpr < 0.03
    assert blind.to_dict()["mia_members"] == 4000
    with pytest.raises(ConfigError, match="at least one member"):
        loss_threshold_attack([], [1.0])
    with pytest.raises(ConfigError, match="NaN"):
        loss_threshold_attack([np.nan], [1.0])


@pytest.mark.parametrize("task", ["digits-softmax", "digits-mlp"])
def test_per_sample_losses_average_to_the_learners_loss(task: str) -> None:
    built = load_task(task)
    data = built.dataset(seed=0)
    learner = built.learner(data, np.arange(300), init_seed=0, seed=0)
    for round in range(20):
        learner.train(round)
    vector = learner.adapter.get_flat()
    losses = sample_losses(learner, vector, data.x_test, data.y_test)
    assert losses.shape == (len(data.y_test),)
    assert losses.mean() == pytest.approx(learner.evaluate(data.x_test, data.y_test)[1], rel=1e-4)
    # Another model's losses, and the learner's own model is left as it was.
    zeros = sample_losses(learner, np.zeros_like(vector), data.x_test, data.y_test)
    assert zeros == pytest.approx(np.log(10), rel=1e-4)
    np.testing.assert_array_equal(learner.adapter.get_flat(), vector)
    # A model trained on 300 samples fits them better than unseen ones: it leaks.
    members = sample_losses(learner, vector, data.x_train[:300], data.y_train[:300])
    leak = loss_threshold_attack(members, losses)
    assert leak.auc > 0.5


def test_a_simulation_reports_the_leakage_of_every_peers_model() -> None:
    from gossipfl.simulation import SimulationConfig, run_simulation

    def leakage(*settings: str) -> dict[str, float]:
        config = SimulationConfig().with_overrides(
            ["peers=8", "topology.name=ring", "rule.name=mean", "privacy.mia=true",
             "output.eval_every=1000", *settings]
        )  # fmt: skip
        summary = run_simulation(config).summary()
        return {k: v for k, v in summary.items() if k.startswith("mia_")}

    quiet = leakage("rounds=2")
    assert set(quiet) == {
        "mia_auc", "mia_auc_max", "mia_tpr_at_1pct_fpr", "mia_advantage",
        "mia_calibrated_auc", "mia_calibrated_auc_max", "mia_calibrated_tpr_at_1pct_fpr",
    }  # fmt: skip
    assert 0.3 < quiet["mia_auc"] < 0.7  # two rounds of softmax: nothing learned, nothing leaks
    # An MLP that overfits its peer's MNIST-1D shard gives its members away.
    leaky = leakage("rounds=60", "task.name=mnist1d", "task.params.local_steps=4")
    assert leaky["mia_auc"] > 0.55
    assert leaky["mia_auc_max"] >= leaky["mia_auc"]
    # calibrated by a shadow model that never saw the target's data: measured, not better
    # here (the shadow, trained alone on one shard, is a poor judge of difficulty)
    assert 0.45 < leaky["mia_calibrated_auc"] <= leaky["mia_calibrated_auc_max"] < 1.0
    plain = run_simulation(SimulationConfig().with_overrides(["rounds=1"]))
    assert "mia_auc" not in plain.summary()  # off unless asked for


def test_calibration_removes_what_sample_difficulty_hides() -> None:
    from gossipfl.privacy import calibrated_attack

    rng = np.random.default_rng(0)
    # per-sample difficulty swamps the small gain members get from being trained on
    member_difficulty = rng.exponential(1.0, 500)
    outsider_difficulty = rng.exponential(1.0, 500)
    members = member_difficulty - 0.05
    outsiders = outsider_difficulty + rng.normal(0, 0.001, 500)
    raw = loss_threshold_attack(members, outsiders)
    assert 0.45 < raw.auc < 0.6
    fixed = calibrated_attack(members, member_difficulty, outsiders, outsider_difficulty)
    assert fixed.auc > 0.99
    assert fixed.tpr_at_1pct_fpr > 0.9
    with pytest.raises(ConfigError, match="under both models"):
        calibrated_attack(members, member_difficulty[:-1], outsiders, outsider_difficulty)
