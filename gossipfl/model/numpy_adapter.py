"""A model held as an ordered dict of numpy arrays (the in-process simulator's models)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from gossipfl.model.adapter import ModelAdapter, check_out, check_vector
from gossipfl.model.errors import LayoutError
from gossipfl.model.layout import Layout, TensorSpec

# numpy spells every layout dtype the same way except bfloat16, which numpy lacks.
_NUMPY_DTYPES = {
    np.dtype(name): name
    for name in (
        "float16",
        "float32",
        "float64",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "bool",
    )
}


class NumpyAdapter(ModelAdapter):
    """Wrap a mapping ``name -> ndarray``; tensors follow the mapping's order.

    The adapter keeps references to the caller's arrays: ``set_flat`` writes into them in
    place, so whoever holds the dict sees the new weights. Arrays must be writable and of
    a dtype a layout allows (see :data:`gossipfl.model.layout.LAYOUT_DTYPES`).
    """

    def __init__(self, arrays: Mapping[str, NDArray[np.generic]]) -> None:
        specs = []
        for name, array in arrays.items():
            if not isinstance(array, np.ndarray):
                raise LayoutError(f"tensor {name!r} is a {type(array).__name__}, not an ndarray")
            dtype_name = _NUMPY_DTYPES.get(array.dtype.newbyteorder("="))
            if dtype_name is None:
                raise LayoutError(f"tensor {name!r} has unsupported dtype {array.dtype}")
            if not array.flags.writeable:
                raise LayoutError(f"tensor {name!r} is read-only; set_flat could not write it")
            specs.append(TensorSpec(name, dtype_name, tuple(array.shape)))
        self._layout = Layout(tuple(specs))
        self._arrays = [arrays[spec.name] for spec in self._layout.tensors]
        self._flat = _shared_buffer(self._arrays, self._layout)

    def __getstate__(self) -> dict[str, object]:
        # Pickled arrays come back as copies of their own, no longer views of one buffer.
        return {**self.__dict__, "_flat": None}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._flat = _shared_buffer(self._arrays, self._layout)

    @property
    def layout(self) -> Layout:
        return self._layout

    @property
    def arrays(self) -> dict[str, NDArray[np.generic]]:
        """The wrapped arrays by name (the same objects the adapter writes into)."""
        return {s.name: a for s, a in zip(self._layout.tensors, self._arrays, strict=True)}

    def get_flat(self, out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
        shared = self._flat
        if shared is not None and out is None:
            return shared.copy()
        flat = check_out(out, self.num_params)
        if shared is not None:
            np.copyto(flat, shared)
            return flat
        for index, offset, size in self._layout.slices:
            flat[offset : offset + size] = self._arrays[index].reshape(-1)
        return flat

    def set_flat(self, vector: NDArray[np.floating]) -> None:
        vec = check_vector(vector, self.num_params)
        if self._flat is not None:
            np.copyto(self._flat, vec, casting="unsafe")
            return
        for index, offset, size in self._layout.slices:
            target = self._arrays[index]
            np.copyto(target, vec[offset : offset + size].reshape(target.shape), casting="unsafe")


def _shared_buffer(arrays: list[NDArray[np.generic]], layout: Layout) -> NDArray[np.float32] | None:
    """The one float32 buffer that ``arrays`` are consecutive views of, in the layout's
    order and covering it exactly (a learner may keep its tensors so:
    :class:`~gossipfl.learning.numpy_models.NumpySoftmaxLearner`), else None.

    Why: then the flat vector is that buffer, and ``get_flat``/``set_flat`` copy it in one
    call instead of one per tensor (two numpy calls of every simulated peer-round each,
    with their reshapes and slices); the values are the same, element for element."""
    if not arrays or len(layout.slices) != len(arrays):
        return None  # empty, or some tensor is not carried in the flat vector
    base = arrays[0].base
    if (
        not isinstance(base, np.ndarray)
        or base.dtype != np.float32
        or base.ndim != 1
        or not base.flags.c_contiguous
        or not base.flags.writeable
        or base.shape[0] != layout.num_params
    ):
        return None
    start = base.__array_interface__["data"][0]
    for i, ((index, offset, size), array) in enumerate(zip(layout.slices, arrays, strict=True)):
        if (
            array.base is not base
            or index != i
            or array.dtype != np.float32
            or not array.flags.c_contiguous
            or array.size != size
            or array.__array_interface__["data"][0] != start + 4 * offset
        ):
            return None
    flat: NDArray[np.float32] = base
    return flat
