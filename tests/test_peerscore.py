"""The peer score policy (gossipfl.peerscore): properties under any sequence of reports."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossipfl.errors import ConfigError
from gossipfl.peerscore import DEFAULT_WEIGHTS, PeerScores, ScorePolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = ScorePolicy(
    weights={"window": 60.0, "streams": 10.0, "tiny": 0.5},
    default_weight=7.0,
    half_life=10.0,
    threshold=100.0,
    ban=5.0,
    max_ban=60.0,
    forget_bans_after=1000.0,
)
KINDS = st.sampled_from(["window", "streams", "tiny", "something_new"])
PEERS = st.sampled_from(["A", "B", "C"])
# (peer, kind, seconds since the previous report)
REPORTS = st.lists(
    st.tuples(PEERS, KINDS, st.floats(min_value=0.0, max_value=30.0, allow_nan=False)),
    max_size=60,
)


def scores() -> tuple[PeerScores, FakeClock]:
    clock = FakeClock()
    return PeerScores(POLICY, clock=clock), clock


@given(REPORTS)
def test_a_score_stays_below_the_threshold_and_never_goes_negative(
    reports: list[tuple[str, str, float]],
) -> None:
    peers, clock = scores()
    for peer, kind, gap in reports:
        clock.now += gap
        peers.report(peer, kind)
        for p in "ABC":
            assert 0.0 <= peers.score(p) < POLICY.threshold


@given(REPORTS)
def test_a_ban_happens_exactly_when_the_decayed_score_plus_the_weight_reaches_the_threshold(
    reports: list[tuple[str, str, float]],
) -> None:
    peers, clock = scores()
    for peer, kind, gap in reports:
        clock.now += gap
        banned_before = peers.is_banned(peer)
        expected = peers.score(peer) + POLICY.weight(kind)
        ban = peers.report(peer, kind)
        if banned_before:
            assert ban is None  # reports during a ban are ignored
            continue
        assert (ban is not None) == (expected >= POLICY.threshold)
        if ban is not None:
            assert ban.score == pytest.approx(expected)
            assert ban.kind == kind
            assert peers.score(peer) == 0.0
            assert peers.ban_of(peer) == ban
            assert ban.start == clock.now


@given(
    st.floats(min_value=0.0, max_value=99.0),
    st.floats(min_value=0.0, max_value=100.0),
)
def test_a_score_halves_every_half_life(weight: float, elapsed: float) -> None:
    peers, clock = scores()
    peers.report("A", "custom", weight=weight)
    clock.now += elapsed
    assert peers.score("A") == pytest.approx(weight * 0.5 ** (elapsed / POLICY.half_life))
    clock.now += POLICY.half_life
    assert peers.score("A") == pytest.approx(weight * 0.5 ** (elapsed / POLICY.half_life + 1))


@given(st.integers(min_value=1, max_value=40))
def test_bans_double_on_each_repeat_up_to_the_cap(repeats: int) -> None:
    peers, clock = scores()
    durations = []
    for _ in range(repeats):
        ban = peers.report("A", "custom", weight=POLICY.threshold)
        assert ban is not None
        durations.append(ban.duration)
        assert ban.nth == len(durations)
        clock.now = ban.until  # the ban has just ended
        assert not peers.is_banned("A")
    assert durations[0] == POLICY.ban
    for before, after in itertools.pairwise(durations):
        assert after == min(2 * before, POLICY.max_ban)
    assert max(durations) <= POLICY.max_ban


def test_a_peer_is_a_first_offender_again_after_forget_bans_after() -> None:
    peers, clock = scores()
    first = peers.report("A", "custom", weight=100.0)
    assert first is not None
    clock.now = first.until
    second = peers.report("A", "custom", weight=100.0)
    assert second is not None
    assert second.nth == 2
    assert second.duration == 2 * POLICY.ban
    clock.now = second.until + POLICY.forget_bans_after
    third = peers.report("A", "custom", weight=100.0)
    assert third is not None
    assert third.nth == 1
    assert third.duration == POLICY.ban


@given(REPORTS)
def test_peers_are_scored_independently(reports: list[tuple[str, str, float]]) -> None:
    together, clock = scores()
    alone, alone_clock = scores()
    for peer, kind, gap in reports:
        clock.now += gap
        alone_clock.now += gap
        together.report(peer, kind)
        if peer == "A":
            alone.report(peer, kind)
    assert together.score("A") == pytest.approx(alone.score("A"))
    assert together.is_banned("A") == alone.is_banned("A")


@given(st.lists(KINDS, max_size=50))
def test_a_ban_lasts_its_duration_and_no_longer(kinds: list[str]) -> None:
    peers, clock = scores()
    for kind in kinds:
        ban = peers.report("A", kind)
        if ban is not None:
            clock.now = ban.until - 1e-6
            assert peers.is_banned("A")
            assert peers.bans() == {"A": ban}
            clock.now = ban.until
            assert not peers.is_banned("A")
            assert peers.bans() == {}


def test_unknown_kinds_take_the_default_weight_and_known_ones_their_own() -> None:
    assert POLICY.weight("window") == 60.0
    assert POLICY.weight("a kind nobody declared") == POLICY.default_weight
    assert ScorePolicy().weight("window") == DEFAULT_WEIGHTS["window"]


def test_memory_is_bounded_and_bans_outlive_idle_peers() -> None:
    clock = FakeClock()
    peers = PeerScores(ScorePolicy(max_peers=3), clock=clock)
    assert peers.report("banned", "x", weight=1000.0) is not None
    for i in range(50):
        peers.report(f"idle{i}", "x", weight=1.0)
    assert peers.is_banned("banned")
    assert len(peers._records) <= 3


@pytest.mark.parametrize(
    "bad",
    [
        {"half_life": 0.0},
        {"threshold": -1.0},
        {"ban": math.inf},
        {"ban": 10.0, "max_ban": 5.0},
        {"weights": {"window": -1.0}},
        {"weights": {"": 1.0}},
        {"default_weight": math.nan},
        {"max_peers": 0},
    ],
)
def test_impossible_policies_are_config_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ScorePolicy(**bad)  # type: ignore[arg-type]


def test_a_policy_is_hashable_and_its_weights_frozen() -> None:
    policy = ScorePolicy(weights={"a": 1.0})
    assert hash(policy) == hash(ScorePolicy(weights={"a": 1.0}))
    with pytest.raises(TypeError):
        policy.weights["a"] = 2.0  # type: ignore[index]
