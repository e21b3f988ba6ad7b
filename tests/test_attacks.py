"""Each attack sends what its formula says, from an omniscient view of its target."""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.attacks import (
    ATTACKS,
    NO_ATTACK,
    AttackInputError,
    AttackView,
    alie_z,
    alie_z_local,
    attack_help,
    attacks_help,
    flip_labels,
    make_attack,
    with_flipped_labels,
)
from gossipfl.attacks.search import line_maximize
from gossipfl.data.datasets import synthetic
from gossipfl.errors import ConfigError
from gossipfl.merge import make_rule

RNG = np.random.default_rng


def random_view(
    seed: int,
    *,
    k: int = 4,
    b: int = 1,
    n: int = 33,
    equal: bool = False,
    population: int = 20,
    byzantine_total: int = 4,
) -> AttackView:
    """A target with k honest neighbours and b Byzantine ones, Metropolis-like weights."""
    rng = RNG(seed)
    centre = rng.normal(size=n)
    target = (centre + rng.normal(scale=0.5, size=n)).astype(np.float32)
    neighbours = (centre + rng.normal(scale=0.5, size=(k, n))).astype(np.float32)
    if equal:
        weights = np.full(k + b, 1.0 / (k + b + 1))
    else:
        weights = rng.uniform(0.05, 1.0, size=k + b)
        weights *= rng.uniform(0.5, 0.95) / weights.sum()
    return AttackView(
        round=3,
        own=rng.normal(size=n).astype(np.float32),
        neighbours=neighbours,
        weights=weights[:k],
        target=target,
        target_weight=float(1.0 - weights.sum()),
        byzantine_weight=float(weights[k:].sum()),
        byzantine_count=b,
        population=population,
        byzantine_total=byzantine_total,
    )


def honest_stack(view: AttackView) -> np.ndarray:
    assert view.target is not None
    return np.vstack([view.target[None, :], view.neighbours]).astype(np.float64)


def merge_with_attackers(view: AttackView, message: np.ndarray, rule: str = "mean") -> np.ndarray:
    """The target's merge when each of its b Byzantine neighbours sends ``message`` and
    they share the Byzantine weight equally."""
    assert view.target is not None
    b = view.byzantine_count
    rows = np.vstack([view.neighbours, np.repeat(message[None, :], b, axis=0)])
    weights = np.concatenate([view.weights, np.full(b, view.byzantine_weight / b)])
    return make_rule(rule).merge(view.target, rows, weights)


seeds = st.integers(0, 2**32 - 1)
neighbour_counts = st.integers(0, 7)
byzantine_counts = st.integers(1, 3)


# ----------------------------------------------------------------------------- registry


def test_registry_holds_exactly_the_issue_attacks() -> None:
    assert set(ATTACKS) == {
        "sign-flip",
        "label-flip",
        "gaussian",
        "alie",
        "ipm",
        "dissensus",
        "isolation",
        "sample-duplication",
        "spectral",
        "omission",
    }
    assert NO_ATTACK not in ATTACKS
    for name, cls in ATTACKS.items():
        assert cls.name == name
        assert cls.summary
        for f in cls.parameters():
            assert f.metadata.get("doc"), f"{name}.{f.name} has no doc"
        assert name in attack_help(name)
    assert attacks_help().count("\n") >= len(ATTACKS) - 1


def test_make_attack_parses_strings_and_names_what_is_wrong() -> None:
    assert make_attack("ALIE", z="1.5").z == 1.5  # type: ignore[attr-defined]
    assert make_attack("alie", z="none").z is None  # type: ignore[attr-defined]
    assert make_attack("sign_flip", c=2).c == 2.0  # type: ignore[attr-defined]
    assert make_attack("sample-duplication", pick="nearest").pick == "nearest"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="unknown attack 'nope'; valid attacks: sign-flip"):
        make_attack("nope")
    with pytest.raises(ConfigError, match="has no parameter sigma; valid parameters: c"):
        make_attack("sign-flip", sigma=1)
    with pytest.raises(ConfigError, match="expects a number, got 'x'"):
        make_attack("gaussian", sigma="x")
    with pytest.raises(ConfigError, match="sigma must be >= 0"):
        make_attack("gaussian", sigma=-1)
    with pytest.raises(ConfigError, match="pick must be one of farthest, nearest, random"):
        make_attack("sample-duplication", pick="best")
    assert make_attack("dissensus").describe() == "dissensus(epsilon=1.5, evals=16)"


def test_views_with_inconsistent_shapes_are_refused() -> None:
    own = np.zeros(4, np.float32)
    with pytest.raises(AttackInputError, match=r"neighbours must have shape \(k, 4\)"):
        AttackView(round=0, own=own, neighbours=np.zeros((2, 3), np.float32), weights=np.ones(2))
    with pytest.raises(AttackInputError, match="weights must have shape"):
        AttackView(round=0, own=own, neighbours=np.zeros((2, 4), np.float32), weights=np.ones(3))
    with pytest.raises(AttackInputError, match="byzantine_weight must be > 0"):
        AttackView(
            round=0,
            own=own,
            neighbours=np.zeros((0, 4), np.float32),
            weights=np.ones(0),
            byzantine_weight=0.0,
        )


# ------------------------------------------------------------------ statistical attacks


@given(seed=seeds, k=neighbour_counts, c=st.floats(0.1, 10))
def test_sign_flip_sends_minus_c_times_the_honest_mean(seed: int, k: int, c: float) -> None:
    view = random_view(seed, k=k)
    sent = make_attack("sign-flip", c=c).craft(view, RNG(0))
    assert sent.dtype == np.float32
    np.testing.assert_allclose(sent, -c * honest_stack(view).mean(axis=0), rtol=1e-5, atol=1e-5)


@given(seed=seeds, k=neighbour_counts)
def test_ipm_sends_minus_epsilon_times_the_honest_mean(seed: int, k: int) -> None:
    view = random_view(seed, k=k)
    sent = make_attack("ipm").craft(view, RNG(0))
    np.testing.assert_allclose(sent, -0.1 * honest_stack(view).mean(axis=0), rtol=1e-5, atol=1e-6)


def test_gaussian_is_the_honest_mean_plus_noise_of_the_stated_scale() -> None:
    view = random_view(1, n=20_000)
    mean = honest_stack(view).mean(axis=0)
    first = make_attack("gaussian", sigma=30).craft(view, RNG(5))
    noise = first - mean
    assert abs(noise.mean()) < 0.5  # 30 / sqrt(20000) = 0.21 standard error
    assert noise.std() == pytest.approx(30, rel=0.02)
    again = make_attack("gaussian", sigma=30).craft(view, RNG(5))
    np.testing.assert_array_equal(first, again)  # seeded: repeatable
    quiet = make_attack("gaussian", sigma=0).craft(view, RNG(5))
    np.testing.assert_allclose(quiet, mean, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("population", "byzantine", "expected_cdf"),
    [(20, 4, 13 / 20), (12, 2, 7 / 12), (50, 12, 36 / 50), (6, 1, 3 / 6)],
)
def test_alie_z_follows_baruch_et_al(population: int, byzantine: int, expected_cdf: float) -> None:
    # s = floor(n/2 + 1) - f supporters; z = Phi^-1((n - s) / n)
    assert alie_z(population, byzantine) == pytest.approx(NormalDist().inv_cdf(expected_cdf))
    assert alie_z(20, 4) == pytest.approx(0.3853, abs=1e-4)


@pytest.mark.parametrize(
    ("degree", "byzantine", "expected_cdf"),
    [(7, 2, 5 / 7), (8, 2, 6 / 8), (6, 2, 5 / 6), (5, 1, 3 / 5), (4, 3, 3 / 4)],
)
def test_local_alie_z_is_the_ios_reference_per_node_form(
    degree: int, byzantine: int, expected_cdf: float
) -> None:
    # s = floor((d + 1) / 2) - b supporters (at least 1); z = Phi^-1((d - s) / d)
    assert alie_z_local(degree, byzantine) == pytest.approx(NormalDist().inv_cdf(expected_cdf))


def test_local_alie_takes_z_from_the_targets_own_neighbourhood() -> None:
    view = random_view(3, k=5, b=2)  # degree 7 with 2 attackers
    honest = honest_stack(view)
    sent = make_attack("alie").craft(view, RNG(0))  # per node: the default
    z = alie_z_local(7, 2)
    expected = honest.mean(axis=0) - z * honest.std(axis=0, ddof=1)
    np.testing.assert_allclose(sent, expected, rtol=1e-5, atol=1e-5)
    assert z > 2 * alie_z(12, 2)  # the IOS setting: 2-3 times the global z
    with pytest.raises(ConfigError, match="scope must be"):
        make_attack("alie", scope="nearby")


@given(seed=seeds, k=st.integers(1, 7), z=st.one_of(st.none(), st.floats(-3, 10)))
def test_alie_sends_mean_minus_z_sigma_per_coordinate(seed: int, k: int, z: float | None) -> None:
    view = random_view(seed, k=k, population=20, byzantine_total=4)
    sent = make_attack("alie", z=z, scope="global").craft(view, RNG(0))
    honest = honest_stack(view)
    used = alie_z(20, 4) if z is None else z
    expected = honest.mean(axis=0) - used * honest.std(axis=0, ddof=1)
    np.testing.assert_allclose(sent, expected, rtol=1e-5, atol=1e-5)
    if used >= 0:  # on the low side of the honest mean, coordinate by coordinate
        assert np.all(sent <= honest.mean(axis=0) + 1e-5)


# ------------------------------------------------------------------ targeted attacks


@settings(max_examples=60)
@given(seed=seeds, k=neighbour_counts, b=byzantine_counts)
def test_dissensus_with_epsilon_one_cancels_the_targets_gossip_step(
    seed: int, k: int, b: int
) -> None:
    view = random_view(seed, k=k, b=b)
    sent = make_attack("dissensus", epsilon=1).craft(view, RNG(0))
    merged = merge_with_attackers(view, sent)
    assert view.target is not None
    np.testing.assert_allclose(merged, view.target, rtol=1e-4, atol=1e-4)


@settings(max_examples=60)
@given(seed=seeds, k=st.integers(1, 7), b=byzantine_counts, eps=st.floats(0, 3))
def test_dissensus_takes_back_epsilon_times_the_honest_step(
    seed: int, k: int, b: int, eps: float
) -> None:
    view = random_view(seed, k=k, b=b)
    assert view.target is not None
    x = view.target.astype(np.float64)
    honest_step = view.weights @ (view.neighbours.astype(np.float64) - x)
    sent = make_attack("dissensus", epsilon=eps).craft(view, RNG(0))
    merged = merge_with_attackers(view, sent).astype(np.float64)
    scale = 1 + np.abs(honest_step).max() * max(eps, 1)
    np.testing.assert_allclose(merged - x, (1 - eps) * honest_step, atol=2e-4 * scale)


@settings(max_examples=60)
@given(seed=seeds, k=neighbour_counts, b=byzantine_counts)
def test_isolation_makes_the_neighbourhood_average_the_targets_own_model(
    seed: int, k: int, b: int
) -> None:
    view = random_view(seed, k=k, b=b)
    assert view.target is not None
    sent = make_attack("isolation").craft(view, RNG(0))
    everything_sent = np.vstack([view.neighbours, np.repeat(sent[None, :], b, axis=0)])
    np.testing.assert_allclose(everything_sent.mean(axis=0), view.target, rtol=1e-4, atol=1e-4)
    # and under equal weights plain gossip leaves the target where it was
    equal = random_view(seed, k=k, b=b, equal=True)
    merged = merge_with_attackers(equal, make_attack("isolation").craft(equal, RNG(0)))
    assert equal.target is not None
    np.testing.assert_allclose(merged, equal.target, rtol=1e-4, atol=1e-4)


def test_isolation_and_dissensus_differ_only_through_the_weights() -> None:
    equal = random_view(3, k=4, b=2, equal=True)
    iso = make_attack("isolation").craft(equal, RNG(0))
    dis = make_attack("dissensus", epsilon=1).craft(equal, RNG(0))
    np.testing.assert_allclose(iso, dis, rtol=1e-5, atol=1e-5)
    unequal = random_view(3, k=4, b=2)
    assert not np.allclose(
        make_attack("isolation").craft(unequal, RNG(0)),
        make_attack("dissensus", epsilon=1).craft(unequal, RNG(0)),
        atol=1e-3,
    )


@given(seed=seeds, k=st.integers(1, 7), pick=st.sampled_from(["farthest", "nearest", "random"]))
def test_sample_duplication_copies_one_honest_neighbour_exactly(
    seed: int, k: int, pick: str
) -> None:
    view = random_view(seed, k=k)
    assert view.target is not None
    sent = make_attack("sample-duplication", pick=pick).craft(view, RNG(seed))
    matches = [j for j in range(k) if np.array_equal(sent, view.neighbours[j])]
    assert matches
    dist = ((view.neighbours - view.target) ** 2).sum(axis=1)
    if pick == "farthest":
        assert dist[matches[0]] == dist.max()
    elif pick == "nearest":
        assert dist[matches[0]] == dist.min()


def test_attacks_without_honest_neighbours_fall_back_to_the_target() -> None:
    view = random_view(4, k=0)
    assert view.target is not None
    for name in ("dissensus", "isolation", "sample-duplication"):
        np.testing.assert_allclose(make_attack(name).craft(view, RNG(0)), view.target, atol=1e-6)


# ------------------------------------------------------------------ data poisoning


def test_label_flip_mirrors_labels_and_sends_its_own_model() -> None:
    y = np.arange(10, dtype=np.int64)
    np.testing.assert_array_equal(flip_labels(y, 10), 9 - y)
    np.testing.assert_array_equal(flip_labels(flip_labels(y, 10), 10), y)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        flip_labels(np.array([10]), 10)
    attack = make_attack("label-flip")
    assert attack.trains
    assert not make_attack("sign-flip").trains
    view = random_view(2)
    np.testing.assert_array_equal(attack.craft(view, RNG(0)), view.own)


def test_a_label_flipping_peer_trains_on_mirrored_labels_and_is_tested_on_true_ones() -> None:
    data = synthetic(seed=0)
    flipped = with_flipped_labels(data)
    np.testing.assert_array_equal(flipped.y_train, data.n_classes - 1 - data.y_train)
    assert flipped.x_train is data.x_train
    assert flipped.y_test is data.y_test
    assert flipped.x_test is data.x_test


def test_crafted_messages_are_new_float32_arrays() -> None:
    view = random_view(9)
    for name in ATTACKS:
        sent = make_attack(name).craft(view, RNG(1))
        assert sent.dtype == np.float32
        assert sent.shape == (view.size,)
        assert sent.flags.c_contiguous
        assert sent.flags.writeable
        assert not np.shares_memory(sent, view.own)
        assert not np.shares_memory(sent, view.neighbours)


# ----------------------------------------------------------------------------- searched scale


def test_line_search_finds_the_peak_of_a_concave_function_within_its_budget() -> None:
    calls: list[float] = []

    def bump(x: float) -> float:
        calls.append(x)
        return -((x - 5.3) ** 2)

    best = line_maximize(bump, evals=16)
    assert len(calls) == 16
    assert min(calls) >= 0.0
    assert abs(best - 5.3) < 0.5
    assert line_maximize(lambda x: -x, evals=8) == 0.0  # decreasing: stay at the start


def test_line_search_expands_without_bound_and_skips_non_finite_values() -> None:
    assert line_maximize(lambda x: x, evals=6) == 31.0  # 1, 2, 4, 8, 16 added: doubling
    blown = line_maximize(lambda x: math.inf if x > 3 else x, evals=10)
    assert 0 < blown <= 3
    with pytest.raises(ValueError, match="evals"):
        line_maximize(lambda x: x, evals=0)


@settings(max_examples=30)
@given(seed=seeds, k=st.integers(2, 7), b=st.integers(1, 2))
def test_searched_dissensus_moves_the_target_at_least_as_far_as_the_fixed_form(
    seed: int, k: int, b: int
) -> None:
    view = random_view(seed, k=k, b=b)
    assert view.target is not None
    x = view.target.astype(np.float64)
    honest = x + view.weights @ (view.neighbours.astype(np.float64) - x)

    def deviation(message: np.ndarray) -> float:
        d = merge_with_attackers(view, message, "cs-plus").astype(np.float64) - honest
        return float(d @ d)

    def target_merge(message: np.ndarray) -> np.ndarray:
        return merge_with_attackers(view, message, "cs-plus")

    known = dataclasses.replace(view, merge=target_merge)
    fixed = make_attack("dissensus").craft(known, RNG(0))
    searched = make_attack("dissensus", epsilon="none").craft(known, RNG(0))
    assert deviation(searched) >= deviation(fixed) * (1 - 1e-5) - 1e-9


def test_searched_scale_without_the_rule_assumes_plain_averaging() -> None:
    view = random_view(1, k=4, b=1)
    # under averaging the deviation grows with the scale: the search doubles to its end
    sent = make_attack("spectral", evals=5).craft(view, RNG(0))
    assert view.target is not None
    ones_step = (view.neighbours.astype(np.float64) - view.target).sum(axis=0)
    np.testing.assert_allclose(sent, view.target - 15.0 * ones_step, rtol=1e-4, atol=1e-3)


@given(seed=seeds, scale=st.floats(0, 10))
def test_spectral_pushes_the_target_along_its_fiedler_direction(seed: int, scale: float) -> None:
    view = random_view(seed)
    direction = RNG(seed + 1).normal(size=view.size)
    sent = make_attack("spectral", scale=scale).craft(
        dataclasses.replace(view, spectral=direction), RNG(0)
    )
    assert view.target is not None
    np.testing.assert_allclose(
        sent, view.target + scale * direction, rtol=1e-5, atol=1e-5 * (1 + scale)
    )
    with pytest.raises(AttackInputError, match="spectral"):
        dataclasses.replace(view, spectral=direction[:-1])
