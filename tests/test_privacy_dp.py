"""DP-SGD: the accounting against dp-accounting itself, the clipping against a brute-force
computation, the budget, and the whole path from `[privacy]` to the summary."""

from __future__ import annotations

import copy
import json
import math

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.cli import main
from gossipfl.data import load_dataset, partition
from gossipfl.errors import ConfigError
from gossipfl.learning import LearnerConfig, make_learner
from gossipfl.privacy.accounting import RDP_ORDERS, calibrate_noise, dp_sgd_epsilon
from gossipfl.privacy.dpsgd import DPSettings, PrivacyBudgetExhausted
from gossipfl.simulation import SimulationConfig, run_simulation

DELTA = 1e-5


def library_epsilon(rate: float, sigma: float, steps: int, orders: list[float] | None) -> float:
    """ε straight from dp-accounting's public API: compose the T-step event, convert."""
    step: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(sigma)
    if rate < 1:
        step = dp_accounting.PoissonSampledDpEvent(rate, step)
    accountant = dp_accounting.rdp.RdpAccountant(orders=orders)
    accountant.compose(dp_accounting.SelfComposedDpEvent(step, steps))
    return float(accountant.get_epsilon(DELTA))


@settings(max_examples=40, deadline=None)
@given(
    rate=st.floats(0.005, 1.0),
    sigma=st.floats(0.5, 20.0),
    steps=st.integers(1, 5000),
)
def test_reported_epsilon_is_dp_accountings_own(rate: float, sigma: float, steps: int) -> None:
    ours = dp_sgd_epsilon(rate, sigma, steps, DELTA)
    assert ours == pytest.approx(library_epsilon(rate, sigma, steps, list(RDP_ORDERS)), rel=1e-9)


def test_epsilon_is_conservative_against_the_librarys_default_orders() -> None:
    # integer orders only: never below what the finer default grid proves, and close to it
    for rate, sigma, steps in [(0.36, 3.17, 40), (0.1, 1.0, 1000), (1.0, 2.0, 50)]:
        ours = dp_sgd_epsilon(rate, sigma, steps, DELTA)
        finer = library_epsilon(rate, sigma, steps, None)
        assert finer * (1 - 1e-9) <= ours <= finer * 1.1


def test_no_step_costs_nothing_and_no_noise_guarantees_nothing() -> None:
    assert dp_sgd_epsilon(0.5, 1.0, 0, DELTA) == 0.0
    assert dp_sgd_epsilon(0.5, 0.0, 10, DELTA) == math.inf
    with pytest.raises(ConfigError, match="sampling rate"):
        dp_sgd_epsilon(0.0, 1.0, 10, DELTA)
    with pytest.raises(ConfigError, match="delta"):
        dp_sgd_epsilon(0.5, 1.0, 10, 1.5)


@pytest.mark.parametrize(("rate", "steps", "target"), [(0.36, 150, 1.0), (0.1, 1000, 8.0)])
def test_calibrated_noise_spends_the_budget_and_no_less_noise_would_do(
    rate: float, steps: int, target: float
) -> None:
    sigma = calibrate_noise(rate, steps, target, DELTA)
    assert dp_sgd_epsilon(rate, sigma, steps, DELTA) <= target
    assert dp_sgd_epsilon(rate, sigma * 0.99, steps, DELTA) > target


def test_a_budget_no_noise_can_keep_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"raise privacy\.epsilon"):
        calibrate_noise(1.0, 100_000, 0.01, DELTA)


def test_a_plan_over_its_budget_is_refused_with_the_noise_it_would_need() -> None:
    request = DPSettings(epsilon=1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match=r"would spend epsilon = .* raise privacy.noise_mult"):
        request.plan(samples=90, batch_size=32, steps=150, who="peer-0003")
    with pytest.raises(ConfigError, match=r"privacy\.epsilon .* or privacy\.noise_multiplier"):
        DPSettings().plan(samples=90, batch_size=32, steps=150)
    plan = DPSettings(epsilon=2.0).plan(samples=90, batch_size=32, steps=10)
    assert plan.sampling_rate == pytest.approx(32 / 90)
    for _ in range(10):
        plan.spend(1)
    assert plan.epsilon == pytest.approx(2.0, rel=2e-3)
    assert not plan.allows(1)
    with pytest.raises(PrivacyBudgetExhausted, match="over the budget of 2"):
        plan.spend(1)


def numpy_learner(seed: int = 3) -> object:
    data = load_dataset("digits", seed=0)
    config = LearnerConfig(lr=0.5, momentum=0.0, batch_size=16)
    return make_learner(config, data, np.arange(80), seed=seed), data


def test_numpy_dp_gradient_is_the_clipped_per_sample_sum_plus_noise() -> None:
    learner, data = numpy_learner()
    plan = learner.enable_dp(DPSettings(clip=0.3, noise_multiplier=0.8), rounds=5)  # type: ignore[attr-defined]
    rng, noise = copy.deepcopy(learner._rng), copy.deepcopy(learner._noise)  # type: ignore[attr-defined]
    grads, _ = learner._dp_gradients(plan)  # type: ignore[attr-defined]
    # brute force: one sample at a time
    x, y = data.x_train[:80], data.y_train[:80]
    chosen = np.flatnonzero(rng.random(80) < plan.sampling_rate)
    w, b = learner.params["weight"], learner.params["bias"]  # type: ignore[attr-defined]
    total_w, total_b = np.zeros_like(w, np.float64), np.zeros_like(b, np.float64)
    for i in chosen:
        logits = x[i] @ w + b
        p = np.exp(logits - logits.max())
        p /= p.sum()
        p[y[i]] -= 1
        gw, gb = np.outer(x[i], p), p
        norm = math.sqrt((gw**2).sum() + (gb**2).sum())
        scale = min(1.0, 0.3 / norm)
        total_w += scale * gw
        total_b += scale * gb
    std = 0.8 * 0.3
    total_w += noise.normal(0.0, std, size=w.shape)
    total_b += noise.normal(0.0, std, size=b.shape)
    np.testing.assert_allclose(grads["weight"], total_w / plan.expected_batch, atol=1e-5)
    np.testing.assert_allclose(grads["bias"], total_b / plan.expected_batch, atol=1e-5)


def test_a_learner_past_its_budget_stops_training_and_says_so() -> None:
    learner, _ = numpy_learner()
    learner.enable_dp(DPSettings(epsilon=3.0), rounds=2)  # type: ignore[attr-defined]
    first = learner.train(0)  # type: ignore[attr-defined]
    learner.train(1)  # type: ignore[attr-defined]
    assert 0 < first["epsilon"] < 3.0
    frozen = learner.adapter.get_flat().copy()  # type: ignore[attr-defined]
    third = learner.train(2)  # type: ignore[attr-defined]
    assert third["dp_budget_spent"] == 1.0
    assert third["epsilon"] == pytest.approx(3.0, rel=2e-3)
    np.testing.assert_array_equal(learner.adapter.get_flat(), frozen)  # type: ignore[attr-defined]


def test_torch_dp_sgd_clips_each_sample_through_opacus() -> None:
    data = load_dataset("digits", seed=0)
    config = LearnerConfig(model="mlp", backend="torch", lr=1.0, momentum=0.0, batch_size=16)
    learner = make_learner(config, data, np.arange(64), seed=1)
    plan = learner.enable_dp(DPSettings(clip=1e-3, noise_multiplier=1e-6), rounds=20)  # type: ignore[attr-defined]
    before = learner.adapter.get_flat().copy()
    metrics = learner.train(0)
    moved = float(np.linalg.norm(learner.adapter.get_flat() - before))
    # at most every sample of the batch at norm clip, over the expected batch size; a
    # batch twice its expected size is already far in the tail
    assert 0 < moved <= 1.0 * 1e-3 * 2.5
    assert metrics["epsilon"] == dp_sgd_epsilon(plan.sampling_rate, 1e-6, 1, DELTA)
    assert metrics["epsilon"] > 1000  # so little noise protects nothing, and says so
    assert math.isfinite(learner.evaluate(data.x_test, data.y_test)[1])


def private(*overrides: str) -> SimulationConfig:
    return SimulationConfig().with_overrides(
        ["peers=8", "rounds=12", "topology.name=ring", "privacy.mechanism=dp-sgd", *overrides]
    )


def test_a_private_run_reports_each_peers_epsilon_as_the_accountant_computes_it() -> None:
    config = private("privacy.noise_multiplier=2.0", "data.partition=dirichlet")
    result = run_simulation(config)
    summary = result.summary()
    rows = [r for r in result.peer_rows if r["round"] == 11]
    assert len(rows) == 8
    data = load_dataset("digits", seed=0)  # every peer's shard size, as the runner split
    parts = partition(data.y_train, 8, "dirichlet", seed=0, alpha=config.data.alpha)
    sizes = {f"peer-{i:04d}": len(part) for i, part in enumerate(parts)}
    assert len(set(sizes.values())) > 1  # unequal shards: unequal sampling rates
    for row in rows:
        rate = min(1.0, 32 / sizes[str(row["peer"])])
        assert row["epsilon"] == pytest.approx(library_epsilon(rate, 2.0, 12, list(RDP_ORDERS)))
    assert summary["epsilon"] == pytest.approx(max(r["epsilon"] for r in rows))
    assert summary["noise_multiplier_mean"] == 2.0
    assert result.summaries[-1].epsilon == pytest.approx(summary["epsilon"])
    assert [s.epsilon for s in result.summaries] == sorted(s.epsilon for s in result.summaries)


def test_a_budget_calibrates_every_peer_to_spend_it_and_the_run_learns() -> None:
    summary = run_simulation(private("privacy.epsilon=4")).summary()
    assert 3.99 <= summary["epsilon"] <= 4.0
    assert summary["honest_mean_acc"] > 0.5  # noisy, but learning


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["privacy.mechanism=dp-sgd"], "needs privacy.epsilon"),
        (["privacy.epsilon=2"], "set privacy.mechanism = 'dp-sgd'"),
        (["privacy.mechanism=dp-sgd", "privacy.epsilon=2", "mode=consensus"], "mode = 'train'"),
        (["privacy.mechanism=dp-sgd", "privacy.clip=0", "privacy.epsilon=1"], "clip"),
        (["privacy.mechanism=laplace"], "one of none, dp-sgd"),
    ],
)
def test_impossible_privacy_settings_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SimulationConfig().with_overrides(overrides).validate()


def test_cli_privacy_flags_run_and_report_the_guarantee(
    capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    argv = ["simulate", "--peers", "8", "--rounds", "6", "--topology", "ring"]
    code = main([*argv, "--privacy", "dp-sgd", "--epsilon", "2", "--json", "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert 1.99 <= summary["epsilon"] <= 2.0
    assert main([*argv, "--privacy", "dp_sdg", "--out", str(tmp_path)]) == 2
    assert "did you mean 'dp-sgd'" in capsys.readouterr().err


def test_a_model_opacus_cannot_privatize_is_refused_with_the_reason() -> None:
    import torch

    from gossipfl.learning.torch_models import TorchLearner

    data = load_dataset("digits", seed=0)
    module = torch.nn.Sequential(
        torch.nn.Linear(64, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 10)
    )
    config = LearnerConfig(model="custom", backend="torch")
    learner = TorchLearner(config, data.x_train[:64], data.y_train[:64], 10, seed=0, module=module)
    with pytest.raises(ConfigError, match=r"DP-SGD cannot train this model.*BatchNorm1d"):
        learner.enable_dp(DPSettings(epsilon=2.0), rounds=5)
