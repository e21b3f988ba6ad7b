"""The example tasks under ``examples/tasks/`` work as their docstrings say: each trains
with ``gossipfl simulate`` far above chance, the table task takes a hospital's own CSV
file for ``gossipfl start`` (``local_dataset``) with the same scaling, and the large one
is ResNet-18's size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gossipfl.cli import main
from gossipfl.tasks import load_task

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "tasks"


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("reference", "rounds", "extra", "floor"),
    [
        # four classes: chance is 25%; the task reaches 96.5% trained centrally
        ("shapes_cnn.py:Shapes", 25, ["--set", "task.params.samples=1000"], 0.6),
        # three risk classes, the largest 40% of the rows; 73.3% trained centrally
        ("clinic_table.py:Clinic", 40, [], 0.6),
        # ten classes, chance is 10%; ResNet-18 at an eighth of its width (176k parameters)
        (
            "resnet18.py:ResNet18",
            20,
            ["--set", "task.params.width=8", "--set", "task.params.local_steps=2"],
            0.3,
        ),
    ],
)
def test_example_task_trains_with_simulate(
    reference: str,
    rounds: int,
    extra: list[str],
    floor: float,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "simulate", "--task", str(EXAMPLES / reference), "--peers", "4",
            "--topology", "ring", "--rounds", str(rounds), *extra,
            "--out", str(tmp_path / "runs"), "--no-plot", "--json",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["honest_mean_acc"] > floor


def test_clinic_reads_a_hospitals_own_file_with_the_shared_scale(tmp_path: Path) -> None:
    task = load_task(f"{EXAMPLES / 'clinic_table.py'}:Clinic")
    shared = task.dataset(seed=0)
    rows = (EXAMPLES / "data" / "clinic.csv").read_text().splitlines()
    own = tmp_path / "our_patients.csv"
    own.write_text("\n".join(rows[:301]) + "\n")  # the header and 300 patients
    local = task.local_dataset(own, seed=0)
    assert len(local.y_train) + len(local.y_test) == 300
    assert local.n_features == shared.n_features == 6
    # the same constants scale both: no column drifts off by a hospital's own statistics
    assert np.abs(local.x_train.mean(axis=0)).max() < 1.5
    assert np.abs(shared.x_train.mean(axis=0) - local.x_train.mean(axis=0)).max() < 0.5


def test_the_large_example_is_resnet18_size() -> None:
    task = load_task(f"{EXAMPLES / 'resnet18.py'}:ResNet18")
    data = task.dataset(seed=0)
    learner = task.learner(data, np.arange(32), init_seed=0, seed=0)
    flat = learner.adapter.get_flat()
    # torchvision's resnet18 for 10 classes: 11,181,642, of which 7,680 more in its 7x7 stem
    assert flat.size == 11_173_962
    # GroupNorm, not BatchNorm: no running statistics to merge, every entry a weight.
    assert all(spec.dtype == "float32" for spec in learner.adapter.layout.tensors)
