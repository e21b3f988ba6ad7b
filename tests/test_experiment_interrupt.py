"""`gossipfl experiment run` stopped by SIGTERM or Ctrl+C (SIGINT): its worker processes
(and whatever they started) are gone within seconds, the exit status says it was
interrupted, and the next `experiment run` keeps the finished runs and redoes the one
that was cut short. A real CLI process, real workers, in-process simulations."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    pytest.mark.timeout(180),
]

# Two quick runs first, then two long ones (~3-6 s each): the signal lands while both
# workers are in the middle of a long run.
GRID = """
name = "stoppable"
[base]
peers = 9
[base.output]
eval_every = 1000
plot = false
[grid]
rounds = [4, 800]
seed = [0, 1]
"""
FAST = ["rounds=4,seed=0", "rounds=4,seed=1"]
SLOW = ["rounds=800,seed=0", "rounds=800,seed=1"]


def proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def descendants(pid: int) -> set[int]:
    table = proc_table()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, (ppid, _, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int], groups: set[int]) -> set[int]:
    """Those of ``pids``, and members of ``groups``, that still run (zombies are done)."""
    return {
        p
        for p, (_, pgid, state) in proc_table().items()
        if (p in pids or pgid in groups) and state != "Z"
    }


def start(directory: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "gossipfl", "experiment", "run", "exp.toml"]
    return subprocess.Popen(
        [*command, "--workers", "2", "--out", "out", "--no-plot"],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def interrupt_mid_run(tmp_path: Path, sig: signal.Signals) -> tuple[int, float, str]:
    """Start the sweep, wait for the two quick runs, send ``sig`` while both workers are
    on a long run; return the exit status, the seconds until every process it started
    was gone, and its stderr."""
    (tmp_path / "exp.toml").write_text(GRID, encoding="utf-8")
    out = tmp_path / "out"
    with start(tmp_path) as cli:
        assert cli.stderr is not None
        while not all((out / run / "summary.json").exists() for run in FAST):
            assert cli.poll() is None, f"the sweep ended early: {cli.stderr.read()}"
            time.sleep(0.02)
        time.sleep(0.2)  # both workers are on a long run now
        family = descendants(cli.pid)
        table = proc_table()
        groups = {p for p in family if table.get(p, (0, 0, ""))[1] == p}
        assert len(family) >= 2, "worker processes"
        sent = time.monotonic()
        cli.send_signal(sig)
        while alive(family, groups) and time.monotonic() < sent + 5:
            time.sleep(0.02)
        gone_after = time.monotonic() - sent
        left = alive(family, groups)
        for pid in left:  # do not leave them behind if the test fails
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes of the sweep outlived it by 5 s: {sorted(left)}"
        status = cli.wait(timeout=30)
        return status, gone_after, cli.stderr.read()


def test_sigterm_stops_every_worker_and_the_sweep_resumes(tmp_path: Path) -> None:
    status, seconds, stderr = interrupt_mid_run(tmp_path, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM
    assert seconds < 5.0
    assert "interrupted by SIGTERM: 2 of 4 runs finished" in stderr
    assert "Traceback" not in stderr
    out = tmp_path / "out"
    assert all((out / run / "summary.json").exists() for run in FAST)
    assert not any((out / run).exists() for run in SLOW)
    assert not list(out.glob("*.partial"))
    kept = {run: (out / run / "summary.json").stat().st_mtime_ns for run in FAST}
    with (out / "summary.csv").open() as f:
        assert sorted(r["run_id"] for r in csv.DictReader(f)) == FAST

    command = [sys.executable, "-m", "gossipfl", "experiment", "run", "exp.toml"]
    again = subprocess.run(
        [*command, "--workers", "2", "--out", "out", "--no-plot"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0] == "kept 2 of 4 runs finished earlier"
    assert sorted(line.split()[2] for line in lines if line.startswith("done ")) == SLOW
    assert {run: (out / run / "summary.json").stat().st_mtime_ns for run in FAST} == kept
    with (out / "summary.csv").open() as f:
        assert sorted(r["run_id"] for r in csv.DictReader(f)) == sorted(FAST + SLOW)


def test_ctrl_c_stops_every_worker(tmp_path: Path) -> None:
    status, seconds, stderr = interrupt_mid_run(tmp_path, signal.SIGINT)
    assert status == 128 + signal.SIGINT
    assert seconds < 5.0
    assert "interrupted by SIGINT" in stderr
    assert not any((tmp_path / "out" / run).exists() for run in SLOW)
