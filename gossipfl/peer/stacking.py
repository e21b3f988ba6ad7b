"""The (d, n) stack a merge reads, in a buffer reused from merge to merge.

A merge rule reads the neighbours' models as one C-contiguous float32 matrix, so every
merge copied d models into a fresh array. For large models that array is large (four
neighbours of an 11-million-parameter model: 179 MB), and on the virtual machines this
runs on, first touching fresh pages costs far more than the copy: ~440 ms to stack those
four models into new memory against 25–47 ms into memory already mapped (measured with
the pages not backed by huge pages, as in a simulation holding 16 such peers). In that
16-peer simulation the stacking was a sixth of all the time.

So stacks of at least :data:`REUSE_MIN_BYTES` go into a buffer kept per thread: in a
simulation every peer merges in the one event-loop thread, one after the other, and
shares it; a daemon keeps one in its event loop's thread (a model of 2 million
parameters and 4 neighbours: 32 MB held between merges, instead of allocated for each),
and its merges of the largest models run in worker threads, one buffer each, freed with
the thread. Smaller stacks are cheap to allocate and are not kept.

Only the merge may read the buffer, and only during the call: the caller must not keep
the stack, and must copy a result that shares its memory (no rule returns one today).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

#: Stacks smaller than this are allocated afresh each time (and freed after).
REUSE_MIN_BYTES = 8 << 20


class _Buffers(threading.local):
    stack: F32 | None = None


_buffers = _Buffers()


def stack_for_merge(vectors: Sequence[npt.NDArray[np.floating]]) -> npt.NDArray[np.floating]:
    """``np.stack(vectors)``; when large, as float32 in this thread's reusable buffer."""
    d, n = len(vectors), int(vectors[0].shape[0])
    if d * n * 4 < REUSE_MIN_BYTES:
        # np.stack's result, without its Python-level shape checks (~2 us a merge): the
        # vectors are 1-D models of one size (checked on receipt)
        return np.array(vectors)
    buffer = _buffers.stack
    if buffer is None or buffer.shape[1] != n or buffer.shape[0] < d:
        _buffers.stack = None  # free the old one before allocating its successor
        buffer = _buffers.stack = np.empty((d, n), dtype=np.float32)
    out = buffer[:d]
    np.stack(vectors, out=out, casting="same_kind")
    return out


def shares_buffer(array: npt.NDArray[np.generic]) -> bool:
    """True if ``array`` may share memory with this thread's stack buffer."""
    buffer = _buffers.stack
    return buffer is not None and np.may_share_memory(array, buffer)


def release() -> None:
    """Drop this thread's buffer (tests; a process that is done merging)."""
    _buffers.stack = None
