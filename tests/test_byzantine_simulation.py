"""Byzantine peers in the simulator: placement, omniscience, and the headline result.

The headline (the issue's acceptance check, small enough for CI): on a 4×4 torus of 16
honest peers with non-IID digits and 4 Byzantine peers, plain gossip collapses under
dissensus and drops under sign flipping, while the recommended rule holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest

from gossipfl.cli import main
from gossipfl.errors import ConfigError
from gossipfl.merge import make_rule
from gossipfl.simulation import SimulationConfig, run_simulation
from gossipfl.simulation.byzantine import (
    RECOMMENDED_RULE,
    SPECTRAL_RULES,
    ModelOracle,
    OmniscientAttacker,
    place_byzantine,
    setup_byzantine,
)
from gossipfl.simulation.runner import build_topology_for, check_rule_fits
from gossipfl.topology import fiedler_vector


def attacked(rule: str, attack: str, *settings: str) -> dict[str, Any]:
    config = SimulationConfig().with_overrides(
        [
            "rounds=60",
            "data.alpha=0.1",
            "output.eval_every=60",
            "byzantine.count=4",
            "byzantine.degree=2",
            f"byzantine.attack={attack}",
            f"rule.name={rule}",
            *settings,
        ]
    )
    return run_simulation(config).summary()


@pytest.fixture(scope="module")
def headline() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (rule, attack): attacked(rule, attack)
        for rule in ("mean", RECOMMENDED_RULE)
        for attack in ("none", "sign-flip", "dissensus", "spectral")
    }


def test_plain_gossip_collapses_while_the_recommended_rule_holds(
    headline: dict[tuple[str, str], dict[str, Any]],
) -> None:
    clean = headline[("mean", "none")]["honest_mean_acc"]
    assert clean > 0.94
    # plain gossip: dissensus keeps honest models apart (near a third of the classes each)
    assert headline[("mean", "dissensus")]["honest_mean_acc"] < 0.5
    assert headline[("mean", "sign-flip")]["honest_mean_acc"] < clean - 0.05
    robust_clean = headline[(RECOMMENDED_RULE, "none")]
    assert robust_clean["honest_mean_acc"] >= clean - 0.005  # no cost without attack
    for attack in ("sign-flip", "dissensus"):
        summary = headline[(RECOMMENDED_RULE, attack)]
        assert summary["honest_mean_acc"] >= robust_clean["honest_mean_acc"] - 0.02
        assert summary["honest_min_acc"] >= robust_clean["honest_min_acc"] - 0.05


def test_the_spectral_attack_splits_plain_gossip_and_the_recommended_rule_holds(
    headline: dict[tuple[str, str], dict[str, Any]],
) -> None:
    # Each target is pushed along the honest graph's Fiedler vector with a scale searched
    # against its own rule: unbounded under averaging (models blow up), clipped by CS+.
    plain = headline[("mean", "spectral")]
    assert plain["attack_detail"] == "spectral(scale=None, evals=16)"
    assert plain["honest_mean_acc"] < 0.5
    assert plain["consensus_distance"] > 1e6
    robust = headline[(RECOMMENDED_RULE, "spectral")]
    clean = headline[(RECOMMENDED_RULE, "none")]
    assert robust["honest_mean_acc"] >= clean["honest_mean_acc"] - 0.02
    assert robust["consensus_distance"] < 1.0


def test_attackers_saw_every_honest_model_of_the_round(
    headline: dict[tuple[str, str], dict[str, Any]],
) -> None:
    summary = headline[("mean", "dissensus")]
    assert summary["omniscient"] is True
    assert summary["stale_views"] == 0  # the oracle held round r when round r was crafted
    assert summary["crafted"] == 60 * 4 * 2  # rounds × Byzantine peers × targets each
    assert summary["byzantine_attached"] == 4
    assert summary["attack_detail"] == "dissensus(epsilon=1.5, evals=16)"
    assert summary["delta_max"] == pytest.approx(2 / 7)  # degree-6 node, two attackers
    assert summary["undefended"] == []
    assert summary["honest_spectral_gap"] == pytest.approx(0.4)
    assert summary["spectral_gap"] == pytest.approx(0.4)  # still the honest graph's
    assert "stale_views" not in headline[("mean", "none")]  # attack none: no Byzantine peers


def test_dissensus_with_epsilon_one_freezes_its_target_under_plain_gossip() -> None:
    # One Byzantine peer linked to node 0 sends x_0 - Σ W_0j (x_j - x_0) / W_0b: node 0
    # never moves, so every honest model converges to node 0's initial vector.
    config = SimulationConfig().with_overrides(
        [
            "mode=consensus",
            "peers=9",
            "topology.name=torus",
            "dimension=8",
            "rounds=150",
            "byzantine.count=1",
            "byzantine.degree=1",
            "byzantine.attack=dissensus",
            "byzantine.epsilon=1",
        ]
    )
    placement = place_byzantine(config, build_topology_for(config))
    assert placement is not None
    target = next(row.node for row in placement.report.rows if row.byzantine_neighbours)
    rng = np.random.default_rng(config.seed)  # the runner's consensus initialisation
    initial = np.stack([rng.normal(size=8).astype(np.float32) for _ in range(9)])
    summary = run_simulation(config).summary()
    assert summary["consensus_distance"] < 1e-8
    expected_drift = np.abs(initial[target].astype(np.float64) - initial.mean(axis=0)).max()
    assert summary["mean_drift"] == pytest.approx(expected_drift, rel=1e-3)


def test_live_mode_attackers_work_from_what_they_receive() -> None:
    summary = attacked("mean", "dissensus", "byzantine.omniscient=false", "rounds=30")
    assert summary["omniscient"] is False
    assert summary["crafted"] == 30 * 4 * 2
    assert summary["honest_mean_acc"] < 0.8  # weaker than omniscient, still damaging


def test_label_flipping_peers_train_on_flipped_labels() -> None:
    flipped = attacked("mean", "label-flip", "rounds=30")
    assert flipped["crafted"] == 30 * 4 * 2
    clean = attacked("mean", "none", "rounds=30")
    assert 0.5 < flipped["honest_mean_acc"] < clean["honest_mean_acc"]


def test_an_undefendable_placement_is_refused_unless_a_study_asks_for_it() -> None:
    config = SimulationConfig().with_overrides(
        ["topology.name=ring", "peers=8", "byzantine.count=2", "byzantine.attack=ipm"]
    )
    # A ring node linked to both attackers: 2 of its 4 neighbours, no honest majority.
    with pytest.raises(
        ConfigError, match=r"^honest node \d has 2 Byzantine neighbours among its 4"
    ):
        run_simulation(config.with_overrides(["rule.name=mean"]))
    with pytest.raises(ConfigError, match=r"d >= 2b\+1 = 5.*--allow-undefended"):
        run_simulation(config.with_overrides(["rule.name=mean"]))


def test_clipping_rules_refuse_byzantine_weight_at_or_above_the_honest_spectral_gap() -> None:
    """4 Byzantine peers of degree 2 on 16 honest: delta_max = 2/7 at the nodes with two
    attackers. The random 4-regular graph of seed 0 has an honest gap of 0.212 (refused
    for the clipping rules), that of seed 2 0.322 and the torus 0.4 (run)."""
    base = SimulationConfig().with_overrides(
        [
            "topology.name=random-regular",
            "peers=16",
            "byzantine.count=4",
            "byzantine.degree=2",
            "byzantine.attack=ipm",
            "rounds=1",
        ]
    )
    refusal = (
        r"^honest node \d+ gives its 2 Byzantine neighbours a mixing weight of 0\.286, at or "
        r"above the honest graph's spectral gap \(0\.212\): '{rule}' clips .*"
        r"--allow-undefended"
    )
    for rule in sorted(SPECTRAL_RULES):
        with pytest.raises(ConfigError, match=refusal.format(rule=rule)):
            run_simulation(base.with_overrides([f"rule.name={rule}"]))
    for placement in (["seed=2"], ["topology.name=torus"]):
        summary = run_simulation(base.with_overrides(["rule.name=cs-plus", *placement])).summary()
        assert summary["delta_max"] == pytest.approx(2 / 7)
        assert summary["honest_spectral_gap"] > 0.3
    for anyway in (["rule.name=cs-plus", "byzantine.allow_undefended=true"], ["rule.name=median"]):
        summary = run_simulation(base.with_overrides(anyway)).summary()
        assert summary["honest_spectral_gap"] == pytest.approx(0.212, abs=1e-3)
        assert summary["rounds_completed"] == 1


def test_rules_are_checked_on_the_combined_graph_before_running() -> None:
    config = SimulationConfig().with_overrides(
        [
            "topology.name=ring",
            "peers=8",
            "byzantine.count=2",
            "byzantine.attack=ipm",
            "byzantine.allow_undefended=true",
        ]
    )
    with pytest.raises(ConfigError, match=r"node \d of 'ring-8\+2byz': cs-plus with b=1 needs"):
        run_simulation(config.with_overrides(["rule.name=cs-plus"]))
    # Allowed, an undefended placement runs (and its report lists the nodes).
    result = run_simulation(config.with_overrides(["rule.name=mean", "rounds=2"]))
    assert result.summary()["undefended"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["protocol=async"], "protocol = 'sync' only"),
        (["topology.name=one-peer-exponential"], "static undirected topology"),
        (["mode=consensus", "byzantine.attack=label-flip"], "needs mode = 'train'"),
        (["byzantine.lag=1.0"], r"byzantine.lag must be in \[0, network.deadline"),
        (["byzantine.attack=sign-flop"], "unknown attack 'sign-flop'"),
        (["byzantine.sigma=3"], "attack 'ipm' has no parameter sigma"),
    ],
)
def test_impossible_byzantine_settings_are_refused(settings: list[str], message: str) -> None:
    config = SimulationConfig().with_overrides(
        ["rounds=2", "byzantine.count=1", "byzantine.attack=ipm", *settings]
    )
    with pytest.raises(ConfigError, match=message):
        run_simulation(config)


def test_oracle_falls_back_to_the_nearest_round_it_has() -> None:
    oracle = ModelOracle(keep_rounds=2)
    hook = oracle.recorder(3)
    v = np.ones(2, np.float32)
    assert hook("peer-x", 5, v) is v  # honest models pass unchanged
    assert oracle.model(3, 5) == (v, True)
    assert oracle.model(3, 6)[1] is False
    assert oracle.model(3, 6)[0] is v
    assert oracle.model(3, 4)[0] is v  # only later rounds known: the oldest of those
    assert oracle.model(7, 5) == (None, False)
    for r in range(6, 10):
        oracle.record(3, r, np.full(2, r, np.float32))
    assert oracle.model(3, 5)[0] is not v  # round 5 pruned (older than newest - keep)


def test_cli_prints_the_placement_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "simulate",
            "--topology",
            "ring",
            "--peers",
            "8",
            "--rule",
            "trimmed-mean",
            "--byzantine",
            "2",
            "--byzantine-degree",
            "2",
            "--attack",
            "ipm",
            "--allow-undefended",
            "--rounds",
            "3",
            "--json",
            "--no-plot",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)  # exactly one object on stdout
    assert "δ_max" in err
    assert "undefended" in err
    # Without --allow-undefended the same command is refused, in one line, before running.
    assert main(["simulate", "--topology", "ring", "--peers", "8", "--rule", "trimmed-mean",
                 "--byzantine", "2", "--attack", "ipm", "--rounds", "3", "--no-plot",
                 "--out", str(tmp_path)]) == 2  # fmt: skip
    refused = capsys.readouterr().err.strip().splitlines()
    assert len(refused) == 1
    assert "without a local honest majority" in refused[0]
    config = SimulationConfig().with_overrides(
        ["topology.name=ring", "peers=8", "byzantine.count=2", "byzantine.attack=ipm"]
    )
    placement = place_byzantine(config, build_topology_for(config))
    assert placement is not None
    assert placement.report.undefended
    assert summary["undefended"] == list(placement.report.undefended)
    assert summary["delta_max"] == pytest.approx(placement.report.delta_max)


def test_the_no_argument_showcase_compares_with_plain_gossip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--json", "--no-plot", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1
    summary = json.loads(out)
    baseline = summary["baseline"]
    assert summary["rule"] == RECOMMENDED_RULE
    assert baseline["rule"] == "mean"
    assert summary["attack"] == baseline["attack"] == "dissensus"
    assert summary["honest_mean_acc"] > 0.9 > 0.5 > baseline["honest_mean_acc"]
    assert "fell to" in summary["verdict"]
    assert Path(baseline["run_dir"], "summary.json").exists()
    assert "δ_max" in err


def test_rule_check_given_the_honest_topology_uses_the_combined_graph() -> None:
    # 4 honest peers on a ring (degree 2); 4 Byzantine peers linked to all of them: every
    # honest node has degree 6, enough for cs-plus with b = 1 (which needs 3 neighbours).
    config = SimulationConfig().with_overrides(
        [
            "topology.name=ring",
            "peers=4",
            "rule.name=cs-plus",
            "byzantine.count=4",
            "byzantine.degree=4",
            "byzantine.attack=ipm",
            "byzantine.allow_undefended=true",
        ]
    )
    check_rule_fits(config, build_topology_for(config), 4)
    clean = config.with_overrides(["byzantine.attack=none"])
    with pytest.raises(ConfigError, match="node 0 of 'ring-4': cs-plus with b=1 needs"):
        check_rule_fits(clean, build_topology_for(clean), 4)


def test_cli_says_when_a_byzantine_count_adds_no_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", "--byzantine", "2", "--rounds", "1", "--peers", "9", "--json"]
    assert main([*args, "--no-plot", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "no Byzantine peers are added" in err
    assert "delta_max" not in json.loads(out)


def test_a_torch_model_pushed_to_extreme_values_skips_steps_instead_of_crashing() -> None:
    """Plain gossip under dissensus drives honest MNIST-1D MLPs to huge weights; their
    local training then meets an infinite loss. That is the attack's damage (accuracy at
    chance), not a crash of the honest peer (which it was, at round 17)."""
    summary = attacked(
        "mean",
        "dissensus",
        "rounds=30",
        "output.eval_every=30",
        "task.name=mnist1d",
        "task.params.local_steps=4",
    )
    assert summary["rounds_completed"] == 30
    assert summary["honest_mean_acc"] < 0.2  # ten classes: destroyed, as plain gossip is


def test_the_torch_learner_skips_a_step_whose_loss_is_not_finite() -> None:
    from gossipfl.tasks import load_task

    task = load_task("mnist1d", {"local_steps": "3"})
    data = task.dataset(seed=0)
    learner = task.learner(data, np.arange(200), init_seed=0, seed=0)
    healthy = learner.adapter.get_flat()
    extreme = np.full_like(healthy, 3e37)  # finite, but the logits overflow
    learner.adapter.set_flat(extreme)
    metrics = learner.train(0)
    assert metrics["skipped_steps"] == 3
    np.testing.assert_array_equal(learner.adapter.get_flat(), extreme)  # untouched
    learner.adapter.set_flat(healthy)
    metrics = learner.train(1)
    assert "skipped_steps" not in metrics
    assert np.isfinite(metrics["loss"])
    after = learner.adapter.get_flat()
    assert np.isfinite(after).all()  # the momentum was never poisoned
    assert not np.array_equal(after, healthy)


def test_behind_the_oracle_plain_gossip_ignores_the_attack(
    headline: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """``byzantine.oracle``: the honest peers never merge a Byzantine model, so even plain
    gossip under dissensus ends where it does without attackers (a little lower: the
    attackers' weight stays on the node), the reference for every rule's drop."""
    clean = headline[("mean", "none")]["honest_mean_acc"]
    assert headline[("mean", "dissensus")]["honest_mean_acc"] < 0.5
    oracle = attacked("mean", "dissensus", "byzantine.oracle=true")
    assert oracle["honest_mean_acc"] >= clean - 0.02
    from gossipfl.simulation.processes import simulate

    live = SimulationConfig().with_overrides(
        ["transport=libp2p", "byzantine.count=4", "byzantine.attack=ipm",
         "byzantine.oracle=true", "rounds=1"]
    )  # fmt: skip
    with pytest.raises(ConfigError, match="in-process simulations"):
        simulate(live)


def test_known_b_gives_each_node_its_own_byzantine_count() -> None:
    """IOS as its paper runs it: node i removes exactly b_i neighbours, so with no
    attacker it is plain gossip (to the bit), and a configured b is only an upper bound."""
    from gossipfl.simulation.byzantine import rule_params

    config = SimulationConfig().with_overrides(
        ["rule.name=ios", "byzantine.count=4", "byzantine.attack=ipm", "byzantine.known_b=true"]
    )
    placement = place_byzantine(config, build_topology_for(config))
    assert placement is not None
    counts = {row.node: row.byzantine_neighbours for row in placement.report.rows}
    assert {rule_params(config, placement, node)["b"] for node in counts} == set(counts.values())
    assert rule_params(config.with_overrides(["rule.name=mean"]), placement, 0) == {}
    quiet = ["rounds=8", "output.eval_every=8", "byzantine.attack=none", "byzantine.known_b=true"]
    ios = run_simulation(SimulationConfig().with_overrides([*quiet, "rule.name=ios"]))
    mean = run_simulation(SimulationConfig().with_overrides([*quiet, "rule.name=mean"]))
    assert ios.summary()["honest_mean_acc"] == mean.summary()["honest_mean_acc"]


def test_omniscient_views_carry_the_fiedler_direction_and_the_targets_own_merge() -> None:
    config = SimulationConfig().with_overrides(
        [
            "mode=consensus",
            "peers=9",
            "topology.name=torus",
            "dimension=6",
            "byzantine.count=1",
            "byzantine.degree=2",
            "byzantine.attack=spectral",
            "rule.name=cs-plus",
        ]
    )
    placement = place_byzantine(config, build_topology_for(config))
    assert placement is not None
    ids = [f"p{i}" for i in range(placement.topology.n)]
    setup = setup_byzantine(config, placement, ids)
    rng = np.random.default_rng(0)
    models = rng.normal(size=(9, 6)).astype(np.float32)
    for node in range(9):
        setup.oracle.record(node, 4, models[node])
    hook = setup.peers[0].outgoing
    assert isinstance(hook, OmniscientAttacker)
    target = next(row.node for row in placement.report.rows if row.byzantine_neighbours)
    view = hook.view(target, 4, np.zeros(6, np.float32))
    u = fiedler_vector(nx.Graph(placement.honest_topology.graph(0)))
    assert view.spectral is not None
    np.testing.assert_allclose(view.spectral, u[target] * (u @ models.astype(np.float64)))
    # the merge the attacker searches against is the target's own CS+ merge
    assert view.merge is not None
    message = np.full(6, 3.0, np.float32)
    weights = placement.topology.weights(target, 0)
    rows = np.stack([models[j] if j < 9 else message for j in sorted(weights)])
    expected = make_rule("cs-plus").merge(
        models[target], rows, np.array([weights[j] for j in sorted(weights)])
    )
    np.testing.assert_allclose(view.merge(message), expected, rtol=1e-6)
