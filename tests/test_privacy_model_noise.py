"""Noise on the shared model (privacy.mechanism = "model-noise"): the accounting against
dp-accounting itself, the clipping and the noise against their definitions, the budget,
and the path from `[privacy]` to the summary, in simulation and in `gossipfl start`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest

from gossipfl.cli import main
from gossipfl.daemon.testing import Daemon, kill_all, metrics, start_daemon
from gossipfl.errors import ConfigError
from gossipfl.model import NumpyAdapter
from gossipfl.privacy.accounting import RDP_ORDERS
from gossipfl.privacy.dpsgd import DPSettings
from gossipfl.privacy.model_noise import NoisyUpdates, plan_model_noise
from gossipfl.simulation import SimulationConfig, run_simulation

DELTA = 1e-5


def library_epsilon(sigma: float, rounds: int) -> float:
    """ε of ``rounds`` Gaussian mechanisms of sensitivity 2C and noise σC, straight from
    dp-accounting's public API (noise multiplier σ/2 in its units)."""
    accountant = dp_accounting.rdp.RdpAccountant(orders=list(RDP_ORDERS))
    event = dp_accounting.GaussianDpEvent(sigma / 2)
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(DELTA))


@pytest.mark.parametrize(("sigma", "rounds"), [(2.0, 10), (8.0, 40), (0.5, 3)])
def test_epsilon_is_the_gaussian_mechanisms_at_twice_the_clip(sigma: float, rounds: int) -> None:
    plan = plan_model_noise(DPSettings(noise_multiplier=sigma, delta=DELTA), rounds=rounds)
    assert plan.epsilon_after(rounds) == pytest.approx(library_epsilon(sigma, rounds))
    assert plan.epsilon_after(0) == 0.0


def test_a_budget_calibrates_the_noise_and_a_plan_over_it_is_refused() -> None:
    plan = plan_model_noise(DPSettings(epsilon=8.0, delta=DELTA), rounds=40)
    assert 7.99 <= plan.epsilon_after(40) <= 8.0
    assert library_epsilon(plan.noise_multiplier * 0.99, 40) > 8.0  # no less noise would do
    with pytest.raises(ConfigError, match=r"raise privacy\.noise_multiplier to"):
        plan_model_noise(DPSettings(epsilon=8.0, noise_multiplier=1.0, delta=DELTA), rounds=40)


class Mover:
    """A learner whose every round adds the same update ``u`` to its model."""

    def __init__(self, n: int, u: np.ndarray) -> None:
        self.params = {"x": np.zeros(n, np.float32)}
        self._adapter = NumpyAdapter(self.params)
        self.u = u

    @property
    def adapter(self) -> NumpyAdapter:
        return self._adapter

    def train(self, round: int) -> dict[str, float]:
        self.params["x"] += self.u
        return {"loss": 1.0}

    def evaluate(self, x: Any, y: Any) -> tuple[float, float]:
        return 0.0, 0.0


def test_the_update_is_clipped_to_its_bound_and_noised_with_sigma_times_the_bound() -> None:
    n, clip, sigma = 200_000, 0.5, 0.01
    rng = np.random.default_rng(0)
    u = rng.standard_normal(n).astype(np.float32)
    u *= 4.0 / np.linalg.norm(u)  # an update of norm 4, eight times the bound
    plan = plan_model_noise(DPSettings(clip=clip, noise_multiplier=sigma), rounds=5)
    learner = NoisyUpdates(Mover(n, u), plan, seed=1)
    metrics = learner.train(0)
    released = learner.adapter.get_flat().astype(np.float64)
    direction = u / np.linalg.norm(u)
    along = float(released @ direction)  # the clipped update's norm, plus noise
    assert along == pytest.approx(clip, abs=5 * sigma * clip)
    residual = released - along * direction
    assert residual.std() == pytest.approx(sigma * clip, rel=0.01)
    assert metrics["update_norm"] == pytest.approx(4.0, rel=1e-5)
    assert metrics["epsilon"] == pytest.approx(plan.epsilon_after(1))
    # A small update passes whole.
    small = NoisyUpdates(
        Mover(n, u / 40),
        plan_model_noise(DPSettings(clip=clip, noise_multiplier=sigma), rounds=5),
        seed=2,
    )
    small.train(0)
    assert float(small.adapter.get_flat() @ direction) == pytest.approx(0.1, abs=5 * sigma * clip)


def test_a_peer_past_its_budget_stops_training_and_keeps_its_model() -> None:
    u = np.ones(10, np.float32)
    plan = plan_model_noise(DPSettings(noise_multiplier=2.0, epsilon=100.0), rounds=3)
    plan.budget = plan.epsilon_after(2)  # room for two rounds only
    learner = NoisyUpdates(Mover(10, u), plan, seed=0)
    learner.train(0)
    learner.train(1)
    before = learner.adapter.get_flat()
    metrics = learner.train(2)
    assert metrics["dp_budget_spent"] == 1.0
    np.testing.assert_array_equal(learner.adapter.get_flat(), before)
    assert plan.steps_taken == 2


def test_a_simulated_run_reports_each_peers_epsilon_as_the_accountant_computes_it() -> None:
    config = SimulationConfig().with_overrides(
        ["peers=8", "rounds=6", "topology.name=ring", "privacy.mechanism=model-noise",
         "privacy.noise_multiplier=3.0", "privacy.clip=0.1", "output.plot=false"]
    )  # fmt: skip
    result = run_simulation(config)
    rows = [r for r in result.peer_rows if r["round"] == 5]
    assert len(rows) == 8
    for row in rows:
        assert row["epsilon"] == pytest.approx(library_epsilon(3.0, 6))
    summary = result.summary()
    assert summary["epsilon"] == pytest.approx(library_epsilon(3.0, 6))
    assert summary["noise_multiplier_mean"] == 3.0


def test_the_cli_runs_it_and_more_budget_learns_more(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["simulate", "--peers", "16", "--rounds", "20", "--topology", "torus", "--rule",
            "mean", "--privacy", "model-noise", "--set", "privacy.clip=0.1", "--json",
            "--out", str(tmp_path)]  # fmt: skip
    accuracy = {}
    for epsilon in (4, 1000):
        assert main([*argv, "--epsilon", str(epsilon)]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert epsilon * 0.98 <= summary["epsilon"] <= epsilon  # σ calibrated to 1e-3
        accuracy[epsilon] = summary["honest_mean_acc"]
    assert accuracy[1000] > accuracy[4] + 0.3  # the noise, not something else, is the cost


@pytest.mark.network
@pytest.mark.timeout(120)
def test_gossipfl_start_trains_with_noise_on_its_model(tmp_path: Path) -> None:
    rounds = 6
    common = (
        "--listen", "/ip4/127.0.0.1/tcp/0", "--rule", "mean", "--rounds", str(rounds),
        "--set", "output.eval_every=3", "--set", "training.deadline=2.0",
    )  # fmt: skip
    daemons: list[Daemon | None] = []
    try:
        plain = start_daemon(tmp_path / "plain", *common)
        daemons.append(plain)
        noisy = start_daemon(
            tmp_path / "noisy", *plain.join.split()[2:], *common,
            "--privacy", "model-noise", "--epsilon", "50", "--set", "privacy.clip=0.1",
        )  # fmt: skip
        daemons.append(noisy)
        for daemon in daemons:
            assert daemon is not None
            assert daemon.process.wait(timeout=60) == 0, daemon.stderr()
        spent = [r["epsilon"] for r in metrics(noisy.home) if r["kind"] == "round"]
        assert len(spent) == rounds
        assert spent == sorted(spent)
        # never over budget; all of it, or a round less for a joiner that skipped one
        plan = plan_model_noise(DPSettings(epsilon=50.0), rounds=rounds)
        assert plan.epsilon_after(rounds - 1) * 0.999 <= spent[-1] <= 50
        assert "noise on the model (each round's update clipped to 0.1)" in noisy.stderr()
    finally:
        kill_all(daemons)
