"""Vector codecs: how a float32 model vector becomes payload arrays, and back.

=========  ============================  =========================================
codec      payload                       worst-case reconstruction error
=========  ============================  =========================================
``fp32``   float32[n]                    none: bit-exact
``fp16``   float16[n]                    |x| >= 2**-14: relative error <= 2**-11;
                                         |x| < 2**-14 (subnormal): absolute <= 2**-25;
                                         |x| > 65504: refused at encode
                                         (:class:`CodecRangeError`), never clamped
``int8``   float32[ceil(n/B)] scales,    per block of B elements with a = max|x|:
           int8[n] values in [-127,127]  |x - x̂| <= a * (1/254 + 2**-22) + 2**-140
=========  ============================  =========================================

Why fp16 refuses instead of clamping: a clamped weight is a silently different model,
averaged into every neighbour; a refusal tells the sender to pick fp32 or int8, which
have no such range limit.

int8 rounding: the scale is ``s = fl32(a / 127)``, stepped down by one ulp if
``127 * s`` would exceed ``a`` (compared exactly, so decoded values never exceed ``a``
and never overflow);
values are ``q = clip(rint(x / s), -127, 127)`` and decode as ``fl32(q * s)``. Exact
rounding gives at most ``s / 2 = a / 254``; the ``2**-22`` term covers float32 rounding
of the quotient and the product, and ``2**-140`` covers scales in the subnormal range.
-128 is never produced, and a decoder refuses it.

Codecs are looked up by name in a :class:`CodecRegistry`; :data:`DEFAULT_CODECS` holds
the three above (int8 with blocks of 256). Registries are immutable: make a new one with
:meth:`CodecRegistry.with_codec` to change a block size or add a codec.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from gossipfl.wire._numeric import all_finite, first_nonfinite
from gossipfl.wire.arrays import ArraySpec
from gossipfl.wire.errors import CodecRangeError, NonFiniteError, SchemaError, UnknownCodecError

FP16_MAX = 65504.0
INT8_MAX_BLOCK = 1 << 20
_ROWS_PER_BATCH_ELEMENTS = 1 << 20  # int8 works on about 4 MiB of input at a time


@dataclass(frozen=True, slots=True)
class Encoded:
    """What a codec produces: integer parameters and the arrays of the payload."""

    params: Mapping[str, int]
    arrays: tuple[NDArray[np.generic], ...]


@dataclass(frozen=True, slots=True)
class Codec(ABC):
    """A way to carry a float32 vector.

    Subclasses are small frozen dataclasses that set their wire name with
    ``name: str = field(default="...", init=False)`` and keep their settings (e.g. a
    block size) as fields. A codec must be deterministic: the digest a sender computes
    once (``wire.with_digest``) must match every later encoding of the same vector.
    """

    name: str = field(init=False)
    #: True when ``encode`` hands out the vector itself without computing on it. For such
    #: a codec an Update with a precomputed digest (made by ``wire.with_digest``, which
    #: checks finiteness) is encoded without a second pass over the values.
    zero_copy: ClassVar[bool] = False

    @abstractmethod
    def encode(self, vector: NDArray[np.float32]) -> Encoded:
        """Encode a finite 1-D float32 vector (the caller checked finiteness)."""

    @abstractmethod
    def specs(self, n: int, params: Mapping[str, int]) -> tuple[ArraySpec, ...]:
        """The payload arrays a message with ``n`` values and these ``params`` must
        carry; raise :class:`SchemaError` if the params are not valid for this codec."""

    @abstractmethod
    def decode(
        self, n: int, params: Mapping[str, int], arrays: Sequence[NDArray[np.generic]]
    ) -> NDArray[np.float32]:
        """Rebuild the float32 vector from arrays that match :meth:`specs`. May raise
        :class:`SchemaError` for values the codec never produces."""


@functools.lru_cache(maxsize=16)
def _one_array(dtype: str, n: int) -> tuple[ArraySpec, ...]:
    """The specs of a payload that is one array of ``n`` values, made once per size:
    every update received asks for them (a bounded cache: ``n`` comes from the sender)."""
    return (ArraySpec(dtype, (n,)),)


def _no_params(name: str, params: Mapping[str, int]) -> None:
    if params:
        raise SchemaError(f"codec {name} takes no parameters, got {sorted(params)}")


def check_encodable(vector: NDArray[np.float32]) -> None:
    """Refuse to send a vector containing NaN or infinity, naming the first one."""
    if not all_finite(vector):
        index = first_nonfinite(vector)
        raise nonfinite_error(vector, index if index is not None else -1)


def nonfinite_error(vector: NDArray[np.float32], index: int) -> NonFiniteError:
    """The error that refuses to send ``vector``, whose value at ``index`` is NaN or
    infinite."""
    value = vector[index] if 0 <= index < vector.size else "?"
    return NonFiniteError(f"refusing to send a vector with a non-finite value: [{index}] = {value}")


def is_vector_payload(codec: Codec, n: int, specs: tuple[ArraySpec, ...]) -> bool:
    """Whether a payload of these arrays is the vector's own bytes (``fp32``): then its
    finiteness is checked on the payload, in the same pass as its digest."""
    return codec.zero_copy and specs == (ArraySpec("float32", (n,)),)


@dataclass(frozen=True, slots=True)
class Fp32(Codec):
    """Bit-exact float32; encode and decode are zero-copy views."""

    name: str = field(default="fp32", init=False)
    zero_copy: ClassVar[bool] = True

    def encode(self, vector: NDArray[np.float32]) -> Encoded:
        return Encoded({}, (vector,))

    def specs(self, n: int, params: Mapping[str, int]) -> tuple[ArraySpec, ...]:
        _no_params(self.name, params)
        return _one_array("float32", n)

    def decode(
        self, n: int, params: Mapping[str, int], arrays: Sequence[NDArray[np.generic]]
    ) -> NDArray[np.float32]:
        out: NDArray[np.float32] = arrays[0].view(np.float32)
        return out


@dataclass(frozen=True, slots=True)
class Fp16(Codec):
    """IEEE half precision: half the bytes, relative error <= 2**-11 in the normal range."""

    name: str = field(default="fp16", init=False)

    def encode(self, vector: NDArray[np.float32]) -> Encoded:
        if vector.size:
            high, low = float(vector.max()), float(vector.min())
            if high > FP16_MAX or low < -FP16_MAX:
                bad = int(np.argmax(np.abs(vector) > FP16_MAX))
                raise CodecRangeError(
                    f"fp16 cannot carry [{bad}] = {vector[bad]} (|x| > {FP16_MAX:g}); "
                    "use the fp32 or int8 codec for this model"
                )
        return Encoded({}, (vector.astype("<f2"),))

    def specs(self, n: int, params: Mapping[str, int]) -> tuple[ArraySpec, ...]:
        _no_params(self.name, params)
        return _one_array("float16", n)

    def decode(
        self, n: int, params: Mapping[str, int], arrays: Sequence[NDArray[np.generic]]
    ) -> NDArray[np.float32]:
        return arrays[0].astype(np.float32)


@dataclass(frozen=True, slots=True)
class Int8(Codec):
    """Blockwise absmax int8: one float32 scale per ``block`` values, about a quarter of
    fp32's bytes. See the module docstring for the error bound."""

    block: int = 256
    name: str = field(default="int8", init=False)

    def __post_init__(self) -> None:
        if type(self.block) is not int or not 1 <= self.block <= INT8_MAX_BLOCK:
            raise SchemaError(
                f"int8 block must be an int in [1, {INT8_MAX_BLOCK}], got {self.block!r}"
            )

    def encode(self, vector: NDArray[np.float32]) -> Encoded:
        n, block = vector.size, self.block
        blocks = -(-n // block)
        scales = np.empty(blocks, dtype="<f4")
        if n <= _ROWS_PER_BATCH_ELEMENTS:
            # Small vectors: one zero-padded matrix, one pass (padding never changes a
            # block's absmax). Per-message overhead matters for the simulator.
            padded = np.zeros(blocks * block, dtype=np.float32)
            padded[:n] = vector
            q = np.empty(blocks * block, dtype=np.int8)
            _quantize(padded.reshape(blocks, block), q.reshape(blocks, block), scales)
            return Encoded({"block": block}, (scales, q[:n]))
        values = np.empty(n, dtype=np.int8)
        full = n // block
        rows = max(1, _ROWS_PER_BATCH_ELEMENTS // block)
        body = vector[: full * block].reshape(full, block)
        qbody = values[: full * block].reshape(full, block)
        for start in range(0, full, rows):
            stop = min(start + rows, full)
            _quantize(body[start:stop], qbody[start:stop], scales[start:stop])
        if full < blocks:
            tail = slice(full * block, n)
            _quantize(vector[tail][None, :], values[tail][None, :], scales[full:])
        return Encoded({"block": block}, (scales, values))

    def specs(self, n: int, params: Mapping[str, int]) -> tuple[ArraySpec, ...]:
        if set(params) != {"block"}:
            raise SchemaError(
                f"codec int8 takes exactly the parameter 'block', got {sorted(params)}"
            )
        block = params["block"]
        if type(block) is not int or not 1 <= block <= INT8_MAX_BLOCK:
            raise SchemaError(
                f"int8 block must be an int in [1, {INT8_MAX_BLOCK}], got {block!r:.40}"
            )
        return (ArraySpec("float32", (-(-n // block),)), ArraySpec("int8", (n,)))

    def decode(
        self, n: int, params: Mapping[str, int], arrays: Sequence[NDArray[np.generic]]
    ) -> NDArray[np.float32]:
        scales, values = arrays[0].view(np.float32), arrays[1].view(np.int8)
        block = params["block"]
        if scales.size and not (scales.min() >= 0 and np.isfinite(scales.max())):
            raise SchemaError("int8 scales must be finite and non-negative")
        if values.size and values.min() < -127:
            raise SchemaError("int8 values must lie in [-127, 127]; -128 is never produced")
        out = np.empty(n, dtype=np.float32)
        full = n // block
        rows = max(1, _ROWS_PER_BATCH_ELEMENTS // block)
        qbody = values[: full * block].reshape(full, block)
        obody = out[: full * block].reshape(full, block)
        # A stranger's scale can make q * s overflow; the caller's finiteness check
        # refuses the result, so the overflow itself must not warn (or raise, under -W error).
        with np.errstate(over="ignore"):
            for start in range(0, full, rows):
                stop = min(start + rows, full)
                np.multiply(qbody[start:stop], scales[start:stop, None], out=obody[start:stop])
            if full * block < n:
                np.multiply(values[full * block :], scales[full], out=out[full * block :])
        return out


def _quantize(x: NDArray[np.float32], q: NDArray[np.int8], scales: NDArray[np.float32]) -> None:
    """Quantize rows of ``x`` (one block per row) into ``q`` and ``scales``, in place."""
    absmax = np.abs(x).max(axis=1)
    scale = absmax / np.float32(127)
    # Exact in float64 (a 24-bit mantissa times 127 fits in 53 bits): step the scale
    # down where rounding pushed 127 * scale above absmax, so decoding stays within it.
    too_big = scale.astype(np.float64) * 127 > absmax
    if too_big.any():
        scale[too_big] = np.nextafter(scale[too_big], np.float32(0))
    scales[...] = scale
    ratio = x / np.where(scale > 0, scale, np.float32(1))[:, None]
    np.rint(ratio, out=ratio)
    np.minimum(ratio, 127, out=ratio)
    np.maximum(ratio, -127, out=ratio)
    np.copyto(q, ratio, casting="unsafe")


def int8_error_bound(absmax: NDArray[np.float32] | float) -> NDArray[np.float64] | float:
    """The documented worst-case |x - x̂| for a block whose max |x| is ``absmax``."""
    return np.asarray(absmax, dtype=np.float64) * (1 / 254 + 2.0**-22) + 2.0**-140


class CodecRegistry:
    """An immutable name -> codec map."""

    __slots__ = ("_codecs",)

    def __init__(self, codecs: Iterable[Codec]) -> None:
        table: dict[str, Codec] = {}
        for codec in codecs:
            if not isinstance(codec, Codec):
                raise UnknownCodecError(f"{codec!r} is not a Codec")
            table[codec.name] = codec
        self._codecs = table

    def get(self, name: str) -> Codec:
        codec = self._codecs.get(name)
        if codec is None:
            raise UnknownCodecError(
                f"unknown codec {name!r:.40}; known: {', '.join(self._codecs) or 'none'}"
            )
        return codec

    def with_codec(self, codec: Codec) -> CodecRegistry:
        """A new registry with ``codec`` added (or replacing the one of the same name)."""
        return CodecRegistry([*self._codecs.values(), codec])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._codecs)

    def __contains__(self, name: object) -> bool:
        return name in self._codecs

    def __repr__(self) -> str:
        return f"CodecRegistry({list(self._codecs.values())!r})"


DEFAULT_CODECS = CodecRegistry([Fp32(), Fp16(), Int8(256)])
