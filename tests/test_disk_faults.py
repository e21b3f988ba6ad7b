"""Disks and checkpoints: a full disk costs rows and checkpoints, never the peer and never
a half-written file; a checkpoint that cannot be used says which file and what to do.

Most tests make writes fail by replacing a file object's ``write`` (partly written, then
ENOSPC, as a real disk does). The ``tiny_disk`` ones use a real 256 KiB tmpfs: they need
root on Linux (CI has it) and are skipped, saying why, otherwise.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from gossipfl.daemon.config import DaemonConfig
from gossipfl.daemon.metrics import (
    MetricsLog,
    ModelRecorder,
    ModelRecordReader,
    complete_records,
    read_metrics,
    read_model_records,
)
from gossipfl.daemon.node import SHARD_FILE, Node
from gossipfl.files import WriteFailures, complete_lines, write_atomic
from gossipfl.identity import generate_identity
from gossipfl.peer import CheckpointError, CheckpointStore, RoundReport
from gossipfl.peer.checkpoint import FORMAT
from gossipfl.protocol import RoundStats

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FillingDisk:
    """Stands in for a file's ``write``: passes writes through until ``full`` is set,
    then writes half of the next one and fails it, and fails every one after (a disk
    filling up); ``can_truncate = False`` makes cutting back fail too."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.write_through = file.write
        self.truncate_through = file.truncate
        self.full = False
        self.can_truncate = True
        file.write = self.write
        file.truncate = self.truncate

    def write(self, data: bytes | memoryview) -> int:
        if not self.full:
            return int(self.write_through(data))
        if len(data) > 1 and not getattr(self, "_tore", False):
            self._tore = True
            return int(self.write_through(bytes(data[: len(data) // 2])))
        raise ENOSPC

    def truncate(self, size: int) -> int:
        if not self.can_truncate:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return int(self.truncate_through(size))

    def free(self) -> None:
        self.full = False
        self._tore = False


def disk_of(log: MetricsLog | ModelRecorder) -> FillingDisk:
    assert log._log.open()
    assert log._log._file is not None
    return FillingDisk(log._log._file)


def report(round: int, n: int = 1000) -> RoundReport:
    stats = RoundStats(expected=1, received=1)
    vector = np.full(n, float(round), np.float32)
    return RoundReport(peer="p", round=round, vector=vector, stats=stats, time=float(round))


def warnings_about(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and str(path) in r.getMessage()
    ]


# ----------------------------------------------------------------- append-only logs


def test_metrics_rows_are_whole_or_absent_when_the_disk_fills(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, peer="p")
    disk = disk_of(log)
    assert log.write("round", round=0)
    disk.full = True
    with caplog.at_level(logging.WARNING):
        written = [log.write("round", round=r, padding="x" * 200) for r in range(1, 6)]
        assert written == [False] * 5
        assert path.read_bytes().endswith(b"\n")  # the torn half was cut back at once
        disk.free()
        assert log.write("round", round=6)
    log.close()
    rows = read_metrics(path)
    assert [r["round"] for r in rows] == [0, 6]
    assert all(json.loads(line) for line in path.read_text().splitlines())
    said = warnings_about(caplog, path)
    assert len(said) == 2, said  # once when it failed, once when it works again
    assert "No space left on device (free some space on that disk)" in said[0]
    assert "training goes on" in said[0]
    assert "can be written again (5 failed writes meanwhile)" in said[1]


def test_model_records_are_whole_or_absent_when_the_disk_fills(tmp_path: Path) -> None:
    path = tmp_path / "models.bin"
    recorder = ModelRecorder(path)
    disk = disk_of(recorder)
    assert recorder.record(report(0))
    disk.full = True
    assert not recorder.record(report(1))
    assert not recorder.record(report(2))
    disk.free()
    assert recorder.record(report(3))
    recorder.close()
    assert [r.round for r in read_model_records(path)] == [0, 3]
    with path.open("rb") as f:
        assert complete_records(f) == path.stat().st_size


def test_a_record_that_cannot_be_cut_back_holds_the_log_until_it_is(tmp_path: Path) -> None:
    path = tmp_path / "models.bin"
    recorder = ModelRecorder(path)
    disk = disk_of(recorder)
    assert recorder.record(report(0))
    good = path.stat().st_size
    disk.full = True
    disk.can_truncate = False
    assert not recorder.record(report(1))
    assert path.stat().st_size > good  # half a record is stuck at the end
    disk.free()
    assert not recorder.record(report(2))  # not appended after the torn one
    disk.can_truncate = True
    assert recorder.record(report(3))  # cut back first, then written
    recorder.close()
    assert [r.round for r in read_model_records(path)] == [0, 3]


def test_a_torn_last_line_is_cut_off_when_the_metrics_log_opens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"kind": "round", "round": 0}\n{"kind": "round", "rou')
    with caplog.at_level(logging.WARNING):
        log = MetricsLog(path, peer="p")
        log.write("round", round=1)
        log.close()
    assert [r["round"] for r in read_metrics(path)] == [0, 1]
    assert path.read_text().count("\n") == 2
    assert any("torn record" in m and "cut off its last 22 bytes" in m for m in caplog.messages)


def test_a_torn_last_model_record_is_cut_off_when_the_recorder_opens(tmp_path: Path) -> None:
    path = tmp_path / "models.bin"
    whole = tmp_path / "whole.bin"
    recorder = ModelRecorder(whole)
    recorder.record(report(0))
    recorder.record(report(1))
    recorder.close()
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) - 100])  # killed while writing round 1
    recorder = ModelRecorder(path)
    recorder.record(report(2))
    recorder.close()
    assert [r.round for r in read_model_records(path)] == [0, 2]


def test_the_model_reader_rereads_a_torn_tail_that_the_writer_replaced(tmp_path: Path) -> None:
    path = tmp_path / "models.bin"
    first = msgpack.packb(_entry(0))
    torn = msgpack.packb(_entry(1))[:-50]
    path.write_bytes(first + torn)
    reader = ModelRecordReader(path)
    assert [r.round for r in reader.poll()] == [0]
    assert reader.poll() == []  # still torn
    with path.open("r+b") as f:  # the writer cut it back; round 1 is lost, 2 and 3 follow
        f.truncate(len(first))
        f.seek(0, io.SEEK_END)
        f.write(msgpack.packb(_entry(2)) + msgpack.packb(_entry(3)))
    assert [r.round for r in reader.poll()] == [2, 3]


def test_the_model_reader_reports_a_damaged_file_and_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "models.bin"
    not_a_record = msgpack.packb({"something": "else"})
    path.write_bytes(msgpack.packb(_entry(0)) + not_a_record + msgpack.packb(_entry(1)))
    with caplog.at_level(logging.WARNING):
        assert [r.round for r in read_model_records(path)] == [0, 1]  # skipped, in step
    assert "skipping a record near byte" in caplog.text
    caplog.clear()
    path.write_bytes(msgpack.packb(_entry(0)) + b"\xc1" * 10 + msgpack.packb(_entry(1)))
    reader = ModelRecordReader(path)
    with caplog.at_level(logging.WARNING):
        assert [r.round for r in reader.poll()] == [0]
        assert reader.poll() == []
    assert len([m for m in caplog.messages if "is damaged near byte" in m]) == 1


def _entry(round: int) -> dict[str, Any]:
    return {
        "peer": "p",
        "round": round,
        "vector": np.zeros(3, "<f4").tobytes(),
        "stats": {
            "expected": 1,
            "received": 1,
            "missing": [],
            "late": 0,
            "duplicates": 0,
            "unexpected": 0,
            "too_far_ahead": 0,
            "staleness_mean": 0.0,
            "staleness_max": 0,
            "skipped_to": None,
        },
        "metrics": {},
        "bytes_sent": 0,
        "time": 0.0,
    }


def test_read_metrics_keeps_only_whole_json_objects(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"kind": "start"}\n12\n{"kind": "ro\xff\n{"kind": "stop"}\n{"kind"')
    assert [r["kind"] for r in read_metrics(path)] == ["start", "stop"]


def test_a_metrics_log_that_cannot_be_opened_costs_rows_not_the_peer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "state"
    blocked.write_text("a file where the state directory should be")
    path = blocked / "metrics.jsonl"
    with caplog.at_level(logging.WARNING):
        log = MetricsLog(path, peer="p")
        assert not log.write("start")
        assert not log.write("stop")
        log.close()
    assert len(warnings_about(caplog, path)) == 1


def test_write_failures_warn_at_once_then_once_a_period_then_on_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    failures = WriteFailures(
        logging.getLogger("test"), Path("x.log"), "rows are lost", period=60, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="test"):
        for t in range(0, 150, 10):  # a failure every 10 s for 150 s
            now[0] = t
            failures.failed(ENOSPC)
        failures.succeeded()
        failures.succeeded()
    assert caplog.messages == [
        "cannot write x.log: No space left on device (free some space on that disk); rows are lost",
        "cannot write x.log: No space left on device (free some space on that disk); "
        "rows are lost (5 more failures since the last warning)",
        "cannot write x.log: No space left on device (free some space on that disk); "
        "rows are lost (5 more failures since the last warning)",
        "x.log can be written again (15 failed writes meanwhile)",
    ]
    assert failures.failures == 15
    assert not failures.failing


def test_complete_lines_finds_the_last_newline_across_chunks() -> None:
    data = b"a\n" + b"x" * 100
    assert complete_lines(io.BytesIO(data), chunk=7) == 2
    assert complete_lines(io.BytesIO(b"no newline"), chunk=3) == 0
    assert complete_lines(io.BytesIO(b""), chunk=3) == 0


# ------------------------------------------------------------------------ shard.json


def node_in(tmp_path: Path, state: Path) -> Node:
    config = DaemonConfig(base_dir=tmp_path).with_overrides([f"output.dir='{state}'"])
    return Node(config, generate_identity())


def test_a_shard_choice_that_cannot_be_saved_is_warned_and_kept_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.write_text("a file where the state directory should be")
    node = node_in(tmp_path, state)
    with caplog.at_level(logging.WARNING):
        assert node._shard([node.identity.peer_id, "other"]) in {(0, 2), (1, 2)}
    said = warnings_about(caplog, state / SHARD_FILE)
    assert len(said) == 1
    assert "a restart may pick another shard" in said[0]


def test_a_failed_write_leaves_the_previous_whole_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / SHARD_FILE
    write_atomic(path, b'{"shard": 0, "shards": 2}')

    def half_then_full(f: Any, data: bytes) -> None:
        f.write(data[: len(data) // 2])
        raise ENOSPC

    monkeypatch.setattr("gossipfl.files.write_all", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, b'{"shard": 1, "shards": 3}')
    assert json.loads(path.read_text()) == {"shard": 0, "shards": 2}
    assert [p.name for p in tmp_path.iterdir()] == [SHARD_FILE]


# ----------------------------------------------------------------------- checkpoints


def saved_checkpoint(tmp_path: Path, **binding: Any) -> CheckpointStore:
    store = CheckpointStore(tmp_path / "checkpoint")
    vector = np.linspace(-1.0, 1.0, 64, dtype=np.float32)
    store.save(7, vector, b"layout-fingerprint", **{"peer": "alice", "network": "job"} | binding)
    return store


def _flip_a_model_byte(data: bytes) -> bytes:
    vector = np.linspace(-1.0, 1.0, 64, dtype=np.float32).tobytes()
    at = data.index(vector) + 100
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


DAMAGE = {
    "empty": lambda data: b"",
    "truncated-to-half": lambda data: data[: len(data) // 2],
    "truncated-by-one": lambda data: data[:-1],
    "first-bytes-only": lambda data: data[:10],
    "not-a-zip": lambda data: b"this is not a checkpoint\n" * 4,
    "an-npy-not-an-npz": lambda data: (
        b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', "
        b"'fortran_order': False, 'shape': (1,), }" + b" " * 60 + b"\n\x00\x00\x00\x00"
    ),
    "a-flipped-model-byte": _flip_a_model_byte,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_an_unusable_checkpoint_names_the_file_and_the_fix(tmp_path: Path, damage: str) -> None:
    store = saved_checkpoint(tmp_path)
    store.path.write_bytes(DAMAGE[damage](store.path.read_bytes()))
    with pytest.raises(CheckpointError) as info:
        store.load(b"layout-fingerprint", peer="alice", network="job")
    message = str(info.value)
    assert message.startswith(f"checkpoint {store.path} ")
    assert "remove it" in message
    assert "\n" not in message


def test_a_checkpoint_is_refused_by_another_peer_network_or_model(tmp_path: Path) -> None:
    store = saved_checkpoint(tmp_path)
    fingerprint = b"layout-fingerprint"
    loaded = store.load(fingerprint, peer="alice", network="job")
    assert loaded is not None
    assert (loaded.peer, loaded.network) == ("alice", "job")
    refusals = {
        "belongs to peer alice, not to this peer (bob)": {"peer": "bob", "network": "job"},
        "belongs to a job on network 'job', and this peer is on 'other'": {
            "peer": "alice",
            "network": "other",
        },
    }
    for says, who in refusals.items():
        with pytest.raises(CheckpointError, match=re.escape(says)) as info:
            store.load(fingerprint, **who)
        assert str(store.path) in str(info.value)
    with pytest.raises(CheckpointError, match="different model layout"):
        store.load(b"another-layout", peer="alice", network="job")
    assert store.load() is not None  # without a binding to check (tools, tests): any


def test_a_format_1_checkpoint_is_accepted_with_a_warning_and_bound_at_the_next_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    with store.path.open("wb") as f:  # what gossipfl wrote before checkpoints were bound
        np.savez(
            f,
            vector=np.ones(4, np.float32),
            round=np.int64(3),
            fingerprint=np.frombuffer(b"fp", np.uint8),
            pace=np.float64(1.5),
        )
    with caplog.at_level(logging.WARNING):
        old = store.load(b"fp", peer="alice", network="job")
    assert old is not None
    assert (old.round, old.pace, old.peer) == (3, 1.5, None)
    assert len(warnings_about(caplog, store.path)) == 1
    assert "does not say which peer and job" in caplog.text
    store.save(4, old.vector, b"fp", peer="alice", network="job")
    with pytest.raises(CheckpointError, match="belongs to peer alice"):
        store.load(b"fp", peer="bob", network="job")


def test_a_checkpoint_of_a_newer_format_says_upgrade(tmp_path: Path) -> None:
    store = saved_checkpoint(tmp_path)
    with np.load(store.path) as data:
        fields = {name: data[name] for name in data.files}
    fields["format"] = np.int64(FORMAT + 1)
    with store.path.open("wb") as f:
        np.savez(f, **fields)
    with pytest.raises(CheckpointError, match=f"newer gossipfl \\(format {FORMAT + 1}.*upgrade"):
        store.load()


def test_pace_and_saved_at_are_kept(tmp_path: Path) -> None:
    store = saved_checkpoint(tmp_path, pace=2.5)
    os.utime(store.path, (1_700_000_000, 1_700_000_000))
    loaded = store.load(b"layout-fingerprint", peer="alice", network="job")
    assert loaded is not None
    assert (loaded.round, loaded.pace, loaded.saved_at) == (7, 2.5, 1_700_000_000)
    assert loaded.vector.dtype == np.float32
    assert loaded.vector.shape == (64,)
    assert saved_checkpoint(tmp_path).load().pace is None  # type: ignore[union-attr]


# ------------------------------------------------------------ a real disk, filling up


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs for this test alone (root on Linux; skipped otherwise)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "gossipfl-test", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def fill(disk: Path, *, leave: int = 0) -> Path:
    """Fill ``disk`` up, then free ``leave`` bytes (whole pages); return the filler."""
    filler = disk / "filler"

    def write_until_full() -> None:
        with filler.open("wb", buffering=0) as f:
            while f.write(b"\0" * 65536):
                pass

    with pytest.raises(OSError) as info:
        write_until_full()
    assert info.value.errno == errno.ENOSPC
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    return filler


def test_metrics_rows_stay_whole_on_a_real_disk_that_fills_up(
    tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tiny_disk / "metrics.jsonl"
    fill(tiny_disk, leave=4096)  # one page: some rows fit, one is cut at the page's end
    with caplog.at_level(logging.WARNING):
        log = MetricsLog(path, peer="p")
        written = [log.write("round", round=r, padding="x" * 150) for r in range(60)]
        log.close()
    assert True in written  # some rows fitted
    assert False in written  # then the disk was full
    assert path.read_bytes().endswith(b"\n")
    rows = read_metrics(path)
    assert len(rows) == written.count(True) == len(path.read_bytes().splitlines())
    assert len(warnings_about(caplog, path)) == 1


def test_a_full_disk_at_start_leaves_no_empty_shard_json(
    tiny_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tiny_disk / "state"
    state.mkdir()
    fill(tiny_disk)
    node = node_in(tmp_path, state)
    with caplog.at_level(logging.WARNING):
        shard = node._shard([node.identity.peer_id])
    assert shard == (0, 1)
    assert not (state / SHARD_FILE).exists()
    assert sorted(p.name for p in state.iterdir()) == []  # no temporary left either
    assert len(warnings_about(caplog, state / SHARD_FILE)) == 1


FULL_ROUNDS = 8
"""Rounds the daemon trains with its disk full before space comes back."""


def reported_round(stderr: str) -> int:
    """The last round a daemon's progress lines reported (``round 9/40 ...``)."""
    return max((int(m) for m in re.findall(r"^round (\d+)/", stderr, re.MULTILINE)), default=0)


@pytest.mark.network
@pytest.mark.timeout(120)
def test_a_daemon_on_a_full_disk_trains_on_and_leaves_no_torn_file(
    tiny_disk: Path, tmp_path: Path
) -> None:
    """A real ``gossipfl start`` whose state directory is on a full disk: it trains all
    its rounds, warns once per file, and once space is back it writes whole files again."""
    from gossipfl.daemon.testing import kill_all, start_daemon, wait_for

    state = tiny_disk / "state"
    filler = fill(tiny_disk)
    rounds = 40
    daemon = start_daemon(
        tmp_path / "home",
        "--listen", "/ip4/127.0.0.1/tcp/0",
        "--rounds", str(rounds),
        "--min-peers", "1",
        "--rule", "mean",
        "--set", f"output.dir='{state}'",
        "--set", "output.record_models=true",
        "--set", "output.eval_every=10",
        "--set", "training.step_time=0.15",
        "--set", "topology.settle=0.0",
    )  # fmt: skip
    try:
        wait_for(
            lambda: reported_round(daemon.stderr()) >= FULL_ROUNDS,
            timeout=60,
            what=f"{FULL_ROUNDS} rounds on a full disk",
            failed=daemon.died,
        )
        filler.unlink()  # space is back
        assert daemon.process.wait(timeout=60) == 0, daemon.stderr()[-3000:]
    finally:
        kill_all([daemon])
    err = daemon.stderr()
    assert "Traceback" not in err, err[-3000:]
    for name in ("metrics.jsonl", "models.bin", "checkpoint.npz", SHARD_FILE):
        said = [line for line in err.splitlines() if f"{name}: No space left" in line]
        assert len(said) == 1, (name, said)
        assert " WARNING " in said[0]
    assert "metrics.jsonl can be written again" in err
    # Every line of the metrics is whole; the rows of the rounds while the disk was full
    # are lost, the ones after it are there.
    text = (state / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    rows = [json.loads(line) for line in text.splitlines()]
    trained = [r["round"] for r in rows if r["kind"] == "round"]
    assert trained[0] >= FULL_ROUNDS - 1
    assert trained == list(range(trained[0], rounds))
    assert rows[-1]["kind"] == "stop"
    assert rows[-1]["reason"] == "finished"
    # models.bin holds whole records only, consecutive at the end.
    with (state / "models.bin").open("rb") as f:
        assert complete_records(f) == (state / "models.bin").stat().st_size
    recorded = [r.round for r in read_model_records(state / "models.bin")]
    assert recorded[-1] == rounds - 1
    assert recorded == sorted(recorded)
    # The last checkpoint is whole and the daemon's; no temporary files are left.
    peer_id = daemon.peer_id
    checkpoint = CheckpointStore(state / "checkpoint").load(peer=peer_id)
    assert checkpoint is not None
    assert checkpoint.round == rounds - 1
    assert checkpoint.peer == peer_id
    leftovers = [p.name for p in state.rglob(".*")]
    assert leftovers == []
    assert not (state / SHARD_FILE).exists()  # it could not be saved, and is not empty
