"""Arrays on the wire: an allowlisted dtype, a shape, and raw little-endian bytes.

An array's description (``[dtype, [dim, ...]]`` in msgpack) travels in a message header;
its bytes travel in the payload. Receivers view the payload with ``np.frombuffer``: no
copy, no parsing, no object construction. Only plain numeric dtypes that the codecs need
are allowed; nothing that could make numpy build Python objects.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from gossipfl.wire.errors import ArrayError, SchemaError, TooLargeError

#: dtype name on the wire -> little-endian numpy dtype.
WIRE_DTYPES: Mapping[str, np.dtype[np.generic]] = MappingProxyType(
    {
        "float32": np.dtype("<f4"),
        "float16": np.dtype("<f2"),
        "int8": np.dtype("i1"),
        "uint8": np.dtype("u1"),
        "int16": np.dtype("<i2"),
        "uint16": np.dtype("<u2"),
        "int32": np.dtype("<i4"),
        "uint32": np.dtype("<u4"),
    }
)
_NAME_OF = {dtype.newbyteorder("="): name for name, dtype in WIRE_DTYPES.items()}
MAX_NDIM = 8
_LITTLE = sys.byteorder == "little"


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """The description of one array: dtype name (see :data:`WIRE_DTYPES`) and shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def count(self) -> int:
        total = 1
        for dim in self.shape:
            total *= dim
        return total

    @property
    def nbytes(self) -> int:
        return self.count * WIRE_DTYPES[self.dtype].itemsize

    def to_wire(self) -> list[object]:
        return [self.dtype, list(self.shape)]

    @classmethod
    def from_wire(cls, obj: object, *, max_count: int) -> ArraySpec:
        """Parse ``[dtype, [dims]]`` from a decoded header; refuse unknown dtypes, more
        than :data:`MAX_NDIM` dimensions, and more than ``max_count`` elements."""
        if type(obj) is not list or len(obj) != 2:
            raise SchemaError(f"an array spec must be [dtype, shape], got {obj!r:.80}")
        dtype, shape = obj
        if type(dtype) is not str or dtype not in WIRE_DTYPES:
            raise ArrayError(
                f"array dtype {dtype!r:.40} is not allowed; allowed: {', '.join(WIRE_DTYPES)}"
            )
        if type(shape) is not list or len(shape) > MAX_NDIM:
            raise ArrayError(f"array shape must be a list of at most {MAX_NDIM} dims")
        count = 1
        for dim in shape:
            if type(dim) is not int or dim < 0:
                raise ArrayError(f"array dimension {dim!r:.40} is not a non-negative int")
            count *= dim
            if count > max_count:
                raise TooLargeError(f"array of shape {shape} exceeds {max_count} elements")
        return cls(dtype, tuple(shape))


def spec_of(array: NDArray[np.generic]) -> ArraySpec:
    """The spec of a local array; refuses dtypes not in :data:`WIRE_DTYPES`."""
    dtype = array.dtype
    # a native dtype is a key as it is (newbyteorder makes a new dtype object each call)
    name = _NAME_OF.get(dtype) or _NAME_OF.get(dtype.newbyteorder("="))
    if name is None:
        raise ArrayError(f"dtype {array.dtype} cannot travel on the wire")
    return ArraySpec(name, tuple(map(int, array.shape)))


def wire_bytes(array: NDArray[np.generic]) -> memoryview:
    """The array's bytes in wire order (C order, little-endian), without a copy when the
    array already is C-contiguous little-endian (the normal case on x86 and ARM)."""
    dtype = WIRE_DTYPES[spec_of(array).dtype]
    contiguous = np.ascontiguousarray(array, dtype=dtype)
    return contiguous.data.cast("B")


def view_array(spec: ArraySpec, payload: memoryview, offset: int) -> NDArray[np.generic]:
    """A read-only view of ``spec``'s bytes at ``offset`` in ``payload`` (native byte
    order; on a big-endian host this is the one place a copy happens). The caller has
    checked that the bytes are there."""
    dtype = WIRE_DTYPES[spec.dtype]
    array: NDArray[np.generic] = np.frombuffer(
        payload, dtype=dtype, count=spec.count, offset=offset
    )
    if not _LITTLE and dtype.itemsize > 1:  # pragma: no cover - big-endian hosts only
        array = array.astype(dtype.newbyteorder("="))
    if len(spec.shape) != 1:  # a 1-D spec is what frombuffer made: no reshaped view
        array = array.reshape(spec.shape)
    array.flags.writeable = False
    return array
