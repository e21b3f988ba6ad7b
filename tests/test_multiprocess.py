"""`gossipfl simulate --transport libp2p` and `gossipfl experiment run` with it: every peer
is a `gossipfl start` process on 127.0.0.1; the summary and metrics have the shape of an
in-process run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gossipfl.cli import main
from gossipfl.daemon.metrics import read_metrics, read_model_records
from gossipfl.experiments import ExperimentSpec, run_experiment
from gossipfl.simulation import SimulationConfig, run_simulation
from gossipfl.simulation.processes import run_processes

pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]


def test_eight_peer_processes_learn_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "simulate", "--transport", "libp2p",
        "--peers", "8", "--topology", "exponential", "--partition", "iid",
        "--rounds", "30", "--set", "output.eval_every=10",
        "--out", str(tmp_path), "--no-plot", "--json",
    ]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["honest_mean_acc"] >= 0.95
    assert summary["honest_min_acc"] >= 0.93
    assert summary["rounds_completed"] == 30
    assert summary["consensus_distance"] < 0.05
    assert summary["bytes_sent"] > 0
    # The same keys as the in-process simulator's summary.
    memory = SimulationConfig().with_overrides(
        ["peers=8", "rounds=2", "topology.name=exponential", "output.plot=false"]
    )
    expected = set(run_simulation(memory).summary()) | {"run_dir"}
    assert set(summary) == expected
    run_dir = Path(summary["run_dir"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    peer_rows = [r for r in rows if r["kind"] == "peer"]
    round_rows = [r for r in rows if r["kind"] == "round"]
    assert len(round_rows) == 30
    assert len(peer_rows) == 8 * 30
    assert {r["peer"] for r in peer_rows} == {f"peer-{i:04d}" for i in range(8)}
    assert all(r["received"] == 3 for r in peer_rows)  # 8-peer exponential: degree 3
    evaluated = [r for r in round_rows if r["mean_acc"] is not None]
    assert [r["round"] for r in evaluated] == [9, 19, 29]
    # Each peer is a daemon with its own home: identity, config, metrics, models.
    homes = sorted((run_dir / "peers").glob("peer-*"))
    assert len(homes) == 8
    for home in homes:
        assert (home / "identity.key").exists()
        models = list(read_model_records(home / "state" / "models.bin"))
        assert [m.round for m in models] == list(range(30))


def test_an_experiment_sweep_runs_over_libp2p(tmp_path: Path) -> None:
    spec = tmp_path / "sweep.toml"
    spec.write_text(
        """
name = "libp2p-sweep"
[base]
transport = "libp2p"
mode = "consensus"
peers = 4
rounds = 12
dimension = 50
topology.name = "complete"
output.plot = false
[grid]
"rule.name" = ["mean", "median"]
""",
        encoding="utf-8",
    )
    result = run_experiment(ExperimentSpec.from_toml(spec), out=tmp_path / "out")
    assert result.failed == {}
    assert result.ran == 2
    by_rule = {row["rule.name"]: row for row in result.rows}
    assert set(by_rule) == {"mean", "median"}
    # Four peers on a complete graph agree after one round of averaging.
    assert by_rule["mean"]["consensus_distance"] < 1e-6
    assert by_rule["mean"]["mean_drift"] < 1e-5
    assert by_rule["median"]["consensus_distance"] < 1e-3


def test_a_byzantine_peer_process_attacks_and_a_robust_rule_holds(tmp_path: Path) -> None:
    """`gossipfl start --attack` end to end: one Byzantine process sends Gaussian noise
    (sigma 30) to three of six honest peers. Plain averaging collapses; trimmed mean holds."""
    summaries = {}
    for rule in ("mean", "trimmed-mean"):
        config = SimulationConfig().with_overrides(
            [
                "transport=libp2p", "peers=6", "topology.name=complete", "rounds=20",
                "data.partition=iid", "output.eval_every=10", "output.plot=false",
                "byzantine.count=1", "byzantine.degree=3", "byzantine.attack=gaussian",
                f"rule.name={rule}",
            ]
        )  # fmt: skip
        summaries[rule] = run_processes(config, workdir=tmp_path / rule).summary()
    for summary in summaries.values():
        assert summary["byzantine"] == 1
        assert summary["omniscient"] is False  # a live attacker sees what it receives
        assert summary["crafted"] >= 3 * 15  # one message per target and round
    assert summaries["mean"]["honest_mean_acc"] < 0.6
    assert summaries["trimmed-mean"]["honest_mean_acc"] > 0.9


def test_churn_over_libp2p_peers_leave_and_rejoin_from_their_checkpoints(
    tmp_path: Path,
) -> None:
    """Three of nine peer processes stop cleanly after round 7 and are started again once
    round 18 is final; they resume from their checkpoints and skip to their neighbours'
    round. `training.step_time` (0.1 s, slept for real) keeps the others from finishing
    before the parent can restart them."""
    config = SimulationConfig().with_overrides(
        [
            "transport=libp2p", "peers=9", "topology.name=torus", "rounds=40",
            "data.partition=iid", "output.eval_every=10", "output.plot=false",
            "churn.fraction=0.3", "churn.leave_round=8", "churn.away_rounds=10",
            "training.step_time=0.1",
        ]
    )  # fmt: skip
    result = run_processes(config, workdir=tmp_path, timeout=100)
    peers_in_round = {s.round: s.peers for s in result.summaries}
    assert [peers_in_round[r] for r in range(8)] == [9] * 8
    assert [peers_in_round[r] for r in range(8, 18)] == [6] * 10  # away from round 8
    assert peers_in_round[39] == 9
    summary = result.summary()
    assert summary["rounds_completed"] == 40
    assert summary["honest_mean_acc"] > 0.9
    assert summary["consensus_distance"] < 0.05  # the returning peers caught up
    churned = [
        home
        for home in sorted(tmp_path.glob("peer-*"))
        if [r["kind"] for r in read_metrics(home / "state" / "metrics.jsonl")].count("start") == 2
    ]
    assert len(churned) == 3
    for home in churned:
        rounds = [m.round for m in read_model_records(home / "state" / "models.bin")]
        assert rounds[:8] == list(range(8))
        assert rounds[8] == 8  # resumed where it left,
        # then skipped to its neighbours' round, within a few rounds: how far a skip may
        # go at once is bounded by the time elapsed at the peer's own pace (an insider
        # cannot make it jump to any round it claims), and on a loaded machine the pace
        # measured before it left can hold the first skip back by a round or two
        jumps = [i for i in range(9, len(rounds)) if rounds[i] > rounds[i - 1] + 1]
        assert jumps, rounds
        assert jumps[0] <= 12, rounds
        assert rounds[jumps[0]] >= 15, rounds
        assert rounds[-1] == 39
