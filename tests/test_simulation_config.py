"""The simulation config: defaults, TOML round trip, --set overrides, clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gossipfl.configfile import parse_value as parse_scalar
from gossipfl.errors import ConfigError
from gossipfl.simulation.config import SimulationConfig


def test_toml_round_trip_keeps_every_setting(tmp_path: Path) -> None:
    config = SimulationConfig().with_overrides(
        [
            "peers=32",
            "topology.name=ring",
            "topology.k=4",
            "rule.name=trimmed-mean",
            "rule.b=2",
            "network.bandwidth=inf",
            "network.loss=0.25",
            "data.alpha=0.1",
        ]
    )
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    again = SimulationConfig.from_toml(path)
    assert again.to_dict() == config.to_dict()
    assert again.topology.params == {"k": 4}
    assert again.rule.params == {"b": 2}
    assert math.isinf(again.network.bandwidth)
    assert again.network.loss == 0.25


def test_overrides_do_not_touch_the_original() -> None:
    base = SimulationConfig()
    changed = base.with_overrides(["rule.b=3", "rounds=7"])
    assert base.rule.params == {}
    assert base.rounds == 100
    assert changed.rule.params == {"b": 3}
    assert changed.rounds == 7


def test_ints_are_accepted_for_floats_and_strings_need_no_quotes() -> None:
    config = SimulationConfig().with_overrides(["network.deadline=2", "data.name=synthetic"])
    assert config.network.deadline == 2.0
    assert isinstance(config.network.deadline, float)
    assert config.data.name == "synthetic"


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("nonsense=1", "unknown config key 'nonsense'"),
        ("data.nonsense=1", "unknown config key data.nonsense"),
        ("peers=many", "peers must be a whole number"),
        ("peers=0", "peers must be at least 1"),
        ("mode=dream", "mode must be 'train' or 'consensus'"),
        ("rounds", "--set expects key=value"),
        ("churn.fraction=2", "churn.fraction is a share"),
        ("rounds.x=1", "plain setting"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        SimulationConfig().with_overrides([assignment])


def test_bad_toml_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("peers = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        SimulationConfig.from_toml(path)
    with pytest.raises(ConfigError, match="cannot read"):
        SimulationConfig.from_toml(tmp_path / "missing.toml")


def test_parse_scalar_follows_toml() -> None:
    assert parse_scalar("3") == 3
    assert parse_scalar("0.5") == 0.5
    assert parse_scalar("true") is True
    assert parse_scalar('"quoted"') == "quoted"
    assert parse_scalar("bare-word") == "bare-word"


def test_churning_and_slow_peers_are_drawn_from_the_seed_alone() -> None:
    config = SimulationConfig().with_overrides(
        [
            "peers=20",
            "churn.fraction=0.3",
            "training.step_time=0.1",
            "training.step_time_spread=0.5",
        ]
    )
    nodes = config.churn_nodes()
    assert len(nodes) == 6
    assert nodes == sorted(set(nodes))
    assert all(0 <= i < 20 for i in nodes)
    assert nodes == config.with_overrides(["transport=libp2p"]).churn_nodes()
    assert nodes != config.with_overrides(["seed=1"]).churn_nodes()
    times = config.step_times(24)
    assert times.shape == (24,)
    assert ((times >= 0.05) & (times <= 0.15)).all()
    assert times.tolist() == config.step_times(24).tolist()
    assert SimulationConfig().churn_nodes() == []  # no churn by default
    late = config.with_overrides(["rounds=10", "churn.leave_round=10"])
    assert late.churn_nodes() == []  # leaving after the last round is not leaving
