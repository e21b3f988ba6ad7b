"""`gossipfl start` as an operator runs it: real processes on 127.0.0.1.

One scenario shares its processes across assertions (process start-up costs ~2 s):
two peers that allow only each other train together from a printed join command, an
intruder with an attack of huge values tries to join and is refused, SIGTERM and SIGINT
stop the peers in under a second, and a restarted peer keeps its ID and resumes from its
checkpoint.
"""

from __future__ import annotations

import functools
import signal
from pathlib import Path

import numpy as np
import pytest

from gossipfl.cli import main
from gossipfl.daemon.testing import (
    Daemon,
    kill_all,
    metrics,
    rounds_done,
    start_daemon,
    start_daemons,
    stop_daemon,
    wait_for,
)
from gossipfl.peer import CheckpointStore

pytestmark = [pytest.mark.network, pytest.mark.timeout(120)]

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
COMMON = (
    "--listen", LOOPBACK,
    "--rule", "mean",
    "--rounds", "100000",
    "--set", "training.deadline=1.0",
    "--set", "output.eval_every=5",
    "--set", "network.exchange_interval=0.3",
    "--set", "network.member_timeout=3.0",
    "--set", "topology.settle=0.5",
    "--set", "network.heartbeat_interval=0.3",
    "--set", "network.heartbeat_timeout=1.5",
)  # fmt: skip


def init(home: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["init", "--home", str(home), "--quiet", "--listen", LOOPBACK]) == 0
    return capsys.readouterr().out.strip()


def trained(home: Path, rounds: int) -> bool:
    return rounds_done(home) >= rounds


def membership_change(home: Path, *, joined: str = "", left: str = "") -> bool:
    return any(
        r["kind"] == "membership"
        and (not joined or joined in r["joined"])
        and (not left or left in r["left"])
        for r in metrics(home)
    )


def trained_with(home: Path, members: int) -> bool:
    """A round has been recorded with this many members (a membership change alone is
    recorded before the next round is, so a peer stopped right after it has none)."""
    return any(r["kind"] == "round" and r["members"] == members for r in metrics(home))


def caught_up(home: Path) -> bool:
    """Joined at the members' round, or skipped ahead to it."""
    rounds = [r for r in metrics(home) if r["kind"] == "round"]
    return bool(rounds) and (
        rounds[0]["round"] > 0 or any(r["skipped_to"] is not None for r in rounds)
    )


def final_model(home: Path) -> np.ndarray:
    checkpoint = CheckpointStore(home / "state" / "checkpoint").load()
    assert checkpoint is not None
    return checkpoint.vector


def test_two_peers_join_train_refuse_an_intruder_stop_fast_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    homes = {name: tmp_path / name for name in ("a", "b", "c", "intruder")}
    ids = {name: init(home, capsys) for name, home in homes.items()}

    def allow(*names: str) -> list[str]:
        return [arg for name in names for arg in ("--allow", ids[name])]

    daemons: list[Daemon | None] = []
    try:
        a = start_daemon(homes["a"], *COMMON, *allow("b", "c"))
        daemons.append(a)
        assert a.peer_id == ids["a"]
        assert a.addresses[0].endswith(f"/p2p/{ids['a']}")
        # The join command carries the job's settings (not the timings: each peer's own).
        job_flags = "--rounds 100000 --rule mean"
        assert a.join == f"gossipfl start --bootstrap {a.addresses[0]} {job_flags}"
        # The second peer joins with the printed command (plus its own settings).
        join_args = a.join.split()[2:]
        # The intruder is not on their allowlists. Its models would be huge (Gaussian
        # noise of sigma 1e6) and it runs with an open allowlist itself. It starts
        # beside the second peer (a start-up is mostly imports: seconds).
        b, intruder = start_daemons(
            (homes["b"], [*join_args, *COMMON, *allow("a", "c")]),
            (
                homes["intruder"],
                [*join_args, *COMMON, "--attack", "gaussian", "--set", "attack.sigma=1e6"],
            ),
        )
        daemons += [b, intruder]
        for d in (a, b):
            wait_for(
                functools.partial(trained, d.home, 30),
                timeout=60,
                what=f"30 rounds on {d.home.name}",
                failed=d.died,
            )
        # The refusal is logged by the peer that was dialed, with the intruder's ID.
        wait_for(
            lambda: f"peer {ids['intruder']}" in a.stderr(),
            timeout=10,
            what="a logged refusal of the intruder",
        )
        assert "not on the allowlist" in a.stderr()
        assert "waiting for peers: 1 of 2 present" in intruder.stderr()

        # A third (allowed) peer joins mid-run: the topology is recomputed over three
        # members at a round boundary, and the newcomer skips ahead to the others.
        c = start_daemon(homes["c"], *join_args, *COMMON, *allow("a", "b"))
        daemons.append(c)
        for d in (a, b):
            wait_for(
                functools.partial(membership_change, d.home, joined=ids["c"]),
                timeout=30,
                what=f"{d.home.name} taking in the newcomer",
                failed=d.died,
            )
            wait_for(
                functools.partial(trained_with, d.home, 3),
                timeout=30,
                what=f"{d.home.name} training with the newcomer",
                failed=d.died,
            )
        wait_for(
            functools.partial(caught_up, homes["c"]),
            timeout=30,
            what="the newcomer catching up",
            failed=c.died,
        )
        assert metrics(homes["c"])[0]["members"] == 3

        # Ctrl+C and SIGTERM: a clean stop in under a second, measured from outside.
        code_a, took_a = stop_daemon(a, signal.SIGTERM)
        # The others see it leave (it said goodbye) and recompute without it.
        wait_for(
            functools.partial(membership_change, homes["b"], left=ids["a"]),
            timeout=30,
            what="b dropping the peer that left",
            failed=b.died,
        )
        code_b, took_b = stop_daemon(b, signal.SIGINT)
        code_c, took_c = stop_daemon(c, signal.SIGTERM)
        assert (code_a, code_b, code_c) == (0, 130, 0)
        assert took_a < 1.0, f"SIGTERM took {took_a:.2f} s"
        assert took_b < 1.0, f"SIGINT took {took_b:.2f} s"
        assert took_c < 1.0, f"SIGTERM took {took_c:.2f} s"
        kill_all([intruder])

        for d, reason in ((a, "SIGTERM"), (b, "SIGINT"), (c, "SIGTERM")):
            rows = metrics(d.home)
            kinds = [r["kind"] for r in rows]
            assert kinds[0] == "start"
            assert kinds[-1] == "stop"
            assert rows[-1]["reason"] == reason
            rounds = [r for r in rows if r["kind"] == "round"]
            # Nobody but the three of them was ever a member or a neighbour.
            assert max(r["members"] for r in rounds) == 3
            joined = [p for r in rows if r["kind"] == "membership" for p in r["joined"]]
            assert ids["intruder"] not in joined
            assert ids["intruder"] not in rows[0]["neighbours"]
            accuracy = [r["accuracy"] for r in rounds if r["accuracy"] is not None]
            assert len(accuracy) >= 5
            assert max(accuracy) > 0.85
            model = final_model(d.home)
            assert np.isfinite(model).all()
            assert float(np.abs(model).max()) < 50.0
        assert metrics(homes["intruder"]) == [] or all(
            r["kind"] != "round" for r in metrics(homes["intruder"])
        )

        # A restarted peer keeps its ID and resumes after its last checkpoint.
        saved = CheckpointStore(homes["a"] / "state" / "checkpoint").load()
        assert saved is not None
        again = start_daemon(homes["a"], *COMMON, *allow("b", "c"), "--min-peers", "1")
        daemons.append(again)
        assert again.peer_id == ids["a"]
        start_rows = wait_for(
            lambda: [r for r in metrics(homes["a"]) if r["kind"] == "start"][1:],
            timeout=30,
            what="the restarted peer's start row",
            failed=again.died,
        )
        assert start_rows[0]["resuming"] is True
        first_start = metrics(homes["a"])[0]
        assert (start_rows[0]["shard"], start_rows[0]["shards"]) == (
            first_start["shard"],
            first_start["shards"],
        )  # the same shard, though it is now alone
        wait_for(
            lambda: rounds_done(homes["a"]) > saved.round + 1,
            timeout=30,
            what="a round after the checkpoint",
            failed=again.died,
        )
        rows = metrics(homes["a"])
        restart = rows.index(start_rows[0])
        first_again = next(r for r in rows[restart:] if r["kind"] == "round")
        assert first_again["round"] == saved.round + 1
        code, took = stop_daemon(again, signal.SIGTERM)
        assert code == 0
        assert took < 1.0
    finally:
        kill_all(daemons)


def two_peers_train(base: Path, rounds: int = 20) -> None:
    """The plainest deployment: one peer, and a second joining with the printed command."""
    common = (
        "--listen", LOOPBACK, "--rule", "mean", "--rounds", str(rounds),
        "--set", "output.eval_every=10", "--set", "training.deadline=2.0",
    )  # fmt: skip
    daemons: list[Daemon | None] = []
    try:
        a = start_daemon(base / "a", *common)
        daemons.append(a)
        b = start_daemon(base / "b", *a.join.split()[2:], *common)
        daemons.append(b)
        for d in (a, b):
            code = d.process.wait(timeout=60)
            assert code == 0, d.stderr()
            rows = [r for r in metrics(d.home) if r["kind"] == "round"]
            assert [r["round"] for r in rows] == list(range(rounds))
            assert all(r["received"] == 1 and r["missing"] == 0 for r in rows)
            assert rows[-1]["accuracy"] >= 0.9
    finally:
        kill_all(daemons)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_peers_twenty_times_in_a_row(tmp_path: Path) -> None:
    for attempt in range(20):
        two_peers_train(tmp_path / f"run{attempt}")


def test_a_peer_pasting_a_join_command_without_the_jobs_settings_stops_and_says_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Host 1 runs trimmed-mean for a long job; a peer started with a bare bootstrap
    address would train beside it with the defaults. It stops at once instead, exit 2,
    naming the settings; the printed join command starts a peer that trains with it, even
    when another bootstrap address given to it is a peer of another job."""
    homes = {name: tmp_path / name for name in ("host", "bare", "pasted", "other", "both")}
    for home in homes.values():
        init(home, capsys)
    timings = [
        arg for arg in COMMON if arg.startswith(("training.deadline", "network.", "topology."))
    ]
    timing_args = [x for t in timings for x in ("--set", t)]
    job = ["--rule", "trimmed-mean", "--set", "rule.params.b=0", "--rounds", "100000"]
    daemons: list[Daemon | None] = []
    try:
        host = start_daemon(homes["host"], "--listen", LOOPBACK, *job, *timing_args)
        daemons.append(host)
        assert "--rule trimmed-mean" in host.join
        assert "--set rule.params.b=0" in host.join
        address = host.addresses[0]
        bare = start_daemon(
            homes["bare"], "--listen", LOOPBACK, "--bootstrap", address, *timing_args
        )
        daemons.append(bare)
        assert bare.process.wait(timeout=30) == 2
        last = bare.stderr().strip().splitlines()[-1]
        assert last.startswith("gossipfl: error: the peer you join through")
        assert "rule.name: it runs 'trimmed-mean', this peer runs 'cs-plus'" in last
        assert "training.rounds: it runs '100000', this peer runs '100'" in last
        # The host saw it too, and did not take it in.
        assert f"peer {bare.peer_id} runs another job" in host.stderr()
        # The peer of another job (for the last check) starts beside the pasted one.
        pasted, other = start_daemons(
            (homes["pasted"], ["--listen", LOOPBACK, *host.join.split()[2:], *timing_args]),
            (homes["other"], ["--listen", LOOPBACK, *timing_args]),
        )
        daemons += [pasted, other]
        for d in (host, pasted):
            wait_for(
                functools.partial(trained_with, d.home, 2),
                timeout=60,
                what=f"{d.home.name} training with the other",
                failed=d.died,
            )
        # One bootstrap peer of another job (an honest mistake, or an insider saying
        # so) does not stop a peer that was given another one of its job.
        both = start_daemon(
            homes["both"],
            "--listen",
            LOOPBACK,
            "--bootstrap",
            other.addresses[0],
            *host.join.split()[2:],
            *timing_args,
        )
        daemons.append(both)
        wait_for(
            lambda: f"peer {other.peer_id} runs another job" in both.stderr(),
            timeout=60,
            what="the peer hearing the other job's bootstrap peer",
            failed=both.died,
        )
        wait_for(
            functools.partial(trained_with, homes["both"], 3),
            timeout=60,
            what="the peer training with the job's two",
            failed=both.died,
        )
        assert all(r["members"] <= 3 for r in metrics(homes["host"]) if r["kind"] == "round")
    finally:
        kill_all(daemons)


def test_a_peer_trains_with_differential_privacy_beside_one_that_does_not(
    tmp_path: Path,
) -> None:
    """DP-SGD is each peer's own choice, not the job's: a private peer joins a plain one
    with the printed command, spends exactly its budget over the job's rounds, says so at
    the start and reports its epsilon every round."""
    rounds = 12
    common = (
        "--listen", LOOPBACK, "--rule", "mean", "--rounds", str(rounds),
        "--set", "output.eval_every=6", "--set", "training.deadline=2.0",
    )  # fmt: skip
    daemons: list[Daemon | None] = []
    try:
        plain = start_daemon(tmp_path / "plain", *common)
        daemons.append(plain)
        private = start_daemon(
            tmp_path / "private", *plain.join.split()[2:], *common,
            "--privacy", "dp-sgd", "--epsilon", "3",
        )  # fmt: skip
        daemons.append(private)
        for d in (plain, private):
            assert d.process.wait(timeout=60) == 0, d.stderr()
        spent = [r["epsilon"] for r in metrics(private.home) if r["kind"] == "round"]
        assert len(spent) == rounds
        assert spent == sorted(spent)
        # never over budget; the whole budget when every round trained (a joiner that
        # caught up by skipping a round trains, and spends, a step less)
        assert 2.8 <= spent[-1] <= 3.0
        assert "differential privacy: DP-SGD, clip 1, sampling rate" in private.stderr()
        assert ", noise multiplier " in private.stderr()
        assert "epsilon 0 spent of 3" in private.stderr()
        assert all(r["epsilon"] is None for r in metrics(plain.home) if r["kind"] == "round")
    finally:
        kill_all(daemons)
