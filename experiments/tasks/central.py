"""Central baselines: every built-in task and the example tasks, trained on all their
training data by one learner, as the ceiling a decentralized run is measured against.

Prints ONE JSON object: per task, its description, model size, the test accuracy before
training and after ``--steps`` mini-batch steps (the task's own optimizer and batch size),
and the seconds it took. The numbers are quoted in docs/tasks.md; a decentralized run of
the same task is good when it comes close to them.

    .venv/bin/python experiments/tasks/central.py            # every task, 3000 steps
    .venv/bin/python experiments/tasks/central.py --quick    # 100 steps, seconds
    .venv/bin/python experiments/tasks/central.py --task mnist1d --set model_name=cnn
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from gossipfl.tasks import load_task

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tasks"
TASKS: list[tuple[str, dict[str, str]]] = [
    ("digits-softmax", {}),
    ("digits-mlp", {}),
    ("synthetic", {}),
    ("mnist1d", {"model_name": "softmax"}),
    ("mnist1d", {"model_name": "mlp"}),
    ("mnist1d", {"model_name": "cnn"}),
    (f"{EXAMPLES / 'shapes_cnn.py'}:Shapes", {}),
    (f"{EXAMPLES / 'clinic_table.py'}:Clinic", {}),
]


def central(
    reference: str, params: dict[str, str], steps: int, progress: Progress
) -> dict[str, Any]:
    """Train one learner on the whole training split; ``local_steps`` is set to 1 so that
    one call of ``train`` is one mini-batch step."""
    task = load_task(reference, {**params, "local_steps": "1"})
    data = task.dataset(seed=0)
    learner = task.learner(data, np.arange(len(data.y_train)), init_seed=0, seed=0)
    before, _ = learner.evaluate(data.x_test, data.y_test)
    bar = progress.add_task(task.describe()[:60], total=steps)
    start = time.perf_counter()
    for step in range(steps):
        learner.train(step)
        progress.advance(bar)
    seconds = time.perf_counter() - start
    after, loss = learner.evaluate(data.x_test, data.y_test)
    return {
        "task": task.describe(),
        "data": data.name,
        "train_samples": len(data.y_train),
        "parameters": int(learner.adapter.get_flat().size),
        "steps": steps,
        "epochs": round(steps * task.settings()["batch_size"] / len(data.y_train), 1),
        "accuracy_before": round(float(before), 4),
        "accuracy": round(float(after), 4),
        "loss": round(float(loss), 4),
        "seconds": round(seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="mini-batch steps per task")
    parser.add_argument("--quick", action="store_true", help="100 steps per task")
    parser.add_argument("--task", help="one task reference instead of the list")
    parser.add_argument("--set", dest="params", action="append", default=[], metavar="K=V")
    args = parser.parse_args()
    steps = 100 if args.quick else args.steps
    tasks = TASKS
    if args.task:
        tasks = [(args.task, dict(p.split("=", 1) for p in args.params))]
    results = []
    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        for reference, params in tasks:
            results.append(central(reference, params, steps, progress))
    print(
        json.dumps(
            {
                "benchmark": "central task baselines",
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": {
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                },
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
