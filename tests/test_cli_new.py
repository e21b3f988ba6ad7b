"""`gossipfl new`: the scaffold is a working task and a working sweep as written, and the
commands it prints run."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from gossipfl.cli import main
from gossipfl.cli.new import names


def test_names_follow_python_conventions() -> None:
    assert names("sensor-cnn") == ("sensor_cnn", "SensorCnn")
    assert names("Clinic") == ("clinic", "Clinic")
    assert names("my_task2") == ("my_task2", "MyTask2")


@pytest.mark.parametrize(
    ("name", "words"),
    [("2fast", "starting with a letter"), ("a b", "letters"), ("class", "keyword")],
)
def test_a_bad_name_is_one_line(name: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", name, "--dir", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert words in err


@pytest.mark.timeout(300)
def test_the_scaffold_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["new", "sensor-net", "--dir", "tasks"]) == 0
    printed = capsys.readouterr().out
    assert "wrote tasks/sensor_net.py: task SensorNet" in printed
    commands = [line.strip() for line in printed.splitlines() if line.startswith("  gossipfl ")]
    assert [shlex.split(c)[1] for c in commands] == ["task", "simulate", "experiment", "start"]
    # Not twice: an existing task is never overwritten without --force.
    assert main(["new", "sensor-net", "--dir", "tasks"]) == 2
    assert "exists already" in capsys.readouterr().err

    show, simulate, sweep, _ = (shlex.split(c)[1:] for c in commands)
    assert main([*show, "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["task"].startswith("SensorNet(")
    assert "hidden=64, samples=3000" in described["task"]
    assert described["input_shape"] == [10]
    assert described["parameters"] == 10 * 64 + 64 + 64 * 4 + 4

    # The printed simulation, shortened: the template learns its generated data.
    rounds = simulate.index("--rounds")
    simulate[rounds + 1] = "10"
    assert main([*simulate, "--no-plot", "--json", "--out", "runs"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["honest_mean_acc"] > 0.8

    # The sweep file is valid as written: 2 rules x 2 learning rates, each run feasible.
    assert main(["experiment", "show", sweep[-1]]) == 0
    listing = capsys.readouterr().out
    assert "4 runs" in listing
