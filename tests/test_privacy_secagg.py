"""Secure neighbourhood averaging, the arithmetic: masks cancel exactly in the weighted sum,
with and without neighbours dropping out, and one masked vector says nothing of its model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.privacy.secagg import (
    FRACTION_BITS,
    MaskKey,
    SecureAggregationError,
    correction,
    encode,
    masked_contribution,
    pair_mask,
    unmask,
)

RECEIVER = "peer-i"


def neighbourhood(count: int, seed: int) -> tuple[list[str], dict[str, dict[str, bytes]]]:
    """``count`` neighbours of the receiver, each with its secrets shared with the others."""
    names = [f"peer-{seed}-{k:02d}" for k in range(count)]
    keys = {n: MaskKey.from_seed(f"{seed}/{n}".encode()) for n in names}
    secrets = {
        n: {o: keys[n].pair_secret(n, o, keys[o].public) for o in names if o != n} for n in names
    }
    return names, secrets


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    count=st.integers(4, 8),
    size=st.integers(1, 300),
    dropped=st.integers(0, 2),
)
def test_masked_weighted_sum_equals_the_plain_one_with_0_1_or_2_dropouts(
    seed: int, count: int, size: int, dropped: int
) -> None:
    names, secrets = neighbourhood(count, seed)
    rng = np.random.default_rng(seed)
    models = {n: rng.normal(0, 3, size).astype(np.float32) for n in names}
    weights = dict(zip(names, rng.uniform(0.05, 0.3, count), strict=True))
    round_ = int(rng.integers(0, 1000))
    sent = {
        n: masked_contribution(
            models[n], weights[n], me=n, receiver=RECEIVER, round=round_, group=names,
            secrets=secrets[n],
        )
        for n in names
    }  # fmt: skip
    missing = names[:dropped]
    present = [n for n in names if n not in missing]
    fixes = [
        correction(
            me=n, receiver=RECEIVER, round=round_, group=names, missing=missing,
            secrets=secrets[n], size=size,
        )
        for n in present
    ] if missing else []  # fmt: skip
    got = unmask([sent[n] for n in present], fixes)
    plain = sum(weights[n] * models[n].astype(np.float64) for n in present)
    # exact in fixed point; within a rounding step per term of the float sum
    np.testing.assert_allclose(got, plain, atol=count * 2.0**-FRACTION_BITS, rtol=0)
    np.testing.assert_allclose(
        got.astype(np.float32), plain.astype(np.float32), rtol=1e-6, atol=1e-6
    )


def test_one_masked_vector_is_uniform_whatever_the_model() -> None:
    names, secrets = neighbourhood(3, 1)
    size = 20_000
    model = np.linspace(-5, 5, size, dtype=np.float32)  # strongly structured
    sent = masked_contribution(
        model, 0.25, me=names[0], receiver=RECEIVER, round=7, group=names, secrets=secrets[names[0]]
    )
    top = (sent >> np.uint64(60)).astype(np.int64)  # 16 buckets of the top 4 bits
    counts = np.bincount(top, minlength=16)
    expected = size / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50.0  # 15 degrees of freedom: p ≈ 1e-5 at 50
    as_float = sent.astype(np.float64)
    r = np.corrcoef(as_float, model)[0, 1]
    assert abs(r) < 5 / math.sqrt(size)
    # the plain encoding it hides is far from uniform: nearly all in two buckets
    plain_top = (encode(model, 0.25) >> np.uint64(60)).astype(np.int64)
    assert np.bincount(plain_top, minlength=16).max() > size / 3
    # the same model masked for another round or receiver shares nothing with this one
    again = masked_contribution(
        model, 0.25, me=names[0], receiver=RECEIVER, round=8, group=names, secrets=secrets[names[0]]
    )
    assert np.mean(again == sent) < 1e-3


def test_pair_secrets_agree_between_the_two_and_differ_between_pairs() -> None:
    a, b, c = (MaskKey.from_seed(s) for s in (b"a", b"b", b"c"))
    ab = a.pair_secret("a", "b", b.public)
    assert ab == b.pair_secret("b", "a", a.public)
    assert ab != a.pair_secret("a", "c", c.public)
    assert len(ab) == 32
    assert not np.array_equal(pair_mask(ab, "x", 1, 8), pair_mask(ab, "y", 1, 8))
    with pytest.raises(SecureAggregationError, match="itself"):
        a.pair_secret("a", "a", a.public)


def test_what_would_reveal_a_model_is_refused() -> None:
    names, secrets = neighbourhood(3, 2)
    with pytest.raises(SecureAggregationError, match="at least 2 must be present"):
        correction(
            me=names[0], receiver=RECEIVER, round=1, group=names, missing=names[1:],
            secrets=secrets[names[0]], size=4,
        )  # fmt: skip
    with pytest.raises(SecureAggregationError, match="in the clear"):
        masked_contribution(
            np.ones(4), 0.5, me=names[0], receiver=RECEIVER, round=1, group=[names[0]],
            secrets={},
        )  # fmt: skip
    with pytest.raises(SecureAggregationError, match="fixed point"):
        encode(np.array([np.nan]), 1.0)
    with pytest.raises(SecureAggregationError, match="fixed point"):
        encode(np.array([1e13]), 1.0)
    with pytest.raises(SecureAggregationError, match="no shared secret"):
        masked_contribution(
            np.ones(4), 0.5, me=names[0], receiver=RECEIVER, round=1, group=names, secrets={}
        )
