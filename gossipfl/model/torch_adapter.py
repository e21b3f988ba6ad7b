"""A torch ``nn.Module`` seen as a flat vector. torch is imported lazily, here only.

The state is ``module.state_dict()``: parameters and buffers in state_dict order, read
afresh on every call (so a module whose parameters were replaced is still seen
correctly, and a module whose *architecture* changed is caught as a layout mismatch).
Floating entries are carried in the vector; integer ones (``num_batches_tracked``) stay
local, see :mod:`gossipfl.model.layout`. Tied weights appear once per state_dict name,
exactly as torch lists them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from gossipfl.model.adapter import ModelAdapter, check_out, check_vector
from gossipfl.model.errors import LayoutError
from gossipfl.model.layout import LAYOUT_DTYPES, Layout, TensorSpec, compare_layouts

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise LayoutError(
            "TorchAdapter needs torch; install it with: pip install 'gossipfl[torch]'"
        ) from exc
    return torch


def _layout_of(state: Any) -> Layout:
    specs = []
    for name, tensor in state.items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in LAYOUT_DTYPES:
            raise LayoutError(f"tensor {name!r} has dtype {dtype}, which a layout cannot carry")
        specs.append(TensorSpec(name, dtype, tuple(int(d) for d in tensor.shape)))
    return Layout(tuple(specs))


class TorchAdapter(ModelAdapter):
    """Wrap a torch module; ``set_flat`` writes into its parameters and buffers in place."""

    def __init__(self, module: torch.nn.Module) -> None:
        self._torch = _import_torch()
        if not isinstance(module, self._torch.nn.Module):
            raise LayoutError(f"TorchAdapter needs a torch.nn.Module, got {type(module).__name__}")
        self._module = module
        self._layout = _layout_of(module.state_dict())

    @property
    def module(self) -> torch.nn.Module:
        """The wrapped module."""
        module: torch.nn.Module = self._module
        return module

    @property
    def layout(self) -> Layout:
        return self._layout

    def _state(self) -> list[Any]:
        state = self._module.state_dict()
        if len(state) != len(self._layout) or any(
            name != spec.name or tuple(t.shape) != spec.shape
            for (name, t), spec in zip(state.items(), self._layout.tensors, strict=True)
        ):
            problem = compare_layouts(self._layout, _layout_of(state))
            raise LayoutError(f"the module changed since the adapter was made: {problem}")
        return list(state.values())

    def get_flat(self, out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
        """Copy the floating state into one float32 vector.

        float32 CPU tensors (nearly always all of them) are copied by numpy, one memcpy
        each: torch's ``copy_`` splits large copies over its thread pool, and two threads
        first-touching a freshly allocated vector's pages fault against each other on this
        kind of VM (an 11 M-parameter model: 58–116 ms into a fresh vector with two torch
        threads, 11 ms with numpy, the same as into a reused one). Other dtypes (float16,
        bfloat16, float64, other devices) go through torch, which converts.
        """
        torch = self._torch
        flat = check_out(out, self.num_params)
        tensors = self._state()
        target: Any = None
        with torch.no_grad():
            for index, offset, size in self._layout.slices:
                tensor = tensors[index]
                if tensor.dtype == torch.float32 and tensor.device.type == "cpu":
                    flat[offset : offset + size] = tensor.detach().reshape(-1).numpy()
                    continue
                if target is None:
                    target = torch.from_numpy(flat)
                target[offset : offset + size].copy_(tensor.reshape(-1))
        return flat

    def set_flat(self, vector: NDArray[np.floating]) -> None:
        torch = self._torch
        vec = check_vector(vector, self.num_params)
        # torch.from_numpy warns on read-only arrays (decoded wire vectors are read-only);
        # torch only reads the source here, but a copy is the warning-free way.
        source = torch.from_numpy(vec if vec.flags.writeable else vec.copy())
        tensors = self._state()
        with torch.no_grad():
            for index, offset, size in self._layout.slices:
                tensor = tensors[index]
                tensor.copy_(source[offset : offset + size].view(tensor.shape))
