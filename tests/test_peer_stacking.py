"""The merge's reusable stack buffer (gossipfl.peer.stacking)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from gossipfl.peer import stacking


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    stacking.release()
    yield
    stacking.release()


def models(d: int, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for _ in range(d)]


def test_large_stacks_reuse_one_buffer_and_hold_the_models() -> None:
    n = stacking.REUSE_MIN_BYTES // 4 // 2  # two models reach the threshold
    first = stacking.stack_for_merge(models(4, n, seed=1))
    np.testing.assert_array_equal(first, np.stack(models(4, n, seed=1)))
    second = stacking.stack_for_merge(models(3, n, seed=2))  # fewer rows: same buffer
    assert np.shares_memory(first, second)
    assert second.shape == (3, n)
    assert second.flags.c_contiguous
    np.testing.assert_array_equal(second, np.stack(models(3, n, seed=2)))
    assert stacking.shares_buffer(second[1])
    assert not stacking.shares_buffer(second[1].copy())
    other = stacking.stack_for_merge(models(2, n + 1))  # another size: a new buffer
    assert not np.shares_memory(other, second)


def test_small_stacks_are_fresh_and_keep_their_dtype() -> None:
    vectors = [v.astype(np.float64) for v in models(3, 100)]
    out = stacking.stack_for_merge(vectors)
    assert out.dtype == np.float64
    assert not stacking.shares_buffer(out)
    assert not np.shares_memory(out, stacking.stack_for_merge(vectors))


def test_each_thread_has_its_own_buffer() -> None:
    n = stacking.REUSE_MIN_BYTES // 4
    mine = stacking.stack_for_merge(models(1, n))
    theirs: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: theirs.append(stacking.stack_for_merge(models(1, n))))
    worker.start()
    worker.join(timeout=30)
    assert theirs
    assert not np.shares_memory(mine, theirs[0])
