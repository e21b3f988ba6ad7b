"""The experiment harness: grid files, parallel resumable sweeps, summaries, plots."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import threading
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
        ('name = "x"\n[base]\npeers = "many"', "peers must be a"),
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


# ------------------------------------------------------- progress, partial results, plots


def test_without_a_terminal_each_finished_run_prints_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, TINY)
    args = ["experiment", "run", str(path), "--out", str(tmp_path / "out"), "--no-plot"]
    assert main([*args, "--workers", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    run_lines = [line for line in lines if line.startswith("done ")]
    pattern = re.compile(
        r"done ([123])/3 (\S+) \| accuracy \d+\.\d% \(worst peer \d+\.\d%\), "
        r"consensus distance \S+, took (<1|\d+) s \| elapsed (<1|\d+) s(, .+)?"
    )
    matches = [pattern.fullmatch(line) for line in run_lines]
    assert all(matches), run_lines
    assert sorted(int(m[1]) for m in matches if m) == [1, 2, 3]
    ids = sorted(p.id for p in ExperimentSpec.from_toml(path).points())
    assert sorted(m[2] for m in matches if m) == ids
    assert lines[-1].startswith("tiny: 3 ran, 0 already done, 0 failed in ")
    # again: nothing to do, said in one line
    assert main([*args, "--workers", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "kept 3 of 3 runs finished earlier: nothing to do"
    )


def test_the_time_estimate_comes_from_runs_of_the_same_shape() -> None:
    from gossipfl.experiments import SweepProgress

    spec = ExperimentSpec.from_dict(
        {"name": "shapes", "base": {"rounds": 2}, "grid": {"peers": [9, 16], "seed": [0, 1, 2]}}
    )
    small, big = spec.points()[:3], spec.points()[3:]
    now = [0.0]
    sweep = SweepProgress(spec.points(), workers=1, clock=lambda: now[0])
    assert sweep.describe() == "6 runs left, no estimate yet (no run of their shape has finished)"
    sweep.record("skipped", small[0].id, 2.0)  # finished earlier: its recorded wall time
    sweep.record("started", small[1].id)
    now[0] = 3.0
    sweep.record("done", small[1].id, 3.0)
    # the small runs took 2-3 s; nothing says what a big one costs
    assert sweep.describe() == "at least 2 s left (3 of 4 runs of a shape not timed yet)"
    sweep.record("started", small[2].id)
    sweep.record("done", small[2].id, 2.5)
    sweep.record("started", big[0].id)
    now[0] = 103.0
    sweep.record("done", big[0].id, 100.0)
    assert sweep.describe() == "about 3 min 20 s left"  # two more of 100 s, one worker
    assert (sweep.finished, sweep.total) == (4, 6)
    sweep.record("started", big[1].id)
    now[0] = 133.0
    assert sweep.describe() == "about 2 min 50 s left"  # 70 s of the running one + 100 s
    now[0] = 263.0
    assert sweep.describe() == (
        "at least 1 min 40 s left (1 running longer than runs of its shape took)"
    )
    two = SweepProgress(big, workers=2, clock=lambda: 0.0)
    two.record("done", big[0].id, 100.0)
    assert two.describe() == "about 1 min 40 s left"  # two runs left, two workers


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-run sweep over topologies under a constant attack."""
    tmp = tmp_path_factory.mktemp("attacked")
    text = """
name = "attacked"
[base]
peers = 9
rounds = 4
byzantine.count = 1
byzantine.attack = "gaussian"
[base.output]
plot = false
[grid]
"topology.name" = ["ring", "torus"]
"""
    out = tmp / "out"
    run_experiment(ExperimentSpec.from_toml(write(tmp, text)), out=out, workers=2)
    return out


def figure_titles(fig: object) -> str:
    texts = [fig.get_suptitle()]  # type: ignore[attr-defined]
    texts += [ax.get_title(loc) for ax in fig.axes for loc in ("left", "center", "right")]  # type: ignore[attr-defined]
    return "\n".join(t for t in texts if t)


def test_titles_name_the_constant_settings_and_bars_start_at_zero(attacked: Path) -> None:
    import matplotlib.pyplot as plt

    from gossipfl.experiments.plots import draw_directory

    drawn = {path.name: fig for path, fig in draw_directory(attacked)}
    try:
        assert {"accuracy_vs_rounds", "topologies", "accuracy_vs_bytes"} <= set(drawn)
        for name, fig in drawn.items():
            title = figure_titles(fig)
            assert title.startswith("attacked"), name
            for setting in ("9 peers", "4 rounds", "rule mean", "1 Byzantine", "attack gaussian"):
                assert setting in title, f"{name}: {setting!r} not in {title!r}"
            assert "topology" not in title.split("\n", 1)[1], "the varied setting is the legend"
        accuracy_axis = drawn["topologies"].axes[0]
        assert "accuracy" in accuracy_axis.get_xlabel()
        assert accuracy_axis.get_xlim()[0] == 0
        assert accuracy_axis.get_xlim()[1] >= 100
    finally:
        for fig in drawn.values():
            plt.close(fig)
    run_figs = draw_directory(attacked / "topology=ring")
    try:
        assert all("attack gaussian" in figure_titles(fig) for _, fig in run_figs)
    finally:
        for _, fig in run_figs:
            plt.close(fig)


def test_plot_of_an_interrupted_sweep_draws_what_finished_and_names_what_is_missing(
    attacked: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(attacked, partial)
    # as a sweep killed mid-way leaves it: one run unfinished, no summary files yet
    shutil.rmtree(partial / "topology=torus")
    for name in ("summary.jsonl", "summary.csv", *(p.name for p in partial.glob("*.png"))):
        (partial / name).unlink(missing_ok=True)
    assert main(["plot", str(partial), "--format", "png"]) == 0
    captured = capsys.readouterr()
    written = {Path(line).name for line in captured.out.splitlines()}
    assert {"accuracy_vs_rounds.png", "consensus_vs_rounds.png", "topologies.png"} <= written
    assert all((partial / name).stat().st_size > 10_000 for name in written)
    assert "1 of 2 runs missing" in captured.err
    assert "topology=torus" in captured.err
    from gossipfl.experiments.plots import load_experiment

    exp = load_experiment(partial)
    assert (len(exp.rows), exp.total, exp.missing) == (1, 2, ["topology=torus"])
    assert exp.title == "attacked (partial: 1 of 2 runs)"
    # nothing finished at all: a clear error, not "neither a run nor an experiment"
    shutil.rmtree(partial / "topology=ring")
    assert main(["plot", str(partial)]) == 2
    assert "no finished runs to plot yet (2 of 2 runs missing)" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_a_worker_killed_mid_run_fails_that_run_and_is_replaced(tmp_path: Path) -> None:
    from gossipfl.experiments.runner import _run_one
    from gossipfl.experiments.workers import Task, WorkerPool

    spec = ExperimentSpec.from_toml(write(tmp_path, TINY.replace("rounds = 6", "rounds = 3000")))
    slow, fast = spec.points()[0], spec.points()[1]
    fast_config = fast.config.to_dict() | {"rounds": 2}
    tasks = [
        Task(slow.id, slow.config.to_dict(), str(tmp_path / slow.id)),
        Task(fast.id, fast_config, str(tmp_path / fast.id)),
    ]
    with WorkerPool(1, _run_one) as pool:

        def started(run_id: str) -> None:
            if run_id == slow.id:
                (pid,) = pool.pids()
                threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()

        outcomes = {o.run_id: o for o in pool.run(tasks, started=started)}
    assert outcomes[slow.id].error == "the worker process running it was killed by SIGKILL"
    assert outcomes[fast.id].error is None
    assert not (tmp_path / slow.id).exists()
    assert (tmp_path / fast.id / "summary.json").exists()


def test_a_varied_task_parameter_is_not_named_as_a_constant() -> None:
    from gossipfl.experiments.plots import describe_settings
    from gossipfl.simulation import SimulationConfig

    config = SimulationConfig().with_overrides(
        ["task.name=mnist1d", "task.params.model_name=cnn", "task.params.local_steps=4"]
    )
    text = describe_settings(config, ["task.params.model_name", "rule.name"])
    assert "model_name" not in text  # the legend names it
    assert "task.local_steps=4" in text
    assert "rule" not in text
