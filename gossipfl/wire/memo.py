"""One decode shared by the receivers of one frame, for in-process networks.

A peer encodes a round's model once and sends the same ``bytes`` object to each of its
neighbours; over the in-memory network (:mod:`gossipfl.transport.memory`) that object
reaches every one of them uncopied, and each decoded it again: about three in four of a
simulation's decodes (~15 us each, a fifth of a peer-round's CPU) recomputed a result
already known. Decoding is a pure function of the bytes and of the receiver's decoding
settings (:class:`~gossipfl.wire.limits.Limits`, codec registry, digest check), and a
decoded :class:`~gossipfl.wire.messages.Update` is frozen with a read-only vector, so
handing every receiver the same object is invisible to them: each still counts the
frame, and every check that depends on who receives it (the handshake, the sender's
identity, the protocol's round checks) still runs per receiver, after decoding.

What is shared, and only that: a complete, unchunked Update decoded from a ``bytes``
object, for receivers with equal settings. A frame that fails to decode is not
remembered (every receiver decodes it and fails on its own, counted as before); a
Byzantine peer that crafts a different frame per neighbour sends different objects,
decoded apart. Over libp2p every frame is a new object read from a socket, and no memo
is used.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

from gossipfl.wire.codecs import CodecRegistry
from gossipfl.wire.limits import Limits, MiB
from gossipfl.wire.messages import Update


class _Settings(NamedTuple):
    limits: Limits
    codecs: int  # the registry's id(), kept alive by the interning table's value
    verify: bool


class MemoKey:
    """Decoding settings, interned by :meth:`DecodeMemo.key`: equal settings are the same
    object, so a lookup compares identities (two peers' equal :class:`Limits` are two
    objects; comparing them field by field on every frame would cost a tenth of a hit)."""

    __slots__ = ("codecs", "settings")

    def __init__(self, settings: _Settings, codecs: CodecRegistry) -> None:
        self.settings = settings
        self.codecs = codecs  # holds the registry, so that its id() is not reused


class DecodeMemo:
    """Updates recently decoded, by the identity of the ``bytes`` they came from.

    Each entry holds its ``bytes`` object, so that its ``id()`` cannot be reused by
    another object while the entry lives. Entries leave oldest first, past
    ``max_entries`` or past ``max_bytes`` (each counts its frame and, for codecs that
    decode into a new array, the vector). A miss only costs a decode, so the bounds
    trade memory for hits: the receivers of one frame usually decode it within one
    delivery batch of the network, a few frames later (the in-memory network keeps two
    entries per peer: 1,024 peers × 100 rounds peaked 94 MiB lower than with 32,768,
    for the same hits). Safe to use from several threads
    (a peer may decode a large frame in a worker thread)."""

    def __init__(self, *, max_entries: int = 1 << 15, max_bytes: int = 64 * MiB) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a decode memo needs max_entries >= 1 and max_bytes >= 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        # An OrderedDict, not a dict: a dict's oldest key (next(iter(d))) is found by
        # skipping the slots of every key deleted before it, O(entries) once it is full.
        self._entries: OrderedDict[int, tuple[bytes, MemoKey, Update, int]] = OrderedDict()
        self._bytes = 0
        self._keys: dict[_Settings, MemoKey] = {}
        self._lock = threading.Lock()

    def key(self, limits: Limits, codecs: CodecRegistry, verify: bool) -> MemoKey:
        """The interned key of these decoding settings (call once per decoder)."""
        settings = _Settings(limits, id(codecs), verify)
        with self._lock:
            key = self._keys.get(settings)
            if key is None or key.codecs is not codecs:
                key = self._keys[settings] = MemoKey(settings, codecs)
            return key

    def get(self, data: bytes, key: MemoKey) -> Update | None:
        """The Update decoded from this very object with these settings, if remembered."""
        entry = self._entries.get(id(data))
        if entry is not None and entry[0] is data and entry[1] is key:
            self.hits += 1
            return entry[2]
        self.misses += 1
        return None

    def put(self, data: bytes, key: MemoKey, update: Update) -> None:
        """Remember ``update`` as what ``data`` decodes to with the settings ``key``."""
        vector = update.vector
        size = len(data) + (0 if vector.base is not None else vector.nbytes)
        with self._lock:
            entries = self._entries
            old = entries.pop(id(data), None)
            if old is not None:
                self._bytes -= old[3]
            entries[id(data)] = (data, key, update, size)
            self._bytes += size
            while len(entries) > self.max_entries or self._bytes > self.max_bytes:
                self._bytes -= entries.popitem(last=False)[1][3]

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["DecodeMemo", "MemoKey"]
