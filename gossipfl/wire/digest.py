"""The payload digest: BLAKE3 of the payload, and the one pass that checks a payload.

Definition (also in ``docs/protocol.md``, section 9; protocol version 2)::

    digest = BLAKE3(payload)     # the default hash mode: no key, no context; 32-byte output

BLAKE3 is a tree hash by construction: 1 KiB chunks whose chaining values are combined
pairwise, with the chunk counter and the input's length bound into the tree, so the
digest needs no framing of ours (protocol 1's BLAKE2b tree had leaves, a prefix and the
length in its root), any BLAKE3 library computes it, and it can be computed from pieces
of any size. It runs at several GB/s on one core (SIMD across chunks), where BLAKE2b ran
at about 0.45 GB/s per core.

The digest stays cryptographic because ``announce`` and ``pull`` name models by it.

:class:`PayloadCheck` is the receiver's single pass over a payload: it hashes the payload
in blocks of :data:`BLOCK_SIZE` bytes and, for a float32 payload, checks each block's
values for NaN and infinity right after hashing it, while the block is still in the
core's cache. The sender's first encoding of a model version makes the same pass
(:func:`gossipfl.wire.with_digest`), and later encodings of it reuse the digest.
"""

from __future__ import annotations

import blake3
import numpy as np
from numpy.typing import NDArray

from gossipfl.wire._types import BytesLike

DIGEST_SIZE = 32
#: Bytes per step of the fused pass (hash, then finiteness check, of one block): small
#: enough to stay in a core's L2 cache between the two, large enough that the per-block
#: Python overhead is a few percent of the hashing.
BLOCK_SIZE = 1 << 18
_FLOAT = np.dtype("<f4")
#: Blocks of fewer values are checked with ``np.isfinite`` directly (no temporary worth
#: avoiding, and no error-state switch to pay for).
_SUM_MIN = 1 << 14


def payload_digest(payload: BytesLike) -> bytes:
    """The digest of ``payload`` (any contiguous buffer): BLAKE3, 32 bytes."""
    return blake3.blake3(memoryview(payload).cast("B")).digest()


class PayloadHasher:
    """Incremental form of :func:`payload_digest`, for payloads that arrive in pieces of
    any size."""

    __slots__ = ("_hash",)

    def __init__(self) -> None:
        self._hash = blake3.blake3()

    def update(self, data: BytesLike) -> None:
        self._hash.update(memoryview(data).cast("B"))

    def digest(self) -> bytes:
        return self._hash.digest()


class PayloadCheck:
    """One pass over a payload that arrives in order, in pieces of any size: its digest
    (when ``digest`` is true) and, when ``floats`` is true, the index of its first
    float32 value (little-endian) that is NaN or infinite.

    Both are computed block by block (:data:`BLOCK_SIZE`): each block is hashed and then
    checked while it is in cache, so the payload is read from memory once. A float32
    value split between two pieces is checked when its last byte arrives.
    """

    __slots__ = ("_carry", "_count", "_floats", "_hash", "first_nonfinite")

    def __init__(self, *, digest: bool = True, floats: bool = False) -> None:
        self._hash = blake3.blake3() if digest else None
        self._floats = floats
        self._carry = b""  # the first bytes of a float32 split between pieces
        self._count = 0  # float32 values checked so far
        #: The index of the first NaN or infinity seen (``None``: none so far).
        self.first_nonfinite: int | None = None

    @property
    def floats(self) -> bool:
        """Whether this pass checks float32 values for finiteness."""
        return self._floats

    def update(self, data: BytesLike) -> None:
        """Take the next piece of the payload."""
        view = memoryview(data).cast("B")
        hasher = self._hash
        if not self._floats or self.first_nonfinite is not None:
            if hasher is not None:
                hasher.update(view)
            return
        head = 0
        if self._carry:  # complete the float32 split by the previous piece
            head = min(4 - len(self._carry), view.nbytes)
            self._carry += view[:head].tobytes()
            if hasher is not None:
                hasher.update(view[:head])
            if len(self._carry) == 4:
                self._check(np.frombuffer(self._carry, _FLOAT))
                self._carry = b""
        tail = head + (view.nbytes - head) // 4 * 4
        body = view[head:tail]
        values = np.frombuffer(body, _FLOAT)
        step = BLOCK_SIZE // 4
        for start in range(0, values.size, step):
            if hasher is not None:
                hasher.update(body[4 * start : 4 * (start + step)])
            if self.first_nonfinite is None:
                self._check(values[start : start + step])
        if tail < view.nbytes:
            self._carry += view[tail:].tobytes()
            if hasher is not None:
                hasher.update(view[tail:])

    def _check(self, block: NDArray[np.float32]) -> None:
        if block.size < _SUM_MIN:
            finite = bool(np.isfinite(block).all())
        else:
            # A sum is finite only if every term is (NaN and ±inf propagate, inf - inf is
            # NaN), and a float32 sum runs at several times memory speed; an infinite
            # sum may be overflow of finite values, so the exact check decides then.
            with np.errstate(over="ignore", invalid="ignore"):
                finite = bool(np.isfinite(np.add.reduce(block)))
        if not finite:
            bad = np.flatnonzero(~np.isfinite(block))
            if bad.size:
                self.first_nonfinite = self._count + int(bad[0])
        self._count += block.size

    def digest(self) -> bytes:
        """The digest of everything given so far (only when made with ``digest=True``)."""
        if self._hash is None:
            raise ValueError("this PayloadCheck does not hash")
        return self._hash.digest()
