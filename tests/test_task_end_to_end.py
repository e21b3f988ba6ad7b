"""A task of one's own, written outside the package, through every command: ``simulate``
(in memory and over libp2p), a 2×2 experiment grid with its plots, and three ``gossipfl
start`` processes on 127.0.0.1 that train together."""

from __future__ import annotations

import functools
import json
import signal
import textwrap
from pathlib import Path

import pytest

from gossipfl.cli import main
from gossipfl.daemon.testing import (
    Daemon,
    kill_all,
    metrics,
    start_daemon,
    start_daemons,
    stop_daemon,
    wait_for,
)

TASK = textwrap.dedent(
    '''
    """Three noisy clusters in 6 features, and a small MLP: a user's own task."""

    from dataclasses import dataclass

    import numpy as np
    from torch import nn

    from gossipfl.merge.base import param
    from gossipfl.tasks import ClassificationTask, from_arrays


    @dataclass(kw_only=True, eq=False)
    class Clusters(ClassificationTask):
        hidden: int = param(16, "hidden units")

        def dataset(self, *, seed):
            rng = np.random.default_rng(11)
            y = np.arange(600) % 3
            x = rng.normal(size=(600, 6)) + 2.5 * np.eye(3, 6)[y]
            return from_arrays(x, y, seed=0, name="clusters")

        def model(self, data):
            return nn.Sequential(
                nn.Linear(data.n_features, self.hidden), nn.ReLU(),
                nn.Linear(self.hidden, data.n_classes),
            )
    '''
)


@pytest.fixture
def task_ref(tmp_path: Path) -> str:
    folder = tmp_path / "my_project"
    folder.mkdir()
    (folder / "clusters.py").write_text(TASK)
    return f"{folder / 'clusters.py'}:Clusters"


def test_simulate_a_users_task_in_memory(
    task_ref: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "simulate", "--task", task_ref, "--peers", "6", "--topology", "ring",
            "--rounds", "40", "--set", "task.params.hidden=8", "--set", "task.params.lr=0.1",
            "--out", str(tmp_path / "runs"), "--no-plot", "--json",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["honest_mean_acc"] > 0.85
    config = next((tmp_path / "runs").glob("*/config.toml")).read_text()
    assert "Clusters" in config
    assert "hidden = 8" in config


def test_a_config_file_names_its_task_file_relative_to_itself(
    task_ref: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = Path(task_ref.split(":")[0]).parent
    (folder / "job.toml").write_text(
        textwrap.dedent(
            """
            peers = 4
            rounds = 10
            [task]
            name = "clusters.py:Clusters"
            [task.params]
            hidden = 4
            [topology]
            name = "ring"
            """
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the task file is not under the working directory
    code = main(["simulate", "--config", str(folder / "job.toml"), "--no-plot", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["honest_mean_acc"] > 0.5
    config = next((elsewhere / "runs").glob("*/config.toml")).read_text()
    assert str(folder / "clusters.py") in config  # the run records where the task was


@pytest.mark.timeout(300)
def test_a_grid_over_task_parameters_runs_and_plots(
    task_ref: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = tmp_path / "grid.toml"
    experiment.write_text(
        textwrap.dedent(
            f"""
            name = "my-task-grid"
            [base]
            peers = 4
            rounds = 15
            [base.task]
            name = "{task_ref}"
            [base.task.params]
            hidden = 8
            [base.topology]
            name = "ring"
            [base.output]
            eval_every = 5
            plot = false
            [grid]
            "task.params.lr" = [0.02, 0.2]
            seed = [0, 1]
            """
        )
    )
    out = tmp_path / "results"
    assert main(["experiment", "run", str(experiment), "--out", str(out), "--workers", "2"]) == 0
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    by_lr: dict[float, list[float]] = {}
    for row in rows:
        by_lr.setdefault(float(row["task.params.lr"]), []).append(row["honest_mean_acc"])
    assert set(by_lr) == {0.02, 0.2}
    run_config = next(out.glob("*/config.toml")).read_text()
    assert "Clusters" in run_config
    assert main(["plot", str(out)]) == 0
    assert (out / "accuracy_vs_rounds.png").exists()


@pytest.mark.network
@pytest.mark.timeout(150)
def test_simulate_a_users_task_over_libp2p(
    task_ref: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "simulate", "--task", task_ref, "--transport", "libp2p", "--peers", "4",
            "--topology", "ring", "--rounds", "20", "--set", "task.params.hidden=8",
            "--set", "network.deadline=2.0", "--out", str(tmp_path / "runs"), "--no-plot",
            "--json",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["honest_mean_acc"] > 0.8


@pytest.mark.network
@pytest.mark.timeout(150)
def test_three_start_processes_train_a_users_task_together(
    task_ref: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    homes = [tmp_path / f"host{i}" for i in range(3)]
    ids = []
    for home in homes:
        assert (
            main(["init", "--home", str(home), "--quiet", "--listen", "/ip4/127.0.0.1/tcp/0"]) == 0
        )
        ids.append(capsys.readouterr().out.strip())
    common = (
        "--task", task_ref,
        "--set", "task.params.hidden=8",
        "--rule", "mean",
        "--rounds", "30",
        "--min-peers", "3",
        "--set", "training.deadline=2.0",
        "--set", "output.eval_every=10",
        "--set", "network.exchange_interval=0.3",
        "--set", "topology.settle=0.5",
    )  # fmt: skip
    daemons: list[Daemon | None] = []
    try:
        allow = [a for p in ids[1:] for a in ("--allow", p)]
        first = start_daemon(homes[0], *common, *allow)
        daemons.append(first)
        # the two joiners start side by side (each start-up imports torch: seconds)
        daemons += start_daemons(
            *[
                (
                    homes[i],
                    [
                        *first.join.split()[2:],
                        *common,
                        *[a for j, p in enumerate(ids) if j != i for a in ("--allow", p)],
                    ],
                )
                for i in (1, 2)
            ]
        )
        for d in daemons:
            assert d is not None
            wait_for(
                functools.partial(lambda d: d.process.poll() is not None, d),
                timeout=120,
                what=f"{d.home.name} done",
                failed=None,
            )
        for d in daemons:
            assert d is not None
            assert d.process.returncode == 0, d.stderr()
            rows = metrics(d.home)
            assert rows[0]["members"] == 3
            rounds = [r for r in rows if r["kind"] == "round"]
            assert len(rounds) == 30
            assert sum(r["received"] for r in rounds) >= 0.8 * 30 * 2
            assert [r["accuracy"] for r in rows if r.get("accuracy") is not None][-1] > 0.85
    finally:
        for d in daemons:
            if d is not None and d.process.poll() is None:
                stop_daemon(d, signal.SIGTERM)
        kill_all(daemons)
