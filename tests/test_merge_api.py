"""The merge-rule API: registry, parameter parsing, check(), context, input validation."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.errors import ConfigError, GossipflError
from gossipfl.merge import (
    RULES,
    Aggregator,
    MergeContext,
    MergeInputError,
    MergeRule,
    NonFiniteInputError,
    ParamInfo,
    make_rule,
    parse_assignments,
    rule_help,
    rule_parameters,
    rules_help,
)
from gossipfl.merge import _kernels as kernels

ALL_RULES = sorted(RULES)
AGGREGATORS = {
    "mean",
    "median",
    "trimmed-mean",
    "krum",
    "multi-krum",
    "geometric-median",
    "centered-clipping",
}


def test_registry_holds_exactly_the_issue_names() -> None:
    assert set(RULES) == {
        "mean",
        "median",
        "trimmed-mean",
        "krum",
        "multi-krum",
        "geometric-median",
        "centered-clipping",
        "clipped-gossip",
        "cs-plus",
        "nna",
        "ios",
        "balance",
    }
    for name, cls in RULES.items():
        assert cls.name == name
        assert issubclass(cls, MergeRule)
        assert cls.summary


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        RULES["evil"] = RULES["mean"]  # type: ignore[index]


@pytest.mark.parametrize("name", ALL_RULES)
def test_aggregate_is_offered_exactly_by_plain_aggregation_rules(name: str) -> None:
    assert isinstance(make_rule(name), Aggregator) == (name in AGGREGATORS)


# ------------------------------------------------------------------ make_rule


def test_make_rule_parses_strings_by_declared_type() -> None:
    tm = make_rule("trimmed-mean", b="2")
    assert tm.b == 2  # type: ignore[attr-defined]
    gm = make_rule("geometric-median", T="5", nu="1e-4", b="0")
    assert (gm.T, gm.nu, gm.b) == (5, 1e-4, 0)  # type: ignore[attr-defined]
    assert make_rule("clipped-gossip", tau="none").tau is None  # type: ignore[attr-defined]
    assert make_rule("clipped-gossip", tau=" 0.5 ").tau == 0.5  # type: ignore[attr-defined]
    assert make_rule("multi-krum", m="auto").m is None  # type: ignore[attr-defined]
    assert make_rule("multi-krum", m="4", f="1").m == 4  # type: ignore[attr-defined]
    assert make_rule("balance", gamma="0.5", kappa="2", alpha="0.25").alpha == 0.25  # type: ignore[attr-defined]
    # Non-string values pass through; spelling variants of the name are accepted.
    assert make_rule("Trimmed_Mean", b=3).b == 3  # type: ignore[attr-defined]


def test_defaults_are_documented_and_sensible() -> None:
    assert make_rule("trimmed-mean").b == 1  # type: ignore[attr-defined]
    assert make_rule("krum").f == 1  # type: ignore[attr-defined]
    assert make_rule("multi-krum").m is None  # type: ignore[attr-defined]
    for name in ALL_RULES:
        for info in rule_parameters(name):
            assert isinstance(info, ParamInfo)
            assert info.doc, f"{name}.{info.name} has no documentation"


def test_unknown_rule_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as exc:
        make_rule("bulyan")
    message = str(exc.value)
    assert "unknown merge rule 'bulyan'" in message
    assert "valid rules:" in message
    for name in ALL_RULES:
        assert name in message


def test_unknown_parameter_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"'krum' has no parameter b; valid parameters: f"):
        make_rule("krum", b="1")
    with pytest.raises(ConfigError, match=r"valid parameters: none"):
        make_rule("mean", b="1")


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("trimmed-mean", {"b": "two"}, "trimmed-mean parameter b expects an integer, got 'two'"),
        ("trimmed-mean", {"b": "1.5"}, "expects an integer"),
        ("trimmed-mean", {"b": "-1"}, "b must be >= 0, got -1"),
        ("trimmed-mean", {"b": True}, "must be an integer"),
        ("geometric-median", {"T": "0"}, "T must be >= 1"),
        ("geometric-median", {"nu": "0"}, "nu must be > 0.0"),
        ("geometric-median", {"nu": "nan"}, "nu must be finite"),
        ("cs-plus", {"eta": "0"}, "eta must be > 0.0"),
        ("cs-plus", {"eta": "1.5"}, "eta must be <= 1.0"),
        ("balance", {"alpha": "1.01"}, "alpha must be <= 1.0"),
        ("balance", {"gamma": "-1"}, "gamma must be >= 0.0"),
        ("clipped-gossip", {"tau": "abc"}, "tau expects a number or 'none'"),
        ("centered-clipping", {"L": "0"}, "L must be >= 1"),
        ("multi-krum", {"m": "0"}, "m must be >= 1"),
    ],
)
def test_bad_parameter_values_are_config_errors(
    name: str, params: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        make_rule(name, **params)
    assert fragment in str(exc.value)


def test_config_error_is_a_value_error_and_a_gossipfl_error() -> None:
    with pytest.raises(ValueError):
        make_rule("nope")
    with pytest.raises(GossipflError):
        make_rule("nope")


def test_parse_assignments() -> None:
    assert parse_assignments(["b=2", " T = 10 ", "tau="]) == {"b": "2", "T": "10", "tau": ""}
    with pytest.raises(ConfigError, match="must look like name=value"):
        parse_assignments(["b"])
    with pytest.raises(ConfigError, match="must look like name=value"):
        parse_assignments(["=3"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_assignments(["b=1", "b=2"])


def test_help_text_names_every_rule_and_parameter_with_defaults() -> None:
    text = rules_help()
    for name in ALL_RULES:
        assert f"{name}: " in text
        for info in rule_parameters(name):
            assert f"    {info.name} (" in rule_help(name)
    assert "b (int, default 1)" in rule_help("trimmed-mean")
    assert "tau (float | None, default unset)" in rule_help("clipped-gossip")


# ------------------------------------------------------------------ check()


def expected_min_models(name: str, p: int, m: int | None = None) -> int:
    """The documented requirement, restated independently of the implementation."""
    return {
        "mean": 1,
        "balance": 1,
        "median": 2 * p + 1,
        "trimmed-mean": 2 * p + 1,
        "geometric-median": 2 * p + 1,
        "centered-clipping": 2 * p + 1,
        "nna": 2 * p + 1,
        "krum": 2 * p + 3,
        "multi-krum": max(2 * p + 3, (m or 0) + p),
        "clipped-gossip": p + 2,
        "cs-plus": 2 * p + 2,
        "ios": p + 2,
    }[name]


def build(name: str, p: int, m: int | None = None) -> MergeRule:
    fields = {f.name for f in dataclasses.fields(RULES[name]) if f.init}
    params: dict[str, object] = {}
    if "b" in fields:
        params["b"] = p
    if "f" in fields:
        params["f"] = p
    if m is not None:
        params["m"] = m
    return make_rule(name, **params)


@pytest.mark.parametrize("name", ALL_RULES)
@pytest.mark.parametrize("p", [0, 1, 2, 3])
def test_check_raises_exactly_when_the_condition_fails(name: str, p: int) -> None:
    rule = build(name, p)
    need = expected_min_models(name, p)
    assert rule.min_degree == need - 1
    for degree in range(12):
        if degree + 1 >= need:
            rule.check(degree)
        else:
            with pytest.raises(ConfigError) as exc:
                rule.check(degree)
            assert f"but node has degree {degree}" in str(exc.value)
            assert f"= {need} models (self + neighbours)" in str(exc.value)


@pytest.mark.parametrize("m", [1, 3, 6, 9])
def test_multi_krum_check_includes_the_selection_size(m: int) -> None:
    rule = build("multi-krum", 1, m=m)
    need = expected_min_models("multi-krum", 1, m)
    for degree in range(12):
        if degree + 1 >= need:
            rule.check(degree)
        else:
            with pytest.raises(ConfigError):
                rule.check(degree)


def test_check_message_names_the_condition() -> None:
    with pytest.raises(ConfigError) as exc:
        make_rule("trimmed-mean", b=2).check(2)
    assert str(exc.value) == (
        "trimmed-mean with b=2 needs at least 2b+1 = 5 models (self + neighbours) "
        "but node has degree 2"
    )
    with pytest.raises(ConfigError) as exc:
        make_rule("krum", f=1).check(3)
    assert str(exc.value) == (
        "krum with f=1 needs at least 2f+3 = 5 models (self + neighbours) but node has degree 3"
    )


def test_fixed_tau_clipped_gossip_needs_no_local_majority() -> None:
    make_rule("clipped-gossip", tau=1.0, b=3).check(0)


@pytest.mark.parametrize("degree", [-1, True, 2.0, "3"])
def test_check_rejects_non_degrees(degree: object) -> None:
    with pytest.raises(ConfigError, match="degree must be a non-negative integer"):
        make_rule("mean").check(degree)  # type: ignore[arg-type]


# ------------------------------------------------------------------ context


def test_merge_context_is_frozen_and_validated() -> None:
    ctx = MergeContext(round=5, total_rounds=20)
    assert ctx.progress == 0.25
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.round = 6  # type: ignore[misc]
    with pytest.raises(ConfigError, match="round must be >= 0"):
        MergeContext(round=-1, total_rounds=3)
    with pytest.raises(ConfigError, match="total_rounds must be >= 1"):
        MergeContext(round=0, total_rounds=0)
    with pytest.raises(ConfigError, match="must be an int"):
        MergeContext(round=1.5, total_rounds=3)  # type: ignore[arg-type]


# ------------------------------------------------------------------ input validation


def inputs(d: int = 4, n: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    own = rng.standard_normal(n).astype(np.float32)
    rows = rng.standard_normal((d, n)).astype(np.float32)
    return own, rows, np.full(d, 1.0 / (d + 1))


@pytest.mark.parametrize(
    ("own", "rows", "weights", "fragment"),
    [
        (np.zeros((2, 3)), np.zeros((1, 3)), [0.5], "own must be a non-empty 1-D vector"),
        (np.zeros(0), np.zeros((1, 0)), [0.5], "own must be a non-empty 1-D vector"),
        (np.zeros(3), np.zeros((1, 4)), [0.5], "neighbours must have shape (d, 3)"),
        (np.zeros(3), np.zeros((2, 3)), [0.5], "one weight per neighbour (length 2)"),
        (np.zeros(3), np.zeros((2, 3)), [0.5, -0.1], "weights must be non-negative"),
        (np.zeros(3), np.zeros((2, 3)), [0.5, np.nan], "weights must be finite"),
        (np.zeros(3), np.zeros((2, 3)), [0.6, 0.6], "sum to 1.2 > 1"),
        (np.array(["a", "b"]), np.zeros((1, 2)), [0.5], "own must be a numeric vector"),
    ],
)
@pytest.mark.parametrize("name", ["mean", "krum", "balance"])
def test_malformed_inputs_raise_merge_input_error(
    name: str, own: object, rows: object, weights: object, fragment: str
) -> None:
    with pytest.raises(MergeInputError) as exc:
        make_rule(name, **({"f": 0} if name == "krum" else {})).merge(own, rows, weights)  # type: ignore[arg-type]
    assert fragment in str(exc.value)
    assert isinstance(exc.value, GossipflError)


def test_weights_summing_to_one_within_rounding_are_accepted() -> None:
    own, rows, _ = inputs(d=3)
    make_rule("mean").merge(own, rows, [1 / 3, 1 / 3, 1 / 3 + 1e-9])


@pytest.mark.parametrize("name", ALL_RULES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    ("where", "coord"),
    [("own", 0), ("neighbour0", 5), ("neighbour_last", 70_000), ("own", 65_536)],
)
def test_non_finite_inputs_are_rejected_with_their_positions(
    name: str, bad: float, where: str, coord: int
) -> None:
    # n crosses every chunk boundary (Gram, network, finiteness check).
    own, rows, w = inputs(d=6, n=70_001)
    if where == "own":
        own[coord] = bad
    elif where == "neighbour0":
        rows[0, coord] = bad
    else:
        rows[-1, coord] = bad
    with pytest.raises(NonFiniteInputError) as exc:
        make_rule(name).merge(own, rows, w)
    err = exc.value
    assert err.own == (where == "own")
    expected = {"own": (), "neighbour0": (0,), "neighbour_last": (5,)}[where]
    assert err.neighbours == expected
    assert "non-finite values" in str(err)
    assert isinstance(err, MergeInputError)


@pytest.mark.parametrize("name", ALL_RULES)
def test_non_finite_is_rejected_even_when_the_merge_is_skipped(name: str) -> None:
    own, rows, w = inputs(d=1)
    rows[0, 3] = np.nan
    rule = make_rule(name)
    with pytest.raises(NonFiniteInputError):
        rule.merge(own, rows, w)
    own[2] = np.inf
    with pytest.raises(NonFiniteInputError) as exc:
        rule.merge(own, rows[:0], [])
    assert exc.value.own


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_aggregate_rejects_non_finite_and_malformed_stacks(name: str) -> None:
    rule = make_rule(name, **({"f": 0} if "krum" in name else {}))
    stack = np.ones((5, 4), dtype=np.float32)
    stack[2, 1] = np.nan
    with pytest.raises(NonFiniteInputError) as exc:
        rule.aggregate(stack)  # type: ignore[attr-defined]
    assert exc.value.neighbours == (1,)  # positions count from the second row
    with pytest.raises(MergeInputError):
        rule.aggregate(np.ones(4))  # type: ignore[attr-defined]


@st.composite
def poisoned(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, tuple[int, ...]]:
    """Inputs with NaN/±inf at drawn places: own, rows, weights, own bad?, bad rows.

    Weights may be zero (a zero coefficient must not hide a bad row) and may sum to one
    (an own weight of 0 must not hide a bad own model); n crosses chunk boundaries.
    """
    d = draw(st.integers(1, 10))
    n = draw(st.sampled_from([1, 7, 1000, 70_001]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e30]))
    own = (scale * rng.standard_normal(n)).astype(np.float32)
    rows = (scale * rng.standard_normal((d, n))).astype(np.float32)
    spots = draw(
        st.lists(
            st.tuples(st.integers(-1, d - 1), st.integers(0, n - 1)),
            min_size=1,
            max_size=4,
        )
    )
    for row, col in spots:
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        if row < 0:
            own[col] = value
        else:
            rows[row, col] = value
    raw = rng.uniform(0.0, 1.0, d)
    raw[rng.random(d) < 0.3] = 0.0
    total = draw(st.sampled_from([0.5, 1.0]))
    weights = raw / raw.sum() * total if raw.sum() > 0 else raw
    bad_rows = tuple(sorted({row for row, _ in spots if row >= 0}))
    return own, rows, weights, any(row < 0 for row, _ in spots), bad_rows


@pytest.mark.parametrize("name", ALL_RULES)
@settings(max_examples=30, deadline=None)
@given(case=poisoned(), tolerance=st.integers(0, 2))
def test_any_non_finite_value_anywhere_is_rejected_naming_exactly_its_models(
    name: str,
    case: tuple[np.ndarray, np.ndarray, np.ndarray, bool, tuple[int, ...]],
    tolerance: int,
) -> None:
    # Rules fold the check into a pass they make anyway (the mean's result, the sorting
    # network's chunks, the Gram matrix): whatever the weights, a NaN or inf anywhere
    # must still raise the same typed error as a separate check would.
    own, rows, w, own_bad, bad_rows = case
    params = {f.name for f in RULES[name].parameters()}
    rule = make_rule(name, **{p: tolerance for p in ("b", "f") if p in params})
    with pytest.raises(NonFiniteInputError) as exc:
        rule.merge(own, rows, w)
    assert exc.value.own == own_bad
    assert exc.value.neighbours == bad_rows


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
@settings(max_examples=15, deadline=None)
@given(case=poisoned())
def test_aggregate_rejects_any_non_finite_value_anywhere(
    name: str, case: tuple[np.ndarray, np.ndarray, np.ndarray, bool, tuple[int, ...]]
) -> None:
    own, rows, _, own_bad, bad_rows = case
    rule = make_rule(name, **({"f": 0} if "krum" in name else {}))
    stack = np.vstack([own[None], rows])
    if stack.shape[0] < rule.requirement().min_models:
        return
    with pytest.raises(NonFiniteInputError) as exc:
        rule.aggregate(stack)  # type: ignore[attr-defined]
    assert exc.value.own == own_bad
    assert exc.value.neighbours == bad_rows


def test_mean_rejects_non_finite_models_whose_weight_is_zero() -> None:
    own, rows, _ = inputs(d=3, n=100)
    rows[1, 50] = np.inf
    with pytest.raises(NonFiniteInputError) as exc:
        make_rule("mean").merge(own, rows, [0.5, 0.0, 0.5])
    assert exc.value.neighbours == (1,)
    own[3] = np.nan
    rows[1, 50] = 0.0
    with pytest.raises(NonFiniteInputError) as exc:
        make_rule("mean").merge(own, rows, [0.5, 0.25, 0.25])  # own weight 0
    assert exc.value.own
    assert exc.value.neighbours == ()


def test_overflow_in_the_fast_finiteness_check_is_not_mistaken_for_non_finite() -> None:
    # Row sums of huge finite values overflow float32; the exact check must clear them.
    own = np.full(10, 3e38, dtype=np.float32)
    rows = np.full((3, 10), 3e38, dtype=np.float32)
    kernels.ensure_finite(own, rows, kernels.Workspace())
    out = make_rule("median").merge(own, rows, np.full(3, 0.25))
    assert np.array_equal(out, own)


# ------------------------------------------------------------------ inputs and outputs


@pytest.mark.parametrize("name", ALL_RULES)
def test_inputs_are_not_modified_and_output_is_a_new_float32_vector(name: str) -> None:
    own, rows, w = inputs(d=6)
    own_before, rows_before = own.copy(), rows.copy()
    out = make_rule(name).merge(own, rows, w, context=MergeContext(round=1, total_rounds=4))
    assert out.dtype == np.float32
    assert out.shape == own.shape
    assert not np.shares_memory(out, own)
    assert not np.shares_memory(out, rows)
    assert np.array_equal(own, own_before)
    assert np.array_equal(rows, rows_before)


@pytest.mark.parametrize("name", ALL_RULES)
def test_sequences_and_float64_inputs_are_accepted(name: str) -> None:
    own, rows, w = inputs(d=6)
    rule = make_rule(name)
    ref = rule.merge(own, rows, w)
    as_list = rule.merge(own.astype(np.float64), list(rows.astype(np.float64)), list(w))
    np.testing.assert_allclose(as_list, ref, rtol=1e-6, atol=1e-6)
    empty = rule.merge(own, [], [])
    assert np.array_equal(empty, own)


def test_too_few_arrivals_keep_the_own_model_and_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    own, rows, w = inputs(d=6)
    rule = make_rule("trimmed-mean", b=2)  # needs 4 neighbours
    with caplog.at_level(logging.DEBUG, logger="gossipfl.merge.base"):
        out = rule.merge(own, rows[:3], w[:3])
    assert np.array_equal(out, own)
    assert rule.skipped_merges == 1
    assert "fewer than the 4 needed" in caplog.text
    rule.merge(own, rows[:4], w[:4])
    assert rule.skipped_merges == 1


def test_cs_plus_short_of_neighbours_still_merges_and_bounds_every_pull() -> None:
    """Two neighbours where CS+ (b = 1) needs three: one honest, one Byzantine far away.
    Keeping the own model would isolate the peer; clipping at the nearest distance lets
    it move, by no more than the honest neighbour's distance per weight."""
    own = np.zeros(4, np.float32)
    honest = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    byzantine = np.array([0.0, -1000.0, 0.0, 0.0], np.float32)
    rule = make_rule("cs-plus", b=1)
    out = rule.merge(own, [honest, byzantine], [0.25, 0.25])
    assert rule.short_merges == 1
    assert rule.skipped_merges == 0
    assert not np.array_equal(out, own)
    assert np.linalg.norm(out - own) <= 0.25 * 1.0 + 0.25 * 1.0 + 1e-6
    assert abs(float(out[1])) <= 0.25 + 1e-6  # the Byzantine pull, clipped to distance 1
    rule.merge(own, [honest], [0.25])  # one neighbour: fewer than b + 1, keep own
    assert rule.skipped_merges == 1


@pytest.mark.parametrize(
    ("name", "params", "tolerance"),
    [("mean", {}, 0), ("cs-plus", {"b": 2}, 2), ("krum", {"f": 1}, 1), ("balance", {}, 0)],
)
def test_byzantine_tolerance_is_the_rules_b(
    name: str, params: dict[str, Any], tolerance: int
) -> None:
    assert make_rule(name, **params).byzantine_tolerance == tolerance


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_aggregate_with_too_few_rows_is_a_config_error(name: str) -> None:
    rule = make_rule(name, **({"b": 2} if "b" in {f.name for f in rule_parameters(name)} else {}))
    if rule.min_degree == 0:
        single = rule.aggregate(np.ones((1, 3)))  # type: ignore[attr-defined]
        assert np.array_equal(single, np.ones(3, dtype=np.float32))
        return
    with pytest.raises(ConfigError, match="needs at least"):
        rule.aggregate(np.ones((rule.min_degree, 3)))  # type: ignore[attr-defined]


def test_the_worked_example_in_the_docs_runs() -> None:
    """docs/rules.md teaches how to add a rule; its code must keep working."""
    import textwrap
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "rules.md").read_text()
    start = doc.index("   ```python\n   from dataclasses import dataclass")
    stop = doc.index("   ```\n", start + 10)
    source = textwrap.dedent(doc[start:stop]).split("\n", 1)[1]
    namespace: dict[str, object] = {}
    exec(compile(source, "docs/rules.md", "exec"), namespace)
    rule_cls: Any = namespace["CoordinateClip"]
    assert isinstance(rule_cls, type)
    assert issubclass(rule_cls, MergeRule)
    build_rule: Any = rule_cls  # the example's own keyword, unknown to MergeRule's type
    rule = build_rule(c=0.05)
    own = np.zeros(70_000, dtype=np.float32)
    rows = np.random.default_rng(0).standard_normal((4, 70_000)).astype(np.float32)
    out = rule.merge(own, rows, np.full(4, 0.2))
    assert np.abs(out).max() <= 0.05 * 0.8 * (1 + 1e-6)
    assert np.abs(out).max() > 0.039  # the clamp is reached, not just respected
    with pytest.raises(ConfigError, match=r"c must be > 0\.0"):
        build_rule(c=0)


@pytest.mark.parametrize("name", ALL_RULES)
def test_a_rule_remembers_its_weights_by_value_not_by_object(name: str) -> None:
    """A peer merges with the same weights round after round: the rule checks them once
    (MergeRule._weights, keyed by dtype and bytes) and combine() derives its float32
    coefficients once (Workspace.coef_memo, for the read-only array the rule keeps). A
    weights array changed in place between two merges must still count as changed, and
    the caller's array is left as it was."""
    rng = np.random.default_rng(7)
    own = rng.normal(size=40).astype(np.float32)
    rows = rng.normal(size=(6, 40)).astype(np.float32)
    rule = make_rule(name)
    fresh = make_rule(name)
    weights = np.full(6, 0.125)  # float64: as_weights would hand this very array back
    first = rule.merge(own, rows, weights)
    np.testing.assert_array_equal(rule.merge(own, rows, weights), first)
    assert weights.flags.writeable  # ours to change
    weights[:3] = 0.05  # in place: the same object, other values
    changed = rule.merge(own, rows, weights)
    np.testing.assert_array_equal(changed, fresh.merge(own, rows, weights.copy()))
    if name == "mean":
        assert not np.array_equal(changed, first)
    for dtype in (np.float32, np.float64):  # the same values, another dtype: its own bits
        w = np.asarray([0.1, 0.2, 0.05, 0.15, 0.1, 0.1], dtype=dtype)
        np.testing.assert_array_equal(
            rule.merge(own, rows, w), make_rule(name).merge(own, rows, w.copy())
        )
    with pytest.raises(MergeInputError, match="non-negative"):
        rule.merge(own, rows, np.full(6, -0.1))  # a bad array is checked, not remembered
    with pytest.raises(MergeInputError, match="non-negative"):
        rule.merge(own, rows, np.full(6, -0.1))


def test_combine_derives_its_coefficients_once_per_read_only_array() -> None:
    rng = np.random.default_rng(3)
    center = rng.normal(size=300).astype(np.float32)
    rows = rng.normal(size=(4, 300)).astype(np.float32)
    ws = kernels.Workspace()
    frozen = np.array([0.1, 0.2, 0.3, 0.1])
    frozen.flags.writeable = False
    first = kernels.combine(center, rows, frozen, ws, validate=True)
    assert ws.coef_memo is not None
    assert ws.coef_memo[0] is frozen
    np.testing.assert_array_equal(kernels.combine(center, rows, frozen, ws, validate=True), first)
    writable = np.array([0.1, 0.2, 0.3, 0.1])
    kernels.combine(center, rows, writable, ws)
    assert ws.coef_memo[0] is frozen  # a writable array is never remembered
    writable[0] = 0.0
    expect = kernels.combine(center, rows, writable, kernels.Workspace())
    np.testing.assert_array_equal(kernels.combine(center, rows, writable, ws), expect)
    view = np.array([0.1, 0.2, 0.3, 0.1, 0.0])[:4]
    view.flags.writeable = False
    kernels.combine(center, rows, view, ws)
    assert ws.coef_memo[0] is frozen  # nor a view (its base could change)
