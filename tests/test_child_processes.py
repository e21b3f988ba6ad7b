"""Processes gossipfl starts do not outlive the program that started them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's"
)

LAUNCH = textwrap.dedent(
    """
    import pathlib, sys, time
    from gossipfl.simulation.processes import PeerLauncher

    launcher = PeerLauncher()
    homes = [pathlib.Path(sys.argv[1]) / f"p{i}" for i in range(2)]
    for home in homes:
        home.mkdir()
    listen = "network.listen=['/ip4/127.0.0.1/tcp/0']"
    peers = [launcher.start(home, "--quiet", "--set", listen) for home in homes]
    print(" ".join(str(p.pid) for p in peers), flush=True)
    time.sleep(300)
    """
)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(0.05)


@pytest.mark.timeout(90)
def test_peer_processes_stop_when_their_launcher_is_sigkilled(tmp_path: Path) -> None:
    """SIGKILL leaves a program no chance to stop its children: the peer processes of
    its fork server stop anyway (SIGTERM from the kernel, chained through the fork
    server), instead of holding their ports and training for nobody."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert launcher.stdout is not None
        pids = [int(pid) for pid in launcher.stdout.readline().split()]
        assert len(pids) == 2
        logs = [tmp_path / f"p{i}" / "stdout.log" for i in range(2)]

        def started() -> bool:
            return all(log.is_file() and "peer id" in log.read_text() for log in logs)

        wait_until(started, 60, "both peers did not start")
        assert all(alive(pid) for pid in pids)
    finally:
        launcher.kill()
        launcher.wait()
        if launcher.stdout is not None:
            launcher.stdout.close()
    try:
        wait_until(lambda: not any(alive(pid) for pid in pids), 20, "peer processes outlived it")
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, 9)
