"""A small pure-Python BLAKE3 (hash mode, 32-byte output), written from the BLAKE3
specification, so that the tests check the payload digest against the tree it is defined
by (1 KiB chunks of 64-byte blocks, parents over the largest power-of-two left subtree)
and not only against the library that computes it. Slow: for inputs of a few KiB."""

from __future__ import annotations

import struct

IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB,
      0x5BE0CD19)  # fmt: skip
PERMUTATION = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
CHUNK_START, CHUNK_END, PARENT, ROOT = 1, 2, 4, 8
BLOCK_LEN = 64
CHUNK_LEN = 1024
MASK = 0xFFFFFFFF


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & MASK


def _g(s: list[int], a: int, b: int, c: int, d: int, mx: int, my: int) -> None:
    s[a] = (s[a] + s[b] + mx) & MASK
    s[d] = _rotr(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & MASK
    s[b] = _rotr(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b] + my) & MASK
    s[d] = _rotr(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & MASK
    s[b] = _rotr(s[b] ^ s[c], 7)


def compress(
    cv: tuple[int, ...], block: bytes, counter: int, block_len: int, flags: int
) -> list[int]:
    m = list(struct.unpack("<16I", block.ljust(BLOCK_LEN, b"\0")))
    s = [*cv, *IV[:4], counter & MASK, counter >> 32, block_len, flags]
    for round_ in range(7):
        _g(s, 0, 4, 8, 12, m[0], m[1])
        _g(s, 1, 5, 9, 13, m[2], m[3])
        _g(s, 2, 6, 10, 14, m[4], m[5])
        _g(s, 3, 7, 11, 15, m[6], m[7])
        _g(s, 0, 5, 10, 15, m[8], m[9])
        _g(s, 1, 6, 11, 12, m[10], m[11])
        _g(s, 2, 7, 8, 13, m[12], m[13])
        _g(s, 3, 4, 9, 14, m[14], m[15])
        if round_ < 6:
            m = [m[i] for i in PERMUTATION]
    return [s[i] ^ s[i + 8] for i in range(8)] + [s[i + 8] ^ cv[i] for i in range(8)]


# An "output": the inputs of a node's last compression, which gets ROOT if it is the root.
Output = tuple[tuple[int, ...], bytes, int, int, int]


def _chunk(data: bytes, index: int) -> Output:
    blocks = [data[i : i + BLOCK_LEN] for i in range(0, len(data), BLOCK_LEN)] or [b""]
    cv: tuple[int, ...] = IV
    for i, block in enumerate(blocks[:-1]):
        cv = tuple(compress(cv, block, index, BLOCK_LEN, CHUNK_START if i == 0 else 0)[:8])
    flags = (CHUNK_START if len(blocks) == 1 else 0) | CHUNK_END
    return cv, blocks[-1], index, len(blocks[-1]), flags


def _subtree(data: bytes, first_chunk: int) -> Output:
    if len(data) <= CHUNK_LEN:
        return _chunk(data, first_chunk)
    # the left subtree: the largest power of two of whole chunks that leaves some input
    left = CHUNK_LEN << (((len(data) - 1) // CHUNK_LEN).bit_length() - 1)
    left_cv = _cv(_subtree(data[:left], first_chunk))
    right_cv = _cv(_subtree(data[left:], first_chunk + left // CHUNK_LEN))
    return IV, struct.pack("<16I", *left_cv, *right_cv), 0, BLOCK_LEN, PARENT


def _cv(out: Output) -> tuple[int, ...]:
    cv, block, counter, block_len, flags = out
    return tuple(compress(cv, block, counter, block_len, flags)[:8])


def blake3(data: bytes) -> bytes:
    """BLAKE3 of ``data`` in hash mode (no key), 32 bytes."""
    cv, block, counter, block_len, flags = _subtree(data, 0)
    return struct.pack("<8I", *compress(cv, block, counter, block_len, flags | ROOT)[:8])
