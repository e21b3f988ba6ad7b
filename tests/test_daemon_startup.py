"""Starting a peer: what it says when it cannot start yet, when it resumes, when its job is
already finished, and ``fresh`` jobs. Real daemons (``Node``) on 127.0.0.1."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trio

from gossipfl.daemon.config import DaemonConfig
from gossipfl.daemon.node import Node
from gossipfl.daemon.progress import Reporter
from gossipfl.identity import generate_identity


def test_a_rule_that_does_not_fit_yet_says_what_would() -> None:
    """Three hosts with the defaults (exponential graph, CS+ with b = 1): degree 2, where
    CS+ needs 3 neighbours. The wait says how many peers would do, and which rules fit."""
    ids = [generate_identity() for _ in range(3)]
    node = Node(DaemonConfig(), ids[0])
    problem = node._rule_problem([i.peer_id for i in ids])
    assert "cs-plus with b=1 needs" in problem
    assert "start 2 more peer(s) (5 in all)" in problem
    assert "clipped-gossip" in problem  # robust, and works with 2 neighbours
    offered = problem.split("neighbours: ")[-1].split(", ")
    assert "mean" not in offered  # plain averaging tolerates no Byzantine neighbour
    assert (
        node._rule_problem([i.peer_id for i in [*ids, *(generate_identity() for _ in range(2))]])
        == ""
    )


def config(home: Path, rounds: int) -> DaemonConfig:
    return DaemonConfig(base_dir=home).with_overrides(
        [
            "network.listen=['/ip4/127.0.0.1/tcp/0']",
            f"training.rounds={rounds}",
            "topology.min_peers=1",
            "rule.name='mean'",
            "output.eval_every=0",
            "output.linger=0.0",
        ]
    )


async def run_node(home: Path, rounds: int, *, fresh: bool = False) -> tuple[str, str]:
    err = io.StringIO()
    identity = generate_identity() if not (home / "id").exists() else None
    if identity is None:
        from gossipfl.identity import load_identity

        identity = load_identity(home / "id" / "identity.key")
    else:
        from gossipfl.identity import save_identity

        save_identity(identity, home / "id" / "identity.key")
    node = Node(
        config(home, rounds), identity, reporter=Reporter(out=io.StringIO(), err=err), fresh=fresh
    )
    with trio.fail_after(60):
        result = await node.run()
    return result.reason, err.getvalue()


@pytest.mark.network
@pytest.mark.timeout(120)
async def test_resume_finish_and_fresh_are_each_said(tmp_path: Path) -> None:
    reason, said = await run_node(tmp_path, 2)
    assert reason == "finished"
    # The same home again: its job is over, and it says so (no traceback, no waiting).
    reason, said = await run_node(tmp_path, 2)
    assert reason == "already finished"
    assert "this peer's job is finished" in said
    assert "--fresh" in said
    # More rounds: it resumes, and says from where.
    reason, said = await run_node(tmp_path, 4)
    assert reason == "finished"
    assert "resuming this peer's job from its checkpoint of round 2" in said
    # --fresh: a new job; the old state is kept aside, not deleted.
    reason, said = await run_node(tmp_path, 2, fresh=True)
    assert reason == "finished"
    assert "a new job: the previous job's state/ is now" in said
    assert "resuming" not in said
    assert len(list(tmp_path.glob("state.*"))) == 1


@pytest.mark.network
@pytest.mark.timeout(120)
def test_start_fresh_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gossipfl.cli import main

    home = tmp_path / "peer"
    assert main(["init", "--home", str(home), "--quiet", "--listen", "/ip4/127.0.0.1/tcp/0"]) == 0
    common = ["start", "--home", str(home), "--rounds", "2", "--min-peers", "1", "--rule", "mean"]
    assert main(common) == 0
    assert main(common) == 0
    assert "this peer's job is finished" in capsys.readouterr().err
    assert main([*common, "--fresh"]) == 0
    said = capsys.readouterr().err
    assert "a new job: the previous job's state/ is now" in said
    assert "finished: rounds 1..2" in said


@pytest.mark.network
@pytest.mark.timeout(120)
async def test_a_roster_peer_that_never_comes_is_named_and_start_timeout_starts_anyway(
    tmp_path: Path,
) -> None:
    """An insider on the roster can hold round 0 back by never coming, for
    ``topology.start_timeout`` seconds: the wait names whom it waits for, then starts."""
    from gossipfl.daemon.roster import RosterEntry, roster_toml
    from gossipfl.identity import save_identity

    own, beta, gamma = (generate_identity() for _ in range(3))
    roster = tmp_path / "roster.toml"
    entries = [
        RosterEntry(name, i.peer_id)
        for name, i in (("alpha", own), ("beta", beta), ("gamma", gamma))
    ]
    roster.write_text(roster_toml(entries, {"name": "ring"}))
    save_identity(own, tmp_path / "id" / "identity.key")
    cfg = config(tmp_path, 2).with_overrides(
        [
            f"topology.roster='{roster}'",
            "topology.min_peers=0",
            "topology.start_timeout=1.0",
            "training.deadline=0.5",
        ]
    )
    err = io.StringIO()
    node = Node(cfg, own, reporter=Reporter(out=io.StringIO(), err=err))
    with trio.fail_after(60):
        result = await node.run()
    said = err.getvalue()
    short = [f"{i.peer_id[:8]}...{i.peer_id[-4:]}" for i in (beta, gamma)]
    assert f"waiting for peers: 1 of 3 present (absent: beta {short[0]}, gamma {short[1]})" in said
    assert "start_timeout passed" in said
    assert result.reason == "finished"


def test_the_wait_names_at_most_a_few_absent_peers() -> None:
    from gossipfl.daemon.node import ABSENT_SHOWN, absent_from
    from gossipfl.daemon.roster import Roster, RosterEntry

    ids = [generate_identity().peer_id for _ in range(ABSENT_SHOWN + 3)]
    roster = Roster(tuple(RosterEntry(f"n{k}", p) for k, p in enumerate(ids)))
    text = absent_from(roster, ids[:1])
    assert text.startswith(" (absent: n1 ")
    assert text.count("...") == ABSENT_SHOWN
    assert text.endswith(" and 2 more)")
    assert absent_from(roster, ids) == ""
