"""Fast whole-vector checks used on every encode and decode."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

_SMALL = 1 << 16
_CHUNK = 1 << 20


def all_finite(x: NDArray[np.floating]) -> bool:
    """Whether every element is finite, in one pass with no temporary for large arrays.

    A sum is finite only if every term is (NaN and ±inf propagate, and inf - inf is NaN),
    so a finite float32 sum proves the vector finite at reduction speed. An infinite sum
    may be mere overflow of large finite values, so then the exact (slower) check decides.
    """
    if x.size < _SMALL:
        # A numpy bool is one byte, 0 or 1: all true is no zero byte in the mask, found
        # by a C scan of its bytes. Why: .all() (or logical_and.reduce) of a few hundred
        # values is mostly the ufunc reduction's setup; every update sent or received
        # passes here, and this takes 0.47 us against 0.93 for 650 values.
        return b"\x00" not in np.isfinite(x).tobytes()
    if x.dtype == np.float32:
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.add.reduce(x, axis=None)
        if np.isfinite(total):
            return True
    return first_nonfinite(x) is None


def first_nonfinite(x: NDArray[np.floating]) -> int | None:
    """Index of the first NaN or infinity in ``x`` (flattened), scanning in bounded chunks."""
    flat = x.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        bad = np.flatnonzero(~np.isfinite(flat[start : start + _CHUNK]))
        if bad.size:
            return start + int(bad[0])
    return None
