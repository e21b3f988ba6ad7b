"""The adversarial suite, short form: every insider scenario against real daemons.

Each test runs a job of 6 ``gossipfl start`` processes on 127.0.0.1 (exponential graph,
CS+, digits, 20 rounds) with the scenario's attacker among them, and checks what issue 11
asks of the runtime: no honest peer crashes, the honest peers' accuracy stays near the
attack-free job's, memory stays bounded under the floods, a stalling neighbour does not
set the pace, and every attack leaves a trace that is counted and logged with the
attacker's peer ID. The full-length runs, with three seeds, are recorded by
``experiments/insiders/run.py`` (docs/robustness.md, "Insiders").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gossipfl.daemon.adversarial import SUITE, JobResult, JobSettings, Scenario, run_job
from gossipfl.daemon.config import TrainingSection
from gossipfl.daemon.testing import metrics

pytestmark = [pytest.mark.network, pytest.mark.timeout(150)]

ROUNDS = 20
FLOODS = {"window-flood", "frame-flood"}
START_TIMEOUT = 2.0
"""Seconds the honest peers wait for the whole roster before round 0. The peers fork from
one preloaded server and are all up within about a second; only the scenarios whose
attacker is never admitted (wrong-network, wrong-layout) wait this out, once a job."""
NEVER_ADMITTED = {"wrong-network", "wrong-layout"}
"""Scenarios whose attacker the others refuse outright. Round 0 then waits for it up to
``max(training.deadline, training.start_grace)``: for these two, a deadline of 2 s (the
job's rounds take ~0.1 s) and a grace of 1 s instead of the defaults' 5 s (no insider
here stalls, and the peers start within about a second of one another)."""


def job(*, dynamic: bool) -> JobSettings:
    return JobSettings(rounds=ROUNDS, linger=0.5, start_timeout=START_TIMEOUT, dynamic=dynamic)


@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, JobResult]:
    """The attack-free jobs (static roster, dynamic membership), same seed."""
    root = tmp_path_factory.mktemp("baselines")
    return {
        dynamic: run_job(job(dynamic=dynamic), Scenario("none"), root / str(dynamic))
        for dynamic in (False, True)
    }


def short(name: str) -> tuple[Scenario, bool]:
    scenario, dynamic = SUITE[name]
    if scenario.kill is not None:  # a kill well inside 20 rounds, back soon after
        scenario = dataclasses.replace(scenario, kill=(scenario.kill[0], 5), down_seconds=0.5)
    return scenario, dynamic


@pytest.mark.parametrize("name", list(SUITE))
def test_the_runtime_withstands_an_insider(
    name: str, baselines: dict[bool, JobResult], tmp_path: Path
) -> None:
    scenario, dynamic = short(name)
    settings = job(dynamic=dynamic)
    if name in NEVER_ADMITTED:
        settings = dataclasses.replace(
            settings, deadline=2.0, extra={**settings.extra, "training.start_grace": 1.0}
        )
    result = run_job(settings, scenario, tmp_path)  # raises if a peer crashes
    base = baselines[dynamic]
    assert result.crashed == []
    assert all(p.last_round == ROUNDS - 1 for p in result.honest)
    drop = base.honest_mean - result.honest_mean
    # A sanity bar: 20 rounds are far noisier than the 150 recorded, where it is 1 point
    # (a membership change in a short dynamic job, for one, costs a few rounds of mixing:
    # membership-poison measured 5.1 points on a quiet machine, 9.5-10.3 on a loaded one,
    # its membership views intact each time; the check that matters for it is below, so
    # its bar only catches a collapse: the attack that worked shrank every view to 2).
    bar = 0.15 if name == "membership-poison" else 0.08 if dynamic else 0.05
    assert drop < bar, f"{name}: {100 * drop:.2f} points"
    if name == "membership-poison":
        # What the attack did before: every honest view shrank to 2 members by round 9.
        # A view may shrink only by members that had finished the job (they announce
        # their leave, and a peer still in its rounds then applies the smaller
        # membership: a peer slowed down on a loaded machine sees that legitimately).
        finished = {
            p.name: max(
                (float(r["time"]) for r in metrics(tmp_path / p.name) if r["kind"] == "round"),
                default=float("inf"),
            )
            for p in result.peers
        }
        for peer in result.honest:
            rows = [r for r in metrics(tmp_path / peer.name) if r["kind"] == "round"]
            # (a failure says whether forged records were refused, and how the peer saw it)
            said = (tmp_path / peer.name / "stderr.log").read_text().splitlines()[-20:]
            for row in rows:
                done = sum(t <= float(row["time"]) for n, t in finished.items() if n != peer.name)
                assert row["members"] >= len(result.peers) - 1 - done, (
                    f"{peer.name} round {row['round']}: {[r['members'] for r in rows]}, "
                    f"{done} others finished; refused: {peer.stop.get('membership')}; "
                    + "\n".join(said)
                )
    if name in FLOODS:
        assert result.rss_growth_mb < 256
    if name == "stall":
        # Paced by the staller, 20 rounds would take 20 x 4.5 s = 90 s; the first rounds
        # wait for it until it is judged slow (2x over the 150 recorded rounds; here a
        # ~1 s job measured 3.4x: a few seconds on top, hence the absolute slack), round
        # 0 for the start grace (which a staller cannot tell from a late start).
        grace = TrainingSection.start_grace
        assert result.wall_s < max(3 * base.wall_s, base.wall_s + 5.0) + grace
    if name == "kill-restart":
        killed = scenario.kill[0] if scenario.kill is not None else 0
        said = (tmp_path / f"n{killed}" / "stderr.log").read_text()
        assert "resuming this peer's job from its checkpoint" in said
        assert "caught up with the neighbours: skipped from round" in said
        return  # a fault, not an attack: nothing to blame anyone for
    attackers = {p.peer_id for p in result.peers if not p.honest}
    counted = 0
    for peer in result.honest:
        stop = peer.stop
        counted += sum(
            n
            for who, kinds in (stop.get("violations") or {}).items()
            if who in attackers
            for n in kinds.values()
        )
        counted += sum((stop.get("membership") or {}).values())
        counted += sum((stop.get("runtime") or {}).values())
    assert counted > 0, f"{name}: nothing counted"
    assert sum(p.warnings_about_attackers for p in result.honest) > 0, f"{name}: nothing logged"


def test_insider_behaviours_are_named_and_checked() -> None:
    from gossipfl.attacks.insider import INSIDERS, make_insider
    from gossipfl.errors import ConfigError

    assert make_insider("Round_Inflation", round="7").describe() == "round-inflation(round=7)"
    with pytest.raises(ConfigError, match="valid: membership-poison"):
        make_insider("tsunami")
    with pytest.raises(ConfigError, match="at most 16 MiB"):
        make_insider("window-flood", chunk=1 << 30)
    in_suite = {
        settings["insider.name"]
        for scenario, _ in SUITE.values()
        for settings in scenario.attackers.values()
        if "insider.name" in settings
    }
    assert in_suite == set(INSIDERS)  # every behaviour is in the adversarial suite


def test_tampering_rewrites_models_and_nothing_else() -> None:
    import numpy as np

    from gossipfl import wire
    from gossipfl.attacks.insider import make_insider

    model = wire.encode(wire.Update(sender="a", round=3, vector=np.ones(8, np.float32)))
    hello_like = wire.encode(wire.Heartbeat(round=3))
    sent: list[bytes] = []

    class Sink:
        local_id = "a"

        def send_nowait(self, peer: str, data: bytes) -> None:
            sent.append(data)

    transport = make_insider("spoofed-sender").wrap_transport(Sink())  # type: ignore[arg-type]
    transport.send_nowait("b", hello_like)  # type: ignore[attr-defined]
    transport.send_nowait("b", model)  # type: ignore[attr-defined]
    assert sent[0] == hello_like
    decoded = wire.decode(sent[1])
    assert isinstance(decoded, wire.Update)
    assert decoded.sender == "b"
    assert decoded.round == 3
    nan = make_insider("nan-models").wrap_transport(Sink())  # type: ignore[arg-type]
    nan.send_nowait("b", model)  # type: ignore[attr-defined]
    with pytest.raises(wire.WireError, match="non-finite"):
        wire.decode(sent[-1])
