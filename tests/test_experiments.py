"""The experiment harness: grid files, parallel resumable sweeps, summaries, plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from gossipfl.cli import main
from gossipfl.errors import ConfigError
from gossipfl.experiments import ExperimentSpec, plot_directory, run_experiment

TINY = """
name = "tiny"
description = "two topologies, two seeds, one excluded"
[base]
peers = 9
rounds = 6
[base.output]
eval_every = 3
plot = false
[grid]
"topology.name" = ["ring", "torus"]
seed = [0, 1]
[[exclude]]
"topology.name" = "torus"
seed = 1
"""


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_grid_is_the_cartesian_product_minus_exclusions(tmp_path: Path) -> None:
    spec = ExperimentSpec.from_toml(write(tmp_path, TINY))
    points = spec.points()
    assert [p.id for p in points] == [
        "topology=ring,seed=0",
        "topology=ring,seed=1",
        "topology=torus,seed=0",
    ]
    assert points[2].config.topology.name == "torus"
    assert points[1].config.seed == 1
    assert all(p.config.peers == 9 and p.config.rounds == 6 for p in points)


def test_short_names_fall_back_to_full_keys_on_collision(tmp_path: Path) -> None:
    text = TINY.replace("seed = [0, 1]", 'seed = [0]\n"rule.name" = ["median"]\n"rule.b" = [1]')
    text = text.replace("[[exclude]]", '"byzantine.b" = [1]\n[[exclude]]')
    ids = [p.id for p in ExperimentSpec.from_toml(write(tmp_path, text)).points()]
    assert ids[0] == "topology.name=ring,seed=0,rule.name=median,rule.b=1,byzantine.b=1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\n[grid]\nseed = []', "non-empty list"),
        ('name = "x"\n[grid]\nseed = [1, 1]', "lists a value twice"),
        ('name = "x"\nbogus = 1', "unknown key"),
        ('name = "bad name!"', "needs a name"),
        ('name = "x"\n[base]\npeers = "many"', "peers must be a int"),
        ('name = "x"\n[grid]\n"rule.nonsense" = [1]', "grid point"),
        ("name = = 1", "not valid TOML"),
    ],
)
def test_bad_experiment_files_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ExperimentSpec.from_toml(write(tmp_path, text))


def test_sweep_runs_in_parallel_resumes_and_reruns_what_changed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = ExperimentSpec.from_toml(write(tmp_path, TINY))
    seen: list[tuple[str, str]] = []
    first = run_experiment(spec, out=out, workers=2, progress=lambda i, s: seen.append((i, s)))
    assert (first.ran, first.skipped, first.failed) == (3, 0, {})
    assert sorted(s for _, s in seen) == ["done"] * 3
    assert (out / "experiment.toml").exists()
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run_id"] for r in rows] == [p.id for p in spec.points()]
    assert all(0.0 < float(r["honest_mean_acc"]) <= 1.0 for r in rows)
    assert {r["topology.name"] for r in rows} == {"ring", "torus"}
    # nothing left to do
    again = run_experiment(spec, out=out, workers=1)
    assert (again.ran, again.skipped) == (0, 3)
    # an edited base config invalidates every run; an interrupted run leaves no directory
    spec2 = ExperimentSpec.from_toml(write(tmp_path, TINY.replace("rounds = 6", "rounds = 4")))
    changed = run_experiment(spec2, out=out, workers=1)
    assert (changed.ran, changed.skipped) == (3, 0)
    summary = json.loads((out / "topology=ring,seed=0" / "summary.json").read_text())
    assert summary["rounds"] == 4
    assert not list(out.glob("*.partial"))
    plots = {p.name for p in plot_directory(out, formats=("png",))}
    assert {"topologies.png", "accuracy_vs_bytes.png", "accuracy_vs_rounds.png"} <= plots


def test_impossible_grid_point_is_refused_before_any_run(tmp_path: Path) -> None:
    text = TINY.replace("peers = 9", "peers = 8")
    with pytest.raises(ConfigError, match="grid point topology=torus,seed=0"):
        ExperimentSpec.from_toml(write(tmp_path, text))
    assert main(["experiment", "run", str(tmp_path / "exp.toml"), "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "topology=ring,seed=0").exists()


def test_plots_for_an_experiment_and_for_a_run(tmp_path: Path) -> None:
    text = """
name = "rules"
[base]
peers = 9
rounds = 4
[base.output]
plot = false
[grid]
"rule.name" = ["mean", "median"]
"byzantine.attack" = ["none"]
"""
    out = tmp_path / "out"
    run_experiment(ExperimentSpec.from_toml(write(tmp_path, text)), out=out, workers=1)
    written = {p.name for p in plot_directory(out, formats=("png",))}
    assert written == {
        "accuracy_vs_rounds.png",
        "consensus_vs_rounds.png",
        "heatmap_mean.png",
        "heatmap_worst.png",
    }
    run_written = {p.name for p in plot_directory(out / "rule=mean,attack=none", formats=("svg",))}
    assert run_written == {"accuracy.svg", "consensus.svg"}
    for name in written:
        assert (out / name).stat().st_size > 10_000  # a real figure, not an empty canvas


def test_cli_show_and_plot_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, TINY)
    assert main(["experiment", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tiny: 3 runs" in out
    assert "topology=torus,seed=0" in out
    assert main(["plot", str(tmp_path)]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert main(["experiment", "run", str(path), "--workers", "0"]) == 2


def test_plotting_an_experiment_with_a_broken_experiment_file_is_a_clear_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "summary.jsonl").write_text('{"run_id": "a", "seed": 0}\n', encoding="utf-8")
    (tmp_path / "experiment.toml").write_text("name = = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"experiment.toml is not valid TOML"):
        plot_directory(tmp_path)
