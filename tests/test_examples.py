"""The embedding examples run as documented: one OS process per peer, over libp2p on
127.0.0.1, and gossip teaches every peer the digits it never saw.

Each peer holds a label-separated shard (peer i of n: the digits c with c % n == i), so a
peer that only trained locally could classify at most its own share of the test set
(under 51% with two shards, under 41% with three). Ending far above that share is the
evidence that the models were merged.
"""

from __future__ import annotations

import importlib
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gossipfl.identity import Identity, create_identity

pytestmark = [pytest.mark.network, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ROUNDS = 8
STARTUP_S = 60.0
"""Importing torch, scikit-learn and libp2p takes 3-7 s per process on a busy 2-core CI
machine; the bound only guards against a hang."""
RUN_S = 90.0

sys.path.insert(0, str(EXAMPLES))  # the examples directory is not a package
digits_app = importlib.import_module("digits_app")


class PeerProcess:
    """One example process, its output read line by line in a thread (no polling)."""

    def __init__(self, script: str, *args: str) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:  # closed once the process has closed its end
            for line in self.proc.stdout:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line matching ``pattern``; fails on exit or timeout."""
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} within {timeout} s: {self.output()}")
            if line is None:
                pytest.fail(f"exited before printing {pattern!r}: {self.output()}")
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def finish(self, timeout: float) -> str:
        """Wait for a clean exit; return everything it printed."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"still running after {timeout} s: {self.output()}")
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        assert status == 0, self.output()
        return self.output()

    def output(self) -> str:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "\n".join(["", *self.lines])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)


@pytest.fixture
def processes() -> Iterator[list[PeerProcess]]:
    started: list[PeerProcess] = []
    yield started
    for process in started:  # a failed test must not leave peers behind
        process.kill()


def identities(tmp_path: Path, count: int) -> list[Identity]:
    return [create_identity(tmp_path / f"peer{i}" / "identity.key") for i in range(count)]


def start_group(
    script: str, keys: list[Identity], started: list[PeerProcess], *extra: str
) -> list[PeerProcess]:
    """Start peer 0 with the others' peer IDs, then each next peer with the addresses of
    the ones already running: everyone ends up connected to everyone."""
    n = len(keys)
    addresses: list[str] = []
    for i, key in enumerate(keys):
        peers = [*addresses, *(k.peer_id for k in keys[i + 1 :])]
        args = [f"--key={key.path}", f"--shard={i + 1}/{n}", f"--rounds={ROUNDS}"]
        args += [f"--peer={p}" for p in peers]
        process = PeerProcess(script, *args, *(a.replace("{i}", str(i)) for a in extra))
        started.append(process)
        match = process.wait_for(r"^listening on (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\S+)$", STARTUP_S)
        assert match.group(1).endswith(key.peer_id)
        addresses.append(match.group(1))
    return started


def own_share(index: int, count: int) -> float:
    """The best accuracy on all ten digits that local training alone could reach."""
    shard = digits_app.load_shard(index, count)
    return float(np.isin(shard.y_test.numpy(), shard.classes).mean())


def final_accuracy(output: str) -> float:
    match = re.search(r"^accuracy on all digits (\d\.\d+)", output, re.MULTILINE)
    assert match, output
    return float(match.group(1))


def test_trio_example_three_peers_learn_every_digit(
    tmp_path: Path, processes: list[PeerProcess]
) -> None:
    keys = identities(tmp_path, 3)
    group = start_group("embed_trio.py", keys, processes)
    outputs = [process.finish(RUN_S) for process in group]
    accuracies = [final_accuracy(out) for out in outputs]
    for i, (out, acc) in enumerate(zip(outputs, accuracies, strict=True)):
        assert f"done: rounds 0..{ROUNDS - 1}" in out
        # Every round merged both neighbours' models: the group really gossiped.
        assert out.count("models received 2/2") == ROUNDS, out
        assert own_share(i, 3) < 0.41
        assert acc > 0.75, out
    # Uniform averaging over a complete group leaves one model: identical accuracies.
    assert max(accuracies) - min(accuracies) < 1e-9


def test_sync_example_two_peers_learn_every_digit_and_checkpoint(
    tmp_path: Path, processes: list[PeerProcess]
) -> None:
    keys = identities(tmp_path, 2)
    checkpoints = str(tmp_path / "checkpoints-{i}")
    group = start_group("embed_sync.py", keys, processes, f"--checkpoints={checkpoints}")
    outputs = [process.finish(RUN_S) for process in group]
    for i, out in enumerate(outputs):
        assert f"done: rounds 0..{ROUNDS - 1}" in out
        assert own_share(i, 2) < 0.51
        assert final_accuracy(out) > 0.75, out
        with np.load(tmp_path / f"checkpoints-{i}" / "checkpoint.npz") as saved:
            assert int(saved["round"]) == ROUNDS - 1
            assert saved["vector"].size == 64 * 32 + 32 + 32 * 10 + 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/3", r"--shard 0/3: I counts from 1 to N \(1/3 is the first\)"),
        ("4/3", r"--shard 4/3: I counts from 1 to N \(1/3 is the first\)"),
        ("one/2", r"--shard takes I/N with whole numbers \(1/2\), not 'one/2'"),
    ],
)
def test_example_shards_count_from_one_and_say_so(text: str, message: str) -> None:
    peer_args = importlib.import_module("peer_args")
    assert peer_args.parse_shard("1/3") == (0, 3)
    assert peer_args.parse_shard("3/3") == (2, 3)
    with pytest.raises(SystemExit, match=message):
        peer_args.parse_shard(text)
